"""The FastAPI application behind ``ssdtool serve``: the protocol's routes (:mod:`ssdtool.serving.routes`) on
kserve's data plane for the served models, kserve's metrics, ssdtool's error handlers and request guard, and the
OpenAPI document of what is actually served.

Every error answers ``{"error": "..."}``, the protocol's shape, which tritonclient and KServe's client decode:
kserve's errors, a route that does not exist (Starlette's 404 and 405 say ``{"detail": ...}``), a request FastAPI
cannot validate (422) and a bug (500). kserve's own error handlers log a traceback for every unknown model name or
bad request; here each client error is one log line. Model versions are answered before kserve sees them
(:func:`refused_path`: kserve answers them with 501 "not supported yet"; this server's models have no versions,
so 404). kserve's model repository extension (load/unload over HTTP: one unauthenticated POST would take the model
away) is not among the routes.
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

INFER_PATH = "/v2/models/{model_name}/infer"
#: The answer to a model version (this server's models have none).
NO_VERSIONS = "this server serves its models without versions: leave out /versions/VERSION and model_version"


def data_plane(models: list[Any]) -> Any:
    """kserve's data plane (ssdtool's :class:`~ssdtool.serving.binary.BinaryDataPlane`) over ``models`` (kserve
    Models); the REST routes and the gRPC service share it."""
    from kserve.model_repository import ModelRepository

    from ssdtool.serving.binary import BinaryDataPlane

    repository = ModelRepository()
    for model in models:
        repository.update(model)
    return BinaryDataPlane(model_registry=repository)


def error_statuses() -> list[tuple[type[BaseException], int, str]]:
    """Each error a request can meet -> its HTTP status and what it is, in log lines: one table for REST and gRPC
    (:mod:`ssdtool.serving.grpc_server` maps the statuses to gRPC codes). Anything else is a bug (500)."""
    from kserve import errors

    from ssdtool.serving.model import ImageTooLarge

    return [(errors.InvalidInput, 400, "bad request"), (ImageTooLarge, 413, "image too large"),
            (errors.ModelNotFound, 404, "unknown model"), (errors.ModelNotReady, 503, "model not ready"),
            (errors.InferenceError, 500, "inference error"), (NotImplementedError, 501, "not implemented"),
            (errors.ServerNotLive, 503, "server not live"), (errors.ServerNotReady, 503, "server not ready")]


def application(plane: Any, max_request_bytes: int, body_timeout: float) -> Any:
    """A FastAPI app with the protocol's routes over ``plane`` (:func:`data_plane`), kserve's metrics and
    ``{"error": ...}`` for every error, behind :class:`~ssdtool.serving.limits.RequestGuard`; serve it as
    ``AnsweredOnce(app)``. Its OpenAPI document is :func:`openapi_document`, not served over HTTP."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from kserve.protocol.rest.server import metrics_handler
    from starlette.exceptions import HTTPException

    from ssdtool.serving.routes import register_routes

    app = FastAPI(title="ssdtool serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    register_routes(app, plane)
    for error, status, what in error_statuses():
        app.add_exception_handler(error, _one_line(status, what))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
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


async def _http_error(request: Any, exc: Any) -> Any:
    """Starlette's own answers (a route that does not exist, a method a route does not take) in the protocol's
    shape, with their headers (a 405's ``Allow``)."""
    from fastapi.responses import JSONResponse

    from ssdtool.serving.routes import ROUTES

    where = f"{request.method} {str(request.url.path)[:200]}"
    if exc.status_code == 404:
        message = f"not found: {where}; this server answers {', '.join(ROUTES)}"
    elif exc.status_code == 405:
        message = f"method not allowed: {where}; this path takes {(exc.headers or {}).get('Allow', 'another method')}"
    else:
        message = f"{exc.detail}: {where}"
    log.info("refused: %s", message)
    return JSONResponse(status_code=exc.status_code, content={"error": message}, headers=exc.headers)


async def _validation_error(_request: Any, exc: Any) -> Any:
    """A request FastAPI could not validate: 422 ``{"error": ...}`` naming where, one log line."""
    from fastapi.responses import JSONResponse

    from ssdtool.serving.binary import located

    message = f"the request does not follow the protocol: {located(list(exc.errors()))}"
    log.info("bad request: %s", message)
    return JSONResponse(status_code=422, content={"error": message})


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
    """404 for model versions; None for everything else."""
    path = str(scope.get("path", ""))
    query = parse_qs(bytes(scope.get("query_string") or b"").decode("latin-1"))
    if path.startswith("/v2/models/") and ("/versions/" in path or any(query.get("model_version", []))):
        return 404, NO_VERSIONS
    return None


def openapi_document(app: Any, models: list[str], inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI document of what ``app`` serves for the ``models`` (names) with ``inputs`` (their input
    metadata), from FastAPI's.

    FastAPI's document lists the ``model_version`` parameter kserve's handlers take (refused here), lets
    ``model_name``, an input's name and its datatype be any string, and knows nothing of the infer route's body,
    which the route reads itself. Here that parameter is removed, the names and datatypes are the served ones,
    and the body is the protocol's JSON (kserve's data model) or the binary extension's ``application/octet-stream``
    body with its ``Inference-Header-Content-Length`` header.
    """
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

    document = copy.deepcopy(app.openapi())
    paths: dict[str, Any] = document.get("paths", {})
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    request_schema = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(request_schema.pop("$defs", {}))
    schemas["InferenceRequest"] = request_schema
    for operations in paths.values():
        for operation in operations.values():
            parameters = [p for p in operation.get("parameters", []) if p.get("name") != "model_version"]
            for parameter in parameters:
                if parameter.get("name") == "model_name" and parameter.get("in") == "path":
                    parameter["schema"] = {"type": "string", "enum": list(models), "title": "Model Name"}
            operation["parameters"] = parameters
    request_input = schemas.get("RequestInput", {}).get("properties")
    if request_input is not None:
        request_input["name"] = {"type": "string", "enum": [str(spec["name"]) for spec in inputs]}
        request_input["datatype"] = {"type": "string", "enum": sorted({str(spec["datatype"]) for spec in inputs})}
    infer = paths.get(INFER_PATH, {}).get("post")
    if infer is not None:
        infer.setdefault("parameters", []).append({
            "name": HEADER_LENGTH, "in": "header", "required": False,
            "description": "binary tensor extension: the length of the JSON header at the start of the body",
            "schema": {"type": "integer", "minimum": 0}})
    return document
