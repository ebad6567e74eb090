"""Start and stop a TorchServe serving the model store, plus the exporter of the handlers' Prometheus metrics.

Used by ``python -m handlers`` (``make serve``), the tests and the benchmarks; its settings are a
``ServerConfig`` (``handlers/settings.py``). Each instance gets its own ports (HTTP and gRPC) and a private temp
dir (TorchServe keeps its pid file and worker sockets there), so several can run on one machine. The management
API always listens on loopback and the model (registration) API stays off.

Life cycle (docs/operations.md, faults):

- start: the archives are checked (a damaged one fails at once, named), the ports must be free (a busy one is
  named), and start returns once every model has a READY worker in this launcher's own process group; a model
  that TorchServe cannot load or whose workers die while starting fails the start within seconds, with
  TorchServe's reason.
- TorchServe never outlives its launcher: a watchdog process (``handlers/watchdog.py``) stops the whole group
  when the launcher is gone, however it ended.
- stop drains: the handlers answer every request they take up from then on with 503 ``shutting_down`` (which
  also closes its connection), the launcher waits until no request is queued or in flight (at most
  ``drain_timeout``), then stops the JVM, which stops its workers.
- logs: TorchServe's files roll over at a size cap (``handlers/log4j2.xml``), and so does ``torchserve.out``,
  the process's own output, which the launcher writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import IO

import psutil
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from handlers.settings import ServerConfig
from handlers.watchdog import signal_group

ROOT = Path(__file__).resolve().parent.parent
QUIET_SECONDS = 0.3  # a drain ends once nothing was queued or answered for this long
LOG_GRACE_S = 5.0  # how long a worker death waits for the worker's exception to reach model_log.log
# The workers' thread names in TorchServe's logs: W-<port>-<model>_<version>-stdout (or -stderr).
WORKER_VERSION = r"(?:[0-9a-f]{12}|[\d.]+)"
PORT_ROLES = {"inference_port": "inference", "management_port": "management",
              "torchserve_metrics_port": "TorchServe metrics", "metrics_port": "handler metrics",
              "grpc_inference_port": "gRPC inference", "grpc_management_port": "gRPC management",
              "explorer_port": "explorer page"}


class ServerError(Exception):
    """TorchServe cannot start or did not become ready; the message says why (and names the file or port)."""


def http_json(url: str, timeout: float = 5, token: str | None = None) -> dict | list:
    """GET ``url`` as JSON, with a bearer token when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return json.loads(response.read())


def check_archive(path: Path) -> None:
    """Raise ServerError unless ``path`` is a readable model archive: a zip whose every member passes its CRC,
    with TorchServe's MAR-INF/MANIFEST.json and the handler file it names."""
    def damaged(reason: str) -> ServerError:
        return ServerError(f"{path}: not a usable model archive ({reason}); rebuild it with `make archives`")

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise damaged(f"member {bad} is corrupt")
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            handler = manifest["model"]["handler"]
            if handler not in archive.namelist():
                raise damaged(f"its handler {handler} is missing")
    except zipfile.BadZipFile as e:
        raise damaged(f"not a zip file: {e}") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.LargeZipFile) as e:
        raise damaged(f"{type(e).__name__}: {e}") from None


def check_ports(config: ServerConfig) -> None:
    """Raise ServerError naming the first of the server's ports that something already listens on."""
    for field, role in PORT_ROLES.items():
        port = getattr(config, field)
        host = ("127.0.0.1" if "management" in field or field == "explorer_port" else config.metrics_host
                if "metrics" in field else config.host)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is free
            try:
                probe.bind((host, port))
            except OSError as e:
                raise ServerError(f"port {port} ({role}, on {host}) is in use ({e.strerror}): another server "
                                  f"is running there, or pick free ports (--{field.replace('_', '-')} ...)") from None


class RotatingFile:
    """An append-only log file that rolls over to ``.1`` .. ``.N`` at ``max_bytes``, keeping ``backups`` copies."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.file = open(path, "ab")

    def write(self, data: bytes) -> None:
        if self.file.tell() + len(data) > self.max_bytes and self.file.tell() > 0:
            self.file.close()
            for i in range(self.backups, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i - 1}") if i > 1 else self.path
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i}"))
            if self.backups == 0:
                self.path.unlink(missing_ok=True)
            self.file = open(self.path, "ab")
        self.file.write(data)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TorchServe:
    """One TorchServe process group, its watchdog and its metrics exporter; a context manager that always
    cleans up. ``interrupted`` aborts a start in progress; ``hurry`` cuts a drain short."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.process: subprocess.Popen | None = None  # the torchserve wrapper: session leader, pid = group id
        self.exporter = None
        self._deaths: dict[str, float] = {}  # model -> when its workers were first seen dying while loading
        self.registry: CollectorRegistry | None = None
        self.watchdog: subprocess.Popen | None = None
        self._watchdog_pipe: int | None = None  # write end; the watchdog acts when it closes
        self._output: threading.Thread | None = None
        self._log_offsets: dict[str, int] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="fmvae-serve-"))
        self.interrupted = threading.Event()
        self.hurry = threading.Event()

    @staticmethod
    def _reach(host: str) -> str:
        """The address a local client uses for a listen address (a wildcard means loopback)."""
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    @property
    def url(self) -> str:
        return f"http://{self._reach(self.config.host)}:{self.config.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.config.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._reach(self.config.metrics_host)}:{self.config.metrics_port}/metrics"

    @property
    def torchserve_metrics_url(self) -> str:
        return f"http://{self._reach(self.config.metrics_host)}:{self.config.torchserve_metrics_port}/metrics"

    @property
    def work_dir(self) -> Path:
        return self.config.work_dir or self.tmp

    @property
    def key_file(self) -> Path:
        """TorchServe's key file (token auth on): {"management": {"key": ...}, "inference": {...}, "API": {...}}."""
        return self.work_dir / "key_file.json"

    @property
    def drain_file(self) -> Path:
        """Present while the server drains: the handlers refuse new work, the health check says unhealthy."""
        return self.work_dir / "draining"

    def key(self, kind: str) -> str | None:
        """The current "inference" or "management" key, or None with token auth off."""
        if not self.config.token_auth:
            return None
        return json.loads(self.key_file.read_text())[kind]["key"]

    @property
    def log_dir(self) -> Path:
        """Absolute: TorchServe runs in the work dir and resolves relative paths from there."""
        return (self.config.log_dir or self.tmp / "logs").resolve()

    def start(self, timeout: float = 180) -> TorchServe:
        """Start TorchServe and the exporter; return once every model has a ready worker of this server."""
        try:  # a failure at any step must not leave the exporter, the JVM, the watchdog or the temp dir behind
            torchserve = Path(sys.executable).parent / "torchserve"
            if shutil.which("java") is None:
                raise ServerError("java not found: TorchServe needs a Java 17 runtime "
                                  "(Debian: apt-get install openjdk-17-jre-headless)")
            store = self.config.model_store.resolve()
            missing = [m for m in self.config.models if not (store / f"{m}.mar").is_file()]
            if missing:
                raise ServerError(f"{store}: no archive for {', '.join(missing)}; run `make archives`")
            for model in self.config.models:
                check_archive(store / f"{model}.mar")
            check_ports(self.config)
            multiproc = self.tmp / "prometheus"
            multiproc.mkdir()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._log_offsets = {p.name: p.stat().st_size for p in self.log_dir.glob("*.log")}
            self.drain_file.unlink(missing_ok=True)  # left by a launcher that was killed while draining
            properties = self.tmp / "config.properties"
            properties.write_text(self.config.properties(store))
            env = os.environ | {
                "TMPDIR": str(self.tmp), "TEMP": str(self.tmp),  # pid file (Python) and java.io.tmpdir (sockets)
                "LOG_LOCATION": str(self.log_dir), "METRICS_LOCATION": str(self.log_dir),
                "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "FMVAE_DRAIN_FILE": str(self.drain_file),
            }
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry, path=str(multiproc))
            self.exporter, _ = start_http_server(self.config.metrics_port, self.config.metrics_host,
                                                 registry=self.registry)
            self.process = subprocess.Popen(
                [str(torchserve), "--start", "--foreground", "--ncs", "--ts-config", str(properties),
                 "--model-store", str(store)],
                env=env, cwd=self.work_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True)
            self._start_watchdog()
            output = RotatingFile(self.log_dir / "torchserve.out", self.config.log_max_bytes, self.config.log_backups)
            self._output = threading.Thread(target=self._copy_output, args=(self.process.stdout, output),
                                            name="torchserve-output", daemon=True)
            self._output.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop(drain=False)
            raise
        return self

    def _start_watchdog(self) -> None:
        """The process that stops this server's group once this launcher is gone (see handlers/watchdog.py)."""
        read, self._watchdog_pipe = os.pipe()
        try:
            self.watchdog = subprocess.Popen([sys.executable, "-m", "handlers.watchdog", str(self.process.pid)],
                                             stdin=read, cwd=ROOT, start_new_session=True)
        finally:
            os.close(read)

    @staticmethod
    def _copy_output(stream: IO[bytes], output: RotatingFile) -> None:
        """Copy TorchServe's own stdout and stderr into ``torchserve.out`` until it closes them."""
        try:
            for line in iter(stream.readline, b""):
                output.write(line)
        finally:
            output.close()

    def wait_ready(self, timeout: float) -> None:
        """Poll until each model has a READY worker that belongs to this server; fail fast on load failures."""
        deadline = time.monotonic() + timeout
        pending = set(self.config.models)
        while pending:
            if self.interrupted.is_set():
                raise ServerError("interrupted while starting")
            if self.process.poll() is not None:
                raise ServerError(f"TorchServe exited with code {self.process.returncode}\n{self.log_tail()}")
            failure = self.load_failure(pending)
            if failure:
                raise ServerError(failure)
            if time.monotonic() > deadline:
                raise ServerError(f"models {sorted(pending)} not ready after {timeout:.0f} s\n{self.log_tail()}")
            for model in sorted(pending):
                try:
                    described = http_json(f"{self.management_url}/models/{model}", token=self.key("management"))
                except (urllib.error.URLError, OSError, ValueError, KeyError):
                    continue
                ready = [w["pid"] for d in described for w in d.get("workers", []) if w.get("status") == "READY"]
                if ready and not all(self.owns(pid) for pid in ready):
                    raise ServerError(f"the management API on port {self.config.management_port} answers for "
                                      f"workers this launcher did not start (pids {ready}): another server?")
                if ready:
                    pending.discard(model)
            time.sleep(0.2)

    def owns(self, pid: int) -> bool:
        """Whether process ``pid`` is in this server's process group."""
        try:
            return os.getpgid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def load_failure(self, models: set[str]) -> str | None:
        """TorchServe's reason why one of ``models`` cannot start, from its logs: it could not load the archive,
        or a worker died while loading it (the last exception line the worker printed)."""
        ts_log = self._read_log("ts_log.log")
        for model in sorted(models):
            failed = re.search(rf"Failed to load model: {re.escape(model)}\.mar\n(.*)", ts_log)
            if failed:
                return (f"{self.config.model_store / model}.mar: TorchServe could not load it: "
                        f"{failed.group(1).strip()}")
            if f"Load model failed: {model}, error: Worker died." in ts_log:
                worker = re.findall(rf"W-\d+-{re.escape(model)}_{WORKER_VERSION}-std(?:out|err) MODEL_LOG - "
                                    r"(\w[\w.]*(?:Error|Exception)\b.*)", self._read_log("model_log.log"))
                # The worker's output reaches model_log.log a moment after ts_log.log says it died: wait for it
                # (at most LOG_GRACE_S) rather than report a death without its reason.
                first_seen = self._deaths.setdefault(model, time.monotonic())
                if not worker and time.monotonic() - first_seen < LOG_GRACE_S:
                    continue
                reason = worker[-1] if worker else "no exception in model_log.log"
                return f"model {model}: its workers die while loading: {reason} (see {self.log_dir}/model_log.log)"
        return None

    def _read_log(self, name: str) -> str:
        """What this server has written to one of TorchServe's logs (the log folder may hold earlier runs')."""
        path = self.log_dir / name
        if not path.is_file():
            return ""
        with open(path, "rb") as f:
            offset = self._log_offsets.get(name, 0)
            f.seek(offset if offset <= path.stat().st_size else 0)  # a smaller file has rolled over since
            return f.read().decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of TorchServe's logs, for error messages."""
        text = []
        for name in ("torchserve.out", "ts_log.log", "model_log.log"):
            path = self.log_dir / name
            if path.is_file():
                text += [f"--- {path}"] + path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    def in_flight(self) -> tuple[int, float]:
        """(requests waiting in TorchServe's queues, requests the handlers have answered so far)."""
        pending = 0
        for model in self.config.models:
            for described in http_json(f"{self.management_url}/models/{model}", token=self.key("management")):
                pending += described.get("jobQueueStatus", {}).get("pendingRequests", 0)
        answered = sum(s.value for metric in self.registry.collect() if metric.name == "fmvae_requests"
                       for s in metric.samples if s.name == "fmvae_requests_total")
        return pending, answered

    def drain(self) -> None:
        """Refuse new work (503 shutting_down from the handlers) and wait until nothing is queued or being
        answered for QUIET_SECONDS, at most ``drain_timeout`` seconds or until ``hurry`` is set."""
        self.drain_file.touch()
        deadline = time.monotonic() + self.config.drain_timeout
        last, quiet_since = None, time.monotonic()
        while time.monotonic() < deadline and not self.hurry.is_set():
            try:
                state = self.in_flight()
            except (urllib.error.URLError, OSError, ValueError):
                return  # the management API is gone: nothing left to wait for
            if state != last or state[0] > 0:
                last, quiet_since = state, time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_SECONDS:
                return
            time.sleep(0.05)

    def stop(self, drain: bool = True) -> None:
        """Drain (when asked and running), stop the JVM and every process of the group, the exporter and the
        watchdog, and remove the temp dir. Safe to call more than once."""
        try:
            if self.process is not None and self.process.poll() is None:
                if drain:
                    self.drain()
                self._stop_jvm()
            if self.process is not None:  # workers that outlived the JVM are still in its process group
                signal_group(self.process.pid, signal.SIGKILL, 10)
                self.process.wait()
        finally:
            if self._output is not None:
                self._output.join(timeout=5)
            if self.exporter is not None:
                self.exporter.shutdown()
                self.exporter.server_close()
                self.exporter = None
            if self._watchdog_pipe is not None:  # the watchdog finds the group gone and exits
                os.close(self._watchdog_pipe)
                self._watchdog_pipe = None
                try:
                    self.watchdog.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.watchdog.kill()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _stop_jvm(self) -> None:
        """SIGTERM to the JVM alone (its shutdown hook closes the listeners and stops the workers); the wrapper
        exits with it. After 30 s, or with no JVM found, the whole group gets SIGKILL."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.Error:
            children = []
        for child in children:
            child.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30 if children else 0)
        except subprocess.TimeoutExpired:
            signal_group(self.process.pid, signal.SIGKILL, 10)

    def __enter__(self) -> TorchServe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
