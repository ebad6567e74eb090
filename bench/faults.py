"""How long a worker crash and a stop take on each host, as an operator sees them:
``python -m bench.faults [--rounds 3] [--senders 16] [--out runs/bench]``.

Per host and round: ``python -m serving`` (sample and interpolate, no explorer) on free ports, ``--senders``
keep-alive clients sending sample n=4 (npy) back to back with no retries; then one serving process killed with
SIGKILL (TorchServe: a sample worker; the KServe host: its serving process 0), timed until its replacement serves
(TorchServe's management API lists a new READY worker; the KServe host's supervisor says every process serves),
with the requests that failed meanwhile; then SIGTERM to the launcher, timed until it has exited, with the requests
that failed. Writes ``OUT/faults.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from fmvae_client import Client, ClientError, fetch

from runtime import artifacts
from serving.kserve.supervisor import STATUS_FILE
from serving.settings import ARCHIVE_DIR, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("sample", "interpolate")
BODY = json.dumps({"n": 4, "seed": 1, "format": "npy"}).encode()


class Senders:
    """Clients that send BODY to sample back to back, without retries, until ``stop``; each outcome in order: the
    status, or the name of the transport error."""

    def __init__(self, url: str, count: int) -> None:
        self.outcomes: list[int | str] = []  # a status, "refused" or "reset"
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.send, args=(url,), daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def send(self, url: str) -> None:
        with Client(url, attempts=1) as client:
            while not self.stopping.is_set():
                try:
                    self.outcomes.append(client.send("sample", BODY).status)
                except ClientError as e:  # no answer: refused (a stop's closed listener) or reset
                    self.outcomes.append("refused" if "ConnectError" in str(e) else "reset")
                    time.sleep(0.01)

    def failed_since(self, start: int) -> int:
        return sum(outcome != 200 for outcome in self.outcomes[start:])

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)


def launch(host: str, store: Path, folder: Path, models: tuple[str, ...] = MODELS
           ) -> tuple[subprocess.Popen, ServerConfig]:
    """``python -m serving`` for ``host`` with ``models``, once it says it is ready."""
    config = ServerConfig().with_free_ports()
    ports = config.port_flags()
    cmd = [sys.executable, "-m", "serving", "--server", host, "--model-store", str(store), "--export-store",
           str(artifacts.DEFAULT_DIR.parent), "--models", *models, "--no-explorer", "--log-dir", str(folder / "logs"),
           "--work-dir", str(folder / "work"), *ports]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.startswith("ready:"):
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep the pipe drained
            return process, config
        if line.startswith("error:"):
            break
    process.kill()
    raise RuntimeError(f"{host} did not start: {line.strip()}")


def group_processes(leader: psutil.Process) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name", "pid"]) if _in_group(p, leader.pid)]


def _in_group(process: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group
    except (ProcessLookupError, psutil.Error):
        return False


def sample_workers(management_url: str) -> list[tuple[int, str]]:
    """(pid, status) of TorchServe's sample workers."""
    return [(w["pid"], w["status"]) for d in fetch(f"{management_url}/models/sample") for w in d["workers"]]


def kill_and_time(host: str, launcher: subprocess.Popen, config: ServerConfig, folder: Path) -> float:
    """Kill one serving process with SIGKILL; seconds until its replacement serves."""
    (leader,) = [c for c in psutil.Process(launcher.pid).children()
                 if {"ts.model_server", "serving.kserve.app"} & set(c.cmdline())]
    if host == "torchserve":
        management = f"http://127.0.0.1:{config.torchserve.management_port}"
        victim = sample_workers(management)[0][0]
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        while not (lambda w: len(w) == 2 and victim not in dict(w) and {s for _, s in w} == {"READY"})(
                sample_workers(management)):
            time.sleep(0.02)
        return time.monotonic() - start
    (victim,) = [p for p in group_processes(leader) if p.info["name"] == "kserve-proc-0"]
    status = folder / "work" / STATUS_FILE
    victim.kill()
    start = time.monotonic()
    while True:
        serving = json.loads(status.read_text())
        back = [p for p in group_processes(leader) if p.info["name"] == "kserve-proc-0" and p.pid != victim.pid]
        if back and not serving["replacing"] and serving["serving"] == serving["processes"]:
            return time.monotonic() - start
        time.sleep(0.02)


def round_of(host: str, store: Path, senders: int) -> dict:
    """One round: start, kill a serving process, stop; the times and the failed requests."""
    with tempfile.TemporaryDirectory(prefix="fmvae-faults-") as tmp:
        folder = Path(tmp)
        launcher, config = launch(host, store, folder)
        clients = Senders(f"http://127.0.0.1:{config.inference_port}", senders)
        try:
            time.sleep(2)
            before = len(clients.outcomes)
            replaced = kill_and_time(host, launcher, config, folder)
            time.sleep(1)
            failed_kill = clients.failed_since(before)
            before = len(clients.outcomes)
            start = time.monotonic()
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(timeout=60)
            stopped = time.monotonic() - start
        finally:
            clients.stop()
            if launcher.poll() is None:
                launcher.kill()
        at_stop = clients.outcomes[before:]
        return {"replaced_s": replaced, "failed_on_kill": failed_kill, "stop_s": stopped,
                "reset_on_stop": at_stop.count("reset"), "503_on_stop": at_stop.count(503)}


def table(results: dict[str, list[dict]]) -> str:
    def spread(rounds: list[dict], key: str) -> str:
        values = [r[key] for r in rounds]
        return f"{min(values):.1f}-{max(values):.1f} (median {statistics.median(values):.1f})"

    lines = ["| host | a killed worker replaced in (s) | requests failed at the kill | stop, signal to exit (s) | "
             "requests reset at the stop |", "| --- | --- | --- | --- | --- |"]
    for host, rounds in results.items():
        failed, reset = (", ".join(str(r[key]) for r in rounds) for key in ("failed_on_kill", "reset_on_stop"))
        lines.append(f"| {host} | {spread(rounds, 'replaced_s')} | {failed} | {spread(rounds, 'stop_s')} | {reset} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--hosts", nargs="+", default=["torchserve", "kserve"], choices=("torchserve", "kserve"))
    parser.add_argument("--model-store", type=Path, default=ARCHIVE_DIR, help="TorchServe's archives (make archives)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    results = {}
    for host in args.hosts:
        results[host] = []
        for i in range(args.rounds):
            results[host].append(round_of(host, args.model_store, args.senders))
            print(f"{host} round {i + 1}: {results[host][-1]}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps({"senders": args.senders, "results": results}, indent=1))
    (args.out / "faults.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
