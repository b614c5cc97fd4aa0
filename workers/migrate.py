"""Run the Alembic migrations programmatically (``jobctl migrate``, the demo, the tests)."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the packaged migrations against ``database_url``."""
    location = str(resources.files("migrations"))
    config = Config(f"{location}/alembic.ini")
    config.set_main_option("script_location", location)
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate ``database_url`` to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)
