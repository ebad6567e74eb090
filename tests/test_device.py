"""The worker's device logic, proven on the CPU: which device and backend a worker picks and why it skips the others
(logged), threads per device, half-precision decoders, and CUDA-graph replay, with a CPU that pretends to be a
CUDA device (its tensors stay on the CPU and a stand-in replays captured calls)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from handlers import device
from handlers.config import WorkerConfig
from handlers.device import CPU, Placement, choose_backend, placement, worker_threads
from handlers.errors import ConfigError
from runtime import artifacts, backends, cpus
from runtime.latent import seeded_latents
from runtime.manifest import FILE as MANIFEST
from runtime.manifest import Manifest
from serving.inprocess import InProcessWorker
from serving.routes import ROUTES
from serving.settings import CUDA_GRAPH_BATCHES, DECODER, GPU_ROUTES, MODELS
from serving.torchserve import archive
from tests.conftest import ARTIFACTS, LATENT, npy

CUDA_CONFIG = WorkerConfig.from_dict({"decoder": {"cpu": ["onnx-int8"], "cuda": list(DECODER["cuda"])}})


def cpu_capture(forward, static):
    """A stand-in for CUDA-graph capture on the CPU: the replay runs ``forward`` on the static input again into
    the static output, as a graph's replay does; ``calls`` counts the forwards."""
    out = forward(static)
    cpu_capture.calls += 1

    def replay() -> None:
        out.copy_(forward(static))
        cpu_capture.calls += 1

    return replay, out


cpu_capture.calls = 0
PRETEND_GPU = Placement("cuda:0", "cpu", cpu_capture)


def test_a_worker_runs_on_cuda_only_when_given_a_gpu_that_torch_sees(monkeypatch, caplog):
    assert placement(None) is CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="fmvae.worker"):
        assert placement(0) is CPU
    assert "given GPU 0, but torch sees no CUDA device" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    where = placement(1)
    assert (where.name, where.kind, where.device, where.graph_capture) == (
        "cuda:1", "cuda", "cuda:1", backends.cuda_capture)
    assert placement(None) is CPU


def test_threads_per_device(monkeypatch):
    monkeypatch.delenv("FMVAE_WORKER_THREADS", raising=False)
    assert worker_threads("auto", 3, cpus=16) == 5 and worker_threads("auto", 3, cpus=2) == 1
    assert worker_threads("auto", 3, cpus=16, kind="cuda") == 1  # its CPU threads only feed the GPU
    assert worker_threads(3) == 3 and worker_threads(3, kind="cuda") == 3
    monkeypatch.setenv("FMVAE_WORKER_THREADS", "2")
    assert worker_threads("auto", 3, cpus=16) == 2 and worker_threads("auto", kind="cuda") == 2


def test_the_cpus_available_count_the_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)))
    cpu_max = tmp_path / "cpu.max"
    assert cpus.available_cpus(cpu_max) == 64  # no cgroup file: the affinity
    for text, expected in (("max 100000", 64), ("400000 100000", 4), ("150000 100000", 2), ("20000 100000", 1),
                           ("12800000 100000", 64)):
        cpu_max.write_text(text + "\n")
        assert cpus.available_cpus(cpu_max) == expected, text
    cpu_max.write_text("4 CPUs")
    assert cpus.available_cpus(cpu_max) == 64  # unreadable: the affinity


def test_the_cuda_choice_skips_what_is_missing_and_says_why(tmp_path, monkeypatch):
    logged: list[str] = []

    def log(message: str, *args: object) -> None:
        logged.append(message % args)

    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: ["CPUExecutionProvider"])
    assert choose_backend(CUDA_CONFIG, "decoder", "m", PRETEND_GPU, ARTIFACTS, log) == "torchscript-fp16"
    assert logged == []  # the first choice: nothing skipped
    for name in ("decoder_fp32.pt", "decoder_fp32.onnx", MANIFEST):  # an archive without the fp16 decoder
        shutil.copy(ARTIFACTS / name, tmp_path / name)
    assert choose_backend(CUDA_CONFIG, "decoder", "m", PRETEND_GPU, tmp_path, log) == "torchscript-fp32"
    assert logged == ["model m: decoder torchscript-fp16 skipped on cuda:0: decoder_fp16.pt is not in the archive",
                      "model m: decoder onnx-fp32 skipped on cuda:0: onnxruntime has no CUDAExecutionProvider "
                      "(providers: CPUExecutionProvider)"]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: both)
    assert choose_backend(CUDA_CONFIG, "decoder", "m", PRETEND_GPU, tmp_path, log) == "onnx-fp32"
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match=r"none of the decoder backends can run on cuda:0 here \(onnx-fp32: "
                                          r"onnxruntime has no CUDAExecutionProvider"):
        choose_backend(WorkerConfig({"cuda": ("onnx-fp32",)}), "decoder", "m", PRETEND_GPU, tmp_path, log)
    with pytest.raises(ConfigError, match="bf8: unknown backend bf8"):
        choose_backend(WorkerConfig({"cuda": ("bf8",)}), "decoder", "m", PRETEND_GPU, tmp_path, log)
    with pytest.raises(ConfigError, match="names no decoder for cuda workers"):
        choose_backend(WorkerConfig({"cpu": ("onnx-int8",)}), "decoder", "m", PRETEND_GPU, tmp_path, log)


def test_a_cpu_worker_with_a_missing_artifact_says_so(tmp_path):
    for name in ("decoder_fp32.onnx", MANIFEST):
        shutil.copy(ARTIFACTS / name, tmp_path / name)
    with pytest.raises(ConfigError, match="onnx-int8: decoder_int8.onnx is not in the archive"):
        choose_backend(WorkerConfig({"cpu": ("onnx-int8",)}), "decoder", "m", CPU, tmp_path, lambda *a: None)


def test_the_env_puts_a_decoder_first_on_cpu_workers_only(monkeypatch):
    config = WorkerConfig(decoder=DECODER, encoder={"cpu": ("onnx-fp32",)})
    assert choose_backend(config, "decoder", "m", CPU, ARTIFACTS) == "onnx-int8"
    monkeypatch.setenv(device.CPU_DECODER, "torchscript-int8")
    assert choose_backend(config, "decoder", "m", CPU, ARTIFACTS) == "torchscript-int8"
    assert choose_backend(config, "encoder", "m", CPU, ARTIFACTS) == "onnx-fp32"  # decoders only
    assert choose_backend(config, "decoder", "m", PRETEND_GPU, ARTIFACTS) == "torchscript-fp16"  # CPU workers only
    logged: list[str] = []
    monkeypatch.setenv(device.CPU_DECODER, "int4")  # a backend it cannot run: skipped and logged, the config's next
    assert choose_backend(config, "decoder", "m", CPU, ARTIFACTS, lambda m, *a: logged.append(m % a)) == "onnx-int8"
    assert logged == ["model m: decoder int4 skipped on cpu: unknown backend int4"]


@pytest.mark.parametrize("backend", ["torchscript-fp16"])
def test_half_precision_decoders_take_and_give_float32_and_match_fp32(backend):
    z = seeded_latents(3, 32, LATENT).astype(np.float32)
    half = backends.load(artifacts.DECODERS[backend], ARTIFACTS)
    full = backends.load(artifacts.DECODERS["torchscript-fp32"], ARTIFACTS)
    out, ref = half(z), full(z)
    assert out.dtype == np.float32 and out.shape == ref.shape == (32, 1, 28, 28)
    images, ref_images = 1 / (1 + np.exp(-out)), 1 / (1 + np.exp(-ref))
    assert 10 * np.log10(1 / np.mean((images - ref_images) ** 2)) > 40  # the export gate's bar
    assert not np.array_equal(out, ref)  # really computed in half precision


def test_graph_replays_pad_to_the_captured_size_and_cut_back():
    cpu_capture.calls = 0
    decoder = backends.TorchScriptModule(ARTIFACTS / artifacts.DECODERS["torchscript-fp32"].artifact)
    graphed = backends.GraphedDecoder(decoder, LATENT, [4, 1, 16], cpu_capture)
    assert list(graphed.graphs) == [1, 4, 16] and cpu_capture.calls == 3  # one capture per size
    z = seeded_latents(9, 40, LATENT).astype(np.float32)
    for n in (3, 16, 1, 5, 2):  # each replays the smallest size >= n; the rows left from earlier calls are cut off
        assert np.allclose(graphed(z[:n]), decoder(z[:n]), rtol=1e-5, atol=1e-5), n
    assert graphed.replays == 5
    assert np.allclose(graphed(z), decoder(z), rtol=1e-5, atol=1e-5)  # 40 > 16: run, not replayed
    assert graphed.replays == 5


def test_a_worker_given_a_gpu_serves_from_it(monkeypatch, caplog):
    """The whole worker on a pretend CUDA device: fp16 TorchScript (no ONNX CUDA provider here), one thread,
    graphs captured and warmed at start, answers that name the device and match the CPU worker's."""
    cpu_capture.calls = 0
    monkeypatch.setattr(device, "placement", lambda gpu_id: PRETEND_GPU if gpu_id is not None else CPU)
    monkeypatch.delenv("FMVAE_WORKER_THREADS", raising=False)
    with caplog.at_level(logging.WARNING, logger="fmvae.worker"):
        gpu = InProcessWorker("sample", ARTIFACTS.parent, gpu_id=0)
    worker = gpu.worker
    assert (worker.device, worker.backend, worker.threads) == ("cuda:0", "torchscript-fp16", 1)
    assert isinstance(worker.decoder, backends.GraphedDecoder)
    assert list(worker.decoder.graphs) == sorted(CUDA_GRAPH_BATCHES)
    assert worker.decoder.replays == 1  # the warm-up replayed the batch-1 graph
    assert "encoder onnx-fp32 skipped on cuda:0: onnxruntime has no CUDAExecutionProvider" in caplog.text
    cpu = InProcessWorker("sample", ARTIFACTS.parent)
    for n, replayed in ((3, True), (64, True), (100, False)):
        before = worker.decoder.replays
        reply = gpu([{"n": n, "seed": 5, "format": "npy"}])[0]
        expected = npy(cpu([{"n": n, "seed": 5, "format": "npy"}])[0].body)
        assert reply.status == 200 and (worker.decoder.replays > before) == replayed
        assert 10 * np.log10(1 / np.mean((npy(reply.body) - expected) ** 2)) > 35  # fp16 against the int8 CPU one
    answer = gpu([{"n": 2, "seed": 1, "format": "json"}])[0].json()
    assert (answer["backend"], answer["device"]) == ("torchscript-fp16", "cuda:0")


def test_no_graphs_when_the_setting_is_empty_or_the_device_cannot(monkeypatch):
    monkeypatch.setattr(device, "placement", lambda gpu_id: PRETEND_GPU)
    spec = replace(MODELS["decode"], cuda_graph_batches=())
    worker = InProcessWorker("decode", ARTIFACTS.parent, spec=spec, gpu_id=0).worker
    assert worker.backend == "torchscript-fp16" and not isinstance(worker.decoder, backends.GraphedDecoder)
    monkeypatch.setattr(device, "placement", lambda gpu_id: Placement("cuda:0", "cpu"))
    assert not isinstance(InProcessWorker("decode", ARTIFACTS.parent, gpu_id=0).worker.decoder,
                          backends.GraphedDecoder)


def test_the_gpu_layout_reaches_the_model_configs():
    manifest = Manifest.read(ARTIFACTS)
    assert set(GPU_ROUTES) == {name for name, route in ROUTES.items() if route.export == "export"}
    for name, spec in MODELS.items():
        config = archive.model_config(spec, manifest)
        assert config["deviceType"] == ("gpu" if name in GPU_ROUTES else "cpu")
        assert config["handler"]["cuda_graph_batches"] == list(CUDA_GRAPH_BATCHES)
        assert config["handler"]["decoder"]["cuda"][0] == "torchscript-fp16"


def test_each_kserve_process_serves_its_gpu_routes_from_one_device(monkeypatch, tmp_path):
    """The KServe host on a pretend two-GPU machine: process 3 puts every GPU route on cuda:1 (3 modulo 2), the
    2-d routes on the CPU, and the routes of one export share its networks there (one CUDA context per process)."""
    from serving.kserve.app import App
    from serving.kserve.builds import SWITCHBOARD, Switchboard
    from serving.kserve.settings import ProcessSettings
    from serving.settings import ServerConfig

    monkeypatch.setattr(device, "cuda_devices", lambda: 2)
    monkeypatch.setattr(device, "placement", lambda gpu_id: CPU if gpu_id is None else
                        Placement(f"cuda:{gpu_id}", "cpu", cpu_capture))
    config = ServerConfig(server="kserve", export_store=ARTIFACTS.parent)
    settings = ProcessSettings.from_json(ProcessSettings.of(config, MODELS, 4, tmp_path, None, None).to_json())
    Switchboard.create(tmp_path / SWITCHBOARD, tuple(settings.routes))
    app = App(settings, index=3)
    workers = {route: app.builds.lane(route)[0].service.worker for route in app.routes}
    assert {route: w.device for route, w in workers.items()} == {
        route: "cuda:1" if route in GPU_ROUTES else "cpu" for route in MODELS}
    decoders = {w.decoder.decoder for route, w in workers.items() if route in GPU_ROUTES}
    assert len(decoders) == 1  # one fp16 network on the device for every route of the export
    for pool in (app.threads.heavy, app.threads.light, app.threads.encoders):
        pool.shutdown()


def test_without_torch_every_route_serves_from_onnx_runtime():
    """The KServe host's CPU image has no torch: every route answers its example from the ONNX backends, and the
    TorchScript backends are skipped with the reason."""
    script = """
import json, sys
sys.modules["torch"] = None  # import torch raises ImportError, as where it is not installed
from pathlib import Path
from handlers.device import placement, runnable
from runtime.artifacts import DECODERS
from serving.inprocess import InProcessWorker
from serving.routes import ROUTES, route_example
answers = {}
for name in ROUTES:
    worker = InProcessWorker(name, Path("model_store"))
    answers[name] = [worker([route_example(name)])[0].status, worker.worker.backend]
print(json.dumps({"answers": answers, "torchscript": runnable(DECODERS["torchscript-fp32"], "cpu"),
                  "gpu": placement(0).name, "torch": "torch" in sys.modules and sys.modules["torch"] is not None}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=ARTIFACTS.parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["answers"] == {name: [200, "onnx-int8"] for name in ROUTES}
    assert "torch is not installed" in report["torchscript"]
    assert (report["gpu"], report["torch"]) == ("cpu", False)
    assert "given GPU 0, but torch is not installed" in result.stderr
