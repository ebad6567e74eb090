"""The Open Inference Protocol (v2) on the KServe and Ray hosts, driven by the clients teams already have:
tritonclient over HTTP (JSON and binary tensors) and gRPC, KServe's ``InferenceRESTClient`` and
``InferenceGRPCClient``. Metadata lists each tensor route's tensors; decode, encode, seeded sample and reconstruct
infer the same numbers as ``/predictions/<route>`` npy; bad datatypes, shapes and latent sizes are 4xx naming the
problem, in the protocol's error shape; the body limit and the route queues hold on the v2 paths. The first tests
need no host: the worker's ``Tensors`` answer and the REST front over a route's worker in this process.

tritonclient's gRPC client runs in a process of its own: its messages and KServe's define the same protobuf symbols,
and a process can load only one of the two (this one loads KServe's, with the KServe host's modules)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as triton_http
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from PIL import Image
from tritonclient.utils import InferenceServerException

from handlers.service import Reply, Tensors
from runtime.images import tensors_of
from serving.inprocess import InProcessWorker
from serving.oip import rest
from serving.oip.tensors import Signature
from serving.routes import example
from serving.settings import MODELS
from tests.conftest import ARTIFACTS

IMAGE = example("encode")["images"][0]  # a base64 PNG, 28x28 grayscale
PIXELS = np.asarray(Image.open(io.BytesIO(base64.b64decode(IMAGE))))[None, None]  # UINT8 [1, 1, 28, 28]
TOLERANCE = 1e-6
TRITON_GRPC = """
import json, sys
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException
address, calls = json.loads(sys.stdin.read())
client, found = triton.InferenceServerClient(address), []
for route, inputs, parameters in calls:
    try:
        if inputs is None:
            found.append(client.get_model_metadata(route, as_json=True))
            continue
        tensors = [triton.InferInput(name, list(np.shape(data)), datatype).set_data_from_numpy(
            np.asarray(data, {"FP32": np.float32, "FP64": np.float64, "UINT8": np.uint8}[datatype]))
            for name, datatype, data in inputs]
        result = client.infer(route, tensors, parameters=parameters)
        found.append({o["name"]: result.as_numpy(o["name"]).tolist()
                      for o in result.get_response(as_json=True)["outputs"]})
    except InferenceServerException as e:
        found.append({"status": e.status(), "message": e.message()})
print(json.dumps(found))
"""


def triton_grpc(port: int, calls: list[tuple]) -> list[dict]:
    """tritonclient's gRPC answers to ``calls``, each (route, None) for metadata or (route, inputs as (name,
    datatype, nested list), parameters) for an inference: the metadata, the outputs by name, or the error's status
    and message."""
    done = subprocess.run([sys.executable, "-c", TRITON_GRPC], input=json.dumps([f"127.0.0.1:{port}", calls]),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def predictions(host, route: str, body: dict) -> np.ndarray | dict:  # noqa: ANN001
    """``/predictions/<route>``'s answer: the npy array, or the json body."""
    request = urllib.request.Request(f"{host.url}/predictions/{route}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read()
    return np.load(io.BytesIO(raw)) if body.get("format") == "npy" else json.loads(raw)


def v2(host, path: str, data: bytes | None = None, headers: dict | None = None,  # noqa: ANN001
       method: str | None = None) -> tuple[int, dict, bytes]:
    """A raw request to a v2 path: (status, lower-case headers, body)."""
    request = urllib.request.Request(f"{host.url}{path}", data, headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@pytest.fixture(scope="module", params=["kserve_host", "ray_host"])
def v2_host(request):
    """The host the v2 tests drive: the KServe host, then the Ray host (its front is the KServe host's)."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def grpc_port(v2_host, request) -> int:
    """The loopback port of ``v2_host``'s v2 gRPC service."""
    return request.getfixturevalue(f"{v2_host.kind}_grpc_port")


@pytest.fixture(scope="module")
def http(v2_host):
    """tritonclient's HTTP client of the host."""
    client = triton_http.InferenceServerClient(v2_host.url.removeprefix("http://"))
    yield client
    client.close()


def triton_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton_http.InferInput:
    return triton_http.InferInput(name, list(array.shape), datatype).set_data_from_numpy(array, binary_data=binary)


class InProcessFront:
    """The v2 front's view of a host process (``serving.oip.tensors.Front``) over routes' workers in this process."""

    def __init__(self, *routes: str) -> None:
        self.workers = {route: InProcessWorker(route, ARTIFACTS.parent) for route in routes}
        self.signatures = {route: Signature.of(route, MODELS[route].handler.stem,
                                               ARTIFACTS.parent / MODELS[route].export) for route in routes}

    async def predictions(self, route: str, body: bytes | dict) -> Reply:
        return self.workers[route].service.answer([body])[0]


def test_a_tensors_body_is_answered_with_the_answers_arrays_by_name():
    """The worker answers a ``Tensors`` body with the arrays its npy and json answers hold, float32."""
    decode, sample = InProcessWorker("decode", ARTIFACTS.parent), InProcessWorker("sample", ARTIFACTS.parent)
    z = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32).tolist()
    (tensors, npy) = decode.service.answer([Tensors({"latents": z}), {"latents": z, "format": "npy"}])
    assert tensors.status == 200 and tensors.content_type == "application/x-fmvae-tensors"
    assert np.array_equal(tensors_of(tensors.body)["images"], np.load(io.BytesIO(npy.body)))
    request = {"n": 4, "seed": 5, "class": "Bag"}
    (tensors, answer) = sample.service.answer([Tensors(request), request | {"format": "json"}])
    arrays = tensors_of(tensors.body)
    assert arrays["images"].shape == (4, 28, 28) and tensors.headers["X-Seed"] == "5"
    assert np.array_equal(arrays["latents"], np.asarray(answer.json()["latents"], np.float32))


def test_the_rest_front_reads_json_and_binary_tensors_alike():
    front = InProcessFront("decode")
    z = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    head = json.dumps({"inputs": [{"name": "latents", "datatype": "FP32", "shape": [2, 64],
                                   "parameters": {"binary_data_size": z.nbytes}}],
                       "parameters": {"binary_data_output": True}, "id": "x1"}).encode()
    binary = asyncio.run(rest.answer(front, "POST", "/v2/models/decode/infer",
                                     {b"inference-header-content-length": str(len(head)).encode()}, head + z.tobytes()))
    size = int(binary.headers[rest.HEADER_LENGTH])
    answer = json.loads(binary.body[:size])
    assert answer["id"] == "x1" and answer["outputs"][0]["shape"] == [2, 1, 28, 28]
    images = np.frombuffer(binary.body[size:], "<f4").reshape(2, 1, 28, 28)
    body = json.dumps({"inputs": [{"name": "latents", "datatype": "FP32", "shape": [2, 64], "data": z.tolist()}]})
    plain = asyncio.run(rest.answer(front, "POST", "/v2/models/decode/infer", {}, body.encode()))
    assert plain.content_type == "application/json" and rest.HEADER_LENGTH not in plain.headers
    assert np.array_equal(np.asarray(json.loads(plain.body)["outputs"][0]["data"], np.float32).reshape(images.shape),
                          images)
    refused = asyncio.run(rest.answer(front, "POST", "/v2/models/decode/infer", {}, body.replace("FP32", "INT8")
                                      .encode()))
    assert refused.status == 400 and json.loads(refused.body) == {"error": "input 'latents' must be FP32, got INT8"}
    assert asyncio.run(rest.answer(front, "GET", "/v2/models/decode/ready", {}, b"")) is None  # KServe's


def test_metadata_lists_the_tensors_of_each_tensor_route(http):
    (latents,), (images,) = http.get_model_metadata("decode")["inputs"], http.get_model_metadata("decode")["outputs"]
    assert latents == {"name": "latents", "datatype": "FP32", "shape": [-1, 64]}
    assert images == {"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    assert http.get_model_metadata("decode2d")["inputs"][0]["shape"] == [-1, 2]  # the latent size of its manifest
    assert http.get_model_metadata("encode")["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert [o["name"] for o in http.get_model_metadata("encode")["outputs"]] == ["mu", "logvar"]
    sample = http.get_model_metadata("sample")
    assert sample["inputs"] == [] and [o["name"] for o in sample["outputs"]] == ["images", "latents"]
    assert "n, seed, temperature, class" in sample["platform"]
    assert [o["name"] for o in http.get_model_metadata("reconstruct")["outputs"]] == [
        "images", "latents", "recon_error", "kl"]
    walk = http.get_model_metadata("walk")
    assert walk["inputs"] == walk["outputs"] == [] and "POST /predictions/walk" in walk["platform"]


def test_decode_through_every_client_gives_the_predictions_numbers(v2_host, grpc_port, http):
    z = np.clip(np.random.default_rng(0).standard_normal((5, 64)), -3, 3).astype(np.float32)
    expected = predictions(v2_host, "decode", {"latents": z.tolist(), "format": "npy"})[:, None]
    answers = [http.infer("decode", [triton_input("latents", z, "FP32", binary)],
                          outputs=[triton_http.InferRequestedOutput("images", binary_data=binary)]).as_numpy("images")
               for binary in (True, False)]

    async def kserve_clients() -> list[np.ndarray]:
        rest, found = InferenceRESTClient(RESTConfig(protocol="v2")), []
        for binary in (True, False):
            tensor = InferInput("latents", list(z.shape), "FP32")
            tensor.set_data_from_numpy(z, binary_data=binary)
            response = await rest.infer(v2_host.url, InferRequest("decode", [tensor]), model_name="decode")
            found.append(response.outputs[0].as_numpy())
        await rest.close()
        tensor = InferInput("latents", list(z.shape), "FP32")
        tensor.set_data_from_numpy(z)
        async with InferenceGRPCClient(f"127.0.0.1:{grpc_port}") as client:
            found.append((await client.infer(InferRequest("decode", [tensor]))).outputs[0].as_numpy())
        return found

    answers += asyncio.run(kserve_clients())
    (by_grpc,) = triton_grpc(grpc_port, [("decode", [("latents", "FP32", z.tolist())], {})])
    answers.append(np.asarray(by_grpc["images"], np.float32))
    for answer in answers:
        assert answer.dtype == np.float32 and answer.shape == (5, 1, 28, 28)
        assert np.abs(answer - expected).max() <= TOLERANCE


def test_encode_sample_and_reconstruct_give_the_predictions_numbers(v2_host, grpc_port, http):
    """encode of UINT8 pixels and of FP32 intensities (over gRPC), seeded sample (a drawn seed is in the answer's
    parameters), and reconstruct: the numbers of ``/predictions`` npy (sample's latents and reconstruct's other
    outputs: its json answer's)."""
    noise = np.random.default_rng(1).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
    pixels = np.concatenate([PIXELS, noise])
    buffer = io.BytesIO()
    Image.fromarray(noise[0, 0], mode="L").save(buffer, format="PNG")
    encoded = predictions(v2_host, "encode", {"images": [IMAGE, base64.b64encode(buffer.getvalue()).decode()],
                                                  "format": "npy"})
    sample = {"n": 5, "seed": 3, "temperature": 0.8, "class": "Sneaker"}
    images = predictions(v2_host, "sample", sample | {"format": "npy"})[:, None]
    latents = np.asarray(predictions(v2_host, "sample", sample | {"format": "json"})["latents"], np.float32)
    by_grpc = triton_grpc(grpc_port, [("encode", [("images", "FP32", (pixels / 255).tolist())], {}),
                                             ("sample", [], sample)])
    encode, drawn = http.infer("encode", [triton_input("images", pixels, "UINT8")]), http.infer("sample", [],
                                                                                              parameters=sample)
    by_http = [{n: encode.as_numpy(n) for n in ("mu", "logvar")}, {n: drawn.as_numpy(n) for n in ("images", "latents")}]
    for encode, drawn in (by_grpc, by_http):
        assert np.abs(np.asarray(encode["mu"]) - encoded[:, 0]).max() <= TOLERANCE
        assert np.abs(np.asarray(encode["logvar"]) - encoded[:, 1]).max() <= TOLERANCE
        assert np.abs(np.asarray(drawn["images"]) - images).max() <= TOLERANCE
        assert np.abs(np.asarray(drawn["latents"]) - latents).max() <= TOLERANCE
    unseeded = http.infer("sample", [], parameters={"n": 2})
    seed = unseeded.get_response()["parameters"]["seed"]
    again = predictions(v2_host, "sample", {"n": 2, "seed": seed, "format": "npy"})[:, None]
    assert np.abs(unseeded.as_numpy("images") - again).max() <= TOLERANCE
    reconstruct = {"images": [IMAGE], "samples": 4, "seed": 2}
    result = http.infer("reconstruct", [triton_input("images", PIXELS, "UINT8")], parameters={"samples": 4, "seed": 2})
    recon = predictions(v2_host, "reconstruct", reconstruct | {"format": "npy"})[:, None]
    assert np.abs(result.as_numpy("images") - recon).max() <= TOLERANCE
    answer = predictions(v2_host, "reconstruct", reconstruct | {"format": "json"})
    for name in ("recon_error", "kl", "latents"):
        assert np.abs(result.as_numpy(name) - np.asarray(answer[name], np.float32)).max() <= TOLERANCE


def v2_infer(inputs: list[dict], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


LATENT = {"name": "latents", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
BAD = [  # (route, body, status, words of the message)
    ("decode", v2_infer([LATENT | {"datatype": "FP64"}]), 400, ["'latents'", "FP32", "FP64"]),
    ("decode", v2_infer([LATENT | {"shape": [1, 3], "data": [0.0] * 3}]), 400, ["[N, 64]", "latent size is 64"]),
    ("decode2d", v2_infer([LATENT]), 400, ["[N, 2]", "latent size is 2", "[1, 64]"]),
    ("decode", v2_infer([LATENT | {"shape": [1, 64], "data": [0.0] * 3}]), 400, ["64 values", "FP32"]),
    ("decode", v2_infer([LATENT | {"datatype": "STRING"}]), 400, ["'STRING'", "FP32"]),
    ("decode", v2_infer([LATENT | {"name": "z"}]), 400, ["'latents'", "'z'"]),
    ("decode", v2_infer([LATENT | {"data": [200.0] * 64}]), 400, ["latents[0][0]", "[-100, 100]"]),
    ("decode", v2_infer([LATENT], outputs=[{"name": "pixels"}]), 400, ["'pixels'", "images"]),
    ("decode", b"{not json", 400, ["JSON"]),
    ("encode", v2_infer([{"name": "images", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [2.0] * 784}]), 400,
     ["[0, 1]"]),
    ("encode", v2_infer([{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}]), 400,
     ["[N, 1, 28, 28]"]),
    ("sample", v2_infer([], parameters={"n": 0}), 400, ["n must be in [1, 256]"]),
    ("sample", v2_infer([], parameters={"around": 1}), 400, ["'around'", "n, seed, temperature, class"]),
    ("walk", v2_infer([]), 400, ["POST /predictions/walk"]),
    ("nope", v2_infer([]), 404, ["'nope'"]),
]


@pytest.mark.parametrize(("route", "body", "status", "words"), BAD, ids=[f"{r}-{i}" for i, (r, *_) in enumerate(BAD)])
def test_a_bad_v2_request_is_a_4xx_in_the_protocols_shape_naming_the_problem(v2_host, route, body, status,
                                                                             words):
    code, headers, answer = v2(v2_host, f"/v2/models/{route}/infer", body, {"Content-Type": "application/json"})
    error = json.loads(answer)
    assert code == status and set(error) == {"error"} and headers["content-type"] == "application/json", error
    assert all(word in error["error"] for word in words), error


def test_bad_binary_tensors_methods_and_grpc_calls_are_refused(v2_host, grpc_port, http):
    head = json.dumps({"inputs": [{k: v for k, v in LATENT.items() if k != "data"} |
                                  {"parameters": {"binary_data_size": 256}}]}).encode()
    short = v2(v2_host, "/v2/models/decode/infer", head + b"\0" * 100,
               {"Inference-Header-Content-Length": str(len(head))})
    assert short[0] == 400 and "256" in json.loads(short[2])["error"]
    wrong = v2(v2_host, "/v2/models/decode/infer", method="GET")
    assert (wrong[0], wrong[1]["allow"]) == (405, "POST") and "send POST" in json.loads(wrong[2])["error"]
    assert v2(v2_host, "/v2/models/decode/versions/1/infer", b"{}")[0] == 404
    for path, data, status in (("/v2/no/such/path", None, 404), ("/v2/health/live", b"", 405)):  # KServe's paths
        code, _, answer = v2(v2_host, path, data)
        assert code == status and set(json.loads(answer)) == {"error"}
    with pytest.raises(InferenceServerException, match="must be FP32, got FP64"):
        http.infer("decode", [triton_input("latents", np.zeros((1, 64)), "FP64")])
    shape, datatype, model = triton_grpc(grpc_port, [("decode", [("latents", "FP32", [[0.0] * 3] * 2)], {}),
                                                            ("decode", [("latents", "FP64", [[0.0] * 64])], {}),
                                                            ("nope", None, None)])
    assert shape["status"] == "StatusCode.INVALID_ARGUMENT" and "latent size is 64), got [2, 3]" in shape["message"]
    assert datatype["status"] == "StatusCode.INVALID_ARGUMENT" and "must be FP32, got FP64" in datatype["message"]
    assert model["status"] == "StatusCode.NOT_FOUND" and "no model 'nope'" in model["message"]


def test_the_body_limit_and_the_queue_bound_hold_on_v2(v2_host):
    limit = v2_host.config.max_request_size
    big = v2_infer([LATENT], pad="x" * limit)
    code, headers, answer = v2(v2_host, "/v2/models/decode/infer", big, {"Content-Type": "application/json"})
    assert code == 413 and str(limit) in json.loads(answer)["error"]
    pixels = np.random.default_rng(2).integers(0, 256, (8, 1, 28, 28), dtype=np.uint8)
    body = v2_infer([{"name": "images", "datatype": "UINT8", "shape": list(pixels.shape),
                      "data": pixels.ravel().tolist()}], parameters={"samples": 64})
    with ThreadPoolExecutor(80) as pool:
        results = list(pool.map(lambda _: v2(v2_host, "/v2/models/reconstruct/infer", body), range(80)))
    refused = [(headers.get("retry-after"), json.loads(answer)) for code, headers, answer in results if code == 503]
    assert refused and len(refused) < len(results) and {code for code, _, _ in results} == {200, 503}
    assert all(after == "1" and "queue is full" in error["error"] for after, error in refused)
