"""Serving benchmark: ``python -m bench.serving [--seconds S] [--out DIR]`` (``make serve-bench``).

Starts both hosts side by side, TorchServe with every route and a trivial ``echo`` handler (archives built from
``model_store/export`` and the current handler code) and the KServe host (its default process count), plus the
two peers of ``bench/peers.py`` (the same decoder in about 40 lines of KServe's ModelServer, and in a bare
starlette app, each with an echo route). Then it measures p50/p99 latency and throughput for sample n=1, sample
n=64, interpolate steps=10 and each other route's OpenAPI example (format npy) at 1 and 8 clients on both hosts;
the target rows also on each framework's echo floor, sample n=1 on both peers, and sample n=64 against the served
decoder decoding batches of 64 in this process with the threads of all TorchServe sample workers (the in-process
rate); and the Open Inference Protocol's rows (``V2_ROWS``): the KServe host's ``/v2/models/decode/infer`` with
binary tensors, as tritonclient sends them, beside ``/predictions/decode`` npy of the same latents. All sides of a
row are measured in alternating slices (each side in turn, then the reverse order), so that a machine whose speed
drifts during the run shifts them alike. Clients run on the same machine and share its CPUs.

Targets: TorchServe's sample n=1 p50 at 1 client <= 1.3x its echo floor; the KServe host's at most the 40-line
KServe app's, and at 8 clients >= 1.3x its req/s; every other route's KServe p50 at most half its TorchServe p50;
sample n=64 at 8 clients >= 80% of the in-process rate; v2 decode n=1 p50 at 1 client <= 1.2x /predictions/decode
npy's. ``python -m bench.serving_breakdown`` measures why
(docs/serving-performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import psutil
from fmvae_client import Client

from bench.peers import PATHS as PEERS
from handlers.device import worker_threads
from handlers.schema import PATH_PREFIX
from runtime import artifacts, backends
from runtime.manifest import Manifest
from serving.kserve.host import KServe
from serving.ray.host import RayHost, replicas
from serving.routes import ROUTES, example
from serving.settings import (
    DECODER,
    MODELS,
    STORE_WORKERS,
    KServeConfig,
    ModelSpec,
    RayConfig,
    ServerConfig,
    TorchServeConfig,
)
from serving.torchserve import archive
from serving.torchserve.host import TorchServe
from serving.watchdog import members

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
# name -> (route, latents): v2 binary tensors beside /predictions npy of the same latents (zeros, as the example's)
V2_ROWS = {"decode n=1 v2": ("decode", 1)}
V2_PATH = "/v2/models/{model}/infer"
# name -> (route, body): the Ray host (its defaults: a local cluster, autoscaling replicas) beside the KServe host
RAY_ROWS = {"sample n=1 ray": TARGET_ROWS["sample n=1"]}
RAY_WARMUP_S = 20.0  # load before a row of more than one client: the autoscaler adds a replica (it starts in ~5 s)
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


def load(host: str, port: int, model: str, body: dict | tuple[bytes, dict[str, str]], concurrency: int,
         seconds: float, path: str = PATH_PREFIX + "{model}") -> Tally:
    """Closed-loop load: ``concurrency`` clients with keep-alive connections, each sending ``body`` (JSON, or a
    payload and its headers) back to back to ``path`` (``{model}`` filled in). The measuring instrument, the same
    for every side: a bare ``http.client`` loop with no retries, not the client package (whose retries and decoding
    would be timed too)."""
    payload, headers = body if isinstance(body, tuple) else (json.dumps(body).encode(),
                                                             {"Content-Type": "application/json"})
    tally = Tally()
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        mine = Tally()
        while time.perf_counter() < stop:
            start = time.perf_counter()
            conn.request("POST", path.format(model=model), payload, headers)
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


def ray_parts(host: RayHost) -> dict[int, str]:
    """The Ray host's processes by part: ``front`` (its KServe processes), ``replica`` (Serve's replicas),
    ``controller`` (Serve's controller) and ``ray`` (the rest of the cluster: GCS, raylets, the owner, idle
    workers), found by session."""
    fronts, owner = host.sessions
    parts = {pid: "front" for pid in members(fronts)}
    for pid in members(owner):
        with contextlib.suppress(psutil.Error):
            title = " ".join(psutil.Process(pid).cmdline())
            parts[pid] = ("replica" if title.startswith("ray::ServeReplica") else
                          "controller" if title.startswith("ray::ServeController") else "ray")
    return parts


def cpu_per_request(host: RayHost, send: Callable[[float], Tally], seconds: float) -> dict[str, float]:
    """CPU milliseconds per answered request that each part of the Ray host spends while ``send`` loads it for
    ``seconds`` (user and system time of its processes, from /proc)."""
    parts = ray_parts(host)

    def spent() -> dict[int, float]:
        found = {}
        for pid in parts:
            with contextlib.suppress(psutil.Error):
                found[pid] = sum(psutil.Process(pid).cpu_times()[:2])
        return found

    before = spent()
    answered = send(seconds).summary()["requests_per_s"] * seconds
    after = spent()
    cost: dict[str, float] = {}
    for pid in before.keys() & after.keys():
        cost[parts[pid]] = cost.get(parts[pid], 0.0) + (after[pid] - before[pid]) * 1000 / answered
    return cost


def v2_request(z: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A v2 infer request of latents ``z`` as tritonclient sends one: the JSON header, then the FP32 input's bytes;
    the outputs asked for in binary."""
    z = np.ascontiguousarray(z, "<f4")
    head = json.dumps({"inputs": [{"name": "latents", "datatype": "FP32", "shape": list(z.shape),
                                   "parameters": {"binary_data_size": z.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + z.tobytes(), {"Content-Type": "application/octet-stream",
                                "Inference-Header-Content-Length": str(len(head))}


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
    decode = backends.load(artifacts.DECODERS[DECODER["cpu"][0]], artifact_dir, threads=threads)
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
        config = ServerConfig(torchserve=TorchServeConfig(model_store=Path(tmp)),
                              models=tuple(models)).with_free_ports()
        with TorchServe(config) as server:
            def serve(model: str, body: dict, concurrency: int) -> Callable[[float], Tally]:
                return lambda s: load(config.host, config.inference_port, model, body, concurrency, s)

            yield server, serve


@contextlib.contextmanager
def bench_kserve(artifact_dir: Path, processes: int = 0, batch: int = 0, models: tuple[str, ...] = tuple(MODELS)
                 ) -> Iterator[tuple[KServe, Callable]]:
    """The KServe host with the ``models`` routes of ``artifact_dir``'s store (``processes``: 0, its default of one
    per CPU; ``batch``: requests per inference call, 0 each route's batch size), and ``serve(model, body,
    concurrency) -> (seconds -> Tally)``."""
    config = ServerConfig(server="kserve", export_store=artifact_dir.parent,
                          kserve=KServeConfig(processes=processes, batch_size=batch), models=models).with_free_ports()
    with KServe(config) as host:
        def serve(model: str, body: dict, concurrency: int) -> Callable[[float], Tally]:
            return lambda s: load("127.0.0.1", config.inference_port, model, body, concurrency, s)

        yield host, serve


@contextlib.contextmanager
def peer(kind: str, artifact_dir: Path) -> Iterator[Callable]:
    """A ``bench/peers.py`` server on a free port, and its ``serve(model, body, concurrency)``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "bench.peers", kind, "--port", str(port), "--artifacts",
                                str(artifact_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()  # it listens once it is ready
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {kind} peer did not start") from None
                time.sleep(0.2)

        def serve(model: str, body: dict, concurrency: int) -> Callable[[float], Tally]:
            return lambda s: load("127.0.0.1", port, model, body, concurrency, s, PEERS[kind])

        yield serve
    finally:
        process.terminate()
        process.wait(30)


def images_per_request(server: TorchServe, model: str, body: dict) -> int:
    """How many images (encode: encodings) one npy answer to ``body`` holds: its leading dimensions."""
    with Client(server.url) as client:
        array = client.call(model, body).value()
    return int(np.prod(array.shape[:-2]))


def run(artifact_dir: Path, seconds: float, concurrencies: list[int], rounds: int = 4,
        scenarios: list[str] | None = None, kserve_batch: int = 0, ray: RayConfig | None = None,
        ray_processes: int = 0) -> dict:
    """Every scenario at every concurrency on both hosts, side by side; the target rows beside each framework's
    echo floor and the two peers, batches of 64 beside the in-process decoder, the v2 rows on the KServe host, and
    the Ray host (``ray``, ``ray_processes`` fronts; 0: its default) beside the KServe host."""
    threads = worker_threads(MODELS["sample"].threads, STORE_WORKERS) * MODELS["sample"].workers
    decode, latent_dim = in_process_decoder(artifact_dir, threads)
    z = np.random.default_rng(0).standard_normal((IN_PROCESS_BATCH, latent_dim)).astype(np.float32)
    rows, v2_rows = [], []
    chosen = scenarios or [*SCENARIOS, *V2_ROWS, *RAY_ROWS]
    main = [scenario for scenario in chosen if scenario in SCENARIOS]
    with contextlib.ExitStack() as stack:
        host, kserve = stack.enter_context(bench_kserve(artifact_dir, batch=kserve_batch))
        if main:  # TorchServe and the peers serve the main rows only
            server, torchserve = stack.enter_context(bench_server(artifact_dir, ("echo",)))
            peers = {kind: stack.enter_context(peer(kind, artifact_dir)) for kind in PEERS}
            for concurrency in concurrencies:  # warm-up: every model and every server's code paths at each load
                for model, body in SCENARIOS.values():
                    torchserve(model, body, concurrency)(0.5)
                    kserve(model, body, concurrency)(0.5)
                torchserve("echo", ECHO_BODY, concurrency)(0.5)
                for serve in peers.values():
                    serve("sample", ECHO_BODY, concurrency)(0.5)
            images_of = {name: images_per_request(server, *SCENARIOS[name]) for name in main}
        for concurrency in concurrencies if main else ():
            for scenario in main:
                (model, body), images = SCENARIOS[scenario], images_of[scenario]
                sides = {"torchserve": torchserve(model, body, concurrency), "kserve": kserve(model, body, concurrency)}
                if scenario in TARGET_ROWS:
                    sides["torchserve_echo"] = torchserve("echo", ECHO_BODY, concurrency)
                    sides |= {f"{kind}_echo": serve("echo", ECHO_BODY, concurrency) for kind, serve in peers.items()}
                if scenario == "sample n=1":
                    sides |= {f"{kind}_peer": serve("sample", body, concurrency) for kind, serve in peers.items()}
                if images == IN_PROCESS_BATCH:
                    sides["in_process"] = lambda s: decode_loop(decode, z, s)
                tallies = {side: tally.summary() for side, tally in alternate(sides, seconds, rounds).items()}
                row = {"scenario": scenario, "concurrency": concurrency, "images": images, **tallies}
                if "in_process" in tallies:
                    row["in_process_images_per_s"] = tallies["in_process"]["requests_per_s"] * IN_PROCESS_BATCH
                rows.append(row)
        for concurrency in concurrencies:
            for scenario in [scenario for scenario in chosen if scenario in V2_ROWS]:
                route, n = V2_ROWS[scenario]
                latents = np.zeros((n, latent_dim), np.float32)
                v2 = functools.partial(load, "127.0.0.1", host.config.inference_port, route, v2_request(latents),
                                       concurrency, path=V2_PATH)
                v2(0.5)  # warm-up
                sides = {"v2": v2, "npy": kserve(route, {"latents": latents.tolist(), "format": "npy"}, concurrency)}
                tallies = {side: tally.summary() for side, tally in alternate(sides, seconds, rounds).items()}
                v2_rows.append({"scenario": scenario, "route": route, "concurrency": concurrency, **tallies})
        ray_rows, ray_config = [], None
        if ray_chosen := [scenario for scenario in chosen if scenario in RAY_ROWS]:
            ray_config = ServerConfig(server="ray", export_store=artifact_dir.parent, ray=ray or RayConfig(),
                                      kserve=KServeConfig(processes=ray_processes),
                                      models=tuple(dict.fromkeys(RAY_ROWS[s][0] for s in ray_chosen))
                                      ).with_free_ports()
            ray_host = stack.enter_context(RayHost(ray_config))
            for concurrency in concurrencies:
                for scenario in ray_chosen:
                    route, body = RAY_ROWS[scenario]
                    ray = functools.partial(load, "127.0.0.1", ray_config.inference_port, route, body, concurrency)
                    ray(RAY_WARMUP_S if concurrency > 1 else 1.0)
                    sides = {"ray": ray, "kserve": kserve(route, body, concurrency)}
                    tallies = {side: tally.summary() for side, tally in alternate(sides, seconds, rounds).items()}
                    ray_rows.append({"scenario": scenario, "route": route, "concurrency": concurrency,
                                     "replicas": replicas(ray_host.owner_state()).get(route, {}),
                                     "cpu_ms_per_request": cpu_per_request(ray_host, ray, seconds / 2), **tallies})
    return {"backend": DECODER["cpu"][0], "latent_dim": latent_dim, "in_process_threads": threads,
            "sample_workers": MODELS["sample"].workers, "kserve_processes": host.processes,
            "kserve_batch": kserve_batch or "each route's batch size",
            "seconds_per_side": seconds, "rounds": rounds, "rows": rows, "v2_rows": v2_rows,
            "ray": ray_config and {**asdict(ray_config.ray), "nodes": ray_host.nodes, "fronts": ray_host.processes,
                                   "max_replicas": ray_host.max_replicas},
            "ray_rows": ray_rows}


def markdown(report: dict) -> str:
    """The side-by-side table, the floors and peers of the target rows, and the targets."""
    lines = [f"Backend {report['backend']} (latent size {report['latent_dim']}); TorchServe with "
             f"{report['sample_workers']} sample workers and one per other route, KServe host with "
             f"{report['kserve_processes']} processes of every route (batch: {report['kserve_batch']}); "
             f"{report['seconds_per_side']:g} s per side of "
             f"each row in {report['rounds']} alternating slices; clients on the same machine.", "",
             "| scenario | clients | TorchServe p50 (ms) | TorchServe p99 | TorchServe req/s | KServe p50 (ms) "
             "| KServe p99 | KServe req/s | KServe p50 / TorchServe p50 | errors |", "| --- " * 10 + "|"]
    for r in report["rows"]:
        ts, ks = r["torchserve"], r["kserve"]
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {ts['p50_ms']:.2f} | {ts['p99_ms']:.2f} | "
                     f"{ts['requests_per_s']:.0f} | {ks['p50_ms']:.2f} | {ks['p99_ms']:.2f} | "
                     f"{ks['requests_per_s']:.0f} | {ks['p50_ms'] / ts['p50_ms']:.2f}x | "
                     f"{ts['errors'] + ks['errors']} |")
    lines += ["", "Floors and peers, measured in the same slices as the target rows:", "",
              "| scenario | clients | side | p50 (ms) | p99 (ms) | req/s | images/s |", "| --- " * 7 + "|"]
    if not report["rows"]:  # only v2 or Ray rows asked for
        lines = [lines[0]]
    targets = []
    for r in report["rows"]:
        for side in [k for k in r if k.endswith(("_echo", "_peer", "in_process"))]:
            if side == "in_process_images_per_s":
                continue
            t = r[side]
            rate = t["requests_per_s"] * (IN_PROCESS_BATCH if side == "in_process" else r["images"])
            lines.append(f"| {r['scenario']} | {r['concurrency']} | {side} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | "
                         f"{t['requests_per_s']:.0f} | {rate:.0f} |")
        if r["scenario"] == "sample n=1" and r["concurrency"] == 1:
            ts_floor = r["torchserve"]["p50_ms"] / r["torchserve_echo"]["p50_ms"]
            ks_peer = r["kserve"]["p50_ms"] / r["kserve_peer"]["p50_ms"]
            targets.append(f"sample n=1 p50 at 1 client: TorchServe {ts_floor:.2f}x its echo floor (target 1.3x), "
                           f"KServe host {ks_peer:.2f}x the 40-line KServe app (target <= 1x)")
        if r["scenario"] == "sample n=1" and r["concurrency"] > 1:
            targets.append(f"at {r['concurrency']} clients the KServe host serves "
                           f"{r['kserve']['requests_per_s'] / r['kserve_peer']['requests_per_s']:.2f}x the 40-line "
                           "app's req/s (target >= 1.3x)")
        if r["scenario"] == "sample n=64" and r["concurrency"] > 1:
            for side in ("torchserve", "kserve"):
                share = r[side]["requests_per_s"] * r["images"] / r["in_process_images_per_s"]
                targets.append(f"sample n=64 at {r['concurrency']} clients: {side} {share:.0%} of the in-process rate")
    slower = [f"{r['scenario']} at {r['concurrency']}" for r in report["rows"] if r["scenario"] != "sample n=1"
              and r["kserve"]["p50_ms"] > 0.5 * r["torchserve"]["p50_ms"]]
    if report["rows"]:
        targets.append("every other route's KServe p50 at most half its TorchServe p50: "
                       + ("met" if not slower else "not met for " + ", ".join(slower)))
    if report["v2_rows"]:
        lines += ["", "The Open Inference Protocol on the KServe host: v2 infer with binary tensors (tritonclient's "
                  "wire format) beside /predictions npy of the same latents, measured in the same slices:", "",
                  "| scenario | clients | v2 p50 (ms) | v2 p99 | v2 req/s | npy p50 (ms) | npy p99 | npy req/s "
                  "| v2 p50 / npy p50 | errors |", "| --- " * 10 + "|"]
    for r in report["v2_rows"]:
        v2, npy = r["v2"], r["npy"]
        ratio = v2["p50_ms"] / npy["p50_ms"]
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {v2['p50_ms']:.2f} | {v2['p99_ms']:.2f} | "
                     f"{v2['requests_per_s']:.0f} | {npy['p50_ms']:.2f} | {npy['p99_ms']:.2f} | "
                     f"{npy['requests_per_s']:.0f} | {ratio:.2f}x | {v2['errors'] + npy['errors']} |")
        if r["concurrency"] == 1:
            targets.append(f"{r['scenario']} p50 at 1 client: {ratio:.2f}x /predictions/{r['route']} npy (target "
                           "<= 1.2x)")
    if report["ray_rows"]:
        ray = report["ray"]
        lines += ["", f"The Ray host ({ray['fronts']} front processes, a local cluster of {ray['nodes']} worker nodes, "
                  f"{ray['min_replicas']}-{ray['max_replicas']} replicas per route, {ray['calls_per_replica']} calls "
                  "in flight per replica) beside the KServe host, measured in the same slices:", "",
                  "| scenario | clients | Ray p50 (ms) | Ray p99 | Ray req/s | KServe p50 (ms) | KServe p99 "
                  "| KServe req/s | Ray req/s / KServe req/s | replicas after | errors |", "| --- " * 11 + "|"]
    parts: list[str] = []
    for r in report["ray_rows"]:
        ray, ks = r["ray"], r["kserve"]
        share = ray["requests_per_s"] / ks["requests_per_s"]
        running = ", ".join(f"{n} {state.lower()}" for state, n in r["replicas"].items()) or "?"
        lines.append(f"| {r['scenario']} | {r['concurrency']} | {ray['p50_ms']:.2f} | {ray['p99_ms']:.2f} | "
                     f"{ray['requests_per_s']:.0f} | {ks['p50_ms']:.2f} | {ks['p99_ms']:.2f} | "
                     f"{ks['requests_per_s']:.0f} | {share:.2f}x | {running} | {ray['errors'] + ks['errors']} |")
        cost = r["cpu_ms_per_request"]
        parts.append(f"{r['scenario']} at {r['concurrency']}: " + ", ".join(
            f"{part} {ms:.2f}" for part, ms in sorted(cost.items(), key=lambda item: -item[1]))
            + f" (in all {sum(cost.values()):.2f})")
        if r["concurrency"] == 1:
            targets.append(f"Ray host {r['scenario'].removesuffix(' ray')} p50 at 1 client: {ray['p50_ms']:.2f} ms "
                           "(target <= 3 ms)")
        else:
            targets.append(f"Ray host req/s at {r['concurrency']} clients: {share:.2f}x the KServe host's "
                           "(target >= 0.5x)")
    if parts:
        lines += ["", "CPU ms per request of each part of the Ray host (its processes' user and system time over a "
                  "further half-row of its load): " + "; ".join(parts) + "."]
    return "\n".join([*lines, "", "Targets: " + "; ".join(targets) + "."])


def write(report: dict, text: str, out: Path, name: str) -> None:
    """``out/name.json`` and ``out/name.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(text + "\n")


def ray_setting(text: str) -> tuple[str, str]:
    """``calls_per_replica=1`` -> ("calls_per_replica", "1"), a field of RayConfig."""
    key, _, value = text.partition("=")
    if key not in {f.name for f in fields(RayConfig)} or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: not FIELD=VALUE of a RayConfig field "
                                         f"({', '.join(f.name for f in fields(RayConfig))})")
    return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=artifacts.DEFAULT_DIR)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per side of each row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per row")
    parser.add_argument("--scenario", choices=[*SCENARIOS, *V2_ROWS, *RAY_ROWS], action="append",
                        help="only these (repeatable)")
    parser.add_argument("--kserve-batch", type=int, default=0,
                        help="the KServe host's requests per inference call (default 0: each route's; 1: none)")
    parser.add_argument("--ray", type=ray_setting, action="append", default=[], metavar="FIELD=VALUE",
                        help="a RayConfig field for the Ray host's rows (repeatable), e.g. calls_per_replica=1, "
                             "max_replicas=2, nodes=2")
    parser.add_argument("--ray-processes", type=int, default=0, help="the Ray host's fronts (0: its default)")
    parser.add_argument("--out", type=Path, default=Path("runs/serve-bench"))
    args = parser.parse_args(argv)
    ray = RayConfig(**{key: type(getattr(RayConfig(), key))(value) for key, value in args.ray})
    report = run(args.artifacts, args.seconds, args.concurrency, args.rounds, args.scenario, args.kserve_batch, ray,
                 args.ray_processes)
    text = markdown(report)
    write(report, text, args.out, "serve_bench")
    print(text)


if __name__ == "__main__":
    main()
