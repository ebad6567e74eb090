"""Serving benchmark: ``python -m handlers.bench [--seconds S] [--out DIR]`` (``make serve-bench``).

Starts one TorchServe with ``sample``, ``interpolate``, a trivial ``echo`` handler and a ``bare`` handler that
only decodes (archives built from ``model_store/export`` and the current handler code), then measures p50/p99
latency and throughput for sample n=1, sample n=64 and interpolate steps=10 (format npy) at concurrency 1 and
8, each next to echo at the same concurrency (the framework's floor); sample n=1 also next to bare. Sample
n=64 is also set against the served backend decoding batches of 64 in this process (the in-process rate),
with one worker's threads and with all sample workers' threads. The figures compared are measured in
alternating slices (each side in turn, then the reverse order), so that a machine whose speed drifts during
the run shifts both sides of a ratio alike. The worker columns come from the handlers' own metrics. Clients
run on the same machine and share its CPUs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

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
BARE_BODY = SCENARIOS["sample n=1"][1]  # handlers/bare.py: decoding alone, the least a handler can do
IN_PROCESS_BATCH = 64
GAP = 0.003  # seconds between decoder calls: about the gap a worker waits between requests at concurrency 1
# A single-threaded numpy workload, about as long as the decoder call for one latent, with no ONNX Runtime in it.
UNSORTED = np.random.default_rng(0).standard_normal(32768).astype(np.float32)


def numpy_sort(_: np.ndarray) -> np.ndarray:
    """The numpy workload, called like a decoder by ``decode_loop``."""
    return np.sort(UNSORTED)


@dataclass
class Tally:
    """Requests (or decoder calls) of one kind, summed over the slices they were measured in."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def add(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.seconds += other.seconds

    def summary(self) -> dict:
        ms = np.array(self.latencies) * 1e3
        return {"requests": len(ms), "errors": self.errors, "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)), "requests_per_s": len(ms) / self.seconds}


def load(host: str, port: int, model: str, body: dict, concurrency: int, seconds: float) -> Tally:
    """Closed-loop load: ``concurrency`` clients with keep-alive connections, each sending back to back."""
    payload = json.dumps(body).encode()
    tally = Tally()
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        mine = Tally()
        while time.perf_counter() < stop:
            start = time.perf_counter()
            conn.request("POST", f"/predictions/{model}", payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            mine.latencies.append(time.perf_counter() - start)
            mine.errors += response.status != 200
        conn.close()
        with lock:
            tally.add(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally.seconds = time.perf_counter() - started
    return tally


def decode_loop(decode: Callable[[np.ndarray], np.ndarray], seconds: float,
                batch: int = IN_PROCESS_BATCH, gap: float = 0.0, busy: bool = False) -> Tally:
    """The decoder called in this process on batches of ``batch`` latents, back to back or ``gap`` seconds apart,
    sleeping or (``busy``) spinning in between: a worker at concurrency 1 waits that long between requests."""
    z = np.random.default_rng(0).standard_normal((batch, 64)).astype(np.float32)
    tally = Tally()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        until = time.perf_counter() + gap
        if not busy:
            time.sleep(gap)
        while time.perf_counter() < until:
            pass
        start = time.perf_counter()
        decode(z)
        tally.latencies.append(time.perf_counter() - start)
    tally.seconds = time.perf_counter() - started
    return tally


def worker_totals(metrics_url: str, model: str) -> dict[str, float]:
    """Running totals of one model's handler histograms (decoder time, decoder calls, requests per batch)."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    totals = dict.fromkeys(("fmvae_decode_duration_seconds_sum", "fmvae_decode_duration_seconds_count",
                            "fmvae_batch_requests_sum", "fmvae_batch_requests_count"), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals and sample.labels.get("model") == model:
                totals[sample.name] += sample.value
    return totals


def run(artifact_dir: Path, seconds: float, concurrencies: list[int], rounds: int = 4,
        scenarios: list[str] | None = None) -> dict:
    """Every scenario at every concurrency: ``rounds`` alternating slices of echo, the scenario and (for
    batches of 64) the in-process decoder, ``seconds`` in all for each."""
    threads = worker_threads(archive.HANDLER_CONFIG["threads"], archive.STORE_WORKERS)
    decoder_file = archive.HANDLER_CONFIG["decoder"]
    decoder = backends.load(artifact_dir / decoder_file, threads=threads)
    model_threads = threads * archive.MODELS["sample"]["workers"]  # all of sample's workers, in one process
    model_decoder = backends.load(artifact_dir / decoder_file, threads=model_threads)
    for decode in (decoder, model_decoder):
        decode(np.zeros((IN_PROCESS_BATCH, 64), np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        for name in archive.MODELS:
            archive.build(name, artifact_dir, store, version="bench")
        archive.build("echo", artifact_dir, store, version="bench", handler_file=archive.HANDLERS / "echo.py",
                      artifacts=[])
        archive.build("bare", artifact_dir, store, version="bench", handler_file=archive.HANDLERS / "bare.py",
                      artifacts=[decoder_file])
        config = ServerConfig(model_store=store, models=(*archive.MODELS, "echo", "bare")).with_free_ports()
        rows = []
        with TorchServe(config) as server:
            def serve(model: str, body: dict, concurrency: int) -> Callable[[float], Tally]:
                return lambda s: load(config.host, config.inference_port, model, body, concurrency, s)

            for concurrency in concurrencies:  # warm-up: every model and the JVM's code paths at each load
                for model, body, _ in [*SCENARIOS.values(), ("echo", ECHO_BODY, 1), ("bare", BARE_BODY, 1)]:
                    serve(model, body, concurrency)(0.5)
            for concurrency in concurrencies:
                for scenario in scenarios or SCENARIOS:
                    model, body, images = SCENARIOS[scenario]
                    sides = {"scenario": serve(model, body, concurrency),
                             "echo": serve("echo", ECHO_BODY, concurrency)}
                    if body == BARE_BODY:
                        sides["bare"] = serve("bare", body, concurrency)
                    if images == IN_PROCESS_BATCH:
                        sides["in_process"] = lambda s: decode_loop(decoder, s)
                        sides["in_process_model"] = lambda s: decode_loop(model_decoder, s)
                    tallies = {side: Tally() for side in sides}
                    before = worker_totals(server.metrics_url, model)
                    for r in range(rounds):
                        for side in (list(sides) if r % 2 else list(sides)[::-1]):
                            tallies[side].add(sides[side](seconds / rounds))
                    time.sleep(0.2)  # the workers write their metrics within 50 ms of replying
                    worker = {k: v - before[k] for k, v in worker_totals(server.metrics_url, model).items()}
                    result, echo = tallies["scenario"].summary(), tallies["echo"].summary()
                    row = {"scenario": scenario, "concurrency": concurrency, **result,
                           "images_per_s": result["requests_per_s"] * images, "echo_p50_ms": echo["p50_ms"],
                           "echo_p99_ms": echo["p99_ms"], "echo_requests_per_s": echo["requests_per_s"],
                           "p50_vs_echo": result["p50_ms"] / echo["p50_ms"],
                           "worker_decoder_busy": worker["fmvae_decode_duration_seconds_sum"]
                           / (tallies["scenario"].seconds * archive.MODELS[model]["workers"]),
                           "worker_decode_ms": 1e3 * worker["fmvae_decode_duration_seconds_sum"]
                           / worker["fmvae_decode_duration_seconds_count"],
                           "requests_per_batch": worker["fmvae_batch_requests_sum"]
                           / worker["fmvae_batch_requests_count"]}
                    if "bare" in tallies:
                        bare = tallies["bare"].summary()
                        row |= {"bare_p50_ms": bare["p50_ms"], "bare_vs_echo": bare["p50_ms"] / echo["p50_ms"]}
                    if images == 1 and concurrency == 1:  # the same decoder call in this process
                        row |= {"in_process_decode_ms": decode_loop(decoder, 1.0, 1).summary()["p50_ms"],
                                "in_process_decode_after_sleep_ms":
                                    decode_loop(decoder, 1.0, 1, GAP).summary()["p50_ms"],
                                "in_process_decode_after_spin_ms":
                                    decode_loop(decoder, 1.0, 1, GAP, busy=True).summary()["p50_ms"],
                                "numpy_sort_ms": decode_loop(numpy_sort, 1.0, 1).summary()["p50_ms"],
                                "numpy_sort_after_sleep_ms": decode_loop(numpy_sort, 1.0, 1, GAP).summary()["p50_ms"]}
                    if "in_process" in tallies:
                        rate, model_rate = (tallies[side].summary()["requests_per_s"] * IN_PROCESS_BATCH
                                            for side in ("in_process", "in_process_model"))
                        row |= {"in_process_images_per_s": rate, "images_vs_in_process": row["images_per_s"] / rate,
                                "in_process_model_images_per_s": model_rate,
                                "images_vs_in_process_model": row["images_per_s"] / model_rate}
                    rows.append(row)
    return {"backend": decoder_file, "worker_threads": threads, "sample_workers": archive.MODELS["sample"]["workers"],
            "seconds_per_point": seconds, "rounds": rounds, "rows": rows}


def markdown(report: dict) -> str:
    threads, workers = report["worker_threads"], report["sample_workers"]
    lines = [f"Backend {report['backend']}, {threads} thread(s) per worker, {workers} sample workers; "
             f"{report['seconds_per_point']:g} s per side of each row in {report['rounds']} alternating slices. "
             f"In-process: the decoder at batch 64 in one process with one worker's threads ({threads}), and with "
             f"the threads of all sample workers ({threads * workers}).", "",
             "| scenario | concurrency | p50 (ms) | p99 (ms) | req/s | images/s | echo p50 (ms) | echo p99 (ms) "
             "| echo req/s | p50 / echo p50 | in-process images/s, one worker's threads | images/s / that "
             "| in-process images/s, all workers' threads | images/s / that | decoder busy per worker "
             "| worker decode call (ms) | requests per batch |", "| --- " * 17 + "|"]
    for r in report["rows"]:
        in_process = (f"{r['in_process_images_per_s']:.0f} | {r['images_vs_in_process']:.0%} | "
                      f"{r['in_process_model_images_per_s']:.0f} | {r['images_vs_in_process_model']:.0%}"
                      if "in_process_images_per_s" in r else "| | | ")
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['requests_per_s']:.0f} | {r['images_per_s']:.0f} | {r['echo_p50_ms']:.2f} | "
                     f"{r['echo_p99_ms']:.2f} | {r['echo_requests_per_s']:.0f} | {r['p50_vs_echo']:.2f}x | "
                     f"{in_process} | {r['worker_decoder_busy']:.0%} | {r['worker_decode_ms']:.2f} | "
                     f"{r['requests_per_batch']:.1f} |")
    targets = []
    for r in report["rows"]:
        if r["scenario"] == "sample n=1" and r["concurrency"] == 1:
            targets.append(f"sample n=1 p50 at concurrency 1 is {r['p50_vs_echo']:.2f}x the echo floor "
                           "(target <= 1.3x)")
            lines += ["", f"A handler that only decodes (handlers/bare.py, no validation, metrics or batching): p50 "
                          f"{r['bare_p50_ms']:.2f} ms, {r['bare_vs_echo']:.2f}x the echo floor.",
                      "", f"Decoder call for 1 latent in this process: {r['in_process_decode_ms']:.2f} ms back to "
                          f"back; {GAP * 1e3:g} ms after the previous one, {r['in_process_decode_after_sleep_ms']:.2f} "
                          f"ms when the process slept in between and {r['in_process_decode_after_spin_ms']:.2f} ms "
                          f"when it spun; in the worker at concurrency 1: {r['worker_decode_ms']:.2f} ms (mean). "
                          f"Work that is not ONNX Runtime slows too: numpy sorting {len(UNSORTED):,} floats takes "
                          f"{r['numpy_sort_ms']:.2f} ms back to back and {r['numpy_sort_after_sleep_ms']:.2f} ms "
                          f"{GAP * 1e3:g} ms after the previous sort."]
        if r["scenario"] == "sample n=64":
            targets.append(f"sample n=64 at concurrency {r['concurrency']} serves {r['images_vs_in_process']:.0%} "
                           f"of one worker's in-process rate and {r['images_vs_in_process_model']:.0%} of all "
                           f"its workers' (target >= 80%)")
    if targets:
        lines += ["", "Targets: " + "; ".join(targets) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m handlers.bench", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_OUT / ARTIFACT_DIR)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per side of each row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per row")
    parser.add_argument("--scenario", choices=list(SCENARIOS), action="append", help="only these (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/serve-bench"))
    args = parser.parse_args(argv)
    report = run(args.artifacts, args.seconds, args.concurrency, args.rounds, args.scenario)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_bench.json").write_text(json.dumps(report, indent=2))
    (args.out / "serve_bench.md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
