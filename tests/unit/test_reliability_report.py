"""docs/reliability.md generation from the fault suite's JSON lines (pure functions + main)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ops.reliability import SCENARIOS, Record, assign, main, read_records, render


def line(name: str, *, slow: bool, figure: str, at: str, outcome: str = "passed") -> str:
    """One record as tests/faults/conftest.py writes it."""
    data: dict[str, Any] = {
        "test": f"tests/faults/test_kill_drain.py::{name}",
        "module": "tests/faults/test_kill_drain.py",
        "name": name,
        "doc": "Given jobs, when killed. Then none lost.",
        "slow": slow,
        "outcome": outcome,
        "xfail_reason": None,
        "seconds": 12.5,
        "figures": [figure],
        "at": at,
        "machine": {"cpus": 2, "python": "3.11.7", "system": "Linux x86_64"},
    }
    return json.dumps(data)


def test_the_latest_record_of_a_test_wins_and_bad_lines_are_skipped(tmp_path: Path) -> None:
    """A partial re-run updates only its own rows; a torn line does not stop the report."""
    figures = tmp_path / "figures.jsonl"
    figures.write_text(
        "\n".join(
            [
                line("test_drain[ci]", slow=False, figure="kill_drain: old", at="2026-01-01T00:00"),
                "{not json",
                line("test_drain[ci]", slow=False, figure="kill_drain: new", at="2026-01-02T00:00"),
                line("test_drain[full]", slow=True, figure="kill_drain: 10000", at="2026-01-01"),
            ]
        )
    )
    records = read_records([figures])
    assert [(r.name, r.figures) for r in records] == [
        ("test_drain[ci]", ("kill_drain: new",)),
        ("test_drain[full]", ("kill_drain: 10000",)),
    ]


def test_each_record_lands_in_its_scenario_with_ci_and_full_run_figures() -> None:
    """The summary row of the scenario shows the CI figure and the full-run figure."""
    records = [
        Record.parse(line("test_a[ci]", slow=False, figure="kill_drain: 1000 jobs", at="1")),
        Record.parse(line("test_a[full]", slow=True, figure="kill_drain: 10000 jobs", at="2")),
    ]
    grouped, other = assign(records)
    assert other == []
    title = SCENARIOS[0].title
    assert [r.name for r in grouped[title]] == ["test_a[ci]", "test_a[full]"]
    page = render(records)
    row = next(text for text in page.splitlines() if text.startswith(f"| {title} |"))
    assert "kill_drain: 1000 jobs" in row
    assert "kill_drain: 10000 jobs" in row
    assert "passed" in row


def test_a_failed_test_shows_its_outcome() -> None:
    """A failure is never rendered as a pass."""
    record = Record.parse(line("t", slow=False, figure="kill_drain: x", at="1", outcome="failed"))
    row = next(
        text for text in render([record]).splitlines() if text.startswith(f"| {SCENARIOS[0].title}")
    )
    assert "failed" in row
    assert row.rstrip("|").split("|")[-1].strip() != "passed"


def test_main_writes_the_page_and_refuses_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI writes the output and says what it measured; a missing input is exit 2."""
    figures = tmp_path / "figures.jsonl"
    figures.write_text(line("t", slow=False, figure="kill_drain: 5", at="1") + "\n")
    output = tmp_path / "docs" / "reliability.md"
    assert main([str(figures), "-o", str(output)]) == 0
    assert "kill_drain: 5" in output.read_text()
    assert "1 tests" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "missing.jsonl"), "-o", str(output)])
    assert exited.value.code == 2
