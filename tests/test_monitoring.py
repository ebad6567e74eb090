"""Prometheus config and rules through promtool, and the Grafana dashboard proven against a live stack:
a real TorchServe, a real Prometheus scraping it, a short Locust run through the load-test runner."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from monitoring.prometheus import MONITORING, Prometheus
from serving.settings import MODELS, ServerConfig, TorchServeConfig
from serving.torchserve.host import TorchServe

pytestmark = pytest.mark.integration  # a real TorchServe (Java) or Prometheus

DASHBOARD = MONITORING / "grafana" / "dashboards" / "fmvae.json"
ROOT = MONITORING.parent


@pytest.mark.parametrize("args", [
    ["check", "config", "prometheus.yml"],
    ["check", "rules", "rules.yml", "alerts.yml"],
    ["test", "rules", "tests/alerts_test.yml"],
])
def test_promtool(args):
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: `make setup` installs Debian's prometheus package")
    result = subprocess.run(["promtool", *args], cwd=MONITORING, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("error", [KeyboardInterrupt(), http.client.IncompleteRead(b"")])
def test_a_start_interrupted_after_prometheus_started_leaves_nothing(error, monkeypatch):
    """start() (``with Prometheus(...)``'s entry) stops the process and removes its temp dir on any failure."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not found: `make setup` installs Debian's prometheus package")
    prometheus = Prometheus({"fmvae-handlers": "127.0.0.1:9", "torchserve": "127.0.0.1:9"})

    def probe(*args: object, **kwargs: object) -> None:  # the readiness probe, once Prometheus runs
        assert prometheus.process is not None and prometheus.process.poll() is None
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", probe)
    try:
        with pytest.raises(type(error)):
            prometheus.start()
        assert prometheus.process.poll() is not None and not prometheus.tmp.exists()
    finally:
        prometheus.stop()


def panel_queries() -> list[tuple[str, str, bool]]:
    """(panel title, PromQL, gpu_only) for every target of every dashboard panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"], "GPU hosts only" in p.get("description", ""))
            for p in dashboard["panels"] for t in p["targets"]]


def test_provisioning_points_at_the_dashboard():
    provider = (MONITORING / "grafana" / "provisioning" / "dashboards" / "fmvae.yml").read_text()
    assert "/var/lib/grafana/dashboards" in provider
    datasource = (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    uids = {t["datasource"]["uid"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]}
    assert uids == {"prometheus"} and "uid: prometheus" in datasource


@pytest.fixture(scope="module")
def stack(current_store):
    config = ServerConfig(torchserve=TorchServeConfig(model_store=current_store)).with_free_ports()
    with TorchServe(config) as server:
        scrape = {"fmvae-handlers": f"127.0.0.1:{config.metrics_port}",
                  "torchserve": f"127.0.0.1:{config.torchserve.torchserve_metrics_port}"}
        with Prometheus(scrape) as prometheus:
            yield server, prometheus


def post(server, model: str, body: dict) -> int:
    request = urllib.request.Request(f"{server.url}/predictions/{model}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def loadtest(server, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    metrics = f"http://127.0.0.1:{server.config.metrics_port}/metrics"
    return subprocess.run([sys.executable, "-m", "loadtest", "--host", server.url, "--metrics-url", metrics,
                           "--users", "4", "--spawn-rate", "4", "--out", str(tmp_path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env=os.environ | {"LOADTEST_N": "1,4,16", "LOADTEST_STEPS": "2,10",
                                            "LOADTEST_WAIT": "0.01,0.05"})  # short runs need busy users


def test_loadtest_passes_and_every_panel_has_data(stack, tmp_path):
    server, prometheus = stack
    for body in ({"n": 0}, {"n": 1, "colour": "red"}):  # a few rejected requests, so error panels have data
        assert post(server, "sample", body) == 400
    result = loadtest(server, tmp_path, "--duration", "12")
    assert result.returncode == 0, result.stdout + result.stderr
    run = next(tmp_path.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert (run / "report.html").is_file() and (run / "locust_stats.csv").is_file()
    assert set(summary["endpoints"]) == set(MODELS)  # the Locust mix covers every route
    for name, row in summary["endpoints"].items():
        assert row["requests"] > 3 and row["failures"] == 0 and row["passed"], name
        assert 0 < row["server_p50_ms"] <= row["p50_ms"] + 1  # the handler's part of the whole request
        assert f"| {name} | {row['requests']} |" in result.stdout
    by_route = prometheus.wait_for("fmvae:requests:rate1m", timeout=10)
    assert {series["metric"]["model"] for series in by_route} >= set(MODELS)  # every route reaches the panels

    gpu = torch.cuda.is_available()
    empty = []
    for title, expr, gpu_only in panel_queries():
        if gpu_only and not gpu:
            continue
        if not prometheus.wait_for(expr, timeout=10):
            empty.append(f"{title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_loadtest_fails_when_p50_is_over_target(stack, tmp_path):
    server, _ = stack
    result = loadtest(server, tmp_path, "--duration", "4", "--p50", "sample=0.5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "| sample |" in result.stdout and "FAIL" in result.stdout
