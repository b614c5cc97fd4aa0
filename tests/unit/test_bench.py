"""The benchmark report's pure parts: percentiles, ratios, targets, the schema, the markdown.

``bench/`` is not a package (it is not installed): ``bench/report.py`` is loaded by path.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


report = _load("report")


def scenario_result(**overrides: Any) -> Any:
    rows = [
        report.Row("drain, 1 worker process", "jobs/s", 1200.0, 1000.0, "bare Celery",
                   target="ratio >= 0.8"),
        report.Row("enqueue p50", "µs", 600.0, 1200.0, "bare", higher_is_better=False,
                   target="ratio <= 1.5"),
        report.Row("refused over the watermark", "jobs", 5000, note="12 refusals"),
    ]  # fmt: skip
    fields: dict[str, Any] = {
        "name": "drain",
        "title": "No-op drain",
        "rows": rows,
        "params": {"jobs": 1000},
        "notes": ["a note"],
        "charts": [
            report.Chart("bench-drain.png", "bars", "t", ["1"], {"ours": [1.0], "bare": [2.0]})
        ],
    }
    fields.update(overrides)
    return report.ScenarioResult(**fields)


def a_document(*, timestamp: str = "20261123T143000Z", quick: bool = True, **kw: Any) -> Any:
    return report.document(
        [scenario_result(**kw)],
        runner="suite",
        quick=quick,
        machine={"cpus": 2, "celery": "5.7", "python": "3.11"},
        argv=["bench/suite.py"],
        wall_seconds=12.34,
        timestamp=timestamp,
    )


# -- arithmetic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([5.0], 99, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 100, 4.0),
        (list(range(101)), 99, 99.0),
        ([10.0, 20.0], 25, 12.5),
    ],
)
def test_percentile_interpolates_linearly_between_closest_ranks(
    values: list[float], q: float, expected: float
) -> None:
    """Given samples, the q-th percentile is the linear interpolation at rank (n-1)·q/100."""
    assert report.percentile(values, q) == pytest.approx(expected)


def test_percentile_refuses_no_values_and_out_of_range_percentiles() -> None:
    """An empty sample or a percentile outside 0..100 is a ValueError, not a silent number."""
    with pytest.raises(ValueError, match="no values"):
        report.percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        report.percentile([1.0], 101)


def test_ratio_is_ours_over_baseline_and_none_without_a_usable_baseline() -> None:
    """The ratio is ours / baseline; a missing, zero or non-finite figure gives None."""
    assert report.ratio(150.0, 100.0) == pytest.approx(1.5)
    assert report.ratio(1.0, None) is None
    assert report.ratio(1.0, 0.0) is None
    assert report.ratio(float("nan"), 1.0) is None


def test_a_row_derives_its_ratio_and_verdict_from_its_target() -> None:
    """Given a target on the ratio or on ours, the row says whether it is met."""
    met = report.Row("x", "jobs/s", 900.0, 1000.0, target="ratio >= 0.8")
    missed = report.Row("x", "µs", 2000.0, 1000.0, higher_is_better=False, target="ratio <= 1.5")
    absolute = report.Row("depth", "jobs", 100_000, 300_000, target="ours <= 100000")
    untargeted = report.Row("x", "jobs/s", 1.0)
    assert (met.ratio, met.ok) == (0.9, True)
    assert (missed.ratio, missed.ok) == (2.0, False)
    assert absolute.ok is True
    assert (untargeted.ratio, untargeted.ok) == (None, None)


def test_a_malformed_target_is_refused() -> None:
    """A target that is not '<ratio|ours> <op> <number>' fails loudly at declaration."""
    with pytest.raises(ValueError, match="is not"):
        report.Row("x", "jobs/s", 1.0, 1.0, target="faster please")


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (1234.5, "jobs/s", "1,234 jobs/s"),
        (12.345, "ms", "12.3 ms"),
        (1.2345, "", "1.23"),
        (0.01234, "s", "0.0123 s"),
        (None, "ms", "—"),
        (float("nan"), "", "—"),
    ],
)
def test_figures_are_formatted_with_separators_and_three_significant_digits(
    value: float | None, unit: str, text: str
) -> None:
    """Table figures: thousands separators from 100 up, about 3 significant digits below."""
    assert report.fmt(value, unit) == text


# -- schema --------------------------------------------------------------------------------


def test_a_document_built_from_results_follows_the_schema() -> None:
    """Given a scenario result, document() produces a valid schema-1 document."""
    doc = a_document()
    report.validate(doc)
    assert doc["schema"] == report.SCHEMA_VERSION
    row = doc["scenarios"][0]["rows"][0]
    assert row["ratio"] == 1.2
    assert row["ok"] is True


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.pop("machine"), "missing 'machine'"),
        (lambda d: d.update(schema=2), "schema: 2"),
        (lambda d: d.update(runner="cron"), "runner"),
        (lambda d: d.update(timestamp="yesterday"), "timestamp"),
        (lambda d: d["scenarios"][0]["rows"][0].update(ours="fast"), "rows[0].ours"),
        (lambda d: d["scenarios"][0]["rows"][0].update(ours=True), "rows[0].ours"),
        (lambda d: d["scenarios"][0].update(rows=[]), "no rows and no error"),
        (lambda d: d["scenarios"][0]["charts"][0].update(kind="pie"), "charts[0]"),
    ],
)
def test_validation_names_what_breaks_the_schema(mutate: Any, problem: str) -> None:
    """Given a document with one defect, validate() raises and names that defect."""
    doc = copy.deepcopy(a_document())
    mutate(doc)
    with pytest.raises(ValueError, match="results do not follow the schema") as caught:
        report.validate(doc)
    assert problem in str(caught.value)


def test_a_failed_scenario_is_valid_with_an_error_and_no_rows() -> None:
    """A scenario that could not verify carries its error instead of figures."""
    failed = report.ScenarioResult("flush", "Flush", error="raw COPY: 3 rows, expected 4")
    doc = report.document(
        [failed], runner="suite", quick=False, machine={}, argv=[], wall_seconds=1.0
    )
    report.validate(doc)


# -- markdown ------------------------------------------------------------------------------


def test_a_scenario_renders_as_a_table_with_both_sides_the_ratio_and_the_verdict() -> None:
    """The printed section shows ours, the baseline with its name, the ratio and the target."""
    text = report.scenario_markdown(scenario_result())
    assert "### No-op drain" in text
    assert (
        "| drain, 1 worker process | 1,200 jobs/s | 1,000 jobs/s (bare Celery) | 1.20 ↑ |" in text
    )
    assert "ratio ≥ 0.8: met" in text
    assert "| enqueue p50 | 600 µs | 1,200 µs (bare) | 0.50 ↓ | ratio ≤ 1.5: met |" in text
    assert "| refused over the watermark — 12 refusals | 5,000 jobs | — | — | — |" in text
    assert "Parameters: jobs=1000." in text


def test_the_page_takes_each_scenario_from_its_newest_run_and_shows_failures() -> None:
    """Given an older full run and a newer quick run of another scenario, the page shows both,
    each with its own run; a scenario that failed in its newest run is shown as failed.
    """
    old = a_document(timestamp="20261101T000000Z", quick=False)
    newer = a_document(timestamp="20261102T000000Z", name="enqueue", title="Enqueue")
    failed = report.document(
        [report.ScenarioResult("drain", "No-op drain", error="did not verify")],
        runner="suite", quick=True, machine={}, argv=[], wall_seconds=1.0,
        timestamp="20261103T000000Z",
    )  # fmt: skip
    picked = report.newest_per_scenario([newer, old])
    assert {s["name"]: d["timestamp"] for s, d in picked} == {
        "drain": "20261101T000000Z",
        "enqueue": "20261102T000000Z",
    }
    page = report.render_markdown(
        report.newest_per_scenario([old, newer, failed]),
        order=["drain", "enqueue"],
        images={"enqueue": ["bench-drain.png"]},
    )
    assert page.startswith("# Benchmarks\n")
    assert "do not edit by hand" in page
    assert page.index("## No-op drain") < page.index("## Enqueue")
    assert "**FAILED**: did not verify" in page
    assert "Run 20261102T000000Z (quick)" in page
    assert "![Enqueue](img/bench-drain.png)" in page
    assert "2 cores" in page


def test_table_cells_escape_pipes() -> None:
    """A label with a pipe does not break the table."""
    result = scenario_result(rows=[report.Row("a | b", "ms", 1.0, 2.0, "c")])
    assert "a \\| b" in report.scenario_markdown(result)


def test_the_overview_inverts_lower_is_better_ratios() -> None:
    """On the all-ratios chart, right of 1 always means ours is better."""
    doc = a_document()
    data = report.overview_chart([(doc["scenarios"][0], doc)])
    assert data["values"] == pytest.approx([1.2, 2.0])


# -- jobctl bench -------------------------------------------------------------------------------


def test_jobctl_bench_passes_its_options_to_the_suite_script() -> None:
    """The CLI runs ``python bench/suite.py`` with exactly the options it was given."""
    from ops.cli.bench import suite_command  # noqa: PLC0415 - the CLI module is light

    command = suite_command(
        Path("bench/suite.py"),
        quick=True,
        only=["enqueue", "latency"],
        list_only=False,
        render_only=False,
        redis_url="redis://127.0.0.1:6380",
        database_url=None,
        results_dir=Path("results"),
        docs_dir=None,
    )
    assert command[0] == sys.executable
    assert command[1:] == [
        "bench/suite.py", "--quick", "--only", "enqueue", "--only", "latency",
        "--redis-url", "redis://127.0.0.1:6380", "--results-dir", "results",
    ]  # fmt: skip


def test_jobctl_bench_without_a_checkout_says_where_the_benchmarks_live(tmp_path: Path) -> None:
    """Given a folder without bench/suite.py, the command exits 2 with one clear line."""
    from typer.testing import CliRunner  # noqa: PLC0415

    from ops.cli import app  # noqa: PLC0415

    result = CliRunner().invoke(app, ["bench", "--bench-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "bench/ is not installed" in result.output


def test_the_default_bench_folder_is_the_checkouts() -> None:
    """In this checkout, the CLI finds bench/suite.py next to the ops package."""
    from ops.cli.bench import default_bench_dir  # noqa: PLC0415

    assert (default_bench_dir() / "suite.py").is_file()
    assert default_bench_dir() == REPO / "bench"


def test_a_ratio_next_to_its_threshold_shows_the_digit_that_decides() -> None:
    """0.697 against 'ratio >= 0.7' reads 0.697 (missed), not 0.70 (which looks met)."""
    missed = report.Row("x", "jobs/s", 69.7, 100.0, target="ratio >= 0.7")
    data = {"ratio": missed.ratio, "target": missed.target}
    assert report.fmt_ratio(data) == "0.697"
    assert report.fmt_ratio({"ratio": 0.8123, "target": "ratio >= 0.7"}) == "0.81"


def test_the_overview_leaves_out_rows_that_compare_ours_with_ours() -> None:
    """A flatness check (ours at 100k vs ours at 10k) is not a ratio against a baseline."""
    result = scenario_result(
        rows=[
            report.Row("RSS", "MiB", 97.0, 96.0, "ours at 10,000 entries", target="ratio <= 1.25")
        ]
    )
    doc = report.document(
        [result], runner="suite", quick=True, machine={}, argv=[], wall_seconds=1.0
    )
    assert report.overview_chart([(doc["scenarios"][0], doc)]) == {"labels": [], "values": []}
