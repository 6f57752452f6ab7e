"""What the CPU can do, where OpenVINO does not say: the instruction-set flags that decide INT8 arithmetic.

OpenVINO reports ``INT8`` among every x86 CPU's capabilities, but how int8 products are computed differs: CPUs with
VNNI (``avx512_vnni``, ``avx_vnni``) or AMX (``amx_int8``) accumulate u8 x i8 products in 32 bits, while AVX2-only
CPUs use ``vpmaddubsw``, whose int16 intermediate saturates unless weights use 7 bits (NNCF's overflow fix). ARM's
dot-product instructions accumulate in 32 bits too.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: Flags (``/proc/cpuinfo``) of x86 CPUs whose int8 dot products cannot saturate.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The first CPU's flags from ``/proc/cpuinfo`` (Linux); empty where the file is missing or unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return frozenset(value.split())
    return frozenset()


def exact_int8_products() -> bool | None:
    """Whether int8 products here accumulate without saturation (VNNI/AMX on x86, any ARM); None when unknown."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    flags = cpu_flags()
    if not flags:
        return None
    return any(flag in flags for flag in INT8_DOT_PRODUCT_FLAGS)
