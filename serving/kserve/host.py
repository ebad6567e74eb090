"""Start and stop the KServe host: every route of the model store in each of ``processes`` KServe ModelServer
processes (``serving/kserve_app.py``) sharing one listening socket, plus the exporter of the handlers' metrics.

The same life cycle and operations as the TorchServe host (``serving/server.py``), with the same ``ServerConfig``:
the export folders' artifacts are checked against their manifests and the ports before anything starts; the
processes run in a process group of their own whose watchdog stops them if the launcher dies; token auth writes a
key file (the same format as TorchServe's, so every client reads it the same way; the keys do not expire); a stop
drains: the listener stops taking connections (a drop filter, then each process closes its copy), open connections
are answered (503 ``shutting_down`` for new requests), and the processes exit once nothing is in flight.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fmvae_client import ClientError, fetch

from runtime.cpus import available_cpus
from runtime.manifest import Manifest
from serving import listener
from serving.checks import check_export, check_ports
from serving.errors import ServerError
from serving.host import Host, cut_short, drained, timed_out
from serving.keys import write_keys
from serving.kserve.builds import SWITCHBOARD, Switchboard
from serving.kserve.rollout import rollout
from serving.kserve.settings import SETTINGS_FILE, ProcessSettings
from serving.kserve.supervisor import STATUS_FILE
from serving.logs import RotatingFile, check_writable, copy_output
from serving.probe import Probe
from serving.process import ProcessGroup
from serving.rollout import Request
from serving.settings import MODELS, ROOT, ModelSpec, ServerConfig

READY_LINE = b": ready, "  # what a serving process prints once its routes are loaded (serving/kserve_app.py)
OUTPUT = "kserve.out"  # the processes' output, in the log folder
START_OUTPUT = "kserve-start.out"  # the same output until every process is ready, kept whole (one start's)


def default_processes() -> int:
    """One serving process per CPU this process may use (its cgroup's quota counted)."""
    return available_cpus()


class KServe(Host):
    """One KServe host: its process group, listening socket and metrics exporter; a context manager that always
    cleans up (``serving/host.py``)."""

    kind = "kserve"
    ray_address: str | None = None  # the Ray host's fronts send to Ray Serve (serving/ray/)
    front_env: dict[str, str] = {}  # what the Ray host adds to the serving processes' environment
    title = "the KServe host"
    ports = ("inference_port", "metrics_port", "explorer_port")  # the ServerConfig ports it listens on

    def __init__(self, config: ServerConfig | None = None, specs: dict[str, ModelSpec] | None = None) -> None:
        """``specs``: how each route is served (default: ``MODELS``' for ``config.models``; tests add others)."""
        super().__init__(config or ServerConfig(server="kserve"))
        self.specs = specs or {m: MODELS[m] for m in self.config.models if m in MODELS}
        self.processes = self.config.kserve.processes or default_processes()
        self.sock: socket.socket | None = None
        self._ready = 0
        self._start_lines: IO[bytes] | None = None

    def launch(self) -> None:
        """Check the exports, the ports and the log folder; bind, start the exporter and the processes."""
        unknown = [m for m in self.config.models if m not in self.specs]
        if unknown:
            raise ServerError(f"no route {', '.join(unknown)} in serving/routes.py")
        for export in sorted({self.specs[m].export for m in self.config.models}):
            check_export(self.config.export_store / export)
        check_ports(self.config, self.ports)
        check_writable(self.log_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.drain_file.unlink(missing_ok=True)
        if self.config.token_auth:
            write_keys(self.key_file)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.config.host, self.config.inference_port))
        self.sock.listen(1024)
        self.sock.set_inheritable(True)
        multiproc = self.start_exporter()
        self.before_fronts(multiproc)
        settings = self.tmp / SETTINGS_FILE
        self.settings = ProcessSettings.of(self.config, self.specs, self.processes, self.tmp,
                                           self.key_file if self.config.token_auth else None, self.status_file,
                                           self.ray_address)
        settings.write_text(self.settings.to_json())
        self.switchboard = Switchboard.create(self.tmp / SWITCHBOARD, tuple(self.settings.routes))
        env = os.environ | self.front_env | {"PROMETHEUS_MULTIPROC_DIR": str(multiproc), "TMPDIR": str(self.tmp)}
        fd = self.sock.fileno()
        self.group = ProcessGroup([sys.executable, "-m", "serving.kserve.app", "--socket-fd", str(fd),
                                   "--settings", str(settings), "--processes", str(self.processes)],
                                  env, ROOT,
                                  leftovers=[self.tmp, self.drain_file, self.status_file], pass_fds=(fd,),
                                  forwards=True)
        output = RotatingFile(self.log_dir / OUTPUT, self.config.log_max_bytes, self.config.log_backups)
        self._start_lines = open(self.log_dir / START_OUTPUT, "wb")  # noqa: SIM115 - closed once ready
        self._output = copy_output(self.process.stdout, output, "kserve-output", self._on_line)

    @property
    def status_file(self) -> Path:
        """The supervisor's account of its serving processes (``serving/supervisor.py``), for the health check."""
        return self.work_dir / STATUS_FILE

    def _on_line(self, line: bytes) -> None:
        """Count the processes that are ready; until all are, keep the start's lines apart too (``START_OUTPUT``:
        however much the host logs later, they are not rolled away)."""
        if self._start_lines is None:
            return
        self._start_lines.write(line)
        self._ready += READY_LINE in line
        if self._ready >= self.processes:
            self._start_lines.close()
            self._start_lines = None

    def before_fronts(self, multiproc: Path) -> None:
        """What the serving processes need started before them (the Ray host: its cluster)."""

    def waiting(self) -> list[str]:
        """What the start still waits for: every serving process ready, then ``problems``."""
        if self._ready < self.processes:
            return [f"{self._ready} of {self.processes} serving processes ready"]
        return self.problems(self.probe())

    @staticmethod
    def problems(probe: Probe) -> list[str]:
        """KServe's liveness (/v2/health/live) and each route's readiness (/v2/models/<route>/ready)."""
        keys = probe.keys("inference")
        try:
            fetch(f"{probe.url}/v2/health/live", keys)
        except (ClientError, ValueError) as e:
            return [f"/v2/health/live: {e}"]
        found = []
        for model in probe.models:
            try:
                if not fetch(f"{probe.url}/v2/models/{model}/ready", keys).get("ready"):
                    found.append(f"{model}: not ready")
            except (ClientError, ValueError) as e:
                found.append(f"{model}: {e}")
        return found

    @staticmethod
    def notes(probe: Probe) -> list[str]:
        """The serving processes being replaced (the supervisor's status file in the working directory): the host
        still answers, with fewer processes, while they are."""
        try:
            status = json.loads((probe.work_dir / STATUS_FILE).read_text()) if probe.work_dir is not None else {}
        except (OSError, ValueError):
            return []
        return [f"process {gap['index']} being replaced for {time.time() - gap['since']:.1f} s ({gap['why']}); "
                f"{status['serving']} of {status['processes']} serving" for gap in status.get("replacing", [])]

    @property
    def description(self) -> str:
        return f"KServe's ModelServer ({self.processes} processes)"

    @property
    def key_note(self) -> str:
        return "they do not expire"

    @property
    def own_metrics(self) -> str:
        return f"{self.url}/metrics (KServe)"

    def served_manifest(self, model: str) -> Manifest:
        """The export manifest of the folder the route's build comes from."""
        return Manifest.read(self.export_dir(model))

    def export_dir(self, model: str) -> Path:
        return Path(self.settings.routes[model].export_dir) if self.settings else \
            (self.config.export_store / self.specs[model].export).resolve()

    def rollout(self, routes: dict[str, Path], request: Request, say: Callable[[str], None]) -> None:
        """``serving/kserve/rollout.py``."""
        rollout(self, routes, request, say)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the processes' output."""
        path = self.log_dir / OUTPUT
        if self._output is not None:
            self._output.join(timeout=2)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""

    def drain(self) -> None:
        """Close the door, let every process answer what it accepted, and wait for them to exit (at most
        ``drain_timeout``, or until ``hurry``); how it ended is kept in ``drained``."""
        self.drain_file.touch()
        started = time.monotonic()
        listener.drop_new_connections(self.sock)
        time.sleep(listener.ACCEPT_WAIT_S)  # the processes accept what is already queued
        self.process.send_signal(signal.SIGTERM)  # the supervisor tells each process: close the listener, drain
        self.sock.close()  # the socket goes once every process has closed its copy
        deadline = started + self.config.drain_timeout
        while self.process.poll() is None and time.monotonic() < deadline and not self.hurry.is_set():
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        if self.process.poll() is None:
            self.drained = cut_short(elapsed) if self.hurry.is_set() else timed_out(self.config.drain_timeout)
        else:
            self.drained = drained(elapsed)

    def release(self) -> None:
        if self.sock is not None and self.sock.fileno() != -1:
            self.sock.close()
        self.status_file.unlink(missing_ok=True)
