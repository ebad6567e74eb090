"""``python -m explorer --api URL``: the latent explorer page on loopback (``make serve`` starts it beside
TorchServe and prints its address). See ``explorer/server.py``."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from explorer.errors import NoSpace
from explorer.server import Explorer
from runtime.errors import ManifestError
from serving.httpd import IDLE_TIMEOUT_S, REQUEST_TIMEOUT_S
from serving.settings import KEY_FILE, MODELS, ServerConfig


def exit_with_parent(parent: int) -> None:
    """Stop this process when ``parent`` (the launcher) is gone, however it ended."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m explorer", description=__doc__)
    p.add_argument("--api", default=f"http://127.0.0.1:{ServerConfig.inference_port}", help="inference API URL")
    p.add_argument("--port", type=int, default=ServerConfig.explorer_port, help="default %(default)s")
    p.add_argument("--key-file", type=Path, help=f"TorchServe's {KEY_FILE} when token auth is on")
    p.add_argument("--models", nargs="+", default=list(MODELS), help="the served models (default: all)")
    p.add_argument("--export-store", type=Path, default=ServerConfig().export_store,
                   help="the folder with the served export folders (default %(default)s)")
    p.add_argument("--parent", type=int, help="exit when this process is gone (the launcher passes its pid)")
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S,
                   help="seconds a kept-alive connection may wait for its next request (default %(default)g)")
    p.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S,
                   help="seconds a request's line, headers and body may take to arrive (default %(default)g)")
    args = p.parse_args(argv)
    try:
        server = Explorer(args.api, tuple(args.models), args.export_store, args.port, args.key_file,
                          args.idle_timeout, args.request_timeout)
    except NoSpace as e:
        print(f"explorer: off ({e})", file=sys.stderr, flush=True)
        return
    except (OSError, ValueError, ManifestError) as e:
        raise SystemExit(f"error: explorer: {e}") from None
    if args.parent:
        threading.Thread(target=exit_with_parent, args=(args.parent,), daemon=True).start()
    print(f"explorer: {server.url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
