"""Serving benchmark: ``python -m handlers.bench [--seconds S] [--out DIR]`` (``make serve-bench``).

Starts one TorchServe with ``sample``, ``interpolate`` and a trivial ``echo`` handler (archives built from
``model_store/export`` and the current handler code), then measures p50/p99 latency and throughput for
sample n=1, sample n=64 and interpolate steps=10 (format npy) at concurrency 1 and 8, each next to echo at the
same concurrency in the same run (the framework's floor). It also times the served backend in-process with
the worker's thread count, for the images/s ratio. Clients run on the same machine and share its CPUs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from export import archive, backends
from export.config import ARTIFACT_DIR, DEFAULT_OUT
from handlers.server import ServerConfig, TorchServe
from handlers.service import worker_threads

SCENARIOS = {  # name -> (model, body, images per request)
    "sample n=1": ("sample", {"n": 1, "seed": 1, "format": "npy"}, 1),
    "sample n=64": ("sample", {"n": 64, "seed": 1, "format": "npy"}, 64),
    "interpolate steps=10": ("interpolate", {"seeds": [1, 2], "steps": 10, "format": "npy"}, 10),
}
ECHO_BODY = {"n": 1, "seed": 1, "format": "npy"}


def load(host: str, port: int, model: str, body: dict, concurrency: int, seconds: float) -> dict:
    """Closed-loop load: ``concurrency`` clients with keep-alive connections, each sending back to back."""
    payload = json.dumps(body).encode()
    latencies: list[float] = []
    failed: list[int] = []
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        mine, errors = [], 0
        while time.perf_counter() < stop:
            start = time.perf_counter()
            conn.request("POST", f"/predictions/{model}", payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            errors += response.status != 200
        conn.close()
        with lock:
            latencies.extend(mine)
            failed.append(errors)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"requests": len(ms), "errors": sum(failed), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "requests_per_s": len(ms) / elapsed}


def in_process_rate(artifact: Path, threads: int, batch: int = 64, seconds: float = 3.0) -> float:
    """Images/s of the artifact decoding batches of ``batch`` in this process (median of 5 rounds)."""
    decode = backends.load(artifact, threads=threads)
    z = np.random.default_rng(0).standard_normal((batch, 64)).astype(np.float32)
    decode(z)
    rates = []
    for _ in range(5):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            decode(z)
            calls += 1
        rates.append(calls * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def run(artifact_dir: Path, seconds: float, concurrencies: list[int]) -> dict:
    """Every scenario at every concurrency, each with echo measured right before it."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        for name in archive.MODELS:
            archive.build(name, artifact_dir, store, version="bench")
        archive.build("echo", artifact_dir, store, version="bench", handler_file=archive.HANDLERS / "echo.py",
                      artifacts=[])
        config = ServerConfig(model_store=store, models=(*archive.MODELS, "echo")).with_free_ports()
        rows = []
        with TorchServe(config):
            for model, body, _ in SCENARIOS.values():  # warm-up
                load(config.host, config.inference_port, model, body, 1, 1.0)
            for concurrency in concurrencies:
                for scenario, (model, body, images) in SCENARIOS.items():
                    echo = load(config.host, config.inference_port, "echo", ECHO_BODY, concurrency, seconds)
                    result = load(config.host, config.inference_port, model, body, concurrency, seconds)
                    rows.append({"scenario": scenario, "concurrency": concurrency, **result,
                                 "images_per_s": result["requests_per_s"] * images,
                                 "echo_p50_ms": echo["p50_ms"], "echo_p99_ms": echo["p99_ms"],
                                 "echo_requests_per_s": echo["requests_per_s"],
                                 "p50_vs_echo": result["p50_ms"] / echo["p50_ms"]})
            server_threads = worker_threads(archive.HANDLER_CONFIG["threads"])
    decoder = artifact_dir / archive.HANDLER_CONFIG["decoder"]
    rate = in_process_rate(decoder, server_threads)
    return {"backend": archive.HANDLER_CONFIG["decoder"], "worker_threads": server_threads,
            "in_process_images_per_s_batch64": rate, "seconds_per_point": seconds, "rows": rows}


def markdown(report: dict) -> str:
    lines = [f"Backend {report['backend']}, {report['worker_threads']} thread(s) per worker; in-process decode at "
             f"batch 64: {report['in_process_images_per_s_batch64']:.0f} images/s.", "",
             "| scenario | concurrency | p50 (ms) | p99 (ms) | req/s | images/s | echo p50 (ms) | echo p99 (ms) "
             "| echo req/s | p50 / echo p50 |", "| --- " * 10 + "|"]
    for r in report["rows"]:
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['requests_per_s']:.0f} | {r['images_per_s']:.0f} | {r['echo_p50_ms']:.2f} | "
                     f"{r['echo_p99_ms']:.2f} | {r['echo_requests_per_s']:.0f} | {r['p50_vs_echo']:.2f}x |")
    first = next(r for r in report["rows"] if r["scenario"] == "sample n=1" and r["concurrency"] == 1)
    best64 = max(r["images_per_s"] for r in report["rows"] if r["scenario"] == "sample n=64")
    lines += ["", f"Targets: sample n=1 p50 at concurrency 1 is {first['p50_vs_echo']:.2f}x the echo floor "
                  f"(target <= 1.3x); sample n=64 serves {best64:.0f} images/s, "
                  f"{best64 / report['in_process_images_per_s_batch64']:.0%} of the in-process rate (target >= 80%)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m handlers.bench", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_OUT / ARTIFACT_DIR)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=Path("runs/serve-bench"))
    args = parser.parse_args(argv)
    report = run(args.artifacts, args.seconds, args.concurrency)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_bench.json").write_text(json.dumps(report, indent=2))
    (args.out / "serve_bench.md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
