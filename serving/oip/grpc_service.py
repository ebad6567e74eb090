"""The v2 gRPC front: the protocol's ``inference.GRPCInferenceService`` (KServe's generated service, which
tritonclient's gRPC client and KServe's ``InferenceGRPCClient`` call): liveness, readiness, server and model
metadata and ``ModelInfer`` over the same signatures and route queues as the REST front (``tensors.py``). Inputs as
``raw_input_contents`` or typed contents; outputs always as ``raw_output_contents``. With token auth every call
needs the metadata ``authorization: Bearer <inference key>``. Errors are gRPC status codes with the message; a
message over the body limit is refused by gRPC itself (RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import os
import struct
import time
from importlib import metadata
from typing import Any

import grpc
import numpy as np
from google.protobuf.unknown_fields import UnknownFieldSet
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from handlers.errors import RequestError
from handlers.service import MODEL_HEADER
from serving.oip import GRPC_PORT_ENV
from serving.oip.tensors import Front, Inputs, error_message, infer, signature, tensor_data

GRACE_S = 30.0  # how long a draining process's calls in flight may take
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}  # FP16: raw only


def parameter(value: pb.InferParameter) -> Any:
    """A request parameter's value. KServe 0.21's messages lack the protocol's ``double_param`` (field 4, which
    tritonclient sends for a float) and ``uint64_param`` (5): those are read from the unknown fields."""
    if kind := value.WhichOneof("parameter_choice"):
        return getattr(value, kind)
    for field in UnknownFieldSet(value):
        if field.field_number == 4:  # fixed64: the double's bits
            return struct.unpack("<d", struct.pack("<Q", field.data))[0]
        if field.field_number == 5:
            return field.data
    return None


def inputs_of(request: pb.ModelInferRequest) -> Inputs:
    """The request's input tensors, from ``raw_input_contents`` (one per input) or each input's contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError("inputs", "wrong_length", f"{len(raw)} raw_input_contents for {len(request.inputs)} "
                                                     "inputs: send one per input, or none")
    inputs = {}
    for i, tensor in enumerate(request.inputs):
        values = getattr(tensor.contents, CONTENTS.get(tensor.datatype, "bytes_contents"))
        inputs[tensor.name] = (tensor.datatype, tensor_data(tensor.name, tensor.datatype, list(tensor.shape),
                                                            raw[i] if raw else None, list(values)))
    return inputs


class Service(pb_grpc.GRPCInferenceServiceServicer):
    """The service over a host process's routes (``front``)."""

    def __init__(self, front: Front) -> None:
        self.front = front

    async def allowed(self, context: grpc.aio.ServicerContext) -> None:
        header = dict(context.invocation_metadata() or ()).get("authorization")
        if not self.front.authorized(header):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "send the metadata 'authorization: Bearer <inference key>'")

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        await self.allowed(context)
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        await self.allowed(context)
        return pb.ServerReadyResponse(ready=not self.front.traffic.draining)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        await self.allowed(context)
        return pb.ModelReadyResponse(ready=request.name in self.front.signatures)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        await self.allowed(context)  # the same as KServe's REST /v2 answers
        return pb.ServerMetadataResponse(name="kserve", version=metadata.version("kserve"))

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        await self.allowed(context)
        try:
            described = signature(self.front, request.name).metadata()
        except RequestError as e:
            await context.abort(CODES.get(e.status, grpc.StatusCode.INTERNAL), e.message)
        tensors = {side: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in described[side]]
                   for side in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=described["name"], platform=described["platform"], **tensors)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        await self.allowed(context)
        traffic = self.front.traffic  # counted as the REST requests are: the drain waits for them
        traffic.in_flight += 1
        traffic.last = time.monotonic()
        try:
            try:
                parameters = {k: parameter(v) for k, v in request.parameters.items()}
                reply, outputs = await infer(self.front, request.model_name, inputs_of(request), parameters,
                                             [output.name for output in request.outputs])
                status, message = reply.status, error_message(reply) if reply.status != 200 else ""
            except RequestError as e:
                status, message = e.status, e.message
            if status != 200:
                await context.abort(CODES.get(status, grpc.StatusCode.INTERNAL), message)
            context.set_trailing_metadata(((MODEL_HEADER.lower(), reply.headers.get(MODEL_HEADER, "")),))
            response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            for name, array in outputs.items():
                response.outputs.add(name=name, datatype="FP32", shape=list(array.shape))
                response.raw_output_contents.append(np.ascontiguousarray(array, "<f4").tobytes())
            if "X-Seed" in reply.headers:
                response.parameters["seed"].int64_param = int(reply.headers["X-Seed"])
            return response
        finally:
            traffic.in_flight -= 1
            traffic.last = time.monotonic()


def port() -> int:
    """The service's port (``GRPC_PORT_ENV``); 0: off."""
    return int(os.environ.get(GRPC_PORT_ENV) or 0)


async def serve(front: Front, port: int, max_message_bytes: int) -> grpc.aio.Server:
    """The service started on loopback ``port`` in this process's event loop, sharing the port with the host's
    other processes (SO_REUSEPORT)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1),
                                      ("grpc.max_receive_message_length", max_message_bytes)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Service(front), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server
