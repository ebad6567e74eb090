"""Training, exact resume, evaluation and the CLIs' errors, on a small generated dataset."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.artifacts import DECODERS
from tests.conftest import run_module
from training import checkpoint, data, evaluate, release, train
from training.config import TrainConfig
from training.errors import TrainingError
from training.model import VAE, StandardNormal, VAEConfig

SMALL = ["--channels", "8", "16", "32", "--latent-dim", "8", "--batch-size", "64"]


def run_train(out: Path, data_dir: Path, *extra: str) -> None:
    train.main(["--out", str(out), "--data-dir", str(data_dir), "--device", "cpu", *SMALL, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset_dir) -> Path:
    """A 2-epoch run with checkpoints every epoch."""
    out = tmp_path_factory.mktemp("run")
    run_train(out, dataset_dir, "--epochs", "2", "--checkpoint-every", "1")
    return out


def test_training_writes_everything(trained):
    for name in ("epoch_001.pt", "epoch_002.pt", "final.pt", "history.csv", "curves.png",
                 "grids/epoch_002_recon.png", "grids/epoch_002_samples.png", "grids/epoch_002_interp.png"):
        assert (trained / name).is_file(), name
    rows = list(csv.DictReader((trained / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["train_total"]) < float(rows[0]["train_total"])  # it learns
    state = checkpoint.load(trained / "final.pt")
    assert state["epoch"] == 2 and state["model_config"]["latent_dim"] == 8
    assert set(state["data_sha256"]) == {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    assert not list(trained.glob(".*.tmp"))  # atomic writes leave no temp files


def test_resume_matches_uninterrupted_run(tmp_path, dataset_dir, trained):
    run_train(tmp_path / "a", dataset_dir, "--epochs", "1")
    train.main(["--resume", str(tmp_path / "a" / "final.pt"), "--epochs", "2", "--out", str(tmp_path / "b"),
                "--data-dir", str(dataset_dir), "--device", "cpu"])
    resumed, straight = checkpoint.load(tmp_path / "b" / "final.pt"), checkpoint.load(trained / "final.pt")
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in straight["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in resumed["history"]]


def test_lr_decay_set_on_resume_matches_fresh_run(tmp_path, dataset_dir, trained):
    # Epoch 1 is identical with or without a decay that starts after it, so adding the decay on resume
    # gives exactly the run that had it from the start.
    run_train(tmp_path / "fresh", dataset_dir, "--epochs", "2", "--lr-decay-start", "1")
    train.main(["--resume", str(trained / "epoch_001.pt"), "--lr-decay-start", "1", "--out", str(tmp_path / "late"),
                "--data-dir", str(dataset_dir), "--device", "cpu"])
    fresh, late = checkpoint.load(tmp_path / "fresh" / "final.pt"), checkpoint.load(tmp_path / "late" / "final.pt")
    assert late["train_config"]["lr_decay_start"] == 1
    for name, tensor in fresh["model"].items():
        assert torch.equal(tensor, late["model"][name]), name
    assert not torch.equal(fresh["model"]["decoder.fc.weight"], checkpoint.load(trained / "final.pt")["model"][
        "decoder.fc.weight"])  # and the decay did change epoch 2
    with pytest.raises(TrainingError, match="would change epochs 1..2"):
        train.main(["--resume", str(trained / "final.pt"), "--epochs", "3", "--lr-decay-start", "1"])
    with pytest.raises(TrainingError, match="would change epochs 1..2"):  # the cosine depends on the total epochs
        train.main(["--resume", str(tmp_path / "fresh" / "final.pt"), "--epochs", "3"])


def test_lr_schedule():
    cfg = TrainConfig(epochs=60, lr=1e-3, lr_decay_start=30)
    assert cfg.lr_at(1) == cfg.lr_at(30) == 1e-3
    lrs = [cfg.lr_at(e) for e in range(31, 61)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)) and 0 < lrs[-1] < 1e-5
    assert TrainConfig().lr_at(60) == 1e-3


def test_kl_warmup_schedule():
    cfg = TrainConfig(kl_warmup_epochs=4, beta=2.0)
    assert [cfg.beta_at(e) for e in (1, 2, 4, 10)] == [0.5, 1.0, 2.0, 2.0]
    assert TrainConfig().beta_at(1) == 1.0


def test_evaluate_writes_report(trained, dataset_dir, small_classifier):
    evaluate.main([str(trained / "final.pt"), "--k", "32", "--fd-samples", "300", "--classifier", str(small_classifier),
                   "--data-dir", str(dataset_dir)])
    report = json.loads((trained / "report.json").read_text())
    t = report["test"]
    assert math.isclose(t["neg_elbo"], t["recon"] + t["kl"], rel_tol=1e-9)
    assert report["bce_floor"] < t["recon"]  # cross-entropy >= entropy for any decoder
    assert t["neg_iwae"] <= t["neg_elbo"] + 0.5  # the IWAE bound is at least as tight
    u = report["latent"]
    assert 0 <= u["active_units"] <= 8 and len(u["kl_per_dim"]) == 8
    assert math.isclose(sum(u["kl_per_dim"]), t["kl"], rel_tol=1e-3)
    assert u["mutual_information"] <= u["mutual_information_bound"] + 1e-6
    assert report["diagnosis"].split(":")[0] in {"posterior collapse", "weak encoding", "healthy"}
    assert report["frechet"]["samples_vs_test"] > 0 and report["frechet"]["train_vs_test_floor"] > 0
    for key in ("samples", "reconstructions", "lerp_vs_slerp", "traversal", "pca", "coverage"):
        assert (trained / report["figures"][key]).is_file()
    assert "manifold" not in report["figures"]  # 2-d models only
    assert "negative IWAE bound, k=32" in (trained / "report.md").read_text()
    shares = report["frechet"]["prior_class_shares"]
    assert list(shares) == list(data.CLASS_NAMES) and math.isclose(sum(shares.values()), 1, abs_tol=1e-3)
    model, _ = checkpoint.load_model(trained / "final.pt")
    params = report["parameters"]
    assert params["total"] == sum(p.numel() for p in model.parameters()) == params["encoder"] + params["decoder"]
    assert f"{params['total']:,} parameters" in (trained / "report.md").read_text()


def test_a_2d_model_gets_its_manifold_figure(tmp_path, artifacts_2d, dataset_dir, small_classifier):
    run = artifacts_2d.parent.parent / "run"
    shutil.copy(run / "final.pt", tmp_path / "final.pt")
    report = evaluate.evaluate(tmp_path / "final.pt", k=4, data_dir=str(dataset_dir),
                               classifier_path=small_classifier, fd_samples=300)
    figure = tmp_path / report["figures"]["manifold"]
    with Image.open(figure) as image:
        assert image.width > 2 * image.height * 0.9  # the decoded grid beside the scatter
    assert "Decoded 2-d latent plane" in (tmp_path / "report.md").read_text()


def test_bce_floor_is_mean_binary_entropy():
    x = torch.tensor([0.0, 1.0, 0.5, 0.25]).repeat(196).view(1, 1, 28, 28)
    per_pixel = [0.0, 0.0, math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    assert evaluate.bce_floor(x) == pytest.approx(196 * sum(per_pixel), rel=1e-6)


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5000, 3))
    assert evaluate.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean shifted by (1, 2, 2): distance is the squared shift, 9.
    assert evaluate.frechet_distance(a, a + np.array([1.0, 2.0, 2.0])) == pytest.approx(9.0, rel=1e-6)
    # N(0, I) vs N(0, 4I) in 3-d: tr(I + 4I - 2 * 2I) = 3.
    assert evaluate.frechet_distance(a, 2 * a) == pytest.approx(3.0, rel=1e-2)


def test_diagnosis_categories():
    base = {"kl_per_dim": [0.0] * 64, "informative_units": 3, "informative_threshold_nats": 0.1,
            "mutual_information_bound": math.log(10000), "aggregate_posterior_kl": 1.0}
    assert evaluate.diagnose({**base, "active_units": 0, "kl_total": 0.1, "mutual_information": 0.0}) \
        .startswith("posterior collapse")
    assert evaluate.diagnose({**base, "active_units": 5, "kl_total": 10.0, "mutual_information": 8.0}) \
        .startswith("weak encoding")
    assert evaluate.diagnose({**base, "active_units": 30, "kl_total": 25.0, "mutual_information": 9.0}) \
        .startswith("healthy")
    two = {**base, "kl_per_dim": [3.0, 3.0], "kl_total": 6.0, "mutual_information": 5.9}  # the 2-d model's figures
    assert evaluate.diagnose({**two, "active_units": 2}).startswith("healthy")
    assert evaluate.diagnose({**two, "active_units": 1}).startswith("weak encoding")
    assert [evaluate.needed_active_units(d) for d in (1, 2, 8, 64)] == [1, 2, 2, 16]


def test_cli_errors_name_the_problem(tmp_path, dataset_dir, trained):
    r = run_module("training.train", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1")
    assert r.returncode == 1 and str(tmp_path / "nowhere") in r.stderr
    r = run_module("training.train", "--epochs", "0")
    assert r.returncode == 2 and "--epochs" in r.stderr and "must be >= 1" in r.stderr
    not_ckpt = tmp_path / "notes.txt"
    not_ckpt.write_text("hello")
    r = run_module("training.train", "--resume", str(not_ckpt))
    assert r.returncode == 1 and f"{not_ckpt}: not a readable PyTorch checkpoint" in r.stderr
    r = run_module("training.train", "--resume", str(trained / "final.pt"), "--lr", "0.1", "--epochs", "5")
    assert r.returncode == 1 and "--lr cannot change on --resume" in r.stderr
    r = run_module("training.train", "--resume", str(trained / "final.pt"))
    assert r.returncode == 1 and "already at epoch 2" in r.stderr
    r = run_module("training.evaluate", str(tmp_path / "missing.pt"))
    assert r.returncode == 1 and f"{tmp_path / 'missing.pt'}: checkpoint file not found" in r.stderr
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained / "final.pt").read_bytes()[:4000])
    r = run_module("training.evaluate", str(truncated))
    assert r.returncode == 1 and f"{truncated}: not a readable PyTorch checkpoint" in r.stderr
    r = run_module("training.evaluate", str(trained / "final.pt"), "--k", "0")
    assert r.returncode == 2 and "--k must be >= 1" in r.stderr
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    r = run_module("training.evaluate", str(tmp_path / "other.pt"))
    assert r.returncode == 1 and "not an fmvae checkpoint" in r.stderr


def test_release_publishes_small_checkpoint_with_card(tmp_path, trained, dataset_dir, small_classifier):
    out = tmp_path / "release"
    release.main([str(trained / "final.pt"), "--out", str(out), "--k", "4", "--fd-samples", "300",
                  "--data-dir", str(dataset_dir),
                  "--classifier", str(small_classifier)])
    state = checkpoint.load(out / "vae.pt")
    assert "optimizer" not in state and state["epoch"] == 2
    assert (out / "vae.pt").stat().st_size < (trained / "final.pt").stat().st_size
    card = (out / "MODEL_CARD.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert f"{report['test']['neg_elbo']:.2f}" in card and report["checkpoint_sha256"] in card
    assert DECODERS["torchscript-int8"].quantized in card and DECODERS["onnx-int8"].quantized in card
    assert (out / "curves.png").is_file() and (out / "history.csv").read_text() == (trained / "history.csv").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]  # no staging folder left


def test_atomic_write_gives_files_the_usual_mode(tmp_path):
    target = tmp_path / "a.txt"
    checkpoint.atomic_write(target, lambda tmp: tmp.write_text("x"))
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_text() == "x" and (target.stat().st_mode & 0o777) == 0o666 & ~umask
    assert list(tmp_path.iterdir()) == [target]


def test_batch_norm_model_trains_resumes_and_names_its_recipe(tmp_path, dataset_dir):
    run_train(tmp_path, dataset_dir, "--epochs", "1", "--batch-norm", "--kl-warmup-epochs", "2", "--subset", "256")
    state = checkpoint.load(tmp_path / "final.pt")
    assert state["model_config"]["batch_norm"] is True
    model, _ = checkpoint.load_model(tmp_path / "final.pt")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 5 and all(not m.training and m.num_batches_tracked > 0 for m in norms)
    command = release.train_command(state["train_config"], Path("runs/x"))
    assert "--batch-norm" in command and "--kl-warmup-epochs 2" in command and "--channels 8 16 32" in command
    with pytest.raises(TrainingError, match="--batch-norm cannot change on --resume"):
        train.main(["--resume", str(tmp_path / "final.pt"), "--epochs", "2", "--batch-norm"])


def test_checkpoints_from_before_batch_norm_load_without_it():
    old = {"latent_dim": 64, "channels": [32, 64, 128]}
    assert VAEConfig.from_dict(old) == VAEConfig() and not VAEConfig.from_dict(old).batch_norm
    assert VAEConfig.from_dict(VAEConfig(batch_norm=True).to_dict()).batch_norm


def test_init_from_trains_on_from_weights_with_a_fresh_optimizer_and_records_it(tmp_path, dataset_dir, trained):
    parent = tmp_path / "released.pt"  # like a released vae.pt: no optimizer or RNG state
    checkpoint.save(parent, {k: v for k, v in checkpoint.load(trained / "final.pt").items()
                             if k in release.KEEP})
    with pytest.raises(TrainingError, match="pass --epochs > that"):
        train.main(["--init-from", str(parent), "--epochs", "2", "--data-dir", str(dataset_dir)])
    with pytest.raises(TrainingError, match="--channels cannot be set with --init-from"):
        train.main(["--init-from", str(parent), "--epochs", "3", "--channels", "8", "16", "32"])
    out = tmp_path / "long"
    train.main(["--out", str(out), "--init-from", str(parent), "--epochs", "3", "--lr", "3e-4",
                "--lr-decay-start", "2", "--data-dir", str(dataset_dir), "--device", "cpu", "--batch-size", "64"])
    state = checkpoint.load(out / "final.pt")
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert state["history"][:2] == checkpoint.load(parent)["history"]
    assert state["init_from"]["sha256"] == checkpoint.file_sha256(parent) and state["init_from"]["epoch"] == 2
    assert state["model_config"] == checkpoint.load(parent)["model_config"]
    moved = [not torch.equal(a, state["model"][k]) for k, a in checkpoint.load(parent)["model"].items()
             if a.is_floating_point()]
    assert any(moved)
    command = release.train_command(state["train_config"], out, state["init_from"])
    assert f"--init-from {parent}" in command and "--epochs 3" in command and "--lr 0.0003" in command
    child = tmp_path / "child"  # a third generation: the model card names the whole chain
    train.main(["--out", str(child), "--init-decoder-from", str(out / "final.pt"), "--epochs", "1",
                "--data-dir", str(dataset_dir), "--device", "cpu", "--batch-size", "64"])
    chain = release.ancestry(checkpoint.load(child / "final.pt")["init_from"])
    assert len(chain) == 2 and f"its decoder from `{out / 'final.pt'}`" in chain[0]
    assert f"--init-from {parent}" in chain[0] and checkpoint.file_sha256(parent)[:16] in chain[1]


def test_a_new_encoder_learns_on_a_fixed_decoder_then_both_train(tmp_path, dataset_dir, trained):
    """--init-decoder-from: the checkpoint's decoder, a wider new encoder; the decoder stays fixed through
    --freeze-decoder-epochs, then trains; the lineage and the reproducing command name both."""
    out = tmp_path / "wide-encoder"
    train.main(["--out", str(out), "--init-decoder-from", str(trained / "final.pt"), "--encoder-channels", "16", "32",
                "64", "--freeze-decoder-epochs", "1", "--epochs", "2", "--checkpoint-every", "1",
                "--data-dir", str(dataset_dir), "--device", "cpu"])
    parent, first, last = (checkpoint.load(p) for p in (trained / "final.pt", out / "epoch_001.pt", out / "final.pt"))
    decoder = [k for k in parent["model"] if k.startswith("decoder.")]
    assert all(torch.equal(parent["model"][k], first["model"][k]) for k in decoder)  # fixed through epoch 1
    assert not all(torch.equal(first["model"][k], last["model"][k]) for k in decoder)  # trained in epoch 2
    assert first["model"]["encoder.conv.0.weight"].shape[0] == 16 and last["epoch"] == 2
    model = VAEConfig.from_dict(last["model_config"])
    assert (model.encoder_channels, model.channels) == ((16, 32, 64), (8, 16, 32))
    assert last["init_from"]["part"] == "decoder" and last["train_config"]["freeze_decoder_epochs"] == 1
    command = release.train_command(last["train_config"], out, last["init_from"])
    assert f"--init-decoder-from {trained / 'final.pt'} --encoder-channels 16 32 64" in command
    assert "--freeze-decoder-epochs 1" in command
    with pytest.raises(TrainingError, match="--channels cannot be set with --init-decoder-from"):
        train.main(["--init-decoder-from", str(trained / "final.pt"), "--channels", "8", "8", "8"])
    with pytest.raises(TrainingError, match="--init-from and --init-decoder-from exclude each other"):
        train.main(["--init-from", str(trained / "final.pt"), "--init-decoder-from", str(trained / "final.pt")])


def test_a_learned_prior_is_fitted_to_the_posteriors_then_trained_with_the_model(tmp_path, dataset_dir, trained):
    """--init-from a standard-prior checkpoint with --prior-components K: the mixture starts fitted to the
    aggregate posterior (its KL beats N(0, I)'s on the same posteriors), trains on, is kept through --resume, names
    itself in the reproducing command, and the evaluation's bounds are taken against it (IWAE <= ELBO)."""
    parent = checkpoint.load(trained / "final.pt")
    with pytest.raises(TrainingError, match="cannot change on --resume"):
        train.main(["--resume", str(trained / "final.pt"), "--prior-components", "4", "--epochs", "5"])
    init = {**parent, "init_from": None}
    fitted = train.add_prior(init, 4, str(dataset_dir), steps=200)
    model = VAE(VAEConfig.from_dict(fitted["model_config"]))
    model.load_state_dict(fitted["model"])
    x = data.load(str(dataset_dir)).test.tensor()
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(0)) * torch.exp(0.5 * logvar)
        standard = StandardNormal(model.latent_dim).log_prob(z).mean()
        assert model.prior.log_prob(z).mean() > standard  # closer to the aggregate posterior than N(0, I)
    out = tmp_path / "prior"
    train.main(["--out", str(out), "--init-from", str(trained / "final.pt"), "--prior-components", "4",
                "--epochs", "3", "--data-dir", str(dataset_dir), "--device", "cpu", "--batch-size", "64"])
    state = checkpoint.load(out / "final.pt")
    assert state["model_config"]["prior_components"] == 4 and state["model"]["prior.means"].shape == (4, 8)
    assert not torch.equal(state["model"]["prior.means"], fitted["model"]["prior.means"])  # trained on
    command = release.train_command(state["train_config"], out, state["init_from"])
    assert "--prior-components 4" in command
    with pytest.raises(TrainingError, match="learned prior"):
        train.main(["--init-from", str(out / "final.pt"), "--prior-components", "2", "--epochs", "5"])
    trained_model, _ = checkpoint.load_model(out / "final.pt")
    bounds = evaluate.elbo_and_iwae(trained_model, x[:64], k=16)
    assert bounds["neg_iwae"] <= bounds["neg_elbo"] + 1e-6 and bounds["kl"] > 0
    usage = evaluate.latent_usage(*trained_model.encode(x[:200]), trained_model.prior)
    assert usage["mutual_information"] == pytest.approx(usage["kl_total"] - usage["aggregate_posterior_kl"])
