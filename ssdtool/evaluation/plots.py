"""eval's plots: each one a table (written beside it as CSV) and a PNG drawn from that very table.

=========================  ==================================================================================
``pr_curves``              precision against recall at IoU 0.50 and 0.50:0.95, one line per configuration
                           (COCOeval's precision array: :mod:`ssdtool.evaluation.curves`)
``per_class_ap``           AP (IoU 0.50:0.95) of every category with ground truth, per configuration
``per_class_delta_ap``     each configuration's AP minus the baseline's, per category, the most costly first
                           (with two configurations or more; the baseline is the first, or the reference)
``thresholds``             precision, recall and F1 against the score threshold, the F1-best threshold marked
=========================  ==================================================================================

Tables are long-form CSV (one value per row), floats at full precision, an empty cell where the value is None.
Names from the annotation file are data: a text cell a spreadsheet would run as a formula (``=``, ``+``, ``-``,
``@`` first) is written with a leading ``'``.

matplotlib (the ``plots`` extra) is imported on use and drawn through its object API (``Figure`` and the Agg
canvas), never ``pyplot``: no global figure registry, no backend switch, no rcParams changed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ssdtool.errors import DependencyError

#: Every plot, in the order written and shown.
PLOT_NAMES: tuple[str, ...] = ("pr_curves", "per_class_ap", "per_class_delta_ap", "thresholds")
PLOTS_HINT = "install it with: pip install 'ssdtool[plots]'"


@dataclass(frozen=True)
class PlotTable:
    """The data of one plot: ``name`` (the file stem), a title, the CSV header and rows."""

    name: str
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def column(self, name: str) -> list[Any]:
        index = self.header.index(name)
        return [row[index] for row in self.rows]

    def where(self, **wanted: Any) -> list[dict[str, Any]]:
        """The rows whose columns equal ``wanted``, as dicts."""
        rows = [dict(zip(self.header, row, strict=True)) for row in self.rows]
        return [row for row in rows if all(row[k] == v for k, v in wanted.items())]

    def to_csv(self) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows([_cell(value) for value in row] for row in self.rows)
        return out.getvalue().encode()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def plot_names(configurations: int) -> list[str]:
    """The plots of a run with ``configurations`` configurations (ΔAP needs two)."""
    return [name for name in PLOT_NAMES if name != "per_class_delta_ap" or configurations > 1]


def require_matplotlib() -> None:
    """:class:`DependencyError` (exit 23) naming the ``plots`` extra unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"cannot import matplotlib, which draws the plots and the report: {exc}",
                              hint=PLOTS_HINT) from exc


# ------------------------------------------------------------------------------------------------------ tables
def plot_tables(runs: Sequence[Any], categories: dict[int, str], baseline: int = 0) -> list[PlotTable]:
    """The tables of :func:`plot_names` for ``runs`` (:class:`~ssdtool.evaluation.report.RunResult` whose metrics
    carry curves), ``categories`` naming the category ids, ``baseline`` the run ΔAP is measured against."""
    tables = [_pr_table(runs), _per_class_table(runs, categories)]
    if len(runs) > 1:
        tables.append(_delta_table(runs, categories, baseline))
    tables.append(_threshold_table(runs))
    return tables


def _curves(run: Any) -> Any:
    curves = run.metrics.curves
    if curves is None:
        raise ValueError(f"configuration {run.configuration} was scored without curves")
    return curves


def _pr_table(runs: Sequence[Any]) -> PlotTable:
    rows = [(run.configuration, curve.iou, recall, precision)
            for run in runs for curve in _curves(run).pr
            for recall, precision in zip(curve.recall, curve.precision, strict=True)]
    return PlotTable("pr_curves", "Precision-recall (COCOeval, area all, 100 detections, mean over categories)",
                     ("configuration", "iou", "recall", "precision"), tuple(rows))


def _with_ground_truth(runs: Sequence[Any]) -> list[int]:
    return [c for c in runs[0].metrics.per_class if any(run.metrics.per_class.get(c) is not None for run in runs)]


def _per_class_table(runs: Sequence[Any], categories: dict[int, str]) -> PlotTable:
    rows = [(run.configuration, c, categories.get(c, ""), run.metrics.per_class.get(c))
            for run in runs for c in _with_ground_truth(runs)]
    return PlotTable("per_class_ap", "AP per category (IoU 0.50:0.95)",
                     ("configuration", "category_id", "name", "AP"), tuple(rows))


def _delta_table(runs: Sequence[Any], categories: dict[int, str], baseline: int) -> PlotTable:
    base = runs[baseline]
    rows = []
    for run in runs:
        if run is base:
            continue
        for c in _with_ground_truth(runs):
            ours, theirs = run.metrics.per_class.get(c), base.metrics.per_class.get(c)
            delta = None if ours is None or theirs is None else ours - theirs
            rows.append((run.configuration, base.configuration, c, categories.get(c, ""), ours, theirs, delta))
    return PlotTable("per_class_delta_ap", f"ΔAP per category against {base.configuration}",
                     ("configuration", "baseline", "category_id", "name", "AP", "baseline_AP", "delta_AP"),
                     tuple(rows))


def _threshold_table(runs: Sequence[Any]) -> PlotTable:
    rows = []
    for run in runs:
        curve = _curves(run).thresholds
        rows += [(run.configuration, p.threshold, p.detections, p.true_positives, curve.ground_truth, p.precision,
                  p.recall, p.f1) for p in curve.points]
    return PlotTable("thresholds", "Precision, recall and F1 against the score threshold (IoU 0.50, all classes)",
                     ("configuration", "threshold", "detections", "true_positives", "ground_truth", "precision",
                      "recall", "f1"), tuple(rows))


# ------------------------------------------------------------------------------------------------------ drawing
def render_png(table: PlotTable, best: dict[str, Any] | None = None) -> bytes:
    """The PNG of ``table`` (one of :func:`plot_tables`), drawn from its rows; ``best`` maps a configuration to
    its :class:`~ssdtool.evaluation.curves.BestThreshold` for the threshold plot's markers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    draw = {"pr_curves": _draw_pr, "per_class_ap": _draw_per_class, "per_class_delta_ap": _draw_delta,
            "thresholds": _draw_thresholds}[table.name]
    figure = Figure(figsize=_size(table), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    draw(figure, table, best or {})
    figure.suptitle(table.title, fontsize=11)
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


def _size(table: PlotTable) -> tuple[float, float]:
    if table.name in ("per_class_ap", "per_class_delta_ap"):
        categories = len(set(table.column("category_id")))
        return (9.0, max(3.0, 1.2 + 0.22 * categories))
    if table.name == "thresholds":
        return (10.0, 5.0 + 0.25 * len(_configurations(table)))
    return (10.0, 4.6)


def _configurations(table: PlotTable) -> list[str]:
    return list(dict.fromkeys(table.column("configuration")))


def _draw_pr(figure: Any, table: PlotTable, _best: dict[str, Any]) -> None:
    for axes, iou in zip(figure.subplots(1, 2, sharey=True), ("0.50", "0.50:0.95"), strict=True):
        for configuration in _configurations(table):
            rows = table.where(configuration=configuration, iou=iou)
            points = [(r["recall"], r["precision"]) for r in rows if r["precision"] is not None]
            area = sum(p for _, p in points) / len(rows) if rows and points else None
            label = configuration + ("" if area is None else f" (AP {area:.3f})")
            axes.plot([r for r, _ in points], [p for _, p in points], label=label)
        axes.set(title=f"IoU {iou}", xlabel="recall", xlim=(0, 1), ylim=(0, 1.02))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="lower left")
    figure.axes[0].set_ylabel("precision")


def _bars(axes: Any, names: list[str], series: Iterable[tuple[str, list[float | None]]]) -> None:
    series = list(series)
    height = 0.8 / max(len(series), 1)
    for k, (label, values) in enumerate(series):
        positions = [i + (k - (len(series) - 1) / 2) * height for i in range(len(names))]
        axes.barh(positions, [0.0 if v is None else v for v in values], height=height, label=label)
    axes.set_yticks(range(len(names)), names, fontsize=7)
    axes.invert_yaxis()
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")


def _draw_per_class(figure: Any, table: PlotTable, _best: dict[str, Any]) -> None:
    configurations = _configurations(table)
    first = table.where(configuration=configurations[0])
    names = [r["name"] or str(r["category_id"]) for r in first]
    axes = figure.subplots()
    _bars(axes, names, ((c, [r["AP"] for r in table.where(configuration=c)]) for c in configurations))
    axes.set(xlabel="AP (IoU 0.50:0.95)", xlim=(0, 1))


def _draw_delta(figure: Any, table: PlotTable, _best: dict[str, Any]) -> None:
    """Categories ordered by their worst ΔAP over the configurations: the most costly first."""
    configurations = _configurations(table)
    per_configuration = [table.where(configuration=c) for c in configurations]
    first = per_configuration[0]

    def worst(i: int) -> tuple[bool, float]:
        deltas = [rows[i]["delta_AP"] for rows in per_configuration if rows[i]["delta_AP"] is not None]
        return (not deltas, min(deltas, default=0.0))

    order = sorted(range(len(first)), key=worst)
    names = [first[i]["name"] or str(first[i]["category_id"]) for i in order]
    axes = figure.subplots()
    _bars(axes, names, ((c, [rows[i]["delta_AP"] for i in order])
                        for c, rows in zip(configurations, per_configuration, strict=True)))
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set(xlabel=f"ΔAP against {first[0]['baseline'] if first else ''} (IoU 0.50:0.95)")


def _draw_thresholds(figure: Any, table: PlotTable, best: dict[str, Any]) -> None:
    axes = figure.subplots()
    styles = (("precision", "--"), ("recall", ":"), ("f1", "-"))
    for index, configuration in enumerate(_configurations(table)):
        color = f"C{index % 10}"
        rows = table.where(configuration=configuration)
        for column, style in styles:
            points = [(r["threshold"], r[column]) for r in rows if r[column] is not None]
            axes.plot([t for t, _ in points], [v for _, v in points], style, color=color,
                      label=f"{configuration} {column.upper() if column == 'f1' else column}")
        top = best.get(configuration)
        if top is not None:
            axes.plot([top.threshold], [top.f1], "o", color=color)
            axes.annotate(f"F1 {top.f1:.3f} at {top.threshold:.2f}", (top.threshold, top.f1),
                          textcoords="offset points", xytext=(8, -14 - 12 * index), fontsize=8, color=color,
                          bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    axes.set(xlabel="score threshold (detect --threshold)", ylabel="precision / recall / F1", xlim=(0, 1),
             ylim=(0, 1.05))
    axes.grid(alpha=0.3)
    figure.legend(*axes.get_legend_handles_labels(), fontsize=8, loc="outside lower center",
                  ncol=3)
