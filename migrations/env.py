"""Alembic environment: the URL comes from our settings (or the caller's config).

Autogenerate filter: partitions are made at run time (``jobs.partitions``), not by
migrations, so ``alembic revision --autogenerate`` would propose to drop every one of them.
``include_name`` hides them: every attached partition (``pg_class.relispartition``) and any
table named like a registered table's partitions (``<table>_pYYYYMM[DD]``,
``<table>_default``), which also covers one detached by ``drop_expired`` but not yet dropped.
"""

import re
from collections.abc import Callable, Mapping

from alembic import context
from sqlalchemy import Connection, create_engine, text

from workers.db import metadata
from workers.settings import get_settings

url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url


def runtime_partition_filter(connection: Connection) -> Callable[..., bool]:
    """An ``include_name`` hook that is False for run-time partitions (see module docstring)."""
    attached = set(
        connection.execute(text("SELECT relname FROM pg_class WHERE relispartition")).scalars()
    )
    tables = [re.escape(spec.table) for spec in get_settings().partitions]
    named = re.compile(rf"^(?:{'|'.join(tables)})_(?:p[0-9]{{6}}|p[0-9]{{8}}|default)$")

    def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:  # noqa: ARG001
        if type_ != "table" or name is None:
            return True
        return name not in attached and not (tables and named.match(name))

    return include_name


def run_migrations_online() -> None:
    engine = create_engine(url)
    with engine.connect() as connection:
        include_name = runtime_partition_filter(connection)
        connection.commit()  # end the catalogue read, so Alembic's transaction is its own
        context.configure(
            connection=connection, target_metadata=metadata, include_name=include_name
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
