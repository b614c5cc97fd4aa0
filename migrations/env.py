"""Alembic environment: the URL comes from our settings (or the caller's config)."""

from alembic import context
from sqlalchemy import create_engine

from workers.db import metadata
from workers.settings import get_settings

url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_migrations_online() -> None:
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
