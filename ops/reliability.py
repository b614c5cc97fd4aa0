"""Render ``docs/reliability.md`` from the FIGURE lines of the fault tests.

Each fault scenario under ``tests/faults`` asserts its guarantee and prints one line starting
with ``FIGURE``. With ``JOBS_TEST_FIGURES=<file>`` set, ``tests/faults/conftest.py`` appends one
JSON record per test to that file (test id, outcome, duration, its FIGURE lines, machine).
This module groups the latest record of each test under the issue's scenarios::

    rm -f bench/results/figures.jsonl
    JOBS_TEST_FIGURES=bench/results/figures.jsonl python -m pytest tests/faults -m "not slow"
    JOBS_TEST_FIGURES=bench/results/figures.jsonl python -m pytest tests/faults -m slow
    python -m ops.reliability bench/results/figures.jsonl -o docs/reliability.md

Several files may be given (e.g. a CI run and a full run by hand); for each test the most
recent record wins.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where the records go by default (bench/results/ is not committed).
DEFAULT_FIGURES = Path("bench/results/figures.jsonl")
#: The generated page.
DEFAULT_OUTPUT = Path("docs/reliability.md")


@dataclass(frozen=True, slots=True)
class Scenario:
    """One fault scenario of the issue: what it proves, and which tests measure it.

    A test belongs to the first scenario whose ``modules`` hold its file and (when
    ``pattern`` is given) whose pattern matches its name or its FIGURE lines.
    """

    title: str
    guarantee: str
    modules: tuple[str, ...]
    pattern: str | None = None

    def claims(self, record: Record) -> bool:
        """Whether ``record`` measures this scenario."""
        if Path(record.module).name not in self.modules:
            return False
        if self.pattern is None:
            return True
        text = " ".join([record.name, *record.figures]).lower()
        return re.search(self.pattern, text) is not None


#: The scenarios of issue 7's "Faults" list, in its order (plus the neighbouring outages).
SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "Workers SIGKILLed during a 10,000-job drain",
        "10,000 jobs with a PostgreSQL side effect, workers SIGKILLed 5 times: 0 lost, "
        "0 side effects twice.",
        ("test_kill_drain.py",),
        r"sigkill|kill_?\d|killed|kill_drain",
    ),
    Scenario(
        "Redis killed and restarted",
        "Redis (AOF on) killed and restarted mid-run: producers get a clear error during the "
        "outage, 0 accepted jobs lost after recovery.",
        ("test_redis_faults.py", "test_redis_restart.py", "test_outages.py"),
        r"restart|kill|crash",
    ),
    Scenario(
        "Redis frozen (SIGSTOP)",
        "Redis frozen 20 s: enqueue p99 <= 1.5 s, no hang, throughput back within 15 s of SIGCONT.",
        ("test_redis_faults.py", "test_outages.py"),
        r"sigstop|frozen|freeze",
    ),
    Scenario(
        "A worker frozen longer than the visibility timeout",
        "A worker frozen (SIGSTOP) longer than the visibility timeout: 0 side effects twice.",
        ("test_worker_faults.py",),
        r"sigstop|frozen|freeze",
    ),
    Scenario(
        "PostgreSQL stopped",
        "PostgreSQL stopped for 30 s during flushes, refreshes and dead-lettering: 0 rows "
        "lost, everything completes or is dead-lettered after recovery.",
        ("test_postgres_outage.py", "test_buffer_outage.py", "test_outages.py"),
        r"postgres|buffer|dead.letter",
    ),
    Scenario(
        "Webhook receiver answering 503",
        "Receiver returning 503 for 100 % of requests for 60 s: outbound attempts per job "
        "<= max attempts, the breaker opens, then everything is delivered or dead-lettered.",
        ("test_receiver_outage.py",),
    ),
    Scenario(
        "Rolling restart (SIGTERM to every worker)",
        "SIGTERM to every worker under load: 0 lost.",
        ("test_worker_faults.py", "test_kill_drain.py"),
        r"sigterm|rolling|restart",
    ),
    Scenario(
        "Reconnect storm",
        "20 workers reconnecting after a Redis restart: connection attempts spread over time "
        "(histogram), no burst.",
        ("test_reconnect_storm.py",),
    ),
    Scenario(
        "Beat leader SIGKILLed",
        "Two beats, the leader SIGKILLed: failover within the lock timeout, no tick twice "
        "over 10 min.",
        ("test_beat_failover.py",),
    ),
    Scenario(
        "Bad input",
        "10 kinds of malformed messages and 10 kinds of bad enqueue arguments: every one gets "
        "a clear error or a dead letter with the reason; workers never crash.",
        ("test_bad_input.py",),
    ),
)


@dataclass(frozen=True, slots=True)
class Record:
    """One test's result as ``tests/faults/conftest.py`` wrote it."""

    test: str
    module: str
    name: str
    doc: str
    slow: bool
    outcome: str
    seconds: float
    figures: tuple[str, ...]
    at: str
    machine: dict[str, Any] = field(default_factory=dict)
    #: Why the test is expected to fail (a known defect), when it is marked xfail.
    xfail_reason: str | None = None

    @classmethod
    def parse(cls, line: str) -> Record:
        """A record from one JSON line."""
        data = json.loads(line)
        return cls(
            test=str(data["test"]),
            module=str(data["module"]),
            name=str(data["name"]),
            doc=str(data.get("doc") or ""),
            slow=bool(data.get("slow")),
            outcome=str(data["outcome"]),
            seconds=float(data.get("seconds") or 0.0),
            figures=tuple(str(f) for f in data.get("figures") or ()),
            at=str(data.get("at") or ""),
            machine=dict(data.get("machine") or {}),
            xfail_reason=data.get("xfail_reason") or None,
        )

    @property
    def mode(self) -> str:
        """``CI`` for the bounded subset, ``full`` for tests marked slow."""
        return "full (slow)" if self.slow else "CI"

    @property
    def summary(self) -> str:
        """The first sentence of the test's docstring."""
        first = self.doc.split(". ")[0].strip()
        return first if first.endswith(".") else f"{first}."


def read_records(paths: Iterable[Path]) -> list[Record]:
    """The latest record of each test across ``paths`` (malformed lines are skipped)."""
    latest: dict[str, Record] = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = Record.parse(line)
            except (ValueError, KeyError, TypeError):
                continue
            known = latest.get(record.test)
            if known is None or record.at >= known.at:
                latest[record.test] = record
    return sorted(latest.values(), key=lambda r: r.test)


def assign(records: Sequence[Record]) -> tuple[dict[str, list[Record]], list[Record]]:
    """Records per scenario title, and the records no scenario claims."""
    grouped: dict[str, list[Record]] = {scenario.title: [] for scenario in SCENARIOS}
    other: list[Record] = []
    for record in records:
        scenario = next((s for s in SCENARIOS if s.claims(record)), None)
        if scenario is None:
            other.append(record)
        else:
            grouped[scenario.title].append(record)
    return grouped, other


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _status(records: Sequence[Record]) -> str:
    if not records:
        return "not measured"
    failed = [r for r in records if r.outcome not in {"passed", "xfailed"}]
    known = [r for r in records if r.outcome == "xfailed"]
    status = f"{len(failed)} of {len(records)} failed" if failed else "passed"
    if known:
        plural = "s" if len(known) > 1 else ""
        status = f"{len(known)} known defect{plural} (xfail, see below); otherwise {status}"
    return status


def _figures_of(records: Sequence[Record], *, slow: bool) -> str:
    ran = [r for r in records if r.slow == slow]
    lines = [f for r in ran for f in r.figures]
    return "<br>".join(_cell(line) for line in lines) or ("-" if ran else "not run")


def _machine(records: Sequence[Record]) -> str:
    seen = sorted(
        {
            f"{r.machine.get('cpus', '?')} CPUs, {r.machine.get('system', '?')}, "
            f"Python {r.machine.get('python', '?')}"
            for r in records
        }
    )
    return "; ".join(seen) or "unknown"


def render(records: Sequence[Record]) -> str:
    """The markdown page."""
    grouped, other = assign(records)
    dates = sorted(r.at.replace("+00:00", "") for r in records if r.at)
    ci = [r for r in records if not r.slow]
    full = [r for r in records if r.slow]
    out: list[str] = [
        "# Reliability: fault-injection figures",
        "",
        "<!-- Generated by `python -m ops.reliability`; do not edit by hand. -->",
        "",
        (
            "Each scenario below runs real workers against its own throwaway redis-server or "
            "PostgreSQL (spare loopback ports), injects the fault (SIGKILL, SIGSTOP, a stopped "
            "database, a failing receiver, malformed input), **asserts** the guarantee and "
            "prints one `FIGURE` line with what it measured. A test that failed shows its "
            "outcome beside whatever it printed."
        ),
        "",
        (
            f"- Measured: {dates[0] if dates else '-'} .. {dates[-1] if dates else '-'} (UTC) "
            f"on {_machine(records)}."
        ),
        (
            f"- CI subset (`-m 'not slow'`): {len(ci)} tests, "
            f"{sum(r.seconds for r in ci):.0f} s of test time; full run (tests marked slow): "
            f"{len(full)} tests, {sum(r.seconds for r in full):.0f} s."
        ),
        (
            "- Times come from a small machine shared with other work: upper bounds of what a "
            "quiet host shows, not benchmarks."
        ),
        "",
        "## Regenerate",
        "",
        "```bash",
        f"rm -f {DEFAULT_FIGURES}",
        "# CI subset (bounded; what CI runs):",
        f"JOBS_TEST_FIGURES={DEFAULT_FIGURES} python -m pytest tests/faults -m 'not slow'",
        "# full run by hand (long scenarios: 30 s and 60 s outages, 10 min of beat failovers):",
        f"JOBS_TEST_FIGURES={DEFAULT_FIGURES} python -m pytest tests/faults -m slow",
        f"python -m ops.reliability {DEFAULT_FIGURES} -o {DEFAULT_OUTPUT}",
        "```",
        "",
        (
            "Keep output capture on (no `-s`): the figures are read from the captured output. "
            "Each test's latest record wins, so a partial re-run updates only its own rows."
        ),
        "",
        "## Summary",
        "",
        "| Scenario | Guarantee | CI figure | Full-run figure | Result |",
        "|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        found = grouped[scenario.title]
        out.append(
            f"| {_cell(scenario.title)} | {_cell(scenario.guarantee)} | "
            f"{_figures_of(found, slow=False)} | {_figures_of(found, slow=True)} | "
            f"{_status(found)} |"
        )
    out.append("")
    for scenario in SCENARIOS:
        out.extend(_section(scenario.title, scenario.guarantee, grouped[scenario.title]))
    if other:
        out.extend(
            _section("Other fault tests", "Neighbouring faults the suite also checks.", other)
        )
    known = [r for r in records if r.outcome == "xfailed"]
    if known:
        out.extend(["## Known defects", ""])
        out.append(
            "Tests marked `xfail(strict=True)`: each states the guarantee and fails today; it "
            "turns into a failure (XPASS) once the defect is fixed, so the mark is removed then."
        )
        out.append("")
        out.extend(f"- `{r.test}`: {r.xfail_reason or 'expected failure'}" for r in known)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _section(title: str, guarantee: str, records: Sequence[Record]) -> list[str]:
    lines = [f"## {title}", "", f"**Guarantee.** {guarantee}", ""]
    if not records:
        return [*lines, "_Not measured in the runs this page was generated from._", ""]
    for record in records:
        known = f" (known defect: {record.xfail_reason})" if record.xfail_reason else ""
        lines.append(
            f"- `{record.test}` — {record.mode}, **{record.outcome}**{known} in "
            f"{record.seconds:.1f} s."
        )
        if record.summary.strip("."):
            lines.append(f"  {record.summary}")
        lines.extend(f"  - `FIGURE {figure}`" for figure in record.figures)
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ops.reliability [FIGURES...] [-o docs/reliability.md]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ops.reliability", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("figures", nargs="*", type=Path, default=[DEFAULT_FIGURES])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    paths: list[Path] = args.figures
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        parser.error(
            f"no such figures file: {', '.join(missing)} (run the fault tests with "
            "JOBS_TEST_FIGURES=<file> first)"
        )
    records = read_records(paths)
    if not records:
        parser.error("no records in the figures file(s)")
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(records), encoding="utf-8")
    grouped, other = assign(records)
    measured = sum(1 for found in grouped.values() if found)
    sys.stdout.write(
        f"{output}: {len(records)} tests, {measured}/{len(SCENARIOS)} scenarios measured, "
        f"{len(other)} other\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
