"""Serving a model over the Open Inference Protocol (KServe v2 REST), built on kserve's data plane.

:mod:`ssdtool.serving.protocol` (light: no kserve) holds what client and server share: tensor data types, the
BYTES image input, :class:`ServerTarget`. :mod:`ssdtool.serving.model` is the kserve model (an ssdtool engine
behind ``predict``), :mod:`ssdtool.serving.server` the HTTP server (kserve's v2 endpoints, error handlers and
Prometheus metrics on uvicorn). The client is :class:`ssdtool.backends.remote.RemoteEngine`.
"""

from __future__ import annotations

from ssdtool.lazy import lazy_attributes

#: kserve (3 s to import) only when a server is made.
_LAZY = {"ServeOptions": "ssdtool.serving.server", "Server": "ssdtool.serving.server",
         "start_server": "ssdtool.serving.server", "ServerTarget": "ssdtool.serving.protocol"}

__all__ = ["ServeOptions", "Server", "ServerTarget", "start_server"]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
