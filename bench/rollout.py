"""A live roll-out timed as an operator sees it: ``python -m bench.rollout EXPORT [--hosts ...] [--clients 16]
[--out runs/bench]``.

Per host: ``python -m serving`` with the routes of the export's latent size (the released export of that size
serving them), ``--clients`` keep-alive clients sending sample (or sample2d) n=1 with no retries; after a few
seconds ``python -m serving rollout EXPORT``, then ``python -m serving rollback``, each timed from its command to
each of its lines (build loaded and probed, switched, old build freed). Reported per step: those times, the p50 of
the clients' answers before, during and after it, the requests answered during it, the failed ones, and the builds
the answers named. Writes ``OUT/rollout.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fmvae_client import Client, ClientError

from bench.faults import launch
from runtime.manifest import Manifest
from serving.routes import ROUTES
from serving.settings import ARCHIVE_DIR

ROOT = Path(__file__).resolve().parent.parent
SETTLE_S = 5.0  # seconds of traffic before and after each step


class Senders:
    """Clients sending ``route`` n=1 back to back without retries: each answer's (end time, seconds, status, build)."""

    def __init__(self, url: str, route: str, count: int) -> None:
        self.answers: list[tuple[float, float, int | str, str]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.send, args=(url, route), daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def send(self, url: str, route: str) -> None:
        body = json.dumps({"n": 1, "format": "npy"}).encode()
        with Client(url, attempts=1) as client:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    answer = client.send(route, body)
                    outcome: tuple[int | str, str] = (answer.status, answer.headers.get("x-model-build", ""))
                except ClientError as e:
                    outcome = (type(e).__name__, "")
                self.answers.append((time.monotonic(), time.monotonic() - started, *outcome))

    def between(self, start: float, end: float) -> list[tuple[float, float, int | str, str]]:
        return [a for a in list(self.answers) if start <= a[0] < end]

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)


def timed(command: list[str]) -> tuple[int, list[tuple[float, str]], float, float]:
    """Run a roll-out command: (exit code, [(seconds since its start, line)], start, end)."""
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.monotonic() - start, line.rstrip()) for line in process.stdout]
    return process.wait(), lines, start, time.monotonic()


def p50_ms(answers: list) -> float | None:
    return round(1e3 * statistics.median(a[1] for a in answers), 2) if answers else None


def step(senders: Senders, work: Path, args: list[str]) -> dict:
    """One roll-out command under the senders' traffic, with its figures."""
    code, lines, start, end = timed([sys.executable, "-m", "serving", *args, "--work-dir", str(work)])
    time.sleep(SETTLE_S)
    during = senders.between(start, end)
    return {"command": " ".join(args[:2]), "exit": code, "lines": [[round(t, 2), line] for t, line in lines],
            "seconds": round(end - start, 2),
            "switched_s": next((round(t, 2) for t, line in lines if "switched" in line), None),
            "p50_before_ms": p50_ms(senders.between(start - SETTLE_S, start)), "p50_during_ms": p50_ms(during),
            "p50_after_ms": p50_ms(senders.between(end, end + SETTLE_S)), "answered_during": len(during),
            "failed_during": sum(a[2] != 200 for a in during), "builds_during": sorted({a[3] for a in during})}


def run(host: str, export: Path, clients: int, store: Path) -> list[dict]:
    """Start ``host``, then roll out ``export`` and roll back under ``clients`` senders."""
    latent_dim = Manifest.read(export).shapes.latent_dim
    released = {route.export for route in ROUTES.values()
                if Manifest.read(ROOT / "model_store" / route.export).shapes.latent_dim == latent_dim}
    models = tuple(name for name, route in ROUTES.items() if route.export in released)
    with tempfile.TemporaryDirectory(prefix="fmvae-rollout-") as tmp:
        launcher, config = launch(host, store, Path(tmp), models)
        senders = Senders(f"http://127.0.0.1:{config.inference_port}", next(m for m in models if "sample" in m),
                          clients)
        try:
            time.sleep(SETTLE_S)
            return [step(senders, Path(tmp) / "work", ["rollout", str(export.resolve())]),
                    step(senders, Path(tmp) / "work", ["rollback"])]
        finally:
            senders.stop()
            launcher.terminate()
            launcher.wait(timeout=60)


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| host | step | switched after (s) | done after (s) | p50 before / during / after (ms) | answered during "
             "| failed | builds answering during |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for host, steps in results.items():
        for s in steps:
            lines.append(f"| {host} | {s['command']} | {s['switched_s']} | {s['seconds']} | {s['p50_before_ms']} / "
                         f"{s['p50_during_ms']} / {s['p50_after_ms']} | {s['answered_during']} | {s['failed_during']}"
                         f" | {', '.join(s['builds_during'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path, help="the export to roll out (a folder `make export` wrote)")
    parser.add_argument("--hosts", nargs="+", default=["torchserve", "kserve"], choices=("torchserve", "kserve"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--model-store", type=Path, default=ARCHIVE_DIR, help="TorchServe's archives (make archives)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    results = {host: run(host, args.export, args.clients, args.model_store) for host in args.hosts}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rollout.json").write_text(json.dumps(results, indent=1))
    (args.out / "rollout.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
