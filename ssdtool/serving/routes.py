"""The REST routes ``ssdtool serve`` answers: the Open Inference Protocol's, on kserve's endpoint handlers.

kserve's ``register_v2_endpoints`` adds routes this server does not serve (its model repository extension: one
unauthenticated POST would unload the model; model versions, which it answers with 501) and two that are not what
the protocol says: model metadata drops everything but kserve's own fields (OVMS adds the IR's ``rt_info``, which
OpenVINO Model API's OVMS adapter reads), and ``infer`` takes a body without ``Inference-Header-Content-Length`` as
JSON only when its Content-Type says so (tritonclient sends none: its JSON requests were refused). So the routes are
registered here, on kserve's handlers: ``infer`` hands the raw body to the data plane, which decides by that header
alone (:mod:`ssdtool.serving.binary`).

Imported only when an app is made (it imports FastAPI). No ``from __future__ import annotations`` here: FastAPI
reads the handlers' annotations (``Request``, ``Response``) as objects.
"""

from typing import Any

from fastapi import APIRouter, Request, Response

#: The infer route's request body in the OpenAPI document: the protocol's JSON, or the binary extension's bytes.
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
#: What the routes are, for the message of a 404.
ROUTES = ("GET /v2", "GET /v2/health/live", "GET /v2/health/ready", "GET /v2/models", "GET /v2/models/NAME",
          "GET /v2/models/NAME/ready", "POST /v2/models/NAME/infer", "GET /metrics")


def register_routes(app: Any, dataplane: Any) -> None:
    """The protocol's routes on ``app``, answered by kserve's handlers over ``dataplane``."""
    from kserve.protocol.rest.v2_datamodels import (
        ListModelsResponse,
        ModelReadyResponse,
        ServerLiveResponse,
        ServerMetadataResponse,
        ServerReadyResponse,
    )
    from kserve.protocol.rest.v2_endpoints import V2Endpoints

    endpoints = V2Endpoints(dataplane)
    metadata_model = _model_metadata_response()

    async def model_metadata(model_name: str) -> Any:
        return metadata_model.model_validate(await dataplane.model_metadata(model_name))

    async def infer(raw_request: Request, raw_response: Response, model_name: str) -> Any:
        return await endpoints.infer(raw_request, raw_response, model_name, await raw_request.body())

    router = APIRouter(prefix="/v2", tags=["V2"])
    for path, handler, model in (("", endpoints.metadata, ServerMetadataResponse),
                                 ("/health/live", endpoints.live, ServerLiveResponse),
                                 ("/health/ready", endpoints.ready, ServerReadyResponse),
                                 ("/models", endpoints.models, ListModelsResponse),
                                 ("/models/{model_name}", model_metadata, metadata_model),
                                 ("/models/{model_name}/ready", endpoints.model_ready, ModelReadyResponse)):
        router.add_api_route(path, handler, response_model=model, methods=["GET"], response_model_exclude_none=True)
    router.add_api_route("/models/{model_name}/infer", infer, response_model=None, methods=["POST"],
                         openapi_extra=INFER_BODY)
    app.include_router(router)


def _model_metadata_response() -> Any:
    """kserve's model metadata with the IR's runtime info (``rt_info``, as OVMS answers) when the model has some."""
    from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse

    class ModelMetadata(ModelMetadataResponse):
        rt_info: dict[str, dict[str, str]] | None = None

    return ModelMetadata
