"""Every output of every command goes through one guard (:func:`ssdtool.fsutil.check_outputs`): never over an input
or another output, never over a file that is not ssdtool's results file, all checked before the first image runs;
and ``eval --resume`` from a broken state is refused before any image runs, never scored.

Each case checks its exit code, its whole message, and the files on disk byte for byte afterwards.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ssdtool.errors import UsageError
from ssdtool.evaluation.runner import EvalProgress
from ssdtool.fsutil import InputPath, OutputFile, OutputPath, check_outputs
from tests import test_detect, test_eval
from tests.test_detect import World, detect
from tests.test_eval import Dataset, api, exact, run_eval

eval_world = test_eval.eval_world
dataset = test_eval.dataset
detect_world = test_detect.detect_world


def snapshot(*folders: Path) -> dict[str, bytes | str]:
    """Every file below ``folders``: its bytes, or where it links to."""
    found: dict[str, bytes | str] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                found[str(path)] = f"-> {os.readlink(path)}"
            elif path.is_file():
                found[str(path)] = path.read_bytes()
    return found


def refused(result: Any, message: str, hint: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {message}\nhint: {hint}\n"


def model_run(data: Dataset, *args: str) -> Any:
    return run_eval(data.world, "planted", "--annotations", str(data.folder / "annotations.json"), "--images",
                    str(data.images), *args)


@pytest.fixture()
def world(dataset: Dataset) -> Dataset:
    """The dataset with its annotation file written and nothing else around it."""
    dataset.write(dataset.annotate(exact))
    return dataset


# ------------------------------------------------------------------------------------------------ eval outputs
def test_results_onto_the_annotation_file(world: Dataset) -> None:
    before = snapshot(world.folder)
    annotations = world.folder / "annotations.json"
    refused(model_run(world, "--results", str(annotations)),
            f"refusing --results {annotations}: it is the annotation file (--annotations), and an output never "
            "replaces an input", "choose another --results FILE")
    assert snapshot(world.folder) == before


def test_save_detections_onto_an_image(world: Dataset) -> None:
    before = snapshot(world.folder)
    image = world.images / "000000000002.png"
    refused(model_run(world, "--save-detections", str(image)),
            f"refusing --save-detections {image}: it is an image the annotation file lists, and an output never "
            "replaces an input", "choose another --save-detections FILE")
    assert snapshot(world.folder) == before


def test_an_input_reached_through_a_link_or_a_hard_link_is_still_an_input(world: Dataset) -> None:
    annotations = world.folder / "annotations.json"
    (world.folder / "link.json").symlink_to(annotations)
    os.link(annotations, world.folder / "hard.json")
    (world.folder / "imgs").symlink_to(world.images)
    before = snapshot(world.folder)
    for name, what in (("link.json", "the annotation file (--annotations)"),
                       ("hard.json", "the annotation file (--annotations)"),
                       ("imgs/000000000001.png", "an image the annotation file lists")):
        output = world.folder / name
        source = annotations if name.endswith(".json") else world.images / "000000000001.png"
        refused(model_run(world, "--save-detections", str(output)),
                f"refusing --save-detections {output}: it is {what} ({source}, under another name), and an output "
                "never replaces an input", "choose another --save-detections FILE")
    assert snapshot(world.folder) == before


def test_results_never_replaces_a_file_that_is_not_a_results_file(world: Dataset) -> None:
    notes = world.folder / "notes.txt"
    notes.write_text("my notes\n")
    before = snapshot(world.folder)
    for extra in ((), ("--resume",)):
        refused(model_run(world, "--results", str(notes), *extra),
                f"refusing --results {notes}: it is not an ssdtool eval results file (its first line is not a "
                "results header), and --results never replaces another file",
                f"choose another --results FILE, or remove {notes} yourself if it may go")
    checkpoint = world.folder / "r.jsonl.checkpoint.json"
    checkpoint.write_text("not ours")
    before = snapshot(world.folder)
    refused(model_run(world, "--results", str(world.folder / "r.jsonl")),
            f"refusing the checkpoint {checkpoint} of --results {world.folder / 'r.jsonl'}: it is not the checkpoint "
            "of an ssdtool eval results file, and --results never replaces another file",
            f"choose another --results FILE, or remove {checkpoint} yourself if it may go")
    assert snapshot(world.folder) == before


def test_an_empty_file_or_an_earlier_results_file_may_be_replaced(world: Dataset) -> None:
    results = world.folder / "r.jsonl"
    results.touch()  # mktemp's file
    first = model_run(world, "--results", str(results), "--json")
    assert first.exit_code == 0, first.output
    assert results.read_bytes().startswith(b'{"format":"ssdtool-eval-results"')
    again = model_run(world, "--results", str(results), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["metrics"] == json.loads(first.stdout)["metrics"]


def test_two_outputs_on_one_file(world: Dataset) -> None:
    before = snapshot(world.folder)
    same = world.folder / "X"
    refused(model_run(world, "--results", str(same), "--save-detections", str(same)),
            f"refusing --save-detections {same}: --results {same} writes to the same file, and one output never "
            "replaces another", "give --results and --save-detections different files")
    checkpoint = world.folder / "r.jsonl.checkpoint.json"
    refused(model_run(world, "--results", str(world.folder / "r.jsonl"), "--save-detections",
                      str(world.folder / "." / "r.jsonl.checkpoint.json")),
            f"refusing --save-detections {world.folder / 'r.jsonl.checkpoint.json'}: the checkpoint {checkpoint} of "
            f"--results {world.folder / 'r.jsonl'} writes to the same file, and one output never replaces another",
            "give --results and --save-detections different files")
    assert snapshot(world.folder) == before  # nothing ran, nothing was written


def test_compare_names_each_saved_file_and_checks_every_one(world: Dataset) -> None:
    results = world.folder / "d.onnxruntime.json"
    refused(model_run(world, "--compare", "FP32:f32,onnxruntime", "--save-detections", str(world.folder / "d.json"),
                      "--results", str(results)),
            f"refusing --save-detections {results}: --results {results} writes to the same file, and one output "
            "never replaces another", "give --results and --save-detections different files")
    assert not results.exists()


def test_results_must_be_a_regular_file(world: Dataset) -> None:
    fifo = world.folder / "pipe"
    os.mkfifo(fifo)
    refused(model_run(world, "--results", str(fifo)),
            f"refusing --results {fifo}: it is a FIFO (named pipe), and --results needs a regular file there",
            "choose another --results FILE")
    refused(model_run(world, "--save-detections", str(world.images)),
            f"cannot write --save-detections {world.images}: it is a folder", "--save-detections takes a file name")


def test_a_model_file_is_an_input(world: Dataset) -> None:
    model = next((world.world.cache / "planted").rglob("*.xml"))
    before = snapshot(world.world.cache / "planted", world.folder)
    for path in (model, model.with_suffix(".bin")):
        refused(model_run(world, "--save-detections", str(path)),
                f"refusing --save-detections {path}: it is a model file of planted, and an output never replaces an "
                "input", "choose another --save-detections FILE")
    refused(model_run(world, "--results", str(model)),  # refused before the model loads: it is not a results file
            f"refusing --results {model}: it is not an ssdtool eval results file (its first line is not a results "
            f"header), and --results never replaces another file",
            f"choose another --results FILE, or remove {model} yourself if it may go")
    assert snapshot(world.world.cache / "planted", world.folder) == before


def test_detections_and_mlperf_log_sources_are_inputs(world: Dataset) -> None:
    annotations = world.folder / "annotations.json"
    detections = world.write([], "detections.json")
    before = snapshot(world.folder)
    result = run_eval(world.world, "--annotations", str(annotations), "--detections", str(detections),
                      "--save-detections", str(detections))
    refused(result, f"refusing --save-detections {detections}: it is the detections file (--detections), and an "
                    "output never replaces an input", "choose another --save-detections FILE")
    result = run_eval(world.world, "--annotations", str(annotations), "--mlperf-log", str(detections),
                      "--save-detections", str(detections))
    refused(result, f"refusing --save-detections {detections}: it is the MLPerf accuracy log (--mlperf-log), and an "
                    "output never replaces an input", "choose another --save-detections FILE")
    assert snapshot(world.folder) == before


def test_outputs_are_checked_before_the_model_loads(world: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssdtool.detect

    def no_model(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(ssdtool.detect.Detector, "__init__", no_model)
    with pytest.raises(UsageError, match="it is the annotation file"):
        api(world, world.folder / "annotations.json", results=world.folder / "annotations.json")


# ------------------------------------------------------------------------------------------------ eval --resume
class Interrupted(Exception):
    pass


def _stop_after(images: int) -> Callable[[EvalProgress], None]:
    def progress(event: EvalProgress) -> None:
        if event.phase == "evaluate" and event.done == images:
            raise Interrupted
    return progress


@pytest.fixture()
def broken(world: Dataset) -> Dataset:
    """A run of five images interrupted after three: r.jsonl and its checkpoint (four lines, 3 images)."""
    with pytest.raises(Interrupted):
        api(world, world.folder / "annotations.json", results=world.folder / "r.jsonl", checkpoint_every=1,
            progress=_stop_after(3))
    return world


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _edit_checkpoint(folder: Path, **fields: Any) -> None:
    path = folder / "r.jsonl.checkpoint.json"
    state = json.loads(path.read_text())
    for name, value in fields.items():
        if value is ...:
            del state[name]
        else:
            state[name] = value
    path.write_text(json.dumps(state))


def _cut_short(folder: Path) -> None:
    """The NUL-padding case: the file lost the end of its last record after the checkpoint was written."""
    results = folder / "r.jsonl"
    results.write_bytes(results.read_bytes()[:-50])


def _pad_with_nul(folder: Path) -> None:
    """What ``truncate()`` used to leave: the end of the last record replaced by NUL bytes, size unchanged."""
    results = folder / "r.jsonl"
    data = results.read_bytes()
    results.write_bytes(data[:-50] + b"\0" * 50)


def _corrupt_line(folder: Path) -> None:
    results = folder / "r.jsonl"
    lines = _lines(results)
    lines[2] = b"x" * (len(lines[2]) - 1) + b"\n"
    results.write_bytes(b"".join(lines))


def _swap_lines(folder: Path) -> None:
    results = folder / "r.jsonl"
    lines = _lines(results)
    lines[1], lines[2] = lines[2], lines[1]
    results.write_bytes(b"".join(lines))


def _nan_score(folder: Path) -> None:
    results = folder / "r.jsonl"
    lines = _lines(results)
    record = json.loads(lines[1])
    record["detections"][0][0][1] = float("nan")  # json.dumps writes NaN, which is not JSON
    lines[1] = json.dumps(record).encode() + b"\n"
    results.write_bytes(b"".join(lines))
    size = sum(map(len, lines))
    _edit_checkpoint(folder, bytes=size)


def _linked(folder: Path) -> None:
    (folder / "r.jsonl").rename(folder / "elsewhere.jsonl")
    (folder / "r.jsonl").symlink_to("elsewhere.jsonl")


BROKEN = {
    "deleted": (lambda f: (f / "r.jsonl").unlink(),
                "the results file is gone, its checkpoint r.jsonl.checkpoint.json is still there"),
    "truncated": (lambda f: (f / "r.jsonl").write_bytes((f / "r.jsonl").read_bytes()[:1000]),
                  "it holds 1000 bytes, its checkpoint counts {bytes}: it was cut short or replaced after the "
                  "checkpoint"),
    "cut short (was padded with NUL)": (_cut_short, "it holds {short} bytes, its checkpoint counts {bytes}: it was "
                                                    "cut short or replaced after the checkpoint"),
    "padded with NUL": (_pad_with_nul, "line 4 is not a complete line within the {bytes} bytes the checkpoint "
                                       "counts"),
    "corrupted line": (_corrupt_line, "line 3 is not an image record: line 1, column 1: not JSON: Expecting value"),
    "lines swapped": (_swap_lines, "line 2 is image 2, expected image 1"),
    "NaN score": (_nan_score, "line 2 is not an image record: detections[0][0][1]: NaN is not a JSON number "
                              "(non-finite values are refused)"),
    "symlink": (_linked, "it is a symbolic link (to elsewhere.jsonl), not the regular file ssdtool wrote"),
    "bytes abc": (lambda f: _edit_checkpoint(f, bytes="abc"),
                  "its checkpoint r.jsonl.checkpoint.json does not hold up: 'bytes' is \"abc\", expected a positive "
                  "whole number"),
    "bytes -5": (lambda f: _edit_checkpoint(f, bytes=-5),
                 "its checkpoint r.jsonl.checkpoint.json does not hold up: 'bytes' is -5, expected a positive whole "
                 "number"),
    "seconds missing": (lambda f: _edit_checkpoint(f, seconds=...),
                        "its checkpoint r.jsonl.checkpoint.json does not hold up: 'seconds' is missing, expected a "
                        "list of 1 engine times in seconds"),
    "images 99": (lambda f: _edit_checkpoint(f, images=99),
                  "its checkpoint r.jsonl.checkpoint.json does not hold up: 'images' is 99, expected a whole number "
                  "from 0 to 5"),
    "images 2": (lambda f: _edit_checkpoint(f, images=2),
                 "its checkpoint counts 2 images in {bytes} bytes, but they take {two} bytes"),
    "checkpoint linked": (lambda f: ((f / "r.jsonl.checkpoint.json").rename(f / "saved.json"),
                                     (f / "r.jsonl.checkpoint.json").symlink_to("saved.json")),
                          "its checkpoint r.jsonl.checkpoint.json is a symbolic link (to saved.json), not the regular "
                          "file ssdtool wrote"),
    "checkpoint deleted": (lambda f: (f / "r.jsonl.checkpoint.json").unlink(),
                           "its checkpoint r.jsonl.checkpoint.json is missing, so how much of it is complete is "
                           "unknown"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_resume_from_a_broken_state_is_refused_before_any_image_runs(broken: Dataset, case: str) -> None:
    folder = broken.folder
    lines = _lines(folder / "r.jsonl")
    sizes = {"bytes": sum(map(len, lines)), "short": sum(map(len, lines)) - 50, "two": sum(map(len, lines[:3]))}
    assert json.loads((folder / "r.jsonl.checkpoint.json").read_text())["bytes"] == sizes["bytes"]
    breaking, reason = BROKEN[case]
    breaking(folder)
    before = snapshot(folder)
    results = folder / "r.jsonl"
    refused(model_run(broken, "--results", str(results), "--resume"),
            f"cannot resume from {results}: {reason.format(**sizes)}; the state it was left in is not scored",
            "drop --resume to start over (or restore both files from a backup)")
    assert snapshot(folder) == before  # nothing cut, padded or appended
    events: list[EvalProgress] = []
    with pytest.raises(UsageError):
        api(broken, folder / "annotations.json", results=results, resume=True, progress=events.append)
    assert events == []  # no image ran
    assert snapshot(folder) == before


def test_a_broken_state_starts_over_without_resume(broken: Dataset) -> None:
    _pad_with_nul(broken.folder)
    whole = model_run(broken, "--results", str(broken.folder / "fresh.jsonl"), "--json")
    again = model_run(broken, "--results", str(broken.folder / "r.jsonl"), "--json")
    assert whole.exit_code == again.exit_code == 0, whole.output + again.output
    assert json.loads(again.stdout)["metrics"] == json.loads(whole.stdout)["metrics"]
    assert b"\0" not in (broken.folder / "r.jsonl").read_bytes()


def test_resume_without_a_checkpoint_or_results_starts_from_the_first_image(world: Dataset) -> None:
    events: list[EvalProgress] = []
    report = api(world, world.folder / "annotations.json", results=world.folder / "new.jsonl", resume=True,
                 progress=events.append)
    assert report.images_evaluated == 5 and events[0] == EvalProgress("evaluate", 0, 5)


# ------------------------------------------------------------------------------------------------ detect outputs
def test_detect_output_onto_an_input_names_the_option(detect_world: World, tmp_path: Path) -> None:
    import shutil

    image = tmp_path / "in.png"
    shutil.copy(detect_world.images[(640, 480)], image)
    (tmp_path / "link.png").symlink_to(image)
    before = snapshot(tmp_path)
    for output, where in ((image, ""), (tmp_path / "link.png", f" ({image}, under another name)")):
        refused(detect(detect_world, "--format", "json", "-o", str(output), "--", str(image)),
                f"refusing --output {output}: it is an input image{where}, and an output never replaces an input",
                "choose another --output FILE")
    model = next((detect_world.cache / "planted").rglob("*.xml"))
    model_before = model.read_bytes()
    refused(detect(detect_world, "--format", "json", "-o", str(model), str(image)),
            f"refusing --output {model}: it is a model file of planted, and an output never replaces an input",
            "choose another --output FILE")
    assert model.read_bytes() == model_before
    assert snapshot(tmp_path) == before


def test_detect_save_dir_that_is_the_input_folder(detect_world: World, tmp_path: Path) -> None:
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(detect_world.images[(640, 480)], photos / "a.png")
    shutil.copy(detect_world.images[(480, 640)], photos / "b.png")
    before = snapshot(tmp_path)
    refused(detect(detect_world, str(photos), "--save-dir", str(photos)),
            f"nothing to detect: the 2 image files found in {photos} are inside --save-dir {photos}, and detect "
            "never reads the folder it draws its copies into",
            "choose a --save-dir outside the folders you detect in, e.g. --save-dir annotated/")
    assert snapshot(tmp_path) == before


def test_detect_copies_never_replace_any_input_or_the_output_file(detect_world: World, tmp_path: Path) -> None:
    import shutil

    (tmp_path / "one").mkdir()
    (tmp_path / "out").mkdir()
    shutil.copy(detect_world.images[(640, 480)], tmp_path / "one" / "a.png")
    shutil.copy(detect_world.images[(480, 640)], tmp_path / "out" / "a.png")  # another input, where copies go
    shutil.copy(detect_world.images[(480, 640)], tmp_path / "one" / "b.png")
    os.mkfifo(tmp_path / "out" / "b.png")  # a copy is renamed into place: it would replace the FIFO
    inputs = snapshot(tmp_path)
    result = detect(detect_world, str(tmp_path / "one" / "a.png"), str(tmp_path / "out" / "a.png"),
                    str(tmp_path / "one" / "b.png"), "--save-dir", str(tmp_path / "out"), "--format", "json", "-o",
                    str(tmp_path / "out" / "a-annotated.png"))
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in snapshot(tmp_path).items() if k in inputs} == inputs
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    # one/a.png -> out/a.png is an input: "-annotated", which is --output: "-annotated-1"; out/a.png -> "-2";
    # one/b.png -> out/b.png is a FIFO: "-annotated"
    assert written == ["a-annotated-1.png", "a-annotated-2.png", "a-annotated.png", "a.png", "b-annotated.png",
                       "b.png"]
    assert stat.S_ISFIFO((tmp_path / "out" / "b.png").lstat().st_mode)
    assert len(json.loads((tmp_path / "out" / "a-annotated.png").read_text())["images"]) == 3


# ------------------------------------------------------------------------------------------------ the guard itself
def test_the_guard_as_a_library_function(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("input")
    inputs = [InputPath(source, "the settings file (--user-conf)")]
    check_outputs([OutputPath(tmp_path / "a.json", "--output-dir"), OutputPath(Path("/dev/null"), "--log"),
                   OutputPath(Path("/dev/null"), "--other")], inputs)  # a device is written to, never replaced
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(UsageError) as caught:
        check_outputs([OutputPath(tmp_path / "link" / "in.txt", "--output-dir", what="the summary file")], inputs)
    assert caught.value.message == (f"refusing the summary file: it is the settings file (--user-conf) ({source}, "
                                    "under another name), and an output never replaces an input")
    with pytest.raises(UsageError) as caught:
        check_outputs([OutputPath(tmp_path / "x", "--a"), OutputPath(tmp_path / "." / "x", "--a")])
    assert caught.value.hint == "choose another --a FILE"
    with pytest.raises(UsageError, match=r"folder .*nope does not exist"):
        OutputFile(tmp_path / "nope" / "x.json", option="--save-detections")
    assert source.read_text() == "input"
