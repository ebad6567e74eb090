"""The one interface of a host (``Host``), which the launcher and the health check call it through, and what every
host shares: a private temp dir, the addresses and files a client or the health check reads, the keys, the
handlers' metrics exporter, the drain's rule and its words, a stop that always cleans up."""

from __future__ import annotations

import contextlib
import importlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fmvae_client import Keys
from prometheus_client import CollectorRegistry, multiprocess

from runtime.manifest import Manifest
from serving.errors import RolloutError, ServerError
from serving.httpd import MetricsServer
from serving.keys import read_keys
from serving.probe import Probe
from serving.process import ProcessGroup
from serving.rollout import Request
from serving.settings import DRAIN_FILE, HOSTS, KEY_FILE, ServerConfig

# The drain's rule on every host: a host stops once nothing is in flight and nothing was answered (or arrived) for
# this long, every open connection having had its last answer.
QUIET_SECONDS = 0.3
READY_POLL_S = 0.1  # how often a start looks whether the host is ready


def drained(seconds: float, how: str = "new connections refused") -> str:
    """The operator's line for a drain that ended as it should."""
    return f"drained in {seconds:.1f} s: accepted work answered, nothing more for {QUIET_SECONDS:g} s ({how})"


def cut_short(seconds: float) -> str:
    return f"drain cut short after {seconds:.1f} s (asked to stop now)"


def timed_out(timeout: float, detail: str = "") -> str:
    return f"drain timed out after {timeout:g} s {detail}".rstrip()


def reach(host: str) -> str:
    """The address a local client uses for a listen address (a wildcard means loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def host_class(kind: str) -> type[Host]:
    """The class of the host ``kind`` (a key of ``settings.HOSTS``)."""
    module, _, name = HOSTS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


class Host:
    """One host's process group and metrics exporter; a context manager that always cleans up. ``interrupted``
    aborts a start in progress; ``hurry`` cuts a drain short.

    A host defines: ``launch`` and ``waiting`` (``start`` runs the one, then waits on the other), ``problems`` (its
    health rule, which ``waiting`` uses), ``drain``, ``log_tail``, ``served_manifest`` (the export manifest a route
    serves), the banner's words (``description``, ``key_note``, ``own_metrics``); optionally ``notes`` (what the health
    check reports beside a healthy answer) and ``release`` (what it holds beside its process group)."""

    kind: str  # ServerConfig.server, a key of settings.HOSTS
    title: str  # how its messages name it
    ports: tuple[str, ...]  # the ServerConfig ports it listens on

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.group: ProcessGroup | None = None
        self.exporter: MetricsServer | None = None
        self.registry: CollectorRegistry | None = None
        self._output: threading.Thread | None = None  # copies the processes' output into the log folder
        self.tmp = Path(tempfile.mkdtemp(prefix="fmvae-serve-"))
        self.interrupted = threading.Event()
        self.hurry = threading.Event()
        self.drained: str | None = None  # how the last drain ended, for the operator

    @property
    def process(self) -> subprocess.Popen | None:
        """The group's leader (its pid is the group id), once started."""
        return self.group.process if self.group else None

    @property
    def sessions(self) -> list[int]:
        """The sessions its processes run in (each process group it starts is a session of its own): what a
        measurement of its CPU and memory counts."""
        return [self.process.pid] if self.process else []

    @property
    def url(self) -> str:
        return f"http://{reach(self.config.host)}:{self.config.inference_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{reach(self.config.metrics_host)}:{self.config.metrics_port}/metrics"

    @property
    def work_dir(self) -> Path:
        return self.config.work_dir or self.tmp

    @property
    def key_file(self) -> Path:
        """The key file (token auth on), TorchServe's format: {"management": {"key": ...}, "inference": ...}."""
        return self.work_dir / KEY_FILE

    @property
    def drain_file(self) -> Path:
        """Present while the host drains: the handlers refuse new work, the health check says unhealthy."""
        return self.work_dir / DRAIN_FILE

    @property
    def log_dir(self) -> Path:
        """Absolute: TorchServe runs in the work dir and resolves relative paths from there."""
        return (self.config.log_dir or self.tmp / "logs").resolve()

    def key(self, kind: str) -> str | None:
        """The current ``kind`` key ("inference", "management"), or None with token auth off."""
        return read_keys(self.key_file)[kind] if self.config.token_auth else None

    def keys(self, kind: str) -> Keys:
        """The ``kind`` key as the client package reads it (again when refused): none with token auth off."""
        return Keys(key_file=self.key_file, kind=kind) if self.config.token_auth else Keys()

    def died(self) -> str | None:
        """Why the host is gone, or None while it runs."""
        if self.process is not None and self.process.poll() is not None:
            return f"{self.title} exited with code {self.process.returncode}\n{self.log_tail()}"
        return None

    def start(self, timeout: float = 180) -> Host:
        """``launch``, then wait until nothing is ``waiting`` (at most ``timeout`` seconds, failing at once when the
        host dies or the start is interrupted); on any failure everything started is stopped again."""
        try:
            self.launch()
            deadline = time.monotonic() + timeout
            while found := self.waiting():
                if self.interrupted.is_set():
                    raise ServerError("interrupted while starting")
                if (gone := self.died()) is not None:
                    raise ServerError(gone)
                if time.monotonic() > deadline:
                    raise ServerError(f"not ready after {timeout:.0f} s: {'; '.join(found)}\n{self.log_tail()}")
                time.sleep(READY_POLL_S)
        except BaseException:
            self.stop(drain=False)
            raise
        return self

    def launch(self) -> None:
        """Check what the host serves and start its processes (and what it holds beside them)."""
        raise NotImplementedError

    def waiting(self) -> list[str]:
        """What the start still waits for (empty: ready); raises ServerError for a start that cannot succeed."""
        raise NotImplementedError

    @property
    def description(self) -> str:
        """What the launcher's first line says it starts."""
        return self.title

    @property
    def key_note(self) -> str:
        """How the keys live (token auth on), for the banner."""
        raise NotImplementedError

    @property
    def own_metrics(self) -> str:
        """The host's own metrics endpoint (beside the handlers'), for the banner."""
        raise NotImplementedError

    def probe(self) -> Probe:
        """This host's ``Probe``."""
        return Probe(self.url, tuple(self.config.models), self.work_dir)

    @staticmethod
    def problems(probe: Probe) -> list[str]:
        """What keeps the host at ``probe`` from serving every route (empty: healthy and ready)."""
        raise NotImplementedError

    @staticmethod
    def notes(probe: Probe) -> list[str]:
        """What the health check says beside a healthy answer (e.g. a process being replaced)."""
        return []

    def served_manifest(self, model: str) -> Manifest:
        raise NotImplementedError

    def export_dir(self, model: str) -> Path:
        """The export folder the route's build came from."""
        raise NotImplementedError

    def rollout(self, routes: dict[str, Path], request: Request, say: Callable[[str], None]) -> None:
        """Serve each route of ``routes`` from its new export folder without a lost request (``serving/rollout.py``);
        RolloutError, with nothing changed, when it cannot."""
        raise RolloutError(f"{self.title} cannot roll out a new export")

    def start_exporter(self) -> Path:
        """The handlers' metrics exporter over a new multiprocess folder (returned: the processes write there)."""
        multiproc = self.tmp / "prometheus"
        multiproc.mkdir()
        self.registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(self.registry, path=str(multiproc))
        self.exporter = MetricsServer(self.config.metrics_host, self.config.metrics_port, self.registry,
                                      self.config.idle_timeout, self.config.request_timeout)
        return multiproc

    def log_tail(self, lines: int = 40) -> str:
        raise NotImplementedError

    def drain(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Free what the host holds beside its process group (a key renewer, a listening socket), after the drain
        and before the group stops (a key renewal must not meet a stopping server)."""

    def stop(self, drain: bool = True) -> None:
        """Drain (when asked and running), release, stop every process of the group, the exporter, and remove the
        temp dir; each step runs even when one before it fails. Safe to call more than once."""
        with contextlib.ExitStack() as steps:  # the callbacks run last in, first out
            steps.callback(self._clean_up)
            if self.group is not None:
                steps.callback(self.group.stop)
            steps.callback(self.release)
            if drain and self.group is not None and self.group.running():
                self.drain()

    def _clean_up(self) -> None:
        if self._output is not None:
            self._output.join(timeout=5)
        if self.exporter is not None:
            self.exporter.shutdown()
            self.exporter.server_close()
            self.exporter = None
        self.drain_file.unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Host:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
