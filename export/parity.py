"""The parity gate: every exported decoder against the fp32 eager decoder, every encoder (mean and
log-variance) against eager.

Decoders are compared on (a) the test set's posterior means and (b) fixed-seed prior samples: PSNR of the
[0, 1] images, max absolute error, the change of the test negative ELBO (one fixed posterior sample per
image), and agreement of the project classifier's labels on decoded prior samples.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from export.build import prior_latents
from export.config import ExportConfig
from runtime import backends
from runtime.artifacts import DECODERS, ENCODERS, Backend
from training.classifier import Classifier
from training.model import VAE

ENCODER_MAX_ABS = 1e-4  # fp32 encoders must match eager to float rounding


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (peak 1); inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def finite(value: float, digits: int) -> float | None:
    """``value`` rounded for the report (reruns must give identical manifests); None for infinity."""
    return None if math.isinf(value) else round(value, digits)


def run_batched(fn, array: np.ndarray, batch: int = 500) -> np.ndarray | tuple[np.ndarray, ...]:  # noqa: ANN001
    """Apply an artifact to ``array`` in batches (an encoder's (mu, logvar) come back as a pair of arrays)."""
    parts = [fn(array[i:i + batch]) for i in range(0, len(array), batch)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(outputs) for outputs in zip(*parts, strict=True))
    return np.concatenate(parts)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits.astype(np.float64)))


def neg_elbo(logits: np.ndarray, x: torch.Tensor, kl: torch.Tensor) -> float:
    """Mean over images of BCE(logits, x) summed over pixels plus KL, in nats."""
    recon = F.binary_cross_entropy_with_logits(torch.from_numpy(logits).double(), x.double(),
                                               reduction="none").flatten(1).sum(1)
    return (recon + kl.double()).mean().item()


def check(model: VAE, artifacts: dict[str, Path], x_test: torch.Tensor, clf: Classifier, cfg: ExportConfig,
          records: dict[str, Backend] | None = None) -> dict:
    """Compare each artifact ({"decoder/<name>" or "encoder/<name>": path}) with eager fp32; returns {"passed":
    bool, "decoders": {...}, "encoders": {...}}. An artifact runs as the ``Backend`` record of its name
    (``runtime/artifacts.py``), or as ``records`` says for names of its own (a candidate being compared)."""
    records = DECODERS | {f"encoder/{k}": b for k, b in ENCODERS.items()} | (records or {})
    model = model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    with torch.no_grad():
        mu, logvar = model.encode(x_test)
        z_post = (mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)).numpy()
    prior = prior_latents(model, cfg.prior_samples, cfg.seed)
    inputs = {"test_means": mu.numpy(), "posterior_samples": z_post, "prior": prior}

    def eager(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.decode(torch.from_numpy(z)).numpy()

    reference = {k: run_batched(eager, v) for k, v in inputs.items()}
    with torch.no_grad():  # the KL against the model's prior (Monte Carlo at z_post for a learned one)
        kl = model.loss(x_test, torch.from_numpy(reference["posterior_samples"]), mu, logvar,
                        torch.from_numpy(z_post))[2]
    ref_elbo = neg_elbo(reference["posterior_samples"], x_test, kl)
    ref_images = {k: sigmoid(reference[k]) for k in ("test_means", "prior")}
    ref_labels = clf.predict(torch.from_numpy(ref_images["prior"]).float())
    report: dict = {"reference_neg_elbo": round(ref_elbo, 5), "bars": {"psnr_min_db": cfg.psnr_min_db,
                                                            "elbo_delta_max": cfg.elbo_delta_max,
                                                            "encoder_max_abs": ENCODER_MAX_ABS},
                    "decoders": {}, "encoders": {}}
    for name, path in tqdm([(k, v) for k, v in artifacts.items() if k.startswith("decoder/")],
                           desc="parity", unit="artifact", file=sys.stderr, disable=None, leave=False):
        backend = name.split("/", 1)[1]
        half = records[backend].half_precision
        n = cfg.half_precision_samples if half else None  # None: every latent of each set
        fn = backends.load(records[backend], path)
        out = {k: run_batched(fn, v[:n]) for k, v in inputs.items()}
        images = {k: sigmoid(v) for k, v in out.items()}
        refs = {k: v[:n] for k, v in ref_images.items()}
        labels = clf.predict(torch.from_numpy(images["prior"]).float())
        psnr_means = psnr(images["test_means"], refs["test_means"])
        psnr_prior = psnr(images["prior"], refs["prior"])
        base_elbo = ref_elbo if n is None else neg_elbo(reference["posterior_samples"][:n], x_test[:n], kl[:n])
        elbo_delta = abs(neg_elbo(out["posterior_samples"], x_test[:n], kl[:n]) - base_elbo)
        row = {
            "latents_per_set": len(images["prior"]),
            "psnr_test_means_db": finite(psnr_means, 3),  # None: identical to eager
            "psnr_prior_db": finite(psnr_prior, 3),
            "max_abs_test_means": float(f"{np.abs(images['test_means'] - refs['test_means']).max():.4g}"),
            "max_abs_prior": float(f"{np.abs(images['prior'] - refs['prior']).max():.4g}"),
            "neg_elbo_delta": round(elbo_delta, 5),
            "label_agreement": round(float((labels == ref_labels[:n]).float().mean()), 5),
            "passed": min(psnr_means, psnr_prior) >= cfg.psnr_min_db and elbo_delta <= cfg.elbo_delta_max,
        }
        report["decoders"][backend] = row
    for name, path in artifacts.items():
        if name.startswith("encoder/"):
            outputs = run_batched(backends.load(records[name], path), x_test.numpy())
            errors = [float(np.abs(out - ref.numpy()).max()) for out, ref in zip(outputs, (mu, logvar), strict=True)]
            report["encoders"][name.split("/", 1)[1]] = {"max_abs_mu": float(f"{errors[0]:.4g}"),
                                                          "max_abs_logvar": float(f"{errors[1]:.4g}"),
                                                          "passed": max(errors) <= ENCODER_MAX_ABS}
    report["passed"] = all(r["passed"] for part in ("decoders", "encoders") for r in report[part].values())
    return report


def markdown(report: dict) -> str:
    """The parity table for people."""
    bars = report["bars"]
    lines = [f"Parity against the fp32 eager decoder (bars: PSNR >= {bars['psnr_min_db']} dB on both sets, "
             f"|change of test -ELBO| <= {bars['elbo_delta_max']} nats; reference -ELBO "
             f"{report['reference_neg_elbo']:.3f}).", "",
             "| decoder | latents per set | PSNR test means (dB) | PSNR prior (dB) | max abs err | -ELBO change (nats) "
             "| label agreement | gate |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    def db(value: float | None) -> str:
        return "identical" if value is None else f"{value:.1f}"

    for name, r in report["decoders"].items():
        lines.append(f"| {name} | {r['latents_per_set']:,} | {db(r['psnr_test_means_db'])} | "
                     f"{db(r['psnr_prior_db'])} | "
                     f"{max(r['max_abs_test_means'], r['max_abs_prior']):.2e} | {r['neg_elbo_delta']:.4f} | "
                     f"{100 * r['label_agreement']:.2f}% | {'pass' if r['passed'] else 'FAIL'} |")
    lines += ["", "| encoder | max abs error of mu | max abs error of logvar | gate |", "| --- | --- | --- | --- |"]
    for name, r in report["encoders"].items():
        lines.append(f"| {name} | {r['max_abs_mu']:.2e} | {r['max_abs_logvar']:.2e} | "
                     f"{'pass' if r['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"
