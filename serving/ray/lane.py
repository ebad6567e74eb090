"""The Ray host's front, in each of its KServe processes: a queue per route (``RayLane``) that sends what waits, in
batches, to the route's Ray Serve replicas (``replica.py``) and retries a batch on another replica when the one it
went to died; ``RayBuilds`` is what the process's ``App`` asks for a route's lane (``serving/kserve/app.py``).

Ray's cost is paid per call (about 1 ms of CPU at the two ends against 0.2 ms for a sample n=1), so requests that
arrive meanwhile go as one ``answer_many`` call, with at most ``--calls-per-replica`` calls in flight per running
replica (the replicas are counted once a second: the autoscaler counts calls, so the cap grows with it). A request
without a seed of an operation that would draw one gets one here, before the first try: a retry then answers the same
bytes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import threading
import time
from typing import Any

from handlers import metrics
from handlers.errors import RequestError
from handlers.schema import first_unparsable, load_json
from handlers.service import Reply
from runtime.manifest import Manifest
from serving.kserve.lane import queue_full
from serving.kserve.request_path import error_reply
from serving.kserve.settings import ProcessSettings

ATTEMPTS = 6  # tries of a batch whose replica died, 50 ms x attempt apart
SEEDED = ("sample", "walk")  # operations that draw a seed when the request has none
POLL_S = 1.0
LOG = logging.getLogger("fmvae.kserve")


def with_seed(body: bytes | dict, operation: str) -> bytes | dict:
    """``body`` with a seed drawn here when its operation would draw one itself; any other body as it came (one the
    worker refuses, e.g. for a repeated key, goes on as it came: it is refused the same way each time)."""
    if operation not in SEEDED:
        return body
    try:
        request = load_json(body)
    except RequestError:
        return body
    if not isinstance(request, dict) or "seed" in request or first_unparsable(request) is not None:
        return body
    seeded = request | {"seed": secrets.randbits(63)}
    return seeded if isinstance(body, dict) else json.dumps(seeded).encode()


class RayLane:
    """One route's queue at the front: bounded like the KServe host's (503 ``overloaded`` beyond it), sent in
    batches of at most ``batch_size`` to the route's replicas."""

    def __init__(self, route: str, operation: str, identity: str, queue_size: int, batch_size: int,
                 per_replica: int) -> None:
        self.route, self.operation, self.identity = route, operation, identity
        self.queue_size, self.batch_size = queue_size, batch_size
        self.waiting: collections.deque[tuple[bytes | dict, asyncio.Future]] = collections.deque()
        self.per_replica = per_replica  # calls in flight per running replica
        self.out, self.cap = 0, per_replica
        self.handle: Any = None
        self.tasks: set[asyncio.Task] = set()

    def refuse(self, error: RequestError, headers: dict[str, str]) -> Reply:
        """A refusal (503 with ``Retry-After``), counted in the handler metrics."""
        metrics.REQUESTS.labels(self.route, str(error.status)).inc()
        metrics.ERRORS.labels(self.route, error.reason).inc()
        return error_reply(error, self.identity, {"Retry-After": "1"} | headers)

    def idle(self) -> bool:
        return not self.waiting and not self.out

    async def submit(self, body: bytes | dict) -> Reply:
        if len(self.waiting) >= self.queue_size:
            return self.refuse(queue_full(self.route, self.queue_size), {})
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((with_seed(body, self.operation), future))
        self.pump()
        return await future

    def pump(self) -> None:
        while self.waiting and self.out < self.cap:
            batch = [self.waiting.popleft() for _ in range(min(self.batch_size, len(self.waiting)))]
            self.out += 1
            task = asyncio.create_task(self.send(batch))
            self.tasks.add(task)  # kept: the loop holds its tasks only weakly
            task.add_done_callback(self.tasks.discard)

    async def send(self, batch: list[tuple[bytes | dict, asyncio.Future]]) -> None:
        try:
            replies = await self.call([body for body, _ in batch])
        except Exception as e:  # noqa: BLE001 - every request of the batch gets an answer, never a hang
            unavailable = RequestError("body", "unavailable", f"{self.route}: no replica could answer "
                                       f"({type(e).__name__}): retry with backoff", 503)
            replies = [self.refuse(unavailable, {})] * len(batch)
        finally:
            self.out -= 1
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result(reply)
        self.pump()

    async def call(self, bodies: list[bytes | dict]) -> list[Reply]:
        """The replicas' answers, the batch tried again on another replica while the one it went to died."""
        from ray.exceptions import ActorUnavailableError, RayActorError
        from ray.serve import get_deployment_handle

        if self.handle is None:  # made on this loop: the router runs on the caller's loop (no thread hop)
            self.handle = get_deployment_handle(self.route, app_name=self.route).options(_by_reference=False)
        for attempt in range(ATTEMPTS):
            try:
                answers = await self.handle.answer_many.remote(bodies)
                return [Reply(status, body, content_type, headers) for status, content_type, headers, body in answers]
            except (RayActorError, ActorUnavailableError) as e:
                if attempt == ATTEMPTS - 1:
                    raise
                LOG.warning("%s: a replica died under a batch of %d (%s): trying again", self.route, len(bodies),
                            type(e).__name__)
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


class RayBuilds:
    """The lanes of one front process, and the count of each route's running replicas (``replicas``, polled from
    Serve's controller on a thread of its own), which caps the calls in flight."""

    def __init__(self, settings: ProcessSettings) -> None:
        import ray

        ray.init(address=settings.ray_address, namespace="fmvae", logging_level=logging.WARNING,
                 log_to_driver=False, configure_logging=False)
        self.lanes = {name: RayLane(name, route.operation, Manifest.read(route.export_dir).identity,
                                    route.queue_size, route.batch_size, settings.ray_calls)
                      for name, route in settings.routes.items()}
        self.replicas: dict[str, int] = {}
        self.pending: set[int] = set()
        threading.Thread(target=self.poll, name="replica-poll", daemon=True).start()

    def lane(self, route: str) -> tuple[RayLane, int]:
        return self.lanes[route], 1

    def tally(self, route: str, generation: int, status: int, seconds: float) -> None:
        """No canary here."""

    def collect(self) -> None:
        """Nothing to drop: a roll-out on this host goes through Ray Serve, not the fronts."""

    def prepare(self, generation: int, routes: dict) -> str | None:
        return "the Ray host's builds are its Ray Serve deployments: a roll-out message is not for its fronts"

    def report(self) -> dict:
        return {"builds": {route: [1] for route in self.lanes}, "tallies": {}, "replicas": self.replicas}

    def poll(self) -> None:
        """Once a second: each route's running replicas, and from them each lane's cap on calls in flight."""
        from ray import serve

        while True:
            try:
                applications = serve.status().applications
                for route, lane in self.lanes.items():
                    running = applications[route].deployments[route].replica_states.get("RUNNING", 0)
                    self.replicas[route] = running
                    lane.cap = max(1, running) * lane.per_replica
            except Exception as e:  # noqa: BLE001 - the controller restarting or unreachable: keep the last caps
                LOG.warning("replica count: %s", e)
            time.sleep(POLL_S)
