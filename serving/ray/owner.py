"""The process that owns the Ray host's cluster and deployments: ``python -m serving.ray.owner --settings FILE``.

Started by the launcher (``serving/ray/host.py``) in a session of its own, before the fronts. It joins the cluster at
``--ray-address``, or starts a local one (a head that runs nothing, on loopback, and ``--nodes`` worker nodes) in
the host's temp dir; starts Serve without its HTTP proxy (the fronts are KServe's ModelServer); and runs one
application per route: a deployment of ``replica.Route`` that autoscales between ``--min-replicas`` and
``--max-replicas`` on its calls in flight. Once every route has a running replica it writes the cluster's address
to the status file; on SIGTERM it stops Serve and the cluster it started (about 3 s; a cluster it joined keeps
running, with its deployments), and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

FAST_HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
READY_S = 300.0  # how long the deployments may take to run a replica each


def start_cluster(settings: dict) -> tuple[str, object | None]:
    """(the address fronts connect to, the local cluster or None when joining one)."""
    import ray

    if settings["ray_address"]:
        ray.init(address=settings["ray_address"], namespace="fmvae", log_to_driver=False)
        return settings["ray_address"], None
    from ray.cluster_utils import Cluster

    local = {"include_dashboard": False, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args=local | {"num_cpus": 0, "_system_config": FAST_HEALTH})
    for _ in range(settings["nodes"]):
        cluster.add_node(**local | {"num_cpus": settings["node_cpus"]})
    ray.init(address=cluster.address, namespace="fmvae", log_to_driver=False)
    return cluster.address, cluster


def deploy(settings: dict) -> None:
    """One Serve application per route, started together without waiting (joining a cluster: the routes it does not
    run yet; a RayService's or an earlier front's stay as they are); then wait until each runs a replica."""
    from ray import serve
    from ray.serve.api import RunTarget
    from ray.serve.config import ProxyLocation
    from ray.serve.schema import LoggingConfig

    from serving.ray.replica import Route

    quiet = LoggingConfig(enable_access_log=False, log_level="WARNING")
    serve.start(proxy_location=ProxyLocation.Disabled, logging_config=quiet)
    ray = settings["ray"]
    running = set(serve.status().applications) if settings["ray_address"] else set()
    targets = []
    for name, route in settings["routes"].items():
        if name in running:
            continue
        deployment = serve.deployment(
            Route, name=name, max_ongoing_requests=ray["calls_per_replica"] + 2, logging_config=quiet,
            autoscaling_config={"min_replicas": ray["min_replicas"], "max_replicas": ray["max_replicas"],
                                "target_ongoing_requests": ray["target_ongoing"], "upscale_delay_s": 1,
                                "downscale_delay_s": 5, "metrics_interval_s": 0.5, "look_back_period_s": 2},
            ray_actor_options={"num_cpus": ray["replica_cpus"], "runtime_env": {"env_vars": settings["env"]}})
        app = deployment.bind(name, route["operation"], route["export_dir"], route["worker"])
        targets.append(RunTarget(app, name=name, route_prefix=None, logging_config=quiet))
    serve.run_many(targets, wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    deadline = time.monotonic() + READY_S
    while True:
        applications = {name: app for name, app in serve.status().applications.items() if name in settings["routes"]}
        if len(applications) == len(settings["routes"]) and all(a.status == "RUNNING" for a in applications.values()):
            return
        failed = {name: app.message for name, app in applications.items() if app.status == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError(f"deployments failed: {failed}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the deployments did not run a replica each in {READY_S:g} s: "
                               f"{ {name: app.status for name, app in applications.items()} }")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m serving.ray.owner", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--settings", type=Path, required=True, help="the launcher's document (JSON)")
    args = cli.parse_args(argv)
    settings = json.loads(args.settings.read_text())
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    status = Path(settings["status_file"])
    try:
        address, cluster = start_cluster(settings)
        for signum in (signal.SIGTERM, signal.SIGINT):  # ray.init put its own handler in place
            signal.signal(signum, lambda *_: stop.set())
        deploy(settings)
    except Exception as e:  # noqa: BLE001 - the launcher reads why from the status file
        status.write_text(json.dumps({"state": "failed", "why": f"{type(e).__name__}: {e}"}))
        return 1
    import ray
    from ray import serve

    print(f"ray owner {os.getpid()}: ready, {len(settings['routes'])} deployments on {address}", flush=True)
    while not stop.is_set():  # the replicas of each route, for the health check, once a second
        try:
            replicas = {name: app.deployments[name].replica_states for name, app in serve.status().applications.items()}
            nodes = sum(node["Alive"] and node["Resources"].get("CPU", 0) > 0 for node in ray.nodes())
        except Exception as e:  # noqa: BLE001 - the controller restarting: say so, try again
            replicas, nodes = {"?": str(e)}, 0
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps({"state": "ready", "address": address, "nodes": nodes, "replicas": replicas}))
        os.replace(tmp, status)
        stop.wait(1.0)

    if cluster is not None:  # a cluster it joined keeps its deployments
        serve.shutdown()
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
