"""The FastAPI application behind ``ssdtool serve``: kserve's v2 endpoints, data plane and metrics for one model,
ssdtool's error handlers and request guard, and the OpenAPI document of what is actually served.

kserve's own error handlers log a traceback for every unknown model name or bad request; here each client error
is one log line. Two kinds of request are answered before kserve sees them (:func:`refused_path`): kserve's model
repository extension (load/unload over HTTP: one unauthenticated POST would take the model away), and model
versions (kserve answers them with 501 "not supported yet"; this server has one unversioned model, so 404).
"""

from __future__ import annotations

import contextvars
import copy
import logging
from typing import Any
from urllib.parse import parse_qs

from ssdtool.serving.limits import RequestGuard
from ssdtool.serving.protocol import HEADER_LENGTH

log = logging.getLogger("ssdtool.serving")

#: kserve's model repository extension (load/unload over HTTP).
BLOCKED_PREFIXES = ("/v2/repository/",)
INFER_PATH = "/v2/models/{model_name}/infer"


def application(model: Any, max_request_bytes: int, body_timeout: float) -> Any:
    """A FastAPI app with kserve's v2 endpoints, error handlers and metrics for ``model`` (a kserve Model),
    behind :class:`~ssdtool.serving.limits.RequestGuard`; serve it as ``AnsweredOnce(app)``. Its OpenAPI document
    is :func:`openapi_document`, not served over HTTP."""
    from fastapi import FastAPI
    from kserve import errors
    from kserve.model_repository import ModelRepository
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import metrics_handler
    from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

    from ssdtool.serving.binary import BinaryDataPlane
    from ssdtool.serving.model import ImageTooLarge

    repository = ModelRepository()
    repository.update(model)
    app = FastAPI(title="ssdtool serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    register_v2_endpoints(app, BinaryDataPlane(model_registry=repository), ModelRepositoryExtension(repository))
    for error, handler in ((errors.InvalidInput, _one_line(400, "bad request")),
                           (ImageTooLarge, _one_line(413, "image too large")),
                           (errors.ModelNotFound, _one_line(404, "unknown model")),
                           (errors.ModelNotReady, _one_line(503, "model not ready")),
                           (errors.InferenceError, errors.inference_error_handler),
                           (NotImplementedError, errors.not_implemented_error_handler),
                           (errors.ServerNotLive, errors.server_not_live_handler),
                           (errors.ServerNotReady, errors.server_not_ready_handler),
                           (Exception, _unexpected)):
        app.add_exception_handler(error, handler)
    app.add_middleware(RequestGuard, limit=max_request_bytes, body_timeout=body_timeout, refuse=refused_path)
    return app


def _one_line(status: int, what: str) -> Any:
    """An error handler answering ``status`` with ``{"error": reason}``, logged on one line (kserve's log a
    traceback per request)."""

    async def handle(_request: Any, exc: Exception) -> Any:
        from fastapi.responses import JSONResponse

        log.info("%s: %s", what, exc)
        return JSONResponse(status_code=status, content={"error": str(exc)})

    return handle


_ANSWERED: contextvars.ContextVar[BaseException | None] = contextvars.ContextVar("ssdtool_answered", default=None)


async def _unexpected(_request: Any, exc: Exception) -> Any:
    """A bug: 500 naming only the exception's type (its text may hold internals), the traceback in the log."""
    from fastapi.responses import JSONResponse

    log.error("unexpected error answering a request", exc_info=exc)
    _ANSWERED.set(exc)
    return JSONResponse(status_code=500, content={"error": f"internal error ({type(exc).__name__}); the server's "
                                                          f"log has the details"})


class AnsweredOnce:
    """The outermost ASGI layer. Starlette answers an unexpected exception with :func:`_unexpected` (which logs
    its traceback) and then raises it again, for the server to log: a second traceback of the same error. An
    exception :func:`_unexpected` has answered ends here; any other goes on to uvicorn."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if _ANSWERED.get() is not exc:
                raise


def refused_path(scope: dict[str, Any]) -> tuple[int, str] | None:
    """404 for kserve's repository extension and for model versions; None for everything else."""
    path = str(scope.get("path", ""))
    if path.startswith(BLOCKED_PREFIXES):
        return 404, "not found"
    query = parse_qs(bytes(scope.get("query_string") or b"").decode("latin-1"))
    if path.startswith("/v2/models/") and ("/versions/" in path or any(query.get("model_version", []))):
        return 404, ("this server serves one model without versions: leave out /versions/VERSION and "
                     "model_version")
    return None


def openapi_document(app: Any, model_name: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI document of what ``app`` serves for ``model_name`` with ``inputs`` (the model's input
    metadata), from FastAPI's (kserve's routes).

    FastAPI's document lists routes that are refused (the repository extension, ``model_version``), lets
    ``model_name``, an input's name and its datatype be any string, and describes the binary tensor extension only
    as a string under ``application/json``, without the ``Inference-Header-Content-Length`` header. Here those
    routes and parameters are removed, the names and datatypes are the served ones, and the binary extension is an
    ``application/octet-stream`` body with that header.
    """
    document = copy.deepcopy(app.openapi())
    paths: dict[str, Any] = document.get("paths", {})
    for path in [p for p in paths if p.startswith(BLOCKED_PREFIXES) or "{model_version}" in p]:
        del paths[path]
    for operations in paths.values():
        for operation in operations.values():
            parameters = [p for p in operation.get("parameters", []) if p.get("name") != "model_version"]
            for parameter in parameters:
                if parameter.get("name") == "model_name" and parameter.get("in") == "path":
                    parameter["schema"] = {"type": "string", "enum": [model_name], "title": "Model Name"}
            operation["parameters"] = parameters
    request_input = document.get("components", {}).get("schemas", {}).get("RequestInput", {}).get("properties")
    if request_input is not None:
        request_input["name"] = {"type": "string", "enum": [str(spec["name"]) for spec in inputs]}
        request_input["datatype"] = {"type": "string", "enum": sorted({str(spec["datatype"]) for spec in inputs})}
    infer = paths.get(INFER_PATH, {}).get("post")
    if infer is not None:
        content = infer["requestBody"]["content"]
        content["application/json"] = {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        infer["parameters"].append({
            "name": HEADER_LENGTH, "in": "header", "required": False,
            "description": "binary tensor extension: the length of the JSON header at the start of the body",
            "schema": {"type": "integer", "minimum": 0}})
    return document
