"""Serving benchmark: ``python -m bench.serving [--seconds S] [--out DIR]`` (``make serve-bench``).

Starts one TorchServe with every route and a trivial ``echo`` handler (archives built from ``model_store/export``
and the current handler code), then measures p50/p99 latency and throughput for sample n=1, sample n=64,
interpolate steps=10 and each other route's OpenAPI example (format npy) at concurrency 1 and 8, each next to echo
at the same concurrency (the framework's floor). Sample n=64 is also set against the served decoder decoding
batches of 64 in this process with the threads of all sample workers (the in-process rate). The two sides of a
ratio are measured in alternating slices (each side in turn, then the reverse order), so that a machine whose speed
drifts during the run shifts both alike. Clients run on the same machine and share its CPUs.

Targets: sample n=1 p50 at concurrency 1 <= 1.3x the echo floor; sample n=64 at concurrency 8 >= 80% of the
in-process rate. ``python -m bench.serving_breakdown`` measures why (docs/serving-performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handlers.device import worker_threads
from runtime import artifacts, backends
from runtime.manifest import Manifest
from serving import archive
from serving.routes import PATH_PREFIX, ROUTES, example
from serving.server import TorchServe
from serving.settings import DECODER, MODELS, STORE_WORKERS, ModelSpec, ServerConfig

BENCH = Path(__file__).resolve().parent
TARGET_ROWS = {  # name -> (route, body): the rows the serving targets are about
    "sample n=1": ("sample", {"n": 1, "seed": 1, "format": "npy"}),
    "sample n=64": ("sample", {"n": 64, "seed": 1, "format": "npy"}),
    "interpolate steps=10": ("interpolate", {"seeds": [1, 2], "steps": 10, "format": "npy"}),
}
# name -> (route, body): the target rows, then the OpenAPI example of every other route of the released model
SCENARIOS = TARGET_ROWS | {
    f"{name} (example)": (name, example(route.operation) | {"format": "npy"})
    for name, route in ROUTES.items()
    if route.export == artifacts.ARTIFACT_DIR and name not in {r for r, _ in TARGET_ROWS.values()}}
ECHO_BODY = {"n": 1, "seed": 1, "format": "npy"}
IN_PROCESS_BATCH = 64
# Benchmark-only handlers served beside the real ones: echo (the framework's floor) and bare (decoding only).
REFERENCE_MODELS = {"echo": ModelSpec(BENCH / "echo.py", decoder={}),
                    "bare": ModelSpec(BENCH / "bare.py", decoder={"cpu": DECODER["cpu"]})}


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


def decode_loop(decode: Callable[[np.ndarray], np.ndarray], z: np.ndarray, seconds: float, gap: float = 0.0,
                busy: bool = False) -> Tally:
    """``decode(z)`` called in this process, back to back or ``gap`` seconds apart, sleeping or (``busy``)
    spinning in between: a worker at concurrency 1 waits about 3 ms between requests."""
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


def alternate(sides: dict[str, Callable[[float], Tally]], seconds: float, rounds: int) -> dict[str, Tally]:
    """Each side for ``seconds`` in all, in ``rounds`` slices taken in turn, every other round in reverse order."""
    tallies = {side: Tally() for side in sides}
    for r in range(rounds):
        for side in (list(sides) if r % 2 else list(sides)[::-1]):
            tallies[side].add(sides[side](seconds / rounds))
    return tallies


def in_process_decoder(artifact_dir: Path, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """The decoder the CPU workers serve, loaded here with ``threads`` threads and warmed; and the latent size."""
    latent_dim = Manifest.read(artifact_dir).shapes.latent_dim
    decode = backends.load(artifact_dir / artifacts.DECODERS[DECODER["cpu"][0]], threads=threads)
    decode(np.zeros((IN_PROCESS_BATCH, latent_dim), np.float32))
    return decode, latent_dim


@contextlib.contextmanager
def bench_server(artifact_dir: Path, references: tuple[str, ...], served: dict[str, ModelSpec] | None = None
                 ) -> Iterator[tuple[TorchServe, Callable]]:
    """A TorchServe with the ``served`` models (default: every route) and the named reference handlers, and
    ``serve(model, body, concurrency) -> (seconds -> Tally)``. Its archives are built here from ``artifact_dir``
    and the current code."""
    with tempfile.TemporaryDirectory() as tmp:
        models = (MODELS if served is None else served) | {name: REFERENCE_MODELS[name] for name in references}
        archive.build_store(artifact_dir.parent, Path(tmp), models)
        config = ServerConfig(model_store=Path(tmp), models=tuple(models)).with_free_ports()
        with TorchServe(config) as server:
            def serve(model: str, body: dict, concurrency: int) -> Callable[[float], Tally]:
                return lambda s: load(config.host, config.inference_port, model, body, concurrency, s)

            yield server, serve


def images_per_request(server: TorchServe, model: str, body: dict) -> int:
    """How many images (encode: encodings) one npy answer to ``body`` holds: its leading dimensions."""
    conn = http.client.HTTPConnection(server.config.host, server.config.inference_port, timeout=60)
    try:
        conn.request("POST", f"{PATH_PREFIX}{model}", json.dumps(body).encode(), {"Content-Type": "application/json"})
        array = np.load(io.BytesIO(conn.getresponse().read()))
    finally:
        conn.close()
    return int(np.prod(array.shape[:-2]))


def run(artifact_dir: Path, seconds: float, concurrencies: list[int], rounds: int = 4,
        scenarios: list[str] | None = None) -> dict:
    """Every scenario at every concurrency against echo (and, for batches of 64, the in-process decoder)."""
    threads = worker_threads(MODELS["sample"].threads, STORE_WORKERS) * MODELS["sample"].workers
    decode, latent_dim = in_process_decoder(artifact_dir, threads)
    z = np.random.default_rng(0).standard_normal((IN_PROCESS_BATCH, latent_dim)).astype(np.float32)
    rows = []
    with bench_server(artifact_dir, ("echo",)) as (server, serve):
        for concurrency in concurrencies:  # warm-up: every model and the JVM's code paths at each load
            for model, body in [*SCENARIOS.values(), ("echo", ECHO_BODY)]:
                serve(model, body, concurrency)(0.5)
        images_of = {name: images_per_request(server, *SCENARIOS[name]) for name in scenarios or SCENARIOS}
        for concurrency in concurrencies:
            for scenario in scenarios or SCENARIOS:
                (model, body), images = SCENARIOS[scenario], images_of[scenario]
                sides = {"scenario": serve(model, body, concurrency), "echo": serve("echo", ECHO_BODY, concurrency)}
                if images == IN_PROCESS_BATCH:
                    sides["in_process"] = lambda s: decode_loop(decode, z, s)
                tallies = alternate(sides, seconds, rounds)
                result, echo = tallies["scenario"].summary(), tallies["echo"].summary()
                row = {"scenario": scenario, "concurrency": concurrency, **result,
                       "images_per_s": result["requests_per_s"] * images, "echo_p50_ms": echo["p50_ms"],
                       "p50_vs_echo": result["p50_ms"] / echo["p50_ms"]}
                if "in_process" in tallies:
                    rate = tallies["in_process"].summary()["requests_per_s"] * IN_PROCESS_BATCH
                    row |= {"in_process_images_per_s": rate, "images_vs_in_process": row["images_per_s"] / rate}
                rows.append(row)
    return {"backend": DECODER["cpu"][0], "latent_dim": latent_dim, "in_process_threads": threads,
            "sample_workers": MODELS["sample"].workers, "seconds_per_side": seconds, "rounds": rounds, "rows": rows}


def markdown(report: dict) -> str:
    """The table and the targets line."""
    lines = [f"Backend {report['backend']} (latent size {report['latent_dim']}), {report['sample_workers']} sample "
             f"workers; {report['seconds_per_side']:g} s per side of each row in {report['rounds']} alternating "
             f"slices. In-process: the decoder at batch 64 in this process with {report['in_process_threads']} "
             "thread(s), the threads of all sample workers.", "",
             "| scenario | concurrency | p50 (ms) | p99 (ms) | req/s | images/s | errors | echo p50 (ms) "
             "| p50 / echo p50 | in-process images/s | images/s / in-process |", "| --- " * 11 + "|"]
    targets = []
    for r in report["rows"]:
        in_process = (f"{r['in_process_images_per_s']:.0f} | {r['images_vs_in_process']:.0%}"
                      if "in_process_images_per_s" in r else " | ")
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['requests_per_s']:.0f} | {r['images_per_s']:.0f} | {r['errors']} | {r['echo_p50_ms']:.2f} | "
                     f"{r['p50_vs_echo']:.2f}x | {in_process} |")
        if r["scenario"] == "sample n=1" and r["concurrency"] == 1:
            targets.append(f"sample n=1 p50 at concurrency 1 is {r['p50_vs_echo']:.2f}x the echo floor "
                           "(target <= 1.3x)")
        if r["scenario"] == "sample n=64" and r["concurrency"] > 1:
            targets.append(f"sample n=64 at concurrency {r['concurrency']} serves {r['images_vs_in_process']:.0%} "
                           "of the in-process rate (target >= 80%)")
    if targets:
        lines += ["", "Targets: " + "; ".join(targets) + "."]
    return "\n".join(lines)


def write(report: dict, text: str, out: Path, name: str) -> None:
    """``out/name.json`` and ``out/name.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(text + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=artifacts.DEFAULT_DIR)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per side of each row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per row")
    parser.add_argument("--scenario", choices=list(SCENARIOS), action="append", help="only these (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/serve-bench"))
    args = parser.parse_args(argv)
    report = run(args.artifacts, args.seconds, args.concurrency, args.rounds, args.scenario)
    text = markdown(report)
    write(report, text, args.out, "serve_bench")
    print(text)


if __name__ == "__main__":
    main()
