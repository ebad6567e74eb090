"""Health check for containers and probes: ``python -m serving.health`` exits 0 when the server can answer.

Healthy means, on TorchServe (``--server torchserve``, the default): it answers /ping "Healthy", every served
model has at least one READY worker (TorchServe's own /ping stays "Healthy" for a model it failed to load, and
only says "Partial Healthy" for one whose workers are all down); on the KServe host (``--server kserve``): it
answers KServe's liveness (/v2/health/live) and every route's readiness (/v2/models/<route>/ready). On both, the
launcher is not draining it for a stop. With token auth on, keys are read from the key file in the host's working
directory (``--work-dir``, as given to ``python -m serving``), where the launcher also marks a drain and the KServe
host's supervisor says which serving process it is replacing (the host still answers meanwhile: healthy, with the
gap named).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fmvae_client import ClientError, Keys, fetch

from serving.kserve.supervisor import STATUS_FILE
from serving.settings import DRAIN_FILE, KEY_FILE, MODELS, ServerConfig


def problems(url: str, management_url: str, models: list[str], work_dir: Path | None, server: str = "torchserve"
             ) -> list[str]:
    """What keeps the server from being healthy; empty when it is healthy."""
    key_file = work_dir / KEY_FILE if work_dir is not None and (work_dir / KEY_FILE).is_file() else None

    def keys(kind: str) -> Keys:
        return Keys(key_file=key_file, kind=kind)

    if work_dir is not None and (work_dir / DRAIN_FILE).exists():
        return ["draining for a stop"]
    if server == "kserve":
        return kserve_problems(url, models, keys("inference"))
    try:
        status = fetch(f"{url}/ping", keys("inference")).get("status")
    except (ClientError, ValueError) as e:
        return [f"/ping: {e}"]
    found = [] if status == "Healthy" else [f"/ping says {status!r}"]
    for model in models:
        try:
            workers = [w for d in fetch(f"{management_url}/models/{model}", keys("management"))
                       for w in d.get("workers", [])]
        except (ClientError, ValueError) as e:
            found.append(f"{model}: {e}")
            continue
        ready = sum(w.get("status") == "READY" for w in workers)
        if not ready:
            found.append(f"{model}: no READY worker (0 of {len(workers)})")
    return found


def kserve_problems(url: str, models: list[str], keys: Keys) -> list[str]:
    """The KServe host's liveness and each route's readiness."""
    try:
        fetch(f"{url}/v2/health/live", keys)
    except (ClientError, ValueError) as e:
        return [f"/v2/health/live: {e}"]
    found = []
    for model in models:
        try:
            if not fetch(f"{url}/v2/models/{model}/ready", keys).get("ready"):
                found.append(f"{model}: not ready")
        except (ClientError, ValueError) as e:
            found.append(f"{model}: {e}")
    return found


def process_gaps(work_dir: Path | None) -> list[str]:
    """The KServe host's serving processes that are being replaced (its supervisor's status file in the working
    directory): the host still answers, with fewer processes, while they are."""
    try:
        status = json.loads((work_dir / STATUS_FILE).read_text()) if work_dir is not None else {}
    except (OSError, ValueError):
        return []
    return [f"process {gap['index']} being replaced for {time.time() - gap['since']:.1f} s ({gap['why']}); "
            f"{status['serving']} of {status['processes']} serving" for gap in status.get("replacing", [])]


def main(argv: list[str] | None = None) -> int:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(prog="python -m serving.health", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=f"http://127.0.0.1:{defaults.inference_port}", help="inference API")
    parser.add_argument("--management-url", default=f"http://127.0.0.1:{defaults.management_port}")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="the models that must be served")
    parser.add_argument("--work-dir", type=Path, help="the host's working directory (key file, drain mark)")
    parser.add_argument("--server", choices=("torchserve", "kserve"), default=defaults.server, help="the host")
    args = parser.parse_args(argv)
    found = problems(args.url.rstrip("/"), args.management_url.rstrip("/"), args.models, args.work_dir, args.server)
    gaps = "".join(f"; {gap}" for gap in process_gaps(args.work_dir))
    print("unhealthy: " + "; ".join(found) + gaps if found else f"healthy: {', '.join(args.models)} ready{gaps}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
