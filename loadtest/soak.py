"""Soak test: ``python -m loadtest.soak [--minutes 10] [--clients 8]`` (``make soak``), too long for ``make test``.

Starts a TorchServe with the archives of ``make archives`` (``--server kserve``: the KServe host with the export
folders) and the default log settings (logs in ``OUT/logs``), then runs ``--clients`` keep-alive clients back to
back for ``--minutes``, mixing sample (n 1, 4, 16, 64) and interpolate (seeds, 10 steps) in png, json and npy.
Per minute it records requests, errors, p50 and p99, the workers' resident memory (the handlers' gauge), the JVM's
resident memory (its heap is bounded by ``TorchServeConfig.jvm_heap_mb``; none on the KServe host) and the size of the
log folder. Exits 1 when a request failed, the log folder went over its bound (4 files x (backups + 1) x the size
cap), or the last minute's p50 is over twice the first's.
Writes ``OUT/soak.json`` and ``OUT/soak.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
from fmvae_client import Client, ClientError, fetch
from prometheus_client.parser import text_string_to_metric_families

from serving.host import host_class
from serving.kserve.host import KServe
from serving.settings import ServerConfig, TorchServeConfig
from serving.torchserve.host import TorchServe

BODIES = [("sample", {"n": n, "format": fmt}) for n in (1, 4, 16, 64) for fmt in ("png", "json", "npy")]
BODIES += [("interpolate", {"seeds": [1, 2], "steps": 10, "format": fmt}) for fmt in ("png", "json", "npy")]
LOG_FILES = 4  # ts_log, model_log, access_log (empty with the access log off), torchserve.out


def worker_memory(metrics_url: str) -> float:
    """Resident memory of all workers, bytes (the handlers' gauge)."""
    text = fetch(metrics_url, timeout=10).decode()  # Prometheus' text format, as bytes
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "fmvae_worker_resident_memory_bytes")


def jvm_memory(server: TorchServe | KServe) -> float:
    """Resident memory of TorchServe's JVM, bytes (0 on the KServe host, which has none)."""
    children = psutil.Process(server.process.pid).children()
    return sum(c.memory_info().rss for c in children if c.name() == "java")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def run(config: ServerConfig, minutes: float, clients: int) -> dict:
    """The soak; one row per minute."""
    minute_of: list[tuple[int, float, bool]] = []  # (minute, latency s, failed)
    lock, stop = threading.Lock(), threading.Event()

    def client(seed: int, url: str) -> None:
        """One keep-alive client sending back to back; every answer but a 200 counts as an error (no retries)."""
        rng = random.Random(seed)
        with Client(url, attempts=1) as user:
            while not stop.is_set():
                model, body = rng.choice(BODIES)
                body = body | ({"seed": rng.getrandbits(32)} if model == "sample" else {})
                start = time.monotonic()
                try:
                    failed = user.send(model, json.dumps(body).encode()).status != 200
                except ClientError:
                    failed = True
                with lock:
                    minute_of.append((int((start - started) // 60), time.monotonic() - start, failed))

    with host_class(config.server)(config) as server:
        log_dir, started = server.log_dir, time.monotonic()  # minutes count from ready
        threads = [threading.Thread(target=client, args=(i, server.url), daemon=True) for i in range(clients)]
        rows = []
        try:  # the clients stop even when a measurement raises
            for t in threads:
                t.start()
            for minute in range(int(np.ceil(minutes))):
                time.sleep(max(0.0, started + 60 * min(minute + 1, minutes) - time.monotonic()))
                rows.append({"minute": minute + 1, "worker_memory_mb": worker_memory(server.metrics_url) / 2**20,
                             "jvm_memory_mb": jvm_memory(server) / 2**20,
                             "log_folder_mb": folder_bytes(log_dir) / 2**20})
        finally:
            stop.set()
            for t in threads:
                if t.is_alive():
                    t.join()
    for row in rows:
        done = [(latency, failed) for m, latency, failed in minute_of if m == row["minute"] - 1]
        ms = np.array([latency for latency, _ in done]) * 1e3
        row |= {"requests": len(done), "errors": sum(failed for _, failed in done),
                "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
    bound = LOG_FILES * (config.log_backups + 1) * config.log_max_bytes / 2**20
    return {"clients": clients, "minutes": minutes, "log_bound_mb": bound, "rows": rows,
            "requests": len(minute_of), "errors": sum(failed for *_, failed in minute_of),
            "memory_growth": rows[-1]["worker_memory_mb"] / rows[0]["worker_memory_mb"] - 1,
            "jvm_heap_bound_mb": config.torchserve.jvm_heap_mb,
            "jvm_memory_max_mb": max(row["jvm_memory_mb"] for row in rows),
            "jvm_memory_growth": rows[-1]["jvm_memory_mb"] / rows[0]["jvm_memory_mb"] - 1 if rows[0]["jvm_memory_mb"]
            else 0.0,
            "p50_last_over_first": rows[-1]["p50_ms"] / rows[0]["p50_ms"],
            "log_folder_max_mb": max(row["log_folder_mb"] for row in rows)}


def markdown(report: dict) -> str:
    heap = f"{report['jvm_heap_bound_mb']} MB" if report["jvm_heap_bound_mb"] else "none"
    jvm = (f"; JVM memory at most {report['jvm_memory_max_mb']:.0f} MB ({report['jvm_memory_growth']:+.1%}, heap "
           f"bound {heap})" if report["jvm_memory_max_mb"] else "")  # the KServe host has no JVM
    lines = [f"{report['clients']} clients for {report['minutes']:g} min: {report['requests']:,} requests, "
             f"{report['errors']} errors; worker memory {report['memory_growth']:+.1%} from the first minute to "
             f"the last{jvm}; p50 last / first minute "
             f"{report['p50_last_over_first']:.2f}; log folder at most "
             f"{report['log_folder_max_mb']:.2f} MB (bound {report['log_bound_mb']:.0f} MB).", "",
             "| minute | requests | errors | p50 (ms) | p99 (ms) | worker memory (MB) | JVM memory (MB) | "
             "log folder (MB) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['minute']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['worker_memory_mb']:.0f} | {r['jvm_memory_mb'] and round(r['jvm_memory_mb']) or '-'} | "
              f"{r['log_folder_mb']:.3f} |"
              for r in report["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--server", choices=("torchserve", "kserve"), default=ServerConfig.server, help="the host")
    parser.add_argument("--jvm-heap-mb", type=int, default=TorchServeConfig.jvm_heap_mb,
                        help="the JVM's heap bound (default %(default)d; 0: none, the JVM's default)")
    args = parser.parse_args(argv)
    out = args.out / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(server=args.server, log_dir=out / "logs",
                          torchserve=TorchServeConfig(jvm_heap_mb=args.jvm_heap_mb)).with_free_ports()
    report = run(config, args.minutes, args.clients)
    text = markdown(report)
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "soak.md").write_text(text + "\n")
    print(text)
    passed = (report["errors"] == 0 and report["log_folder_max_mb"] <= report["log_bound_mb"]
              and report["p50_last_over_first"] <= 2)
    print(f"{'PASS' if passed else 'FAIL'}: report {out / 'soak.md'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
