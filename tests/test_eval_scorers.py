"""faster-coco-eval gives pycocotools' twelve stats and per-class AP on the test datasets, so ``--coco-eval auto``
may score with it: property-tested over random documents (crowds, ties, images and categories without boxes,
boxes on the area boundaries), on a generated COCO dataset, and through ``ssdtool eval`` itself.

"Equal" is to 1e-12: the two agree to the last bit or two of a double (the C++ port sums in another order); no
stat COCOeval prints or ssdtool reports moves."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssdtool.evaluation.dataset import CocoDataset, check_annotations
from ssdtool.evaluation.metrics import STAT_NAMES, CocoMetrics, evaluate_detections, select_scorer
from ssdtool.labels import COCO_CATEGORY_IDS
from tests import test_eval
from tests.test_eval import Dataset, run_eval

eval_world = test_eval.eval_world
dataset = test_eval.dataset
TOLERANCE = 1e-12


def both(document: dict[str, Any], detections: list[dict[str, Any]], image_ids: list[int] | None = None
         ) -> tuple[CocoMetrics, CocoMetrics]:
    """The metrics of pycocotools and of faster-coco-eval, each on its own copy of everything."""
    found = []
    for name in ("pycocotools", "faster-coco-eval"):
        checked: CocoDataset = check_annotations(copy.deepcopy(document))
        ids = image_ids if image_ids is not None else [image.id for image in checked.images]
        found.append(evaluate_detections(checked, copy.deepcopy(detections), ids, scorer=select_scorer(name)))
    return found[0], found[1]


def assert_same(reference: CocoMetrics, port: CocoMetrics) -> None:
    assert reference.scorer.startswith("pycocotools ") and port.scorer.startswith("faster-coco-eval ")
    for name in STAT_NAMES:
        ours, theirs = reference.stats[name], port.stats[name]
        assert (ours is None) == (theirs is None), name
        if ours is not None:
            assert abs(ours - theirs) <= TOLERANCE, (name, ours, theirs)
    assert reference.per_class.keys() == port.per_class.keys()
    for category, ours in reference.per_class.items():
        theirs = port.per_class[category]
        assert (ours is None) == (theirs is None), category
        if ours is not None:
            assert abs(ours - theirs) <= TOLERANCE, (category, ours, theirs)


# ------------------------------------------------------------------------------------------------ random documents
_box = st.tuples(st.floats(0, 90), st.floats(0, 90), st.sampled_from([0.0, 1.0, 31.9, 32.0, 32.1, 60.0, 96.0]),
                 st.floats(0.5, 110))


@st.composite
def documents(draw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    images = draw(st.integers(1, 5))
    categories = [{"id": c, "name": str(c)} for c in (1, 2, 3)]
    annotations: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    scores = draw(st.sampled_from([st.sampled_from([0.25, 0.5, 0.75]), st.floats(0.01, 1.0)]))  # ties, or not
    for image in range(1, images + 1):
        for x, y, w, h in draw(st.lists(_box, max_size=5)):
            annotations.append({"id": len(annotations) + 1, "image_id": image,
                                "category_id": draw(st.integers(1, 3)), "bbox": [x, y, w, h],
                                "iscrowd": int(draw(st.integers(0, 4)) == 0)})
        for _ in range(draw(st.integers(0, 8))):
            if annotations and draw(st.booleans()):  # near a box of this or another image
                near = annotations[draw(st.integers(0, len(annotations) - 1))]
                x, y, w, h = near["bbox"]
                dx, scale = draw(st.floats(-5, 5)), draw(st.floats(0.6, 1.4))
                box, category, where = [x + dx, y, w * scale, h], near["category_id"], near["image_id"]
            else:
                box, category, where = list(draw(_box)), draw(st.integers(1, 3)), image
            detections.append({"image_id": where, "category_id": category, "bbox": box, "score": draw(scores)})
    document = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100}
                           for i in range(1, images + 1)], "annotations": annotations, "categories": categories}
    return document, detections


@settings(max_examples=150, deadline=None)
@given(case=documents())
def test_random_documents_score_the_same(case: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    document, detections = case
    assert_same(*both(document, detections))


# ------------------------------------------------------------------------------------------------ a generated dataset
def test_a_generated_coco_dataset_scores_the_same(tmp_path: Path) -> None:
    """``python -m ssdtool.synthetic.dataset``'s annotations (what docs/eval.md and the benchmark use) with 200
    detections an image as the model outputs them: some near the boxes, most not, scores with ties."""
    from ssdtool.synthetic.dataset import write_dataset

    annotations, _ = write_dataset(tmp_path, 24, seed=3)
    document = json.loads(annotations.read_text())
    rng = np.random.default_rng(0)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in document["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    detections = []
    for image in document["images"]:
        for annotation in by_image.get(image["id"], []):
            x, y, w, h = annotation["bbox"]
            detections.append({"image_id": image["id"], "category_id": annotation["category_id"],
                               "bbox": [x + rng.normal(0, w / 10), y + rng.normal(0, h / 10), w, h],
                               "score": float(np.float32(rng.uniform(0.3, 1)))})
        for _ in range(200 - len(by_image.get(image["id"], []))):
            w, h = rng.uniform(5, 300, 2)
            detections.append({"image_id": image["id"], "category_id": int(rng.choice(COCO_CATEGORY_IDS[:20])),
                               "bbox": [float(rng.uniform(0, image["width"] - w)),
                                        float(rng.uniform(0, image["height"] - h)), float(w), float(h)],
                               "score": round(float(rng.uniform(0.01, 0.6)), 2)})
    reference, port = both(document, detections)
    assert_same(reference, port)
    assert 0.0 < reference.stats["AP"] < 1.0  # a case with something to get wrong
    # A subset of the images, as --limit scores it
    assert_same(*both(document, detections, image_ids=[2, 3, 5, 8, 13]))


# ------------------------------------------------------------------------------------------------ through eval
@pytest.mark.parametrize("make", [test_eval.TestMixed.make, test_eval.exact])
def test_eval_reports_the_same_stats_with_either(dataset: Dataset, make: Any) -> None:
    annotations = dataset.write(dataset.annotate(make))
    reports = []
    for name in ("pycocotools", "faster-coco-eval"):
        result = run_eval(dataset.world, "planted", "--annotations", str(annotations), "--images",
                          str(dataset.images), "--coco-eval", name, "--json", "--per-class",
                          "--results", str(dataset.folder / f"{name}.jsonl"))
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
    reference, port = reports
    assert reference["coco_eval"].startswith("pycocotools ") and port["coco_eval"].startswith("faster-coco-eval ")
    assert reference["metrics"] == pytest.approx(port["metrics"], abs=TOLERANCE)
    assert [c["AP"] for c in reference["per_class"]] == pytest.approx([c["AP"] for c in port["per_class"]],
                                                                     abs=TOLERANCE)
