"""Benchmark results: the JSON schema, the arithmetic, the markdown report and the charts.

Pure (no Redis, no Celery): ``tests/unit/test_bench.py`` checks it. A scenario returns a
:class:`ScenarioResult`: rows of *ours vs baseline* (:class:`Row`, the ratio is always
ours / baseline, ``higher_is_better`` says how to read it), free-form ``details`` and chart
specifications (:class:`Chart`). A run's JSON document (:func:`document`) holds them with the
machine and the run's options; :func:`render_docs` turns the newest suite results into
``docs/benchmarks.md`` plus PNG charts (matplotlib, imported only there).

Schema (``SCHEMA_VERSION`` 1)::

    {"schema": 1, "runner": "suite" | "script", "timestamp": "20261123T143000Z",
     "quick": bool, "machine": {...}, "argv": [...], "wall_seconds": float,
     "scenarios": [{"name", "title", "rows": [row...], "details": {...}, "charts": [...],
                    "notes": [str...], "params": {...}, "wall_seconds": float,
                    "error": str | null}]}
    row: {"label", "unit", "ours", "baseline", "baseline_label", "higher_is_better",
          "ratio", "target", "ok", "note"}
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

SCHEMA_VERSION = 1
#: ``target`` strings a row may carry: a comparison of the ratio (or of ours, with "ours").
TARGET = re.compile(r"^(?P<what>ratio|ours) (?P<op>>=|<=) (?P<value>[0-9][0-9_.,]*)$")
CHART_KINDS = ("bars", "lines", "timeline")
#: Ticks of the all-ratios chart (log scale).
LOG_TICKS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


# -- arithmetic ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks.

    Raises ``ValueError`` for no values or ``q`` outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(ours: float | None, baseline: float | None) -> float | None:
    """Ours / baseline, or None when either is missing, not finite, or the baseline is 0."""
    if ours is None or baseline is None:
        return None
    if not (math.isfinite(ours) and math.isfinite(baseline)) or baseline == 0:
        return None
    return ours / baseline


def target_met(target: str | None, *, ours: float, ratio_value: float | None) -> bool | None:
    """Whether ``target`` (``"ratio >= 0.8"``, ``"ours <= 1.5"``) holds; None without one."""
    if target is None:
        return None
    match = TARGET.match(target)
    if match is None:
        raise ValueError(f"target {target!r} is not '<ratio|ours> <>=|<=> <number>'")
    value = float(match["value"].replace(",", "").replace("_", ""))
    subject = ours if match["what"] == "ours" else ratio_value
    if subject is None:
        return None
    return subject >= value if match["op"] == ">=" else subject <= value


# -- results ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """One measurement: ours, the baseline measured in the same run, the ratio ours / baseline."""

    label: str
    unit: str
    ours: float
    baseline: float | None = None
    baseline_label: str | None = None
    higher_is_better: bool = True
    target: str | None = None
    note: str = ""
    ratio: float | None = field(default=None, init=False)
    ok: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        """Derive the ratio and the verdict."""
        self.ratio = ratio(self.ours, self.baseline)
        if self.ratio is not None:
            self.ratio = round(self.ratio, 3)
        self.ok = target_met(self.target, ours=self.ours, ratio_value=self.ratio)


@dataclass(slots=True)
class Chart:
    """A chart of one scenario (rendered by :func:`render_chart`).

    ``bars``: ``x`` are group labels, each series one bar per group. ``lines``: ``x`` numbers,
    one line per series. ``timeline``: like lines, plus ``y2`` series on a second axis and
    ``hlines`` (label -> y) drawn across.
    """

    file: str
    kind: str
    title: str
    x: list[Any]
    series: Mapping[str, Sequence[float | None]]
    xlabel: str = ""
    ylabel: str = ""
    y2: Mapping[str, Sequence[float | None]] = field(default_factory=dict)
    y2label: str = ""
    hlines: dict[str, float] = field(default_factory=dict)
    log_y: bool = False


@dataclass(slots=True)
class ScenarioResult:
    """What one scenario measured (or why it could not)."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON form (see the module docstring)."""
        return asdict(self)


def document(
    results: Iterable[ScenarioResult],
    *,
    runner: str,
    quick: bool,
    machine: dict[str, Any],
    argv: list[str],
    wall_seconds: float,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """A results document (validated)."""
    doc = {
        "schema": SCHEMA_VERSION,
        "runner": runner,
        "timestamp": timestamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "quick": quick,
        "machine": machine,
        "argv": list(argv),
        "wall_seconds": round(wall_seconds, 1),
        "scenarios": [result.as_json() for result in results],
    }
    validate(doc)
    return doc


_ROW_FIELDS: dict[str, tuple[type, ...]] = {
    "label": (str,),
    "unit": (str,),
    "ours": (int, float),
    "baseline": (int, float, type(None)),
    "baseline_label": (str, type(None)),
    "higher_is_better": (bool,),
    "ratio": (int, float, type(None)),
    "target": (str, type(None)),
    "ok": (bool, type(None)),
    "note": (str,),
}
_SCENARIO_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "title": (str,),
    "rows": (list,),
    "details": (dict,),
    "charts": (list,),
    "notes": (list,),
    "params": (dict,),
    "wall_seconds": (int, float),
    "error": (str, type(None)),
}
_DOCUMENT_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "runner": (str,),
    "timestamp": (str,),
    "quick": (bool,),
    "machine": (dict,),
    "argv": (list,),
    "wall_seconds": (int, float),
    "scenarios": (list,),
}


def _check(where: str, data: Any, fields: dict[str, tuple[type, ...]]) -> list[str]:
    if not isinstance(data, dict):
        return [f"{where}: not an object"]
    problems = [f"{where}: missing {name!r}" for name in fields if name not in data]
    problems += [
        f"{where}.{name}: {type(data[name]).__name__} is not {'/'.join(t.__name__ for t in kinds)}"
        for name, kinds in fields.items()
        if name in data
        # bool is an int: only accept it where bool is listed.
        and (
            not isinstance(data[name], kinds)
            or (isinstance(data[name], bool) and bool not in kinds)
        )
    ]
    return problems


def _scenario_problems(i: int, scenario: Any) -> list[str]:
    where = f"scenarios[{i}]"
    problems = _check(where, scenario, _SCENARIO_FIELDS)
    if problems:
        return problems
    for j, row in enumerate(scenario["rows"]):
        problems += _check(f"{where}.rows[{j}]", row, _ROW_FIELDS)
    for j, chart in enumerate(scenario["charts"]):
        if not isinstance(chart, dict) or chart.get("kind") not in CHART_KINDS:
            problems.append(f"{where}.charts[{j}]: kind is not one of {CHART_KINDS}")
    if scenario["error"] is None and not scenario["rows"]:
        problems.append(f"{where}: no rows and no error")
    return problems


def validate(doc: Any) -> None:
    """Raise ``ValueError`` naming every problem if ``doc`` does not follow the schema."""
    problems = _check("document", doc, _DOCUMENT_FIELDS)
    if not problems:
        if doc["schema"] != SCHEMA_VERSION:
            problems.append(f"document.schema: {doc['schema']} is not {SCHEMA_VERSION}")
        if doc["runner"] not in {"suite", "script"}:
            problems.append(f"document.runner: {doc['runner']!r} is not suite/script")
        if not re.fullmatch(r"\d{8}T\d{6}Z", doc["timestamp"]):
            problems.append(f"document.timestamp: {doc['timestamp']!r} is not YYYYMMDDTHHMMSSZ")
        for i, scenario in enumerate(doc["scenarios"]):
            problems += _scenario_problems(i, scenario)
    if problems:
        raise ValueError("results do not follow the schema: " + "; ".join(problems))


# -- formatting ------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str = "") -> str:
    """A figure for a table: thousands separators, 3 significant digits below 100."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip() if unit else text


def fmt_ratio(row: dict[str, Any]) -> str:
    """The ratio column: ``1.07`` (or ``—``); 3 decimals where 2 would hide a verdict."""
    value = row.get("ratio")
    if value is None:
        return "—"
    match = TARGET.match(row.get("target") or "")
    if match and match["what"] == "ratio":
        threshold = float(match["value"].replace(",", "").replace("_", ""))
        if round(value, 2) == round(threshold, 2) and value != threshold:
            return f"{value:.3f}"
    return f"{value:.2f}"


def fmt_target(row: dict[str, Any]) -> str:
    """The target column: ``ratio >= 0.8 met`` / ``MISSED`` / ``—``."""
    target = row.get("target")
    if not target:
        return "—"
    verdict = {True: "met", False: "**MISSED**", None: "n/a"}[row.get("ok")]
    return f"{target.replace('>=', '≥').replace('<=', '≤')}: {verdict}"


def cell(text: str) -> str:
    """Escape a table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def table_rows(scenario: dict[str, Any], *, with_scenario: bool = False) -> list[str]:
    """Markdown table rows (no header) of one scenario."""
    lines: list[str] = []
    for row in scenario["rows"]:
        unit = row["unit"]
        baseline = fmt(row["baseline"], unit)
        if row["baseline"] is not None and row["baseline_label"]:
            baseline = f"{baseline} ({row['baseline_label']})"
        direction = "" if row["baseline"] is None else (" ↑" if row["higher_is_better"] else " ↓")
        cells = [
            row["label"] + (f" — {row['note']}" if row["note"] else ""),
            fmt(row["ours"], unit),
            baseline,
            fmt_ratio(row) + direction,
            fmt_target(row),
        ]
        if with_scenario:
            cells.insert(0, f"`{scenario['name']}`" if not lines else "")
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return lines


TABLE_HEAD = (
    "| measurement | ours | baseline (same run) | ratio ours/baseline | target |",
    "|---|---:|---:|---:|---|",
)


def scenario_markdown(result: ScenarioResult | dict[str, Any]) -> str:
    """One scenario as a markdown section (title, table, notes): what a script prints."""
    scenario = result.as_json() if isinstance(result, ScenarioResult) else result
    lines = [f"### {scenario['title']}", ""]
    if scenario["error"]:
        lines += [f"**FAILED**: {scenario['error']}"]
        return "\n".join(lines)
    if scenario["params"]:
        params = ", ".join(f"{k}={v}" for k, v in scenario["params"].items())
        lines += [f"Parameters: {params}.", ""]
    lines += [*TABLE_HEAD, *table_rows(scenario), ""]
    lines += [f"- {note}" for note in scenario["notes"]]
    return "\n".join(lines).rstrip() + "\n"


# -- the docs page ---------------------------------------------------------------------------------


def newest_per_scenario(
    documents: Iterable[dict[str, Any]],
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(scenario, its document) for every scenario, from the newest document that has it.

    A scenario that failed in the newest run it appears in is reported as failed: the page
    must not show an older figure as if it were current.
    """
    newest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for doc in sorted(documents, key=lambda d: d["timestamp"]):
        for scenario in doc["scenarios"]:
            newest[scenario["name"]] = (scenario, doc)
    return list(newest.values())


def render_markdown(
    picked: Sequence[tuple[dict[str, Any], dict[str, Any]]],
    *,
    order: Sequence[str],
    images: dict[str, list[str]],
    img_prefix: str = "img/",
) -> str:
    """``docs/benchmarks.md``: how to run, one summary table, a section per scenario."""
    rank = {name: i for i, name in enumerate(order)}
    picked = sorted(picked, key=lambda p: (rank.get(p[0]["name"], len(rank)), p[0]["name"]))
    machines = {
        (d["machine"].get("cpus"), d["machine"].get("celery"), d["machine"].get("python"))
        for _, d in picked
    }
    runs = sorted({(d["timestamp"], "quick" if d["quick"] else "full") for _, d in picked})
    lines = [
        "# Benchmarks",
        "",
        (
            "<!-- Generated by `jobctl bench` (bench/suite.py) from bench/results/*.json: "
            "do not edit by hand. -->"
        ),
        "",
        (
            "Every scenario measures ours and its baseline **in the same run, on the same "
            "services**, and reports both with the ratio ours / baseline (↑: higher is better, "
            "↓: lower is better). Every measurement is verified by counting (each job ran "
            "exactly once, every row arrived, ...); a run that cannot verify fails instead of "
            "reporting."
        ),
        "",
        (
            "Run it: `jobctl bench` (full: ~25 min on these machines, two thirds of it the "
            "300,000-job flash sale), `jobctl bench --quick` (< 3 min), "
            "`jobctl bench --only NAME` (one scenario; the page keeps the newest result of the "
            "others). Each scenario module also runs by hand: `python bench/<module>.py --help`."
        ),
        "",
    ]
    lines.append(
        "Runs: "
        + ", ".join(f"{stamp} ({mode})" for stamp, mode in runs)
        + ". Machine: "
        + "; ".join(
            f"{cpus} CPUs, Celery {celery}, Python {python}" for cpus, celery, python in machines
        )
        + ". **These machines have 2 cores shared with Redis, PostgreSQL and the benchmark "
        "driver, and are noisy: read the ratios, not the absolute rates.**"
    )
    lines += ["", "## Summary", "", "| scenario " + TABLE_HEAD[0], "|---" + TABLE_HEAD[1]]
    for scenario, _ in picked:
        if scenario["error"]:
            lines.append(f"| `{scenario['name']}` | **FAILED** | — | — | — | — |")
        else:
            lines += table_rows(scenario, with_scenario=True)
    for scenario, doc in picked:
        mode = "quick" if doc["quick"] else "full"
        lines += ["", f"## {scenario['title']}", ""]
        lines.append(
            f"Run {doc['timestamp']} ({mode}), {fmt(scenario['wall_seconds'])} s"
            f" (`{scenario['name']}`)."
        )
        if scenario["error"]:
            lines += ["", f"**FAILED**: {scenario['error']}"]
            continue
        if scenario["params"]:
            params = ", ".join(f"{k}={v}" for k, v in scenario["params"].items())
            lines.append(f"Parameters: {params}.")
        lines += ["", *TABLE_HEAD, *table_rows(scenario)]
        if scenario["notes"]:
            lines += ["", *(f"- {note}" for note in scenario["notes"])]
        for image in images.get(scenario["name"], []):
            lines += ["", f"![{scenario['title']}]({img_prefix}{image})"]
    if images.get("_overview"):
        lines += ["", "## All ratios", ""]
        lines += [f"![ratios ours / baseline]({img_prefix}{name})" for name in images["_overview"]]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    """The pyplot module on the Agg backend (only the docs need matplotlib: a dev dependency)."""
    import matplotlib as mpl  # noqa: PLC0415 - only rendering the docs needs it

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _floats(values: Sequence[float | None]) -> list[float]:
    """None (no sample: that side had finished) as NaN, which matplotlib leaves as a gap."""
    return [math.nan if v is None else float(v) for v in values]


def render_chart(chart: dict[str, Any], path: Path) -> None:
    """Draw one :class:`Chart` (as JSON) into ``path`` (PNG)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    kind = chart["kind"]
    series: dict[str, list[float | None]] = chart["series"]
    if kind == "bars":
        groups = [str(x) for x in chart["x"]]
        width = 0.8 / max(1, len(series))
        for k, (name, values) in enumerate(series.items()):
            positions = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
            heights = [v if v is not None else 0 for v in values]
            bars = ax.bar(positions, heights, width, label=name)
            ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=7, padding=2)
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
    else:
        # One colour per side (a series name's first word), one line style per metric.
        colors: dict[str, str] = {}
        styles: dict[str, int] = {}

        def style(name: str) -> dict[str, Any]:
            side = name.split(maxsplit=1)[0]
            color = colors.setdefault(side, f"C{len(colors)}")
            k = styles[side] = styles.get(side, -1) + 1
            return {"color": color, "linestyle": ("-", "--", "-.")[k % 3]}

        for name, values in series.items():
            marker = "o" if kind == "lines" else None
            ax.plot(chart["x"], _floats(values), marker=marker, label=name, **style(name))
        for name, y in chart.get("hlines", {}).items():
            ax.axhline(y, linestyle="--", color="grey", linewidth=1)
            ax.annotate(name, (0.01, y), xycoords=("axes fraction", "data"), fontsize=7,
                        va="bottom", color="grey")  # fmt: skip
        if kind == "lines":
            ax.set_xticks(chart["x"])
        if chart.get("y2"):
            twin = ax.twinx()
            for name, values in chart["y2"].items():
                color = style(name)["color"]
                twin.plot(chart["x"], _floats(values), linestyle=":", color=color, label=name)
            twin.set_ylabel(chart.get("y2label", ""))
            twin.legend(loc="upper right", fontsize=8)
    if chart.get("log_y"):
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)  # an axis that starts above 0 exaggerates differences
    ax.set_title(chart["title"], fontsize=10)
    ax.set_xlabel(chart.get("xlabel", ""))
    ax.set_ylabel(chart.get("ylabel", ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def overview_chart(picked: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Every ratio on one horizontal bar chart (1.0 = as fast as the baseline)."""
    labels, values = [], []
    for scenario, _ in picked:
        for row in scenario["rows"]:
            # A row whose baseline is ours under other conditions is not "ours vs baseline".
            if row["ratio"] is None or (row["baseline_label"] or "").startswith("ours "):
                continue
            # Lower-is-better rows are inverted so that right of 1.0 always means "ours wins".
            value = row["ratio"] if row["higher_is_better"] else 1 / row["ratio"]
            labels.append(f"{scenario['name']}: {row['label']}"[:60])
            values.append(value)
    return {"labels": labels, "values": values}


def render_overview(data: dict[str, Any], path: Path) -> None:
    """Draw :func:`overview_chart` into ``path``."""
    from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: PLC0415 - see _pyplot

    plt = _pyplot()
    n = len(data["labels"])
    fig, ax = plt.subplots(figsize=(8, 0.32 * n + 1.2), dpi=100)
    colors = ["tab:green" if v >= 1 else "tab:orange" for v in data["values"]]
    ax.barh(range(n), data["values"], color=colors)
    ax.set_yticks(range(n), data["labels"], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    low, high = min(data["values"]), max(data["values"])
    ax.set_xticks([t for t in LOG_TICKS if low / 3 <= t <= high * 3] or [1.0])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("ours vs baseline (x; > 1: ours better; lower-is-better rows inverted)")
    for i, v in enumerate(data["values"]):
        ax.annotate(f"{v:.2f}x", (v, i), fontsize=7, va="center", xytext=(3, 0),
                    textcoords="offset points")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render_docs(
    documents: Iterable[dict[str, Any]], docs_dir: Path, *, order: Sequence[str]
) -> Path:
    """Write ``<docs_dir>/benchmarks.md`` and ``<docs_dir>/img/*.png``; returns the page."""
    picked = newest_per_scenario(d for d in documents if d["runner"] == "suite")
    if not picked:
        raise ValueError("no suite results to render")
    img_dir = docs_dir / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, list[str]] = {}
    for scenario, _ in picked:
        if scenario["error"]:
            continue
        for chart in scenario["charts"]:
            render_chart(chart, img_dir / chart["file"])
            images.setdefault(scenario["name"], []).append(chart["file"])
    overview = overview_chart(picked)
    if overview["labels"]:
        render_overview(overview, img_dir / "bench-ratios.png")
        images["_overview"] = ["bench-ratios.png"]
    page = docs_dir / "benchmarks.md"
    page.write_text(render_markdown(picked, order=order, images=images))
    return page
