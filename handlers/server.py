"""Start and stop a TorchServe serving the model store, plus the exporter of the handlers' Prometheus metrics.

Used by ``python -m handlers`` (``make serve``), the tests and the benchmarks; its settings are a
``ServerConfig`` (``handlers/settings.py``). Each instance gets its own
ports (HTTP and gRPC) and a private temp dir (TorchServe keeps its pid file and worker sockets there), so
several can run on one machine. The management API always listens on loopback and the model (registration)
API stays off. Defaults suit ``make serve``: everything on 127.0.0.1, token auth off; the container turns
token auth on and opens the inference (``host``) and metrics (``metrics_host``) addresses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from handlers.settings import ServerConfig


class ServerError(Exception):
    """TorchServe did not start or a model did not become ready; the message holds the log's tail."""


def http_json(url: str, timeout: float = 5, token: str | None = None) -> dict | list:
    """GET ``url`` as JSON, with a bearer token when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return json.loads(response.read())


class TorchServe:
    """One TorchServe process group and its metrics exporter; a context manager that always cleans up."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.process: subprocess.Popen | None = None
        self.exporter = None
        self.tmp = Path(tempfile.mkdtemp(prefix="fmvae-serve-"))

    @staticmethod
    def _reach(host: str) -> str:
        """The address a local client uses for a listen address (a wildcard means loopback)."""
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    @property
    def url(self) -> str:
        return f"http://{self._reach(self.config.host)}:{self.config.inference_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._reach(self.config.metrics_host)}:{self.config.metrics_port}/metrics"

    @property
    def work_dir(self) -> Path:
        return self.config.work_dir or self.tmp

    @property
    def key_file(self) -> Path:
        """TorchServe's key file (token auth on): {"management": {"key": ...}, "inference": {...}, "API": {...}}."""
        return self.work_dir / "key_file.json"

    def key(self, kind: str) -> str | None:
        """The current "inference" or "management" key, or None with token auth off."""
        if not self.config.token_auth:
            return None
        return json.loads(self.key_file.read_text())[kind]["key"]

    @property
    def log_dir(self) -> Path:
        return self.config.log_dir or self.tmp / "logs"

    def start(self, timeout: float = 180) -> TorchServe:
        """Start TorchServe and the exporter; return once every model has a ready worker."""
        try:  # a failure at any step must not leave the exporter, the JVM or the temp dir behind
            torchserve = Path(sys.executable).parent / "torchserve"
            if shutil.which("java") is None:
                raise ServerError("java not found: TorchServe needs a Java 17 runtime "
                                  "(Debian: apt-get install openjdk-17-jre-headless)")
            store = self.config.model_store.resolve()
            missing = [m for m in self.config.models if not (store / f"{m}.mar").is_file()]
            if missing:
                raise ServerError(f"{store}: no archive for {', '.join(missing)}; run `make archives`")
            multiproc = self.tmp / "prometheus"
            multiproc.mkdir()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            properties = self.tmp / "config.properties"
            properties.write_text(self.config.properties(store))
            env = os.environ | {
                "TMPDIR": str(self.tmp), "TEMP": str(self.tmp),  # pid file (Python) and java.io.tmpdir (sockets)
                "LOG_LOCATION": str(self.log_dir), "METRICS_LOCATION": str(self.log_dir),
                "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
            }
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(multiproc))
            self.exporter, _ = start_http_server(self.config.metrics_port, self.config.metrics_host,
                                                 registry=registry)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / "torchserve.out", "ab") as out:
                self.process = subprocess.Popen(
                    [str(torchserve), "--start", "--foreground", "--ncs", "--ts-config", str(properties),
                     "--model-store", str(store)],
                    env=env, cwd=self.work_dir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Poll the management API until each model has a READY worker."""
        deadline = time.monotonic() + timeout
        management = f"http://127.0.0.1:{self.config.management_port}"
        pending = set(self.config.models)
        while pending:
            if self.process.poll() is not None:
                raise ServerError(f"TorchServe exited with code {self.process.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"models {sorted(pending)} not ready after {timeout:.0f} s\n{self.log_tail()}")
            for model in sorted(pending):
                try:
                    described = http_json(f"{management}/models/{model}", token=self.key("management"))
                except (urllib.error.URLError, OSError, ValueError, KeyError):
                    continue
                if any(w.get("status") == "READY" for d in described for w in d.get("workers", [])):
                    pending.discard(model)
            time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of TorchServe's logs, for error messages."""
        text = []
        for name in ("torchserve.out", "ts_log.log", "model_log.log"):
            path = self.log_dir / name
            if path.is_file():
                text += [f"--- {path}"] + path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    def stop(self) -> None:
        """Stop TorchServe (the whole process group: launcher, JVM, workers) and the exporter."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        if self.process is not None:  # workers that outlived the launcher are still in its process group
            deadline = time.monotonic() + 10
            try:
                while time.monotonic() < deadline:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    time.sleep(0.05)
            except ProcessLookupError:
                pass
        if self.exporter is not None:
            self.exporter.shutdown()
            self.exporter.server_close()
            self.exporter = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> TorchServe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
