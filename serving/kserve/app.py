"""What each process of the KServe host runs: every route in one process, behind KServe's Python ModelServer (its
FastAPI app, DataPlane and model repository, under uvicorn).

``python -m serving.kserve.app --socket-fd FD --settings FILE [--processes N]`` (started by ``host.py`` with the
socket bound) is the supervisor (``supervisor.py``): it forks the serving processes that share that socket. One
loads each export once and answers ``POST /predictions/<route>`` as TorchServe's host does (the same bodies,
answers, errors, headers and limits; a queue per route, ``lane.py``: batches through the process's one inference
thread, answers encoded on its encoding threads; the build a request goes to, ``builds.py``), the Open Inference
Protocol's ``/v2/models/<route>[/infer]`` (``serving/oip/``; over gRPC too, ``grpc_service.port``) and KServe's
own endpoints: ``/``, ``/v2/health/live``, ``/v2/health/ready``, ``/v1/models/<route>``, ``/v2/models/<route>/ready``
and ``/v1/models/<route>:predict`` (``{"instances": [<request body>, ...]}`` -> ``{"predictions": [<json answer>,
...]}``). With token auth, every request needs ``Authorization: Bearer <inference key>``. SIGTERM drains: new
requests on open connections get 503 ``shutting_down`` and a closed connection, the process stops taking
connections, and exits once nothing is in flight and nothing arrived for QUIET_SECONDS. SIGUSR1 is a roll-out
message (``builds.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from handlers import device
from handlers.errors import SHUTTING_DOWN, RequestError
from handlers.service import Reply
from serving.host import QUIET_SECONDS
from serving.keys import read_keys
from serving.kserve.app_errors import shape_errors
from serving.kserve.builds import SWITCHBOARD, Builds, Switchboard, answer_message
from serving.kserve.http_protocol import http_protocol
from serving.kserve.lane import Threads
from serving.kserve.request_path import HostRules, Refusals, Traffic, error_reply
from serving.kserve.settings import ProcessSettings
from serving.kserve.supervisor import supervise
from serving.oip import grpc_service
from serving.oip.tensors import Signature


class App:
    """The routes of one process: their lanes, the key (token auth on), the drain state. Process ``index`` of the
    host puts the routes that use a GPU (``ModelSpec.gpu``) on CUDA device ``index`` modulo the devices torch sees
    (none: the CPU), so each process holds one CUDA context for all its routes, and the routes of one export share
    its networks there."""

    def __init__(self, settings: ProcessSettings, index: int = 0) -> None:
        self.routes: tuple[str, ...] = tuple(settings.routes)
        self.signatures = {name: Signature.of(name, route.operation, route.export_dir)
                           for name, route in settings.routes.items()}  # the routes as v2 models
        self.index, self.control_dir = index, Path(settings.control_dir)
        gpus = device.cuda_devices()
        self.threads = Threads.start()  # the inference threads, heavy and light routes', and the encoding threads
        gpu_of = {name: index % gpus if route.gpu and gpus else None for name, route in settings.routes.items()}
        if settings.ray_address:  # the Ray host's front: the routes' workers are Ray Serve replicas
            from serving.ray.lane import RayBuilds
            self.builds = RayBuilds(settings)
        else:
            self.builds = Builds(settings.routes, Switchboard(self.control_dir / SWITCHBOARD, self.routes), gpu_of,
                                 self.threads)
        # The host's keys never expire (serving/keys.py, write_keys): read once, so no request waits on the file.
        self.key = read_keys(Path(settings.key_file))["inference"] if settings.key_file else None
        self.max_request_size, self.access_log = settings.max_request_size, settings.access_log
        self.traffic, self.refusals = Traffic(), Refusals()

    def authorized(self, header: str | None) -> bool:
        if self.key is None:
            return True
        return hmac.compare_digest((header or "").encode(), f"Bearer {self.key}".encode())

    async def predictions(self, route: str, body: bytes | dict) -> Reply:
        """The answer of ``POST /predictions/<route>`` (a v2 request's: the route's request it became)."""
        if route not in self.routes:
            return error_reply(RequestError("route", "unknown_route", f"no route {route!r} here (served: "
                                                                     f"{', '.join(self.routes)})", 404))
        lane, generation = self.builds.lane(route)
        if self.traffic.draining:
            return lane.refuse(SHUTTING_DOWN, {"Connection": "close"})
        started = time.perf_counter()
        reply = await lane.submit(body)
        self.builds.tally(route, generation, reply.status, time.perf_counter() - started)
        return reply


COLLECT_S = 0.2  # how often a process drops the builds a roll-out left behind


def build(settings: ProcessSettings, index: int = 0) -> tuple[Any, App]:
    """KServe's ModelServer with every route registered as a model and the API's routes on its FastAPI app; returns
    (its REST server, the App)."""
    from kserve import Model, ModelServer
    from kserve.protocol.rest.server import RESTServer

    app_state = App(settings, index)

    class RouteModel(Model):
        """A route as a KServe model: readiness, metadata and the v1 predict verb over the same worker."""

        def __init__(self, route: str) -> None:
            super().__init__(route)
            self.ready = True

        async def predict(self, payload: dict | bytes, headers: dict[str, str] | None = None) -> dict:
            """Each instance answered as a request of the route; the first that is refused answers for all, in
            the one error shape (its field prefixed with its place, e.g. ``instances[1].n``)."""
            if isinstance(payload, bytes):  # KServe passes a body it was not told is JSON as it came (HostRules
                payload = json.loads(payload)  # has parsed it strictly already)
            instances = payload.get("instances") if isinstance(payload, dict) else None
            if not isinstance(instances, list) or not instances:
                raise RequestError("instances", "missing_field" if instances is None else "wrong_type",
                                   'send {"instances": [<request body>, ...]}')
            predictions = []
            for i, instance in enumerate(instances):
                body = json.dumps(instance | {"format": "json"} if isinstance(instance, dict) else instance).encode()
                reply = await app_state.builds.lane(self.name)[0].submit(body)
                if reply.status != 200:
                    error = reply.json()
                    raise RequestError(f"instances[{i}].{error['field']}", error["reason"], error["message"],
                                       reply.status)
                predictions.append(reply.json())
            return {"predictions": predictions}

    server = ModelServer(http_port=0, enable_grpc=False, workers=1)
    for route in app_state.routes:
        server.register_model(RouteModel(route))
    rest = RESTServer("kserve.model_server:app", server.dataplane, server.model_repository_extension, 0,
                      workers=1, grace_period=1, timeout_keep_alive=settings.idle_timeout)
    rest.config.access_log = False  # the access lines are HostRules', with the request ID
    rest.config.http = http_protocol()
    rest.create_application()
    from kserve.model_server import app

    shape_errors(app)
    rest.config.app = HostRules(app, app_state)
    return rest, app_state


def serve(sock: socket.socket, settings: ProcessSettings, index: int, ready_fd: int) -> None:
    """Serve on ``sock`` as process ``index`` until SIGTERM or SIGINT, then drain and return; once the routes are
    loaded, say so on stdout and on ``ready_fd`` (the supervisor's pipe), with one byte."""
    Path("/proc/self/comm").write_text(f"kserve-proc-{index}")  # what top and pgrep show: which process this is
    import uvicorn
    from fastapi.exceptions import FastAPIDeprecationWarning

    # KServe 0.21's own endpoints use FastAPI's deprecated ORJSONResponse: a warning in every process's log
    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
    rest, app_state = build(settings, index)
    # The project's lines (fmvae.kserve: access and error lines; fmvae.worker: the workers') on the output the
    # launcher keeps; uvicorn's access line and KServe's timing lines are replaced by HostRules' access lines.
    project = logging.getLogger("fmvae")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    project.handlers, project.propagate = [handler], False
    project.setLevel(logging.INFO)
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = False
        logging.getLogger(name).setLevel(logging.WARNING)

    class DrainingServer(uvicorn.Server):
        """uvicorn without its own signal handling: the drain decides when it stops."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    server = DrainingServer(rest.config)
    grpc_port, rpc = grpc_service.port(), []

    async def drain() -> None:
        traffic = app_state.traffic
        traffic.draining = True
        for listener in server.servers:  # stop taking connections; the open ones stay and are answered
            listener.close()
        await asyncio.gather(*(service.stop(grpc_service.GRACE_S) for service in rpc))
        while traffic.in_flight or time.monotonic() - traffic.last < QUIET_SECONDS:
            await asyncio.sleep(0.05)
        app_state.refusals.flush()
        server.should_exit = True

    draining: list[asyncio.Task] = []  # kept: the loop holds its tasks only weakly

    async def upkeep() -> None:  # drop the builds a roll-out left behind, once idle
        while True:
            app_state.builds.collect()
            await asyncio.sleep(COLLECT_S)

    def message() -> None:  # a roll-out message (SIGUSR1): loading a build takes seconds, off the event loop
        threading.Thread(target=answer_message, args=(app_state.control_dir, index, app_state.builds),
                         name="rollout", daemon=True).start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: draining.append(asyncio.ensure_future(drain())))
        loop.add_signal_handler(signal.SIGUSR1, message)
        draining.append(asyncio.ensure_future(upkeep()))
        if grpc_port:
            rpc.append(await grpc_service.serve(app_state, grpc_port, settings.max_request_size))
        print(f"kserve process {os.getpid()}: ready, {len(app_state.routes)} routes", flush=True)
        os.write(ready_fd, b"r")
        os.close(ready_fd)
        await server.serve(sockets=[sock])

    asyncio.run(main())


def preload() -> None:
    """Import what a serving process needs beyond this module (the supervisor does, once, before it forks them)."""
    import fastapi.responses  # noqa: F401
    import kserve  # noqa: F401
    import kserve.protocol.rest.server  # noqa: F401
    import uvicorn  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m serving.kserve.app", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--socket-fd", type=int, required=True, help="the bound listening socket, inherited")
    cli.add_argument("--settings", type=Path, required=True, help="the launcher's settings for the processes (JSON)")
    cli.add_argument("--processes", type=int, default=1, help="serving processes (each with every route)")
    args = cli.parse_args(argv)
    settings = ProcessSettings.from_json(args.settings.read_text())
    status = Path(settings.status_file) if settings.status_file else None
    preload()

    def serving(index: int, ready_fd: int) -> None:  # the settings as they are now: a roll-out rewrites them
        serve(socket.socket(fileno=args.socket_fd), ProcessSettings.from_json(args.settings.read_text()), index,
              ready_fd)

    return supervise(serving, args.socket_fd, args.processes, status)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # the interpreter's own teardown with these libraries loaded takes 1.5 s and frees nothing
