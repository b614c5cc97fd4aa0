"""Write buffers, pure parts: row validation and encoding, SQL, bisection, schedule, settings."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from jobs import buffers
from workers.errors import ConfigurationError, InvalidJob
from workers.registries import DEFAULT_BUFFERS, BufferSpec
from workers.settings import Settings, load_settings

EVENTS = DEFAULT_BUFFERS["events"]


def codec(spec: BufferSpec = EVENTS, name: str = "events") -> buffers.RowCodec:
    return buffers.RowCodec(name, spec)


def decode(item: bytes) -> dict[str, Any]:
    document = json.loads(item)
    assert isinstance(document, dict)
    return document


def test_a_valid_row_is_encoded_as_compact_json_with_its_generated_columns() -> None:
    """Given an events row without id and created_at, then it is stored as compact JSON that
    starts with its append time and carries a fresh UUID, the UTC append time and the payload
    default.
    """
    before = datetime.now(UTC)
    [item] = codec().encode([{"user_id": 7, "event_type": "view"}])
    assert b" " not in item
    assert item.startswith(b'{"_at":')
    document = decode(item)
    assert set(document) == {"_at", "id", "user_id", "event_type", "payload", "created_at"}
    uuid.UUID(document["id"])
    created = datetime.fromisoformat(document["created_at"])
    assert created.utcoffset() is not None
    assert before <= created <= datetime.now(UTC)
    assert document["payload"] == {}
    assert buffers.appended_at(item) == pytest.approx(before.timestamp(), abs=2)


def test_given_columns_are_kept_and_normalised() -> None:
    """Given explicit id (a UUID object), created_at (an aware datetime) and payload, then they
    are stored as given (as JSON-native text), not regenerated.
    """
    key = uuid.uuid4()
    at = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    [item] = codec().encode(
        [{"id": key, "user_id": 1, "event_type": "purchase", "payload": {"amount": 5},
          "created_at": at}]
    )  # fmt: skip
    document = decode(item)
    assert document["id"] == str(key)
    assert document["created_at"] == at.isoformat()
    assert document["payload"] == {"amount": 5}


def test_rows_of_one_call_get_distinct_ids() -> None:
    """Given 1,000 rows without ids, then each gets its own UUID."""
    items = codec().encode([{"user_id": n, "event_type": "view"} for n in range(1000)])
    assert len({decode(item)["id"] for item in items}) == 1000


@pytest.mark.parametrize(
    ("row", "column", "words"),
    [
        ({"user_id": 1, "event_type": "view", "colour": "red"}, "colour", "unknown column"),
        ({"event_type": "view"}, "user_id", "required column is missing"),
        ({"user_id": None, "event_type": "view"}, "user_id", "required column is null"),
        ({"user_id": "1", "event_type": "view"}, "user_id", "expected an integer"),
        ({"user_id": True, "event_type": "view"}, "user_id", "expected an integer"),
        ({"user_id": 2**63, "event_type": "view"}, "user_id", "an integer in"),
        ({"user_id": 1, "event_type": 3}, "event_type", "expected a string"),
        ({"user_id": 1, "event_type": "v", "id": "nope"}, "id", "a UUID string"),
        ({"user_id": 1, "event_type": "v", "created_at": "2026-01-01T00:00:00"}, "created_at",
         "UTC offset"),
        ({"user_id": 1, "event_type": "v", "created_at": "yesterday"}, "created_at", "ISO-8601"),
        ({"user_id": 1, "event_type": "v", "payload": {"when": datetime.now(UTC)}}, "payload",
         "not JSON-serializable"),
        ({"user_id": 1, "event_type": "v", "payload": {"x": float("nan")}}, "payload", "NaN"),
    ],
)  # fmt: skip
def test_an_invalid_row_is_refused_naming_the_buffer_the_row_and_the_column(
    row: dict[str, Any], column: str, words: str
) -> None:
    """Given a bad row at position 1 of a batch, then encode raises InvalidJob whose message
    names the buffer, row 1 and the column, and whose field is rows[1].<column>.
    """
    good = {"user_id": 1, "event_type": "view"}
    with pytest.raises(InvalidJob) as caught:
        codec().encode([good, row])
    message = str(caught.value)
    assert "'events'" in message
    assert "row 1" in message
    assert repr(column) in message
    assert words in message
    assert caught.value.field == f"rows[1].{column}"


def test_a_row_that_is_not_a_mapping_is_refused() -> None:
    """Given a list instead of a dict, then InvalidJob names the row."""
    with pytest.raises(InvalidJob, match="row 0: expected a mapping"):
        codec().encode([["user_id", 1]])  # type: ignore[list-item]


def test_optional_columns_may_be_absent_or_null_and_types_cover_the_allow_list() -> None:
    """Given a spec with an optional column and every other type, then absent/null optional
    values pass, decimals become strings, dates ISO text, and inf is refused.
    """
    spec = BufferSpec(
        table="t",
        columns={
            "note": "text?",
            "ok": "boolean",
            "ratio": "double precision",
            "price": "numeric",
            "day": "date",
            "small": "smallint",
        },
    )
    row = {"ok": True, "ratio": 0.5, "price": Decimal("1.50"), "day": date(2026, 1, 2),
           "small": 3}  # fmt: skip
    absent, null = codec(spec, "t").encode([row, {**row, "note": None}])
    assert "note" not in decode(absent)
    assert decode(null)["note"] is None
    assert decode(absent)["price"] == "1.50"
    assert decode(absent)["day"] == "2026-01-02"
    with pytest.raises(InvalidJob, match="'ratio'"):
        codec(spec, "t").encode([{**row, "ratio": float("inf")}])
    with pytest.raises(InvalidJob, match="'small'"):
        codec(spec, "t").encode([{**row, "small": 40_000}])
    with pytest.raises(InvalidJob, match="'day'"):
        codec(spec, "t").encode([{**row, "day": datetime.now(UTC)}])


def test_appended_at_reads_the_head_of_an_encoded_row() -> None:
    """Given encoded rows and foreign values, then the append time is read without parsing the
    whole document, and anything else gives None.
    """
    assert buffers.appended_at(b'{"_at":1700000000.5,"x":1}') == 1700000000.5
    assert buffers.appended_at(b'{"_at":1700000000}') == 1700000000.0
    assert buffers.appended_at(b'{"x":1}') is None
    assert buffers.appended_at(None) is None
    assert buffers.appended_at(b'{"_at":"soon","x":1}') is None


def test_the_flush_sql_quotes_identifiers_and_casts_through_json_to_record() -> None:
    """Given the events spec, then the INSERT reads the temp table through json_to_record with
    the declared types, and its ON CONFLICT twin skips rows already there by the declared key.
    """
    statements = buffers.statements(EVENTS)
    insert = statements.insert.as_string()
    assert insert == (
        'INSERT INTO "events" ("id", "user_id", "event_type", "payload", "created_at") '
        'SELECT "id", "user_id", "event_type", "payload", "created_at" '
        'FROM "buffer_rows" AS t, json_to_record(t.doc::json) AS r("id" uuid, "user_id" bigint, '
        '"event_type" text, "payload" jsonb, "created_at" timestamptz) '
        "WHERE t.n BETWEEN %s AND %s"
    )
    assert statements.upsert.as_string() == (
        insert + ' ON CONFLICT ("id", "created_at") DO NOTHING'
    )
    assert "ON COMMIT DROP" in statements.create.as_string()
    bare = BufferSpec(table="t", columns={"a": "text"})
    assert buffers.statements(bare).upsert.as_string().endswith("ON CONFLICT DO NOTHING")


def test_copy_payload_numbers_rows_and_escapes_backslashes() -> None:
    """Given JSON rows with escapes, then the COPY text has one numbered line per row and
    doubled backslashes (COPY's text format would otherwise unescape them).
    """
    rows = [b'{"a":"x\\"y"}', b'{"a":"\\u0000"}']
    assert buffers.copy_payload(rows) == b'1\t{"a":"x\\\\"y"}\n2\t{"a":"\\\\u0000"}\n'


def test_isolate_writes_everything_in_one_attempt_when_nothing_is_refused() -> None:
    """Given a batch the database accepts, then one attempt covers it all."""
    calls: list[tuple[int, int]] = []

    def attempt(first: int, last: int) -> int:
        calls.append((first, last))
        return last - first + 1

    assert buffers.isolate(5000, attempt) == (5000, [])
    assert calls == [(1, 5000)]


def test_isolate_finds_each_refused_row_in_few_attempts() -> None:
    """Given 10,000 rows of which rows 17 and 9,001 are refused, then exactly those two are
    reported (0-based positions), every other row is written once, in O(log n) attempts.
    """
    bad = {17, 9001}
    written_rows: list[int] = []
    calls = 0

    def attempt(first: int, last: int) -> int:
        nonlocal calls
        calls += 1
        if any(first <= n <= last for n in bad):
            raise psycopg.errors.CheckViolation("refused")
        written_rows.extend(range(first, last + 1))
        return last - first + 1

    written, rejected = buffers.isolate(10_000, attempt)
    assert written == 9998
    assert sorted(written_rows) == [n for n in range(1, 10_001) if n not in bad]
    assert [r.index for r in rejected] == [16, 9000]
    assert all(isinstance(r.error, psycopg.errors.CheckViolation) for r in rejected)
    assert calls <= 2 * 2 * 14 + 1


def test_isolate_lets_other_errors_through() -> None:
    """Given an error that is not about a row (connection lost), then it propagates."""

    def attempt(first: int, last: int) -> int:
        raise psycopg.OperationalError("server closed the connection")

    with pytest.raises(psycopg.OperationalError):
        buffers.isolate(10, attempt)


def test_schedule_entries_flush_every_buffer_at_its_interval() -> None:
    """Given the default settings, then there is one buffers.flush entry for events, every 5 s,
    on the buffers queue.
    """
    entries = buffers.schedule_entries(Settings())
    assert entries == {
        "buffers.flush:events": {
            "task": "buffers.flush",
            "schedule": 5.0,
            "kwargs": {"buffer": "events"},
            "options": {"queue": "buffers"},
        }
    }


def test_buffers_registry_comes_from_json_and_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given JOBS_BUFFERS as JSON, then it replaces the default; an undeclared conflict column,
    an unknown type or a bad buffer name is a configuration error naming it.
    """
    good = {"clicks": {"table": "clicks", "columns": {"id": "uuid", "url": "text"},
                       "conflict_columns": ["id"], "generated": {"id": "uuid4"},
                       "batch_size": 100}}  # fmt: skip
    monkeypatch.setenv("JOBS_BUFFERS", json.dumps(good))
    settings = load_settings()
    assert list(settings.buffers) == ["clicks"]
    assert settings.buffers["clicks"].batch_size == 100
    bad_cases = [
        ({"t": {"table": "t", "columns": {"a": "text"}, "conflict_columns": ["b"]}}, "'b'"),
        ({"t": {"table": "t", "columns": {"a": "varchar(3)"}}}, "varchar(3)"),
        ({"t": {"table": "t", "columns": {"a": "text"}, "generated": {"a": "utcnow"}}}, "utcnow"),
        ({"bad name": {"table": "t", "columns": {"a": "text"}}}, "bad name"),
        ({"t": {"table": "t; drop", "columns": {"a": "text"}}}, "BUFFERS_T_TABLE"),
    ]
    for value, words in bad_cases:
        monkeypatch.setenv("JOBS_BUFFERS", json.dumps(value))
        with pytest.raises(ConfigurationError, match="BUFFERS") as caught:
            load_settings()
        assert words in str(caught.value)


def test_an_unknown_buffer_is_refused_naming_the_known_ones() -> None:
    """Given a name not in JOBS_BUFFERS, then WriteBuffer raises InvalidJob listing them."""
    with pytest.raises(InvalidJob, match=r"unknown write buffer 'nope'; known: \['events'\]"):
        buffers.WriteBuffer("nope", settings=Settings())


def test_the_buffer_tasks_are_registered_with_their_wire_names_and_queue() -> None:
    """Given the catalogue, then buffers.flush and buffers.write_row are jobs on 'buffers'."""
    from workers.app import CATALOGUE  # noqa: PLC0415

    assert "jobs.buffers.tasks" in CATALOGUE
    assert buffers.flush_buffer.name == "buffers.flush"
    assert buffers.write_row.name == "buffers.write_row"
    assert buffers.flush_buffer.queue == buffers.write_row.queue == "buffers"
