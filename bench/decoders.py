"""Decoder speed per artifact: ``python -m bench.decoders [--threads N] [--batches 1 16 64 256]`` (``make bench``).

Latency (median over rounds, each round the mean of repeated calls for ``--seconds``) and images/s for
fp32 eager PyTorch and every exported decoder, with each backend's speed-up over fp32 eager measured
in the same run. Backends are interleaved round by round so that machine noise hits them alike. On a
CUDA machine the fp32 backends are also timed on the GPU (the int8 kernels are CPU-only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from export.config import DEFAULT_CHECKPOINT
from runtime import artifacts, backends
from runtime.errors import FmvaeError, ManifestError
from runtime.manifest import Manifest
from training import checkpoint


def time_call(fn: Callable[[], object], seconds: float) -> float:
    """Mean seconds per call of ``fn`` over at least ``seconds`` (and at least 3 calls), after one warm-up."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def candidates(ckpt: Path, artifact_dir: Path, device: str, threads: int) -> dict[str, Callable]:
    """name -> decode(z) for eager fp32 and each artifact runnable on ``device``."""
    model, _ = checkpoint.load_model(ckpt)
    model = model.to(device)

    def eager(z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model.decode(torch.from_numpy(z).to(device))
            if device != "cpu":
                torch.cuda.synchronize()
            return out

    fns: dict[str, Callable] = {"eager-fp32": eager}
    exported = Manifest.read(artifact_dir).artifacts
    for name, backend in artifacts.DECODERS.items():
        file = backend.artifact
        if f"decoder/{name}" not in exported:  # dropped by the parity gate (the manifest's fallback)
            continue
        if not (artifact_dir / file).is_file():
            raise ManifestError(f"{artifact_dir / file} not found; run `make export` first")
        if device == "cpu" or device in backend.devices:
            fns[name] = backends.load(backend, artifact_dir, device=device, threads=threads)
    return fns


def run(ckpt: Path, artifact_dir: Path, batches: list[int], threads: int, seconds: float, rounds: int) -> list[dict]:
    """Measure every backend at every batch size on CPU (and CUDA when available)."""
    torch.set_num_threads(threads)
    latent_dim = Manifest.read(artifact_dir).shapes.latent_dim
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        fns = candidates(ckpt, artifact_dir, device, threads)
        for batch in batches:
            z = np.random.default_rng(0).standard_normal((batch, latent_dim)).astype(np.float32)
            samples: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(rounds):
                for name, fn in fns.items():
                    samples[name].append(time_call(lambda fn=fn, z=z: fn(z), seconds))
            base = statistics.median(samples["eager-fp32"])
            for name, s in samples.items():
                latency = statistics.median(s)
                rows.append({"device": device, "backend": name, "batch": batch, "latency_ms": latency * 1e3,
                             "images_per_s": batch / latency, "speedup_vs_eager_fp32": base / latency})
    return rows


def markdown(rows: list[dict], threads: int) -> str:
    """Table of the results, with each int8 artifact's ratio to the fp32 artifact of its own runtime."""
    index = {(r["device"], r["backend"], r["batch"]): r for r in rows}
    lines = [f"Threads: torch.set_num_threads({threads}), ONNX Runtime intra_op_num_threads={threads}.", "",
             "| device | backend | batch | latency (ms) | images/s | vs eager fp32 | int8 vs own fp32 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        own = ""
        if r["backend"].endswith("int8"):
            fp32 = index[(r["device"], r["backend"].replace("int8", "fp32"), r["batch"])]
            own = f"{fp32['latency_ms'] / r['latency_ms']:.2f}x"
        lines.append(f"| {r['device']} | {r['backend']} | {r['batch']} | {r['latency_ms']:.3f} | "
                     f"{r['images_per_s']:.0f} | {r['speedup_vs_eager_fp32']:.2f}x | {own} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.decoders", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--artifacts", type=Path, default=artifacts.DEFAULT_DIR)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="default: all cores")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--seconds", type=float, default=0.3, help="timing window per backend per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    rows = run(args.checkpoint, args.artifacts, args.batches, args.threads, args.seconds, args.rounds)
    table = markdown(rows, args.threads)
    print(table)
    if args.out:
        checkpoint.atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(
            {"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=2) + "\n"))


if __name__ == "__main__":
    try:
        main()
    except FmvaeError as e:
        raise SystemExit(f"error: {e}") from None
