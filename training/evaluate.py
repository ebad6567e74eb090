"""Evaluate a checkpoint: ``python -m training.evaluate CHECKPOINT [--k 1000]``.

Writes ``report.json``, ``report.md`` and ``eval_*.png`` next to the checkpoint: test negative ELBO and
IWAE bound against the continuous-BCE floor, latent-usage diagnostics, a Frechet distance in the project
classifier's feature space, and figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.manifold import TSNE
from torch import Tensor
from tqdm import tqdm

from runtime.latent import interpolate
from training import checkpoint, classifier, data
from training.errors import TrainingError
from training.figures import interleave_rows, save_figure, save_grid
from training.model import LOG_2PI, VAE, StandardNormal, gaussian_log_density

ACTIVE_THRESHOLD = 0.01
INFORMATIVE_KL = 0.1  # nats; a dimension below this carries next to nothing even if its mean varies
TSNE_POINTS = 2000  # test images in the t-SNE figure (t-SNE is quadratic-ish; 2,000 takes ~15 s on 2 cores)
MANIFOLD_STEPS = 15  # decoded grid over [-3, 3]^2 for a 2-d latent


def progress(iterable, desc: str, unit: str, total: int | None = None):  # noqa: ANN001, ANN201
    """A tqdm bar on stderr (hidden when stderr is not a terminal)."""
    return tqdm(iterable, desc=desc, unit=unit, total=total, leave=False, file=sys.stderr, disable=None)


def bce_floor(x: Tensor) -> float:
    """Mean over images of the summed binary entropy of each pixel: the lowest BCE any decoder can reach."""
    entropy = -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x))
    return entropy.flatten(1).sum(1).double().mean().item()


@torch.no_grad()
def elbo_and_iwae(model: VAE, x: Tensor, k: int, decode_batch: int = 1000, seed: int = 0) -> dict:
    """Negative ELBO terms (recon averaged over k posterior samples; the KL analytic for the standard normal prior,
    else averaged over the same k samples) and the k-sample IWAE bound against the model's prior."""
    analytic = isinstance(model.prior, StandardNormal)
    gen = torch.Generator().manual_seed(seed)
    images_per_step = max(1, decode_batch // k)
    recon_sum = kl_sum = iwae_sum = 0.0
    for i in progress(range(0, len(x), images_per_step), f"IWAE k={k}", "step"):
        xb = x[i:i + images_per_step]
        mu, logvar = model.encode(xb)
        eps = torch.randn(len(xb), k, mu.shape[1], generator=gen)
        z = mu.unsqueeze(1) + eps * torch.exp(0.5 * logvar).unsqueeze(1)  # (b, k, D)
        logits = model.decode(z.flatten(0, 1)).view(len(xb), k, -1)
        target = xb.flatten(1).unsqueeze(1).expand_as(logits)
        log_px = -torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
        log_ratio = gaussian_log_density(z, mu.unsqueeze(1), logvar.unsqueeze(1)) - model.prior.log_prob(z)
        log_w = log_px - log_ratio
        kl = VAE.kl_per_dim(mu, logvar).sum(1) if analytic else log_ratio.mean(1)
        kl_sum += kl.double().sum().item()
        recon_sum += (-log_px.double().mean(1)).sum().item()
        iwae_sum += (torch.logsumexp(log_w.double(), dim=1) - math.log(k)).sum().item()
    n = len(x)
    return {"neg_elbo": (recon_sum + kl_sum) / n, "recon": recon_sum / n, "kl": kl_sum / n,
            "neg_iwae": -iwae_sum / n, "iwae_k": k}


def marginal_kl_per_dim(prior: torch.nn.Module, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
    """Mean KL(q(z_d|x) || p(z_d)) per dimension d against the prior's marginal in d: analytic for N(0, I), else
    one-sample Monte Carlo at ``z`` (a mixture's marginals are 1-d mixtures)."""
    if isinstance(prior, StandardNormal):
        return VAE.kl_per_dim(mu, logvar).mean(0)
    log_q = -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))
    weights = torch.log_softmax(prior.logits, 0)  # (K,)
    per_component = -0.5 * (LOG_2PI + prior.logvars
                            + (z.unsqueeze(1) - prior.means).pow(2) * torch.exp(-prior.logvars))  # (N, K, D)
    log_p = torch.logsumexp(per_component + weights[:, None], dim=1)
    return (log_q - log_p).mean(0)


@torch.no_grad()
def latent_usage(mu: Tensor, logvar: Tensor, prior: torch.nn.Module | None = None, seed: int = 0, chunk: int = 500
                 ) -> dict:
    """Active units, per-dimension KL, aggregate-posterior KL(q(z) || p(z)) and mutual information I(x; z).

    q(z) is the mixture of the N test posteriors; one z is drawn from each and log q(z) is estimated
    over all N components, so I(x; z) = E KL(q(z|x) || p) - KL(q(z) || p) is bounded by log N. ``prior`` is the
    model's (default N(0, I)); against a learned prior the KL terms are Monte Carlo estimates at the same z.
    """
    n = len(mu)
    prior = prior or StandardNormal(mu.shape[1])
    variance = mu.var(0)
    gen = torch.Generator().manual_seed(seed)
    z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
    kl_per_dim = sum(marginal_kl_per_dim(prior, mu[i:i + chunk], logvar[i:i + chunk], z[i:i + chunk])
                     * len(mu[i:i + chunk]) for i in range(0, n, chunk)) / n
    inv_var = torch.exp(-logvar).double()
    # log q(z_m | x_n) expanded so that the N x N table comes from two matrix products.
    const = (-0.5 * (LOG_2PI * mu.shape[1] + logvar.sum(1) + (mu.pow(2) * torch.exp(-logvar)).sum(1))).double()
    log_qz = []
    for i in progress(range(0, n, chunk), "aggregate posterior", "chunk"):
        zc = z[i:i + chunk].double()
        table = const - 0.5 * (zc.pow(2) @ inv_var.T) + zc @ (mu.double() * inv_var).T
        log_qz.append(torch.logsumexp(table, dim=1) - math.log(n))
    log_pz = torch.cat([prior.log_prob(z[i:i + chunk]) for i in range(0, n, chunk)]).double()
    aggregate_kl = (torch.cat(log_qz) - log_pz).mean().item()
    if isinstance(prior, StandardNormal):
        kl_total = kl_per_dim.sum().item()
    else:
        kl_total = (gaussian_log_density(z, mu, logvar).double() - log_pz).mean().item()
    return {
        "active_units": int((variance > ACTIVE_THRESHOLD).sum()),
        "active_threshold": ACTIVE_THRESHOLD,
        "informative_units": int((kl_per_dim > INFORMATIVE_KL).sum()),
        "informative_threshold_nats": INFORMATIVE_KL,
        "posterior_mean_variance": [round(v, 5) for v in variance.tolist()],
        "kl_per_dim": [round(v, 5) for v in kl_per_dim.tolist()],
        "kl_total": kl_total,
        "aggregate_posterior_kl": aggregate_kl,
        "mutual_information": kl_total - aggregate_kl,
        "mutual_information_bound": math.log(n),
    }


def needed_active_units(latent: int) -> int:
    """The active units a healthy encoding of ``latent`` dimensions has: a quarter of them, and at least two (both
    of a 2-d model; 16 of 64)."""
    return min(latent, max(2, latent // 4))


def diagnose(usage: dict) -> str:
    """A plain-language verdict on how the latent space is used."""
    active, latent = usage["active_units"], len(usage["kl_per_dim"])
    mi, bound = usage["mutual_information"], usage["mutual_information_bound"]
    if active == 0 or usage["kl_total"] < 1.0:
        return (f"posterior collapse: the encoder carries almost no information (KL {usage['kl_total']:.2f} nats, "
                f"{active} active units); the decoder ignores z.")
    if active < needed_active_units(latent) or mi < 0.5 * bound:
        return (f"weak encoding: {active}/{latent} active units and I(x;z) = {mi:.2f} of at most {bound:.2f} nats; "
                "try KL warm-up or a lower beta.")
    return (f"healthy: {active}/{latent} active units ({usage['informative_units']} carry more than "
            f"{usage['informative_threshold_nats']} nats of KL), I(x;z) = {mi:.2f} nats (at most {bound:.2f} "
            f"with this test set); the aggregate posterior is {usage['aggregate_posterior_kl']:.2f} nats from the "
            "prior, the gap that separates prior samples from reconstructions.")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a and b (rows are samples)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


@torch.no_grad()
def frechet(model: VAE, clf: classifier.Classifier, fmnist: data.FashionMNIST, n: int = 10000, seed: int = 0,
            floor: bool = True) -> dict:
    """FD(prior samples, test set) with FD(train subset, test set) as the floor, in classifier features, and the
    coverage of the prior: the share of its samples the classifier puts in each class (the test set: 10% each).
    The floor does not depend on the model: ``floor=False`` skips it (~3 s) for callers that compare models."""
    gen = torch.Generator().manual_seed(seed)
    x_test = fmnist.test.tensor()
    samples = torch.cat([model.sample(min(1000, n - i), generator=gen)
                         for i in progress(range(0, n, 1000), "prior samples", "batch")])
    test_features = clf.embed(x_test).numpy().astype(np.float64)
    labels = clf.predict(samples).numpy()
    shares = np.bincount(labels, minlength=len(data.CLASS_NAMES)) / len(labels)
    result = {
        "samples_vs_test": frechet_distance(clf.embed(samples).numpy().astype(np.float64), test_features),
        "n_samples": n,
        "prior_class_shares": {name: round(float(v), 4) for name, v in zip(data.CLASS_NAMES, shares, strict=True)},
    }
    if floor:
        train_idx = torch.randperm(len(fmnist.train.images), generator=gen)[:n]
        result["train_vs_test_floor"] = frechet_distance(
            clf.embed(fmnist.train.tensor()[train_idx]).numpy().astype(np.float64), test_features)
    return result


def scatter_by_class(ax: plt.Axes, xy: np.ndarray, labels: np.ndarray, title: str) -> None:
    """Points coloured by Fashion-MNIST class, with a legend."""
    for c, name in enumerate(data.CLASS_NAMES):
        ax.scatter(xy[labels == c, 0], xy[labels == c, 1], s=2, alpha=0.5, label=name)
    ax.set_title(title)
    ax.legend(markerscale=5, fontsize=8, loc="best")


@torch.no_grad()
def figures(model: VAE, fmnist: data.FashionMNIST, mu: Tensor, usage: dict, coverage: dict[str, float], out: Path
            ) -> dict[str, str]:
    """Write the evaluation PNGs; returns {figure: file name}."""
    x_test = fmnist.test.tensor()
    files = {"samples": "eval_samples.png", "reconstructions": "eval_reconstructions.png",
             "lerp_vs_slerp": "eval_lerp_vs_slerp.png", "traversal": "eval_traversal.png", "pca": "eval_pca.png",
             "coverage": "eval_coverage.png"}
    save_grid(model.sample(64, generator=torch.Generator().manual_seed(0)), 8, out / files["samples"])
    save_grid(interleave_rows(x_test[:32], torch.sigmoid(model.decode(mu[:32]))), 8, out / files["reconstructions"])
    rows = [torch.from_numpy(interpolate(mu[a].numpy(), mu[b].numpy(), 12, method)).float()
            for a, b in ((0, 1), (2, 3), (4, 5), (6, 7))
            for method in ("lerp", "slerp")]
    save_grid(torch.sigmoid(model.decode(torch.cat(rows))), 8, out / files["lerp_vs_slerp"])
    dims = np.argsort(usage["posterior_mean_variance"])[::-1][:8].tolist()
    values = torch.linspace(-3, 3, 11)
    z = torch.zeros(len(dims), len(values), model.latent_dim)
    for row, d in enumerate(dims):
        z[row, :, d] = values
    save_grid(torch.sigmoid(model.decode(z.flatten(0, 1))), len(dims), out / files["traversal"])
    labels = fmnist.test.labels
    centred = mu - mu.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    pcs = min(2, model.latent_dim)
    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    scatter_by_class(axes[0], (centred @ v[:pcs].T).numpy(), labels,
                     "test posterior means, first two principal components")
    subset = slice(0, min(TSNE_POINTS, len(mu)))
    embedded = TSNE(2, init="pca", perplexity=min(30.0, len(mu[subset]) - 1.0), random_state=0).fit_transform(
        mu[subset].numpy())
    scatter_by_class(axes[1], embedded, labels[subset], f"t-SNE of the first {len(embedded)} test posterior means")
    save_figure(fig, out / files["pca"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    shares = list(coverage.values())
    ax.bar(range(len(shares)), [100 * s for s in shares])
    ax.axhline(100 / len(shares), color="k", lw=1, ls="--", label="test set (10% each)")
    ax.set_xticks(range(len(shares)), list(coverage), rotation=30, ha="right")
    ax.set_ylabel("% of prior samples")
    ax.set_title("classes of prior samples (project classifier)")
    ax.legend()
    save_figure(fig, out / files["coverage"])
    if model.latent_dim == 2:
        files["manifold"] = "eval_manifold.png"
        manifold(model, mu.numpy(), labels, out / files["manifold"])
    return files | {"traversal_dims": dims}


@torch.no_grad()
def manifold(model: VAE, mu: np.ndarray, labels: np.ndarray, path: Path, steps: int = MANIFOLD_STEPS) -> None:
    """A 2-d latent's figure: images decoded on a grid over [-3, 3]^2 beside the test posterior means by class."""
    values = np.linspace(-3, 3, steps)
    grid_z = torch.tensor([[x, y] for y in values[::-1] for x in values], dtype=torch.float32)  # top row: y = 3
    images = torch.sigmoid(model.decode(grid_z)).numpy()[:, 0]
    canvas = np.concatenate([np.concatenate(list(row), axis=1) for row in images.reshape(steps, steps, 28, 28)])
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.6))
    axes[0].imshow(canvas, cmap="gray", extent=(-3, 3, -3, 3), vmin=0, vmax=1)
    axes[0].set_title(f"decoded grid over [-3, 3]^2 ({steps} x {steps})")
    axes[0].set_xlabel("z1")
    axes[0].set_ylabel("z2")
    scatter_by_class(axes[1], mu, labels, "test posterior means by class")
    axes[1].set_xlim(-3, 3)
    axes[1].set_ylim(-3, 3)
    axes[1].set_aspect("equal")
    save_figure(fig, path)


def parameter_count(model: VAE) -> dict[str, int]:
    """Trainable parameters of the encoder, the decoder, the prior (a learned one) and all."""
    parts = (model.encoder, model.decoder, model.prior)
    enc, dec, prior = (sum(p.numel() for p in part.parameters()) for part in parts)
    return {"encoder": enc, "decoder": dec, **({"prior": prior} if prior else {}), "total": enc + dec + prior}


def markdown(report: dict) -> str:
    """``report.md``: the headline numbers and figures for people."""
    e, u, f = report["test"], report["latent"], report["frechet"]
    encoder = report.get("encoder_channels", report["channels"])
    widths = f"channels {report['channels']}" + (f" (encoder {encoder})" if encoder != report["channels"] else "")
    lines = [
        f"# Evaluation of `{report['checkpoint']}`",
        "",
        f"Epoch {report['epoch']}, latent {report['latent_dim']}, {widths}, "
        f"{report['parameters']['total']:,} parameters (encoder {report['parameters']['encoder']:,}, "
        f"decoder {report['parameters']['decoder']:,}).",
        "",
        "| metric (test set, nats/image) | value |",
        "| --- | --- |",
        f"| negative ELBO | {e['neg_elbo']:.2f} |",
        f"| reconstruction (BCE) | {e['recon']:.2f} |",
        f"| KL | {e['kl']:.2f} |",
        f"| negative IWAE bound, k={e['iwae_k']} | {e['neg_iwae']:.2f} |",
        f"| continuous-BCE floor | {report['bce_floor']:.2f} |",
        f"| negative ELBO above the floor | {e['neg_elbo'] - report['bce_floor']:.2f} |",
        "",
        "| latent usage | value |",
        "| --- | --- |",
        f"| active units (Var[mu] > {u['active_threshold']}) | {u['active_units']} / {report['latent_dim']} |",
        f"| dimensions with KL > {u['informative_threshold_nats']} nats | {u['informative_units']} |",
        f"| mutual information I(x;z) | {u['mutual_information']:.2f} nats "
        f"(bound {u['mutual_information_bound']:.2f}) |",
        f"| aggregate posterior KL(q(z) ‖ p(z)) | {u['aggregate_posterior_kl']:.2f} nats |",
        "",
        f"Diagnosis: {report['diagnosis']}",
        "",
        f"Frechet distance in the project classifier's features (test accuracy {report['classifier_accuracy']:.4f}):"
        f" {f['samples_vs_test']:.2f} for {f['n_samples']} prior samples vs the test set; floor (train vs test)"
        f" {f['train_vs_test_floor']:.2f}.",
        "",
        "Coverage: share of the prior samples the classifier puts in each class (10% each in the test set): "
        + ", ".join(f"{name} {100 * v:.1f}%" for name, v in f["prior_class_shares"].items()) + ".",
        "",
    ]
    captions = {"samples": "Prior samples", "reconstructions": "Test images (odd rows) and reconstructions (even rows)",
                "lerp_vs_slerp": "Lerp (odd rows) vs slerp (even rows) between test posterior means",
                "traversal": f"Traversal of the most active dimensions {report['figures']['traversal_dims']}, -3..3",
                "pca": "PCA and t-SNE of test posterior means",
                "coverage": "Classes of prior samples", "manifold": "Decoded 2-d latent plane and the test set in it"}
    for key, caption in captions.items():
        if key not in report["figures"]:
            continue
        lines += [f"## {caption}", "", f"![{caption}]({report['figures'][key]})", ""]
    return "\n".join(lines)


@torch.no_grad()
def evaluate(ckpt_path: Path, k: int = 1000, data_dir: str | None = None,
             classifier_path: Path = classifier.DEFAULT_PATH, fd_samples: int = 10000) -> dict:
    """Compute every metric and write report.json, report.md and the figures next to the checkpoint."""
    model, state = checkpoint.load_model(ckpt_path)
    model = model.to(memory_format=torch.channels_last)  # about 2x faster convolutions on CPU
    clf, clf_state = classifier.load(classifier_path)
    fmnist = data.load(data_dir)
    x_test = fmnist.test.tensor()
    out = ckpt_path.parent
    mu, logvar = model.encode(x_test)
    usage = latent_usage(mu, logvar, model.prior)
    fd = frechet(model, clf, fmnist, fd_samples)
    report = {
        "checkpoint": ckpt_path.name,
        "checkpoint_sha256": checkpoint.file_sha256(ckpt_path),
        "epoch": state.get("epoch"),
        "latent_dim": model.latent_dim,
        "channels": list(model.cfg.channels),
        "encoder_channels": list(model.cfg.encoder_widths),
        "parameters": parameter_count(model),
        "prior_components": model.cfg.prior_components,
        "data_sha256": fmnist.sha256,
        "test": elbo_and_iwae(model, x_test, k),
        "bce_floor": bce_floor(x_test),
        "latent": usage,
        "diagnosis": diagnose(usage),
        "frechet": fd,
        "classifier_accuracy": clf_state["test_accuracy"],
        "figures": figures(model, fmnist, mu, usage, fd["prior_class_shares"], out),
    }
    checkpoint.atomic_write(out / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    checkpoint.atomic_write(out / "report.md", lambda tmp: tmp.write_text(markdown(report)))
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--k", type=int, default=1000, help="importance samples for the IWAE bound (default 1000)")
    p.add_argument("--data-dir", default=None, help="folder with the four IDX .gz files")
    p.add_argument("--classifier", type=Path, default=classifier.DEFAULT_PATH,
                   help=f"feature network for the Frechet distance (default {classifier.DEFAULT_PATH})")
    p.add_argument("--fd-samples", type=int, default=10000, help="prior samples for the Frechet distance")
    args = p.parse_args(argv)
    if args.k < 1 or args.fd_samples < 2:
        p.error("--k must be >= 1 and --fd-samples >= 2")
    report = evaluate(args.checkpoint, args.k, args.data_dir, args.classifier, args.fd_samples)
    e = report["test"]
    print(f"test -ELBO {e['neg_elbo']:.2f} (recon {e['recon']:.2f} + KL {e['kl']:.2f}), "
          f"-IWAE(k={e['iwae_k']}) {e['neg_iwae']:.2f}, BCE floor {report['bce_floor']:.2f} nats/image")
    print(f"active units {report['latent']['active_units']}/{report['latent_dim']}; {report['diagnosis']}")
    print(f"Frechet distance {report['frechet']['samples_vs_test']:.2f} "
          f"(floor {report['frechet']['train_vs_test_floor']:.2f})")
    print(f"wrote {args.checkpoint.parent / 'report.md'}")


if __name__ == "__main__":
    try:
        main()
    except TrainingError as e:
        raise SystemExit(f"error: {e}") from None
