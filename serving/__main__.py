"""``python -m serving`` (``make serve``): serve the model store with TorchServe until Ctrl-C or SIGTERM, with
the explorer page (``python -m explorer``, on loopback) beside it unless ``--no-explorer``.

The first Ctrl-C or SIGTERM drains: new requests get 503 shutting_down, everything accepted is answered, then
TorchServe stops (at most ``--drain-timeout`` seconds). A second one stops at once. Either way nothing is left
running and the temp dir is removed.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from runtime.errors import ManifestError
from serving.archive import packed_manifest
from serving.errors import ServerError
from serving.logs import RotatingFile, copy_output
from serving.server import TorchServe
from serving.settings import MODELS, ROOT, ServerConfig

EXPLORER_START_S = 30.0


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m serving`` (also what the Dockerfile's CMD passes)."""
    defaults = ServerConfig()
    cli = argparse.ArgumentParser(prog="python -m serving", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--model-store", type=Path, default=defaults.model_store,
                     help="folder with the .mar archives (default: what `make archives` builds)")
    cli.add_argument("--models", nargs="+", default=list(defaults.models), metavar="MODEL",
                     help="the models (routes) to serve (default: all of serving/routes.py)")
    cli.add_argument("--host", default=defaults.host, help="inference API address (default: loopback only)")
    cli.add_argument("--metrics-host", default=defaults.metrics_host, help="metrics addresses (default: loopback)")
    cli.add_argument("--token-auth", action="store_true", help="require TorchServe's bearer keys")
    cli.add_argument("--token-expiration-min", type=float, default=defaults.token_expiration_min,
                     help="lifetime of the keys in minutes; the launcher renews them at a third of it "
                          "(default %(default)g)")
    cli.add_argument("--work-dir", type=Path, help="TorchServe's working directory, where key_file.json goes")
    for f in fields(ServerConfig):
        if f.name.endswith("_port"):
            cli.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=getattr(defaults, f.name))
    cli.add_argument("--log-dir", type=Path, default=Path("runs/serve/logs"))
    cli.add_argument("--log-max-mb", type=float, default=defaults.log_max_bytes / 2**20,
                     help="size at which each log file rolls over (default %(default)g)")
    cli.add_argument("--log-backups", type=int, default=defaults.log_backups,
                     help="rolled-over copies kept per log file (default %(default)d)")
    cli.add_argument("--access-log", action="store_true", help="one line per request in access_log.log")
    cli.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout,
                     help="seconds a stop waits for accepted requests (default %(default)g)")
    cli.add_argument("--no-explorer", action="store_true", help="do not start the explorer page")
    cli.add_argument("--grpc", action="store_true",
                     help="gRPC inference on --host (default: loopback only; untested, see docs/operations.md)")
    cli.add_argument("--jvm-heap-mb", type=int, default=defaults.jvm_heap_mb,
                     help="the JVM's heap bound (default %(default)d)")
    cli.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s,
                     help="seconds a kept-alive connection to the metrics or explorer port may idle "
                          "(default %(default)g)")
    cli.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s,
                     help="seconds a request to the metrics or explorer port may take to arrive (default %(default)g)")
    return cli


def start_explorer(server: TorchServe, config: ServerConfig) -> tuple[subprocess.Popen | None, str]:
    """``python -m explorer`` for the served models on ``config.explorer_port``: (process, its URL), or (None,
    "off (why)") when the served models cover no whole latent space. It exits when this launcher does; with token
    auth it reads the inference key itself (the page never sees it), and asks the browser for it once. Its
    output, after the line saying where it listens, goes to ``explorer.log`` in the log folder (rolled over like
    the others) for as long as it runs."""
    cmd = [sys.executable, "-m", "explorer", "--api", server.url, "--port", str(config.explorer_port),
           "--model-store", str(config.model_store.resolve()), "--parent", str(os.getpid()),
           "--idle-timeout", str(config.idle_timeout_s), "--request-timeout", str(config.request_timeout_s),
           "--models", *config.models]
    if config.token_auth:
        cmd += ["--key-file", str(server.key_file)]
    process = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)
    ready, _, _ = select.select([process.stderr], [], [], EXPLORER_START_S)
    line = process.stderr.readline().decode(errors="replace").strip() if ready else ""
    if not line.startswith("explorer: "):
        process.kill()
        rest = process.stderr.read().decode(errors="replace") if ready else "no answer"
        raise ServerError(f"the explorer did not start: {line} {rest}".strip())
    if line.startswith("explorer: off"):  # the models cover no whole latent space: it has exited, reap it
        process.wait(10)
        return None, line.removeprefix("explorer: ")
    copy_output(process.stderr, RotatingFile(server.log_dir / "explorer.log", config.log_max_bytes,
                                             config.log_backups), "explorer-output")
    return process, line.removeprefix("explorer: ")


def fallback_warnings(config: ServerConfig) -> list[str]:
    """A line per served model that serves fp32 decoders in place of ones that failed the parity gate (a dropped
    decoder that the model does not name in its settings, e.g. an optional one, changes nothing it serves)."""
    lines = []
    for model in config.models:
        fallback = packed_manifest(config.model_store / f"{model}.mar").fallback
        named = {b for backends in MODELS[model].decoder.values() for b in backends} if model in MODELS else None
        swapped = {a: b for a, b in (fallback.backends if fallback else {}).items() if named is None or a in named}
        if swapped:
            swaps = ", ".join(f"{a} -> {b}" for a, b in swapped.items())
            lines.append(f"  WARNING: {model} serves fp32 decoders ({swaps}): {fallback.reason}\n")
    return lines


class Stopper:
    """Signal handler: the first SIGINT/SIGTERM asks for a draining stop, the second for an immediate one.
    It only sets events (and writes a line), so a signal never interrupts the cleanup itself."""

    def __init__(self, server: TorchServe, drain_timeout: float) -> None:
        self.server, self.drain_timeout, self.signals = server, drain_timeout, 0

    def __call__(self, signum: int, frame: object) -> None:
        self.signals += 1
        if self.signals == 1:
            self.server.interrupted.set()
            say(f"stopping: answering what was accepted (at most {self.drain_timeout:g} s; again to stop now) ...")
        else:
            self.server.hurry.set()
            say("stopping now ...")


def say(line: str) -> None:
    """Print from a signal handler too (print() may be in use by the interrupted code)."""
    os.write(1, (line + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    ports = {f.name: getattr(args, f.name) for f in fields(ServerConfig) if f.name.endswith("_port")}
    config = ServerConfig(host=args.host, metrics_host=args.metrics_host, model_store=args.model_store,
                          models=tuple(args.models),
                          log_dir=args.log_dir, token_auth=args.token_auth, work_dir=args.work_dir,
                          token_expiration_min=args.token_expiration_min, log_max_bytes=int(args.log_max_mb * 2**20),
                          log_backups=args.log_backups, access_log=args.access_log,
                          drain_timeout=args.drain_timeout, grpc=args.grpc, jvm_heap_mb=args.jvm_heap_mb,
                          idle_timeout_s=args.idle_timeout, request_timeout_s=args.request_timeout, **ports)
    server = TorchServe(config)
    stopper = Stopper(server, config.drain_timeout)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopper)
    say(f"starting TorchServe on {server.url} (logs: {server.log_dir}) ...")
    try:
        server.start()
    except ServerError as e:  # start() has already stopped what it started
        if server.interrupted.is_set():
            say("stopped before it was ready")
            return 0
        say(f"error: {e}")
        return 1
    explorer, explorer_line = None, "  explorer: off (--no-explorer)\n"
    try:
        if not args.no_explorer:
            explorer, url = start_explorer(server, config)
            explorer_line = f"  explorer: {url}\n"
        warnings = fallback_warnings(config)
    except (ServerError, ManifestError, OSError, ValueError) as e:
        say(f"error: {e}")
        server.stop(drain=False)
        return 1
    auth = (f"on: keys in {server.key_file}, renewed every {server.renewer.interval / 60:.3g} min (read the "
            "inference key for each request; on 400 InvalidKeyException read it again and retry once); send "
            "'Authorization: Bearer <inference key>'"
            if config.token_auth else f"off (listening on {config.host}; the container turns it on)")
    say(f"ready: {', '.join(config.models)}\n"
        f"  curl -s -X POST {server.url}/predictions/sample -H 'Content-Type: application/json' "
        f"-d '{{\"n\": 16, \"seed\": 1}}' -o samples.png\n"
        f"{explorer_line}"
        f"  metrics: {server.metrics_url} (handlers), {server.torchserve_metrics_url} (TorchServe)\n"
        f"  token auth: {auth}; model API: off; access log: {'on' if config.access_log else 'off'}\n"
        + "".join(warnings) + "Ctrl-C stops.")
    code = 0
    while not server.interrupted.wait(0.5):
        if server.process.poll() is not None:
            say(f"TorchServe exited with code {server.process.returncode}\n{server.log_tail()}")
            server.stop(drain=False)
            code = 1
            break
    else:
        server.stop()
        say(f"stopped ({server.drained})" if server.drained else "stopped")
    if explorer is not None:
        explorer.terminate()
        explorer.wait(10)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
