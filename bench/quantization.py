"""PyTorch dynamic quantization of the decoder, qconfig by qconfig: ``python -m bench.quantization``.

For each released model, the decoder's Linear layer quantized under each qconfig (per-tensor int8 weights, the
default; per-channel int8 weights, what the export uses; per-channel with 8-bit instead of 7-bit activations),
against the fp32 decoder of the same graph: PSNR of the
images of the test set's posterior means and of fixed prior draws, with the latents sent in batches of 1, 64 and
500 (activations are quantized per call from the batch's range, so the batch matters; the parity gate sends 500),
the change of the test -ELBO on posterior draws (the gate's bar: 0.1 nats), and the speed-up over fp32 at batch 64
in the same run. The CPU's int8 instructions (VNNI or not) are recorded: fbgemm's kernels differ between them.
Writes ``runs/bench/quantization.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

from export.build import dynamic_int8
from export.config import RELEASES
from export.lowres import LowResDecoder
from export.parity import psnr
from training import checkpoint, data

# name: (qconfig, 7-bit activations). torch's dynamic Linear quantizes its input to 7 bits (reduce_range) unless the
# module says version < 4; 8 bits is what saturates fbgemm's 16-bit sums on CPUs without VNNI.
QCONFIGS = {"per-tensor (default)": (default_dynamic_qconfig, True),
            "per-channel (export)": (per_channel_dynamic_qconfig, True),
            "per-channel, 8-bit activations": (per_channel_dynamic_qconfig, False)}
BATCHES = (1, 64, 500)
SAMPLES = 2000  # latents of each set


def cpu_int8() -> str:
    """The CPU's int8 dot-product instructions, as /proc/cpuinfo names them."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_vnni", "avx_vnni", "avx512bw", "avx2") if f in flags.split()]
    return ", ".join(found) or "none of avx2, avx512bw, vnni"


def batched(fn, z: torch.Tensor, batch: int) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():
        return torch.cat([fn(z[i:i + batch]) for i in range(0, len(z), batch)])


def recon(logits: torch.Tensor, x: torch.Tensor) -> float:
    """Mean BCE in nats per image: the -ELBO's part that a decoder changes (the gate's -ELBO change)."""
    return float(F.binary_cross_entropy_with_logits(logits.double(), x.double(), reduction="none").flatten(1)
                 .sum(1).mean())


def seconds_per_call(fn, z: torch.Tensor, repeats: int = 50) -> float:  # noqa: ANN001
    with torch.no_grad():
        fn(z)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(z)
    return (time.perf_counter() - start) / repeats


def measure(ckpt: Path, x_test: torch.Tensor) -> list[dict]:
    """One row per qconfig for the model in ``ckpt``."""
    model, _ = checkpoint.load_model(ckpt)
    decoder = LowResDecoder(model.eval().decoder).eval()
    x = x_test[:SAMPLES]
    with torch.no_grad():
        mu, logvar = model.encode(x)
        posterior = mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(1)) * torch.exp(0.5 * logvar)
        sets = {"test means": mu,
                "prior": torch.randn(SAMPLES, model.latent_dim, generator=torch.Generator().manual_seed(0))}
    reference = {name: torch.sigmoid(batched(decoder, z, 500)) for name, z in sets.items()}
    reference_recon = recon(batched(decoder, posterior, 500), x)
    rows = []
    for name, (qconfig, reduce_range) in QCONFIGS.items():
        quantized = dynamic_int8(decoder, qconfig)
        for module in quantized.modules():
            if isinstance(module, DynamicLinear) and not reduce_range:
                module.version = 3  # the forward of torch <= 1.x modules: 8-bit activations
        row = {"model": ckpt.parent.name, "latent_dim": model.latent_dim, "qconfig": name, "psnr_db": {}}
        for batch in BATCHES:
            row["psnr_db"][str(batch)] = {set_name: round(psnr(torch.sigmoid(batched(quantized, z, batch)).numpy(),
                                                               reference[set_name].numpy()), 2)
                                          for set_name, z in sets.items()}
        row["neg_elbo_change_batch500"] = round(abs(recon(batched(quantized, posterior, 500), x) - reference_recon), 4)
        z64 = sets["prior"][:64]
        row["speedup_batch64"] = round(seconds_per_call(decoder, z64) / seconds_per_call(quantized, z64), 3)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quantization", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench/quantization.json"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x_test = data.load(args.data_dir).test.tensor()
    rows = [row for ckpt in RELEASES for row in measure(ckpt, x_test)]
    report = {"cpu_int8": cpu_int8(), "engine": torch.backends.quantized.engine, "torch": torch.__version__,
              "threads": args.threads, "samples": SAMPLES, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"CPU int8 instructions: {report['cpu_int8']}; engine {report['engine']}; torch {report['torch']}")
    print("| model | qconfig | " + " | ".join(f"PSNR batch {b} (means / prior)" for b in BATCHES)
          + " | -ELBO change, batch 500 (nats) | speed-up over fp32, batch 64 |")
    print("| --- | --- | " + " | ".join("---" for _ in BATCHES) + " | --- | --- |")
    for r in rows:
        cells = [f"{r['psnr_db'][str(b)]['test means']:.1f} / {r['psnr_db'][str(b)]['prior']:.1f}" for b in BATCHES]
        print(f"| {r['model']} | {r['qconfig']} | " + " | ".join(cells)
              + f" | {r['neg_elbo_change_batch500']:.3f} | {r['speedup_batch64']:.2f}x |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
