"""``python -m serving`` (``make serve``): serve the routes with a host (``--server``: TorchServe, the default, from
its archives; KServe's ModelServer from the export folders; ``settings.HOSTS``) until Ctrl-C or SIGTERM, with the
explorer page (``python -m explorer``, on loopback) beside it unless ``--no-explorer``.

``python -m serving rollout EXPORT`` and ``python -m serving rollback`` send a new export to the running launcher
(``serving/rollout.py``). The first Ctrl-C or SIGTERM drains: new connections are refused, requests on open ones
get 503 shutting_down, everything accepted is answered, then the host stops (at most ``--drain-timeout`` seconds).
A second one stops at once. Either way nothing is left running and the temp dir is removed.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
from dataclasses import Field, fields, is_dataclass
from pathlib import Path

from runtime.errors import ManifestError
from serving import rollout, rollout_cli
from serving.errors import ServerError
from serving.host import Host, host_class
from serving.logs import RotatingFile, copy_output
from serving.settings import MODELS, ROOT, ServerConfig

EXPLORER_START_S = 30.0


def flags() -> list[tuple[str | None, Field]]:
    """Every field a flag stands for: (the nested part's name, or None for ``ServerConfig``'s own; the field)."""
    nested = [f.name for f in fields(ServerConfig) if is_dataclass(f.default_factory)]
    own = [(None, f) for f in fields(ServerConfig) if f.name not in nested]
    return own + [(part, f) for part in nested for f in fields(getattr(ServerConfig(), part))]


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m serving`` (also what the Dockerfile's CMD passes): one flag per
    ``ServerConfig`` field, the hosts' own nested ones included, named after it (or its ``flag``), with its default
    and help (``serving/settings.py``)."""
    cli = argparse.ArgumentParser(prog="python -m serving", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ServerConfig()
    for part, f in flags():
        meta = dict(f.metadata)
        name = meta.pop("flag", f.name.replace("_", "-"))
        default = meta.pop("launcher_default", getattr(getattr(defaults, part) if part else defaults, f.name))
        text, dest = meta.pop("help"), f"{part}.{f.name}" if part else f.name
        if f.type == "bool":
            if default:
                cli.add_argument(f"--no-{name}", dest=dest, action="store_false", help=text)
            else:
                cli.add_argument(f"--{name}", dest=dest, action="store_true", help=text)
            continue
        kind = {"int": int, "float": float, "str": str}.get(f.type, Path)
        if f.type.startswith("tuple"):
            cli.add_argument(f"--{name}", dest=dest, nargs="+", type=str, default=list(default), help=text, **meta)
        else:
            shown = "" if default is None else " (default %(default)s)"
            cli.add_argument(f"--{name}", dest=dest, type=kind, default=default, help=text + shown,
                             **{"metavar": f.name.upper()} | meta)
    return cli


def config_of(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig the parsed flags describe."""
    values: dict[str | None, dict] = {}
    for part, f in flags():
        value = getattr(args, f"{part}.{f.name}" if part else f.name)
        values.setdefault(part, {})[f.name] = tuple(value) if f.type.startswith("tuple") else value
    nested = {part: type(getattr(ServerConfig(), part))(**given) for part, given in values.items() if part}
    return ServerConfig(**values[None], **nested)


def start_explorer(server: Host, config: ServerConfig) -> tuple[subprocess.Popen | None, str]:
    """``python -m explorer`` for the served models on ``config.explorer_port``: (process, its URL), or (None,
    "off (why)") when the served models cover no whole latent space. It exits when this launcher does; with token
    auth it reads the inference key itself (the page never sees it), and asks the browser for it once. Its
    output, after the line saying where it listens, goes to ``explorer.log`` in the log folder (rolled over like
    the others) for as long as it runs."""
    cmd = [sys.executable, "-m", "explorer", "--api", server.url, "--port", str(config.explorer_port),
           "--export-store", str(config.export_store.resolve()), "--parent", str(os.getpid()),
           "--idle-timeout", str(config.idle_timeout), "--request-timeout", str(config.request_timeout),
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


def fallback_warnings(server: Host) -> list[str]:
    """A line per served model that serves fp32 decoders in place of ones that failed the parity gate (a dropped
    decoder that is not the first its settings name for a device, e.g. the optional torchscript-int8, changes
    nothing it serves)."""
    lines = []
    for model in server.config.models:
        fallback = server.served_manifest(model).fallback
        named = {backends[0] for backends in MODELS[model].decoder.values() if backends} if model in MODELS else None
        swapped = {a: b for a, b in (fallback.backends if fallback else {}).items() if named is None or a in named}
        if swapped:
            swaps = ", ".join(f"{a} -> {b}" for a, b in swapped.items())
            lines.append(f"  WARNING: {model} serves fp32 decoders ({swaps}): {fallback.reason}\n")
    return lines


class Stopper:
    """Signal handler: the first SIGINT/SIGTERM asks for a draining stop, the second for an immediate one.
    It only sets events (and writes a line), so a signal never interrupts the cleanup itself."""

    def __init__(self, server: Host, drain_timeout: float) -> None:
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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["rollout"], ["rollback"]):
        return rollout_cli.main(argv)
    config = config_of(parser().parse_args(argv))
    server = host_class(config.server)(config)
    stopper = Stopper(server, config.drain_timeout)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopper)
    say(f"starting {server.description} on {server.url} (logs: {server.log_dir}) ...")
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
        if config.explorer:
            explorer, url = start_explorer(server, config)
            explorer_line = f"  explorer: {url}\n"
        warnings = fallback_warnings(server)
        rollouts = rollout.Launcher(server)
        signal.signal(signal.SIGUSR1, rollouts.wake)
    except (ServerError, ManifestError, OSError, ValueError) as e:
        say(f"error: {e}")
        server.stop(drain=False)
        return 1
    auth = f"off (listening on {config.host}; the container turns it on)"
    if config.token_auth:
        auth = f"on: keys in {server.key_file}, {server.key_note}; send 'Authorization: Bearer <inference key>'"
    say(f"ready: {', '.join(config.models)}\n"
        f"  curl -s -X POST {server.url}/predictions/sample -H 'Content-Type: application/json' "
        f"-d '{{\"n\": 16, \"seed\": 1}}' -o samples.png\n"
        f"{explorer_line}"
        f"  metrics: {server.metrics_url} (handlers), {server.own_metrics}\n"
        f"  token auth: {auth}; access log: {'on' if config.access_log else 'off'}\n"
        + "".join(warnings) + "Ctrl-C stops.")
    code = 0
    while not server.interrupted.wait(0.5):
        if rollouts.woken.is_set():
            rollouts.handle()
        if (why := server.died()) is not None:
            say(why)
            server.stop(drain=False)
            code = 1
            break
    else:
        server.stop()
        say(f"stopped ({server.drained})" if server.drained else "stopped")
    rollouts.close()
    if explorer is not None:
        explorer.terminate()
        explorer.wait(10)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
