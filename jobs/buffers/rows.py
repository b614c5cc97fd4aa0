"""Rows of a write buffer (pure): validated against the declared columns, encoded as JSON.

Each row is stored as compact JSON with its generated columns filled in and its append time as
first key (``{"_at": ...}``, ignored by the insert), which gives the age of the oldest waiting
row in O(1) (:func:`appended_at`).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from workers.canonical import check_json
from workers.errors import InvalidJob
from workers.registries import BufferSpec

#: Reserved key carrying a row's append time (unix seconds) as the first key of its JSON.
APPENDED_AT = "_at"
_HEAD_PREFIX = b'{"' + APPENDED_AT.encode() + b'":'

_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

_Parsed = TypeVar("_Parsed")


class _Mismatch(Exception):
    """A value does not fit its column; the argument says what was expected."""


def _parse(text: str, parse: Callable[[str], _Parsed], expected: str) -> _Parsed:
    """``parse(text)``, or :class:`_Mismatch` naming what was ``expected``."""
    try:
        return parse(text)
    except ValueError:
        raise _Mismatch(expected) from None


def _text(value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise _Mismatch("a string")


def _uuid(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        _parse(value, uuid.UUID, "a UUID string")
        return value
    raise _Mismatch("a UUID string")


def _integer(bits: int) -> Callable[[Any], Any]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if low <= value <= high:
                return value
            raise _Mismatch(f"an integer in [{low}, {high}]")
        raise _Mismatch("an integer")

    return check


def _boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    raise _Mismatch("true or false")


def _float(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    raise _Mismatch("a finite number")


def _numeric(value: Any) -> Any:
    if isinstance(value, Decimal):
        if value.is_finite():
            return str(value)
    elif isinstance(value, str):
        try:
            if Decimal(value).is_finite():
                return value
        except ArithmeticError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    raise _Mismatch("a finite number or decimal string")


def _timestamptz(value: Any) -> Any:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        parsed = _parse(value, datetime.fromisoformat, "an ISO-8601 timestamp with a UTC offset")
    else:
        raise _Mismatch("an ISO-8601 timestamp with a UTC offset")
    if parsed.tzinfo is None:
        raise _Mismatch("a timestamp with a UTC offset (naive timestamps are ambiguous)")
    return value if isinstance(value, str) else value.isoformat()


def _date(value: Any) -> Any:
    if isinstance(value, datetime):
        raise _Mismatch("a date (not a datetime)")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        _parse(value, date.fromisoformat, "an ISO-8601 date")
        return value
    raise _Mismatch("an ISO-8601 date")


def _json(value: Any) -> Any:
    return value  # checked by check_json (naming the nested path) in RowCodec.encode


#: Value check per declared type: returns the JSON-native value to store, or raises _Mismatch.
CHECKS: dict[str, Callable[[Any], Any]] = {
    "text": _text,
    "uuid": _uuid,
    "smallint": _integer(16),
    "integer": _integer(32),
    "bigint": _integer(64),
    "boolean": _boolean,
    "real": _float,
    "double precision": _float,
    "numeric": _numeric,
    "json": _json,
    "jsonb": _json,
    "timestamptz": _timestamptz,
    "date": _date,
}


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    kind: str
    check: Callable[[Any], Any]
    nullable: bool
    is_json: bool
    fill: Callable[[str], Any] | None  # value of an absent column, given the append time


class RowCodec:
    """Validates rows against a buffer's columns and encodes them as compact JSON lines."""

    def __init__(self, name: str, spec: BufferSpec) -> None:
        """Compile the checks of ``spec``'s columns (done once per buffer and process)."""
        self.name = name
        self.spec = spec
        self.names = frozenset(spec.columns)
        columns = []
        for column, declared in spec.columns.items():
            kind = declared.removesuffix("?")
            columns.append(
                _Column(
                    name=column,
                    kind=kind,
                    check=CHECKS[kind],
                    nullable=declared.endswith("?"),
                    is_json=kind in {"json", "jsonb"},
                    fill=self._filler(column, spec),
                )
            )
        self.columns = tuple(columns)

    @staticmethod
    def _filler(column: str, spec: BufferSpec) -> Callable[[str], Any] | None:
        how = spec.generated.get(column)
        if how == "uuid4":
            return lambda _now: str(uuid.uuid4())
        if how == "utcnow":
            return lambda now: now
        if column in spec.defaults:
            default = spec.defaults[column]
            return lambda _now: default
        return None

    def encode(self, rows: Iterable[Mapping[str, Any]]) -> list[bytes]:
        """Each row as one compact JSON document (``{"_at": <append time>, <columns>...}``).

        Absent generated columns are filled (one ``utcnow`` per call), absent columns with a
        default get it. Raises :class:`InvalidJob` naming the buffer, the row index and the
        column for: a row that is not a mapping, an undeclared column, a missing required
        column, a null in a non-optional column, or a value of the wrong JSON type.
        """
        appended = round(time.time(), 3)
        now = datetime.now(UTC).isoformat()
        encoded = []
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise self._invalid(index, None, f"expected a mapping, got {type(row).__name__}")
            unknown = row.keys() - self.names
            if unknown:
                raise self._invalid(
                    index,
                    min(map(str, unknown)),
                    f"unknown column (declared: {sorted(self.names)})",
                )
            document: dict[str, Any] = {APPENDED_AT: appended}
            for column in self.columns:
                self._put(document, column, row, index, now)
            try:
                encoded.append(_encode_json(document).encode())
            except ValueError as exc:  # inf inside a json column
                raise self._invalid(index, None, f"not JSON-serializable: {exc}") from None
        return encoded

    def _put(
        self,
        document: dict[str, Any],
        column: _Column,
        row: Mapping[str, Any],
        index: int,
        now: str,
    ) -> None:
        """Check ``row``'s value of ``column`` and store it (or its fill) in ``document``."""
        value = row.get(column.name)
        if value is None:
            if column.name in row and column.nullable:
                document[column.name] = None
            elif column.fill is not None:
                document[column.name] = column.fill(now)
            elif not column.nullable:
                problem = "is null" if column.name in row else "is missing"
                raise self._invalid(index, column.name, f"required column {problem}")
            return
        try:
            document[column.name] = column.check(value)
        except _Mismatch as exc:
            raise self._invalid(
                index,
                column.name,
                f"expected {exc.args[0]} ({column.kind}), got {type(value).__name__}",
            ) from None
        if column.is_json:
            try:
                check_json(value, column.name)
            except InvalidJob as exc:
                raise self._invalid(index, column.name, str(exc)) from None

    def _invalid(self, index: int, column: str | None, problem: str) -> InvalidJob:
        where = f"row {index}" + (f", column {column!r}" if column else "")
        return InvalidJob(
            f"write buffer {self.name!r}: {where}: {problem}",
            field=f"rows[{index}]" + (f".{column}" if column else ""),
        )


def appended_at(item: bytes | None) -> float | None:
    """The append time (unix seconds) an encoded row starts with; None if it has none."""
    if not item or not item.startswith(_HEAD_PREFIX):
        return None
    end = item.find(b",", len(_HEAD_PREFIX))
    try:
        return float(item[len(_HEAD_PREFIX) : end if end > 0 else None].rstrip(b"}"))
    except ValueError:
        return None
