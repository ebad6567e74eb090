"""``python -m handlers`` (``make serve``): serve the model store with TorchServe until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
from dataclasses import fields
from pathlib import Path

from handlers.server import ServerConfig, ServerError, TorchServe


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM (docker stop, kill) stops the server like Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(prog="python -m handlers", description=__doc__)
    parser.add_argument("--model-store", type=Path, default=defaults.model_store)
    parser.add_argument("--host", default=defaults.host, help="address to listen on (default: loopback only)")
    for f in fields(ServerConfig):
        if f.name.endswith("_port"):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=getattr(defaults, f.name))
    parser.add_argument("--log-dir", type=Path, default=Path("runs/serve/logs"))
    args = parser.parse_args(argv)
    ports = {f.name: getattr(args, f.name) for f in fields(ServerConfig) if f.name.endswith("_port")}
    config = ServerConfig(host=args.host, model_store=args.model_store, log_dir=args.log_dir, **ports)
    server = TorchServe(config)
    signal.signal(signal.SIGTERM, interrupt)
    print(f"starting TorchServe on {server.url} (logs: {server.log_dir}) ...", flush=True)
    try:
        server.start()
        print(f"ready: {', '.join(config.models)}\n"
              f"  curl -s -X POST {server.url}/predictions/sample -H 'Content-Type: application/json' "
              f"-d '{{\"n\": 16, \"seed\": 1}}' -o samples.png\n"
              f"  metrics: {server.metrics_url} (handlers), "
              f"http://{config.host}:{config.torchserve_metrics_port}/metrics (TorchServe)\n"
              f"  token auth: off (listening on {config.host}; the container turns it on); model API: off\n"
              "Ctrl-C stops.", flush=True)
        server.process.wait()
        print(f"TorchServe exited with code {server.process.returncode}\n{server.log_tail()}")
        return 1
    except ServerError as e:
        print(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        print("stopping ...")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
