"""The protocol's gRPC service (``inference.GRPCInferenceService``) for ``ssdtool serve --grpc-port``.

kserve's servicer and generated messages (``kserve.protocol.grpc``: the Open Inference Protocol's
``grpc_predict_v2.proto``) on grpcio's asyncio server, over the same data plane and models as the REST routes, so
the same requests give the same tensors and the same errors:

* requests are read strictly (:func:`grpc_request`, the counterpart of :mod:`ssdtool.serving.binary`): whole
  shapes, ``raw_input_contents`` of exactly the size the shape takes, BYTES elements that fit, parameters of the
  types the proto carries; kserve's ``InferRequest.from_grpc`` trusts all of these;
* errors come from the REST table (:func:`ssdtool.serving.app.error_statuses`) as gRPC codes (:data:`CODES`) with
  the same messages, each logged as one line (kserve's interceptor logs a traceback per bad request); a bug is
  ``INTERNAL`` naming only the exception's type, its traceback logged once;
* model versions are ``NOT_FOUND`` as on REST, and the repository RPCs (load/unload) are ``UNIMPLEMENTED``;
* outputs travel as ``raw_output_contents`` (tritonclient reads nothing else).

The limits are the REST server's where grpcio has a setting for them (:func:`server_options`): the message size
cap, RPCs at once, a handshake deadline, idle connections closed, and a bounded connection age (a message that
trickles in is cut off with its connection).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput, get_content

from ssdtool.serving.app import NO_VERSIONS, error_statuses
from ssdtool.serving.binary import DATATYPES, MAX_DIMENSIONS, raw_tensor

if TYPE_CHECKING:
    from ssdtool.serving.limits import ConnectionLimits

log = logging.getLogger("ssdtool.serving")

#: HTTP status of an error (the REST table) -> the gRPC status code of the same error.
CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
         503: "UNAVAILABLE"}


def server_options(max_request_bytes: int, limits: ConnectionLimits) -> list[tuple[str, int]]:
    """grpcio's settings for the REST server's limits: messages up to ``max_request_bytes``; the HTTP/2
    handshake within the header deadline; a connection with no RPC for that long closed; every connection closed
    (GOAWAY: clients reconnect for their next RPC) after the body deadline, with as long again for the RPCs in
    flight, so a message trickling in holds its connection for at most twice the body deadline; SO_REUSEPORT off,
    so a port in use is an error instead of a shared port."""
    header_ms, body_ms = int(limits.header_timeout * 1000), int(limits.body_timeout * 1000)
    return [("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", max_request_bytes),
            ("grpc.server_handshake_timeout_ms", header_ms),
            ("grpc.max_connection_idle_ms", header_ms),
            ("grpc.max_connection_age_ms", body_ms),
            ("grpc.max_connection_age_grace_ms", body_ms),
            ("grpc.so_reuseport", 0)]


def grpc_request(request: pb.ModelInferRequest) -> InferRequest:
    """A gRPC inference request as kserve's ``InferRequest``, every field checked (kserve's own conversion takes
    ``raw_input_contents`` of any size and drops parameters it cannot read)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"the request has {len(request.inputs)} inputs and {len(raw)} raw_input_contents; send "
                           f"one raw_input_contents per input, in order, or none")
    inputs = []
    for index, tensor in enumerate(request.inputs):
        if not tensor.name:
            raise InvalidInput(f"inputs[{index}].name must be a non-empty string")
        where = f"input {tensor.name!r}"
        if tensor.datatype not in DATATYPES:
            raise InvalidInput(f"{where}: datatype must be one of {', '.join(DATATYPES)}, got {tensor.datatype!r:.30}")
        shape = list(tensor.shape)
        if len(shape) > MAX_DIMENSIONS or any(d < 0 for d in shape):
            raise InvalidInput(f"{where}: shape must be a list of at most {MAX_DIMENSIONS} whole numbers >= 0, got "
                               f"{shape!r:.60}")
        parameters = _parameters(tensor.parameters, f"{where}: parameter")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{where} has both contents and raw_input_contents; send one of them")
            data: Any = raw_tensor(tensor.datatype, shape, memoryview(raw[index]), where, "raw_input_contents")
        else:
            data = get_content(tensor.datatype, tensor.contents)
        inputs.append(InferInput(tensor.name, shape, tensor.datatype, data=data, parameters=parameters))
    outputs = [RequestedOutput(output.name, _parameters(output.parameters, f"output {output.name!r}: parameter"))
               for output in request.outputs]
    return InferRequest(model_name=request.model_name, infer_inputs=inputs, request_id=request.id, from_grpc=True,
                        parameters=_parameters(request.parameters, "parameter"), request_outputs=outputs or None)


def _parameters(parameters: Any, where: str) -> dict[str, Any]:
    """The protocol's gRPC parameters as REST's: each a bool, a whole number or a string. A value of another type
    (tritonclient sends a float as ``double_param``, which this proto does not carry) is refused, not dropped."""
    values: dict[str, Any] = {}
    for key, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is None:
            raise InvalidInput(f"{where} {key!r:.60} has a value the protocol's gRPC parameters do not carry (they "
                               f"carry true/false, whole numbers and strings); send a number as a string")
        values[key] = getattr(value, kind)
    return values


def _no_version(version: str) -> None:
    if version:
        raise _NoVersions(NO_VERSIONS)


class _NoVersions(ModelNotFound):
    """A model version: not found, as on REST."""

    def __init__(self, reason: str) -> None:
        Exception.__init__(self, reason)
        self.reason = reason


class Servicer(InferenceServicer):
    """kserve's servicer over ssdtool's data plane: strict requests, no versions, no repository RPCs."""

    def __init__(self, plane: Any) -> None:
        super().__init__(plane, None)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        _no_version(request.version)
        return await super().ModelReady(request, context)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        _no_version(request.version)
        return await super().ModelMetadata(request, context)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        _no_version(request.model_version)
        response, _headers = await self._data_plane.infer(model_name=request.model_name,
                                                          request=grpc_request(request))
        return response.to_grpc()

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        raise NotImplementedError("this server does not load or unload models")

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        raise NotImplementedError("this server does not load or unload models")


def _interceptor() -> Any:
    import grpc
    from grpc_interceptor import AsyncExceptionToStatusInterceptor

    statuses = error_statuses()

    class ErrorStatus(AsyncExceptionToStatusInterceptor):  # type: ignore[misc]
        """Each error as its gRPC code with the REST message, on one log line; a bug as INTERNAL."""

        async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any,
                                   method_name: str) -> None:
            for error, status, what in statuses:
                if isinstance(ex, error):
                    log.info("%s (gRPC %s): %s", what, method_name, ex)
                    await context.abort(getattr(grpc.StatusCode, CODES[status]), str(ex))
            log.error("unexpected error answering gRPC %s", method_name, exc_info=ex)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(ex).__name__}); the server's log "
                                                         f"has the details")

    return ErrorStatus()


def start_grpc(plane: Any, host: str, port: int, max_request_bytes: int, limits: ConnectionLimits) -> tuple[Any, int]:
    """A gRPC server for ``plane`` bound to ``host:port`` (0: any free port), created in the running event loop;
    returns it (not yet started) and the bound port. A port that cannot be bound is a UsageError."""
    from grpc import aio
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

    from ssdtool.errors import UsageError

    server = aio.server(interceptors=(_interceptor(),), options=server_options(max_request_bytes, limits),
                        maximum_concurrent_rpcs=limits.max_connections)
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(plane), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound = 0
        reason = str(exc)
    else:
        reason = "grpcio could not bind it"
    if not bound:
        raise UsageError(f"cannot listen for gRPC on {address}: {reason}",
                         hint="choose another --grpc-port (0: any free one) or stop what uses it")
    return server, bound
