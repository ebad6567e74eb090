"""Train the Fashion-MNIST VAE: ``python -m training.train [--out runs/train] [--resume CKPT | --init-from CKPT]``.

``--resume`` continues a run exactly (optimizer, RNG, schedule). ``--init-from`` trains on from a checkpoint's
weights (a released ``vae.pt`` has no optimizer state) with a fresh Adam and this run's schedule: epochs keep
counting from the checkpoint's, its history is kept, and the checkpoint it started from is recorded.

Writes into the run folder: ``history.csv`` and ``curves.png`` (every epoch), ``epoch_NNN.pt`` and grids
``grids/epoch_NNN_{recon,samples,interp}.png`` every ``--checkpoint-every`` epochs, and ``final.pt``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from runtime.latent import interpolate
from training import checkpoint, data
from training.config import TrainConfig
from training.errors import TrainingError
from training.figures import interleave_rows, plot_curves, save_grid
from training.model import VAE, VAEConfig

HISTORY_FIELDS = ("epoch", "beta", "train_total", "train_recon", "train_kl",
                  "test_total", "test_recon", "test_kl", "seconds")
# Hyper-parameter flags: (argparse dest, TrainConfig field). They may not change on --resume, except epochs.
HYPER_FLAGS = ("batch_size", "lr", "beta", "kl_warmup_epochs", "seed", "subset", "checkpoint_every",
               "freeze_decoder_epochs")
ARCH_FLAGS = ("latent_dim", "channels", "batch_norm", "encoder_channels")  # fixed by a checkpoint's weights
PRIOR_PLACEMENT_SEED = 7  # a mixture prior added by --init-from: where its components start, its fitting draws
PRIOR_FIT_STEPS = 2000
DECODER_FLAGS = ("latent_dim", "channels", "batch_norm")  # fixed by --init-decoder-from's decoder


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: CUDA is not available on this machine", field="--device")
    return torch.device(name)


def epoch_order(cfg: TrainConfig, epoch: int, n: int) -> torch.Tensor:
    """The shuffling of epoch ``epoch``: a function of (seed, epoch) only, so resumed runs see the same batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))


@torch.no_grad()
def evaluate_elbo(model: VAE, x: torch.Tensor, beta: float, device: torch.device, batch: int = 1000
                  ) -> tuple[float, float, float]:
    """Mean (total, recon, kl) per image over ``x``, one posterior sample per image."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(device, memory_format=torch.channels_last)
        terms = model.loss(xb, *model(xb), beta=beta)
        sums += torch.stack([t.sum().double().cpu() for t in terms])
    total, recon, kl = (sums / len(x)).tolist()
    return total, recon, kl


def train_epoch(model: VAE, opt: torch.optim.Optimizer, x: torch.Tensor, cfg: TrainConfig, epoch: int,
                device: torch.device) -> tuple[float, float, float]:
    """One pass over ``x`` in the epoch's fixed order; returns mean (total, recon, kl) per image."""
    model.train()
    model.decoder.requires_grad_(epoch > cfg.freeze_decoder_epochs)
    beta = cfg.beta_at(epoch)
    for group in opt.param_groups:
        group["lr"] = cfg.lr_at(epoch)
    order = epoch_order(cfg, epoch, len(x))
    sums = torch.zeros(3, dtype=torch.float64)
    bar = tqdm(range(0, len(x), cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
               leave=False, file=sys.stderr, disable=None)
    for i in bar:
        xb = x[order[i:i + cfg.batch_size]].to(device, memory_format=torch.channels_last)
        total, recon, kl = model.loss(xb, *model(xb), beta=beta)
        opt.zero_grad(set_to_none=True)
        total.mean().backward()
        opt.step()
        sums += torch.stack([total.detach().sum(), recon.detach().sum(), kl.detach().sum()]).double().cpu()
        bar.set_postfix(loss=f"{total.mean().item():.1f}")
    total, recon, kl = (sums / len(x)).tolist()
    return total, recon, kl


@torch.no_grad()
def save_grids(model: VAE, x_test: torch.Tensor, out: Path, epoch: int, device: torch.device) -> None:
    """Reconstructions of 32 test images, 64 samples from fixed latents, 8 slerp rows of 10 steps."""
    model.eval()
    prefix = out / "grids" / f"epoch_{epoch:03d}"
    originals = x_test[:32].to(device)
    recon = torch.sigmoid(model.decode(model.encode(originals)[0]))
    save_grid(interleave_rows(originals, recon), rows=8, path=prefix.with_name(prefix.name + "_recon.png"))
    z = model.prior.sample(64, generator=torch.Generator().manual_seed(1234), device=device)
    save_grid(torch.sigmoid(model.decode(z)), rows=8, path=prefix.with_name(prefix.name + "_samples.png"))
    mu = model.encode(x_test[32:48].to(device))[0]
    ends = mu.cpu().numpy()
    path = torch.from_numpy(np.concatenate([interpolate(ends[2 * k], ends[2 * k + 1], 10, "slerp")
                                            for k in range(8)])).float().to(device)
    save_grid(torch.sigmoid(model.decode(path)), rows=8, path=prefix.with_name(prefix.name + "_interp.png"))


def write_history(history: list[dict], out: Path) -> None:
    """``history.csv`` and ``curves.png``, rewritten atomically each epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    checkpoint.atomic_write(out / "history.csv", lambda tmp: tmp.write_text(buf.getvalue()))
    plot_curves(history, out / "curves.png")


def run(cfg: TrainConfig, out: Path, device: torch.device, data_dir: str | None = None,
        resume: dict | None = None, init: dict | None = None) -> Path:
    """Train to ``cfg.epochs`` (continuing ``resume``, or from ``init``'s weights); returns ``final.pt``'s path."""
    fmnist = data.load(data_dir)
    x_train, x_test = fmnist.train.tensor(), fmnist.test.tensor()
    if cfg.subset is not None:
        x_train = x_train[:cfg.subset]
    torch.manual_seed(cfg.seed)
    model = VAE(cfg.model).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: list[dict] = []
    start = 1
    parent = resume or init
    if parent is not None:
        if parent["data_sha256"] != fmnist.sha256:
            flag = "--resume" if resume is not None else "--init-from"
            raise TrainingError(f"{flag}: the checkpoint was trained on different data files "
                                f"than those in {fmnist.source}")
        model.load_state_dict(parent["model"])
        history = list(parent["history"])
        start = parent["epoch"] + 1
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["rng_state"])
    lineage = (parent or {}).get("init_from")  # main sets it on ``init``; a resumed run carries its own
    out.mkdir(parents=True, exist_ok=True)
    print(f"training on {len(x_train)} images from {fmnist.source} on {device}, "
          f"epochs {start}..{cfg.epochs}, writing to {out}", file=sys.stderr)
    final = out / "final.pt"
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_terms = train_epoch(model, opt, x_train, cfg, epoch, device)
        test_terms = evaluate_elbo(model, x_test, cfg.beta_at(epoch), device)
        row = {"epoch": epoch, "beta": cfg.beta_at(epoch),
               **{f"train_{k}": round(v, 4) for k, v in zip(("total", "recon", "kl"), train_terms, strict=True)},
               **{f"test_{k}": round(v, 4) for k, v in zip(("total", "recon", "kl"), test_terms, strict=True)},
               "seconds": round(time.perf_counter() - t0, 2)}
        history.append(row)
        write_history(history, out)
        tqdm.write(f"epoch {epoch:3d}  train {train_terms[0]:.2f} (recon {train_terms[1]:.2f}, kl {train_terms[2]:.2f})"
                   f"  test {test_terms[0]:.2f} (recon {test_terms[1]:.2f}, kl {test_terms[2]:.2f})"
                   f"  {row['seconds']:.0f}s", file=sys.stderr)
        periodic = epoch % cfg.checkpoint_every == 0
        if periodic or epoch == cfg.epochs:
            state = {"model_config": cfg.model.to_dict(), "train_config": cfg.to_dict(),
                     "model": {k: v.cpu() for k, v in model.state_dict().items()},
                     "optimizer": opt.state_dict(), "epoch": epoch, "rng_state": torch.get_rng_state(),
                     "data_sha256": fmnist.sha256, "history": history}
            if lineage:
                state["init_from"] = lineage
            if periodic:
                checkpoint.save(out / f"epoch_{epoch:03d}.pt", state)
                save_grids(model, x_test, out, epoch, device)
            if epoch == cfg.epochs:
                checkpoint.save(final, state)
    return final


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/train, or the --resume folder)")
    p.add_argument("--resume", type=Path, default=None, help="continue exactly from this checkpoint")
    p.add_argument("--init-from", type=Path, default=None,
                   help="train on from this checkpoint's weights with a fresh optimizer and this run's schedule")
    p.add_argument("--init-decoder-from", type=Path, default=None,
                   help="a new run whose decoder starts from this checkpoint's (its latent size, widths and "
                        "BatchNorm too) and whose encoder is new (--encoder-channels)")
    p.add_argument("--data-dir", default=None, help="folder with the four IDX .gz files")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"total epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--lr-decay-start", type=int, default=None,
                   help="cosine-decay the lr after this epoch (default: constant); may be set on --resume "
                        "when it does not change epochs already trained")
    p.add_argument("--beta", type=float, default=None, help=f"KL weight (default {d.beta})")
    p.add_argument("--kl-warmup-epochs", type=int, default=None, help="linear KL warm-up length (default off)")
    p.add_argument("--seed", type=int, default=None, help=f"default {d.seed}")
    p.add_argument("--subset", type=positive_int, default=None, help="train on the first N images only")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, help=f"default {d.checkpoint_every}")
    p.add_argument("--latent-dim", type=positive_int, default=None, help=f"default {d.model.latent_dim}")
    p.add_argument("--channels", type=positive_int, nargs=3, default=None,
                   help=f"conv widths (default {' '.join(map(str, d.model.channels))})")
    p.add_argument("--batch-norm", action="store_true", default=None,
                   help="BatchNorm after every hidden convolution (default off)")
    p.add_argument("--encoder-channels", type=positive_int, nargs=3, default=None,
                   help="the encoder's conv widths when they differ from --channels")
    p.add_argument("--freeze-decoder-epochs", type=int, default=None,
                   help="keep the decoder's weights fixed up to this epoch (default 0)")
    p.add_argument("--prior-components", type=positive_int, default=None,
                   help="a learned prior: a mixture of K diagonal Gaussians (default 0: N(0, I)); with --init-from "
                        "a standard-prior checkpoint, the components start at K training images' posteriors")
    return p.parse_args(argv)


def given(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The flags among ``names`` that were given on the command line: {dest: value}."""
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def flag_names(dests: dict) -> str:
    """``--flag-a, --flag-b`` for argparse dests."""
    return ", ".join(f"--{k.replace('_', '-')}" for k in dests)


def lineage(path: Path, parent: dict, part: str | None = None) -> dict:
    """The ``init_from`` record of a run started from checkpoint ``path`` (loaded as ``parent``): which file, its
    SHA-256, epoch and training config, and the parent's own ``init_from``, so the chain reaches a run from
    scratch; ``part="decoder"`` when only its decoder was taken."""
    record = {"path": str(path), "sha256": checkpoint.file_sha256(path), "epoch": parent["epoch"],
              "train_config": parent["train_config"], "init_from": parent.get("init_from")}
    return record if part is None else {**record, "part": part}


def decoder_start(args: argparse.Namespace) -> dict:
    """What ``run`` starts from with --init-decoder-from: the checkpoint's decoder weights, a new encoder of
    --encoder-channels (default: the checkpoint's widths), epochs from 1, and the lineage."""
    try:
        parent = checkpoint.load(args.init_decoder_from, required=("model_config", "model", "epoch", "data_sha256",
                                                                    "train_config"))
    except checkpoint.CheckpointError as e:
        raise TrainingError(f"--init-decoder-from: {e}") from None
    if fixed := given(args, DECODER_FLAGS):
        raise TrainingError(f"{flag_names(fixed)} cannot be set with --init-decoder-from (its decoder fixes them)")
    model_cfg = replace(VAEConfig.from_dict(parent["model_config"]),
                        encoder_channels=tuple(args.encoder_channels) if args.encoder_channels else None)
    torch.manual_seed(args.seed or 0)
    model = VAE(model_cfg)
    model.decoder.load_state_dict({k.removeprefix("decoder."): v for k, v in parent["model"].items()
                                   if k.startswith("decoder.")})
    return {"model_config": model_cfg.to_dict(), "model": model.state_dict(), "epoch": 0, "history": [],
            "data_sha256": parent["data_sha256"],
            "init_from": lineage(args.init_decoder_from, parent, part="decoder")}


def add_prior(init: dict, components: int, data_dir: str | None, steps: int = PRIOR_FIT_STEPS) -> dict:
    """``init`` (a standard-prior checkpoint) with a learned mixture prior of ``components`` Gaussians, fitted to
    its encoder's aggregate posterior on the training set before training goes on: placed at that many training
    posteriors widened by half the spread of their means (a kernel density estimate), then ``steps`` Adam steps
    of maximum likelihood on posterior draws. Seeded; ~30 s on 2 cores for 512 components."""
    model_cfg = replace(VAEConfig.from_dict(init["model_config"]), prior_components=components)
    model = VAE(model_cfg)
    missing, unexpected = model.load_state_dict(init["model"], strict=False)
    if unexpected or any(not k.startswith("prior.") for k in missing):
        raise TrainingError(f"--prior-components: the checkpoint's weights do not fit ({missing + unexpected})")
    gen = torch.Generator().manual_seed(PRIOR_PLACEMENT_SEED)
    x = data.load(data_dir).train.tensor()
    with torch.no_grad():
        mu, logvar = map(torch.cat, zip(*(model.encode(x[i:i + 5000]) for i in range(0, len(x), 5000)), strict=True))
    pick = torch.randperm(len(x), generator=gen)[:components]
    bandwidth = 0.5 * mu.std(0)
    model.prior.place(mu[pick], torch.log(logvar[pick].exp() + bandwidth.pow(2)))
    opt = torch.optim.Adam(model.prior.parameters(), lr=3e-3)
    for _ in tqdm(range(steps), desc="fitting the prior", unit="step", leave=False, file=sys.stderr, disable=None):
        idx = torch.randint(0, len(x), (1024,), generator=gen)
        z = mu[idx] + torch.randn(1024, mu.shape[1], generator=gen) * torch.exp(0.5 * logvar[idx])
        opt.zero_grad(set_to_none=True)
        (-model.prior.log_prob(z).mean()).backward()
        opt.step()
    return {**init, "model_config": model_cfg.to_dict(), "model": model.state_dict()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    resume = init = None
    starts = [flag for flag, value in (("--resume", args.resume), ("--init-from", args.init_from),
                                        ("--init-decoder-from", args.init_decoder_from)) if value is not None]
    if len(starts) > 1:
        raise TrainingError(f"{' and '.join(starts)} exclude each other")
    if args.init_from is not None:
        try:
            init = checkpoint.load(args.init_from, required=("model_config", "model", "epoch", "history",
                                                              "data_sha256", "train_config"))
        except checkpoint.CheckpointError as e:
            raise TrainingError(f"--init-from: {e}") from None
        if fixed := given(args, ARCH_FLAGS):
            raise TrainingError(f"{flag_names(fixed)} cannot be set with --init-from (the checkpoint fixes them)")
        if args.epochs is None or args.epochs <= init["epoch"]:
            raise TrainingError(f"--init-from: {args.init_from} is at epoch {init['epoch']}; "
                                "pass --epochs > that (the total count)")
        init["init_from"] = lineage(args.init_from, init)
        if args.prior_components:
            if VAEConfig.from_dict(init["model_config"]).prior_components:
                raise TrainingError("--prior-components cannot be set with --init-from a checkpoint that has a "
                                    "learned prior (its weights fix it)")
            init = add_prior(init, args.prior_components, args.data_dir)
        cfg = TrainConfig(model=VAEConfig.from_dict(init["model_config"]),
                          **given(args, (*HYPER_FLAGS, "epochs", "lr_decay_start")))
        out = args.out or Path("runs/train")
    elif args.init_decoder_from is not None:
        init = decoder_start(args)
        cfg = TrainConfig(model=VAEConfig.from_dict(init["model_config"]),
                          **given(args, (*HYPER_FLAGS, "epochs", "lr_decay_start")))
        out = args.out or Path("runs/train")
    elif args.resume is not None:
        try:
            resume = checkpoint.load(args.resume)
        except checkpoint.CheckpointError as e:
            raise TrainingError(f"--resume: {e}") from None
        if fixed := given(args, (*HYPER_FLAGS, *ARCH_FLAGS, "prior_components")):
            raise TrainingError(f"{flag_names(fixed)} cannot change on --resume (the checkpoint fixes them)")
        trained = TrainConfig.from_dict(resume["train_config"])
        cfg = TrainConfig.from_dict(resume["train_config"])
        cfg.epochs = args.epochs or cfg.epochs
        if args.lr_decay_start is not None:
            cfg.lr_decay_start = args.lr_decay_start
        done = resume["epoch"]
        if any(cfg.lr_at(e) != trained.lr_at(e) for e in range(1, done + 1)):
            raise TrainingError(f"this --lr-decay-start / --epochs would change epochs 1..{done} that the "
                                "checkpoint already trained (their learning rate)")
        if cfg.epochs <= resume["epoch"]:
            raise TrainingError(f"{args.resume} is already at epoch {resume['epoch']}; pass --epochs > that")
        out = args.out or args.resume.parent
    else:
        model_cfg = VAEConfig(latent_dim=args.latent_dim or VAEConfig.latent_dim,
                              channels=tuple(args.channels) if args.channels else VAEConfig.channels,
                              batch_norm=bool(args.batch_norm),
                              encoder_channels=tuple(args.encoder_channels) if args.encoder_channels else None,
                              prior_components=args.prior_components or 0)
        cfg = TrainConfig(model=model_cfg, **given(args, (*HYPER_FLAGS, "epochs", "lr_decay_start")))
        out = args.out or Path("runs/train")
    final = run(cfg, out, device, args.data_dir, resume, init)
    print(f"wrote {final}")


if __name__ == "__main__":
    try:
        main()
    except TrainingError as e:
        raise SystemExit(f"error: {e}") from None
