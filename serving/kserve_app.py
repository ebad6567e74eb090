"""What each process of the KServe host runs: every route of ``serving/routes.py`` in one process, behind KServe's
Python ModelServer (its FastAPI app, DataPlane and model repository, served by uvicorn).

``python -m serving.kserve_app --socket-fd FD --settings FILE [--processes N]`` is started by the launcher
(``serving/kserve_host.py``) with the listening socket already bound: with ``--processes N`` it is the supervisor
that starts N serving processes on that socket and forwards SIGTERM to them; without, it serves. A serving process
loads each export once (``handlers.service``: the routes of one export share its artifacts and statistics) and
answers:

- ``POST /predictions/<route>``: the API, as TorchServe's host answers it: the same bodies, answers, errors (the
  one shape), headers and body limit; each route has a queue bounded in images like TorchServe's
  (``ModelSpec.job_queue_size``), and one more request gets 503 ``overloaded`` with ``Retry-After``;
- KServe's own endpoints: ``/`` (liveness), ``/v2/health/live``, ``/v2/health/ready``, ``/v1/models/<route>``
  and ``/v2/models/<route>/ready`` (per-route readiness), ``/v2/models/<route>`` (metadata) and
  ``/v1/models/<route>:predict`` with ``{"instances": [<request body>, ...]}``, answered as
  ``{"predictions": [<json answer>, ...]}``.

Requests of a route wait in its queue for the process's one inference thread; each call takes the requests that
arrived meanwhile, up to the route's batch size (``--batch-size 1`` in the settings turns that off). With token
auth, every request needs ``Authorization: Bearer <inference key>`` (the key file the launcher writes). SIGTERM
drains: new requests on open connections get 503 ``shutting_down`` and a closed connection, the process stops
taking new connections, and it exits once nothing is in flight and nothing arrived for QUIET_SECONDS.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.errors import SHUTTING_DOWN, RequestError
from handlers.service import MODEL_HEADER, Reply, Service
from serving.inprocess import load_service
from serving.keys import read_keys
from serving.settings import ModelSpec, spec_from_document

QUIET_SECONDS = 0.3  # a draining process exits once nothing was in flight or arrived for this long
PREDICTIONS = "/predictions/"
OVERLOADED = "overloaded"


def error_reply(e: RequestError, identity: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    """A reply of the host itself (no worker involved) in the one error shape."""
    named = {MODEL_HEADER: identity} if identity else {}
    return Reply(e.status, json.dumps(e.body()).encode(), "application/json", named | (headers or {}))


class Lane:
    """One route's queue in this process: requests wait for the process's inference thread; each call takes up to
    ``batch_size`` of those waiting, and a request beyond ``queue_size`` waiting is refused at once (503)."""

    def __init__(self, service: Service, spec: ModelSpec, batch_size: int, executor: ThreadPoolExecutor) -> None:
        self.service, self.batch_size, self.executor = service, batch_size, executor
        self.queue_size = spec.job_queue_size
        self.waiting: collections.deque[tuple[bytes, asyncio.Future]] = collections.deque()
        self.running = False

    async def submit(self, body: bytes) -> Reply:
        if len(self.waiting) >= self.queue_size:
            return error_reply(RequestError("body", OVERLOADED, f"{self.service.worker.model}'s queue is full "
                                                                f"({self.queue_size} requests): retry with backoff",
                                            503), self.service.worker.identity, {"Retry-After": "1"})
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((body, future))
        if not self.running:
            self.running = True
            asyncio.create_task(self.run())
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.waiting:
                batch = [self.waiting.popleft() for _ in range(min(self.batch_size, len(self.waiting)))]
                replies = await loop.run_in_executor(self.executor, self.service.answer, [b for b, _ in batch])
                for (_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():
                        future.set_result(reply)
        finally:
            self.running = False


@dataclass
class Traffic:
    """What the drain watches: requests in flight and when the last one arrived."""

    in_flight: int = 0
    last: float = 0.0
    draining: bool = False


class App:
    """The routes of one process: their lanes, the key (token auth on), the drain state."""

    def __init__(self, settings: dict) -> None:
        self.routes: tuple[str, ...] = tuple(settings["models"])
        store = Path(settings["model_store"])
        processes = settings["processes"]
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.lanes = {}
        for route, document in settings["models"].items():
            spec = spec_from_document(document)
            service = load_service(route, store, spec, store_workers=processes)
            self.lanes[route] = Lane(service, spec, settings.get("batch_size") or spec.batch_size, self.executor)
        self.key_file = Path(settings["key_file"]) if settings.get("key_file") else None
        self.max_request_size = settings["max_request_size"]
        self.traffic = Traffic()

    def authorized(self, header: str | None) -> bool:
        if self.key_file is None:
            return True
        expected = f"Bearer {read_keys(self.key_file)['inference']}"
        return hmac.compare_digest((header or "").encode(), expected.encode())

    async def predictions(self, route: str, body: bytes) -> Reply:
        """The answer of ``POST /predictions/<route>``."""
        lane = self.lanes.get(route)
        if lane is None:
            return error_reply(RequestError("route", "unknown_route", f"no route {route!r} here (served: "
                                                                     f"{', '.join(self.routes)})", 404))
        identity = lane.service.worker.identity
        if self.traffic.draining:
            return error_reply(SHUTTING_DOWN, identity, {"Retry-After": "1", "Connection": "close"})
        return await lane.submit(body)


def build(settings: dict) -> tuple[Any, App]:
    """KServe's ModelServer with every route registered as a model and the API's routes on its FastAPI app; returns
    (its REST server, the App)."""
    from kserve import Model, ModelServer
    from kserve.errors import InvalidInput
    from kserve.protocol.rest.server import RESTServer

    app_state = App(settings)

    class RouteModel(Model):
        """A route as a KServe model: readiness, metadata and the v1 predict verb over the same worker."""

        def __init__(self, route: str) -> None:
            super().__init__(route)
            self.lane = app_state.lanes[route]
            self.ready = True

        async def predict(self, payload: dict | bytes, headers: dict[str, str] | None = None) -> dict:
            if isinstance(payload, bytes):  # KServe passes a body it was not told is JSON as it came
                try:
                    payload = json.loads(payload)
                except ValueError as e:
                    raise InvalidInput(f"the body is not JSON: {e}") from None
            instances = payload.get("instances") if isinstance(payload, dict) else None
            if not isinstance(instances, list):
                raise InvalidInput('send {"instances": [<request body>, ...]}')
            predictions = []
            for instance in instances:
                body = json.dumps(instance | {"format": "json"} if isinstance(instance, dict) else instance).encode()
                reply = await self.lane.submit(body)
                predictions.append(reply.json())
            return {"predictions": predictions}

    server = ModelServer(http_port=0, enable_grpc=False, workers=1)
    for route in app_state.routes:
        server.register_model(RouteModel(route))
    rest = RESTServer("kserve.model_server:app", server.dataplane, server.model_repository_extension, 0,
                      workers=1, grace_period=1, timeout_keep_alive=settings["idle_timeout"])
    rest.config.access_log = settings["access_log"]
    rest.create_application()
    from kserve.model_server import app
    rest.config.app = HostRules(app, app_state)
    return rest, app_state


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The request body from ASGI messages, or None once it is over ``limit`` bytes (reading stops there)."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


class HostRules:
    """The ASGI app uvicorn runs: token auth on every path, the body limit and the drain's bookkeeping, then the
    API's routes answered here directly (no framework in between) and everything else by KServe's FastAPI app."""

    def __init__(self, inner: Any, state: App) -> None:
        self.inner, self.state = inner, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan
            return await self.inner(scope, receive, send)
        traffic = self.state.traffic
        traffic.in_flight += 1
        traffic.last = time.monotonic()
        try:
            headers = dict(scope["headers"])
            if not self.state.authorized(headers.get(b"authorization", b"").decode("latin-1")):
                reply = error_reply(RequestError("Authorization", "unauthorized",
                                                 "send 'Authorization: Bearer <inference key>'", 401))
            elif scope["path"].startswith(PREDICTIONS) and scope["method"] == "POST":
                body = await read_body(receive, self.state.max_request_size)
                reply = error_reply(RequestError("body", "body_too_large", "the body is over the server's limit of "
                                                 f"{self.state.max_request_size} bytes", 413)) if body is None \
                    else await self.state.predictions(scope["path"].removeprefix(PREDICTIONS), body)
            else:
                await self.inner(scope, receive, self.closing(send) if traffic.draining else send)
                return
            extra = {"Connection": "close"} if traffic.draining else {}
            await send({"type": "http.response.start", "status": reply.status,
                        "headers": [(b"content-type", reply.content_type.encode()),
                                    (b"content-length", str(len(reply.body)).encode()),
                                    *((k.encode(), v.encode()) for k, v in (reply.headers | extra).items())]})
            await send({"type": "http.response.body", "body": reply.body})
        finally:
            traffic.in_flight -= 1
            traffic.last = time.monotonic()

    @staticmethod
    def closing(send: Any) -> Any:
        """``send`` that adds ``Connection: close`` to the response (a draining process closes every connection)."""
        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = message | {"headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)
        return wrapped


def serve(sock: socket.socket, settings: dict) -> None:
    """Serve on ``sock`` until SIGTERM or SIGINT, then drain and exit."""
    import uvicorn

    rest, app_state = build(settings)
    if not settings["access_log"]:  # uvicorn's line per request, and KServe's timing lines of its own endpoints
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

    async def drain() -> None:
        traffic = app_state.traffic
        traffic.draining = True
        for listener in server.servers:  # stop taking connections; the open ones stay and are answered
            listener.close()
        while traffic.in_flight or time.monotonic() - traffic.last < QUIET_SECONDS:
            await asyncio.sleep(0.05)
        server.should_exit = True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(drain()))
        await server.serve(sockets=[sock])

    print(f"kserve process {os.getpid()}: ready, {len(app_state.routes)} routes", flush=True)
    asyncio.run(main())


def supervise(fd: int, settings_file: Path, processes: int) -> int:
    """Start ``processes`` serving processes on socket ``fd``, forward SIGTERM/SIGINT to them, and exit with the
    first non-zero exit code once all have exited (a process that dies takes the others down)."""
    cmd = [sys.executable, "-m", "serving.kserve_app", "--socket-fd", str(fd), "--settings", str(settings_file)]
    children = [subprocess.Popen(cmd, pass_fds=(fd,)) for _ in range(processes)]
    os.close(fd)  # the serving processes hold the socket; the launcher keeps its own copy

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = []
    while len(codes) < len(children):
        for child in children:
            if child.poll() is not None and child not in [c for c, _ in codes]:
                codes.append((child, child.returncode))
                if child.returncode != 0:
                    forward(signal.SIGTERM, None)
        time.sleep(0.05)
    return next((code for _, code in codes if code != 0), 0)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m serving.kserve_app", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--socket-fd", type=int, required=True, help="the bound listening socket, inherited")
    cli.add_argument("--settings", type=Path, required=True, help="the launcher's settings for the processes (JSON)")
    cli.add_argument("--processes", type=int, default=0, help="supervise this many serving processes")
    args = cli.parse_args(argv)
    if args.processes:
        return supervise(args.socket_fd, args.settings, args.processes)
    serve(socket.socket(fileno=args.socket_fd), json.loads(args.settings.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
