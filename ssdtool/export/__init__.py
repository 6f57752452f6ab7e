"""Model-server repositories from converted IRs: OVMS, Triton and KServe (docs/export.md).

:func:`export_model` is the one call; :mod:`~ssdtool.export.options` decides what the server is told (device,
hint, precision), :mod:`~ssdtool.export.repository` writes versions safely (lock, temporary folder, rename),
:mod:`~ssdtool.export.layouts` holds one small class per server, and :mod:`~ssdtool.export.signature` reads the
IR's tensors.
"""

from __future__ import annotations

from ssdtool.export.api import MANIFEST, ExportResult, export_model
from ssdtool.export.layouts import LAYOUTS, Layout
from ssdtool.export.options import ExportOptions, ServingSettings
from ssdtool.export.signature import Signature, TensorSpec

__all__ = ["LAYOUTS", "MANIFEST", "ExportOptions", "ExportResult", "Layout", "ServingSettings", "Signature",
           "TensorSpec", "export_model"]
