"""Headless load test with p50 gates: ``python -m loadtest`` (``make loadtest``).

Runs ``loadtest/locustfile.py`` with Locust against ``--host`` (default: the local server; when nothing answers
there, a TorchServe with the archives of ``make archives`` is started for the run and stopped afterwards).
Writes Locust's CSV statistics and HTML report to ``--out``, prints p50/p95/p99, req/s, failures and retried
answers (503/507, retried by the users as every client should: client/fmvae_client/retry.py) per endpoint next to the
server-side p50 (handler-time histogram quantile from a Prometheus scraping the run), and
exits 1 when an endpoint's p50 is over its target or any request failed. Settings come from flags or
LOADTEST_* variables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from fmvae_client import ClientError, request

from loadtest.mix import RETRIED, mix
from monitoring.prometheus import Prometheus
from serving.settings import ServerConfig, TorchServeConfig
from serving.torchserve.host import TorchServe

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_HOST = f"http://{ServerConfig.host}:{ServerConfig.inference_port}"


def answers(host: str) -> bool:
    """Whether a TorchServe answers /ping at ``host``."""
    try:
        return request("GET", f"{host}/ping", timeout=2).status == 200
    except ClientError:
        return False


def targets(specs: list[str], default_ms: float) -> dict[str, float]:
    """p50 targets in ms per endpoint from ``["sample=80", ...]``; unnamed endpoints get ``default_ms``."""
    result = dict.fromkeys(mix(), default_ms)
    for spec in specs:
        name, _, value = spec.partition("=")
        if name not in result or not value:
            raise SystemExit(f"error: --p50 expects ENDPOINT=MS with ENDPOINT in {', '.join(result)}, got {spec!r}")
        result[name] = float(value)
    return result


def locust_stats(csv_path: Path) -> dict[str, dict]:
    """Per-request-name rows of Locust's ``*_stats.csv``: count, failures, p50/p95/p99 (ms), req/s."""
    rows = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            rows[row["Name"]] = {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                                 "p50_ms": float(row["50%"] or "nan"), "p95_ms": float(row["95%"] or "nan"),
                                 "p99_ms": float(row["99%"] or "nan"), "requests_per_s": float(row["Requests/s"])}
    return rows


def server_p50(prometheus: Prometheus, seconds: float) -> dict[str, float]:
    """Server-side p50 (ms) per endpoint over the run: histogram_quantile of the handler-time histogram."""
    window = f"{max(int(seconds), 5)}s"
    expr = f"histogram_quantile(0.5, sum by (le, model) (increase(fmvae_request_duration_seconds_bucket[{window}])))"
    return {r["metric"]["model"]: float(r["value"][1]) * 1e3 for r in prometheus.query(expr)}


def locust_command(host: str, users: int, spawn_rate: float, seconds: float, out: Path) -> list[str]:
    """Locust, headless, running the locustfile's mix against ``host``; CSV statistics and the HTML report in
    ``out``."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
            "-u", str(users), "-r", str(spawn_rate), "-t", f"{seconds:.0f}s", "--csv", str(out / "locust"),
            "--html", str(out / "report.html"), "--only-summary"]


def endpoints(stats: dict[str, dict], gates: dict[str, float], server: dict[str, float] | None = None) -> dict:
    """Per endpoint of the mix: Locust's row, its retried answers, the server-side p50 and whether its gate held
    (requests answered, p50 at most its target)."""
    rows = {}
    for name in gates:
        row = stats.get(name, {"requests": 0, "failures": 0, "p50_ms": float("nan"), "p95_ms": float("nan"),
                               "p99_ms": float("nan"), "requests_per_s": 0.0})
        rows[name] = row | {"retried": stats.get(name + RETRIED, {}).get("requests", 0),
                            "server_p50_ms": (server or {}).get(name, float("nan")), "target_p50_ms": gates[name],
                            "passed": row["requests"] > 0 and row["p50_ms"] <= gates[name]}
    return rows


def table(summary: dict) -> str:
    lines = ["| endpoint | requests | failures | retried | p50 (ms) | p95 (ms) | p99 (ms) | req/s | server p50 (ms) | "
             "p50 target (ms) | gate |", "| --- " * 11 + "|"]
    for name, r in summary["endpoints"].items():
        lines.append(f"| {name} | {r['requests']} | {r['failures']} | {r['retried']} | {r['p50_ms']:.0f} | "
                     f"{r['p95_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['requests_per_s']:.1f} | {r['server_p50_ms']:.1f} | "
                     f"{r['target_p50_ms']:.0f} | {'pass' if r['passed'] else 'FAIL'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=env("LOADTEST_HOST", DEFAULT_HOST))
    parser.add_argument("--users", type=int, default=int(env("LOADTEST_USERS", "50")))
    parser.add_argument("--spawn-rate", type=float, default=float(env("LOADTEST_SPAWN_RATE", "10")))
    parser.add_argument("--duration", type=int, default=int(env("LOADTEST_DURATION", "60")), help="seconds")
    parser.add_argument("--p50", action="append", default=[], metavar="ENDPOINT=MS",
                        help="p50 target of one endpoint (repeatable); others get --p50-default")
    parser.add_argument("--p50-default", type=float, default=float(env("LOADTEST_P50_MS", "80")))
    parser.add_argument("--metrics-url", default=env("LOADTEST_METRICS_URL"),
                        help="handler metrics of an already running server (default: host's port 8083)")
    parser.add_argument("--out", type=Path, default=Path(env("LOADTEST_OUT", "runs/loadtest")))
    args = parser.parse_args(argv)
    gates = targets(args.p50, args.p50_default)
    out = args.out / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    with ExitStack() as stack:
        if answers(args.host):
            host = urlparse(args.host).hostname
            handler_metrics = urlparse(args.metrics_url).netloc if args.metrics_url else \
                f"{host}:{ServerConfig.metrics_port}"
            scrape = {"fmvae-handlers": handler_metrics,
                      "torchserve": f"{host}:{TorchServeConfig.torchserve_metrics_port}"}
            print(f"using the server at {args.host}")
        elif args.host == DEFAULT_HOST:
            print(f"nothing answers at {args.host}: starting TorchServe with {TorchServeConfig.model_store}/ for this "
                  "run", flush=True)
            config = stack.enter_context(TorchServe(ServerConfig())).config
            scrape = {"fmvae-handlers": f"{config.host}:{config.metrics_port}",
                      "torchserve": f"{config.host}:{config.torchserve.torchserve_metrics_port}"}
        else:
            print(f"error: nothing answers at {args.host}/ping")
            return 2
        prometheus = stack.enter_context(Prometheus(scrape))
        print(f"Locust: {args.users} users, spawn rate {args.spawn_rate}/s, {args.duration} s -> {out}", flush=True)
        start = time.monotonic()
        subprocess.run(locust_command(args.host, args.users, args.spawn_rate, args.duration, out), check=False,
                       timeout=args.duration + 120)
        elapsed = time.monotonic() - start
        time.sleep(3)  # two scrape intervals, so Prometheus has the run's last samples
        server = server_p50(prometheus, elapsed)

    stats = locust_stats(out / "locust_stats.csv")
    summary = {"host": args.host, "users": args.users, "spawn_rate": args.spawn_rate, "duration_s": args.duration,
               "failures_total": stats.get("Aggregated", {}).get("failures", 0),
               "endpoints": endpoints(stats, gates, server)}
    passed = all(r["passed"] for r in summary["endpoints"].values()) and summary["failures_total"] == 0
    summary["passed"] = passed
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(table(summary) + "\n")
    print(table(summary))
    print("Locust times the whole request (TorchServe frontend, queue, handler); the server p50 is the handler's "
          "part (fmvae_request_duration_seconds via Prometheus).")
    retried = sum(r["requests"] for name, r in stats.items() if name.endswith(RETRIED))
    print(f"{'PASS' if passed else 'FAIL'}: {summary['failures_total']} failed requests, {retried} answers retried "
          f"(503/507, with backoff); report {out / 'report.html'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
