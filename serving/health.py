"""Health check for containers and probes: ``python -m serving.health`` exits 0 when the server can answer.

Healthy means the host's own rule holds (``Host.problems``: on TorchServe, ``--server torchserve``, the default,
it answers /ping "Healthy" and every served model has a READY worker; on the KServe host, its liveness and every
route's readiness) and the launcher is not draining it for a stop. With token auth on, keys are read from the key
file in the host's working directory (``--work-dir``, as given to ``python -m serving``), where the launcher also
marks a drain and a host may say more (``Host.notes``: the KServe host names a serving process it is replacing;
the host still answers meanwhile, so the check says healthy, with the gap named), and the launcher keeps which build
serves each route, which the check names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serving.host import host_class
from serving.probe import Probe
from serving.rollout import BUILDS
from serving.settings import HOSTS, MODELS, ServerConfig


def problems(probe: Probe, server: str = "torchserve") -> list[str]:
    """What keeps the server at ``probe`` from being healthy; empty when it is healthy."""
    return ["draining for a stop"] if probe.draining else host_class(server).problems(probe)


def builds(work_dir: Path | None) -> list[str]:
    """Which build serves each route (the launcher's builds file in the working directory, ``serving/rollout.py``),
    in one note: "builds: 8db0eb000922 (sample, interpolate); ..."."""
    try:
        served = json.loads((work_dir / BUILDS).read_text()) if work_dir is not None else {}
    except (OSError, ValueError):
        return []
    by_build: dict[str, list[str]] = {}
    for route, entry in served.items():
        by_build.setdefault(entry["build"], []).append(route)
    named = "; ".join(f"{build} ({', '.join(routes)})" for build, routes in by_build.items())
    return [f"builds: {named}"] if by_build else []


def main(argv: list[str] | None = None) -> int:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(prog="python -m serving.health", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=f"http://127.0.0.1:{defaults.inference_port}", help="inference API")
    parser.add_argument("--management-url", default=f"http://127.0.0.1:{defaults.torchserve.management_port}")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="the models that must be served")
    parser.add_argument("--work-dir", type=Path, help="the host's working directory (key file, drain mark)")
    parser.add_argument("--server", choices=tuple(HOSTS), default=defaults.server, help="the host")
    args = parser.parse_args(argv)
    probe = Probe(args.url.rstrip("/"), tuple(args.models), args.work_dir, args.management_url.rstrip("/"))
    found = problems(probe, args.server)
    notes = "".join(f"; {note}" for note in [*host_class(args.server).notes(probe), *builds(args.work_dir)])
    print("unhealthy: " + "; ".join(found) + notes if found else f"healthy: {', '.join(args.models)} ready{notes}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
