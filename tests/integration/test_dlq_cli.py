"""``jobctl dlq`` through the real CLI: list, show, stats, replay and purge."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

import jobs
from ops.cli import app
from tests import tasks
from tests.support.worker import REPO, wait_for
from workers import deadletters, replay, resources

if TYPE_CHECKING:
    from collections.abc import Iterator

runner = CliRunner()


@pytest.fixture(autouse=True)
def _close_engine() -> Iterator[None]:
    """Close this process's pooled connections after each test (the CLI runs in-process)."""
    yield
    resources.engine().dispose()


TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/tests/tasks.py", line 50, in record\n'
    "    raise Boom(name)\n"
    "tests.tasks.Boom: fixable\n"
)


def cli(*args: str, stdin: str | None = None) -> Any:
    """Run ``jobctl`` in-process; returns click's result (exit_code, output, stdout)."""
    return runner.invoke(app, list(args), input=stdin)


def cli_json(*args: str) -> Any:
    """Run a command with --json; returns the parsed stdout (exit code 0 asserted)."""
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def dead_letter(
    name: str,
    *,
    task: str = "tests.record",
    queue: str = "default",
    exc_type: str = "Boom",
    reason: str = "exhausted",
    raw_message: str | None = None,
    priority: int | None = None,
) -> int:
    """A "fixable" dead letter: replaying it runs ``tests.record`` with no failure flags."""
    return deadletters.write(
        resources.engine(),
        deadletters.DeadLetterRecord(
            job_id=f"job-{name}",
            task_name=task,
            queue=queue,
            reason=reason,
            kwargs={} if raw_message else {"name": name},
            idempotency_key=f"key-{name}",
            priority=priority,
            attempts=3,
            exc_type=exc_type,
            exc_message=f"{name}: failure on attempt 3",
            traceback=TRACEBACK,
            raw_message=raw_message,
        ),
    )


def row(db: Any, entry_id: int) -> dict[str, Any]:
    """The replay-related columns of one dead letter."""
    cursor = db.execute(
        "SELECT status, replay_count, replay_history, last_replayed_at "
        "FROM dead_letters WHERE id = %s",
        (entry_id,),
    )
    names = [c.name for c in cursor.description]
    return dict(zip(names, cursor.fetchone(), strict=True))


def hits(db: Any, name: str) -> int | None:
    """How often the side effect of ``name`` ran (None: never)."""
    found = db.execute("SELECT hits FROM test_effects WHERE name = %s", (name,)).fetchone()
    return found[0] if found else None


def queued(redis_client: Any, queue: str) -> list[dict[str, Any]]:
    """The envelopes waiting in ``queue``'s Redis list."""
    return [json.loads(raw) for raw in redis_client.lrange(queue, 0, -1)]


def test_list_filters_by_task_error_time_and_status_and_prints_json(clean: Any) -> None:
    """List filters by task error time and status and prints json.

    Given dead letters of two tasks, one of them old, when listing with filters, then each
    filter narrows the JSON output and the table shows the rows.
    """
    db, _ = clean
    recent = dead_letter("recent")
    old = dead_letter("old")
    other = dead_letter("other", task="tests.noop", exc_type="ValueError")
    db.execute(
        "UPDATE dead_letters SET last_failed_at = now() - interval '3 days' WHERE id = %s", (old,)
    )

    def ids(*args: str) -> set[int]:
        return {entry["id"] for entry in cli_json("dlq", "list", *args)}

    assert ids() == {recent, old, other}
    assert ids("--task", "tests.record") == {recent, old}
    assert ids("--error", "ValueError") == {other}
    assert ids("--error", "exhausted", "--task", "tests.noop") == {other}
    assert ids("--since", "1d") == {recent, other}
    assert ids("--until", "2d") == {old}
    assert ids("--status", "replayed") == set()
    assert len(ids("--limit", "1")) == 1
    table = cli("dlq", "list", "--task", "tests.noop")
    assert table.exit_code == 0, table.output
    assert "tests.noop" in table.stdout
    assert "ValueError" in table.stdout


def test_list_names_the_option_of_a_bad_time_and_exits_2(clean: Any) -> None:
    """Given a --since that is neither ISO nor an age, then the error names --since, exit code 2."""
    result = cli("dlq", "list", "--since", "yesterday")
    assert result.exit_code == 2
    assert "--since" in result.output
    assert "Traceback" not in result.output


def test_show_prints_arguments_error_traceback_and_history(clean: Any) -> None:
    """Show prints arguments error traceback and history.

    Given a dead letter replayed once, when shown, then its kwargs, error, traceback and
    replay history are printed (and in --json); an unknown id exits 1.
    """
    entry = dead_letter("shown")
    deadletters.mark_replayed(resources.engine(), entry, queue="default", by="alice")
    result = cli("dlq", "show", str(entry))
    assert result.exit_code == 0, result.output
    for expected in ("tests.record", '"name": "shown"', "Boom", "raise Boom(name)", "alice"):
        assert expected in result.stdout
    data = cli_json("dlq", "show", str(entry))
    assert data["kwargs"] == {"name": "shown"}
    assert data["replay_history"][0]["by"] == "alice"
    missing = cli("dlq", "show", "999999")
    assert missing.exit_code == 1
    assert "no dead letter with id 999999" in missing.output


def test_stats_counts_by_task_and_by_fingerprint(clean: Any) -> None:
    """Stats counts by task and by fingerprint.

    Given three dead letters of two tasks and two error kinds, then stats groups them by task
    and by fingerprint (exception type + top frame), largest first.
    """
    dead_letter("a")
    dead_letter("b")
    dead_letter("c", task="tests.noop", exc_type="ValueError")
    data = cli_json("dlq", "stats")
    assert data["total"] == 3
    assert data["by_task"] == [
        {"task": "tests.record", "count": 2},
        {"task": "tests.noop", "count": 1},
    ]
    assert data["by_fingerprint"] == [
        {"fingerprint": "Boom@tasks.py:record", "count": 2},
        {"fingerprint": "ValueError@tasks.py:record", "count": 1},
    ]
    table = cli("dlq", "stats")
    assert table.exit_code == 0, table.output
    assert "Boom@tasks.py:record" in table.stdout


def test_replay_by_id_runs_the_job_and_records_the_replay(clean: Any, workers: Any) -> None:
    """Replay by id runs the job and records the replay.

    Given a fixable dead letter and a worker, when replayed by id, then the job runs with its
    original key on a fresh attempt budget, and the row says replayed with one history event.
    """
    db, _ = clean
    entry = dead_letter("fixed")
    workers()
    result = cli("dlq", "replay", str(entry), "--by", "alice")
    assert result.exit_code == 0, result.output
    assert "Replayed 1 entries" in result.stdout
    wait_for(lambda: hits(db, "fixed"), 20, "replayed side effect")
    effect = db.execute("SELECT key, hits FROM test_effects WHERE name = 'fixed'").fetchone()
    assert effect == ("key-fixed", 1)
    assert db.execute("SELECT attempt FROM test_runs WHERE name = 'fixed'").fetchall() == [(1,)]
    state = row(db, entry)
    assert state["status"] == "replayed"
    assert state["replay_count"] == 1
    assert state["last_replayed_at"] is not None
    assert [(e["queue"], e["by"]) for e in state["replay_history"]] == [("default", "alice")]


def test_replaying_the_same_entry_twice_runs_the_side_effect_once(clean: Any, workers: Any) -> None:
    """Replaying the same entry twice runs the side effect once.

    Given an entry replayed and run, when it is replayed again, then the second message is
    skipped as already done: hits stays 1 and the row records two replays.
    """
    db, redis_client = clean
    entry = dead_letter("twice")
    workers(concurrency=1)
    assert cli("dlq", "replay", str(entry)).exit_code == 0
    wait_for(lambda: hits(db, "twice"), 20, "first replay ran")
    second = cli("dlq", "replay", str(entry))
    assert second.exit_code == 0, second.output
    wait_for(
        lambda: redis_client.get("jobs:counter:duplicates_skipped"), 20, "second replay skipped"
    )
    wait_for(lambda: redis_client.llen("default") == 0, 10, "queue drained")
    assert hits(db, "twice") == 1
    assert len(db.execute("SELECT 1 FROM test_runs WHERE name = 'twice'").fetchall()) == 1
    assert row(db, entry)["replay_count"] == 2


def test_dry_run_publishes_nothing_and_changes_no_row(clean: Any) -> None:
    """Dry run publishes nothing and changes no row.

    Given dead letters, when replayed with --dry-run, then it reports what it would do, no
    message reaches Redis and the rows are unchanged.
    """
    db, redis_client = clean
    first, second = dead_letter("dry-1"), dead_letter("dry-2")
    before = [row(db, first), row(db, second)]
    result = cli("dlq", "replay", "--task", "tests.record", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Dry run: would replay 2 entries" in result.stdout
    assert redis_client.dbsize() == 0
    assert [row(db, first), row(db, second)] == before


def test_limit_replays_at_most_n_entries(clean: Any) -> None:
    """Limit replays at most n entries.

    Given five dead letters, when replayed with --all --limit 2, then exactly two messages
    are queued and exactly two rows are marked replayed.
    """
    db, redis_client = clean
    for n in range(5):
        dead_letter(f"lim-{n}")
    result = cli("dlq", "replay", "--all", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert redis_client.llen("default") == 2
    statuses = db.execute(
        "SELECT status, count(*) FROM dead_letters GROUP BY status ORDER BY status"
    )
    assert statuses.fetchall() == [("dead", 3), ("replayed", 2)]


def test_rate_paces_the_replay(clean: Any) -> None:
    """Rate paces the replay.

    Given ten dead letters, when replayed at --rate 5/s, then all ten are queued and it takes
    about a second (five at once from the full bucket, five more a second later).
    """
    _, redis_client = clean
    for n in range(10):
        dead_letter(f"paced-{n}")
    started = time.monotonic()
    result = cli("dlq", "replay", "--all", "--rate", "5/s")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert redis_client.llen("default") == 10
    assert 0.9 <= elapsed < 5


def test_replay_streams_thousands_of_entries_in_batches(clean: Any) -> None:
    """Replay streams thousands of entries in batches.

    Given 3,000 dead letters, when all are replayed with batches of 500, then every one is
    queued once with its own id, every row is marked once, and progress is reported per batch.
    """
    db, redis_client = clean
    db.execute(
        "INSERT INTO dead_letters (job_id, task_name, queue, kwargs, idempotency_key, reason, "
        "fingerprint) SELECT 'bulk-' || n, 'tests.record', 'default', "
        "jsonb_build_object('name', 'bulk-' || n), 'key-bulk-' || n, 'exhausted', 'Boom' "
        "FROM generate_series(1, 3000) AS n"
    )
    reports: list[int] = []
    summary = replay.replay(
        resources.engine(),
        deadletters.Selector(),
        replay.ReplayOptions(batch=500, by="bulk"),
        on_progress=lambda s: reports.append(s.replayed),
    )
    assert summary.replayed == 3000
    assert summary.skipped == 0
    assert reports == list(range(500, 3001, 500))
    assert redis_client.llen("default") == 3000
    ids = {json.loads(raw)["headers"]["id"] for raw in redis_client.lrange("default", 0, -1)}
    assert len(ids) == 3000
    marked = db.execute("SELECT status, replay_count, count(*) FROM dead_letters GROUP BY 1, 2")
    assert marked.fetchall() == [("replayed", 1, 3000)]


def test_filters_replay_only_dead_entries_unless_a_status_is_given(clean: Any) -> None:
    """Filters replay only dead entries unless a status is given.

    Given one dead and one already-replayed entry, when replayed by task, then only the dead
    one is published.
    """
    db, redis_client = clean
    dead_letter("still-dead")
    done = dead_letter("was-replayed")
    deadletters.mark_replayed(resources.engine(), done, queue="default", by="bob")
    assert cli("dlq", "replay", "--task", "tests.record").exit_code == 0
    assert [m["headers"]["id"] for m in queued(redis_client, "default")] == ["job-still-dead"]
    assert row(db, done)["replay_count"] == 1


def test_queue_option_replays_into_another_queue_with_the_original_identity(clean: Any) -> None:
    """Queue option replays into another queue with the original identity.

    Given a dead letter of the default queue, when replayed with --queue webhooks, then the
    message waits in the webhooks list with the original job id and key and attempt 1.
    """
    db, redis_client = clean
    entry = dead_letter("moved")
    result = cli("dlq", "replay", str(entry), "--queue", "webhooks")
    assert result.exit_code == 0, result.output
    assert redis_client.llen("default") == 0
    [message] = queued(redis_client, "webhooks")
    headers = message["headers"]
    assert headers["id"] == "job-moved"
    assert headers["task"] == "tests.record"
    assert headers["jobs"]["key"] == "key-moved"
    assert headers["jobs"]["attempt"] == 1
    assert message["properties"]["delivery_info"]["routing_key"] == "webhooks"
    assert row(db, entry)["replay_history"][0]["queue"] == "webhooks"


def test_replay_rejects_an_unknown_queue_and_a_bad_rate_naming_the_option(clean: Any) -> None:
    """Given a queue that does not exist or a malformed rate, then exit 2 names the option."""
    entry = str(dead_letter("bad-input"))
    unknown = cli("dlq", "replay", entry, "--queue", "nowhere")
    assert unknown.exit_code == 2
    assert "--queue" in unknown.output
    rate = cli("dlq", "replay", entry, "--rate", "fast")
    assert rate.exit_code == 2
    assert "--rate" in rate.output


def test_replay_and_purge_refuse_to_run_without_a_selection(clean: Any) -> None:
    """Given no ids, no filter and no --all, then replay and purge stop with a usage error."""
    dead_letter("kept")
    for command in ("replay", "purge"):
        result = cli("dlq", command)
        assert result.exit_code == 2
        assert "--all" in result.output
    assert len(cli_json("dlq", "list")) == 1


def test_replay_refuses_a_poison_entry_and_reports_why(clean: Any) -> None:
    """Replay refuses a poison entry and reports why.

    Given a poison dead letter (only the raw message kept) beside a fixable one, when both
    are replayed, then the poison one is skipped with its reason and stays dead.
    """
    db, redis_client = clean
    poison = dead_letter("poison", task="?", reason="decode_error", raw_message="bm90IGpzb24=")
    fixable = dead_letter("fine")
    result = cli("dlq", "replay", str(poison), str(fixable))
    assert result.exit_code == 0, result.output
    assert "1 skipped" in result.stdout
    assert f"#{poison}" in result.stdout
    assert "not replayable: decode_error" in result.stdout
    assert [m["headers"]["id"] for m in queued(redis_client, "default")] == ["job-fine"]
    assert row(db, poison)["status"] == "dead"
    assert row(db, fixable)["status"] == "replayed"


def test_purge_asks_for_confirmation_and_deletes_only_the_selection(clean: Any) -> None:
    """Purge asks for confirmation and deletes only the selection.

    Given dead letters of two tasks, when purging one task and declining, then nothing is
    deleted; with --yes only that task's rows are deleted.
    """
    dead_letter("stay")
    dead_letter("go-1", task="tests.noop")
    dead_letter("go-2", task="tests.noop")
    declined = cli("dlq", "purge", "--task", "tests.noop", stdin="n\n")
    assert declined.exit_code == 1
    assert "Delete 2 dead letters?" in declined.output
    assert len(cli_json("dlq", "list")) == 3
    confirmed = cli("dlq", "purge", "--task", "tests.noop", stdin="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert "Deleted 2 dead letters" in confirmed.stdout
    assert [e["task_name"] for e in cli_json("dlq", "list")] == ["tests.record"]
    forced = cli("dlq", "purge", "--all", "--yes")
    assert forced.exit_code == 0, forced.output
    assert cli_json("dlq", "list") == []


def test_a_permanently_failing_job_shows_up_in_dlq_list(clean: Any, workers: Any) -> None:
    """A permanently failing job shows up in dlq list.

    Given a worker, when a job fails permanently, then `dlq list` shows it as dead with its
    error, and `dlq show` has its traceback.
    """
    workers()
    jobs.enqueue(tasks.record, name="doomed", permanent=True)
    [entry] = wait_for(lambda: cli_json("dlq", "list", "--task", "tests.record"), 20, "dead letter")
    assert entry["status"] == "dead"
    assert entry["reason"] == "permanent_error"
    assert entry["exc_type"] == "PermanentError"
    assert entry["kwargs"] == {"name": "doomed", "permanent": True}
    shown = cli("dlq", "show", str(entry["id"]))
    assert "doomed: permanent failure" in shown.stdout


def test_the_console_entry_point_lists_dead_letters_as_json(
    clean: Any, worker_env: dict[str, str]
) -> None:
    """The console entry point lists dead letters as json.

    Given a dead letter, when `jobctl dlq list --json` runs as a real process, then it exits 0
    and prints that entry as JSON.
    """
    entry = dead_letter("subprocess")
    done = subprocess.run(
        [sys.executable, "-c", "from ops.cli import main; main()", "dlq", "list", "--json"],
        cwd=REPO,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [e["id"] for e in json.loads(done.stdout)] == [entry]
