"""The export stage on a small freshly trained checkpoint: artifacts in their real runtimes, the parity gate,
archives, reproducibility and error cases."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from export import backends, parity
from export.build import build
from export.config import ARTIFACT_DIR, ExportConfig
from export.lowres import LowResDecoder
from training import checkpoint, classifier, train
from training.model import VAE, VAEConfig

CFG = ExportConfig(calibration_samples=256, prior_samples=1000)


@pytest.fixture(scope="module")
def small(tmp_path_factory, dataset_dir) -> dict:
    """A 1-epoch latent-64 checkpoint and a 1-epoch classifier, trained on the generated dataset."""
    root = tmp_path_factory.mktemp("export")
    train.main(["--out", str(root / "run"), "--data-dir", str(dataset_dir), "--epochs", "1", "--device", "cpu",
                "--channels", "8", "16", "32"])
    classifier.main(["--out", str(root / "clf.pt"), "--data-dir", str(dataset_dir), "--epochs", "1"])
    return {"ckpt": root / "run" / "final.pt", "clf": root / "clf.pt", "data": str(dataset_dir), "root": root}


def export_cli(small: dict, out: Path) -> subprocess.CompletedProcess:
    """``python -m export`` as `make export` runs it, with the default ExportConfig."""
    return subprocess.run([sys.executable, "-m", "export", str(small["ckpt"]), "--out", str(out), "--data-dir",
                           small["data"], "--classifier", str(small["clf"])],
                          capture_output=True, text=True, timeout=600, check=True)


@pytest.fixture(scope="module")
def exported(small) -> tuple[Path, dict]:
    out = small["root"] / "store"
    assert "| onnx-int8 |" in export_cli(small, out).stdout  # the parity table is printed
    return out, json.loads((out / ARTIFACT_DIR / "manifest.json").read_text())


@pytest.mark.parametrize("channels", [(32, 64, 128), (8, 16, 32)])
def test_low_res_decoder_equals_the_trained_decoder(channels):
    torch.manual_seed(0)
    decoder = VAE(VAEConfig(channels=channels)).decoder.eval()
    for p in decoder.parameters():  # non-zero biases too, so that a misplaced bias channel shows
        torch.nn.init.normal_(p, std=0.2)
    low = LowResDecoder(decoder).eval()
    z = torch.randn(7, 64)
    with torch.no_grad():
        ref, out = decoder(z), low(z)
    assert [m.kernel_size for m in low.conv if isinstance(m, torch.nn.Conv2d)] == [(3, 3)] * 3
    assert out.shape == ref.shape == (7, 1, 28, 28)
    assert torch.allclose(out, ref, atol=1e-4 * ref.abs().max().item())


def test_artifacts_run_in_their_runtimes_and_match_eager(small, exported):
    out, manifest = exported
    model, _ = checkpoint.load_model(small["ckpt"])
    z = np.random.default_rng(1).standard_normal((33, 64)).astype(np.float32)
    x = np.random.default_rng(2).random((5, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = torch.sigmoid(model.decode(torch.from_numpy(z))).numpy()
        ref_mu = model.encode(torch.from_numpy(x))[0].numpy()
    art = out / ARTIFACT_DIR
    session = ort.InferenceSession(str(art / "decoder_fp32.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    fp32_onnx = session.run(None, {"z": z})[0]
    fp32_ts = torch.jit.load(str(art / "decoder_fp32.pt"))(torch.from_numpy(z)).detach().numpy()
    for logits in (fp32_onnx, fp32_ts):
        assert np.abs(parity.sigmoid(logits) - ref).max() < 1e-5
    for name in ("decoder_int8.onnx", "decoder_int8.pt"):
        out_int8 = parity.sigmoid(backends.load(art / name)(z))
        assert out_int8.shape == ref.shape and 25 < parity.psnr(out_int8, ref) < np.inf  # quantized: close, not equal
    ops = [n.op_type for n in onnx.load(str(art / "decoder_int8.onnx")).graph.node]
    # The first two convs run in int8; the Linear and the small last conv stay fp32 (see build.fp32_nodes).
    assert ops.count("QLinearConv") == 2 and ops.count("Conv") == 1 and ops.count("Gemm") == 1
    assert "QGemm" not in ops
    for name in ("encoder_fp32.onnx", "encoder_fp32.pt"):
        assert np.abs(backends.load(art / name)(x) - ref_mu).max() < 1e-5


def test_manifest_lists_every_file_with_its_hash(small, exported):
    out, manifest = exported
    assert manifest["parity"]["passed"]
    assert manifest["source_checkpoint"]["sha256"] == checkpoint.file_sha256(small["ckpt"])
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "opset"}
    assert len(manifest["artifacts"]) == 6
    for entry in manifest["artifacts"].values():
        assert checkpoint.file_sha256(out / ARTIFACT_DIR / entry["file"]) == entry["sha256"]
    for name, entry in manifest["archives"].items():
        with zipfile.ZipFile(out / entry["file"]) as z:
            assert sorted(z.namelist()) == entry["contents"]
            mar = json.loads(z.read("MAR-INF/MANIFEST.json"))
            assert mar["model"]["modelName"] == name
            for artifact in ("decoder_int8.onnx", "decoder_fp32.pt", "export/backends.py", "handlers/service.py",
                             "model-config.yaml", f"{name}.py"):
                assert artifact in z.namelist()
            packed = z.read("decoder_int8.onnx")
        assert packed == (out / ARTIFACT_DIR / "decoder_int8.onnx").read_bytes()
    assert "encoder_fp32.onnx" in manifest["archives"]["interpolate"]["contents"]
    assert json.loads((out / ARTIFACT_DIR / "manifest.json").read_text()) == manifest
    assert "| onnx-int8 |" in (out / ARTIFACT_DIR / "export_report.md").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_rerun_is_current_and_rebuild_is_reproducible(small, exported):
    out, manifest = exported
    before = {p: p.stat().st_mtime_ns for p in (out / ARTIFACT_DIR).iterdir()}
    assert "nothing to rebuild" in export_cli(small, out).stdout
    assert before == {p: p.stat().st_mtime_ns for p in (out / ARTIFACT_DIR).iterdir()}
    # A rebuild elsewhere gives the same bytes, so the same manifest. (Traced TorchScript embeds the call
    # stack's file paths as debug info: reproducible for one checkout and entry point, as `make export` runs.)
    export_cli(small, small["root"] / "store2")
    assert json.loads((small["root"] / "store2" / ARTIFACT_DIR / "manifest.json").read_text()) == manifest


def test_gate_fails_on_corrupted_artifact(small, tmp_path):
    model, _ = checkpoint.load_model(small["ckpt"])
    paths = build(model, tmp_path, CFG)
    x_test = torch.rand(64, 1, 28, 28)
    clf, _ = classifier.load(small["clf"])
    assert parity.check(model, paths, x_test, clf, CFG)["passed"]
    graph = onnx.load(str(paths["decoder/onnx-fp32"]))
    weight = next(t for t in graph.graph.initializer if numpy_helper.to_array(t).ndim == 4)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(graph, str(paths["decoder/onnx-fp32"]))
    report = parity.check(model, paths, x_test, clf, CFG)
    assert not report["passed"] and not report["decoders"]["onnx-fp32"]["passed"]
    assert report["decoders"]["onnx-int8"]["passed"]
    assert "| onnx-fp32 |" in parity.markdown(report) and "FAIL" in parity.markdown(report)


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True, timeout=600)


def test_bad_inputs_fail_clearly_and_write_nothing(small, dataset_dir, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(small["ckpt"].read_bytes()[:5000])
    cases = [
        (tmp_path / "missing.pt", "checkpoint file not found"),
        (truncated, "not a readable PyTorch checkpoint"),
        (notes, "not a readable PyTorch checkpoint"),
    ]
    for ckpt, message in cases:
        r = run_export(str(ckpt), "--out", str(store))
        assert r.returncode == 1 and f"{ckpt}: {message}" in r.stderr, r.stderr
    train.main(["--out", str(tmp_path / "l8"), "--data-dir", str(dataset_dir), "--epochs", "1", "--subset", "64",
                "--latent-dim", "8", "--channels", "4", "8", "8"])
    r = run_export(str(tmp_path / "l8" / "final.pt"), "--out", str(store))
    assert r.returncode == 1 and "latent size 8, but the serving API takes 64-d latents" in r.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = run_export(str(small["ckpt"]), "--out", str(blocker / "store"))
    assert r.returncode == 1 and f"{blocker / 'store'}: cannot create the output folder" in r.stderr
    assert list(store.iterdir()) == []
