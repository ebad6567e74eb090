"""The users each host holds, side by side in one run: ``python -m loadtest.capacity`` (``make capacity``).

For each host (``--hosts``: TorchServe with the archives of ``make archives``, the KServe host with the export
folders), a fresh server on free ports, then the all-route Locust mix of ``make loadtest`` at ``--start`` users, and
``--step`` more each round, until the gate breaks (a route's p50 over ``--p50`` ms, or a request failed after its
retries) or ``--max`` users. Each round, Locust spawns the users (``--spawn-rate`` a second), resets its statistics
once all run, and measures for ``--duration`` seconds; beside it, the CPU of the server's processes (cores, over
the measured window), their memory (PSS, summed, mid-window) and Locust's own CPU: it runs on the same machine, and
one Locust process saturates near one core. A host holds the most users at which its gate held.

Writes ``capacity.json``, ``capacity.md`` (the table) and ``capacity.png`` (the figure) to ``--report``, and each
round's Locust CSV and HTML report and each server's logs under ``--out``; prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from loadtest.__main__ import endpoints, locust_command, locust_stats, targets
from runtime.cpus import available_cpus
from serving.host import host_class
from serving.settings import ARCHIVE_DIR, HOSTS, ServerConfig, TorchServeConfig
from serving.watchdog import members

SAMPLE_S = 1.0  # how often the CPU counters are read


@dataclass
class Served:
    """A server under test: its URL and how to list its processes now."""

    url: str
    processes: Callable[[], list[psutil.Process]]


def processes(sessions: list[int]) -> list[psutil.Process]:
    """The live processes of a host's sessions (``Host.sessions``: JVM, workers, supervisor, watchdog; the Ray
    host's cluster too)."""
    found = []
    for session in sessions:
        for pid in members(session):
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(pid))
    return found


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds of each process still running, by pid."""
    seconds = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def pss_mb(processes: list[psutil.Process]) -> float:
    """The processes' proportional set size, summed (shared pages counted once), MB."""
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss
    return total / 2**20


def rate(first: dict[int, float], last: dict[int, float], seconds: float) -> float:
    """Cores used between two readings of the same processes (those in both)."""
    return sum(last[pid] - first[pid] for pid in last if pid in first) / seconds if seconds > 0 else float("nan")


def kill_tree(process: psutil.Popen) -> None:
    """Kill ``process`` and its children (Locust's workers), then wait for them."""
    with contextlib.suppress(psutil.Error):  # the process already exited and was reaped: no children to find
        children = process.children(recursive=True)
        for each in (process, *children):
            with contextlib.suppress(psutil.Error):
                each.kill()
        psutil.wait_procs(children, timeout=5)
    process.wait()


def measure(served: Served, locust: psutil.Popen, ramp: float, duration: float
            ) -> tuple[list[tuple[float, dict[int, float], dict[int, float]]], list[float]]:
    """Until Locust exits: (seconds, the server's CPU seconds, Locust's) each SAMPLE_S, and the server's memory
    once, mid-window. Locust and its children are killed if it runs two minutes past its time."""
    started = time.monotonic()
    readings, memory = [], []
    while locust.poll() is None:
        now = time.monotonic() - started
        with contextlib.suppress(psutil.Error):
            readings.append((now, cpu_seconds(served.processes()),
                             cpu_seconds([locust, *locust.children(recursive=True)])))
        if not memory and now >= ramp + duration / 2:
            memory.append(pss_mb(served.processes()))
        if now > ramp + duration + 120:
            kill_tree(locust)
        time.sleep(SAMPLE_S)
    return readings, memory


def round_of(served: Served, users: int, args: argparse.Namespace, gates: dict[str, float], out: Path) -> dict:
    """One round at ``users`` users: Locust's figures per route and the machine's, and whether the gate held."""
    out.mkdir(parents=True, exist_ok=True)
    ramp = users / args.spawn_rate
    command = [*locust_command(served.url, users, args.spawn_rate, ramp + args.duration, out), "--reset-stats"]
    with open(out / "locust.log", "w") as log:
        locust = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            readings, memory = measure(served, locust, ramp, args.duration)
        finally:  # Locust exited, or measure() raised: nothing of it is left running
            kill_tree(locust)
    window = [r for r in readings if r[0] >= ramp] or readings[-1:]
    seconds = window[-1][0] - window[0][0]
    stats = locust_stats(out / "locust_stats.csv")
    rows = endpoints(stats, gates)
    failures = stats.get("Aggregated", {}).get("failures", 0)
    return {"users": users, "requests_per_s": sum(r["requests_per_s"] for r in rows.values()),
            "failures": failures, "retried": sum(r["retried"] for r in rows.values()),
            "p50_ms": {name: r["p50_ms"] for name, r in rows.items()},
            "p99_ms": {name: r["p99_ms"] for name, r in rows.items()},
            "server_cpu_cores": rate(window[0][1], window[-1][1], seconds),
            "server_memory_mb": memory[0] if memory else float("nan"),
            "locust_cpu_cores": rate(window[0][2], window[-1][2], seconds),
            "passed": failures == 0 and all(r["passed"] for r in rows.values())}


def climb(served: Served, args: argparse.Namespace, gates: dict[str, float], out: Path,
          log: Callable[[str], None] = print) -> list[dict]:
    """Rounds from ``args.start`` users up by ``args.step`` until the gate breaks (that round included) or
    ``args.max``."""
    rounds = []
    for users in range(args.start, args.max + 1, args.step):
        result = round_of(served, users, args, gates, out / f"{users}-users")
        rounds.append(result)
        worst = max(result["p50_ms"], key=lambda name: result["p50_ms"][name])
        log(f"  {users} users: {result['requests_per_s']:.0f} req/s, worst p50 {worst} "
            f"{result['p50_ms'][worst]:.0f} ms, {result['failures']} failures, {result['retried']} retried, "
            f"server {result['server_cpu_cores']:.2f} cores, Locust {result['locust_cpu_cores']:.2f} cores: "
            f"{'held' if result['passed'] else 'broken'}")
        if not result["passed"]:
            break
    return rounds


def held(rounds: list[dict]) -> int:
    """The most users at which the gate held (0: not even the first round)."""
    return max((r["users"] for r in rounds if r["passed"]), default=0)


@contextlib.contextmanager
def start(host: str, archives: Path, export_store: Path, logs: Path) -> Iterator[Served]:
    """A fresh server of ``host`` with every route on free ports, its logs in ``logs``."""
    config = ServerConfig(server=host, torchserve=TorchServeConfig(model_store=archives), export_store=export_store,
                          log_dir=logs).with_free_ports()
    with host_class(host)(config) as server:
        yield Served(server.url, lambda: processes(server.sessions))


def table(report: dict) -> str:
    """The rounds of every host: users, req/s, failures, the worst p50 and p99 and which route, CPU, memory."""
    lines = ["| host | users | gate | req/s | failures | retried | worst p50 (ms) | worst p99 (ms) | "
             "server CPU (cores) | server memory (MB) | Locust CPU (cores) |", "| --- " * 11 + "|"]
    for host, result in report["hosts"].items():
        for r in result["rounds"]:
            p50 = max(r["p50_ms"], key=lambda name: r["p50_ms"][name])
            p99 = max(r["p99_ms"], key=lambda name: r["p99_ms"][name])
            lines.append(f"| {host} | {r['users']} | {'held' if r['passed'] else 'broken'} | "
                         f"{r['requests_per_s']:.0f} | {r['failures']} | {r['retried']} | "
                         f"{r['p50_ms'][p50]:.0f} ({p50}) | {r['p99_ms'][p99]:.0f} ({p99}) | "
                         f"{r['server_cpu_cores']:.2f} | {r['server_memory_mb']:.0f} | {r['locust_cpu_cores']:.2f} |")
    lines += ["", "| host | users held | req/s there |", "| --- | --- | --- |"]
    for host, result in report["hosts"].items():
        at = next((r for r in result["rounds"] if r["users"] == result["held"]), None)
        lines.append(f"| {host} | {result['held']} | {at['requests_per_s']:.0f} |" if at else f"| {host} | 0 | |")
    return "\n".join(lines)


def figure(report: dict, path: Path) -> None:
    """Requests/s and the worst route's p50 against users, a line per host, the gate's p50 dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 3.8))
    for host, result in report["hosts"].items():
        users = [r["users"] for r in result["rounds"]]
        line, = throughput.plot(users, [r["requests_per_s"] for r in result["rounds"]], marker="o", label=host)
        latency.plot(users, [max(r["p50_ms"].values()) for r in result["rounds"]], marker="o", color=line.get_color(),
                     label=f"{host} (holds {result['held']})")
    latency.axhline(report["p50_gate_ms"], color="grey", linestyle="--", label="gate")
    throughput.set(xlabel="Locust users", ylabel="requests/s", title="Throughput")
    latency.set(xlabel="Locust users", ylabel="worst route's p50 (ms)", title="Latency")
    for axes in (throughput, latency):
        axes.grid(alpha=0.3)
        axes.legend()
    fig.suptitle(f"All-route mix, {report['machine']}, {report['date']}")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write(report: dict, folder: Path) -> None:
    """capacity.json, capacity.md and capacity.png, each written whole."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("capacity.json", json.dumps(report, indent=2)), ("capacity.md", table(report) + "\n")):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / name)
    figure(report, folder / "capacity.png")


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m loadtest.capacity", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--hosts", nargs="+", choices=list(HOSTS), default=list(HOSTS))
    cli.add_argument("--start", type=int, default=50, help="users in the first round")
    cli.add_argument("--step", type=int, default=25, help="users added each round")
    cli.add_argument("--max", type=int, default=1500, help="the most users tried")
    cli.add_argument("--spawn-rate", type=float, default=25.0, help="users started a second")
    cli.add_argument("--duration", type=float, default=30.0, help="seconds measured each round, after the spawn")
    cli.add_argument("--p50", type=float, default=80.0, help="every route's p50 target (ms)")
    cli.add_argument("--archives", type=Path, default=ARCHIVE_DIR, help="TorchServe's archives (make archives)")
    cli.add_argument("--export-store", type=Path, default=Path("model_store"), help="the KServe host's exports")
    cli.add_argument("--out", type=Path, default=Path("runs/capacity"), help="each round's Locust files")
    cli.add_argument("--report", type=Path, default=Path("docs/capacity"), help="the table and the figure")
    return cli


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.start < 1 or args.step < 1 or args.max < args.start:
        cli.error("--start and --step must be at least 1, and --max at least --start")
    gates = targets([], args.p50)
    stamp = datetime.now(UTC)
    out = args.out / stamp.strftime("%Y%m%d-%H%M%S")
    report = {"command": "python -m loadtest.capacity " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": stamp.strftime("%Y-%m-%d"), "p50_gate_ms": args.p50, "duration_s": args.duration,
              "machine": f"{available_cpus()} CPUs", "hosts": {}}
    for host in args.hosts:
        print(f"{host}: starting a fresh server", flush=True)
        with start(host, args.archives, args.export_store, out / host / "logs") as served:
            rounds = climb(served, args, gates, out / host, log=lambda line: print(line, flush=True))
        report["hosts"][host] = {"held": held(rounds), "rounds": rounds}
        write(report, args.report)  # each host's rounds kept as soon as they are measured
    print(table(report))
    print(f"report: {args.report}/capacity.{{md,json,png}}; Locust's files: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
