"""``auto`` believes a runtime-check record only when it holds up (issue 20, item 9).

Before: an IR whose record said ``"passed": "false"`` (a string: ``bool("false")`` is True), or recall 0.1 with
``passed: true``, ran at the CPU's bf16 default. Now the record's types, ranges, recall (``matched /
reference_detections``) and verdict are checked, and a record that does not hold up is treated as missing, with a
warning naming the reason and ``ssdtool convert NAME``. The CLI tests plant records in the tiny twin's real IR on a
CPU whose default is bf16 (Zen 4 here), where ``auto`` genuinely runs bf16 when the record passes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ssdtool import precision
from ssdtool.backends import openvino_rules
from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.convert import convert
from ssdtool.imaging import generated_images
from ssdtool.precision import DeviceFacts, RuntimeCheck
from ssdtool.provenance import read_provenance, rewrite_provenance
from ssdtool.registry import load_registry
from ssdtool.synthetic import TwinSpec, build_model
from tests.modelkit import install_model

FACTS = DeviceFacts(device="CPU", name="Test CPU 9000", default_precision="bf16")
GOOD = {"device": "CPU", "device_name": "Test CPU 9000", "precision": "bf16", "passed": True, "images": 3,
        "reference_detections": 446, "matched": 437, "recall": 0.979821, "min_recall": 0.9,
        "max_box_diff": 0.0021, "max_score_diff": 0.023, "openvino_version": "2026.4", "checked": "2026-12-06T00:00Z"}


def _with(**changes: Any) -> dict[str, Any]:
    record = {**GOOD, **changes}
    return {key: value for key, value in record.items() if value is not _DROP}


_DROP = object()

UNTRUSTWORTHY = [
    (_with(passed="false"), "passed is 'false', not true or false"),
    (_with(passed=1), "passed is 1, not true or false"),
    (_with(recall=0.1), "recall 0.1 is not matched / reference_detections (437/446)"),
    (_with(matched=44, recall=round(44 / 446, 6)), "it says passed: true, but recall 0.098655 is below its floor 0.9"),
    (_with(min_recall=0.05), "its floor 0.05 is below ssdtool's 0.9"),
    (_with(recall=float("nan")), "recall is nan, not a finite number in range"),
    (_with(max_score_diff=float("inf")), "max_score_diff is inf, not a finite number in range"),
    (_with(recall=1.5), "recall is 1.5, not a finite number in range"),
    (_with(matched=447), "images 3, reference_detections 446 and matched 447 are not counts"),
    (_with(images=0), "images 0, reference_detections 446 and matched 437 are not counts"),
    (_with(images=True), "images True, reference_detections 446 and matched 437 are not counts"),
    (_with(matched=437.0), "images 3, reference_detections 446 and matched 437.0 are not counts"),
    (_with(checked=5), "checked is 5, not a name"),
    (_with(recall=_DROP), "no recall"),
]


@pytest.mark.parametrize(("record", "reason"), UNTRUSTWORTHY, ids=[r for _, r in UNTRUSTWORTHY])
def test_a_record_that_does_not_hold_up_is_treated_as_missing(record: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match="^" + reason.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        RuntimeCheck.parse(record)
    provenance = {"runtime_checks": [record]}
    assert precision.recorded_checks(provenance) == []
    checks, unusable = precision.read_checks(provenance)
    chosen = openvino_rules.plan("auto", FACTS, checks, model="m", unusable=unusable)
    assert chosen.pin == "f32" and chosen.level == logging.WARNING and chosen.check is None
    assert chosen.reason == (
        f"CPU (Test CPU 9000) runs bf16 by default, and m's IR's record of its accuracy at bf16 on this device does "
        f"not hold up ({unusable[0].reason}); running f32. Run 'ssdtool convert m' here to check and record it "
        "again, or pass --inference-precision bf16 to run it unchecked")
    assert unusable[0].reason.startswith(reason)


def test_the_genuine_record_and_a_failed_one_keep_their_meaning() -> None:
    assert RuntimeCheck.parse(GOOD) == RuntimeCheck(**GOOD)
    assert openvino_rules.plan("auto", FACTS, [RuntimeCheck.parse(GOOD)]).pin is None
    failed = _with(passed=False, matched=44, recall=round(44 / 446, 6))
    assert RuntimeCheck.parse(failed).passed is False
    chosen = openvino_rules.plan("auto", FACTS, [RuntimeCheck.parse(failed)], model="m")
    assert chosen.pin == "f32" and chosen.reason.startswith("m's IR fails its accuracy check at bf16")
    for other in (_with(device_name="Other CPU", passed="yes"), _with(precision="f32")):
        # a bad record for another device or precision: this device simply has none
        nothing = precision.read_checks({"runtime_checks": [other]})
        chosen = openvino_rules.plan("auto", FACTS, nothing[0], model="m", unusable=nothing[1])
        assert chosen.level == logging.INFO and "has no record of its accuracy at bf16 on this device" in chosen.reason
    with pytest.raises(ValueError, match=r"^precision is 'f32', not one of bf16, f16$"):
        RuntimeCheck.parse(_with(precision="f32"))


def test_names_with_control_characters_are_not_believed_nor_printed_raw() -> None:
    record = _with(device_name="Test CPU\x1b[2J 9000")
    _, unusable = precision.read_checks({"runtime_checks": [record]})
    assert unusable[0].summary() == ("bf16 vs f32 on CPU ('Test CPU\\x1b[2J 9000'): not believed (device_name is "
                                     "'Test CPU\\x1b[2J 9000', not a name); auto treats it as missing")


counts = st.integers(min_value=-3, max_value=500)
rates = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 2) | st.sampled_from([0.9, 0.95, 1.0])


@settings(max_examples=400, deadline=None)
@given(images=counts, total=counts, matched=counts, recall=rates, min_recall=rates,
       passed=st.booleans() | st.sampled_from(["true", "false", 0, 1, None]))
def test_auto_runs_the_default_only_on_evidence_that_it_passed(images: Any, total: Any, matched: Any, recall: Any,
                                                               min_recall: Any, passed: Any) -> None:
    record = _with(images=images, reference_detections=total, matched=matched, recall=recall, min_recall=min_recall,
                   passed=passed)
    checks, unusable = precision.read_checks({"runtime_checks": [record]})
    chosen = openvino_rules.plan("auto", FACTS, checks, model="m", unusable=unusable)
    if chosen.pin is None:  # bf16 runs: only on a consistent record at or above ssdtool's floor
        assert passed is True and images >= 1 and 0 <= matched <= total
        assert (matched / total if total else 1.0) >= precision.RUNTIME_MIN_RECALL
        assert abs(recall - (matched / total if total else 1.0)) <= 1e-6
    else:
        assert chosen.pin == "f32"


# ------------------------------------------------------------------------------------------------- on the tiny twin
def _default() -> str | None:
    from ssdtool.backends.openvino import device_facts

    return device_facts("CPU").default_precision


needs_bf16_default = pytest.mark.skipif(_default() != "bf16", reason="this CPU's default inference precision is "
                                                                     "not bf16")


class Twin:
    def __init__(self, root: Path) -> None:
        self.registry, self.cache, self.image = root / "registry.yml", root / "cache", root / "photo.png"

    @property
    def xml(self) -> Path:
        return self.cache / "tiny" / "openvino" / "FP32" / "tiny.xml"

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--registry", str(self.registry), "--cache-dir", str(self.cache), *args])


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Twin:
    """The tiny twin converted as 'ssdtool convert' does it, runtime check (at this CPU's bf16) recorded."""
    twin = Twin(tmp_path_factory.mktemp("records"))
    install_model(twin.cache, twin.registry, "tiny", build_model(TwinSpec(variant="tiny")))
    if _default() == "bf16":
        convert(load_registry(twin.registry).model("tiny"), Cache.at(twin.cache))
    Image.fromarray(generated_images(1, seed=3, size=(400, 300))[0]).save(twin.image)
    return twin


@pytest.fixture()
def twin(converted: Twin, tmp_path: Path) -> Iterator[Twin]:
    copy = Twin(tmp_path)
    shutil.copytree(converted.cache, copy.cache)
    shutil.copy(converted.registry, copy.registry)
    shutil.copy(converted.image, copy.image)
    yield copy


def _ran(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["run"]["inference_precision"]


@needs_bf16_default
@pytest.mark.parametrize(("change", "reason"), [
    ({"passed": "false"}, "passed is 'false', not true or false"),
    ({"recall": 0.1}, "recall 0.1 is not matched / reference_detections"),
    ({"recall": 0.1, "matched": 1, "reference_detections": 10}, "it says passed: true, but recall 0.1 is below its "
                                                                 "floor 0.9"),
])
def test_a_planted_record_no_longer_buys_bf16(twin: Twin, change: dict[str, Any], reason: str) -> None:
    genuine = read_provenance(twin.xml)["runtime_checks"]
    assert len(genuine) == 1 and genuine[0]["passed"] is True
    assert _ran(twin.run("detect", str(twin.image), "--json")) == "bf16"  # the record holds up: auto takes bf16

    assert rewrite_provenance(twin.xml, {"runtime_checks": [{**genuine[0], **change}]})
    planted = twin.run("detect", str(twin.image), "--json")
    assert _ran(planted) == "f32"
    assert f"does not hold up ({reason}" in planted.stderr
    assert "Run 'ssdtool convert tiny' here to check and record it again" in planted.stderr
    info = twin.run("info", "tiny")
    assert f"not believed ({reason}" in info.stdout

    reconverted = twin.run("convert", "tiny")  # up to date: measures the check again and replaces the record
    assert reconverted.exit_code == 0, reconverted.output
    assert [check["passed"] for check in read_provenance(twin.xml)["runtime_checks"]] == [True]
    assert _ran(twin.run("detect", str(twin.image), "--json")) == "bf16"
