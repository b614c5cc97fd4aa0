"""``jobctl health``: a worker whose consumer silently stopped is named; readiness per dependency.

The stuck consumer is made for real: the worker reaches Redis through a TCP proxy in this test
that can freeze only the consumer's connection (the one that sends the fetch script and BRPOP),
so the process, its housekeeping thread and its heartbeats all stay fine, exactly like Celery's
consumer after a bad reconnect. ``jobctl`` runs as a subprocess against Redis directly.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

import jobs
from ops.cli import app as jobctl_app
from tests import tasks
from tests.integration.test_execution import runs
from tests.support.worker import wait_for
from workers import health, keys
from workers.housekeeping import Housekeeper
from workers.settings import get_settings
from workers.transport import _FETCH_SHA

STUCK_AFTER = 3.0


class FreezingProxy:
    """A TCP proxy to Redis that can stop forwarding on consumer connections only.

    A connection becomes a consumer connection when it sends BRPOP or the fetch script's SHA.
    While frozen, such connections forward nothing either way (the bytes wait, the sockets stay
    open), like a half-open connection; other connections (housekeeping, acks) keep working.
    """

    MARKERS = (b"BRPOP", _FETCH_SHA.encode())

    def __init__(self, upstream: tuple[str, int]) -> None:
        """Listen on a spare loopback port."""
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thawed = threading.Event()
        self.thawed.set()
        self.frozen_connections = 0
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        """Stop forwarding on consumer connections."""
        self.thawed.clear()

    def thaw(self) -> None:
        """Forward again (held bytes flow on)."""
        self.thawed.set()

    def close(self) -> None:
        """Close every socket."""
        self._closing = True
        self.thawed.set()
        for sock in [self.listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            state = {"consumer": False}
            threading.Thread(
                target=self._pump, args=(client, server, state, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, state, False), daemon=True
            ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, state: dict[str, bool], up: bool
    ) -> None:
        try:
            while data := src.recv(65536):
                if up and not state["consumer"] and any(m in data for m in self.MARKERS):
                    state["consumer"] = True
                if state["consumer"] and not self.thawed.is_set():
                    self.frozen_connections += 1
                    self.thawed.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy() -> Iterator[FreezingProxy]:
    """A freezing proxy in front of the test Redis."""
    url = urlsplit(os.environ["JOBS_REDIS_URL"])
    server = FreezingProxy((url.hostname or "127.0.0.1", url.port or 6379))
    yield server
    server.close()


def cli_env(**overrides: str) -> dict[str, str]:
    """The test environment with ``overrides`` (for jobctl subprocesses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return {**env, "JOBS_HEALTH_STUCK_AFTER": str(STUCK_AFTER), "COLUMNS": "250", **overrides}


def jobctl(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    """Run ``jobctl`` as a subprocess."""
    return subprocess.run(
        [sys.executable, "-c", "from ops.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=cli_env(**overrides),
        timeout=60,
        check=False,
    )


def test_a_worker_whose_consumer_connection_froze_is_named_by_jobctl_health(
    clean: Any, proxy: FreezingProxy, workers: Any
) -> None:
    """Given an idle worker reaching Redis through a proxy, then `jobctl health` exits 0; when
    only its consumer connection freezes (process, housekeeping and heartbeats unaffected),
    then within about JOBS_HEALTH_STUCK_AFTER `jobctl health` exits 1 naming that worker and
    the worker logs consumer_stuck; when the connection thaws, it consumes again and is healthy.
    """
    db, client = clean
    real = urlsplit(os.environ["JOBS_REDIS_URL"])
    via_proxy = real._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    worker = workers(
        concurrency=1,
        extra_env={"JOBS_REDIS_URL": via_proxy, "JOBS_HEALTH_STUCK_AFTER": str(STUCK_AFTER)},
    )
    wait_for(lambda: health.read(client), 10, "the worker's health record")
    healthy = jobctl("health")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert f"pid={worker.pid}" in healthy.stdout
    assert "OK" in healthy.stdout

    proxy.freeze()
    frozen_at = time.monotonic()
    wait_for(lambda: proxy.frozen_connections, 5, "the consumer connection frozen")
    assert client.zscore(keys.consumers(), next(iter(health.read(client)))) is not None

    def stuck() -> subprocess.CompletedProcess[str] | None:
        result = jobctl("health")
        return result if result.returncode == 1 else None

    reported = wait_for(stuck, 20, "jobctl health reporting the stuck worker", interval=0.2)
    # Not at once: the last answered poll is at most one brpop_timeout (1 s) before the freeze.
    assert time.monotonic() - frozen_at >= STUCK_AFTER - 1.0
    assert f"pid={worker.pid}" in reported.stderr
    assert "stuck worker(s)" in reported.stderr
    assert "no successful poll" in reported.stderr
    record = next(iter(health.read(client).values()))
    assert record.pid == worker.pid
    wait_for(lambda: "consumer_stuck" in worker.log(), 5, "the worker's own consumer_stuck log")

    proxy.thaw()
    jobs.enqueue(tasks.record, name="after-thaw")
    wait_for(lambda: runs(db, "after-thaw"), 15, "the worker consuming again")
    wait_for(lambda: jobctl("health").returncode == 0, 15, "jobctl health healthy again")

    worker.stop()
    assert health.read(client) == {}  # a clean shutdown leaves no record behind


def test_recovering_a_dead_consumer_deletes_its_health_record(clean: Any) -> None:
    """Given a consumer whose heartbeat stopped (its worker was SIGKILLed) and a live one, when
    housekeeping recovers dead consumers, then the dead one's record is deleted and the live
    one's is kept.
    """
    _, client = clean
    now = time.time()
    for consumer, beat in (("dead:1:a", now - 60), ("live:2:b", now)):
        host = consumer.split(":")[0]
        rec = health.HealthRecord(consumer, host, 1, ("default",), now, now, None, 0, 1, now)
        client.zadd(keys.consumers(), {consumer: beat})
        client.hset(keys.worker_health(), consumer, rec.to_json())
    keeper = Housekeeper(get_settings())
    keeper.connect()
    keeper.recover_dead_consumers(now)
    assert set(health.read(client)) == {"live:2:b"}


def test_liveness_fails_without_a_live_worker_and_per_host_filters(clean: Any) -> None:
    """Given no worker at all, `jobctl health` exits 1 saying so; with a live record of another
    host, `--host` for this host still fails and for that host succeeds.
    """
    _, client = clean
    runner = CliRunner()
    none = runner.invoke(jobctl_app, ["health"])
    assert none.exit_code == 1
    assert "no live worker" in none.output
    now = time.time()
    consumer = "elsewhere:77:abc"
    record = health.HealthRecord(consumer, "elsewhere", 77, ("default",), now, now, None, 0, 1, now)
    client.zadd(keys.consumers(), {consumer: now})
    client.hset(keys.worker_health(), consumer, record.to_json())
    assert runner.invoke(jobctl_app, ["health", "--host", "elsewhere"]).exit_code == 0
    mine = runner.invoke(jobctl_app, ["health", "--host", socket.gethostname()])
    assert mine.exit_code == 1
    assert "no live worker on host" in mine.output


def test_readiness_is_ok_when_broker_and_database_answer(clean: Any) -> None:
    """Given Redis and PostgreSQL up, `jobctl health --ready` exits 0 with one ok line each."""
    result = jobctl("health", "--ready")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "broker"], ["ok", "database"]]


def test_readiness_names_an_unreachable_database_without_its_password(clean: Any) -> None:
    """Given a JOBS_DATABASE_URL nobody listens on, `jobctl health --ready` exits 1 with a FAIL
    line naming the database (password redacted) while the broker line is ok.
    """
    result = jobctl(
        "health",
        "--ready",
        JOBS_DATABASE_URL="postgresql+psycopg://jobs:sentinel-pw@127.0.0.1:1/nowhere",
    )
    assert result.returncode == 1
    assert result.stdout.startswith("ok   broker")
    assert result.stderr.startswith("FAIL database")
    assert "sentinel-pw" not in result.stdout + result.stderr


def test_readiness_names_an_unreachable_broker(clean: Any) -> None:
    """Given a JOBS_REDIS_URL nobody listens on, `jobctl health --ready` exits 1 naming the
    broker.
    """
    result = jobctl("health", "--ready", JOBS_REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "FAIL broker" in result.stderr
