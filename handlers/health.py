"""Health check for containers: ``python -m handlers.health`` exits 0 when TorchServe answers /ping "Healthy".

With token auth on, TorchServe 0.12 wants the inference key on /ping too; it is read from the key file that
TorchServe writes into its working directory (``--work-dir``, as given to ``python -m handlers``).
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handlers.health", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080/ping")
    parser.add_argument("--work-dir", type=Path, help="where key_file.json is (token auth on)")
    args = parser.parse_args(argv)
    headers = {}
    key_file = args.work_dir / "key_file.json" if args.work_dir else None
    if key_file is not None and key_file.is_file():
        headers["Authorization"] = f"Bearer {json.loads(key_file.read_text())['inference']['key']}"
    try:
        with urllib.request.urlopen(urllib.request.Request(args.url, headers=headers), timeout=5) as response:
            status = json.loads(response.read()).get("status")
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"unhealthy: {e}")
        return 1
    print(status)
    return 0 if status == "Healthy" else 1


if __name__ == "__main__":
    raise SystemExit(main())
