"""``ssdtool eval --plots DIR --report FILE``: the plotted data is COCOeval's, the files are written whole through
the one guard and atomic writer, the report is self-contained, and the extra missing is exit 23.

The data files are compared with pycocotools' COCOeval run directly on the saved detections, and the threshold
curve with a planted case computed by hand (see ``crowded``)."""

from __future__ import annotations

import base64
import copy
import csv
import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result
from hypothesis import given, settings

from ssdtool import fsutil
from tests import test_eval
from tests.test_eval import Dataset, cocoeval, exact, planted_boxes, run_eval
from tests.test_eval_scorers import documents

eval_world = test_eval.eval_world
dataset = test_eval.dataset

PLOT_FILES = sorted(f"{name}.{suffix}" for name in ("pr_curves", "per_class_ap", "per_class_delta_ap", "thresholds")
                    for suffix in ("png", "csv"))


def crowded(_image_id: int, width: int, height: int) -> list[tuple[int, list[float], int]]:
    """Ground truth on the planted person (0.9), car (0.8) and toilet (0.7); none for the stop sign (0.6: a false
    positive); a crowd region on the second person (0.3: matched to it, so ignored, neither true nor false); and a
    toothbrush nobody finds. Per image: 4 boxes count as ground truth, 3 are found.

    By hand, with 5 images (20 ground-truth boxes): a threshold up to 0.6 keeps 4 counted detections an image (3
    true): P 0.75, R 0.75, F1 0.75; above 0.6 up to 0.7: 3 (all true): P 1, R 0.75, F1 6/7 (the best); above 0.7 up
    to 0.8: P 1, R 0.5, F1 2/3; above 0.8 up to 0.9: P 1, R 0.25, F1 0.4; above 0.9 nothing is kept: P undefined,
    R 0."""
    boxes = planted_boxes(width, height)
    made = [(category, bbox, 0) for category, bbox, _ in boxes[:3]]
    category, bbox, _ = boxes[4]
    return [*made, (category, bbox, 1), (90, [1.0, 1.0, width / 6, height / 6], 0)]


def run(dataset: Dataset, annotations: Path, *args: str) -> Result:
    return run_eval(dataset.world, "planted", "--annotations", str(annotations), "--images", str(dataset.images),
                    "--results", str(dataset.folder / "r.jsonl"), *args)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows, numbers as numbers (the label columns stay text), an empty cell as None."""
    def value(key: str, text: str) -> Any:
        if key in ("configuration", "baseline", "iou", "name"):
            return text
        if text == "":
            return None
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text
    with open(path, newline="") as stream:
        return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(stream)]


# ------------------------------------------------------------------------------------------------ the data
def test_plotted_data_is_cocoevals(dataset: Dataset) -> None:
    """Shifted, missing and extra boxes, crowds: every number in pr_curves.csv, per_class_ap.csv and
    per_class_delta_ap.csv is read from pycocotools' own precision array (run here directly)."""
    annotations = dataset.write(dataset.annotate(test_eval.TestMixed.make))
    plots, saved = dataset.folder / "plots", dataset.folder / "dets.json"
    result = run(dataset, annotations, "--compare", "FP32:f32,onnxruntime", "--plots", str(plots),
                 "--save-detections", str(saved), "--json", "--per-class")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in plots.iterdir()) == PLOT_FILES
    data = json.loads(result.stdout)
    assert data["coco_eval"].startswith("pycocotools ")  # the plots need its per-detection matches
    image_ids = [image["id"] for image in dataset.document["images"]]
    curves = read_csv(plots / "pr_curves.csv")
    per_class = read_csv(plots / "per_class_ap.csv")
    for run_data in data["compare"]:
        label = run_data["configuration"]
        detections = json.loads(saved.with_name(f"dets.{label.replace(':', '-')}.json").read_text())
        evaluator = cocoeval(annotations, detections, image_ids)
        precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K], area all, 100 detections
        for iou, table in (("0.50", precision[:1]), ("0.50:0.95", precision)):
            rows = [r for r in curves if r["configuration"] == label and r["iou"] == iou]
            assert [r["recall"] for r in rows] == [float(r) for r in evaluator.params.recThrs]
            expected = [table[:, r][table[:, r] > -1].mean() for r in range(table.shape[1])]
            assert [r["precision"] for r in rows] == pytest.approx(expected, abs=1e-12)
        assert np.mean([r["precision"] for r in curves if r["configuration"] == label and r["iou"] == "0.50"]) == \
            pytest.approx(evaluator.stats[1], abs=1e-12)
        assert np.mean([r["precision"] for r in curves if r["configuration"] == label and r["iou"] != "0.50"]) == \
            pytest.approx(evaluator.stats[0], abs=1e-12)
        ours = {r["category_id"]: r["AP"] for r in per_class if r["configuration"] == label}
        for k, category in enumerate(evaluator.params.catIds):
            values = precision[:, :, k]
            if (values > -1).any():
                assert ours[category] == pytest.approx(values[values > -1].mean(), abs=1e-12)
            else:
                assert category not in ours  # no ground truth in any configuration: not plotted
        assert {c["category_id"]: c["AP"] for c in run_data["per_class"] if c["AP"] is not None} == ours
    delta = read_csv(plots / "per_class_delta_ap.csv")
    first = {r["category_id"]: r["AP"] for r in per_class if r["configuration"] == "openvino:FP32:f32"}
    second = {r["category_id"]: r["AP"] for r in per_class if r["configuration"] == "onnxruntime"}
    assert [(r["configuration"], r["baseline"]) for r in delta] == [("onnxruntime", "openvino:FP32:f32")] * len(first)
    assert {r["category_id"]: r["delta_AP"] for r in delta} == {c: second[c] - first[c] for c in first}


def test_threshold_curve_of_a_planted_case_computed_by_hand(dataset: Dataset) -> None:
    annotations = dataset.write(dataset.annotate(crowded))
    plots, saved = dataset.folder / "plots", dataset.folder / "dets.json"
    result = run(dataset, annotations, "--plots", str(plots), "--json", "--save-detections", str(saved))
    assert result.exit_code == 0, result.output
    rows = {r["threshold"]: r for r in read_csv(plots / "thresholds.csv")}
    assert sorted(rows) == [round(k / 100, 2) for k in range(101)]
    assert {r["ground_truth"] for r in rows.values()} == {20}
    by_hand = {0.0: (20, 15, 0.75, 0.75, 0.75), 0.25: (20, 15, 0.75, 0.75, 0.75), 0.5: (20, 15, 0.75, 0.75, 0.75),
               0.65: (15, 15, 1.0, 0.75, 6 / 7), 0.75: (10, 10, 1.0, 0.5, 2 / 3), 0.85: (5, 5, 1.0, 0.25, 0.4),
               0.95: (0, 0, None, 0.0, None), 1.0: (0, 0, None, 0.0, None)}
    for threshold, (kept, hits, precision, recall, f1) in by_hand.items():
        row = rows[threshold]
        assert (row["detections"], row["true_positives"]) == (kept, hits), threshold
        assert (row["precision"], row["recall"]) == (precision, recall), threshold
        assert row["f1"] == (None if f1 is None else pytest.approx(f1, abs=1e-15)), threshold
    # The best F1 starts where the stop sign (0.6) drops out, by detect's rule: score >= threshold in float32.
    stop_sign = next(d["score"] for d in json.loads(saved.read_text()) if d["category_id"] == 13)
    toilet = next(d["score"] for d in json.loads(saved.read_text()) if d["category_id"] == 70)
    best = json.loads(result.stdout)["threshold"]
    assert best["threshold"] == (0.6 if np.float32(stop_sign) < np.float32(0.6) else 0.61)
    assert best["threshold_max"] == (0.7 if np.float32(toilet) >= np.float32(0.7) else 0.69)
    assert (best["precision"], best["recall"]) == (1.0, 0.75) and best["f1"] == pytest.approx(6 / 7, abs=1e-15)
    text = run(dataset, annotations, "--plots", str(plots))
    assert re.search(r"openvino:f32\s+0\.6[01] \(to 0\.(69|70)\)\s+0\.8571\s+1\.0000\s+0\.7500", text.stdout)


@pytest.mark.parametrize("threshold", ["0.3", "0.6", "0.7", "0.8", "0.9"])
def test_threshold_counts_are_what_detect_keeps(dataset: Dataset, threshold: str) -> None:
    """At each planted score, on its float32 edge: the detections the curve counts are those detect returns."""
    from click.testing import CliRunner

    from ssdtool.cli import cli

    plots = dataset.folder / "plots"
    assert run(dataset, dataset.write(dataset.annotate(exact)), "--plots", str(plots)).exit_code == 0
    counted = next(r["detections"] for r in read_csv(plots / "thresholds.csv") if r["threshold"] == float(threshold))
    detected = CliRunner().invoke(cli, dataset.world.args(
        "detect", str(dataset.images), "--model", "planted", "--threshold", threshold, "--inference-precision",
        "f32", "--format", "coco", "--progress", "none"), catch_exceptions=False)
    assert detected.exit_code == 0, detected.output
    assert counted == len(json.loads(detected.stdout))


# ------------------------------------------------------------------------------------------------ the files
def test_every_file_goes_through_the_atomic_writer(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[Path] = []
    real = fsutil.atomic_write

    def recording(path: Path, data: Any) -> None:
        written.append(Path(path))
        real(path, data)

    monkeypatch.setattr(fsutil, "atomic_write", recording)
    plots, report = dataset.folder / "plots", dataset.folder / "report.html"
    result = run(dataset, dataset.write(dataset.annotate(exact)), "--compare", "FP32:f32,onnxruntime", "--plots",
                 str(plots), "--report", str(report))
    assert result.exit_code == 0, result.output
    assert sorted(p for p in written if p.suffix != ".json") == sorted([*(plots / n for n in PLOT_FILES), report])
    assert f"wrote 8 plot files (PNG and CSV) to {plots}" in result.stderr
    assert f"wrote the report to {report}" in result.stderr


def test_a_failed_write_leaves_no_half_file(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while the third file is written: exit 2 naming it; the files before it are whole, the one
    that failed keeps its earlier content, and no temporary file stays."""
    import errno
    import os

    plots = dataset.folder / "plots"
    plots.mkdir()
    (plots / "per_class_ap.png").write_bytes(b"earlier")
    real = os.replace

    def full(source: Any, target: Any) -> None:
        if Path(target).name == "per_class_ap.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(source, target)

    monkeypatch.setattr(fsutil.os, "replace", full)
    result = run(dataset, dataset.write(dataset.annotate(exact)), "--plots", str(plots))
    assert result.exit_code == 2
    assert f"cannot write --plots {plots / 'per_class_ap.png'}: No space left on device" in result.stderr
    assert sorted(p.name for p in plots.iterdir()) == ["per_class_ap.png", "pr_curves.csv", "pr_curves.png"]
    assert (plots / "per_class_ap.png").read_bytes() == b"earlier"
    assert (plots / "pr_curves.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("case", ["report-is-annotations", "plots-is-a-file", "plots-is-images", "plot-is-input",
                                  "no-parent", "plots-and-report-collide"])
def test_outputs_are_checked_before_the_first_image(dataset: Dataset, case: str) -> None:
    annotations = dataset.write(dataset.annotate(exact))
    plots = dataset.folder / "plots"
    args, expected = {
        "report-is-annotations": (["--report", str(annotations)],
                                  f"refusing --report {annotations}: it is the annotation file (--annotations)"),
        "plots-is-a-file": (["--plots", str(annotations)], f"Directory '{annotations}' is a file"),
        "plots-is-images": (["--plots", str(dataset.images)], "it is the images folder (--images)"),
        "plot-is-input": (["--plots", str(plots)], f"refusing {plots / 'pr_curves.csv'} (a file --plots writes): "
                                                   "it is the annotation file (--annotations)"),
        "no-parent": (["--plots", str(dataset.folder / "a" / "b")], "does not exist"),
        "plots-and-report-collide": (["--plots", str(plots), "--report", str(plots / "thresholds.png")],
                                     "writes to the same file"),
    }[case]
    if case in ("plot-is-input", "plots-and-report-collide"):
        plots.mkdir()
    if case == "plot-is-input":
        annotations = annotations.rename(plots / "pr_curves.csv")
    result = run(dataset, annotations, *args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr, result.stderr
    assert not (dataset.folder / "r.jsonl").exists()  # no image ran


def test_without_matplotlib_exit_23_before_anything_runs(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] or ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    result = run(dataset, dataset.write(dataset.annotate(exact)), "--report", str(dataset.folder / "r.html"),
                 "--json")
    assert result.exit_code == 23
    assert "cannot import matplotlib" in result.stderr and "pip install 'ssdtool[plots]'" in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 23
    assert not (dataset.folder / "r.jsonl").exists() and not (dataset.folder / "r.html").exists()


def test_faster_coco_eval_cannot_draw(dataset: Dataset) -> None:
    result = run(dataset, dataset.write(dataset.annotate(exact)), "--plots", str(dataset.folder / "p"),
                 "--coco-eval", "faster-coco-eval")
    assert result.exit_code == 2
    assert "need pycocotools' per-detection matches" in result.stderr


# ------------------------------------------------------------------------------------------------ the report
def test_report_is_one_self_contained_file(dataset: Dataset) -> None:
    document = dataset.annotate(exact)
    document["categories"][0]["name"] = "<script>alert(1)</script>"  # names are data
    plots, report = dataset.folder / "plots", dataset.folder / "report.html"
    result = run(dataset, dataset.write(document), "--compare", "FP32:f32,onnxruntime", "--plots", str(plots),
                 "--report", str(report), "--json")
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?data:)""", page)  # nothing fetched: data: URIs only
    assert "http://" not in page and "https://" not in page and "@import" not in page and "url(" not in page
    embedded = [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
    assert embedded == [(plots / f"{name}.png").read_bytes()
                        for name in ("pr_curves", "per_class_ap", "per_class_delta_ap", "thresholds")]
    data = json.loads(result.stdout)
    assert data["report"] == str(report) and sorted(Path(p).name for p in data["plots"]) == PLOT_FILES
    for text in ("openvino:FP32:f32", "onnxruntime", "COCOeval's twelve stats", "AP per category",
                 str(dataset.images), "best --threshold"):
        assert text in page


def test_report_alone_needs_no_plots_folder(dataset: Dataset) -> None:
    report = dataset.folder / "only.html"
    result = run(dataset, dataset.write(dataset.annotate(exact)), "--report", str(report), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plots"] == []
    assert report.read_text().count('src="data:image/png;base64,') == 3  # one configuration: no ΔAP plot


def test_the_plots_folder_is_made_and_may_hold_the_other_outputs(dataset: Dataset) -> None:
    """``--plots out --report out/report.html --results out/r.jsonl`` with no ``out`` yet: it is made first, so the
    others are checked (and written) there; when one is refused, the folder made for it goes again."""
    annotations = dataset.write(dataset.annotate(exact))
    out = dataset.folder / "out"
    refused = run_eval(dataset.world, "planted", "--annotations", str(annotations), "--images", str(dataset.images),
                       "--plots", str(out), "--report", str(annotations))
    assert refused.exit_code == 2 and "it is the annotation file" in refused.stderr
    assert not out.exists()
    result = run_eval(dataset.world, "planted", "--annotations", str(annotations), "--images", str(dataset.images),
                      "--plots", str(out), "--report", str(out / "report.html"), "--results", str(out / "r.jsonl"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(n for n in PLOT_FILES if "delta" not in n), "report.html", "r.jsonl", "r.jsonl.checkpoint.json"])


def test_the_library_refuses_a_plots_path_that_is_a_file(dataset: Dataset) -> None:
    """The command's option parser refuses it first; a Python caller gets the same refusal from the library."""
    from ssdtool.errors import UsageError
    from ssdtool.evaluation import evaluate

    annotations = dataset.write(dataset.annotate(exact))
    with pytest.raises(UsageError, match="it exists and is not a folder"):
        evaluate(annotations, dataset.images, "planted", cache_dir=dataset.world.cache,
                 registry=dataset.world.registry, plots=annotations, inference_precision="f32")
    assert not (dataset.folder / "r.jsonl").exists()


@settings(max_examples=80, deadline=None)
@given(case=documents())
def test_curves_agree_with_cocoevals_own_summaries(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    """Over random documents: each PR curve averages to COCOeval's AP50 / AP; the threshold curve at 0 (every
    detection kept) has COCOeval's recall at IoU 0.50 (its per-category recall weighted by each category's boxes);
    counts never grow with the threshold."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ssdtool.evaluation.dataset import check_annotations
    from ssdtool.evaluation.metrics import evaluate_detections, select_scorer

    document, detections = case
    dataset = check_annotations(copy.deepcopy(document))
    ids = [image.id for image in dataset.images]
    metrics = evaluate_detections(dataset, detections, ids, scorer=select_scorer("pycocotools"), curves=True)
    assert metrics.curves is not None
    for curve, stat in zip(metrics.curves.pr, ("AP50", "AP"), strict=True):
        if metrics.stats[stat] is None:
            assert set(curve.precision) == {None}
        else:
            assert np.mean(curve.precision) == pytest.approx(metrics.stats[stat], abs=1e-12)
    gt = COCO()
    gt.dataset = copy.deepcopy(dataset.data)
    gt.createIndex()
    if detections:
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        boxes = {k: sum(1 for a in dataset.data["annotations"] if a["category_id"] == c and not a["iscrowd"])
                 for k, c in enumerate(evaluator.params.catIds)}
        found = sum(evaluator.eval["recall"][0, k, 0, -1] * n for k, n in boxes.items() if n)
        points = metrics.curves.thresholds.points
        assert metrics.curves.thresholds.ground_truth == sum(boxes.values())
        if sum(boxes.values()):
            assert points[0].recall == pytest.approx(found / sum(boxes.values()), abs=1e-12)
        for before, after in itertools.pairwise(points):
            assert after.detections <= before.detections and after.true_positives <= before.true_positives
            assert after.true_positives <= after.detections


def test_matplotlib_writes_nothing_in_the_home_folder(dataset: Dataset, tmp_path: Path) -> None:
    """matplotlib keeps its font cache in MPLCONFIGDIR, else the home folder; the ssdtool command points it into
    ssdtool's cache (README, "Where files go")."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "MPL", "SSDTOOL_"))}
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    cache = tmp_path / "cache"
    annotations = dataset.write(dataset.annotate(exact))
    done = subprocess.run([sys.executable, "-m", "ssdtool", "--registry", str(dataset.world.registry), "--cache-dir",
                           str(dataset.world.cache), "eval", "planted", "--annotations", str(annotations), "--images",
                           str(dataset.images), "--backend", "onnxruntime", "--report", str(tmp_path / "r.html"),
                           "--results", str(tmp_path / "r.jsonl"), "--progress", "none"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []
    assert (dataset.world.cache / "matplotlib").is_dir() and not cache.exists()
