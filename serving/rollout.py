"""A new export reaches the running service without a lost request: ``python -m serving rollout EXPORT``
(``make rollout EXPORT=<folder>``) and ``python -m serving rollback`` (``make rollback``).

The command talks to the running launcher through its working directory (``--work-dir``, the launcher's): it
writes a ``Request`` there (``REQUEST``), wakes the launcher (SIGUSR1 to the pid in ``PID_FILE``), prints the
launcher's roll-out lines as they come (``LOG``) and ends with its result (``RESULT``): exit 0 when the new build
serves, 1 with one line saying why when it does not (and then nothing changed). The launcher checks the export
(``plan``: a folder ``make export`` wrote, whole, of the latent size its routes' clients send), and its host does
the rest (``Host.rollout``): loads the new build beside the old one, warms and probes it, switches every request
at once, lets the old build drain and frees it. Which build serves each route is kept in ``BUILDS`` (the health
check reads it), with the one before, which ``rollback`` rolls out again.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily

from runtime.errors import ManifestError
from runtime.manifest import Manifest
from serving.checks import check_export
from serving.errors import RolloutError, ServerError

if TYPE_CHECKING:  # serving.host imports this module
    from serving.host import Host

PID_FILE = "launcher.pid"
REQUEST = "rollout-request.json"
LOG = "rollout.log"
RESULT = "rollout-result.json"
BUILDS = "builds.json"


@dataclass(frozen=True)
class Request:
    """What the command asks: ``export`` (a folder ``make export`` wrote; empty for a rollback), the routes (empty:
    every served route of the export's latent size), a canary share (0: none) for ``canary_seconds``, and the rule
    that promotes it (no failed request, and its p50 at most ``promote_if`` times the serving build's)."""

    id: str
    export: str
    routes: tuple[str, ...] = ()
    canary: float = 0.0
    canary_seconds: float = 30.0
    promote_if: float = 1.5
    rollback: bool = False


def plan(request: Request, served: dict[str, dict]) -> dict[str, Path]:
    """The routes to roll and the export folder each gets, or RolloutError saying why not. ``served``: the builds
    file's routes ({route: {"build", "export", "latent_dim"}}), with ``previous`` for a rollback."""
    if request.rollback:
        previous = {route: Path(entry["previous"]["export"]) for route, entry in served.items()
                    if entry.get("previous") and (not request.routes or route in request.routes)}
        if not previous:
            raise RolloutError("nothing to roll back to: no route has served another build since the start")
        for folder in set(previous.values()):
            check(folder)
        return previous
    folder = Path(request.export)
    manifest = check(folder)
    latent_dim = manifest.shapes.latent_dim
    unknown = [r for r in request.routes if r not in served]
    if unknown:
        raise RolloutError(f"{', '.join(unknown)}: not served here (served: {', '.join(served)})")
    routes = request.routes or tuple(r for r, entry in served.items() if entry["latent_dim"] == latent_dim)
    wrong = [f"{r} ({served[r]['latent_dim']}-d)" for r in routes if served[r]["latent_dim"] != latent_dim]
    if wrong or not routes:
        raise RolloutError(f"{folder}: a {latent_dim}-d model, but "
                           + (f"the clients of {', '.join(wrong)} send other latents" if wrong else
                              f"no served route takes {latent_dim}-d latents"))
    same = [r for r in routes if served[r]["build"] == manifest.identity]
    if same:
        raise RolloutError(f"{folder}: build {manifest.identity} serves {', '.join(same)} already")
    if request.canary and not 0 < request.canary < 100:
        raise RolloutError(f"--canary {request.canary:g}: a share of the requests in percent, above 0 and below 100")
    return {route: folder for route in routes}


def check(folder: Path) -> Manifest:
    """The export's manifest, once every artifact is there whole; RolloutError naming the folder otherwise."""
    if not folder.is_dir():
        raise RolloutError(f"{folder}: no such folder")
    try:
        manifest = Manifest.read(folder)
        check_export(folder)
    except (ManifestError, ServerError) as e:
        raise RolloutError(f"{folder}: not an export `make export` wrote ({str(e).removeprefix(f'{folder}: ')})") \
            from None
    return manifest


def builds_document(routes: dict[str, tuple[str, Path, int]], before: dict | None = None) -> dict:
    """The builds file: per route its build, export folder and latent size, and the entry it had before (kept
    across roll-outs where the build changed)."""
    document = {}
    for route, (build, folder, latent_dim) in routes.items():
        entry = {"build": build, "export": str(folder), "latent_dim": latent_dim}
        old = (before or {}).get(route)
        if old and old["build"] != build:
            entry["previous"] = {k: old[k] for k in ("build", "export", "latent_dim")}
        elif old and old.get("previous"):
            entry["previous"] = old["previous"]
        document[route] = entry
    return document


def write(path: Path, document: dict | str) -> None:
    """``document`` (as JSON when not already text) at ``path``, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(document if isinstance(document, str) else json.dumps(document, indent=1))
    os.replace(tmp, path)


def say_to(work_dir: Path) -> Callable[[str], None]:
    """The launcher's roll-out line writer: each line on its own output and in the log the command follows."""
    def say(line: str) -> None:
        stamped = f"rollout: {line}"
        os.write(1, (stamped + "\n").encode())
        with open(work_dir / LOG, "a") as log:
            log.write(stamped + "\n")
    return say


class Launcher:
    """The launcher's side: it keeps the builds file and its pid file in the host's working directory, takes a
    command's request when woken (``wake``, from SIGUSR1), has its host carry it out, and exports which build
    serves each route (``fmvae_serving_build{model, build} 1``, on the handlers' metrics port)."""

    def __init__(self, host: Host) -> None:
        self.host, self.work_dir = host, host.work_dir
        self.woken = threading.Event()
        self.builds = builds_document(self.serving())
        write(self.work_dir / BUILDS, self.builds)
        (self.work_dir / PID_FILE).write_text(str(os.getpid()))
        if host.registry is not None:
            host.registry.register(self)

    def serving(self) -> dict[str, tuple[str, Path, int]]:
        """Per route, the build its host serves now: (identity, export folder, latent size)."""
        manifests = {route: self.host.served_manifest(route) for route in self.host.config.models}
        return {route: (m.identity, self.host.export_dir(route), m.shapes.latent_dim) for route, m in manifests.items()}

    def collect(self) -> list[GaugeMetricFamily]:
        """The Prometheus collector's answer: 1 per route and the build that serves it."""
        family = GaugeMetricFamily("fmvae_serving_build", "The build that serves each route (value 1)",
                                   labels=["model", "build"])
        for route, entry in self.builds.items():
            family.add_metric([route, entry["build"]], 1)
        return [family]

    def wake(self, signum: int = signal.SIGUSR1, frame: object = None) -> None:
        self.woken.set()

    def handle(self) -> None:
        """Carry out the request the command left, and leave its result."""
        self.woken.clear()
        try:
            document = json.loads((self.work_dir / REQUEST).read_text())
            request = Request(**document | {"routes": tuple(document["routes"])})
        except (OSError, ValueError, TypeError, KeyError) as e:
            return write(self.work_dir / RESULT, {"id": "", "ok": False, "line": f"error: unreadable request ({e})"})
        say = say_to(self.work_dir)
        started = time.monotonic()
        try:
            routes = plan(request, self.builds)
            say(("rolling back " if request.rollback else "rolling out ") + ", ".join(
                f"{route} <- {folder}" for route, folder in routes.items()))
            self.host.rollout(routes, request, say)
        except RolloutError as e:
            return write(self.work_dir / RESULT, {"id": request.id, "ok": False, "line": f"error: {e}"})
        except Exception as e:  # noqa: BLE001 - a fault of the roll-out's own code must not stop the service
            say(traceback.format_exc().rstrip())
            return write(self.work_dir / RESULT, {"id": request.id, "ok": False,
                                                  "line": f"error: the roll-out failed ({type(e).__name__}: {e})"})
        self.builds = builds_document(self.serving(), self.builds)
        write(self.work_dir / BUILDS, self.builds)
        served = ", ".join(f"{route} {self.builds[route]['build']}" for route in routes)
        write(self.work_dir / RESULT, {"id": request.id, "ok": True,
                                       "line": f"done in {time.monotonic() - started:.1f} s: {served}"})

    def close(self) -> None:
        for name in (PID_FILE, REQUEST, RESULT):
            (self.work_dir / name).unlink(missing_ok=True)
