"""Where serving time goes: ``python -m bench.serving_breakdown [--seconds S] [--out DIR]``.

An experiment behind the two findings in docs/serving-performance.md, in one TorchServe with every route, ``echo``
and ``bare`` (a handler that only decodes: bench/bare.py):

1. sample n=1 at concurrency 1 next to echo and bare (alternating slices), and the served decoder called for
   one latent in this process back to back and 3 ms after the previous call (the gap a worker sees between
   requests), the process sleeping or spinning in between; numpy sorting 32k floats the same way, to show
   that the slowdown after a gap is not ONNX Runtime's.
2. sample n=64 at concurrency 8 with the workers' own metrics (share of time each worker's decoder is busy,
   its decode call, requests per batch) beside the in-process rate with one worker's threads and with all
   sample workers' threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from fmvae_client import fetch
from prometheus_client.parser import text_string_to_metric_families

from bench.serving import (
    ECHO_BODY,
    IN_PROCESS_BATCH,
    SCENARIOS,
    alternate,
    bench_server,
    decode_loop,
    in_process_decoder,
    write,
)
from handlers.device import worker_threads
from runtime import artifacts
from serving.settings import MODELS, STORE_WORKERS
from serving.torchserve.host import TorchServe

GAP = 0.003  # seconds between calls: about the gap a worker waits between requests at concurrency 1
UNSORTED = np.random.default_rng(0).standard_normal(32768).astype(np.float32)  # ~ one decoder call of numpy work


def worker_totals(metrics_url: str, model: str) -> dict[str, float]:
    """Running totals of one model's handler histograms (decoder time, decoder calls, requests per batch)."""
    text = fetch(metrics_url, timeout=10).decode()
    totals = dict.fromkeys(("fmvae_decode_duration_seconds_sum", "fmvae_decode_duration_seconds_count",
                            "fmvae_batch_requests_sum", "fmvae_batch_requests_count"), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals and sample.labels.get("model") == model:
                totals[sample.name] += sample.value
    return totals


def worker_delta(server: TorchServe, model: str, before: dict[str, float], seconds: float) -> dict[str, float]:
    """The workers' decoder busy share, mean decode call and requests per batch since ``before``."""
    time.sleep(0.2)  # the workers write their metrics within 50 ms of replying
    d = {k: v - before[k] for k, v in worker_totals(server.metrics_url, model).items()}
    return {"decoder_busy_per_worker": d["fmvae_decode_duration_seconds_sum"] / (seconds * MODELS[model].workers),
            "worker_decode_ms": 1e3 * d["fmvae_decode_duration_seconds_sum"] / d["fmvae_decode_duration_seconds_count"],
            "requests_per_batch": d["fmvae_batch_requests_sum"] / d["fmvae_batch_requests_count"]}


def run(artifact_dir: Path, seconds: float, rounds: int) -> dict:
    """Both parts of the experiment (see the module docstring)."""
    threads = worker_threads(MODELS["sample"].threads, STORE_WORKERS)
    one, latent_dim = in_process_decoder(artifact_dir, threads)
    every, _ = in_process_decoder(artifact_dir, threads * MODELS["sample"].workers)
    z1 = np.random.default_rng(0).standard_normal((1, latent_dim)).astype(np.float32)
    z64 = np.random.default_rng(0).standard_normal((IN_PROCESS_BATCH, latent_dim)).astype(np.float32)
    _, n1 = SCENARIOS["sample n=1"]
    _, n64 = SCENARIOS["sample n=64"]
    with bench_server(artifact_dir, ("echo", "bare")) as (server, serve):
        for model, body in (("sample", n1), ("sample", n64), ("echo", ECHO_BODY), ("bare", n1)):
            for concurrency in (1, 8):
                serve(model, body, concurrency)(0.5)
        before = worker_totals(server.metrics_url, "sample")
        c1 = alternate({"sample": serve("sample", n1, 1), "echo": serve("echo", ECHO_BODY, 1),
                        "bare": serve("bare", n1, 1)}, seconds, rounds)
        c1_worker = worker_delta(server, "sample", before, c1["sample"].seconds)
        before = worker_totals(server.metrics_url, "sample")
        c8 = alternate({"sample": serve("sample", n64, 8), "one_worker_threads": lambda s: decode_loop(one, z64, s),
                        "all_workers_threads": lambda s: decode_loop(every, z64, s)}, seconds, rounds)
        c8_worker = worker_delta(server, "sample", before, c8["sample"].seconds)

    def numpy_sort(_: np.ndarray) -> np.ndarray:
        return np.sort(UNSORTED)

    p50 = {side: t.summary()["p50_ms"] for side, t in c1.items()}
    rate = {side: t.summary()["requests_per_s"] * IN_PROCESS_BATCH for side, t in c8.items()}
    return {
        "latent_dim": latent_dim, "worker_threads": threads, "seconds_per_side": seconds, "rounds": rounds,
        "n1": {"p50_ms": p50, "sample_vs_echo": p50["sample"] / p50["echo"], "bare_vs_echo": p50["bare"] / p50["echo"],
               **c1_worker},
        "call_after_gap_ms": {
            "decoder_back_to_back": decode_loop(one, z1, 1.0).summary()["p50_ms"],
            "decoder_after_sleep": decode_loop(one, z1, 1.0, GAP).summary()["p50_ms"],
            "decoder_after_spin": decode_loop(one, z1, 1.0, GAP, busy=True).summary()["p50_ms"],
            "numpy_sort_back_to_back": decode_loop(numpy_sort, z1, 1.0).summary()["p50_ms"],
            "numpy_sort_after_sleep": decode_loop(numpy_sort, z1, 1.0, GAP).summary()["p50_ms"]},
        "n64_c8": {"images_per_s": rate, "vs_one_worker_threads": rate["sample"] / rate["one_worker_threads"],
                   "vs_all_workers_threads": rate["sample"] / rate["all_workers_threads"], **c8_worker},
    }


def markdown(r: dict) -> str:
    """Three small tables."""
    n1, gap, n64 = r["n1"], r["call_after_gap_ms"], r["n64_c8"]
    return "\n".join([
        f"Latent size {r['latent_dim']}, {r['worker_threads']} thread(s) per worker; {r['seconds_per_side']:g} s per "
        f"side in {r['rounds']} alternating slices.", "",
        "sample n=1, concurrency 1:", "",
        "| echo p50 (ms) | bare p50 (ms) | sample p50 (ms) | bare / echo | sample / echo | worker decode call (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {n1['p50_ms']['echo']:.2f} | {n1['p50_ms']['bare']:.2f} | {n1['p50_ms']['sample']:.2f} | "
        f"{n1['bare_vs_echo']:.2f}x | {n1['sample_vs_echo']:.2f}x | {n1['worker_decode_ms']:.2f} |", "",
        f"One call in this process (p50, ms), back to back and {GAP * 1e3:g} ms after the previous one:", "",
        "| work | back to back | after a sleep | after a spin |", "| --- | --- | --- | --- |",
        f"| decoder, 1 latent | {gap['decoder_back_to_back']:.2f} | {gap['decoder_after_sleep']:.2f} | "
        f"{gap['decoder_after_spin']:.2f} |",
        f"| numpy sort of {len(UNSORTED):,} floats | {gap['numpy_sort_back_to_back']:.2f} | "
        f"{gap['numpy_sort_after_sleep']:.2f} | |", "",
        "sample n=64, concurrency 8:", "",
        "| served images/s | in-process, one worker's threads | in-process, all workers' threads | served / one "
        "worker's | served / all workers' | decoder busy per worker | worker decode call (ms) | requests per batch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {n64['images_per_s']['sample']:.0f} | {n64['images_per_s']['one_worker_threads']:.0f} | "
        f"{n64['images_per_s']['all_workers_threads']:.0f} | {n64['vs_one_worker_threads']:.0%} | "
        f"{n64['vs_all_workers_threads']:.0%} | {n64['decoder_busy_per_worker']:.0%} | "
        f"{n64['worker_decode_ms']:.2f} | {n64['requests_per_batch']:.1f} |"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_breakdown", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=artifacts.DEFAULT_DIR)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per side")
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices")
    parser.add_argument("--out", type=Path, default=Path("runs/serve-breakdown"))
    args = parser.parse_args(argv)
    report = run(args.artifacts, args.seconds, args.rounds)
    text = markdown(report)
    write(report, text, args.out, "serve_breakdown")
    print(text)


if __name__ == "__main__":
    main()
