"""Envelope wire format (pure functions): packing, the template admit.lua joins, fragments."""

from __future__ import annotations

import json

import pytest

from workers.envelope_run import resp
from workers.envelopes import (
    ENVELOPE_TASK,
    fragment,
    fragment_problem,
    job_of,
    pack,
    template,
)
from workers.job import Job


def join(pieces: list[str], fragments: list[str]) -> str:
    """What admit.lua does with the template and the admitted fragments."""
    n = str(len(fragments))
    return pieces[0] + ",".join(fragments) + pieces[1] + n + pieces[2] + n + pieces[3]


def a_job(n: int, **extra: object) -> Job:
    extra.setdefault("run", f"id-{n}")
    return Job(
        id=f"id-{n}",
        task="orders.charge",
        key=f"key-{n}",
        queue="default",
        args=(n,),
        kwargs={"text": 'quote " backslash \\ é \u2028', "n": n, "f": 0.1},
        **extra,  # type: ignore[arg-type]
    )


def test_the_joined_template_is_a_celery_message_carrying_every_fragment_intact() -> None:
    """Given a template and three fragments (quotes, backslashes, non-ASCII in their kwargs),
    when they are joined as admit.lua joins them, then the result is JSON whose raw body is a
    protocol-2 body for ``jobs.envelope`` with the three jobs equal to the originals, and the
    job count appears in ``jobs_count`` and in Flower's kwargsrepr.
    """
    pieces = template(
        task="orders.charge", queue="default", priority=3, time_limit=30.0,
        soft_time_limit=29.5, ready_at=12.5, origin="1@host",
    )  # fmt: skip
    jobs = [a_job(n) for n in range(3)]
    message = json.loads(join(pieces, [fragment(job) for job in jobs]))
    assert message["headers"]["task"] == ENVELOPE_TASK
    assert message["headers"]["jobs_count"] == "3"
    assert "<3 jobs>" in message["headers"]["kwargsrepr"]
    assert message["headers"]["jobs"] == {"ready_at": 12.5}
    assert message["headers"]["timelimit"] == [30.0, 29.5]  # never the app's default soft limit
    assert message["properties"]["priority"] == 3
    assert "body_encoding" not in message["properties"]  # raw JSON body
    args, kwargs, embed = json.loads(message["body"])
    assert args == []
    assert embed["chain"] is None
    assert kwargs["task"] == "orders.charge"
    decoded = [
        job_of(value, task="orders.charge", queue="default", priority=3) for value in kwargs["jobs"]
    ]
    assert [(j.id, j.key, j.args, j.kwargs) for j in decoded] == [
        (j.id, j.key, j.args, j.kwargs) for j in jobs
    ]
    assert [j.run for j in decoded] == [j.id for j in jobs]  # default run = the job id


def test_each_template_is_a_new_envelope() -> None:
    """Two templates carry different envelope ids and delivery tags."""
    first, second = (
        json.loads(join(template(task="t", queue="q", priority=None, time_limit=1.0,
                                 soft_time_limit=0.5, ready_at=0.0, origin="o"), ["{}"]))
        for _ in range(2)
    )  # fmt: skip
    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]


def test_a_fragment_carries_non_default_state_only() -> None:
    """A retried job's fragment keeps its attempt, run and pending dead letter."""
    plain = json.loads(json.loads(f'"{fragment(a_job(1))}"'))
    assert set(plain) == {"id", "args", "kwargs", "key"}
    state = a_job(1, attempt=3, run="r-9", pending_dead_letter={"reason": "x"})
    value = json.loads(json.loads(f'"{fragment(state)}"'))
    assert (value["attempt"], value["run"], value["dl"]) == (3, "r-9", {"reason": "x"})


@pytest.mark.parametrize(
    ("sizes", "max_jobs", "max_bytes", "expected"),
    [
        ([10] * 250, 100, 10**6, [(0, 100), (100, 200), (200, 250)]),
        ([10] * 5, 100, 25, [(0, 2), (2, 4), (4, 5)]),
        ([100, 5, 5], 100, 50, [(0, 1), (1, 3)]),  # an oversized job travels alone
        ([], 100, 100, []),
        ([1], 1, 100, [(0, 1)]),
    ],
)
def test_pack_bounds_envelopes_by_count_and_bytes(
    sizes: list[int], max_jobs: int, max_bytes: int, expected: list[tuple[int, int]]
) -> None:
    """Consecutive ranges, none over the count, none over the bytes unless one job is."""
    assert list(pack(sizes, max_jobs=max_jobs, max_bytes=max_bytes)) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"id": "a", "args": [], "kwargs": {}, "key": "k"}, None),
        ("text", "the job is a str, not an object"),
        ({"id": "a", "args": [], "kwargs": {}}, "the job has no 'key'"),
        ({"id": "a", "args": {}, "kwargs": {}, "key": "k"}, "job.args is {}, not a list"),
        ({"id": "a", "args": [], "kwargs": [], "key": "k"}, "job.kwargs is [], not a dict"),
        ({"id": 1, "args": [], "kwargs": {}, "key": "k"}, "job.id is 1, not a str"),
        ({"id": "a", "args": [], "kwargs": {}, "key": "k", "attempt": 0},
         "job.attempt is 0, not a positive count"),
        ({"id": "a", "args": [], "kwargs": {}, "key": "k", "attempt": True},
         "job.attempt is True, not a int"),
    ],
)  # fmt: skip
def test_fragment_problem_names_the_field(value: object, problem: str | None) -> None:
    """A malformed fragment is described by the field at fault."""
    assert fragment_problem(value) == problem


def test_resp_encodes_the_redis_protocol() -> None:
    """``resp`` writes what redis-py's packer writes for the same command."""
    assert resp(b"SET", b"k", b"v\r\n") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n"
