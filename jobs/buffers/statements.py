"""The SQL of a buffer's flush (pure): COPY into a temporary table, INSERT ... SELECT from it.

Identifiers are quoted with ``psycopg.sql.Identifier``; column types come from the
allow-list :data:`workers.registries.BUFFER_COLUMN_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import sql

from workers.registries import BufferSpec

if TYPE_CHECKING:
    from collections.abc import Sequence

#: The flush's temporary table (dropped at commit).
TEMP_TABLE = "buffer_rows"


@dataclass(frozen=True, slots=True)
class Statements:
    """The SQL of one buffer's flush (identifiers quoted; types from the allow-list)."""

    create: sql.Composed
    copy: sql.Composed
    #: Plain INSERT of a slice (parameters: its first and last row number): the fast path.
    insert: sql.Composed
    #: The same with ON CONFLICT DO NOTHING, for a slice holding rows already written.
    upsert: sql.Composed


def statements(spec: BufferSpec) -> Statements:
    """The flush statements of ``spec`` (``INSERT ... SELECT ... FROM json_to_record``)."""
    temp = sql.Identifier(TEMP_TABLE)
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in spec.columns)
    record = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind.removesuffix("?")))
        for name, kind in spec.columns.items()
    )
    conflict = (
        sql.SQL("({}) ").format(sql.SQL(", ").join(map(sql.Identifier, spec.conflict_columns)))
        if spec.conflict_columns
        else sql.SQL("")
    )
    insert = sql.SQL(
        "INSERT INTO {table} ({columns}) SELECT {columns} "
        "FROM {temp} AS t, json_to_record(t.doc::json) AS r({record}) "
        "WHERE t.n BETWEEN %s AND %s"
    ).format(table=sql.Identifier(spec.table), columns=columns, temp=temp, record=record)
    return Statements(
        create=sql.SQL(
            "CREATE TEMP TABLE {} (n integer NOT NULL, doc text NOT NULL) ON COMMIT DROP"
        ).format(temp),
        copy=sql.SQL("COPY {} (n, doc) FROM STDIN").format(temp),
        insert=insert,
        upsert=sql.SQL("{} ON CONFLICT {}DO NOTHING").format(insert, conflict),
    )


def copy_payload(rows: Sequence[bytes]) -> bytes:
    """``COPY ... FROM STDIN`` text-format data: ``<n>`` TAB ``<json>`` lines, n from 1.

    Compact JSON holds no raw tab or newline; its backslashes are doubled for COPY.
    """
    lines = b"".join(b"%d\t%s\n" % (n, row) for n, row in enumerate(rows, 1))
    return lines.replace(b"\\", b"\\\\")
