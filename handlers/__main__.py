"""``python -m handlers`` (``make serve``): serve the model store with TorchServe until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
from dataclasses import fields
from pathlib import Path

from handlers.server import ServerError, TorchServe
from handlers.settings import ServerConfig


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM (docker stop, kill) stops the server like Ctrl-C."""
    raise KeyboardInterrupt


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m handlers`` (also what the Dockerfile's CMD passes)."""
    defaults = ServerConfig()
    cli = argparse.ArgumentParser(prog="python -m handlers", description=__doc__)
    cli.add_argument("--model-store", type=Path, default=defaults.model_store,
                     help="folder with the .mar archives (default: what `make archives` builds)")
    cli.add_argument("--host", default=defaults.host, help="inference API address (default: loopback only)")
    cli.add_argument("--metrics-host", default=defaults.metrics_host, help="metrics addresses (default: loopback)")
    cli.add_argument("--token-auth", action="store_true", help="require TorchServe's bearer keys")
    cli.add_argument("--token-expiration-min", type=int, default=defaults.token_expiration_min)
    cli.add_argument("--work-dir", type=Path, help="TorchServe's working directory, where key_file.json goes")
    for f in fields(ServerConfig):
        if f.name.endswith("_port"):
            cli.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=getattr(defaults, f.name))
    cli.add_argument("--log-dir", type=Path, default=Path("runs/serve/logs"))
    return cli


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    ports = {f.name: getattr(args, f.name) for f in fields(ServerConfig) if f.name.endswith("_port")}
    config = ServerConfig(host=args.host, metrics_host=args.metrics_host, model_store=args.model_store,
                          log_dir=args.log_dir, token_auth=args.token_auth, work_dir=args.work_dir,
                          token_expiration_min=args.token_expiration_min, **ports)
    server = TorchServe(config)
    signal.signal(signal.SIGTERM, interrupt)
    print(f"starting TorchServe on {server.url} (logs: {server.log_dir}) ...", flush=True)
    try:
        server.start()
        auth = (f"on: keys in {server.key_file}; send 'Authorization: Bearer <inference key>'"
                if config.token_auth else f"off (listening on {config.host}; the container turns it on)")
        print(f"ready: {', '.join(config.models)}\n"
              f"  curl -s -X POST {server.url}/predictions/sample -H 'Content-Type: application/json' "
              f"-d '{{\"n\": 16, \"seed\": 1}}' -o samples.png\n"
              f"  metrics: {server.metrics_url} (handlers), "
              f"http://{config.metrics_host}:{config.torchserve_metrics_port}/metrics (TorchServe)\n"
              f"  token auth: {auth}; model API: off\n"
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
