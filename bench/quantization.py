"""The TorchScript int8 decoder: its qconfig, and its parity gate on both kinds of CPU:
``python -m bench.quantization [--samples 10000] [--threads 1] [--skip-qconfigs]``.

1. qconfigs, on this CPU: for each released model, the export's static int8 decoder (``export.build.static_int8``)
   built under each qconfig and gated like an export (``export/parity.py``, on the first ``--samples`` test images
   and prior draws), with its speed-up over the TorchScript fp32 decoder at batch 64 in the same run.
2. CPU kinds: the gate of each release's exported ``torchscript-int8`` artifact in a child process per kind of CPU:
   this one, and AVX2 only (this CPU's kernels limited to AVX2 by ATEN_CPU_CAPABILITY, FBGEMM_ENABLE_INSTRUCTIONS
   and ONEDNN_MAX_CPU_ISA: what a CPU without VNNI runs), each under both quantized engines, x86 (PyTorch's
   default: oneDNN's convolutions on a CPU with AVX-512 VNNI, fbgemm's elsewhere) and fbgemm. A probe tells
   whether the engine's int8 kernels add products in saturating int16 pairs, as they do without VNNI, so the
   limit is seen to hold.

Writes ``runs/bench/quantization.json`` and prints a table of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.ao import quantization as tq
from torch.ao.nn import quantized as nnq

from export import build, parity
from export.config import RELEASES, ExportConfig
from export.lowres import LowResDecoder
from runtime.artifacts import DECODERS
from training import checkpoint, classifier, data

QCONFIGS = {
    "8-bit activations, 7-bit weights (the export's)": build.INT8_QCONFIG,
    "7-bit activations, 8-bit weights (torch's x86 default)": tq.get_default_qconfig("x86"),
    "8-bit activations and weights (int16 pairs can overflow without VNNI)": tq.QConfig(
        activation=tq.HistogramObserver.with_args(reduce_range=False),
        weight=tq.default_per_channel_weight_observer),
}
ENGINES = ("x86", "fbgemm")
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
CPU_KINDS = {"this CPU": {}, "AVX2 only": AVX2_ONLY}


def cpu_int8() -> str:
    """The CPU's int8 dot-product instructions, as /proc/cpuinfo names them."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_vnni", "avx_vnni", "avx512bw", "avx2") if f in flags.split()]
    return ", ".join(found) or "none of avx2, avx512bw, vnni"


def pairs_saturate() -> bool:
    """Whether the current engine's int8 convolution adds uint8 x int8 products in saturating int16 pairs: inputs of
    255 and weights of 127 at every tap sum to about half the exact 255 * 64 (in units of the weights' scale) when
    it does."""
    conv = nnq.Conv2d(64, 1, 1)
    weight = torch.quantize_per_channel(torch.ones(1, 64, 1, 1), torch.tensor([1 / 127]), torch.tensor([0]), 0,
                                        torch.qint8)
    conv.set_weight_bias(weight, torch.zeros(1))
    conv.scale, conv.zero_point = 100.0, 0
    out = conv(torch.quantize_per_tensor(torch.full((1, 64, 1, 1), 255.0), 1.0, 0, torch.quint8))
    return float(out.dequantize().max()) < 0.75 * 255 * 64


def gate(ckpt: Path, paths: dict[str, Path], x_test: torch.Tensor) -> dict:
    """export/parity.py's report for the decoders ``paths`` of the model in ``ckpt`` on the images ``x_test`` and as
    many prior draws."""
    model, _ = checkpoint.load_model(ckpt)
    candidates = {key.removeprefix("decoder/"): DECODERS["torchscript-int8"] for key in paths}  # TorchScript int8 each
    return parity.check(model, paths, x_test, classifier.load(classifier.DEFAULT_PATH)[0],
                        ExportConfig(prior_samples=len(x_test)), candidates)


def seconds_per_call(module: torch.jit.ScriptModule, z: torch.Tensor, seconds: float = 0.5) -> float:
    """Mean seconds per call of ``module`` on ``z`` over at least ``seconds``, after one warm-up call."""
    with torch.inference_mode():
        module(z)
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < seconds:
            module(z)
            calls += 1
    return (time.perf_counter() - start) / calls


def speedup(fp32: Path, int8: Path, z: torch.Tensor, rounds: int = 5) -> float:
    """Median over ``rounds`` of the fp32 decoder's time per call over the int8 one's, timed in turn."""
    modules = torch.jit.load(str(fp32)), torch.jit.load(str(int8))
    return statistics.median(seconds_per_call(modules[0], z) / seconds_per_call(modules[1], z) for _ in range(rounds))


def qconfig_rows(ckpt: Path, x_test: torch.Tensor) -> list[dict]:
    """One row per qconfig for the model in ``ckpt``: its gate row and its speed-up over fp32 at batch 64."""
    model, _ = checkpoint.load_model(ckpt)
    decoder = LowResDecoder(model.eval().decoder).eval()
    cfg = ExportConfig()
    calibration = build.prior_latents(model, cfg.calibration_samples, cfg.seed + 1)
    z64 = torch.from_numpy(calibration[:64])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {f"decoder/{name}": Path(tmp) / f"{i}.pt" for i, name in enumerate(QCONFIGS)}
        fp32 = Path(tmp) / "fp32.pt"
        build.torchscript(decoder, z64, fp32)
        for name, qconfig in QCONFIGS.items():
            build.torchscript(build.static_int8(decoder, calibration, qconfig), z64, paths[f"decoder/{name}"])
        report = gate(ckpt, paths, x_test)
        ratios = {key.split("/", 1)[1]: speedup(fp32, path, z64) for key, path in paths.items()}
    return [{"model": ckpt.parent.name, "qconfig": name, **row,
             "speedup_vs_torchscript_fp32_batch64": round(ratios[name], 3)} for name, row in report["decoders"].items()]


def child(x_test: torch.Tensor) -> None:
    """Gate each release's torchscript-int8 artifact under each engine in this process: JSON rows on stdout."""
    rows = []
    for engine in ENGINES:
        torch.backends.quantized.engine = engine  # before the artifact loads: loading packs its weights for it
        saturates = pairs_saturate()
        for ckpt, folder in RELEASES.items():
            path = Path("model_store") / folder / DECODERS["torchscript-int8"].artifact
            row = gate(ckpt, {"decoder/torchscript-int8": path}, x_test)["decoders"]["torchscript-int8"]
            rows.append({"model": ckpt.parent.name, "engine": engine, "int16_pairs_saturate": saturates,
                         "aten_capability": torch.backends.cpu.get_cpu_capability(), **row})
    print(json.dumps(rows))


def cpu_kind_rows(samples: int) -> list[dict]:
    """The child's rows for each kind of CPU, each run in a process of its own (the kernels read the limits once)."""
    rows = []
    for kind, env in CPU_KINDS.items():
        result = subprocess.run([sys.executable, "-m", "bench.quantization", "--child", "--samples", str(samples)],
                                capture_output=True, text=True, env=os.environ | env, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"the {kind} child failed: {result.stderr[-2000:]}")
        rows += [{"cpu": kind, **row} for row in json.loads(result.stdout.splitlines()[-1])]
    return rows


def db(value: float | None) -> str:
    return "identical" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quantization", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench/quantization.json"))
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for the speed-ups (default: 1)")
    p.add_argument("--samples", type=int, default=10000, help="test images and prior draws gated (default: all)")
    p.add_argument("--skip-qconfigs", action="store_true", help="only the gate on both kinds of CPU")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x_test = data.load().test.tensor()[:args.samples]
    if args.child:
        child(x_test)
        return
    qconfigs = [] if args.skip_qconfigs else [row for ckpt in RELEASES for row in qconfig_rows(ckpt, x_test)]
    kinds = cpu_kind_rows(args.samples)
    report = {"cpu_int8": cpu_int8(), "torch": torch.__version__, "threads": args.threads, "samples": len(x_test),
              "qconfigs": qconfigs, "cpu_kinds": kinds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"CPU int8 instructions: {report['cpu_int8']}; torch {report['torch']}; {len(x_test)} test images and "
          f"prior draws; threads {args.threads}")
    if qconfigs:
        print("\n| model | qconfig | PSNR test means (dB) | PSNR prior (dB) | -ELBO change (nats) | gate | "
              "speed-up over TorchScript fp32, batch 64 |\n| --- | --- | --- | --- | --- | --- | --- |")
        for r in qconfigs:
            print(f"| {r['model']} | {r['qconfig']} | {db(r['psnr_test_means_db'])} | {db(r['psnr_prior_db'])} | "
                  f"{r['neg_elbo_delta']:.4f} | {'pass' if r['passed'] else 'FAIL'} | "
                  f"{r['speedup_vs_torchscript_fp32_batch64']:.2f}x |")
    print("\n| CPU | engine | int16 pairs saturate | model | PSNR test means (dB) | PSNR prior (dB) | "
          "-ELBO change (nats) | label agreement | gate |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in kinds:
        print(f"| {r['cpu']} | {r['engine']} | {'yes' if r['int16_pairs_saturate'] else 'no'} | {r['model']} | "
              f"{db(r['psnr_test_means_db'])} | {db(r['psnr_prior_db'])} | {r['neg_elbo_delta']:.4f} | "
              f"{100 * r['label_agreement']:.2f}% | {'pass' if r['passed'] else 'FAIL'} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
