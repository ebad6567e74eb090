"""The export stage on small freshly trained checkpoints: artifacts in their real runtimes, the parity gate,
the manifest, reproducibility, latent sizes other than 64, and error cases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch.ao.quantization import QConfig
from torch.ao.quantization.observer import PerChannelMinMaxObserver

import export.__main__ as export_main
from bench import quantization
from export import build, parity
from export import stats as export_stats
from export.config import RELEASES, ExportConfig
from export.lowres import LowResDecoder
from runtime import artifacts, backends
from runtime.artifacts import ARTIFACT_DIR, DECODERS
from runtime.errors import ManifestError
from runtime.manifest import FILE as MANIFEST
from runtime.manifest import Manifest, Shapes
from serving.settings import MODELS
from serving.torchserve import archive
from tests.conftest import SMALL_EXPORT, export_cli, run_module
from training import checkpoint, classifier, data, train
from training.model import VAE, VAEConfig

CFG = ExportConfig(calibration_samples=128, prior_samples=100)


@pytest.fixture(scope="module")
def small(tmp_path_factory, dataset_dir, small_classifier) -> dict:
    """A 1-epoch latent-64 checkpoint trained on the generated dataset, and the small classifier."""
    root = tmp_path_factory.mktemp("export")
    train.main(["--out", str(root / "run"), "--data-dir", str(dataset_dir), "--epochs", "1", "--device", "cpu",
                "--channels", "8", "16", "32"])
    return {"ckpt": root / "run" / "final.pt", "clf": small_classifier, "data": dataset_dir, "root": root}


@pytest.fixture(scope="module")
def exported(small) -> tuple[Path, Manifest]:
    """The small checkpoint exported by ``python -m export`` into ``store``, and at the same time by a second
    process into ``store2`` (the reproducibility test compares the two)."""
    args = ["--data-dir", str(small["data"]), "--classifier", str(small["clf"]), *SMALL_EXPORT]
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # two processes side by side: one core each
    runs = [subprocess.Popen([sys.executable, "-m", "export", str(small["ckpt"]), "--out", str(small["root"] / name),
                              *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for name in ("store", "store2")]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][1][-3000:]
    assert "| onnx-int8 |" in outputs[0][0]  # the parity table is printed
    out = small["root"] / "store"
    return out, Manifest.read(out / ARTIFACT_DIR)


@pytest.mark.parametrize(("channels", "batch_norm"), [((32, 64, 128), False), ((8, 16, 32), False),
                                                      ((8, 16, 32), True)])
def test_low_res_decoder_equals_the_trained_decoder(channels, batch_norm):
    torch.manual_seed(0)
    decoder = VAE(VAEConfig(channels=channels, batch_norm=batch_norm)).decoder.eval()
    for p in decoder.parameters():  # non-zero biases too, so that a misplaced bias channel shows
        torch.nn.init.normal_(p, std=0.2)
    for name, buffer in decoder.named_buffers():  # BatchNorm running statistics far from (0, 1)
        if name.endswith(("running_mean", "running_var")):
            buffer.copy_(torch.rand_like(buffer) + 0.5)
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
        ref_mu, ref_logvar = (t.numpy() for t in model.encode(torch.from_numpy(x)))
    art = out / ARTIFACT_DIR
    session = ort.InferenceSession(str(art / "decoder_fp32.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    fp32_onnx = session.run(None, {"z": z})[0]
    fp32_ts = torch.jit.load(str(art / "decoder_fp32.pt"))(torch.from_numpy(z)).detach().numpy()
    for logits in (fp32_onnx, fp32_ts):
        assert np.abs(parity.sigmoid(logits) - ref).max() < 1e-5
    out_int8 = parity.sigmoid(backends.load(artifacts.DECODERS["onnx-int8"], art)(z))
    assert out_int8.shape == ref.shape and 25 < parity.psnr(out_int8, ref) < np.inf  # quantized: close, not equal
    ops = [n.op_type for n in onnx.load(str(art / "decoder_int8.onnx")).graph.node]
    # The first two convs run in int8; the Linear and the small last conv stay fp32 (see build.fp32_nodes).
    assert ops.count("QLinearConv") == 2 and ops.count("Conv") == 1 and ops.count("Gemm") == 1
    assert "QGemm" not in ops
    for backend in artifacts.ENCODERS.values():
        mu, logvar = backends.load(backend, art)(x)
        assert np.abs(mu - ref_mu).max() < 1e-5 and np.abs(logvar - ref_logvar).max() < 1e-5


def test_manifest_lists_every_file_with_its_hash(small, exported):
    out, manifest = exported
    assert manifest.parity["passed"] and manifest.fallback is None
    assert manifest.source.sha256 == checkpoint.file_sha256(small["ckpt"])
    assert set(manifest.versions) >= {"torch", "onnx", "onnxruntime", "opset"}
    assert manifest.shapes == Shapes(64, (1, 28, 28))
    assert manifest.identity == manifest.build_key[:12]
    assert {e.file for e in manifest.artifacts.values()} == {
        *(b.artifact for b in artifacts.DECODERS.values()), *(b.artifact for b in artifacts.ENCODERS.values()),
        artifacts.STATS}
    for entry in manifest.artifacts.values():
        assert checkpoint.file_sha256(out / ARTIFACT_DIR / entry.file) == entry.sha256
    document = json.loads((out / ARTIFACT_DIR / MANIFEST).read_text())
    assert (document["format"], document["version"]) == ("fmvae-export", 3)
    assert Manifest.from_dict(document, "test") == manifest and manifest.to_dict() == document
    assert "| onnx-int8 |" in (out / ARTIFACT_DIR / "export_report.md").read_text()
    assert [p.name for p in out.iterdir()] == [ARTIFACT_DIR]  # no staging, no archives: those are serving's


def test_rerun_is_current_and_rebuild_is_reproducible(small, exported):
    out, manifest = exported
    before = {p: p.stat().st_mtime_ns for p in (out / ARTIFACT_DIR).iterdir()}
    assert "nothing to rebuild" in export_cli(small["ckpt"], out, small["data"], small["clf"]).stdout
    assert before == {p: p.stat().st_mtime_ns for p in (out / ARTIFACT_DIR).iterdir()}
    # A rebuild elsewhere (the fixture's second process) gives the same bytes, so the same manifest. (Traced
    # TorchScript numbers its classes per process and embeds file paths as debug info: reproducible for one
    # checkout, one command per process, as `make export` runs.)
    assert Manifest.read(small["root"] / "store2" / ARTIFACT_DIR) == manifest


def test_gate_fails_on_corrupted_artifact(small, exported, tmp_path):
    model, _ = checkpoint.load_model(small["ckpt"])
    shutil.copytree(exported[0] / ARTIFACT_DIR, tmp_path, dirs_exist_ok=True)  # a copy to damage
    paths = {name: tmp_path / entry.file for name, entry in exported[1].artifacts.items() if name != "stats/latent"}
    x_test = torch.rand(16, 1, 28, 28)
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
    return run_module("export", *args)


def test_bad_inputs_fail_clearly_and_write_nothing(small, tmp_path):
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
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = run_export(str(small["ckpt"]), "--out", str(blocker / "store"))
    assert r.returncode == 1 and f"{blocker / 'store'}: cannot create the output folder" in r.stderr
    assert list(store.iterdir()) == []


def check_latent_size(artifact_dir: Path, latent_dim: int) -> None:
    """The export of a ``latent_dim`` model: shapes in the manifest, every artifact runs at that size, gate passed."""
    manifest = Manifest.read(artifact_dir)
    assert manifest.shapes == Shapes(latent_dim, (1, 28, 28))
    assert manifest.parity["passed"] and manifest.model_config["latent_dim"] == latent_dim
    z = np.random.default_rng(0).standard_normal((3, latent_dim)).astype(np.float32)
    for name in manifest.artifacts:  # every decoder the gate kept
        if name.startswith("decoder/"):
            assert backends.load(artifacts.DECODERS[name.split("/")[1]], artifact_dir)(z).shape == (3, 1, 28, 28)
    x = np.random.default_rng(1).random((3, 1, 28, 28)).astype(np.float32)
    for backend in artifacts.ENCODERS.values():
        assert [a.shape for a in backends.load(backend, artifact_dir)(x)] == [(3, latent_dim)] * 2  # mu, logvar
    stats = artifacts.read_stats(artifact_dir / artifacts.STATS)
    assert stats.class_means.shape == (10, latent_dim) and stats.anchor_means.shape[::2] == (10, latent_dim)
    assert stats.principal_directions.shape == (latent_dim, latent_dim)
    assert sorted(stats.active_order) == list(range(latent_dim))
    session = ort.InferenceSession(str(artifact_dir / artifacts.DECODERS["onnx-int8"].artifact),
                                   providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", latent_dim]


def test_export_takes_any_latent_size(artifacts_2d, exported):
    """`make export` on 1-epoch 2-d and 64-d checkpoints (the 2-d one is served in test_serving)."""
    check_latent_size(artifacts_2d, 2)
    check_latent_size(exported[0] / ARTIFACT_DIR, 64)


def test_reduced_precision_failing_the_gate_is_refused_unless_the_fp32_fallback_is_chosen(
        artifacts_2d, fallback_2d, tmp_path, dataset_dir, small_classifier):
    ckpt = artifacts_2d.parent.parent / "run" / "final.pt"
    refused = run_export(str(ckpt), "--out", str(tmp_path), "--name", "strict", "--psnr-min-db", "100",
                         "--data-dir", str(dataset_dir), "--classifier", str(small_classifier), *SMALL_EXPORT,
                         "--prior-samples", "50")  # the last flag wins: a refusal needs few samples
    assert refused.returncode == 1 and "parity gate failed" in refused.stderr
    assert "--allow-fp32-fallback" in refused.stderr and not (tmp_path / "strict").exists()
    manifest = Manifest.read(fallback_2d)
    report = json.loads((fallback_2d / "export_report.json").read_text())
    failed = {name for name, row in report["decoders"].items() if not row["passed"]}
    assert "onnx-int8" in failed and manifest.fallback.backends == {name: DECODERS[name].twin for name in failed}
    assert failed <= {"onnx-int8", "torchscript-fp16", "torchscript-int8"}  # the fp32 decoders are exact
    assert manifest.export_config["psnr_min_db"] == 100
    assert not any(f"decoder/{name}" in manifest.artifacts or (fallback_2d / artifacts.DECODERS[name].artifact).exists()
                   for name in failed)
    assert manifest.serving_backends(("onnx-int8", "torchscript-fp32")) == ("onnx-fp32", "torchscript-fp32")
    out = tmp_path / "mar"
    out.mkdir()
    mar = archive.build("decode_fallback", MODELS["decode"], fallback_2d, out)
    cpu = archive.model_config(MODELS["decode"], manifest)["handler"]["decoder"]["cpu"]
    assert cpu == ["onnx-fp32", "torchscript-fp32"]  # onnx-int8 and torchscript-int8 swapped for their twins
    assert {"decoder_fp32.onnx", "decoder_fp32.pt"} <= set(archive.contents(mar))
    # An encoder or an fp32 decoder failing leaves nothing to fall back to; so does a failing twin.
    report = {"decoders": {"onnx-int8": {"passed": False}, "onnx-fp32": {"passed": True},
                           "torchscript-fp16": {"passed": False}, "torchscript-fp32": {"passed": True}},
              "encoders": {"onnx-fp32": {"passed": False}}}
    assert export_main.precision_fallback(report) is None
    report["encoders"]["onnx-fp32"]["passed"] = True
    assert export_main.precision_fallback(report) == {"onnx-int8": "onnx-fp32", "torchscript-fp16": "torchscript-fp32"}
    report["decoders"]["torchscript-fp32"]["passed"] = False
    assert export_main.precision_fallback(report) is None


def test_the_gate_fails_a_coarse_int8_configuration():
    """The TorchScript int8 decoder as the export builds it (7-bit weights, 8-bit activations) against one whose
    weights have 4 bits: the gate tells them apart on the released decoder."""
    model, _ = checkpoint.load_model(Path("model_store/release/vae.pt"))
    decoder = LowResDecoder(model.eval().decoder).eval()
    narrow = QConfig(activation=build.INT8_QCONFIG.activation,
                     weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                               quant_min=-8, quant_max=7))
    calibration = build.prior_latents(model, 256, 1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {f"decoder/{name}": Path(tmp) / f"{name}.pt" for name in ("export", "coarse")}
        build.torchscript(build.static_int8(decoder, calibration), torch.zeros(2, 64), paths["decoder/export"])
        build.torchscript(build.static_int8(decoder, calibration, narrow), torch.zeros(2, 64), paths["decoder/coarse"])
        x_test = data.load().test.tensor()[:1000]
        report = parity.check(model, paths, x_test, classifier.load(classifier.DEFAULT_PATH)[0],
                              ExportConfig(prior_samples=1000), dict.fromkeys(("export", "coarse"),
                                                                             artifacts.DECODERS["torchscript-int8"]))
    good, bad = report["decoders"]["export"], report["decoders"]["coarse"]
    assert good["passed"] and not bad["passed"] and max(bad["psnr_test_means_db"], bad["psnr_prior_db"]) < 40


def test_the_released_exports_have_a_torchscript_int8_decoder_with_margin_and_int8_convolutions():
    """Both releases: the static int8 TorchScript decoder passed the unchanged gate by a margin (at most 0.08 nats,
    at least 42 dB), the manifest says what it quantizes, and its two middle convolutions are int8."""
    for name in RELEASES.values():
        manifest = Manifest.read(Path("model_store") / name)
        assert manifest.fallback is None and manifest.export_config["elbo_delta_max"] == 0.1
        row = manifest.parity["decoders"]["torchscript-int8"]
        assert row["passed"] and row["neg_elbo_delta"] <= 0.08
        assert min(row["psnr_test_means_db"], row["psnr_prior_db"]) >= 42
        entry = manifest.artifacts["decoder/torchscript-int8"]
        assert entry.quantized == DECODERS["torchscript-int8"].quantized and "7-bit weights" in entry.quantized
        assert "dynamic" not in " ".join(a.quantized for a in manifest.artifacts.values())
        graph = str(torch.jit.load(str(Path("model_store") / name / entry.file)).inlined_graph)
        assert graph.count("quantized::conv2d_relu") == 2 and graph.count("aten::_convolution") == 1
        assert "aten::linear" in graph and "quantized::linear" not in graph  # the Linear reads the latent in fp32
    report = {"decoders": {"torchscript-int8": {"passed": False}, "onnx-int8": {"passed": True}}, "encoders": {}}
    assert export_main.optional_drops(report) == {"torchscript-int8": "torchscript-fp32"}
    assert export_main.precision_fallback(report) is None  # nothing required failed


def test_the_torchscript_int8_decoder_passes_on_both_kinds_of_cpu_under_both_engines():
    """bench.quantization's gate of both releases' torchscript-int8 artifact in a process on this CPU and one whose
    kernels are limited to AVX2 (as on a CPU without VNNI, whose int16 pair sums saturate), under the x86 and the
    fbgemm engines, on 500 test images and prior draws: every row passes by the margin."""
    rows = quantization.cpu_kind_rows(500)
    assert {(r["cpu"], r["engine"], r["model"]) for r in rows} == {
        (cpu, engine, ckpt.parent.name) for cpu in quantization.CPU_KINDS for engine in quantization.ENGINES
        for ckpt in RELEASES}
    vnni = "vnni" in quantization.cpu_int8()
    for r in rows:
        assert r["int16_pairs_saturate"] == (r["cpu"] == "AVX2 only" or not vnni), r
        assert r["passed"] and r["neg_elbo_delta"] <= 0.08 and min(r["psnr_test_means_db"], r["psnr_prior_db"]) >= 42
    assert {r["aten_capability"] for r in rows if r["cpu"] == "AVX2 only"} == {"AVX2"}


def test_export_without_a_checkpoint_exports_every_release_and_names_are_folders(tmp_path):
    assert run_export("--name", "x").returncode == 2  # --name needs a checkpoint
    bad = run_export("model_store/release/vae.pt", "--name", "../elsewhere", "--out", str(tmp_path))
    assert bad.returncode == 2 and "a folder name inside --out" in bad.stderr
    for name in RELEASES.values():  # a copy, so that a stale export is rebuilt there, never in model_store/
        shutil.copytree(Path("model_store") / name, tmp_path / name)
    current = run_export("--out", str(tmp_path))  # the committed releases: their committed exports are current
    assert current.returncode == 0, current.stderr
    assert current.stdout.count("nothing to rebuild") == len(RELEASES)


def test_manifest_errors_name_the_file(tmp_path):
    path = tmp_path / MANIFEST
    with pytest.raises(ManifestError, match=f"{path}: not found; run `make export`"):
        Manifest.read(tmp_path)
    path.write_text("{truncated")
    with pytest.raises(ManifestError, match=f"{path}: not a readable manifest"):
        Manifest.read(tmp_path)
    path.write_text('{"format": "fmvae-export-v1"}')
    with pytest.raises(ManifestError, match="format 'fmvae-export-v1', expected 'fmvae-export'"):
        Manifest.read(tmp_path)
    path.write_text('{"format": "fmvae-export-v2", "shapes": {}}')  # the layout before the version field
    with pytest.raises(ManifestError, match="manifest version 2, this code reads version 3; re-run `make export`"):
        Manifest.read(tmp_path)
    document = json.loads((Path("model_store") / ARTIFACT_DIR / MANIFEST).read_text())
    del document["shapes"]
    path.write_text(json.dumps(document))
    with pytest.raises(ManifestError, match=f"{path}: damaged manifest, 'shapes' is missing"):
        Manifest.read(tmp_path)
    document = json.loads((Path("model_store") / ARTIFACT_DIR / MANIFEST).read_text())
    document["artifacts"]["decoder/onnx-fp32"] = {"file": "x.onnx"}
    path.write_text(json.dumps(document))
    with pytest.raises(ManifestError, match=f"{path}: damaged manifest"):
        Manifest.read(tmp_path)


def test_a_manifest_write_is_atomic_and_round_trips(tmp_path, monkeypatch):
    manifest = Manifest.read(Path("model_store") / ARTIFACT_DIR)
    assert Manifest.read(manifest.write(tmp_path).parent) == manifest
    before = (tmp_path / MANIFEST).read_bytes()
    monkeypatch.setattr("json.dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        manifest.write(tmp_path)
    assert (tmp_path / MANIFEST).read_bytes() == before  # the old manifest is untouched
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # and no temp file is left


def test_latent_statistics_describe_the_posterior_means(small, exported):
    """Class means, anchors (recognised training posteriors of their class), the class model, principal directions
    and the activity order, against a direct computation."""
    out, _ = exported
    stats = artifacts.read_stats(out / ARTIFACT_DIR / artifacts.STATS)
    model, _ = checkpoint.load_model(small["ckpt"])
    fmnist = data.load(small["data"])
    with torch.no_grad():
        mu_train, logvar_train = (t.double().numpy() for t in model.encode(fmnist.train.tensor()))
        mu_test = model.encode(fmnist.test.tensor())[0].double().numpy()
    assert stats.class_names == data.CLASS_NAMES
    assert stats.anchor_means.shape == stats.anchor_stds.shape == (10, export_stats.ANCHORS, model.latent_dim)
    for label in (0, 7):
        members = fmnist.train.labels == label
        assert np.allclose(stats.class_means[label], mu_train[members].mean(0), atol=1e-5)
        # every anchor is the posterior of a training image of its class
        distance = ((stats.anchor_means[label][:, None] - mu_train[members][None]) ** 2).sum(-1)
        nearest = distance.argmin(1)
        assert np.allclose(distance.min(1), 0, atol=1e-8)
        assert np.allclose(stats.anchor_stds[label], np.exp(logvar_train[members][nearest] / 2), atol=1e-5)
    assert stats.class_weights.shape == (10, model.latent_dim) and stats.class_bias.shape == (10,)
    assert np.allclose(stats.class_probabilities(mu_test).sum(1), 1)
    directions = stats.principal_directions.astype(np.float64)
    assert np.allclose(directions @ directions.T, np.eye(64), atol=1e-4)  # orthonormal rows
    assert np.all(np.diff(stats.principal_std) <= 1e-6)  # largest variance first
    assert np.isclose(np.var(mu_test @ directions[0], ddof=1), stats.principal_std[0] ** 2, rtol=1e-3)
    assert np.array_equal(stats.active_order, np.argsort(-mu_test.var(0), kind="stable"))


def test_the_class_model_learns_classes_that_latents_separate():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (10, 8))
    labels = rng.integers(0, 10, 2000)
    z = centres[labels] + rng.normal(0, 1, (2000, 8))
    weights, bias = export_stats.class_model(z, labels, 10)
    stats = artifacts.LatentStats(data.CLASS_NAMES, *[np.zeros(1)] * 3, weights, bias, *[np.zeros(1)] * 8)
    fresh = rng.integers(0, 10, 500)
    probabilities = stats.class_probabilities(centres[fresh] + rng.normal(0, 1, (500, 8)))
    assert (probabilities.argmax(1) == fresh).mean() > 0.9
    shuffled = export_stats.class_model(z, rng.permutation(labels), 10)  # labels unrelated to z: no better than chance
    stats = artifacts.LatentStats(data.CLASS_NAMES, *[np.zeros(1)] * 3, *shuffled, *[np.zeros(1)] * 8)
    assert (stats.class_probabilities(centres[fresh]).argmax(1) == fresh).mean() < 0.3


def test_statistics_errors_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match=f"{tmp_path / 'missing.npz'}: not found"):
        artifacts.read_stats(tmp_path / "missing.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ManifestError, match="not readable latent statistics"):
        artifacts.read_stats(tmp_path / "broken.npz")


def test_every_backend_record_has_a_builder_and_a_runtime():
    """A backend is its record, its runtime adapter and its builder: none of the three is missing for another."""
    from export.build import BUILDERS
    from runtime.backends import RUNTIMES

    records = {f"decoder/{k}": b for k, b in artifacts.DECODERS.items()} | {
        f"encoder/{k}": b for k, b in artifacts.ENCODERS.items()}
    assert set(BUILDERS) == set(records)
    assert {b.runtime for b in records.values()} == set(RUNTIMES)
