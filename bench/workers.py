"""What the serving processes cost: ``python -m bench.workers [--idle 30]``.

TorchServe routes ``/predictions/<model>`` and a worker serves one model, so every route is at least one
Python process; TorchServe's own worker code imports torch whatever the handler uses. This starts a TorchServe
with every route (the served layout) and one with only sample and interpolate, and the KServe host with every
route in one process and in its default count; waits until they are idle, and measures per serving process its
resident memory (RSS), the memory only it holds (USS) and its proportional share (PSS), plus the CPU that the
whole group (JVM or supervisor included) uses while no request comes (``--idle`` seconds). Writes
``OUT/workers.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import psutil

from runtime import artifacts
from serving.kserve.host import KServe
from serving.settings import MODELS, KServeConfig, ServerConfig, TorchServeConfig
from serving.torchserve import archive
from serving.torchserve.host import TorchServe

LAYOUTS = {"every route (served)": tuple(MODELS), "sample and interpolate only": ("sample", "interpolate")}


def measure(server: TorchServe | KServe, idle: float) -> dict:
    """Memory per serving process and idle CPU of the whole group."""
    group = [p for p in psutil.process_iter() if _in_group(p, server.process.pid)]
    workers = [p for p in group if "model_service_worker" in " ".join(p.cmdline())
               or ("serving.kserve.app" in p.cmdline() and p.ppid() == server.process.pid)]
    memory = [p.memory_full_info() for p in workers]
    cpu_before = {p.pid: sum(p.cpu_times()[:2]) for p in group}
    time.sleep(idle)
    cpu_after = {p.pid: sum(p.cpu_times()[:2]) for p in group if p.is_running()}
    idle_cpu = sum(cpu_after[pid] - cpu_before[pid] for pid in cpu_after) / idle
    return {"workers": len(workers), "rss_mb": sum(m.rss for m in memory) / 2**20,
            "uss_mb": sum(m.uss for m in memory) / 2**20, "pss_mb": sum(m.pss for m in memory) / 2**20,
            "uss_per_worker_mb": sum(m.uss for m in memory) / len(memory) / 2**20,
            "idle_cpu_percent": 100 * idle_cpu}


def _in_group(process: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group
    except (ProcessLookupError, psutil.Error):
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=artifacts.DEFAULT_DIR)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    parser.add_argument("--out", type=Path, default=Path("runs/workers"))
    args = parser.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as store:
        archive.build_store(args.artifacts.parent, Path(store))
        for name, models in LAYOUTS.items():
            with TorchServe(ServerConfig(torchserve=TorchServeConfig(model_store=Path(store)),
                                         models=models).with_free_ports()) as server:
                time.sleep(5)  # let start-up work finish
                rows[f"TorchServe, {name}"] = measure(server, args.idle) | {"routes": len(models)}
    for processes in (1, 0):
        config = ServerConfig(server="kserve", export_store=args.artifacts.parent,
                              kserve=KServeConfig(processes=processes))
        with KServe(config.with_free_ports()) as host:
            time.sleep(5)
            rows[f"KServe host, {host.processes} process(es) of every route"] = measure(host, args.idle) | {
                "routes": len(MODELS)}
    lines = [f"Idle for {args.idle:g} s after start-up; memory summed over the worker processes (MB).", "",
             "| layout | routes | processes | RSS | PSS | USS | USS per process | idle CPU (whole group) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {r['routes']} | {r['workers']} | {r['rss_mb']:.0f} | {r['pss_mb']:.0f} | "
              f"{r['uss_mb']:.0f} | {r['uss_per_worker_mb']:.0f} | {r['idle_cpu_percent']:.1f}% |"
              for name, r in rows.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workers.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
