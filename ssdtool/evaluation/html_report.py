"""eval's report: one self-contained HTML file (``--report FILE.html``) that opens offline.

Everything is inside the file: the style in a ``<style>`` element, each plot a PNG as a ``data:`` URI, no script,
no link, no font or image fetched from anywhere. Every text that came from outside (paths, configuration labels,
category names from the annotation file, error messages) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime
import html
from collections.abc import Mapping, Sequence
from typing import Any

from ssdtool.evaluation.metrics import STAT_MEANINGS, STAT_NAMES
from ssdtool.evaluation.plots import PlotTable

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d1d1f; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f6; } td.text, th.text { text-align: left; }
td.worse { color: #b00020; } td.better { color: #00695c; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: 600; } dd { margin: 0; word-break: break-all; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #555; font-size: 0.9em; }
"""

_MAX_LISTED = 20


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _delta(value: float | None) -> tuple[str, str]:
    if value is None:
        return "-", ""
    return f"{value:+.4f}", "worse" if value < -5e-5 else ("better" if value > 5e-5 else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[tuple[str, str]]], text_columns: int = 1) -> str:
    """``rows`` of (already escaped cell text, css class); the first ``text_columns`` columns align left."""
    head = "".join(f'<th class="{"text" if k < text_columns else ""}">{_e(h)}</th>' for k, h in enumerate(header))
    body = "".join("<tr>" + "".join(
        f'<td class="{" ".join(filter(None, ["text" if k < text_columns else "", css]))}">{cell}</td>'
        for k, (cell, css) in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plain(*cells: str) -> list[tuple[str, str]]:
    return [(_e(c), "") for c in cells]


def render_report(data: Mapping[str, Any], plots: Sequence[tuple[PlotTable, bytes]], version: str,
                  now: datetime.datetime | None = None) -> bytes:
    """The HTML of a report: ``data`` is :meth:`EvalReport.to_dict` with per-class AP, ``plots`` each plot's table
    and PNG, ``version`` ssdtool's."""
    runs = data.get("compare") or [data]
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ssdtool eval: "
             f"{_e(data.get('model') or data['source'])}</title><style>{_STYLE}</style></head><body>",
             f"<h1>ssdtool eval: {_e(data.get('model') or data['source'])}</h1>",
             f'<p class="note">ssdtool {_e(version)}, {_e(stamp)}</p>', _run_section(data), _configurations(runs),
             _stats(runs)]
    for table, png in plots:
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{_e(table.title)}</h2><img alt=\"{_e(table.name)}\" "
                     f"src=\"data:image/png;base64,{encoded}\">")
    parts += [_per_class(runs, data), _images(data), "</body></html>"]
    return "\n".join(parts).encode("utf-8")


def _run_section(data: Mapping[str, Any]) -> str:
    agreement = data.get("agreement")
    items = [("model", data.get("model")), ("source", data["source"])]
    if agreement:
        items.append(("scored against", f"the detections of {agreement['reference']} at or above score "
                                        f"{agreement['min_score']} ({agreement['ground_truth_boxes']} boxes): "
                                        "agreement with that configuration, not accuracy"))
    else:
        items.append(("annotations", data.get("annotations")))
    items += [("images folder", data.get("images_dir")),
              ("images", f"{data['images_evaluated']} evaluated, {data['images_skipped']} skipped, "
                         f"{data['images_selected']} selected"),
              ("COCOeval", data.get("coco_eval")), ("results file", data.get("results_file"))]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items if v is not None)
    return f"<h2>Run</h2><dl>{rows}</dl>"


def _configurations(runs: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for run in runs:
        best = run.get("threshold")
        delta, css = _delta(run.get("delta_ap"))
        threshold = "-" if not best else (f"{best['threshold']:.2f}" if best["threshold"] == best["threshold_max"]
                                          else f"{best['threshold']:.2f}-{best['threshold_max']:.2f}")
        rows.append([*_plain(run["configuration"], run.get("backend") or "-", run.get("precision") or "-",
                             run.get("inference_precision") or "-", run.get("device") or "-",
                             "-" if run.get("images_per_second") is None else f"{run['images_per_second']:.2f}",
                             _fraction(run["metrics"]["AP"]), _fraction(run["metrics"]["AP50"])), (_e(delta), css),
                     *_plain(threshold, "-" if not best else f"{best['f1']:.4f}",
                             "-" if not best else f"{best['precision']:.4f}",
                             "-" if not best else f"{best['recall']:.4f}")])
    header = ["configuration", "backend", "IR", "ran in", "device", "images/s", "AP", "AP50", "ΔAP",
              "best --threshold", "F1", "precision", "recall"]
    return ("<h2>Configurations</h2>" + _table(header, rows) +
            '<p class="note">best --threshold: the score threshold of the highest F1 at IoU 0.50, all classes '
            "pooled (a range keeps the same detections); precision and recall there.</p>")


def _stats(runs: Sequence[Mapping[str, Any]]) -> str:
    rows = [[*_plain(name), *[(_fraction(run["metrics"][name]), "") for run in runs], (_e(STAT_MEANINGS[name]), "")]
            for name in STAT_NAMES]
    rows = [[*row[:-1], (row[-1][0], "text")] for row in rows]
    return "<h2>COCOeval's twelve stats</h2>" + _table(["metric", *[r["configuration"] for r in runs], "meaning"],
                                                         rows)


def _per_class(runs: Sequence[Mapping[str, Any]], data: Mapping[str, Any]) -> str:
    first = runs[0].get("per_class") or []
    base = next((r for r in runs if r["configuration"] == data.get("baseline")), runs[0])
    header = ["id", "category", *[f"AP {r['configuration']}" for r in runs],
              *[f"ΔAP {r['configuration']}" for r in runs if r is not base]]
    rows = []
    for index, entry in enumerate(first):
        values = [run["per_class"][index]["AP"] for run in runs]
        if all(v is None for v in values):
            continue
        cells = [*_plain(entry["category_id"], entry["name"]), *[(_fraction(v), "") for v in values]]
        for run, value in zip(runs, values, strict=True):
            if run is base:
                continue
            theirs = base["per_class"][index]["AP"]
            text, css = _delta(None if value is None or theirs is None else value - theirs)
            cells.append((_e(text), css))
        rows.append(cells)
    return (f"<h2>AP per category (IoU 0.50:0.95), ΔAP against {_e(base['configuration'])}</h2>"
            + _table(header, rows, text_columns=2))


def _images(data: Mapping[str, Any]) -> str:
    parts = []
    for key, title in (("missing_images", "Missing images (skipped)"), ("size_mismatches", "Size mismatches")):
        names = data.get(key) or []
        if names:
            shown = ", ".join(_e(n) for n in names[:_MAX_LISTED])
            more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
            parts.append(f"<h2>{_e(title)}: {len(names)}</h2><p>{shown}{more}</p>")
    failed = data.get("failed_images") or []
    if failed:
        rows = [_plain(f["file"], f["error"]) for f in failed[:_MAX_LISTED]]
        parts.append(f"<h2>Images that could not be read: {len(failed)}</h2>" + _table(["file", "error"], rows, 2))
    return "\n".join(parts)
