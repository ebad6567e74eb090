"""Shared fixtures: small generated Fashion-MNIST-format datasets written as real IDX .gz files, a small
classifier, small models of other latent sizes exported as `make export` does, a model store built from the
committed artifacts and the current handler code, one TorchServe serving it, and ``api``: the same routes either
in this process (``serving/inprocess.py``) or through that TorchServe, with one ``post`` helper for both.

Tiers: a test that needs TorchServe (Java), Prometheus, a browser or a container is marked ``integration`` (by
its module, by a fixture it uses, or by ``api``'s torchserve variant); ``make test-fast`` runs the others. A test
without the mark that starts TorchServe or Prometheus fails, so the fast tier cannot silently need them."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import random
import runpy
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import fastjsonschema
import numpy as np
import psutil
import pytest
from PIL import Image

from monitoring.prometheus import Prometheus
from runtime.artifacts import ARTIFACT_DIR
from runtime.manifest import Artifact, Manifest
from serving.inprocess import InProcessWorker
from serving.kserve.host import KServe
from serving.oip import GRPC_PORT_ENV
from serving.ray.host import RayHost
from serving.settings import MODELS, KServeConfig, RayConfig, ServerConfig, TorchServeConfig
from serving.torchserve import archive
from serving.torchserve.host import TorchServe
from serving.watchdog import members
from tests.launching import Launcher
from training import classifier, data, train

ARTIFACTS = Path(__file__).resolve().parent.parent / "model_store" / ARTIFACT_DIR
# Fixtures that start real components: a test that uses one is an integration test.
INTEGRATION_FIXTURES = {"server", "kserve_host", "ray_host", "v2_host", "secured", "launcher", "stack", "explorer",
                        "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def fast_tier_guard(request, monkeypatch):
    """Outside the integration tier, starting TorchServe, the KServe host or Prometheus fails the test."""
    if request.node.get_closest_marker("integration") is None:
        def refuse(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} starts a real server: mark it integration")
        monkeypatch.setattr(TorchServe, "start", refuse)
        monkeypatch.setattr(Prometheus, "start", refuse)
        monkeypatch.setattr(KServe, "start", refuse)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic 0x0803 for images (3-d), 0x0801 for labels (1-d)."""
    magic = data.IMAGE_MAGIC if array.ndim == 3 else data.LABEL_MAGIC
    return struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_dataset(directory: Path, n_train: int = 512, n_test: int = 256, seed: int = 0) -> Path:
    """Write the four files with blob-like images (a bright rectangle whose size depends on the label)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
        for i, label in enumerate(labels):
            top, left = rng.integers(2, 8, 2)
            images[i, top:top + 8 + 2 * label // 2, left:left + 6 + label] = 200 + rng.integers(0, 55)
        (directory / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (directory / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return directory


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset shared by the whole session (read-only by convention)."""
    return write_dataset(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def small_classifier(tmp_path_factory, dataset_dir) -> Path:
    """A 1-epoch feature classifier on the generated dataset (the parity gate's label check needs one)."""
    path = tmp_path_factory.mktemp("classifier") / "clf.pt"
    classifier.main(["--out", str(path), "--data-dir", str(dataset_dir), "--epochs", "1"])
    return path


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` run in this process, through the module's ``__main__`` code as the interpreter
    runs it: exit code, stdout and stderr as the command gives them, without an interpreter's start-up (a few
    seconds with torch). One real subprocess per command line in the tests keeps the process boundary honest."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, sys.argv = sys.argv, [module, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if isinstance(e.code, str):  # what the interpreter does with SystemExit("error: ...")
            err.write(e.code + "\n")
        code = 1 if isinstance(e.code, str) else e.code or 0
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


# Export settings of the tests' small models: fewer prior samples for the parity gate and calibration than
# `make export` takes (the gate's label check classifies every prior sample, most of a default export's time).
SMALL_EXPORT = ("--prior-samples", "300", "--calibration-samples", "128")


def export_cli(ckpt: Path, out: Path, data_dir: Path, clf: Path, *extra: str, process: bool = False
               ) -> subprocess.CompletedProcess:
    """``python -m export`` as `make export` runs it (with SMALL_EXPORT), in this process or (``process``) in a
    new one; fails the test on error. Only exports in new processes are byte for byte alike: TorchScript numbers
    the classes it traces within a process."""
    args = [str(ckpt), "--out", str(out), "--data-dir", str(data_dir), "--classifier", str(clf), *SMALL_EXPORT, *extra]
    result = subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True, timeout=600) \
        if process else run_module("export", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_and_export(root: Path, data_dir: Path, clf: Path, latent_dim: int) -> Path:
    """A 1-epoch checkpoint of ``latent_dim`` on 256 generated images, exported into ``root/store``; returns the
    artifact folder."""
    train.main(["--out", str(root / "run"), "--data-dir", str(data_dir), "--epochs", "1", "--subset", "256",
                "--latent-dim", str(latent_dim), "--channels", "8", "16", "32", "--device", "cpu"])
    export_cli(root / "run" / "final.pt", root / "store", data_dir, clf)
    return root / "store" / ARTIFACT_DIR


@pytest.fixture(scope="session")
def artifacts_2d(tmp_path_factory, dataset_dir, small_classifier) -> Path:
    """The artifact folder of a small 2-d latent model, exported through the export CLI."""
    return train_and_export(tmp_path_factory.mktemp("latent2"), dataset_dir, small_classifier, 2)


@pytest.fixture(scope="session")
def fallback_2d(artifacts_2d, dataset_dir, small_classifier) -> Path:
    """The same 2-d checkpoint exported with a parity bar its int8 decoders cannot meet (100 dB) and
    --allow-fp32-fallback: an export that serves fp32 decoders on CPU; returns the artifact folder."""
    root = artifacts_2d.parent.parent
    result = export_cli(root / "run" / "final.pt", root, dataset_dir, small_classifier, "--name", "export-fallback",
                        "--psnr-min-db", "100", "--allow-fp32-fallback")
    assert "WARNING" in result.stdout and "fall" in result.stdout
    return root / "export-fallback"


LATENT = Manifest.read(ARTIFACTS).shapes.latent_dim
# Beside the served models (from current_store), test-only configurations of the same handlers:
TEST_MODELS = {
    # Long batch delay so that concurrent requests surely share a batch.
    "batched": replace(MODELS["sample"], workers=1, max_batch_delay_ms=500),
    "sample_ts": replace(MODELS["sample"], workers=1, decoder={"cpu": ("torchscript-fp32",)}),
    "sample_ts8": replace(MODELS["sample"], workers=1, decoder={"cpu": ("torchscript-int8",)}),
}


@pytest.fixture(scope="session")
def server(current_store, artifacts_2d, fallback_2d):
    """One TorchServe for the serving tests: every served model, the test-only ones, a small 2-d latent model and
    an export that fell back to fp32 decoders."""
    for name, spec in TEST_MODELS.items():
        archive.build(name, spec, ARTIFACTS, current_store)
    archive.build("interpolate_2d", MODELS["interpolate"], artifacts_2d, current_store)  # a 2-d latent model
    archive.build("decode_fallback", MODELS["decode"], fallback_2d, current_store)
    models = (*MODELS, *TEST_MODELS, "interpolate_2d", "decode_fallback")
    ts = TorchServe(ServerConfig(torchserve=TorchServeConfig(model_store=current_store),
                                 models=models).with_free_ports())
    with ts:
        yield ts
    group = ts.process.pid
    with pytest.raises(ProcessLookupError):  # no JVM or worker left behind
        os.killpg(group, 0)
    assert not ts.tmp.exists()


def fast_check_passes(schema, operation: str, body: dict) -> bool:
    """Whether the schema's fast (fastjsonschema) check lets ``body`` through; the tests compare it with the
    reference validator."""
    try:
        schema.fast_checks[operation](body)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


class InProcessApi:
    """The served models and TEST_MODELS as workers in this process, over the committed export folders."""

    def __init__(self) -> None:
        self.workers: dict[str, InProcessWorker] = {}

    def post(self, model: str, body: bytes) -> tuple[int, dict, bytes]:
        if model not in self.workers:
            self.workers[model] = InProcessWorker(model, ARTIFACTS.parent, (MODELS | TEST_MODELS)[model])
        reply = self.workers[model]([body])[0]
        headers = {k.lower(): v for k, v in reply.headers.items()} | {"content-type": reply.content_type}
        return reply.status, headers, reply.body


def damaged_export(folder: Path, tmp_path: Path, rehash: bool) -> Path:
    """A copy of an export whose int8 decoder holds random bytes (and, with ``rehash``, a manifest that agrees)."""
    copy = tmp_path / f"damaged-{rehash}"
    shutil.copytree(folder, copy)
    garbage = random.Random(0).randbytes((copy / "decoder_int8.onnx").stat().st_size)
    (copy / "decoder_int8.onnx").write_bytes(garbage)
    if rehash:
        manifest = Manifest.read(copy)
        entry = manifest.artifacts["decoder/onnx-int8"]
        artifact = Artifact(entry.file, hashlib.sha256(garbage).hexdigest(), entry.bytes)
        replace(manifest, artifacts=manifest.artifacts | {"decoder/onnx-int8": artifact}).write(copy)
    return copy


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def kserve_grpc_port() -> int:
    """The loopback port of ``kserve_host``'s v2 gRPC service."""
    return free_port()


@pytest.fixture(scope="session")
def ray_grpc_port() -> int:
    """The loopback port of ``ray_host``'s v2 gRPC service."""
    return free_port()


@pytest.fixture(scope="session")
def kserve_host(artifacts_2d, fallback_2d, kserve_grpc_port):
    """One KServe host for the tests: every served route, the test-only ones and the two small exports (given by
    absolute export folders), in one process, with the v2 gRPC service on ``kserve_grpc_port`` (set in the
    environment for its start only: a host started later must not share the port)."""
    specs = MODELS | TEST_MODELS | {"interpolate_2d": replace(MODELS["interpolate"], export=str(artifacts_2d)),
                                    "decode_fallback": replace(MODELS["decode"], export=str(fallback_2d))}
    host = KServe(ServerConfig(server="kserve", export_store=ARTIFACTS.parent, models=tuple(specs),
                               kserve=KServeConfig(processes=1)).with_free_ports(), specs)
    with contextlib.ExitStack() as stack:
        with mock.patch.dict(os.environ, {GRPC_PORT_ENV: str(kserve_grpc_port)}):
            stack.enter_context(host)
        yield host
    group = host.process.pid
    with pytest.raises(ProcessLookupError):  # no serving process left behind
        os.killpg(group, 0)
    assert not host.tmp.exists()


def ray_processes(tmp: Path) -> list[str]:
    """The processes whose command line names ``tmp`` (a Ray host's cluster keeps its files there)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(tmp) in " ".join(process.info["cmdline"] or ()):
                found.append(" ".join(process.info["cmdline"])[:200])
    return found


@pytest.fixture(scope="session")
def ray_host(artifacts_2d, fallback_2d, ray_grpc_port):
    """One Ray host for the tests, serving what ``kserve_host`` serves: one front process (its v2 gRPC service on
    ``ray_grpc_port``) over a local cluster of 2 worker nodes, one deployment per route. Its stop must leave no front
    and no Ray process behind."""
    specs = MODELS | TEST_MODELS | {"interpolate_2d": replace(MODELS["interpolate"], export=str(artifacts_2d)),
                                    "decode_fallback": replace(MODELS["decode"], export=str(fallback_2d))}
    host = RayHost(ServerConfig(server="ray", export_store=ARTIFACTS.parent, models=tuple(specs),
                                kserve=KServeConfig(processes=1), ray=RayConfig(nodes=2)).with_free_ports(), specs)
    with contextlib.ExitStack() as stack:
        with mock.patch.dict(os.environ, {GRPC_PORT_ENV: str(ray_grpc_port)}):
            stack.enter_context(host)
        yield host
    assert not members(host.process.pid), "a front process outlived the stop"
    assert not members(host.owner.pid), "a Ray process outlived the stop"
    assert not ray_processes(host.tmp)
    assert not host.tmp.exists()


@pytest.fixture(scope="session", params=["inprocess", pytest.param("torchserve", marks=pytest.mark.integration),
                                         pytest.param("kserve", marks=pytest.mark.integration),
                                         pytest.param("ray", marks=pytest.mark.integration)])
def api(request):
    """The routes' workers: in this process, behind the session's TorchServe, its KServe host or its Ray host;
    ``post(api, ...)`` takes any of them."""
    hosts = {"torchserve": "server", "kserve": "kserve_host", "ray": "ray_host"}
    return InProcessApi() if request.param == "inprocess" else request.getfixturevalue(hosts[request.param])


def post(server, model: str, body: bytes | dict, content_type: str = "application/json") -> tuple[int, dict, bytes]:
    """POST ``body`` to ``model`` on a TorchServe or an InProcessApi: (status, lower-case headers, body)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    if isinstance(server, InProcessApi):
        return server.post(model, data)
    request = urllib.request.Request(f"{server.url}/predictions/{model}", data=data, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def npy(payload: bytes) -> np.ndarray:
    return np.load(io.BytesIO(payload))


def png(payload: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(payload))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


def b64png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# The smallest valid request of each operation: only its required fields.
MINIMAL = {
    "sample": {}, "interpolate": {"seeds": [0, 1]}, "encode": {"images": [b64png(np.zeros((28, 28), np.uint8))]},
    "decode": {"latents": [[0.0] * LATENT]}, "reconstruct": {"images": [b64png(np.zeros((28, 28), np.uint8))]},
    "traverse": {"start": {"seed": 0}}, "edit": {"start": {"seed": 0}, "to": "Bag"},
    "analogy": {"a": {"seed": 0}, "b": {"seed": 1}, "c": {"seed": 2}}, "walk": {"start": {"seed": 0}},
}


@pytest.fixture(scope="session")
def current_store(tmp_path_factory) -> Path:
    """A model store with archives built from the committed export artifacts and the current handler code."""
    store = tmp_path_factory.mktemp("current-store")
    archive.build_store(ARTIFACTS.parent, store)
    return store


@pytest.fixture
def launcher(tmp_path, current_store):
    """``launcher(*flags, store=..., config=...)`` starts a Launcher; whatever a test leaves running is killed."""
    started: list[Launcher] = []

    def start(*extra: str, store: Path = current_store, config: ServerConfig | None = None) -> Launcher:
        started.append(Launcher(store, tmp_path, *extra, config=config))
        return started[-1]

    yield start
    for launched in started:
        launched.kill()


@contextlib.contextmanager
def running(server: socketserver.BaseServer) -> Iterator[socketserver.BaseServer]:
    """``server`` answering on a thread of its own; shut down and closed afterwards (the tests' stand-ins)."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def send_answer(handler: Any, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
                ) -> None:
    """A stand-in's answer on ``handler`` (an http.server request handler); a 503 says Retry-After: 0."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in ((headers or {}) | ({"Retry-After": "0"} if status == 503 else {})).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A stand-in's request handler that logs nothing."""

    def log_message(self, *args: object) -> None:
        pass
