"""The v2 REST front: ``GET /v2/models/<route>`` (metadata) and ``POST /v2/models/<route>/infer`` with JSON tensors
or the binary tensor extension (``Inference-Header-Content-Length``: the JSON header, then each binary tensor's
bytes), as tritonclient and KServe's ``InferenceRESTClient`` send them; outputs are binary where the request asks
(``binary_data_output``, or an output's ``binary_data``). Errors are the protocol's ``{"error": "<message>"}``.
The host's rules have checked the token and the body limit (``serving/kserve/request_path.py``); the other v2 paths
(health, readiness) are KServe's."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from handlers.errors import RequestError
from handlers.service import Reply
from serving.oip.tensors import Front, Inputs, error_message, infer, signature, tensor_data

MODELS = "/v2/models/"
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON = "application/json"


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An error in the protocol's shape."""
    kept = {k: v for k, v in (headers or {}).items() if k.lower() != "content-type"}
    return Reply(status, json.dumps({"error": message}).encode(), JSON, kept)


def refusal(e: RequestError, headers: dict[str, str] | None = None) -> Reply:
    """A refusal of the host's (``RequestError``) in the protocol's shape."""
    return error(e.status, e.message, headers)


async def answer(front: Front, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> Reply | None:
    """The answer of a v2 model metadata or infer request, or None for any other path."""
    if not path.startswith(MODELS):
        return None
    route, _, verb = path.removeprefix(MODELS).partition("/")
    if verb not in ("", "infer") and not verb.startswith("versions/"):  # readiness: KServe's
        return None
    try:
        model = signature(front, route)
        if verb.startswith("versions/"):
            raise RequestError("version", "not_found", "no model versions here: the build that answered is named in "
                                                       f"each answer's X-Model-Build header; use {MODELS}{route}", 404)
        allowed = "POST" if verb else "GET"
        if method != allowed:
            return error(405, f"{method} is not allowed on {path}: send {allowed}", {"Allow": allowed})
        if verb == "":
            return Reply(200, json.dumps(model.metadata()).encode(), JSON, {})
        request, inputs = parse(headers, body)
        wanted = [output["name"] for output in request["outputs"]]
        reply, outputs = await infer(front, route, inputs, request["parameters"], wanted)
    except RequestError as e:
        return refusal(e)
    if reply.status != 200:
        return error(reply.status, error_message(reply), reply.headers)
    binary = request["parameters"].get("binary_data_output") is True
    asked = {o["name"]: o.get("parameters", {}).get("binary_data", binary) is True for o in request["outputs"]}
    return encode(route, request, outputs, {name: asked.get(name, binary) for name in outputs}, reply.headers)


def parse(headers: dict[bytes, bytes], body: bytes) -> tuple[dict, Inputs]:
    """The request's JSON header (``parameters`` and ``outputs`` filled in) and its input tensors."""
    if headers.get(b"content-encoding", b"identity") != b"identity":
        raise RequestError("Content-Encoding", "invalid_value", "send the request body uncompressed")
    length = headers.get(HEADER_LENGTH.lower().encode())
    try:
        size = len(body) if length is None else int(length)
        request = json.loads(body[:size])
    except (ValueError, UnicodeDecodeError) as e:
        what = "body" if length is None else f"JSON header ({HEADER_LENGTH}: {length.decode('latin-1')})"
        raise RequestError("body", "malformed_json", f"the request's {what} is not JSON: {e}") from None
    if not isinstance(request, dict) or not 0 <= size <= len(body):
        raise RequestError("body", "malformed_json", "the request's JSON header must be an object, of at most the "
                                                     "body's length")
    request.setdefault("parameters", {})
    request.setdefault("outputs", [])
    if not isinstance(request["parameters"], dict) or not isinstance(request["outputs"], list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in request["outputs"]):
        raise RequestError("body", "wrong_type", "parameters must be an object and outputs a list of {name, "
                                                 "parameters}")
    inputs, offset = {}, size
    for item in request.get("inputs", []):
        name, array, used = tensor(item, body, offset)
        inputs[name] = (item["datatype"], array)
        offset += used
    return request, inputs


def tensor(item: Any, body: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    """One input tensor: its name, its data (JSON ``data``, or the binary bytes at ``offset``) and the binary bytes
    it used."""
    if not isinstance(item, dict) or not isinstance(name := item.get("name"), str):
        raise RequestError("inputs", "wrong_type", "each input must be an object with a name")
    if "data" in item:
        return name, tensor_data(name, item.get("datatype"), item.get("shape"), values=item["data"]), 0
    size = (item.get("parameters") or {}).get("binary_data_size")
    if not isinstance(size, int) or not 0 <= size <= len(body) - offset:
        raise RequestError(name, "missing_field", f"input '{name}' has no data: send data, or binary data after the "
                                                  "JSON header and its parameters.binary_data_size (got "
                                                  f"{size!r}, {len(body) - offset} bytes left)")
    return name, tensor_data(name, item.get("datatype"), item.get("shape"), raw=body[offset:offset + size]), size


def encode(route: str, request: dict, outputs: dict[str, np.ndarray], binary: dict[str, bool],
           headers: dict[str, str]) -> Reply:
    """The infer response: the outputs as JSON data, or binary after the JSON header where ``binary`` says."""
    entries, blobs = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if binary[name]:
            blobs.append(np.ascontiguousarray(array, "<f4").tobytes())
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    head = {"model_name": route, "outputs": entries} | ({"id": request["id"]} if "id" in request else {})
    if "X-Seed" in headers:
        head["parameters"] = {"seed": int(headers["X-Seed"])}
    text = json.dumps(head).encode()
    if not blobs:
        return Reply(200, text, JSON, headers)
    return Reply(200, b"".join([text, *blobs]), "application/octet-stream", headers | {HEADER_LENGTH: str(len(text))})
