"""The Ray host's pieces that need no cluster: the seed the front draws, the health check's and the metrics' account
of the replicas, and the RayService's application builder."""

from __future__ import annotations

import json

import pytest

from runtime.manifest import Manifest
from serving.probe import Probe
from serving.ray import replica
from serving.ray.host import OWNER_STATUS, RayHost, ReplicaCollector
from serving.ray.lane import with_seed
from serving.routes import ROUTES
from serving.settings import MODELS, worker_config
from tests.conftest import ARTIFACTS


def test_the_front_draws_a_seed_only_where_the_worker_would():
    seeded = json.loads(with_seed(b'{"n": 2}', "sample"))
    assert seeded["n"] == 2 and 0 <= seeded["seed"] < 2**63
    assert json.loads(with_seed(b'{"n": 2}', "sample"))["seed"] != seeded["seed"]
    assert with_seed({"steps": 3}, "walk")["steps"] == 3 and "seed" in with_seed({"steps": 3}, "walk")
    for body, operation in [(b'{"n": 2, "seed": 5}', "sample"), (b'{"latents": [[0, 0]]}', "decode"),
                            (b'{"n": 300, "n": 2}', "sample"), (b'{"n": NaN}', "sample"), (b"{", "sample"),
                            (b"[1]", "sample")]:
        assert with_seed(body, operation) == body, body  # as it came: the worker answers or refuses it the same way


def test_the_replicas_reach_the_health_check_and_the_metrics(tmp_path):
    status = tmp_path / OWNER_STATUS
    probe = Probe("http://127.0.0.1:1", ("sample",), tmp_path)
    assert [n for n in RayHost.notes(probe) if "replicas" in n] == []  # nothing written yet
    assert ReplicaCollector(status).collect()[0].samples == []
    status.write_text(json.dumps({"state": "ready", "nodes": 2, "replicas": {"sample": {"RUNNING": 2, "STARTING": 1},
                                                                             "decode": {"RUNNING": 1}}}))
    assert "2 worker nodes; replicas: sample 2 running/1 starting, decode 1 running" in RayHost.notes(probe)
    samples = {(s.labels["model"], s.labels["state"]): s.value for s in ReplicaCollector(status).collect()[0].samples}
    assert samples == {("sample", "running"): 2, ("sample", "starting"): 1, ("decode", "running"): 1}
    status.write_text("{half a docu")
    assert ReplicaCollector(status).collect()[0].samples == []


@pytest.mark.parametrize("route", ["sample", "decode2d"])
def test_a_ray_service_application_is_the_route_the_host_deploys(route):
    built = replica.app({"route": route, "export_store": str(ARTIFACTS.parent)})
    deployment = built._bound_deployment
    assert deployment.name == route
    name, operation, export_dir, worker = deployment.init_args
    assert (name, operation) == (route, ROUTES[route].operation)
    assert export_dir.startswith(str(ARTIFACTS.parent.resolve()))
    spec = MODELS[route]
    assert worker == worker_config(spec, Manifest.read(ARTIFACTS.parent / spec.export), 1).to_dict()
    with pytest.raises(KeyError):
        replica.app({"route": "nope"})
