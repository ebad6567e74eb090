"""The handlers, in this process (``api``'s inprocess variant) and in a real TorchServe on free loopback ports,
archives built from the committed export artifacts (and, for the 2-d model, from a small export of the session).
Tests that take ``api`` run in both; tests of the server itself take ``server``."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from handlers import metrics
from handlers.config import WorkerConfig
from handlers.device import worker_threads
from handlers.errors import ConfigError
from handlers.schema import SPEC, RequestSchema
from handlers.service import Worker
from runtime import artifacts, backends
from runtime.latent import seeded_latents
from runtime.manifest import FILE as MANIFEST
from runtime.manifest import Manifest
from serving.__main__ import fallback_warnings
from serving.errors import ServerError
from serving.routes import example
from serving.settings import MODELS, ROOT, STORE_WORKERS, ServerConfig, TorchServeConfig
from serving.torchserve import archive
from serving.torchserve.host import TorchServe
from tests.conftest import ARTIFACTS, LATENT, b64png, npy, png, post

STATS = artifacts.read_stats(ARTIFACTS / artifacts.STATS)  # a seed's point is the model's prior draw

def scrape(server) -> list[tuple[str, dict, float]]:
    """The handlers' metrics as (name, labels, value) samples, via prometheus_client's own parser."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def scrape_when(server, ready, timeout: float = 5.0) -> list[tuple[str, dict, float]]:
    """The first scrape in which ``ready(samples)`` holds: workers write their metrics within 50 ms of replying."""
    deadline = time.monotonic() + timeout
    while not ready(samples := scrape(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return samples


def settled_scrape(server) -> list[tuple[str, dict, float]]:
    """A scrape that a second one 0.2 s later repeats (usage gauges aside): earlier requests' metric writes,
    which workers make up to 50 ms after replying, have all landed."""
    def handler_samples(samples: list) -> list:
        return [s for s in samples if not s[0].startswith("fmvae_worker_")]

    last = scrape(server)
    for _ in range(25):
        time.sleep(0.2)
        if handler_samples(samples := scrape(server)) == handler_samples(last):
            return samples
        last = samples
    raise AssertionError("the handler metrics kept changing with no requests sent")


def value(samples: list, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there are none)."""
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


def test_sample_formats(api):
    code, headers, body = post(api, "sample", {"n": 5, "seed": 3, "format": "npy"})
    assert code == 200 and headers["content-type"] == "application/x-npy" and headers["x-seed"] == "3"
    images = npy(body)
    assert images.shape == (5, 28, 28) and images.dtype == np.float32 and 0 <= images.min() < images.max() <= 1

    code, headers, body = post(api, "sample", {"n": 5, "seed": 3, "format": "json"})
    reply = json.loads(body)
    assert code == 200 and headers["content-type"] == "application/json" and reply["seed"] == 3
    assert reply["backend"] == "onnx-int8" and reply["device"] == "cpu"
    assert np.allclose(reply["latents"], STATS.prior_latents(3, 5), atol=1e-5)
    decoded = np.stack([png(base64.b64decode(s)) for s in reply["images"]])
    assert decoded.shape == (5, 28, 28)
    assert np.abs(decoded.astype(int) - (images * 255).round()).max() <= 1

    code, headers, body = post(api, "sample", {"n": 5, "seed": 3})  # default format: one png grid
    grid = png(body)
    assert code == 200 and headers["content-type"] == "image/png"
    assert grid.shape == (2 + 2 * 30, 2 + 3 * 30)  # 5 images: 3 columns, 2 rows, 2-pixel gaps
    assert np.array_equal(grid[2:30, 2:30], decoded[0])


def test_sample_is_a_function_of_the_seed(api):
    a = npy(post(api, "sample", {"n": 8, "seed": 11, "format": "npy"})[2])
    b = npy(post(api, "sample", {"n": 8, "seed": 11, "format": "npy"})[2])
    prefix = npy(post(api, "sample", {"n": 3, "seed": 11, "format": "npy"})[2])
    other = npy(post(api, "sample", {"n": 8, "seed": 12, "format": "npy"})[2])
    assert np.array_equal(a, b)
    assert np.allclose(prefix, a[:3], atol=1e-6)
    assert np.abs(a - other).mean() > 0.05
    code, headers, body = post(api, "sample", {"n": 2, "format": "npy"})  # no seed: one is drawn and returned
    drawn = int(headers["x-seed"])
    assert code == 200 and drawn < 2**63
    assert np.array_equal(npy(body), npy(post(api, "sample", {"n": 2, "seed": drawn, "format": "npy"})[2]))
    assert int(post(api, "sample", {"n": 1, "format": "npy"})[1]["x-seed"]) != drawn


def test_integer_valued_numbers_count_as_integers(api):
    """JSON Schema's integer type accepts 2.0; the handlers must then treat it as 2, not fail."""
    code, headers, body = post(api, "sample", {"n": 3.0, "seed": 11.0, "format": "npy"})
    assert code == 200 and headers["x-seed"] == "11"
    assert np.array_equal(npy(body), npy(post(api, "sample", {"n": 3, "seed": 11, "format": "npy"})[2]))
    code, _, body = post(api, "interpolate", {"seeds": [1.0, 2], "steps": 4.0, "format": "npy"})
    assert code == 200 and npy(body).shape == (4, 28, 28)


def test_temperature_scales_the_latents(api):
    cold = json.loads(post(api, "sample", {"n": 4, "seed": 5, "temperature": 0.5, "format": "json"})[2])
    assert np.allclose(cold["latents"], STATS.prior_latents(5, 4, 0.5), atol=1e-5)


def test_interpolate_from_seeds_lerp_and_slerp(api):
    ends = STATS.prior_latents(1, 1)[0], STATS.prior_latents(2, 1)[0]
    norms = {}
    for method in ("lerp", "slerp"):
        code, _, body = post(api, "interpolate", {"seeds": [1, 2], "steps": 9, "method": method, "format": "json"})
        reply = json.loads(body)
        z = np.array(reply["latents"])
        assert code == 200 and z.shape == (9, LATENT) and len(reply["images"]) == 9
        assert np.allclose(z[0], ends[0], atol=1e-5) and np.allclose(z[-1], ends[1], atol=1e-5)
        norms[method] = np.linalg.norm(z, axis=1)
    # slerp keeps the norm on the line between the endpoints' norms; lerp cuts inside the shell
    expected = np.linspace(np.linalg.norm(ends[0]), np.linalg.norm(ends[1]), 9)
    assert np.allclose(norms["slerp"], expected, rtol=1e-4)
    assert norms["lerp"][4] < 0.85 * expected[4]


def test_interpolate_formats_and_latent_input(api):
    z = np.random.default_rng(0).standard_normal((2, LATENT)).round(3)
    body = {"latents": z.tolist(), "steps": 20, "method": "lerp"}
    code, headers, grid = post(api, "interpolate", body)
    assert code == 200 and headers["content-type"] == "image/png"
    assert png(grid).shape == (2 + 2 * 30, 2 + 16 * 30)  # rows of 16
    images = npy(post(api, "interpolate", body | {"format": "npy"})[2])
    reply = json.loads(post(api, "interpolate", body | {"format": "json"})[2])
    assert images.shape == (20, 28, 28)
    assert np.allclose(reply["latents"][0], z[0], atol=1e-6) and np.allclose(reply["latents"][-1], z[1], atol=1e-6)


def test_interpolate_from_images_uses_posterior_means(api):
    pixels = (npy(post(api, "sample", {"n": 2, "seed": 7, "format": "npy"})[2]) * 255).round().astype(np.uint8)
    code, _, body = post(api, "interpolate", {"images": [b64png(p) for p in pixels], "steps": 5,
                                                 "format": "json"})
    assert code == 200
    encoder = backends.load(artifacts.ENCODERS["onnx-fp32"], ARTIFACTS)
    mu, _ = encoder(pixels[:, None].astype(np.float32) / 255)
    z = np.array(json.loads(body)["latents"])
    assert np.allclose(z[0], mu[0], atol=1e-4) and np.allclose(z[-1], mu[1], atol=1e-4)


GOOD_PNG = b64png(np.zeros((28, 28), np.uint8))
BAD_INPUTS = [
    ("sample", b"{bad json", 400, "body", "malformed_json"),
    ("sample", b"\xff\xfe", 400, "body", "malformed_json"),
    ("sample", b"", 400, "body", "malformed_json"),
    ("sample", b"[1, 2]", 400, "body", "not_an_object"),
    ("sample", {"n": 2, "colour": "red"}, 400, "colour", "unknown_field"),
    ("sample", {"n": "2"}, 400, "n", "wrong_type"),
    ("sample", {"n": 2.5}, 400, "n", "wrong_type"),
    ("sample", {"n": True}, 400, "n", "wrong_type"),
    ("sample", {"n": 0}, 400, "n", "out_of_range"),
    ("sample", {"n": 257}, 400, "n", "out_of_range"),
    ("sample", {"seed": -1}, 400, "seed", "out_of_range"),
    ("sample", {"temperature": 0}, 400, "temperature", "out_of_range"),
    ("sample", {"temperature": 2.5}, 400, "temperature", "out_of_range"),
    ("sample", b'{"temperature": NaN}', 400, "temperature", "not_finite"),
    ("sample", b'{"temperature": Infinity}', 400, "temperature", "not_finite"),
    ("sample", {"format": "gif"}, 400, "format", "invalid_value"),
    ("sample", b'{"n": 1, "pad": "' + b"x" * 600_000 + b'"}', 413, "body", "body_too_large"),
    # Nested past what Python's parser takes (it raises RecursionError): malformed, not a server fault.
    ("sample", b"[" * 5000 + b"]" * 5000, 400, "body", "malformed_json"),
    ("sample", b'{"n": ' + b"[" * 20_000, 400, "body", "malformed_json"),
    ("sample", b'{"n": ' + b"[" * 600 + b"]" * 600 + b"}", 400, "n", "wrong_type"),  # deep, but parsed
    ("interpolate", {"steps": 5}, 400, "seeds|latents|images|classes", "missing_endpoints"),
    ("interpolate", {"seeds": [1, 2], "latents": [[0] * LATENT] * 2}, 400, "seeds|latents|images|classes",
     "missing_endpoints"),
    ("interpolate", {"seeds": [1]}, 400, "seeds", "wrong_length"),
    ("interpolate", {"latents": [[0.0] * LATENT, [0.0] * (LATENT - 1)]}, 400, "latents[1]", "wrong_length"),
    ("interpolate", {"latents": [[0.0] * LATENT, [0.0] * (LATENT - 1) + ["x"]]}, 400, f"latents[1][{LATENT - 1}]",
     "wrong_type"),
    ("interpolate", b'{"latents": [[' + b"0," * (LATENT - 1) + b'NaN], [' + b"0," * (LATENT - 1) + b"0]]}", 400,
     f"latents[0][{LATENT - 1}]", "not_finite"),
    ("interpolate", {"seeds": [1, 2], "steps": 1}, 400, "steps", "out_of_range"),
    ("interpolate", {"seeds": [1, 2], "steps": 65}, 400, "steps", "out_of_range"),
    ("interpolate", {"seeds": [1, 2], "method": "cubic"}, 400, "method", "invalid_value"),
    ("interpolate", {"images": [GOOD_PNG, "not base64!"]}, 400, "images[1]", "bad_image"),
    ("interpolate", {"images": [base64.b64encode(b"GIF89a junk").decode(), GOOD_PNG]}, 400, "images[0]",
     "bad_image"),
    ("interpolate", {"images": [GOOD_PNG, b64png(np.zeros((32, 32), np.uint8))]}, 400, "images[1]", "bad_image"),
    ("interpolate", {"images": [b64png(np.zeros((28, 28, 3), np.uint8)), GOOD_PNG]}, 400, "images[0]",
     "bad_image"),
]


@pytest.mark.parametrize(("model", "body", "status", "field", "reason"), BAD_INPUTS,
                         ids=[f"{m}-{r}-{f}-{i}" for i, (m, _, _, f, r) in enumerate(BAD_INPUTS)])
def test_bad_input_gets_a_json_4xx_naming_the_field(api, model, body, status, field, reason):
    code, headers, payload = post(api, model, body)
    error = json.loads(payload)
    assert (code, headers["content-type"]) == (status, "application/json")
    assert (error["code"], error["field"], error["reason"]) == (status, field, reason)
    assert error["message"]


def test_bad_request_in_a_batch_fails_alone(server):
    bodies = [{"n": 3, "seed": s, "format": "npy"} for s in range(7)]
    bodies.insert(3, {"n": 999})
    before = settled_scrape(server)
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda b: post(server, "batched", b), bodies))
    answered = value(before, "fmvae_requests_total", model="batched") + len(bodies)
    calls_before = value(before, "fmvae_batch_requests_count", model="batched")
    after = scrape_when(server, lambda s: value(s, "fmvae_requests_total", model="batched") >= answered
                        and value(s, "fmvae_batch_requests_count", model="batched") > calls_before)
    calls = value(after, "fmvae_batch_requests_count", model="batched") - calls_before
    assert 0 < calls
    assert calls < len(bodies)  # some requests shared a handler call
    assert results[3][0] == 400 and json.loads(results[3][2])["field"] == "n"
    good = [r for i, r in enumerate(results) if i != 3]
    for seed, (code, _, body) in enumerate(good):
        assert code == 200
        alone = npy(post(server, "sample", {"n": 3, "seed": seed, "format": "npy"})[2])
        assert np.allclose(npy(body), alone, atol=1e-5)  # static int8: results do not depend on batch-mates


def test_backend_is_chosen_by_the_model_config(api):
    reply = json.loads(post(api, "sample_ts", {"n": 4, "seed": 9, "format": "json"})[2])
    assert (reply["backend"], reply["device"]) == ("torchscript-fp32", "cpu")
    ts = npy(post(api, "sample_ts", {"n": 4, "seed": 9, "format": "npy"})[2])
    onnx = npy(post(api, "sample", {"n": 4, "seed": 9, "format": "npy"})[2])
    assert 10 * np.log10(1 / np.mean((ts - onnx) ** 2)) > 35  # fp32 and int8 decoders of one model agree


def test_a_route_served_by_the_torchscript_int8_decoder_answers_its_example_in_every_format(api):
    types = {"png": "image/png", "json": "application/json", "npy": "application/x-npy"}
    for fmt, content_type in types.items():
        code, headers, _ = post(api, "sample_ts8", example("sample") | {"format": fmt})
        assert (code, headers["content-type"]) == (200, content_type), fmt
    reply = json.loads(post(api, "sample_ts8", {"n": 4, "seed": 9, "format": "json"})[2])
    assert (reply["backend"], reply["device"]) == ("torchscript-int8", "cpu")
    int8 = npy(post(api, "sample_ts8", {"n": 4, "seed": 9, "format": "npy"})[2])
    fp32 = npy(post(api, "sample_ts", {"n": 4, "seed": 9, "format": "npy"})[2])
    assert 10 * np.log10(1 / np.mean((int8 - fp32) ** 2)) > 40  # the gate's bar, on four prior draws


def test_metrics_are_exported_and_increase(server):
    before = settled_scrape(server)
    assert post(server, "sample", {"n": 6, "seed": 1, "format": "npy"})[0] == 200
    assert post(server, "sample", {"n": -1})[0] == 400
    labels = {"backend": "onnx-int8", "device": "cpu", "model": "sample"}
    answered = value(before, "fmvae_requests_total", model="sample") + 2
    timed = value(before, "fmvae_request_duration_seconds_count", **labels) + 2
    # both counters: each worker process writes its metric files one after the other
    after = scrape_when(server, lambda s: value(s, "fmvae_requests_total", model="sample") >= answered
                        and value(s, "fmvae_request_duration_seconds_count", **labels) >= timed)

    def grew(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert grew("fmvae_images_generated_total") == 6
    assert grew("fmvae_request_duration_seconds_count") == 2
    assert grew("fmvae_decode_duration_seconds_count") == 1
    buckets = {lab["le"] for n, lab, _ in after if n == "fmvae_request_duration_seconds_bucket"}
    assert {"0.0001", "0.001", "0.01", "0.1", "1.0", "+Inf"} <= buckets
    assert value(after, "fmvae_errors_total", model="sample", reason="out_of_range") - value(
        before, "fmvae_errors_total", model="sample", reason="out_of_range") == 1
    assert value(after, "fmvae_requests_total", model="sample", code="200") > 0
    threads = str(worker_threads("auto", STORE_WORKERS))  # the rule, on whatever machine runs the test
    assert value(after, "fmvae_backend_info", **labels, artifact="decoder_int8.onnx", threads=threads) == 1






def test_a_worker_whose_config_names_no_decoder_fails_at_start():
    with pytest.raises(ConfigError, match=r"model broken: its worker config names no decoder for cpu workers "
                                          r"\(WorkerConfig.decoder"):
        Worker("broken", "sample", ARTIFACTS, WorkerConfig(threads=1))
    with pytest.raises(ConfigError, match="names no decoder for cpu workers"):
        Worker("broken", "sample", ARTIFACTS, WorkerConfig({"cuda": ("onnx-fp32",)}, threads=1))
    worker = Worker("broken", "sample", ARTIFACTS, WorkerConfig({"cpu": ("onnx-fp32",)}, threads=1))  # configured
    assert (worker.backend, worker.shapes.latent_dim, worker.encoder) == ("onnx-fp32", LATENT, None)


VALID_INPUTS = [
    ("sample", {}), ("sample", {"n": 256, "seed": 2**63 - 1, "temperature": 2, "format": "json"}),
    ("sample", {"n": 2.0, "seed": 0.0, "temperature": 1e-9}),
    ("interpolate", {"seeds": [0, 1]}), ("interpolate", {"latents": [[0.5] * LATENT] * 2, "steps": 64.0}),
    ("interpolate", {"images": [GOOD_PNG, GOOD_PNG], "method": "lerp", "format": "npy"}),
]


def test_openapi_latent_length_is_the_released_models():
    """The document shows the released model's latent size; workers put their own model's in its place."""
    latent = SPEC["components"]["schemas"]["Latent"]
    assert latent["minItems"] == latent["maxItems"] == LATENT
    two = RequestSchema(2)
    with pytest.raises(Exception, match=r"latents\[0\] must have 2 items, got 64"):
        two.parse(json.dumps({"latents": [[0.0] * 64] * 2}), "interpolate")
    assert two.parse(json.dumps({"latents": [[0.0, 1.0]] * 2}), "interpolate")["latents"] == [[0.0, 1.0]] * 2


def test_a_2d_model_is_served_with_its_own_shapes(server):
    """interpolate_2d: the same handler over a 2-d export; latent lengths come from its manifest."""
    reply = json.loads(post(server, "interpolate_2d", {"seeds": [1, 2], "steps": 3, "format": "json"})[2])
    z = np.array(reply["latents"])
    assert z.shape == (3, 2) and np.allclose(z[0], seeded_latents(1, 1, 2)[0], atol=1e-6)
    code, _, body = post(server, "interpolate_2d", {"latents": [[0.0] * LATENT] * 2})
    error = json.loads(body)
    assert (code, error["field"], error["reason"]) == (400, "latents[0]", "wrong_length")
    assert error["message"] == f"latents[0] must have 2 items, got {LATENT}"
    code, _, body = post(server, "interpolate_2d", {"latents": [[-2.0, 0.5], [2.0, -0.5]], "steps": 4,
                                                    "format": "npy"})
    assert code == 200 and npy(body).shape == (4, 28, 28)
    pixels = (npy(post(server, "sample", {"n": 2, "seed": 7, "format": "npy"})[2]) * 255).round().astype(np.uint8)
    reply = json.loads(post(server, "interpolate_2d", {"images": [b64png(p) for p in pixels], "steps": 2,
                                                       "format": "json"})[2])
    assert np.array(reply["latents"]).shape == (2, 2)  # encoded by the 2-d model's encoder


def test_archives_pack_the_worker_folders_and_only_the_artifacts_they_name(current_store):
    code = {f"{folder}/{p.relative_to(ROOT / folder)}" for folder in archive.CODE_DIRS
            for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    host = {f"serving/{p.name}" for p in (ROOT / "serving").iterdir()}
    for name, spec in MODELS.items():
        packed = set(archive.contents(current_store / f"{name}.mar"))
        assert code <= packed and not packed & host and not any(m.startswith("serving/") for m in packed)
        files = packed - code - {"MAR-INF/MANIFEST.json", "model-config.yaml", spec.handler.name, MANIFEST}
        assert files == set(archive.artifact_files(spec, archive.packed_manifest(current_store / f"{name}.mar")))
    decoders = ["decoder_fp16.pt", "decoder_fp32.onnx", "decoder_fp32.pt", "decoder_int8.onnx",
                "decoder_int8.pt"]  # CPU and GPU
    manifest = Manifest.read(ARTIFACTS)
    assert archive.artifact_files(MODELS["decode"], manifest) == [*decoders, artifacts.STATS]  # class probabilities
    assert archive.artifact_files(MODELS["encode"], manifest) == [*decoders, "encoder_fp32.onnx", "encoder_fp32.pt",
                                                                  artifacts.STATS]
    assert archive.artifact_files(MODELS["sample"], manifest) == [*decoders, "encoder_fp32.onnx", "encoder_fp32.pt",
                                                                  artifacts.STATS]  # around an image, by class
    with zipfile.ZipFile(current_store / "interpolate.mar") as z:
        config = yaml.safe_load(z.read("model-config.yaml"))
        assert z.read(MANIFEST) == (ARTIFACTS / MANIFEST).read_bytes()
    assert config["handler"]["decoder"]["cpu"] == ["onnx-int8", "torchscript-int8"] and config["maxWorkers"] == 1


def test_bodies_over_torchserve_limit_get_its_empty_413_or_a_reset(server):
    """TorchServe refuses bodies over max_request_size before any handler runs: the one non-JSON error."""
    limit = server.config.max_request_size
    for size in (limit + 1024, 64 * limit):
        conn = http.client.HTTPConnection("127.0.0.1", server.config.inference_port, timeout=60)
        try:
            conn.request("POST", "/predictions/sample", b"x" * size, {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (413, b""), size
        except (ConnectionResetError, BrokenPipeError):
            assert size > limit + 1024  # a reset only for very large bodies, sent on after the refusal
        finally:
            conn.close()
    assert post(server, "sample", {"n": 1, "seed": 0, "format": "npy"})[0] == 200  # and the server carries on


def test_recorder_writes_in_order_on_flush_and_survives_a_failing_write():
    seen: list[int] = []

    def fail(_: object) -> None:
        raise RuntimeError("lost sample")

    recorder = metrics.Recorder("recorder-test", usage_interval=0.05, drain_interval=0.01)
    recorder.record((seen.append, 1), (fail, None), (seen.append, 2))
    recorder.record((seen.append, 3))
    time.sleep(0.1)
    assert seen == []  # held until the handler call flushes
    recorder.flush()
    deadline = time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [1, 2, 3] and recorder.thread.is_alive()
    assert metrics.WORKER_CPU.labels("recorder-test")._value.get() > 0  # usage refreshed by the same thread


def test_a_stopped_recorder_writes_what_was_flushed_before_the_stop():
    seen: list[int] = []
    recorder = metrics.Recorder("recorder-stop-test", usage_interval=60, drain_interval=30)
    time.sleep(0.1)  # the thread has drained its empty queue and waits
    recorder.record((seen.append, 1))
    recorder.flush()
    recorder.stop()
    assert seen == [1] and not recorder.thread.is_alive()


@pytest.mark.integration  # the start checks for Java first
def test_start_without_archives_fails_clearly_and_cleans_up(tmp_path):
    ts = TorchServe(ServerConfig(torchserve=TorchServeConfig(model_store=tmp_path)).with_free_ports())
    with pytest.raises(ServerError, match=f"no archive for {', '.join(MODELS)}; run `make archives`"):
        ts.start()
    assert not ts.tmp.exists()


def test_a_fallback_export_serves_fp32_decoders_and_the_banner_says_so(server, current_store):
    code, _, body = post(server, "decode_fallback", {"latents": [[0.5, -0.5]], "format": "json"})
    assert code == 200 and json.loads(body)["backend"] == "onnx-fp32"
    host = TorchServe(ServerConfig(torchserve=TorchServeConfig(model_store=current_store),
                                   models=("decode", "decode_fallback")))
    lines = fallback_warnings(host)  # what each model's archive serves
    shutil.rmtree(host.tmp)
    assert len(lines) == 1 and "WARNING: decode_fallback serves fp32 decoders (" in lines[0]
    assert "onnx-int8 -> onnx-fp32" in lines[0] and "failed the parity gate" in lines[0]
