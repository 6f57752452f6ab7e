"""Option bundles shared by several commands, as decorators, so a flag means the same everywhere it appears.

Imports nothing heavy and nothing from :mod:`ssdtool.cli` (which imports the command modules).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ssdtool.constants import InferencePrecision, IRPrecision

F = TypeVar("F", bound=Callable[..., Any])


def ir_precision_option(help_text: str = "Which IR to run with OpenVINO (FP32, FP16 or INT8) [default: the "
                                         "registry's, FP32].", default: str | None = None) -> Callable[[F], F]:
    """``--precision FP32|FP16|INT8``: the IR's weights (case-insensitive; the value reaches the command upper-case)."""
    return click.option("--precision", type=click.Choice(IRPrecision.values(), case_sensitive=False),
                        default=default, show_default=default is not None, callback=_upper, help=help_text)


def inference_precision_option(default: str = InferencePrecision.AUTO.value,
                               help_text: str | None = None) -> Callable[[F], F]:
    """``--inference-precision auto|f32|bf16|f16``: the arithmetic OpenVINO runs the IR in."""
    return click.option(
        "--inference-precision", type=click.Choice(InferencePrecision.values(), case_sensitive=False),
        default=default, show_default=True, callback=_lower,
        help=help_text or "OpenVINO's arithmetic: auto (the device's default, bf16 on CPUs with native bf16, where "
                          "this IR was checked at it; else f32), or f32, bf16, f16 pinned (an error if the "
                          "device cannot run it). onnxruntime runs f32.")


def _upper(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return value.upper() if value is not None else None


def _lower(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return value.lower() if value is not None else None
