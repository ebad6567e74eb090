"""The routes as the Open Inference Protocol (v2) sees them, for any host's front: which operations are tensor
functions, their tensors (names, datatypes, shapes: the latent size and image shape of the route's export) and
request parameters. ``infer`` turns a v2 request's input tensors and parameters into the route's own request body
(``handlers.service.Tensors``: validated by the route as any body), has the host's ``predictions`` answer it
through the route's queue, and hands back the answer's arrays as output tensors: the same numbers as
``/predictions/<route>`` answers. Refusals are ``RequestError``s or the route's own error replies; each front
writes them in the protocol's shape."""

from __future__ import annotations

import base64
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from handlers.errors import RequestError
from handlers.service import Reply, Tensors
from runtime.images import png_bytes, tensors_of, to_uint8
from runtime.manifest import Manifest

DATATYPES = {name: np.dtype(kind).newbyteorder("<") for name, kind in (
    ("BOOL", np.bool_), ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32), ("UINT64", np.uint64),
    ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64), ("FP16", np.float16),
    ("FP32", np.float32), ("FP64", np.float64))}  # the protocol's datatypes, little-endian as its binary data is
# Request parameters of the protocol and of Triton's clients (tritonclient sends binary_data_output itself): read by
# the fronts or meaningless here, never a route's field.
RESERVED = ("binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers")
RESERVED_PREFIX = "triton_"
LATENT_TENSORS = ("latents", "mu", "logvar")


@dataclass(frozen=True)
class Operation:
    """An operation as a tensor function: its inputs (name -> the datatypes it takes, the first the one its
    metadata lists), its request parameters (fields of its request body) and its outputs (arrays of its answer)."""

    inputs: dict[str, tuple[str, ...]]
    parameters: tuple[str, ...]
    outputs: tuple[str, ...]


IMAGES_IN = {"images": ("FP32", "UINT8")}
OPERATIONS = {
    "decode": Operation({"latents": ("FP32",)}, (), ("images",)),
    "encode": Operation(IMAGES_IN, (), ("mu", "logvar")),
    "sample": Operation({}, ("n", "seed", "temperature", "class"), ("images", "latents")),
    "reconstruct": Operation(IMAGES_IN, ("samples", "seed"), ("images", "latents", "recon_error", "kl")),
}
Inputs = dict[str, tuple[str, np.ndarray]]  # input name -> (its datatype, its data in that datatype and its shape)


def tensor_data(name: str, datatype: Any, shape: Any, raw: bytes | None = None, values: Any = None) -> np.ndarray:
    """An input tensor's data in its datatype and shape, from ``raw`` little-endian bytes or ``values`` (a flat or
    nested list); a refusal names the input."""
    if datatype not in DATATYPES:
        raise RequestError(name, "wrong_type", f"input '{name}': datatype {datatype!r} is not one of "
                                               f"{', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestError(name, "wrong_type", f"input '{name}': shape must be a list of sizes, got {shape!r}")
    dtype, count = DATATYPES[datatype], math.prod(shape)
    if raw is not None and len(raw) != count * dtype.itemsize:
        raise RequestError(name, "wrong_length", f"input '{name}': {shape} of {datatype} is {count * dtype.itemsize} "
                                                 f"bytes, got {len(raw)}")
    try:
        array = np.frombuffer(raw, dtype) if raw is not None else np.asarray(values, dtype)
        return array.reshape(shape)
    except (ValueError, TypeError, OverflowError) as e:
        raise RequestError(name, "wrong_length", f"input '{name}': its data is not {count} values of {datatype} "
                                                 f"for shape {shape} ({e})") from None


def shown(shape: list[int]) -> str:
    """``[-1, 64]`` -> ``[N, 64]``."""
    return "[" + ", ".join("N" if d == -1 else str(d) for d in shape) + "]"


@dataclass(frozen=True)
class Signature:
    """One route as a v2 model: its operation, and its export's latent size and image shape (C, H, W)."""

    route: str
    operation: str
    latent_dim: int
    image_shape: tuple[int, ...]

    @classmethod
    def of(cls, route: str, operation: str, export_dir: str | Path) -> Signature:
        shapes = Manifest.read(Path(export_dir)).shapes
        return cls(route, operation, shapes.latent_dim, tuple(shapes.image_shape))

    @property
    def tensors(self) -> Operation | None:
        """The operation's tensors; None: not a tensor function (the route answers on ``/predictions`` only)."""
        return OPERATIONS.get(self.operation)

    def shape(self, name: str) -> list[int]:
        """A tensor's shape, -1 for the batch."""
        if name == "images":
            return [-1, *self.image_shape]
        return [-1, self.latent_dim] if name in LATENT_TENSORS else [-1]

    def metadata(self) -> dict:
        """The v2 model metadata: the tensors, or none and where the route answers; the platform names the request
        parameters."""
        tensors = self.tensors
        if tensors is None:
            return {"name": self.route, "versions": [], "inputs": [], "outputs": [],
                    "platform": f"fmvae (no v2 tensors: POST /predictions/{self.route})"}
        parameters = f" (request parameters: {', '.join(tensors.parameters)})" if tensors.parameters else ""
        return {"name": self.route, "versions": [], "platform": "fmvae" + parameters,
                "inputs": [{"name": name, "datatype": types[0], "shape": self.shape(name)}
                           for name, types in tensors.inputs.items()],
                "outputs": [{"name": name, "datatype": "FP32", "shape": self.shape(name)} for name in tensors.outputs]}

    def operation_tensors(self) -> Operation:
        if self.tensors is None:
            raise RequestError("route", "invalid_value", f"{self.route} ({self.operation}) is not a tensor function: "
                                                         f"send its request to POST /predictions/{self.route}")
        return self.tensors

    def body(self, inputs: Inputs, parameters: dict[str, Any], outputs: list[str]) -> Tensors:
        """The route's request for these input tensors, request parameters and requested outputs (none: all)."""
        tensors = self.operation_tensors()
        if inputs.keys() != tensors.inputs.keys():
            taken = ", ".join(f"'{n}' ({' or '.join(t)} {shown(self.shape(n))})" for n, t in tensors.inputs.items())
            raise RequestError("inputs", "invalid_value", f"{self.route} takes input {taken or 'none'}, got "
                                                          f"{', '.join(repr(n) for n in inputs) or 'none'}")
        if unknown := [name for name in outputs if name not in tensors.outputs]:
            raise RequestError("outputs", "invalid_value", f"no output '{unknown[0]}': {self.route} gives "
                                                           f"{', '.join(tensors.outputs)}")
        body: dict[str, Any] = {}
        for name, (datatype, array) in inputs.items():
            if datatype not in tensors.inputs[name]:
                raise RequestError(name, "wrong_type", f"input '{name}' must be {' or '.join(tensors.inputs[name])}, "
                                                       f"got {datatype}")
            want = self.shape(name)
            if array.ndim != len(want) or any(w not in (-1, g) for w, g in zip(want, array.shape, strict=True)):
                size = f" (this model's latent size is {self.latent_dim})" if name == "latents" else ""
                raise RequestError(name, "wrong_length", f"input '{name}' must have shape {shown(want)}{size}, got "
                                                         f"{list(array.shape)}")
            body[name] = array.tolist() if name == "latents" else self.pngs(array, datatype)
        for name, value in parameters.items():
            if name in RESERVED or name.startswith(RESERVED_PREFIX):
                continue
            if name not in tensors.parameters:
                raise RequestError(name, "unknown_field", f"unknown parameter '{name}' ({self.route} takes "
                                                          f"{', '.join(tensors.parameters) or 'none'})")
            body[name] = value
        if self.operation == "sample" and "seed" not in body:  # drawn here: every try of the request is the same
            body["seed"] = secrets.randbits(63)
        return Tensors(body)

    def pngs(self, images: np.ndarray, datatype: str) -> list[str]:
        """Images [N, C, H, W] as the base64 PNGs the route reads: UINT8 pixels as they are, FP32 intensities in
        [0, 1] rounded to 8 bits (round(x * 255))."""
        if datatype == "FP32":
            if not np.isfinite(images).all() or images.min(initial=0) < 0 or images.max(initial=0) > 1:
                raise RequestError("images", "out_of_range", "input 'images' (FP32) must hold intensities in [0, 1]")
            images = to_uint8(images)
        return [base64.b64encode(png_bytes(image.reshape(self.image_shape[1:]))).decode() for image in images]

    def outputs(self, reply: Reply, outputs: list[str]) -> dict[str, np.ndarray]:
        """The requested output tensors (none named: all) of the route's ``tensors`` answer, in the v2 shapes."""
        arrays = tensors_of(reply.body)
        return {name: arrays[name].reshape(self.shape(name)) for name in outputs or self.operation_tensors().outputs}


class Front(Protocol):
    """What the v2 fronts need of a host's process (``serving.kserve.app.App``)."""

    signatures: dict[str, Signature]
    traffic: Any  # serving.kserve.request_path.Traffic: requests in flight, for the drain

    def authorized(self, header: str | None) -> bool: ...

    async def predictions(self, route: str, body: bytes | dict) -> Reply: ...


def signature(front: Front, route: str) -> Signature:
    """The route's signature, or a 404 naming the routes served."""
    if route not in front.signatures:
        raise RequestError("route", "unknown_route", f"no model {route!r} here (served: "
                                                     f"{', '.join(front.signatures)})", 404)
    return front.signatures[route]


async def infer(front: Front, route: str, inputs: Inputs, parameters: dict[str, Any], outputs: list[str]
                ) -> tuple[Reply, dict[str, np.ndarray]]:
    """The route's reply to the v2 request and its output tensors (none when the route refused it)."""
    model = signature(front, route)
    reply = await front.predictions(route, model.body(inputs, parameters, outputs))
    return reply, model.outputs(reply, outputs) if reply.status == 200 else {}


def error_message(reply: Reply) -> str:
    """The message of a route's error reply (the one error shape)."""
    return reply.json()["message"]
