"""Model-server repositories from converted IRs: OVMS, Triton and KServe (docs/export.md).

:func:`export_model` is the one call; :mod:`~ssdtool.export.options` decides what the server is told (device,
hint, precision), :mod:`~ssdtool.export.repository` writes versions safely (lock, temporary folder, rename),
:mod:`~ssdtool.export.layouts` holds one small class per server, and :mod:`~ssdtool.export.signature` reads the
IR's tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssdtool.lazy import lazy_attributes

if TYPE_CHECKING:
    from ssdtool.export.api import MANIFEST, ExportResult, export_model
    from ssdtool.export.layouts import LAYOUTS, Layout
    from ssdtool.export.options import ExportOptions, ServingSettings
    from ssdtool.export.signature import Signature, TensorSpec

# Names resolve on first use: the command line reads export.options' defaults for its help, nothing more.
_LAZY = {
    **dict.fromkeys(("MANIFEST", "ExportResult", "export_model"), "ssdtool.export.api"),
    **dict.fromkeys(("LAYOUTS", "Layout"), "ssdtool.export.layouts"),
    **dict.fromkeys(("ExportOptions", "ServingSettings"), "ssdtool.export.options"),
    **dict.fromkeys(("Signature", "TensorSpec"), "ssdtool.export.signature"),
}

__all__ = ["LAYOUTS", "MANIFEST", "ExportOptions", "ExportResult", "Layout", "ServingSettings", "Signature",
           "TensorSpec", "export_model"]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
