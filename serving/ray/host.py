"""Start and stop the Ray host: the KServe host's fronts (``serving/kserve/``: every route in each of
``--processes`` processes on one socket, with its request path, auth, limits, drain and metrics) whose routes are
answered by Ray Serve deployments (``owner.py``) instead of workers of their own.

Before the fronts start, the cluster's owner does: it joins ``--ray-address`` or starts a local cluster of
``--nodes`` worker nodes in the host's temp dir, deploys every route and says where the cluster is. A stop drains
the fronts as the KServe host does, then stops the owner (Serve, then the local cluster) and kills whatever of
its session is left.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from runtime.cpus import available_cpus
from serving.errors import RolloutError, ServerError
from serving.kserve.host import KServe
from serving.logs import RotatingFile, copy_output
from serving.probe import Probe
from serving.process import ProcessGroup
from serving.rollout import Request
from serving.settings import ROOT, ServerConfig

OWNER_STATUS = "ray-owner.json"  # in the working directory: the cluster's address and each route's replicas
OWNER_OUTPUT = "ray.out"  # the owner's output (Ray's own logs stay in its session folder), in the log folder
OWNER_START_S = 300.0
OWNER_STOP_S = 15.0  # the owner's clean stop takes about 3 s; one stuck in a Ray call is killed after this


def read_status(path: Path) -> dict:
    """The owner's status file (empty before it writes one)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def replicas(state: dict) -> dict[str, dict[str, int]]:
    """Each route's replicas by state (``{"RUNNING": 2, "STARTING": 1}``) from the owner's status."""
    found = state.get("replicas")
    return {route: phases for route, phases in found.items() if isinstance(phases, dict)} \
        if isinstance(found, dict) else {}


class ReplicaCollector:
    """``fmvae_serving_replicas{model, state}`` on the handlers' metrics port, from the owner's status file."""

    def __init__(self, status_file: Path) -> None:
        self.status_file = status_file

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily("fmvae_serving_replicas", "Each route's Ray Serve replicas by state (the Ray host)",
                                   labels=["model", "state"])
        for route, phases in replicas(read_status(self.status_file)).items():
            for phase, n in phases.items():
                family.add_metric([route, phase.lower()], n)
        return [family]


class RayHost(KServe):
    """The KServe host's fronts over Ray Serve deployments; the owner of the cluster is a process group of its own."""

    kind = "ray"
    title = "the Ray host"

    def __init__(self, config: ServerConfig | None = None, specs: dict | None = None) -> None:
        super().__init__(config or ServerConfig(server="ray"), specs)
        # A front spends about as much CPU per request as a replica (make serve-bench): on one machine the fronts
        # and the local worker nodes split the CPUs.
        self.processes = self.config.kserve.processes or max(1, available_cpus() // 2)
        self.owner: ProcessGroup | None = None
        # Ray's files in the temp dir; no usage report; the fronts' Serve router on their own event loop (no thread
        # hop per call); a local cluster's token (Ray's token auth: its ports listen on the machine's address),
        # given to the owner and the fronts alone. Joining a cluster, its token comes from the environment.
        self.front_env = {"RAY_TMPDIR": str(self.tmp / "ray"), "RAY_USAGE_STATS_ENABLED": "0",
                          "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
        if not self.config.ray.ray_address:
            self.front_env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

    @property
    def description(self) -> str:
        where = self.config.ray.ray_address or f"a local cluster of {self.nodes} worker nodes"
        return f"KServe's ModelServer ({self.processes} processes) in front of Ray Serve on {where}"

    @property
    def max_replicas(self) -> int:
        """Each route's most replicas: the setting, or one per worker node (more on one node only take CPU from the
        front and the other replicas: make serve-bench)."""
        return max(self.config.ray.min_replicas, self.config.ray.max_replicas or self.nodes)

    @property
    def sessions(self) -> list[int]:
        """The fronts' session and the cluster owner's (Ray's processes: GCS, raylets, Serve's replicas)."""
        return [*super().sessions, *([self.owner.pid] if self.owner else [])]

    @property
    def nodes(self) -> int:
        return self.config.ray.nodes or max(1, available_cpus() // 2)

    @property
    def owner_status(self) -> Path:
        return self.work_dir / OWNER_STATUS

    def before_fronts(self, multiproc: Path) -> None:
        """Start the cluster's owner and wait until every route runs a replica; the fronts then join it."""
        ray = self.config.ray
        routes = {name: {"operation": r.operation, "export_dir": r.export_dir, "worker": r.worker.to_dict()}
                  for name, r in self.settings_routes().items()}
        replica_env = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "FMVAE_WORKER_THREADS": "1",
                       "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "PYTHONPATH": str(ROOT)}
        document = self.tmp / "ray-owner-settings.json"
        document.write_text(json.dumps({"routes": routes, "ray": asdict(ray) | {"max_replicas": self.max_replicas},
                                        "ray_address": ray.ray_address,
                                        "nodes": self.nodes, "node_cpus": available_cpus(), "env": replica_env,
                                        "status_file": str(self.owner_status)}))
        self.owner_status.unlink(missing_ok=True)
        env = os.environ | self.front_env | {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
        (self.tmp / "ray").mkdir()
        self.owner = ProcessGroup([sys.executable, "-m", "serving.ray.owner", "--settings", str(document)], env,
                                  ROOT, leftovers=[self.tmp, self.owner_status], forwards=True,
                                  stop_s=OWNER_STOP_S)
        output = RotatingFile(self.log_dir / OWNER_OUTPUT, self.config.log_max_bytes, self.config.log_backups)
        copy_output(self.owner.process.stdout, output, "ray-output")
        deadline = time.monotonic() + OWNER_START_S
        while (state := self.owner_state()).get("state") != "ready":
            if state.get("state") == "failed" or not self.owner.running():
                raise ServerError(f"the Ray cluster did not start: {state.get('why', 'its owner exited')}\n"
                                  f"{self.owner_output()}")
            if self.interrupted.is_set():
                raise ServerError("interrupted while starting")
            if time.monotonic() > deadline:
                raise ServerError(f"the Ray cluster did not run every route in {OWNER_START_S:g} s")
            time.sleep(0.2)
        self.ray_address = state["address"]

    def settings_routes(self) -> dict:
        """The routes' settings as the fronts get them (the KServe host's, built early)."""
        from serving.kserve.settings import ProcessSettings

        return ProcessSettings.of(self.config, self.specs, self.processes, self.tmp, None, None).routes

    def owner_state(self) -> dict:
        return read_status(self.owner_status)

    def owner_output(self, limit: int = 4000) -> str:
        """The end of the owner's output, for a failed start's message."""
        try:
            with open(self.log_dir / OWNER_OUTPUT, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def start_exporter(self) -> Path:
        """The KServe host's exporter, which also says each route's replicas (``fmvae_serving_replicas``)."""
        multiproc = super().start_exporter()
        self.registry.register(ReplicaCollector(self.owner_status))
        return multiproc

    @staticmethod
    def notes(probe: Probe) -> list[str]:
        """The KServe host's notes, and the cluster's worker nodes and each route's replicas (the owner's account)."""
        notes = KServe.notes(probe)
        state = read_status(probe.work_dir / OWNER_STATUS)
        if "replicas" not in state:
            return notes
        counted = ", ".join(f"{route} {'/'.join(f'{n} {phase.lower()}' for phase, n in phases.items())}"
                            for route, phases in replicas(state).items())
        return [*notes, f"{state.get('nodes', '?')} worker nodes; replicas: {counted}"]

    def rollout(self, routes: dict[str, Path], request: Request, say: Callable[[str], None]) -> None:
        raise RolloutError("the Ray host rolls out through Ray Serve (a new deployment's replicas replace the old "
                           "ones): `make rollout` serves the TorchServe and KServe hosts")

    def release(self) -> None:
        """The fronts' socket, then the cluster: its owner stops Serve and the local cluster; what is left of its
        session is killed."""
        super().release()
        if self.owner is not None:
            self.owner.stop()
            self.owner_status.unlink(missing_ok=True)
