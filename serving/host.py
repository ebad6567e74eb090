"""What both hosts share (``serving/server.py``'s TorchServe, ``serving/kserve_host.py``'s KServe): a private temp
dir, the addresses and files a client or the health check reads, the keys, and a stop that always cleans up."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from fmvae_client import Keys
from prometheus_client import CollectorRegistry

from serving.httpd import MetricsServer
from serving.keys import read_keys
from serving.process import ProcessGroup
from serving.settings import DRAIN_FILE, KEY_FILE, ServerConfig


def reach(host: str) -> str:
    """The address a local client uses for a listen address (a wildcard means loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


class Host:
    """One host's process group and metrics exporter; a context manager that always cleans up. ``interrupted``
    aborts a start in progress; ``hurry`` cuts a drain short. A host defines ``start``, ``drain`` and
    ``log_tail``; ``release`` frees what it holds beside its process group."""

    kind: str  # "torchserve" or "kserve": ServerConfig.server
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
