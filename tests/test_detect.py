"""``ssdtool detect``: exact detections through both engines in every format, filters, bad inputs, outputs, errors.

Most tests use a *planted* tiny twin: its heads ignore the image and encode five chosen detections, so the
expected boxes in pixels follow from the default-box geometry alone (``synthetic.planted_expected``), whatever
the image size. The seeded tiny twin (real-looking, hundreds of detections) checks that the two engines agree;
one slow test repeats that on the full-size twin.

All models are installed and converted once per session into a shared folder (:func:`detect_world`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.imaging import generated_images
from ssdtool.labels import COCO_CATEGORY_IDS, COCO_NAMES
from ssdtool.matching import RawDetections, match_detections
from ssdtool.registry import load_registry
from ssdtool.ssd import SsdGeometry
from ssdtool.synthetic import PlantedDetection, TwinSpec, build_model, planted_expected
from tests.modelkit import hide_openvino, install_model, tiny_entry_template

TINY = SsdGeometry.for_input(300)
# Five planted detections: distinct classes, one box reaching past the image (-0.005: must be clipped), one class
# whose COCO id differs from its index (12 stop sign -> 13, 62 toilet -> 70), one score below the default
# threshold.
PLANTED = (
    PlantedDetection(box_index=29, label=1, score=0.9),
    PlantedDetection(box_index=757, label=3, score=0.8),
    PlantedDetection(box_index=1008, label=62, score=0.7),
    PlantedDetection(box_index=1066, label=12, score=0.6),
    PlantedDetection(box_index=1095, label=1, score=0.3),
)
SIZES = ((640, 480), (480, 640), (1200, 1200), (33, 1000))
BACKENDS = ("openvino", "onnxruntime")
# Agreement between the engines on the seeded twins: every detection found in the other engine's output with the
# same label, IoU >= 0.5 and boxes / scores within 1e-4 (normalized units). Measured: boxes 2e-7, scores 3e-6.
AGREEMENT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class World:
    root: Path
    registry: Path
    cache: Path
    images: dict[tuple[int, int], Path]

    def args(self, *extra: str) -> list[str]:
        return ["--registry", str(self.registry), "--cache-dir", str(self.cache), *extra]


def _build_world(root: Path) -> World:
    from ssdtool.convert import ConvertOptions, convert

    registry, cache = root / "registry.yml", root / "cache"
    if not registry.exists():
        root.mkdir(parents=True, exist_ok=True)
        install_model(cache, registry, "planted", build_model(TwinSpec(variant="tiny", planted=PLANTED)))
        install_model(cache, registry, "tiny", build_model(TwinSpec(variant="tiny")))
        loaded = load_registry(registry)
        for name in ("planted", "tiny"):
            # The IR as detect would make it on first use; the parity gate is test_convert's business.
            convert(loaded.model(name), Cache.at(cache), ConvertOptions(verify=False))
    images = {}
    for width, height in SIZES:
        path = root / "images" / f"{width}x{height}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(generated_images(1, seed=width, size=(width, height))[0]).save(path, compress_level=1)
        images[(width, height)] = path
    return World(root, registry, cache, images)


@pytest.fixture(scope="session")
def detect_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Registry (``planted`` = default model, ``tiny``), cache with both converted, and test images of 4 sizes."""
    return _build_world(tmp_path_factory.getbasetemp() / "detect-world")


def expected(width: int, height: int, threshold: float = 0.5) -> list[dict[str, Any]]:
    """The planted model's detections in an image of this size, as ``--format json`` writes them."""
    names = ("__background__", *COCO_NAMES)
    boxes, labels, scores = planted_expected(PLANTED, TINY)
    scale = np.array([width, height, width, height], dtype=np.float64)
    pixels = np.clip(boxes.astype(np.float64) * scale, 0, scale)
    return [{"label_id": int(label), "label": names[label], "score": round(float(score), 5),
             "box": [round(float(v), 2) for v in box]}
            for box, label, score in zip(pixels, labels, scores, strict=True) if score >= threshold]


def detect(world: World, *args: str, env: dict[str, str] | None = None) -> Result:
    """``ssdtool detect`` on the world, at f32 unless told otherwise: these tests compare exact numbers, and a CPU
    with native bf16 would otherwise be free to pick bf16 (see test_precision.py for the default's behaviour)."""
    pinned = () if "--inference-precision" in args else ("--inference-precision", "f32")
    return CliRunner().invoke(cli, world.args("detect", *args, *pinned), env=env, catch_exceptions=False)


def json_images(stdout: str) -> list[dict[str, Any]]:
    """The per-image records of a ``--format json`` document (``{"run": ..., "images": [...]}``)."""
    document = json.loads(stdout)
    assert list(document) == ["run", "images"]
    return document["images"]


def jsonl_images(text: str) -> list[dict[str, Any]]:
    """The per-image records of ``--format jsonl`` output: every line after the ``{"run": ...}`` header."""
    lines = [json.loads(line) for line in text.splitlines()]
    assert list(lines[0]) == ["run"], lines[0]
    assert all("run" not in line for line in lines[1:])
    return lines[1:]


# ------------------------------------------------------------------------------------------------- exact output
TABLE_640x480 = """\
{path} (640x480): 4 detections
  person     0.900  [149.9, 75.5, 194.7, 109.1]
  car        0.800  [340.2, 255.2, 482.6, 362.0]
  toilet     0.700  [250.7, 124.0, 549.3, 236.0]
  stop sign  0.600  [0.0, 0.0, 323.2, 242.4]
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_table_for_people(detect_world: World, backend: str) -> None:
    image = detect_world.images[(640, 480)]
    result = detect(detect_world, str(image), "--backend", backend)
    assert result.exit_code == 0, result.output
    assert result.stdout == TABLE_640x480.format(path=image)
    summary = result.stderr.strip().splitlines()[-1]
    engine = "openvino CPU FP32 IR, f32" if backend == "openvino" else "onnxruntime CPU, f32"
    assert summary.startswith("1 image, 4 detections in ") and summary.endswith(f"(planted, {engine})")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_formats_give_exact_pixels_for_every_shape(detect_world: World, backend: str, fmt: str) -> None:
    paths = [str(detect_world.images[size]) for size in SIZES]
    result = detect(detect_world, *paths, "--backend", backend, "--format", fmt)
    assert result.exit_code == 0, result.output
    records = json_images(result.stdout) if fmt == "json" else jsonl_images(result.stdout)
    assert records == [{"path": path, "width": w, "height": h, "detections": expected(w, h), "error": None}
                       for path, (w, h) in zip(paths, SIZES, strict=True)]
    if fmt == "jsonl":
        assert len(result.stdout.splitlines()) == 1 + len(SIZES)


def test_json_flag_is_format_json(detect_world: World) -> None:
    image = str(detect_world.images[(33, 1000)])
    result = detect(detect_world, image, "--json")
    assert json_images(result.stdout) == [{"path": image, "width": 33, "height": 1000,
                                           "detections": expected(33, 1000), "error": None}]
    first = expected(33, 1000)[0]
    run = json.loads(result.stdout)["run"]
    assert result.stdout.startswith(f'{{\n  "run": {json.dumps(run)},\n  "images": [\n    {{\n      "path": '
                                    f'{json.dumps(image)},\n      "width": 33,\n      "height": 1000,\n      '
                                    f'"detections": [\n        {json.dumps(first)},\n')
    clash = detect(detect_world, image, "--json", "--format", "coco")
    assert clash.exit_code == 2 and "--json and --format coco disagree" in clash.stderr


def test_boxes_are_scaled_per_axis_and_clipped(detect_world: World) -> None:
    """Hand-computed from the default-box formula, independent of the twin's helpers."""
    result = detect(detect_world, str(detect_world.images[(33, 1000)]), "--format", "json")
    boxes = [d["box"] for d in json_images(result.stdout)[0]["detections"]]
    # Level 0, anchor 0, row 2, column 3 of the 13x13 grid: centre ((3.5, 2.5) / 13), side 21/300 = 0.07.
    cx, cy, side = 3.5 / 13, 2.5 / 13, 0.07
    assert boxes[0] == pytest.approx([(cx - side / 2) * 33, (cy - side / 2) * 1000, (cx + side / 2) * 33,
                                      (cy + side / 2) * 1000], abs=0.006)
    # Level 3, anchor 0 starts at -0.005 of the image: clipped to 0 on both axes.
    assert boxes[3][:2] == [0.0, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_results_format(detect_world: World, backend: str, tmp_path: Path) -> None:
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    folder = tmp_path / "val2017"
    folder.mkdir()
    sizes = {139: (640, 480), 285: (480, 640)}
    for image_id, size in sizes.items():
        (folder / f"{image_id:012d}.png").write_bytes(detect_world.images[size].read_bytes())
    out = tmp_path / "detections.json"
    result = detect(detect_world, str(folder), "--backend", backend, "--format", "coco", "--threshold", "0.05",
                    "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    records = json.loads(out.read_text())
    assert {r["image_id"] for r in records} == {139, 285}
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in records)
    assert {r["category_id"] for r in records} == {1, 3, 70, 13}  # person, car, toilet (62 -> 70), stop sign
    assert set(r["category_id"] for r in records) <= set(COCO_CATEGORY_IDS)
    first = next(r for r in records if r["image_id"] == 139)
    assert first == {"image_id": 139, "category_id": 1, "bbox": [149.91, 75.51, 44.8, 33.6], "score": 0.9}

    # Ground truth = the planted boxes: a valid results file scores AP 1.0 on it.
    categories = [{"id": cid, "name": name} for cid, name in zip(COCO_CATEGORY_IDS, COCO_NAMES, strict=True)]
    annotations = []
    for image_id, (w, h) in sizes.items():
        for d in expected(w, h, threshold=0.05):
            x0, y0, x1, y1 = d["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                "category_id": COCO_CATEGORY_IDS[d["label_id"] - 1],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "width": w, "height": h} for i, (w, h) in sizes.items()],
                  "annotations": annotations, "categories": categories}
    gt.createIndex()
    evaluation = COCOeval(gt, gt.loadRes(str(out)), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_coco_image_ids_fall_back_to_the_input_index(detect_world: World) -> None:
    paths = [str(detect_world.images[(640, 480)]), str(detect_world.images[(480, 640)])]
    result = detect(detect_world, *paths, "--format", "coco")
    assert [r["image_id"] for r in json.loads(result.stdout)] == [0] * 4 + [1] * 4


# ------------------------------------------------------------------------------------------------- filters
@pytest.mark.parametrize(("options", "labels"), [
    (["--threshold", "0.65"], ["person", "car", "toilet"]),
    (["--threshold", "0"], ["person", "car", "toilet", "stop sign", "person"]),
    (["--classes", "car,12"], ["car", "stop sign"]),
    (["--classes", "Stop_Sign, person", "-t", "0.1"], ["person", "stop sign", "person"]),
    (["--max-detections", "2"], ["person", "car"]),
    (["--classes", "toilet,stop sign", "-n", "1"], ["toilet"]),
])
def test_threshold_classes_and_max_detections(detect_world: World, options: list[str], labels: list[str]) -> None:
    result = detect(detect_world, str(detect_world.images[(640, 480)]), "--format", "json", *options)
    assert result.exit_code == 0, result.output
    assert [d["label"] for d in json_images(result.stdout)[0]["detections"]] == labels


def test_unknown_class_suggests_a_name(detect_world: World) -> None:
    result = detect(detect_world, str(detect_world.images[(640, 480)]), "--classes", "prson,999")
    assert result.exit_code == 2
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: invalid class filter for planted: unknown class 'prson'; did you mean person")
    assert first.endswith("; class id 999 is out of range 1..80")


# ------------------------------------------------------------------------------------------------- bad input
def _bad_files(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    truncated = folder / "truncated.jpg"
    Image.open(good).convert("RGB").save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    (folder / "notes.jpg").write_text("not a picture")
    (folder / "empty.png").write_bytes(b"")
    return {"truncated": truncated, "text": folder / "notes.jpg", "empty": folder / "empty.png",
            "missing": folder / "missing.png"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_do_not_stop_the_others(detect_world: World, tmp_path: Path, backend: str) -> None:
    good = detect_world.images[(640, 480)]
    bad = _bad_files(tmp_path, good)
    order = [good, bad["truncated"], bad["text"], detect_world.images[(33, 1000)], bad["empty"], bad["missing"]]
    result = detect(detect_world, *map(str, order), "--backend", backend, "--format", "jsonl")
    assert result.exit_code == 30
    records = jsonl_images(result.stdout)
    assert [r["path"] for r in records] == [str(p) for p in order]
    assert [r["error"] is None for r in records] == [True, False, False, True, False, False]
    assert records[0]["detections"] == expected(640, 480) and records[3]["detections"] == expected(33, 1000)
    assert records[2] == {"path": str(bad["text"]), "width": None, "height": None, "detections": [],
                          "error": f"{bad['text']}: not an image Pillow can read (13 bytes of text); expected "
                                   "JPEG, PNG, BMP, GIF, TIFF, WebP or another format Pillow supports"}
    assert records[1]["error"].startswith(f"{bad['truncated']}: truncated or corrupt image data: ")
    assert records[4]["error"] == f"{bad['empty']}: empty file (0 bytes), expected an image"
    assert records[5]["error"] == f"{bad['missing']}: no such file"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors[:4] == [f"error: {records[i]['error']}" for i in (1, 2, 4, 5)]
    assert errors[4] == (f"error: 4 of 6 images could not be processed: {bad['truncated']}, {bad['text']}, "
                         f"{bad['empty']}, {bad['missing']}")
    assert "hint: the other results were written; see the messages above for each file" in result.stderr
    assert "2 failed" not in result.stderr and "4 failed" in result.stderr


def test_progress_is_json_lines_off_a_terminal_and_follows_the_option(detect_world: World) -> None:
    images = [str(detect_world.images[size]) for size in ((640, 480), (480, 640), (33, 1000))]
    default = detect(detect_world, *images)  # CliRunner's stderr is not a terminal: auto means JSON lines
    assert default.exit_code == 0, default.output
    events = [json.loads(line) for line in default.stderr.splitlines() if line.startswith("{")]
    assert events == [{"event": "progress", "phase": "detect", "done": done, "total": 3} for done in (1, 2, 3)]
    for mode in ("none", "log"):
        quiet = detect(detect_world, *images, "--progress", mode)
        assert quiet.exit_code == 0 and not [line for line in quiet.stderr.splitlines() if line.startswith("{")]
    one = detect(detect_world, images[0])  # one image is not a long step
    assert not [line for line in one.stderr.splitlines() if line.startswith("{")]


def test_bad_inputs_in_table_and_json(detect_world: World, tmp_path: Path) -> None:
    good = detect_world.images[(480, 640)]
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    table = detect(detect_world, str(text), str(good))
    assert table.exit_code == 30
    assert table.stdout.startswith(f"{good} (480x640): 4 detections\n")  # stdout is data: no error lines
    assert table.stderr.startswith(f"error: {text}: not an image")  # and nothing else before it
    as_json = detect(detect_world, str(text), str(good), "--format", "json")
    assert as_json.exit_code == 30
    records = json_images(as_json.stdout)  # one valid document: the final error is not appended as JSON
    assert [r["error"] is None for r in records] == [False, True]


def test_oversized_image_is_rejected_before_decoding(detect_world: World, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(big)
    result = detect(detect_world, str(big), str(detect_world.images[(640, 480)]), "--max-pixels", "100000",
                    "--format", "jsonl")
    assert result.exit_code == 30
    first = jsonl_images(result.stdout)[0]
    assert first["error"] == f"{big}: 400x300 = 120,000 pixels is over the limit of 100,000 (a guard against " \
                             "decompression bombs)"
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the command restores Pillow's global limit


def test_exif_rotation_reports_the_upright_frame(detect_world: World, tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 640x480, shown rotated 90 degrees clockwise: 480x640
    Image.open(detect_world.images[(640, 480)]).convert("RGB").save(path, exif=exif.tobytes())
    record = json_images(detect(detect_world, str(path), "--format", "json").stdout)[0]
    assert (record["width"], record["height"]) == (480, 640)
    assert record["detections"] == expected(480, 640)


# ------------------------------------------------------------------------------------------------- sources
def test_folders_recursion_and_globs(detect_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a.png", "sub/b.png", "sub/deeper/c.png"):
        target = tmp_path / "photos" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(detect_world.images[(640, 480)].read_bytes())
    monkeypatch.chdir(tmp_path)

    def paths(*args: str) -> list[str]:
        result = detect(detect_world, *args, "--format", "jsonl")
        assert result.exit_code == 0, result.output
        return [record["path"] for record in jsonl_images(result.stdout)]

    assert paths("photos") == ["photos/a.png"]
    assert paths("photos", "-r") == ["photos/a.png", "photos/sub/b.png", "photos/sub/deeper/c.png"]
    assert paths("photos/*/*.png") == ["photos/sub/b.png"]
    assert paths("photos/**/*.png", "--recursive") == ["photos/a.png", "photos/sub/b.png",
                                                       "photos/sub/deeper/c.png"]
    assert paths("photos/sub/b.png", "photos/*/b.png") == ["photos/sub/b.png"]  # once, even if named twice


def test_no_images_found_is_a_usage_error(detect_world: World, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = detect(detect_world, str(tmp_path / "empty"), str(tmp_path / "*.jpg"))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"warning: no image files in folder {tmp_path / 'empty'} (use --recursive to search its subfolders)",
        f"warning: no image files match {tmp_path / '*.jpg'}",
        f"error: no images found in {tmp_path / 'empty'}, {tmp_path / '*.jpg'}",
        "hint: pass image files, folders (with --recursive for subfolders) or patterns like 'photos/*.jpg'",
    ]
    assert result.stdout == ""


def test_run_is_an_alias(detect_world: World) -> None:
    image = detect_world.images[(640, 480)]
    result = CliRunner().invoke(cli, detect_world.args("run", str(image)))
    assert result.exit_code == 0 and result.stdout == TABLE_640x480.format(path=image)
    assert "another name for 'ssdtool detect'" in CliRunner().invoke(cli, ["run", "--help"]).stdout


# ------------------------------------------------------------------------------------------------- outputs
def test_output_file_is_written_whole(detect_world: World, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    result = detect(detect_world, str(detect_world.images[(640, 480)]), str(text), "--format", "jsonl", "-o",
                    str(out))
    assert result.exit_code == 30 and result.stdout == ""
    assert [r["error"] is None for r in jsonl_images(out.read_text())] == [True, False]
    assert f"results in {out}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.jpg", "results.jsonl"]
    # A run that fails before any result leaves the old file alone and no temporary behind.
    failed = detect(detect_world, str(text), "--model", "nonexistent", "-o", str(out))
    assert failed.exit_code == 4
    assert [r["error"] is None for r in jsonl_images(out.read_text())] == [True, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.jpg", "results.jsonl"]
    missing_folder = detect(detect_world, str(text), "-o", str(tmp_path / "no" / "such.json"))
    assert missing_folder.exit_code == 2 and "folder" in missing_folder.stderr


def test_annotated_copies(detect_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    for name, size in (("a.png", (640, 480)), ("sub/a.png", (33, 1000)), ("b.gif", (480, 640)),
                       ("../other/a.png", (33, 1000))):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(detect_world.images[size]).save(photos / name)
    monkeypatch.chdir(tmp_path)
    result = detect(detect_world, "photos", "other/a.png", "-r", "--save-dir", "photos/annotated")
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(photos / "annotated").as_posix() for p in (photos / "annotated").rglob("*")
                     if p.is_file())
    assert written == ["a-1.png", "a.png", "b.png", "sub/a.png"]  # other/a.png -> a-1.png: no overwrite
    with Image.open(photos / "annotated" / "a-1.png") as drawn:
        assert drawn.size == (33, 1000)
    for name, size in (("a.png", (640, 480)), ("sub/a.png", (33, 1000)), ("b.png", (480, 640))):
        with Image.open(photos / "annotated" / name) as drawn:
            drawn.load()
            assert drawn.size == size and drawn.format == "PNG"
            with Image.open(photos / name.replace("b.png", "b.gif")) as original:
                assert np.asarray(drawn.convert("RGB")).tolist() != np.asarray(original.convert("RGB")).tolist()
    # Running again does not read the annotated copies back as inputs.
    again = detect(detect_world, "photos", "-r", "--save-dir", "photos/annotated", "--format", "jsonl")
    assert len(jsonl_images(again.stdout)) == 3


def test_annotation_never_overwrites_the_input(detect_world: World, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(detect_world.images[(640, 480)].read_bytes())
    before = image.read_bytes()
    result = detect(detect_world, str(image), "--save-dir", str(tmp_path))
    assert result.exit_code == 0
    assert image.read_bytes() == before and (tmp_path / "a-annotated.png").is_file()


# ------------------------------------------------------------------------------------------------- setup errors
def test_offline_without_the_model(detect_world: World, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yml"
    registry.write_text(detect_world.registry.read_text())
    image = str(detect_world.images[(640, 480)])
    for extra, env in ((["--offline"], None), ([], {"SSDTOOL_OFFLINE": "1"})):
        for backend in BACKENDS:
            result = CliRunner().invoke(cli, ["--registry", str(registry), "--cache-dir", str(tmp_path / "empty"),
                                              "detect", image, "--backend", backend, *extra], env=env)
            assert result.exit_code == 12, result.output
            error = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
            assert "offline" in error.lower() and "planted" in error
            assert "hint: run 'ssdtool download planted' on a machine with network access" in result.stderr
            assert result.stdout == ""


def test_offline_json_error_reaches_scripts(detect_world: World, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--registry", str(detect_world.registry), "--cache-dir", str(tmp_path),
                                      "detect", str(detect_world.images[(640, 480)]), "--offline", "--format",
                                      "json"])
    assert result.exit_code == 12
    assert json.loads(result.stdout)["error"] == "OfflineError"


@pytest.mark.parametrize(("options", "code", "message"), [
    (["--backend", "tensorflow"], 31, "error: unknown backend 'tensorflow'; expected one of auto, openvino, "
                                      "onnxruntime"),
    (["--backend", "openvino", "--device", "NPU"], 31, "error: OpenVINO device 'NPU' is not available; found: CPU"),
    (["--backend", "onnxruntime", "--device", "GPU"], 31, "error: onnxruntime has no execution provider 'GPU'; "
                                                          "expected one of CPU, CUDA[:N], TensorRT[:N]"),
    (["--backend", "onnxruntime", "--precision", "FP16"], 2, "error: precision selects an OpenVINO IR; onnxruntime "
                                                             "runs the source ONNX as it is"),
    (["--format", "coco", "--model", "nonexistent"], 4, "error: unknown model 'nonexistent'"),
])
def test_setup_errors(detect_world: World, options: list[str], code: int, message: str) -> None:
    result = detect(detect_world, str(detect_world.images[(640, 480)]), *options)
    assert result.exit_code == code
    assert result.stderr.splitlines()[0].startswith(message)
    assert "hint: " in result.stderr


def test_auto_backend(detect_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from ssdtool.detect import Detector
    from ssdtool.errors import DependencyError

    assert Detector("planted", registry=detect_world.registry, cache_dir=detect_world.cache).backend == "openvino"
    hide_openvino(monkeypatch)
    detector = Detector("planted", registry=detect_world.registry, cache_dir=detect_world.cache)
    assert detector.backend == "onnxruntime" and detector.model_path.suffix == ".onnx"
    with pytest.raises(DependencyError):
        Detector("planted", "openvino", registry=detect_world.registry, cache_dir=detect_world.cache)


def test_compiled_model_cache_is_filled(detect_world: World, tmp_path: Path) -> None:
    from ssdtool.detect import Detector

    detector = Detector("planted", "openvino", registry=detect_world.registry, cache_dir=detect_world.cache)
    detector(np.zeros((8, 8, 3), np.uint8))
    blobs = list(detector.compiled_cache_dir.glob("*.blob"))
    assert detector.compiled_cache_dir == detect_world.cache / "planted" / ".ssdtool" / "ov-cache"
    assert blobs, "OpenVINO wrote no compiled blob"


def test_progress_bar_only_on_a_terminal(detect_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [str(detect_world.images[size]) for size in SIZES[:2]]
    plain = detect(detect_world, *paths)
    assert "img/s" not in plain.stderr and "\r" not in plain.stderr

    import ssdtool.commands.progress as progress

    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    result = detect(detect_world, *paths)
    assert result.exit_code == 0
    assert "| 0/2 [" in result.stderr and "img/s]" in result.stderr
    assert detect(detect_world, paths[0]).stderr.count("img/s") == 0  # one image: no bar
    quiet = CliRunner().invoke(cli, ["-q", *detect_world.args("detect", *paths)])
    assert quiet.exit_code == 0 and quiet.stderr == ""  # -q: no bar, no summary


# ------------------------------------------------------------------------------------------------- agreement
def _as_raw(detections: Sequence[Any], width: int, height: int) -> RawDetections:
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4) / scale
    return RawDetections(boxes.astype(np.float32), np.array([d.label_id for d in detections], np.int64),
                         np.array([d.score for d in detections], np.float32))


def assert_engines_agree(model: str, world: World, images: list[np.ndarray], threshold: float) -> int:
    """Both engines find each other's detections (order-independent): same label, IoU >= 0.5, values within
    AGREEMENT_TOLERANCE. Each side is compared with the other's results at a slightly lower threshold, so a
    score that sits on the threshold in one engine and just under it in the other is not a false failure."""
    from ssdtool.detect import Detector

    def run(backend: str) -> list[list[Any]]:
        with Detector(model, backend, registry=world.registry, cache_dir=world.cache, inference_precision="f32",
                      threshold=threshold - 1e-3) as detector:
            return [list(r.detections) for r in detector.many(images)]

    def above(detections: list[list[Any]]) -> list[list[Any]]:
        return [[d for d in image if d.score >= threshold] for image in detections]

    total = 0
    ov_low, ort_low = run("openvino"), run("onnxruntime")
    for image, a, a_low, b, b_low in zip(images, above(ov_low), ov_low, above(ort_low), ort_low, strict=True):
        height, width = image.shape[:2]
        for reference, candidate in ((a, b_low), (b, a_low)):
            report = match_detections(_as_raw(reference, width, height), _as_raw(candidate, width, height))
            assert report.matched == report.reference_count, report.to_dict()
            assert report.max_box_diff <= AGREEMENT_TOLERANCE and report.max_score_diff <= AGREEMENT_TOLERANCE
        total += len(a)
    return total


def test_engines_agree_on_the_tiny_twin(detect_world: World) -> None:
    images = [*generated_images(3, seed=11, size=(640, 480)), generated_images(1, seed=12, size=(300, 500))[0]]
    assert assert_engines_agree("tiny", detect_world, images, threshold=0.3) > 30


@pytest.mark.slow
def test_engines_agree_on_the_full_twin(tmp_path_factory: pytest.TempPathFactory) -> None:
    from ssdtool.synthetic import build_to_path

    root = tmp_path_factory.getbasetemp() / "detect-full"
    registry, cache = root / "registry.yml", root / "cache"
    if not registry.exists():
        root.mkdir(parents=True, exist_ok=True)
        source = root / "full.onnx"
        build_to_path("synthetic:ssd-resnet34?seed=0", source)
        entry = tiny_entry_template()
        entry["input"]["shape"], entry["input"]["resize"] = [1, 3, 1200, 1200], [1200, 1200]
        install_model(cache, registry, "full", source.read_bytes(), entry=entry)
        source.unlink()
        from ssdtool.convert import ConvertOptions, convert

        # Skip the parity gate (six more full-size inferences): this test makes the same comparison itself.
        convert(load_registry(registry).model("full"), Cache.at(cache), ConvertOptions(verify=False))
    world = World(root, registry, cache, {})
    images = generated_images(1, seed=5, size=(800, 600))
    assert assert_engines_agree("full", world, images, threshold=0.2) > 0


def test_many_keeps_input_order_under_concurrency(detect_world: World) -> None:
    from ssdtool.detect import Detector

    images: list[Any] = [generated_images(1, seed=s, size=(64 + s, 48))[0] for s in range(9)]
    images[4] = np.zeros((0, 5, 3), np.uint8)
    with Detector("tiny", "openvino", registry=detect_world.registry, cache_dir=detect_world.cache,
                  workers=3, performance="throughput") as detector:
        results = list(detector.many(iter(images)))
        single = [detector(image) if i != 4 else None for i, image in enumerate(images)]
    assert [r.index for r in results] == list(range(9))
    assert [r.width for r in results] == [64 + s if s != 4 else None for s in range(9)]
    assert results[4].error == "the array: the image has no pixels (5x0)"
    for result, alone in zip(results, single, strict=True):
        if alone is not None:
            assert [d.label_id for d in result.detections] == [d.label_id for d in alone]
            assert np.allclose([d.box for d in result.detections], [d.box for d in alone], atol=1e-3)


# ------------------------------------------------------------------------------------------------- hardening
# (issue 11) --output never replaces a device, FIFO or input; odd paths and label files; memory of big decodes


def _char_device(path: Path, minor: int) -> Path:
    """A character device node like /dev/null (minor 3) or /dev/full (minor 7), made in a temporary folder so
    that a regression replaces the test's node, never the machine's."""
    import os
    import stat

    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except OSError:
        pytest.skip("making a device node needs root")
    return path


def test_output_to_a_device_writes_to_it_and_never_replaces_it(detect_world: World, tmp_path: Path) -> None:
    import stat

    image = str(detect_world.images[(640, 480)])
    null = _char_device(tmp_path / "null", 3)
    result = detect(detect_world, image, "--format", "json", "-o", str(null))
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(null.lstat().st_mode)
    full = _char_device(tmp_path / "full", 7)
    result = detect(detect_world, image, "--format", "json", "-o", str(full))
    assert result.exit_code == 2
    assert f"error: cannot write --output {full}: No space left on device" in result.stderr
    assert stat.S_ISCHR(full.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "null"]  # no temporary file left either


def test_output_to_a_fifo_streams_into_it(detect_world: World, tmp_path: Path) -> None:
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    result = detect(detect_world, str(detect_world.images[(640, 480)]), "--format", "jsonl", "-o", str(fifo))
    reader.join(30)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert [r["detections"] for r in jsonl_images(received[0])] == [expected(640, 480)]


def test_output_never_overwrites_an_input(detect_world: World, tmp_path: Path) -> None:
    import os
    import shutil

    image = tmp_path / "in.png"
    shutil.copy(detect_world.images[(640, 480)], image)
    original = image.read_bytes()
    os.symlink(image, tmp_path / "link.png")
    for output, where in ((image, ""), (tmp_path / "link.png", f" ({image}, under another name)")):
        result = detect(detect_world, "--format", "json", "-o", str(output), "--", str(image))
        assert result.exit_code == 2, result.output
        assert result.stderr == (f"error: refusing --output {output}: it is an input image{where}, and an output "
                                 "never replaces an input\nhint: choose another --output FILE\n")
    assert image.read_bytes() == original
    folder = detect(detect_world, "--format", "json", "-o", str(tmp_path), str(image))
    assert folder.exit_code == 2 and "is a directory" in folder.stderr  # click's own check of -o


def test_a_path_over_the_name_limit_is_one_failed_image(detect_world: World, tmp_path: Path) -> None:
    long_path = tmp_path / ("y" * 300) / "a.jpg"
    result = detect(detect_world, "--backend", "onnxruntime", "--format", "jsonl", str(long_path),
                    str(detect_world.images[(640, 480)]))
    assert result.exit_code == 30, result.output
    first, second = jsonl_images(result.stdout)
    assert first["error"] == f"{long_path}: cannot access: File name too long" and second["error"] is None


def test_newlines_in_file_names_do_not_break_the_table(detect_world: World, tmp_path: Path) -> None:
    import shutil

    weird = tmp_path / "evil\nfake.jpg (1x1): 1 detection\n  person  1.000  [0.0, 0.0, 1.0, 1.0].png"
    shutil.copy(detect_world.images[(640, 480)], weird)
    result = detect(detect_world, "--backend", "onnxruntime", str(weird))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 5 and lines[0].startswith(str(tmp_path) + "/evil\\nfake.jpg (1x1): 1 detection\\n  person")
    assert lines[0].endswith(".png (640x480): 4 detections")


def test_a_short_label_file_stops_detection_with_exit_3(detect_world: World, tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(detect_world.registry.read_text())
    data["models"]["planted"]["labels"] = "short.txt"
    (tmp_path / "short.txt").write_text("__background__\nperson\ncar\n")
    registry = tmp_path / "registry.yml"
    registry.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["--registry", str(registry), "--cache-dir", str(detect_world.cache), "detect",
                                      "--backend", "onnxruntime", str(detect_world.images[(640, 480)])])
    assert result.exit_code == 3, result.output
    assert "the label file short.txt has 3 names (label ids 0..2), but the model predicted label id 3, 12, 62" in \
        result.stderr


def test_large_decodes_wait_for_each_other(detect_world: World, tmp_path: Path) -> None:
    from ssdtool.detect import Detector

    paths = []
    for index in range(4):
        path = tmp_path / f"big{index}.png"
        Image.new("1", (2000, 1500)).save(path)
        paths.append(path)
    with Detector("planted", "onnxruntime", registry=detect_world.registry, cache_dir=detect_world.cache,
                  workers=4, decode_memory=1) as detector:
        results = list(detector.many(paths))
        assert detector._prepare.budget.peak_holders == 1
    assert [(r.width, r.height, len(r.detections)) for r in results] == [(2000, 1500, 4)] * 4


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from Linux /proc")
def test_eight_tiny_pixel_bombs_take_the_memory_of_one(detect_world: World, tmp_path: Path) -> None:
    """8 PNGs of 9000x9000 1-bit pixels (10 KB each): 1.9 GB peak before; decoded one by one and lean now."""
    import os
    import subprocess
    import sys

    Image.new("1", (9000, 9000)).save(tmp_path / "bomb0.png")
    for index in range(1, 8):
        (tmp_path / f"bomb{index}.png").write_bytes((tmp_path / "bomb0.png").read_bytes())
    # VmHWM is the child's own peak; ru_maxrss would start from the size of this (large) pytest process.
    code = ("import sys\nfrom ssdtool.detect import Detector\n"
            "with Detector('planted', 'onnxruntime', registry=sys.argv[1], cache_dir=sys.argv[2], workers=4) as d:\n"
            "    assert all(r.ok for r in d.many(sys.argv[3:]))\n"
            "peak = [line for line in open('/proc/self/status') if line.startswith('VmHWM')]\n"
            "print(int(peak[0].split()[1]) // 1024)\n")
    run = subprocess.run([sys.executable, "-c", code, str(detect_world.registry), str(detect_world.cache),
                          *map(str, sorted(tmp_path.glob("bomb*.png")))], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert run.returncode == 0, run.stderr
    # Measured: 1.9 GB before (with 2 decode threads; more threads, more), 330 MB after (any number of threads).
    assert int(run.stdout) < 600, f"peak RSS {run.stdout.strip()} MB"


@pytest.fixture
def read_only_copy(tmp_path: Path, tiny_twin_path: Path) -> Any:
    """A prefetched cache (model and IR, nothing else) bind-mounted read-only; skipped where mounting is not allowed."""
    import shutil
    import subprocess

    from ssdtool.convert import ConvertOptions, convert

    registry, source = tmp_path / "registry.yml", tmp_path / "prefetched"
    install_model(source, registry, "tiny", tiny_twin_path.read_bytes())
    convert(load_registry(registry).model("tiny"), Cache.at(source), ConvertOptions(verify=False))
    shutil.rmtree(source / "tiny" / ".ssdtool")
    mount = tmp_path / "ro"
    mount.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(source), str(mount)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("a read-only bind mount needs root and the mount command")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True, capture_output=True)
        yield registry, mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_read_only_prefetched_cache_runs_the_main_job(read_only_copy: tuple[Path, Path], tmp_path: Path) -> None:
    registry, mount = read_only_copy
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(image)
    base = ["--registry", str(registry), "--cache-dir", str(mount)]
    for args in (["detect", "--backend", "openvino", "--offline", str(image)],
                 ["detect", "--backend", "onnxruntime", "--offline", str(image)],
                 ["convert", "tiny", "--no-verify", "--offline"],
                 ["bench", "tiny", "-n", "1", "--offline"],
                 ["verify", "tiny"]):
        result = CliRunner().invoke(cli, [*base, *args])
        assert result.exit_code == 0, (args, result.output)
    assert not (mount / "tiny" / ".ssdtool").exists()  # nothing could be written, and nothing needed to be


# ------------------------------------------------------------------------------------------------ library writers
@pytest.mark.parametrize("fmt", ["table", "json", "jsonl", "coco"])
def test_the_library_writes_what_the_cli_writes(detect_world: World, tmp_path: Path, fmt: str) -> None:
    """ssdtool.outputs is what detect writes with: for every format, the results file and every drawn copy are the
    same bytes from Python as from the command (a broken image included: its record, or its absence in table and
    COCO output), and the summary counts match the command's line."""
    from ssdtool.detect import Detector
    from ssdtool.inputs import find_images
    from ssdtool.outputs import RunSummary, plan_copies, write_detections

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    sources = [str(detect_world.images[(640, 480)]), str(broken), str(detect_world.images[(33, 1000)])]
    cli_result = detect(detect_world, *sources, "--format", fmt, "-o", str(tmp_path / "cli.out"), "--save-dir",
                        str(tmp_path / "cli-copies"), "--progress", "none")
    assert cli_result.exit_code == 30, cli_result.output

    files, _ = find_images(sources)
    copies = plan_copies(tmp_path / "library-copies", files, sources)
    with Detector("planted", "auto", inference_precision="f32", registry=detect_world.registry,
                  cache_dir=detect_world.cache, performance="throughput") as detector, \
            open(tmp_path / "library.out", "w", encoding="utf-8") as out:
        seen: list[int] = []
        summary = write_detections(detector, [f.path for f in files], fmt, out, copies=copies,
                                   on_result=lambda result: seen.append(result.index))

    assert (tmp_path / "library.out").read_bytes() == (tmp_path / "cli.out").read_bytes()
    drawn = sorted(p.name for p in (tmp_path / "cli-copies").iterdir())
    assert drawn == sorted(p.name for p in (tmp_path / "library-copies").iterdir()) == ["33x1000.png", "640x480.png"]
    for name in drawn:
        assert (tmp_path / "library-copies" / name).read_bytes() == (tmp_path / "cli-copies" / name).read_bytes()
    assert seen == [0, 1, 2]
    assert isinstance(summary, RunSummary) and summary.failed == (str(broken),)
    expected_count = len(expected(640, 480)) + len(expected(33, 1000))
    assert (summary.images, summary.detections) == (3, expected_count)
    line = summary.describe(tmp_path / "cli.out")
    assert line.startswith(f"3 images, {expected_count} detections, 1 failed in ")
    assert line.endswith(f" (planted, openvino CPU FP32 IR, f32); results in {tmp_path / 'cli.out'}")
    assert any(printed.startswith(f"3 images, {expected_count} detections, 1 failed in ")
               and printed.endswith(line[line.index(" ("):]) for printed in cli_result.stderr.splitlines())


def test_library_writers_refuse_what_the_command_refuses(detect_world: World, tmp_path: Path) -> None:
    import dataclasses
    import io

    from ssdtool.constants import OutputFormat
    from ssdtool.errors import UsageError
    from ssdtool.outputs import WRITERS, check_format, make_writer

    assert set(WRITERS) == set(OutputFormat)
    with pytest.raises(UsageError) as unknown:
        make_writer("xml", io.StringIO())
    assert unknown.value.message == "unknown output format 'xml'; expected one of table, json, jsonl, coco"
    planted = load_registry(detect_world.registry).model("planted")
    assert check_format("COCO", planted) == OutputFormat.COCO
    (tmp_path / "two.txt").write_text("__background__\ncat\n")
    two_classes = dataclasses.replace(planted, labels="two.txt", registry_dir=tmp_path)
    with pytest.raises(UsageError) as not_coco:
        check_format("coco", two_classes)
    assert not_coco.value.message == "planted does not predict the 80 COCO classes, so it has no COCO category ids"
    assert not_coco.value.hint == "use --format json"
