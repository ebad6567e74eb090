"""Run a real Prometheus (Debian's ``prometheus`` package) on loopback against given targets, and query it.

Used by the monitoring tests and by ``python -m loadtest`` for the server-side latency cross-check. The
config is ``monitoring/prometheus.yml`` with the targets, interval and rule-file paths replaced; the data
lives in a temp dir that ``stop()`` removes.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from monitoring.errors import PrometheusError

MONITORING = Path(__file__).resolve().parent
CONFIG = MONITORING / "prometheus.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_config(targets: dict[str, str], interval: str) -> dict:
    """monitoring/prometheus.yml with each job's target replaced (job -> "host:port") and absolute rule paths."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(MONITORING / f) for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


class Prometheus:
    """One Prometheus process; a context manager that always stops it and removes its data."""

    def __init__(self, targets: dict[str, str], interval: str = "1s") -> None:
        self.targets, self.interval = targets, interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="fmvae-prometheus-"))
        self.process: subprocess.Popen | None = None
        self.log = None  # Prometheus' own output, kept in the temp dir

    def start(self, timeout: float = 30) -> Prometheus:
        """Start Prometheus and wait until it is ready; on any failure (Ctrl-C included) stop it and remove its data."""
        try:
            binary = shutil.which("prometheus")
            if binary is None:
                raise PrometheusError("prometheus not found: install Debian's prometheus package (make setup does)")
            config = self.tmp / "prometheus.yml"
            config.write_text(yaml.safe_dump(render_config(self.targets, self.interval)))
            self.log = open(self.tmp / "prometheus.log", "wb")  # closed in stop()
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={self.tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
                stdout=self.log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                        if response.status == 200:
                            return self
                except (urllib.error.URLError, OSError):
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.tmp / "prometheus.log").read_text()
                    raise PrometheusError(f"Prometheus did not start:\n{log}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    def query(self, expr: str) -> list[dict]:
        """Instant query through the HTTP API; the result vector (or matrix) as Prometheus returns it."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise PrometheusError(f"query {expr!r} failed: {e.read().decode()}") from None
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 30) -> list[dict]:
        """Poll ``expr`` until it returns data (scrapes and rule evaluations take an interval or two)."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(expr)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
            self.log = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
