"""The documents' experiments: ``python -m experiments {beta,latent,warmup,levers} [--epochs 3] [--subset 20000]``
(``make experiments``).

- ``beta``: beta in {0.1, 0.5, 1, 2, 4} at latent 64.
- ``latent``: latent size in {2, 8, 16, 20, 32, 64} at beta 1 (2-d against the 20-d and 32-d of the documents).
- ``warmup``: no KL warm-up against a linear warm-up over the first half of the epochs (at least 2: the
  schedule reaches the full beta at epoch ``kl_warmup_epochs``, so 1 would change nothing), beta 1, latent 64.
- ``levers``: the release recipe against each lever for a stronger 64-d model (KL warm-up, BatchNorm, wider
  convolutions 48/96/192) and all three together.

Each row trains the project's VAE (``training.train``; every other setting is the release recipe's) into
``runs/experiments/<row>/`` (a finished row is reused: rows shared by two sweeps train once) and measures it on
the full test set: -ELBO with recon and KL (one posterior sample per image), active units, mutual information,
the Frechet distance of 10,000 prior samples to the test set in the project classifier's features, and the
smoothness of slerp paths between test posterior means (mean squared difference of successive images, 100
pairs, 10 steps). Writes ``docs/experiments/<sweep>.md`` and ``.json`` with a grid of reconstructions and one
of samples, a row per setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from runtime.latent import interpolate
from training import checkpoint, classifier, data, evaluate, train
from training.config import TrainConfig
from training.errors import TrainingError
from training.figures import save_grid
from training.model import VAE, VAEConfig

SWEEPS = {
    "beta": [{"beta": b} for b in (0.1, 0.5, 1.0, 2.0, 4.0)],
    "latent": [{"latent_dim": d} for d in (2, 8, 16, 20, 32, 64)],
    "warmup": [{"kl_warmup_epochs": 0}, {"kl_warmup_epochs": "half"}],
    "levers": [{}, {"kl_warmup_epochs": "half"}, {"batch_norm": True}, {"channels": (48, 96, 192)},
               {"batch_norm": True, "channels": (48, 96, 192), "kl_warmup_epochs": "half"}],
}
DOCS = Path("docs/experiments")
SMOOTHNESS_PAIRS = 100
FIGURE_IMAGES = 10


def row_config(setting: dict, epochs: int, subset: int | None, seed: int) -> TrainConfig:
    """The training config of one row: the release recipe with the row's setting."""
    warmup = setting.get("kl_warmup_epochs", 0)
    model = VAEConfig(latent_dim=setting.get("latent_dim", VAEConfig.latent_dim),
                      channels=setting.get("channels", VAEConfig.channels),
                      batch_norm=setting.get("batch_norm", False))
    return TrainConfig(model=model,
                       epochs=epochs, subset=subset, seed=seed, beta=setting.get("beta", 1.0),
                       kl_warmup_epochs=max(2, epochs // 2) if warmup == "half" else warmup,
                       checkpoint_every=epochs)


def run_name(cfg: TrainConfig) -> str:
    """The run folder of a config: rows with the same config in two sweeps share it."""
    subset = cfg.subset or "all"
    arch = "" if cfg.model.channels == VAEConfig.channels else "_c" + "-".join(map(str, cfg.model.channels))
    arch += "_bn" if cfg.model.batch_norm else ""
    return (f"beta{cfg.beta:g}_z{cfg.model.latent_dim}_warmup{cfg.kl_warmup_epochs}{arch}_e{cfg.epochs}_n{subset}"
            f"_s{cfg.seed}")


@torch.no_grad()
def smoothness(model: VAE, mu: torch.Tensor, pairs: int = SMOOTHNESS_PAIRS, steps: int = 10) -> float:
    """Mean squared difference of successive images along slerp paths between pairs of test posterior means."""
    ends = mu[:2 * pairs].double().numpy()
    paths = np.stack([interpolate(ends[2 * k], ends[2 * k + 1], steps, "slerp") for k in range(pairs)])
    images = torch.sigmoid(model.decode(torch.from_numpy(paths).float().flatten(0, 1))).view(pairs, steps, -1)
    return float((images[:, 1:] - images[:, :-1]).pow(2).mean())


@torch.no_grad()
def measure(ckpt: Path, fmnist: data.FashionMNIST, clf: classifier.Classifier) -> tuple[dict, torch.Tensor,
                                                                                           torch.Tensor]:
    """The row's numbers, its reconstructions of the first test images and its prior samples."""
    model, state = checkpoint.load_model(ckpt)
    x_test = fmnist.test.tensor()
    mu, logvar = model.encode(x_test)
    elbo = evaluate.elbo_and_iwae(model, x_test, k=1)
    usage = evaluate.latent_usage(mu, logvar)
    row = {"neg_elbo": elbo["neg_elbo"], "recon": elbo["recon"], "kl": elbo["kl"],
           "active_units": usage["active_units"], "mutual_information": usage["mutual_information"],
           "frechet": evaluate.frechet(model, clf, fmnist, floor=False)["samples_vs_test"],
           "smoothness": smoothness(model, mu),
           "train_seconds": round(sum(h["seconds"] for h in state["history"]), 1)}
    recon = torch.sigmoid(model.decode(mu[:FIGURE_IMAGES]))
    samples = model.sample(FIGURE_IMAGES, generator=torch.Generator().manual_seed(0))
    return row, recon, samples


def label(setting: dict, cfg: TrainConfig) -> str:
    """The row's name in the table: its setting ("release recipe" for none)."""
    parts = []
    for key in setting:
        if key == "batch_norm":
            parts.append("BatchNorm")
        elif key == "channels":
            parts.append("channels " + "/".join(map(str, cfg.model.channels)))
        else:
            value = cfg.model.latent_dim if key == "latent_dim" else getattr(cfg, key)
            parts.append(f"{key.replace('_', ' ')} {value:g}")
    return " + ".join(parts) or "release recipe"


def markdown(sweep: str, rows: list[dict], args: argparse.Namespace) -> str:
    """The sweep's table and figures for docs/experiments/<sweep>.md."""
    data_note = f"the first {args.subset:,} training images" if args.subset else "all 60,000 training images"
    lines = [f"# Experiment: {sweep} sweep", "",
             f"Command: `python -m experiments {sweep} --epochs {args.epochs}"
             + (f" --subset {args.subset}" if args.subset else " --subset 0") + f" --seed {args.seed}` "
             f"(`make experiments SWEEP={sweep}`). Every row: {args.epochs} epochs on {data_note} (the release "
             "recipe is 60 epochs on all of them, so absolute numbers are higher than the released model's; the "
             "rows are comparable with each other), batch 128, Adam 1e-3, seed "
             f"{args.seed}; measured on the full test set of 10,000 images on CPU.", "",
             "| setting | test -ELBO | recon | KL | active units | I(x;z) nats | Frechet distance | "
             "smoothness (x1e-3) | train s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['neg_elbo']:.2f} | {r['recon']:.2f} | {r['kl']:.2f} | "
                     f"{r['active_units']} / {r['latent_dim']} | {r['mutual_information']:.2f} | {r['frechet']:.2f} | "
                     f"{1000 * r['smoothness']:.3f} | {r['train_seconds']:.0f} |")
    lines += ["", "Active units: dimensions whose posterior mean varies over the test set (Var > 0.01). Frechet "
              "distance: 10,000 prior samples against the test set in the classifier's features (lower is better). "
              "Smoothness: mean squared difference of successive images on 10-step slerp paths between 100 pairs "
              "of test posterior means (lower is smoother; a collapsed model is trivially smooth).", "",
              f"![reconstructions]({sweep}_reconstructions.png)", "",
              f"Reconstructions: the first row is the first {FIGURE_IMAGES} test images, then one row per setting in "
              "the table's order.", "", f"![samples]({sweep}_samples.png)", "",
              "Prior samples (the same seed for every row), one row per setting in the table's order.", ""]
    return "\n".join(lines)


def run_sweep(sweep: str, args: argparse.Namespace) -> list[dict]:
    """Train what is missing, measure every row, write the docs; returns the rows."""
    fmnist = data.load(args.data_dir)
    clf, _ = classifier.load(args.classifier)
    rows, recons, samples = [], [fmnist.test.tensor()[:FIGURE_IMAGES]], []
    for setting in SWEEPS[sweep]:
        cfg = row_config(setting, args.epochs, args.subset or None, args.seed)
        folder = args.runs / run_name(cfg)
        final = folder / "final.pt"
        if not final.is_file():
            print(f"{sweep}: training {folder}", file=sys.stderr)
            train.run(cfg, folder, train.pick_device(args.device), args.data_dir)
        start = time.perf_counter()
        row, recon, sample = measure(final, fmnist, clf)
        rows.append({"label": label(setting, cfg), "run": str(folder), "latent_dim": cfg.model.latent_dim,
                     "beta": cfg.beta, "kl_warmup_epochs": cfg.kl_warmup_epochs, **row})
        recons.append(recon)
        samples.append(sample)
        print(f"{sweep}: {rows[-1]['label']}: -ELBO {row['neg_elbo']:.2f}, active {row['active_units']}, "
              f"FD {row['frechet']:.2f} (measured in {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    args.docs.mkdir(parents=True, exist_ok=True)
    save_grid(torch.cat(recons), len(recons), args.docs / f"{sweep}_reconstructions.png")
    save_grid(torch.cat(samples), len(samples), args.docs / f"{sweep}_samples.png")
    result = {"sweep": sweep, "epochs": args.epochs, "subset": args.subset, "seed": args.seed, "rows": rows}
    checkpoint.atomic_write(args.docs / f"{sweep}.json", lambda t: t.write_text(json.dumps(result, indent=2) + "\n"))
    checkpoint.atomic_write(args.docs / f"{sweep}.md", lambda t: t.write_text(markdown(sweep, rows, args)))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="*", default=list(SWEEPS), help=f"any of {', '.join(SWEEPS)} (default: all)")
    p.add_argument("--epochs", type=train.positive_int, default=3, help="epochs per row (default %(default)s)")
    p.add_argument("--subset", type=int, default=20000,
                   help="training images per row (default %(default)s; 0: all 60,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    p.add_argument("--runs", type=Path, default=Path("runs/experiments"), help="run folders (default %(default)s)")
    p.add_argument("--docs", type=Path, default=DOCS, help="tables and figures (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder with the four IDX .gz files")
    p.add_argument("--classifier", type=Path, default=classifier.DEFAULT_PATH)
    args = p.parse_args(argv)
    if args.subset < 0:
        p.error("--subset must be >= 0")
    unknown = [s for s in args.sweeps if s not in SWEEPS]
    if unknown:
        p.error(f"unknown sweep {', '.join(unknown)}; choose from {', '.join(SWEEPS)}")
    try:
        for sweep in args.sweeps:
            run_sweep(sweep, args)
    except TrainingError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {', '.join(str(args.docs / f'{s}.md') for s in args.sweeps)}")


if __name__ == "__main__":
    main()
