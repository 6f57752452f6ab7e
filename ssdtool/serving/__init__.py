"""Serving a model over the Open Inference Protocol (KServe v2 REST), built on kserve's data plane.

:mod:`ssdtool.serving.protocol` (light: no kserve) holds what client and server share: tensor data types, the
BYTES image input, :class:`ServerTarget`. :mod:`ssdtool.serving.model` is the kserve model (an ssdtool engine
behind ``predict``), :mod:`ssdtool.serving.server` the HTTP server (kserve's v2 endpoints, error handlers and
Prometheus metrics on uvicorn). The client is :class:`ssdtool.backends.remote.RemoteEngine`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeOptions", "Server", "ServerTarget", "start_server"]


def __getattr__(name: str) -> Any:  # kserve (3 s to import) only when a server is made
    if name in ("ServeOptions", "Server", "start_server"):
        from ssdtool.serving import server

        return getattr(server, name)
    if name == "ServerTarget":
        from ssdtool.serving.protocol import ServerTarget

        return ServerTarget
    raise AttributeError(name)
