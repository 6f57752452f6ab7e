"""Lazily resolved public names, the one implementation every package ``__init__`` uses.

A package lists its public names in a table, name -> defining module, and gets the module-level ``__getattr__``
and ``__dir__`` (PEP 562) from :func:`lazy_attributes`: a name is imported on first access, so importing the
package (``ssdtool`` itself included) loads nothing heavy, and ``--help`` stays instant. Imports only the standard
library.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, str]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package named ``package``, resolving the names of ``table``."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*vars(sys.modules[package]), *table])

    return __getattr__, __dir__
