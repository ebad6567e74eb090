"""Publish a trained checkpoint: ``python -m training.release RUN/final.pt [--out model_store/release]``.

Copies the weights (without optimizer state, to keep it small) to ``OUT/vae.pt`` with the run's
``history.csv`` and ``curves.png``, evaluates it there (report.json, report.md, figures) and writes
``OUT/MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from runtime.artifacts import DECODERS
from training import checkpoint, classifier, evaluate
from training.config import TrainConfig
from training.errors import TrainingError
from training.model import VAEConfig

DEFAULT_OUT = Path("model_store/release")
KEEP = ("model_config", "train_config", "model", "epoch", "data_sha256", "history", "init_from")


def train_command(cfg: dict, out: Path, init_from: dict | None = None) -> str:
    """The command line that reproduces a run with this training config (and starting checkpoint)."""
    defaults = TrainConfig().to_dict()
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in cfg.items() if k != "model" and v != defaults[k]]
    model = VAEConfig.from_dict(cfg["model"])
    if init_from is not None and init_from.get("part") == "decoder":
        encoder = ["--encoder-channels " + " ".join(map(str, model.encoder_channels))] if model.encoder_channels else []
        return " ".join(["python -m training.train --out", str(out), "--init-decoder-from", init_from["path"],
                         *encoder, *flags])
    if init_from is not None:
        added = VAEConfig.from_dict(init_from["train_config"]["model"]).prior_components != model.prior_components
        prior = [f"--prior-components {model.prior_components}"] if added else []
        return " ".join(["python -m training.train --out", str(out), "--init-from", init_from["path"], *prior, *flags])
    if model.latent_dim != VAEConfig.latent_dim:
        flags.append(f"--latent-dim {model.latent_dim}")
    if model.channels != VAEConfig.channels:
        flags.append("--channels " + " ".join(map(str, model.channels)))
    if model.batch_norm:
        flags.append("--batch-norm")
    if model.encoder_channels:
        flags.append("--encoder-channels " + " ".join(map(str, model.encoder_channels)))
    if model.prior_components:
        flags.append(f"--prior-components {model.prior_components}")
    return " ".join(["python -m training.train --out", str(out), *flags])


def ancestry(parent: dict | None) -> list[str]:
    """The checkpoints a run started from, newest first, each with its SHA-256, epoch and reproducing command
    (``init_from`` records its parent's own ``init_from``, so the chain goes back to a run from scratch)."""
    lines, child = [], "It"
    while parent is not None:
        decoder = parent.get("part") == "decoder"
        part, fresh = ("its decoder", "a new encoder and a fresh optimizer") if decoder else \
            ("its weights", "a fresh optimizer")
        command = train_command(parent["train_config"], Path("runs/parent"), parent.get("init_from"))
        lines.append(f"{child} took {part} from `{parent['path']}` (SHA-256 `{parent['sha256'][:16]}...`, epoch "
                     f"{parent['epoch']}) with {fresh}; that checkpoint was trained with `{command}`.")
        parent, child = parent.get("init_from"), "That one"
    return lines


def quantized_decoders() -> str:
    """The model card's section on the int8 decoders ``make export`` builds from the checkpoint: what each one
    quantizes, and how (``runtime/artifacts.py``)."""
    lines = "\n".join(f"- `{b.name}` (`{b.artifact}`): {b.quantized}." for b in DECODERS.values() if b.quantized)
    return f"""## Quantized decoders (`make export`)

The export serves this checkpoint through decoders gated against it (the export folder's `export_report.md`). Its
int8 decoders, for CPUs:

{lines}

The other decoders are fp32 (`torchscript-fp32`, `onnx-fp32`) and fp16 (`torchscript-fp16`, for GPUs).
"""


def model_card(report: dict, state: dict, source: Path) -> str:
    """MODEL_CARD.md: what the model is, how it was made, and how well it does."""
    e, cfg, params = report["test"], state["train_config"], report["parameters"]
    norm = ", BatchNorm after every hidden conv (folded on export)" if cfg["model"].get("batch_norm") else ""
    model = VAEConfig.from_dict(cfg["model"])
    prior = (f"a mixture of {model.prior_components} diagonal Gaussians learned with the model (its KL estimated "
             "by Monte Carlo)" if model.prior_components else "N(0, I)")
    shape = f"{model.encoder_widths}{norm} -> Gaussian q(z|x), latent {model.latent_dim}, prior {prior}"
    command = train_command(cfg, source.parent, state.get("init_from"))
    lineage = "".join(f"\n  {line}" for line in ancestry(state.get("init_from")))
    decay = f", cosine decay after epoch {cfg['lr_decay_start']}" if cfg.get("lr_decay_start") else " constant"
    hashes = "\n".join(f"| `{name}` | `{digest}` |" for name, digest in report["data_sha256"].items())
    return f"""# Model card: Fashion-MNIST convolutional VAE, latent {cfg["model"]["latent_dim"]}

- Checkpoint: `vae.pt` (SHA-256 `{report['checkpoint_sha256']}`), published from `{source}`.
- Architecture: conv encoder {shape};
  decoder Linear -> 3x3 conv -> nearest upsample x2 -> 3x3 conv -> sub-pixel 3x3 conv + PixelShuffle ->
  Bernoulli logits over 28x28 pixels in [0, 1] (see `training/model.py`). {params['total']:,} parameters
  (encoder {params['encoder']:,}, decoder {params['decoder']:,}).
- Training: `{command}` ({cfg['epochs']} epochs, batch {cfg['batch_size']},
  Adam lr {cfg['lr']}{decay}, beta {cfg['beta']}, KL warm-up {cfg['kl_warmup_epochs']} epochs,
  seed {cfg['seed']}).{lineage}
- Intended use: generating and interpolating 28x28 grayscale clothing images for demos and serving tests.
  Not a classifier, not a density model for anything but Fashion-MNIST.

## Data (SHA-256 of decompressed IDX files)

| file | sha256 |
| --- | --- |
{hashes}

## Metrics (test set, nats/image; `python -m training.evaluate`)

| metric | value |
| --- | --- |
| negative ELBO | {e['neg_elbo']:.2f} |
| reconstruction / KL | {e['recon']:.2f} / {e['kl']:.2f} |
| negative IWAE bound (k={e['iwae_k']}) | {e['neg_iwae']:.2f} |
| continuous-BCE floor | {report['bce_floor']:.2f} |
| active units | {report['latent']['active_units']} / {report['latent_dim']} |
| mutual information | {report['latent']['mutual_information']:.2f} nats |
| Frechet distance (samples vs test; floor train vs test) | {report['frechet']['samples_vs_test']:.2f}; \
{report['frechet']['train_vs_test_floor']:.2f} |
| prior samples per class (classifier; test set 10% each) | \
{", ".join(f"{k} {100 * v:.1f}%" for k, v in report['frechet']['prior_class_shares'].items())} |

{report['diagnosis']}

Training curves: [curves.png](curves.png) ([history.csv](history.csv)).
Full report with figures: [report.md](report.md).

{quantized_decoders()}"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.release", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    p.add_argument("--k", type=int, default=1000, help="importance samples for the IWAE bound")
    p.add_argument("--data-dir", default=None, help="folder with the four IDX .gz files")
    p.add_argument("--classifier", type=Path, default=classifier.DEFAULT_PATH)
    p.add_argument("--fd-samples", type=int, default=10000, help="prior samples for the Frechet distance")
    args = p.parse_args(argv)
    if args.k < 1 or args.fd_samples < 2:
        p.error("--k must be >= 1 and --fd-samples >= 2")
    state = checkpoint.load(args.checkpoint)
    staging = args.out.with_name(f".{args.out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    checkpoint.save(staging / "vae.pt", {k: state[k] for k in KEEP if k in state})
    for name in ("history.csv", "curves.png"):
        if (args.checkpoint.parent / name).is_file():
            shutil.copy2(args.checkpoint.parent / name, staging / name)
    report = evaluate.evaluate(staging / "vae.pt", args.k, args.data_dir, args.classifier, args.fd_samples)
    (staging / "MODEL_CARD.md").write_text(model_card(report, state, args.checkpoint))
    shutil.rmtree(args.out, ignore_errors=True)
    staging.rename(args.out)
    print(f"published {args.out / 'vae.pt'}; see {args.out / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    try:
        main()
    except TrainingError as e:
        raise SystemExit(f"error: {e}") from None
