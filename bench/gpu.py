"""The one-shot GPU benchmark: ``python -m bench.gpu --out DIR [--smoke] [--parts ...]`` (``make gpu-bench``).

Meant for one command on a machine with a CUDA GPU (docs/gpu.md says how to carry the code and the bundle there),
within about six minutes. It writes ``DIR/gpu_bench.json`` and ``DIR/gpu_bench.md``: the device, driver, torch,
CUDA and ONNX Runtime versions, then each part asked for:

- ``decoders``: every GPU decoder (fp32 eager, TorchScript fp32 / fp16 / bf16, and those captured as CUDA graphs at
  the batch sizes the settings capture) at batch 1, 16, 64, 256, 1024 and 4096: latency (median and p95 of CUDA
  event timings, after warm-up; latents and logits stay on the device), images/s and peak GPU memory.
- ``worker``: the worker itself in this process, through TorchServe's ``handle`` entry with a stand-in context
  given ``gpu_id=0`` (``serving/inprocess.py``): sample n=1, n=64 and every route's OpenAPI example, latency per
  call (numpy in, encoded answer out).
- ``context``: the start time and memory of one CUDA worker, in a process of its own (its CUDA context included).
- ``server``: each host that can run here (TorchServe when it and a Java runtime are; the KServe host when kserve
  is), with the GPU layout of ``serving/settings.py``: every route's example must answer 200 from the device it
  was placed on; sample n=1 p50 against the host's echo floor (TorchServe's echo handler; the KServe peer's
  echo), and sample n=64 images/s against the in-process rate of the same worker (process) count.

On a machine without CUDA every part runs on the CPU; ``--smoke`` makes it take seconds (tiny batches, few
repeats, two routes served), which ``make test`` does so that this command cannot rot between GPU runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from fmvae_client import ClientError, request

from bench.serving import ECHO_BODY, alternate, bench_kserve, bench_server, peer
from export.build import CastDecoder
from export.config import DEFAULT_CHECKPOINT
from export.lowres import LowResDecoder
from runtime import artifacts, backends
from runtime.artifacts import ARTIFACT_DIR
from runtime.manifest import Manifest
from serving.inprocess import InProcessWorker
from serving.routes import ROUTES, route_example
from serving.settings import CUDA_GRAPH_BATCHES, MODELS
from serving.torchserve.host import java
from training import checkpoint

PARTS = ("decoders", "worker", "context", "server")
HOST_TITLES = {"torchserve": "TorchServe (echo handler as the floor)",
               "kserve": "the KServe host (the KServe peer's echo as the floor)"}
TS_DECODERS = ("torchscript-fp32", "torchscript-fp16")  # the exported GPU decoders; bf16 is cast here


@dataclass(frozen=True)
class Plan:
    """How much of everything: the full run, or the smoke run that ``make test`` makes on the CPU."""

    batches: tuple[int, ...] = (1, 16, 64, 256, 1024, 4096)
    warmup: int = 20
    repeats: int = 100
    worker_repeats: int = 50
    serve_seconds: float = 8.0
    served_routes: tuple[str, ...] = tuple(MODELS)


SMOKE = Plan(batches=(1, 4), warmup=1, repeats=3, worker_repeats=3, serve_seconds=0.5, served_routes=("sample",))


def device_of(gpu: bool) -> torch.device:
    return torch.device("cuda:0") if gpu else torch.device("cpu")


def environment() -> dict:
    """What ran the benchmark: device, driver, library versions."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
           "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env |= {"device": props.name, "device_memory_gib": round(props.total_memory / 2**30, 1),
                "multiprocessors": props.multi_processor_count}
        smi = shutil.which("nvidia-smi")
        if smi:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30)
            env["driver"] = out.stdout.strip() or None
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()})"
    return env


def timed(fn: Callable[[], object], gpu: bool, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn``: CUDA events around each call on a GPU (device time, synchronised), else the
    wall clock; after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start_s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start_s)
    return times


def summary(times: list[float], images: int) -> dict:
    """Median and p95 latency (ms) and images/s at the median."""
    median = statistics.median(times)
    return {"p50_ms": median * 1e3, "p95_ms": float(np.percentile(times, 95)) * 1e3,
            "images_per_s": images / median if median > 0 else float("inf")}


def decoder_candidates(artifact_dir: Path, ckpt: Path, dev: torch.device) -> tuple[dict[str, Callable], dict]:
    """name -> module taking latents on ``dev``; and {name: why it is missing} for those that could not load (a
    TorchScript file of a newer torch than the one here, say)."""
    model, _ = checkpoint.load_model(ckpt)
    # No bf16 artifact is exported (export/build.py): the same graph cast here, to tell whether one should be.
    bf16 = CastDecoder(LowResDecoder(model.decoder).eval(), torch.bfloat16).to(dev).eval()
    candidates: dict[str, Callable] = {"eager-fp32": model.decoder.to(dev).eval()}
    missing = {}
    for name in TS_DECODERS:
        try:
            candidates[name] = backends.TorchScriptModule(artifact_dir / artifacts.DECODERS[name].artifact, dev).module
        except (RuntimeError, OSError) as e:  # reported, not fatal: the other candidates still run
            missing[name] = f"{type(e).__name__}: {e}"
    with torch.no_grad():
        candidates["torchscript-bf16"] = torch.jit.trace(bf16, torch.zeros(2, model.latent_dim, device=dev),
                                                         check_trace=False)
    return candidates, missing


def decoder_sweep(artifact_dir: Path, ckpt: Path, plan: Plan, gpu: bool) -> dict:
    """Every decoder at every batch size, on the device; plus the CUDA-graph replays of the TorchScript ones at the
    batch sizes the settings capture."""
    dev = device_of(gpu)
    latent_dim = Manifest.read(artifact_dir).shapes.latent_dim
    candidates, missing = decoder_candidates(artifact_dir, ckpt, dev)
    rows = []
    with torch.no_grad():
        for name, module in candidates.items():
            for batch in plan.batches:
                z = torch.randn(batch, latent_dim, device=dev)
                if gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                times = timed(lambda m=module, z=z: m(z), gpu, plan.warmup, plan.repeats)
                row = {"decoder": name, "graphs": False, "batch": batch, **summary(times, batch)}
                if gpu:
                    row["peak_memory_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                rows.append(row)
            graphed = [b for b in plan.batches if b in CUDA_GRAPH_BATCHES]
            if gpu and name.startswith("torchscript") and graphed:
                for batch in graphed:
                    static = torch.randn(batch, latent_dim, device=dev)
                    replay, _ = backends.cuda_capture(module, static)
                    times = timed(replay, gpu, plan.warmup, plan.repeats)
                    rows.append({"decoder": name, "graphs": True, "batch": batch, **summary(times, batch)})
    best = max((r for r in rows if r["decoder"] == "torchscript-fp16"), key=lambda r: r["images_per_s"], default=None)
    graph_b1 = [r["p50_ms"] for r in rows if r["graphs"] and r["batch"] == 1]
    return {"rows": rows, "missing": missing, "latent_dim": latent_dim,
            "fp16_best": best and {"batch": best["batch"], "images_per_s": best["images_per_s"]},
            "graphs_batch1_p50_ms": min(graph_b1) if graph_b1 else None,
            "graphs": "captured" if gpu else "not captured: no CUDA device"}


def json_example(name: str, model_store: Path) -> dict:
    """Route ``name``'s example, answered as json (which names the device)."""
    return route_example(name, model_store) | {"format": "json"}


def worker_requests(model_store: Path = Path("model_store")) -> dict[str, tuple[str, dict]]:
    """name -> (route, body): sample n=1 and n=64, then every route's OpenAPI example."""
    requests = {"sample n=1": ("sample", {"n": 1, "seed": 1, "format": "npy"}),
                "sample n=64": ("sample", {"n": 64, "seed": 1, "format": "npy"})}
    return requests | {f"{name} (example)": (name, json_example(name, model_store)) for name in ROUTES}


def worker_calls(model_store: Path, plan: Plan, gpu: bool) -> dict:
    """Every request of ``worker_requests`` through a worker of its route in this process, given ``gpu_id=0``."""
    workers: dict[str, InProcessWorker] = {}
    rows = []
    for name, (route, body) in worker_requests(model_store).items():
        if route not in workers:
            workers[route] = InProcessWorker(route, model_store, gpu_id=0)
        worker = workers[route]
        reply = worker([body])[0]
        if reply.status != 200:
            rows.append({"request": name, "route": route, "status": reply.status, "error": reply.body[:300].decode()})
            continue
        times = timed(lambda w=worker, b=body: w([b]), False, 2, plan.worker_repeats)
        images = int(np.prod(np.load(io.BytesIO(reply.body)).shape[:-2])) if body["format"] == "npy" else None
        rows.append({"request": name, "route": route, "status": 200, "backend": worker.worker.backend,
                     "device": worker.worker.device, **summary(times, images or 1),
                     **({"images": images} if images else {})})
    return {"rows": rows, "expected_device": "cuda:0" if gpu else "cpu"}


def context_probe(model_store: str) -> None:
    """Run in a process of its own by ``context_cost``: start one sample worker given ``gpu_id=0``, print its
    figures as a JSON line, and wait until stdin closes (so that the parent can read its GPU memory meanwhile)."""
    worker = InProcessWorker("sample", Path(model_store), gpu_id=0)
    out = {"backend": worker.worker.backend, "device": worker.worker.device}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        out |= {"torch_allocated_mb": torch.cuda.memory_allocated() / 2**20,
                "torch_reserved_mb": torch.cuda.memory_reserved() / 2**20}
    with open("/proc/self/status") as f:
        out["rss_mb"] = int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024
    print(json.dumps(out), flush=True)
    sys.stdin.read()


def context_cost(model_store: Path, gpu: bool) -> dict:
    """One sample worker started in a process of its own: seconds from the process's start to a warm worker
    (interpreter, imports, CUDA initialisation, loading, warm-up, graph capture), its memory, and on a GPU what
    nvidia-smi counts for the process: the CUDA context and the worker's allocations."""
    start = time.perf_counter()
    probe = subprocess.Popen([sys.executable, "-c", f"from bench.gpu import context_probe; "
                              f"context_probe({str(model_store)!r})"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        line = probe.stdout.readline()
        if not line:
            return {"error": probe.stderr.read()[-2000:]}
        result = {"ready_s": round(time.perf_counter() - start, 2), **json.loads(line)}
        smi = shutil.which("nvidia-smi")
        if gpu and smi:
            out = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=30).stdout
            used = [int(m) for pid, m in (row.split(",") for row in out.splitlines() if row.strip())
                    if int(pid) == probe.pid]
            result["gpu_process_memory_mb"] = used[0] if used else None
        return result
    finally:
        probe.stdin.close()
        probe.wait(timeout=60)


def served(artifact_dir: Path, plan: Plan, gpu: bool, in_process: dict) -> dict:
    """Each host that can run here, with the GPU layout of ``serving/settings.py``: TorchServe (when it and Java
    are here; its echo handler is the floor) and the KServe host (when kserve is here; one CUDA context per process,
    as many processes as TorchServe has sample workers; the 40-line KServe peer's echo is the floor)."""
    models = {name: MODELS[name] for name in plan.served_routes}
    report = {}
    try:
        import ts  # noqa: F401 (only whether TorchServe is installed)
        missing = None if java() else "no Java runtime (set JAVA_HOME to the bundle's)"
    except ImportError:
        missing = "TorchServe is not installed here (the bundle's server part carries it)"
    if missing:
        report["torchserve"] = {"skipped": missing}
    else:
        with bench_server(artifact_dir, ("echo",), models) as (server, serve):
            report["torchserve"] = host_figures(server.url, serve, lambda c: serve("echo", ECHO_BODY, c),
                                                artifact_dir, plan, gpu, in_process, MODELS["sample"].workers)
    try:
        import kserve  # noqa: F401 (only whether KServe is installed)
    except ImportError:
        report["kserve"] = {"skipped": "kserve is not installed here (the bundle's kserve part carries it)"}
    else:
        processes = MODELS["sample"].workers
        with bench_kserve(artifact_dir, processes, models=tuple(models)) as (host, serve), \
                peer("kserve", artifact_dir) as peer_serve:
            report["kserve"] = host_figures(host.url, serve, lambda c: peer_serve("echo", ECHO_BODY, c),
                                            artifact_dir, plan, gpu, in_process, processes)
    return report


def host_figures(url: str, serve: Callable, echo: Callable, artifact_dir: Path, plan: Plan, gpu: bool,
                 in_process: dict, processes: int) -> dict:
    """One host's checks and figures: every served route's example answers from its device; sample n=1 at one
    client against the echo floor; sample n=64 at eight against the in-process rate of ``processes`` workers."""
    rows, checks = [], []
    for name in plan.served_routes:
        expected = "cuda" if gpu and MODELS[name].gpu else "cpu"
        try:
            answer = request("POST", f"{url}/predictions/{name}", json_example(name, artifact_dir.parent), timeout=60)
            status, reply = answer.status, answer.value()
        except (ClientError, ValueError) as e:  # the check fails, with its reason
            status, reply = None, {"error": str(e)}
        device = reply.get("device", "")
        checks.append({"route": name, "status": status, "device": device,
                       "passed": status == 200 and device.startswith(expected)})
    sample = {"n1": ({"n": 1, "seed": 1, "format": "npy"}, 1), "n64": ({"n": 64, "seed": 1, "format": "npy"}, 8)}
    for key, (body, concurrency) in sample.items():
        for side in (serve("sample", body, concurrency), echo(concurrency)):
            side(min(1.0, plan.serve_seconds))  # warm-up
        tallies = alternate({"sample": serve("sample", body, concurrency), "echo": echo(concurrency)},
                            plan.serve_seconds, 2)
        result, floor = tallies["sample"].summary(), tallies["echo"].summary()
        rows.append({"scenario": f"sample {key.replace('n', 'n=')}", "concurrency": concurrency, **result,
                     "echo_p50_ms": floor["p50_ms"], "p50_vs_echo": result["p50_ms"] / floor["p50_ms"],
                     "images_per_s": result["requests_per_s"] * body["n"]})
    n64 = next((r for r in in_process.get("rows", []) if r["request"] == "sample n=64" and "images_per_s" in r), None)
    if n64:
        rate = n64["images_per_s"] * processes
        rows[-1] |= {"in_process_images_per_s": rate, "images_vs_in_process": rows[-1]["images_per_s"] / rate}
    return {"processes": processes, "checks": checks, "rows": rows, "all_answered": all(c["passed"] for c in checks)}


def markdown(report: dict) -> str:
    """The report as a page: environment, then each part's table and its targets."""
    env = report["environment"]
    lines = [f"# GPU benchmark: {env.get('device')}", "",
             f"Command: `{report['command']}`, {report['date']}, {'smoke run' if report['smoke'] else 'full run'}.",
             "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    if "decoders" in report:
        d = report["decoders"]
        lines += ["", "## Decoders on the device", "",
                  f"Latents and logits stay on the device; CUDA graphs: {d['graphs']}. Missing: "
                  f"{d['missing'] or 'none'}.", "",
                  "| decoder | graphs | batch | p50 (ms) | p95 (ms) | images/s | peak memory (MB) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['decoder']} | {'yes' if r['graphs'] else 'no'} | {r['batch']} | {r['p50_ms']:.4f} | "
                  f"{r['p95_ms']:.4f} | {r['images_per_s']:,.0f} | {r.get('peak_memory_mb', float('nan')):.1f} |"
                  for r in d["rows"]]
        best = d["fp16_best"]
        lines += ["", f"Targets: fp16 best {best['images_per_s']:,.0f} images/s at batch {best['batch']} "
                      "(target >= 1,000,000)" if best else "Targets: no fp16 decoder measured",
                  f"; batch-1 p50 with CUDA graphs {d['graphs_batch1_p50_ms']:.4f} ms (target < 0.2 ms)."
                  if d["graphs_batch1_p50_ms"] is not None else "; no CUDA graphs captured."]
    if "worker" in report:
        expected = report["worker"]["expected_device"]
        lines += ["", f"## The worker in this process (gpu_id=0; expected device {expected})",
                  "", "| request | status | backend | device | p50 (ms) | p95 (ms) | images/s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['request']} | {r['status']} | {r.get('backend', '')} | {r.get('device', '')} | "
                  f"{r.get('p50_ms', float('nan')):.3f} | {r.get('p95_ms', float('nan')):.3f} | "
                  f"{r['images_per_s']:,.0f} |" if "images" in r else
                  f"| {r['request']} | {r['status']} | {r.get('backend', '')} | {r.get('device', '')} | "
                  f"{r.get('p50_ms', float('nan')):.3f} | {r.get('p95_ms', float('nan')):.3f} | |"
                  for r in report["worker"]["rows"]]
    if "context" in report:
        lines += ["", "## One worker in a process of its own", "", "```", json.dumps(report["context"], indent=2),
                  "```"]
    for host, s in report.get("server", {}).items():
        lines += ["", f"## The real server: {HOST_TITLES[host]}", ""]
        if "skipped" in s:
            lines.append(f"Skipped: {s['skipped']}.")
        else:
            lines += [f"Every route's example answered from its device: {s['all_answered']}; {s['processes']} "
                      f"serving {'workers for sample' if host == 'torchserve' else 'processes'}.", "",
                      "| route | status | device | ok |", "| --- | --- | --- | --- |"]
            lines += [f"| {c['route']} | {c['status']} | {c['device']} | {'yes' if c['passed'] else 'NO'} |"
                      for c in s["checks"]]
            lines += ["", "| scenario | concurrency | p50 (ms) | echo p50 (ms) | p50 / echo | images/s | "
                          "in-process images/s | share |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {r['scenario']} | {r['concurrency']} | {r['p50_ms']:.2f} | {r['echo_p50_ms']:.2f} | "
                      f"{r['p50_vs_echo']:.2f}x | {r['images_per_s']:,.0f} | "
                      f"{r.get('in_process_images_per_s', float('nan')):,.0f} | "
                      f"{r.get('images_vs_in_process', float('nan')):.0%} |" for r in s["rows"]]
    return "\n".join(lines) + "\n"


def run(parts: tuple[str, ...], plan: Plan, model_store: Path, ckpt: Path) -> dict:
    """The parts asked for, in order; each timed."""
    gpu = torch.cuda.is_available()
    artifact_dir = model_store / ARTIFACT_DIR
    report: dict = {"environment": environment(), "parts_seconds": {}}
    for part in parts:
        start = time.perf_counter()
        print(f"bench.gpu: {part} ...", file=sys.stderr, flush=True)
        if part == "decoders":
            report[part] = decoder_sweep(artifact_dir, ckpt, plan, gpu)
        elif part == "worker":
            report[part] = worker_calls(model_store, plan, gpu)
        elif part == "context":
            report[part] = context_cost(model_store, gpu)
        else:
            report[part] = served(artifact_dir, plan, gpu, report.get("worker", {}))
        report["parts_seconds"][part] = round(time.perf_counter() - start, 1)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_bench.json and gpu_bench.md")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--smoke", action="store_true", help="seconds, not minutes: tiny sizes (make test runs it)")
    p.add_argument("--model-store", type=Path, default=Path("model_store"))
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    args = p.parse_args(argv)
    plan = SMOKE if args.smoke else Plan()
    report = run(tuple(args.parts), plan, args.model_store, args.checkpoint)
    report |= {"command": "python -m bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d %H:%M"), "smoke": args.smoke}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out, delete=False, suffix=".tmp") as tmp:
        tmp.write(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp.name, args.out / "gpu_bench.json")
    (args.out / "gpu_bench.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
