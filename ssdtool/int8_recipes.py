"""The INT8 recipes: the NNCF settings each one records, which one a CPU gets by default, the warning when an IR's
recipe does not suit this CPU, and how many images calibrate and check an INT8 IR by default.

Plain data and a CPU-flag read, apart from :mod:`ssdtool.quantize` (the NNCF glue), so what identifies an INT8 IR
(:func:`ssdtool.convert.options.conversion_parameters`) and what runs it (the precision plan) never import the
quantizer. docs/convert.md#int8-recipes has the measurements behind the choice.
"""

from __future__ import annotations

from typing import Any

from ssdtool.constants import Int8Recipe

#: INT8: how many images NNCF collects activation statistics on unless told. Each costs one float inference of the
#: model (about 2.4 s at 1200 px on 2 cores, NNCF's reductions included), so this is most of an INT8 conversion's
#: time. NNCF's own default is 300; on the 1200 px twin 48 images give the same INT8 model within noise (the guard
#: keeps 1007 of 1037 FP32 detections at 48, 1000 at 300; activation ranges within 4% of 300's, median) in a sixth
#: of the time (benchmarks/bench_int8_convert.py, docs/convert.md, *Calibration size*). --calibration-size N asks for
#: more.
DEFAULT_CALIBRATION_SIZE = 48
#: Held-out images the accuracy guard compares the INT8 IR with the FP32 IR on.
GUARD_IMAGES = 8

# What determines the INT8 graph besides the FP32 graph and the calibration images; part of the idempotency key.
# Bump "recipe" when these change. overflow_fix "enable" (the portable recipe) quantizes every layer's weights to 7
# bits instead of only the first layer's (NNCF's default, the vnni recipe): CPUs without VNNI (AVX2) multiply u8 x i8
# pairs with pmaddubsw, which saturates at int16, and 7-bit weights cannot saturate it. On the 1200 px twin this
# halved the worst score difference against FP32 on an AVX2 CPU (0.22 -> 0.10) and raised the share of FP32
# detections kept; on VNNI CPUs it is not needed and costs one bit of weight precision (docs/convert.md has the
# figures of both recipes). Activation ranges: NNCF's default (mean of per-image min/max) kept more detections
# there than histogram-based ranges.
QUANTIZATION = {"tool": "nncf.quantize", "preset": "performance", "target_device": "ANY",
                "fast_bias_correction": True, "overflow_fix": "enable", "recipe": 1}
_OVERFLOW_FIX = {Int8Recipe.PORTABLE: "enable", Int8Recipe.VNNI: "first_layer_only"}


def quantization_settings(recipe: str | Int8Recipe = Int8Recipe.PORTABLE) -> dict[str, Any]:
    """The NNCF settings of ``recipe``, as recorded in provenance and compared for idempotency.

    The portable recipe's settings are exactly those of IRs made before recipes had names, so those stay current.
    """
    chosen = Int8Recipe.parse(recipe, "INT8 recipe")
    return {**QUANTIZATION, "overflow_fix": _OVERFLOW_FIX[chosen]}  # type: ignore[index]


def recipe_of(settings: Any) -> str | None:
    """The recipe whose settings ``settings`` (from provenance) are; None for unknown settings."""
    return next((r.value for r in Int8Recipe if quantization_settings(r) == settings), None)


def default_recipe() -> tuple[Int8Recipe, str]:
    """The recipe for an INT8 build that names none, and why: chosen by the converting CPU's int8 arithmetic.

    Measured on the 1200 px twin (benchmarks/bench_int8_recipes.py, docs/convert.md#int8-recipes): where int8
    products accumulate in 32 bits (VNNI, AMX, ARM), NNCF's default keeps more FP32 detections than 7-bit weights
    (1000 vs 987 of 1037) with a third of the worst score difference (0.08 vs 0.21). Where they may saturate (AVX2)
    or the CPU is unknown, 7-bit weights are exact by construction.
    """
    from ssdtool import cpu

    if cpu.exact_int8_products():
        return Int8Recipe.VNNI, ("chosen for this CPU: its int8 products accumulate without saturation (VNNI, AMX "
                                 "or ARM dot products), so 8-bit weights keep more accuracy")
    return Int8Recipe.PORTABLE, ("chosen for this CPU: it has no VNNI/AMX (or reports no flags), so 8-bit weight "
                                 "products could saturate; 7-bit weights are exact on every CPU")


def recipe_warning(provenance: dict[str, Any] | None, model: str) -> str | None:
    """A warning when an INT8 IR of the vnni recipe runs on a CPU whose int8 products may saturate, else None."""
    from ssdtool import cpu

    settings = ((provenance or {}).get("parameters") or {}).get("quantization")
    if recipe_of(settings) != Int8Recipe.VNNI.value or cpu.exact_int8_products() is not False:
        return None
    return (f"{model}'s INT8 IR was quantized with the vnni recipe (8-bit weights, for CPUs with VNNI or AMX); this "
            "CPU has neither, so its int8 products may saturate and lose accuracy. Reconvert it here with 'ssdtool "
            f"convert {model} --precision INT8 --int8-recipe portable --force'")
