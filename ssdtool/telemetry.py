"""The engines' telemetry, off in the processes ssdtool owns: the ``ssdtool`` command and the INT8 worker.

What the engines do by themselves (found by running them with ``HOME`` set to an empty folder):

* **onnxruntime** (the official Linux wheels, since 1DS telemetry came to POSIX builds): its first session writes
  ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` (``deviceid``, a persistent device identifier, and
  ``onnxruntime.db``, an offline event store) and uploads events to Microsoft. Its own switch,
  ``ORT_DISABLE_TELEMETRY=1`` in the environment before it initializes, turns all of it off for the process: no
  identifier, no store, no upload.
* **OpenVINO**: ``import openvino`` imports ``openvino.tools.ovc``, which starts the ``openvino-telemetry``
  package (Google Analytics): ``~/intel/openvino_ga_cid`` (a client identifier) and ``~/intel/stats``, and events
  sent unless ``~/intel/openvino_telemetry`` says no (``opt_in_out --opt_out``, a file in the home folder again)
  or ``CI=true`` is set. Every user of the package (``ovc``, NNCF) falls back to its own no-op stub when it
  cannot be imported, so a ``None`` entry for it in ``sys.modules`` turns it off for the process, writing nothing.

Why off: a tool that CI runs as root must not leave files in root's home outside its cache, nor reach out to a
third party on its own (``--offline`` promises no network at all). ssdtool sends no telemetry of its own.

Both switches are process-wide (an environment variable, ``sys.modules``), so the library never calls this:
only a process owner does, :func:`ssdtool.cli.main` and the INT8 worker's ``__main__``. A Python program using
the library keeps the engines' defaults, and may call :func:`disable_engine_telemetry` itself. A user's own
``ORT_DISABLE_TELEMETRY`` (``0`` to allow) is kept. Documented in README's "Where files go".
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any

#: onnxruntime's switch: "1" before its first session turns its telemetry off for the process.
ORT_SWITCH = "ORT_DISABLE_TELEMETRY"
#: The package OpenVINO's tools and NNCF report through; without it they use their no-op stubs.
OPENVINO_TELEMETRY_MODULE = "openvino_telemetry"


def disable_engine_telemetry(environ: MutableMapping[str, str] | None = None,
                             modules: MutableMapping[str, Any] | None = None) -> None:
    """Turn the engines' telemetry off for this process and its children (see the module docstring); call it
    before onnxruntime or OpenVINO is imported. ``environ`` and ``modules`` default to the process's own."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    environ.setdefault(ORT_SWITCH, "1")
    # Already imported: its start-up already ran and wrote its files; removing it now would only break its users.
    modules.setdefault(OPENVINO_TELEMETRY_MODULE, None)
