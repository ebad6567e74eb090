"""Health check for containers and probes: ``python -m handlers.health`` exits 0 when the server can answer.

Healthy means: TorchServe answers /ping "Healthy", every served model has at least one READY worker (TorchServe's
own /ping stays "Healthy" for a model it failed to load, and only says "Partial Healthy" for one whose workers
are all down), and the launcher is not draining it for a stop. With token auth on, TorchServe 0.12 wants keys
on /ping and on the management API too; they are read from the key file TorchServe writes into its working
directory (``--work-dir``, as given to ``python -m handlers``), where the launcher also marks a drain.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path

from handlers.settings import MODELS, ServerConfig


def get_json(url: str, key: str | None) -> dict | list:
    """GET ``url`` as JSON, with a bearer key when given."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
        return json.loads(response.read())


def problems(url: str, management_url: str, models: list[str], work_dir: Path | None) -> list[str]:
    """What keeps the server from being healthy; empty when it is healthy."""
    keys = {}
    if work_dir is not None and (work_dir / "key_file.json").is_file():
        keys = {kind: entry["key"] for kind, entry in json.loads((work_dir / "key_file.json").read_text()).items()}
    if work_dir is not None and (work_dir / "draining").exists():
        return ["draining for a stop"]
    try:
        status = get_json(f"{url}/ping", keys.get("inference")).get("status")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return [f"/ping: {e}"]
    found = [] if status == "Healthy" else [f"/ping says {status!r}"]
    for model in models:
        try:
            workers = [w for d in get_json(f"{management_url}/models/{model}", keys.get("management"))
                       for w in d.get("workers", [])]
        except (urllib.error.URLError, OSError, ValueError) as e:
            found.append(f"{model}: {e}")
            continue
        ready = sum(w.get("status") == "READY" for w in workers)
        if not ready:
            found.append(f"{model}: no READY worker (0 of {len(workers)})")
    return found


def main(argv: list[str] | None = None) -> int:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(prog="python -m handlers.health", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=f"http://127.0.0.1:{defaults.inference_port}", help="inference API")
    parser.add_argument("--management-url", default=f"http://127.0.0.1:{defaults.management_port}")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="the models that must be served")
    parser.add_argument("--work-dir", type=Path, help="TorchServe's working directory (key file, drain mark)")
    args = parser.parse_args(argv)
    found = problems(args.url.rstrip("/"), args.management_url.rstrip("/"), args.models, args.work_dir)
    print("unhealthy: " + "; ".join(found) if found else f"healthy: {', '.join(args.models)} ready")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
