"""The GPU run, prepared on the CPU: the bundle's plan (what it carries, against what the GPU machine has, and the
commands), and its dry run: the bundle installed from an empty folder into an environment holding only the GPU
machine's packages, where ``bench.gpu --smoke`` runs every part, the real TorchServe on the bundled Java and the
KServe host included."""

from __future__ import annotations

import json

import pytest

from bench.gpu import PARTS, worker_requests
from deploy import gpu_bundle
from serving.routes import ROUTES


def gpu_machine_packages() -> set[str]:
    return {gpu_bundle.normalized(line.split("#")[0].strip())
            for line in gpu_bundle.GPU_PACKAGES.read_text().splitlines()} - {""}


def test_the_bundle_carries_what_the_gpu_machine_lacks_and_the_commands_use_it(tmp_path):
    have = gpu_machine_packages()
    assert {"torch", "numpy", "onnxruntime", "pillow", "pyyaml", "prometheus-client", "psutil"} <= have
    assert not have & {gpu_bundle.normalized(n) for n in gpu_bundle.WORKER_PACKAGES + gpu_bundle.SERVER_PACKAGES}
    assert {"kserve", "fastapi", "uvicorn", "torchserve"} <= set(gpu_bundle.SERVER_PACKAGES)
    out = gpu_bundle.OUT
    carried = [[out / "worker", out / "runtime"], [out / "server" / "part-00"], [out / "server" / "part-01"]]
    (carry_1, first), (carry_2, second), (carry_3, third) = gpu_bundle.commands(carried)
    assert carry_1 == ["build/gpu-bundle/worker", "build/gpu-bundle/runtime"]
    assert (carry_2, carry_3) == (["build/gpu-bundle/server/part-00"], ["build/gpu-bundle/server/part-01"])
    assert "/worker/*.whl" in first and "jre.tar.xz -C /tmp" in first and "--parts decoders worker context" in first
    assert second == "mkdir -p /tmp/fmvae-server && cp build/gpu-bundle/server/part-00 /tmp/fmvae-server/"
    assert third.startswith("mkdir -p /tmp/fmvae-server && cp build/gpu-bundle/server/part-01 /tmp/fmvae-server/ && "
                            "cat /tmp/fmvae-server/part-* | tar -x")
    assert "JAVA_HOME=/tmp/jre" in third and third.endswith("--parts server")
    assert all("PYTHONPATH=/tmp/site:$PWD/client " in command for command in (first, third))  # the client package
    assert all(len(command) <= 2000 for _, command in gpu_bundle.commands(carried))  # the device tool's limit
    assert set(PARTS) == {"decoders", "worker", "context", "server"}
    assert {route for route, _ in worker_requests().values()} == set(ROUTES)
    source = tmp_path / "big"
    source.write_bytes(bytes(range(256)) * 41)
    pieces = gpu_bundle.cut(source, tmp_path / "pieces", 4000)
    assert [p.stat().st_size for p in pieces] == [4000, 4000, 2496]
    assert b"".join(p.read_bytes() for p in sorted(pieces)) == source.read_bytes()


@pytest.mark.integration  # the dry run serves with TorchServe on the bundled Java
def test_the_bundle_runs_bench_gpu_from_an_empty_folder():
    report = gpu_bundle.check()
    assert list(report["parts_seconds"]) == list(PARTS) and not report["environment"]["cuda_available"]
    decoders = {(r["decoder"], r["batch"]) for r in report["decoders"]["rows"]}
    assert {("torchscript-fp16", 1), ("torchscript-bf16", 4), ("eager-fp32", 4)} <= decoders
    assert report["decoders"]["missing"] == {}
    worker = report["worker"]["rows"]
    assert len(worker) == len(worker_requests()) and all(r["status"] == 200 and r["device"] == "cpu" for r in worker)
    assert report["context"]["backend"] == "onnx-int8" and report["context"]["ready_s"] > 0
    assert set(report["server"]) == {"torchserve", "kserve"}  # both hosts from the bundle
    for host, served in report["server"].items():
        assert served["all_answered"], (host, json.dumps(served)[:2000])
        assert [r["scenario"] for r in served["rows"]] == ["sample n=1", "sample n=64"]
