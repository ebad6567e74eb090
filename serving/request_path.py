"""The KServe host's request path in each process: the ASGI rules every request passes (its request ID, token
auth, the body limit, the drain's bookkeeping, the API's routes answered without a framework in between, the access
and error log lines), and each route's queue (``Lane``): requests wait for the process's inference thread and go
in batches of those waiting, the queue bounded like TorchServe's."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from handlers.errors import RequestError
from handlers.schema import PATH_PREFIX, first_unparsable, load_json
from handlers.service import MODEL_HEADER, REQUEST_ID, Reply, Service, request_id
from serving.settings import ModelSpec

OVERLOADED = "overloaded"
BODILESS = ("GET", "HEAD", "OPTIONS")  # methods whose requests carry no body here
LOG = logging.getLogger("fmvae.kserve")


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
        self.task: asyncio.Task | None = None

    async def submit(self, body: bytes) -> Reply:
        if len(self.waiting) >= self.queue_size:
            return error_reply(RequestError("body", OVERLOADED, f"{self.service.worker.model}'s queue is full "
                                                                f"({self.queue_size} requests): retry with backoff",
                                            503), self.service.worker.identity, {"Retry-After": "1"})
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((body, future))
        if not self.running:
            self.running = True
            self.task = asyncio.create_task(self.run())  # kept: the loop holds its tasks only weakly
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.waiting:
                batch = [self.waiting.popleft() for _ in range(min(self.batch_size, len(self.waiting)))]
                try:
                    replies = await loop.run_in_executor(self.executor, self.service.answer, [b for b, _ in batch])
                except Exception as e:  # answer() fails requests one by one; this is a last resort, never a hang
                    replies = [error_reply(RequestError("body", "internal", f"internal error: {e}", 500))] * len(batch)
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


def replaying(body: bytes) -> Any:
    """An ASGI ``receive`` that hands on ``body`` (already read), then waits for the client to leave."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the framework only asks again to learn of a disconnect
        return {"type": "http.disconnect"}
    return receive


def strict_predict_body(scope: dict, body: bytes) -> Reply | None:
    """The API's error for a KServe v1 ``:predict`` body that the API would refuse as JSON (not JSON, duplicate keys,
    NaN, nested too deeply), or None (KServe's own parser is laxer: it keeps the last of duplicate keys)."""
    if scope["method"] != "POST" or not scope["path"].endswith(":predict"):
        return None
    try:
        error = first_unparsable(load_json(body))
    except RequestError as e:
        error = e
    return error_reply(error) if error else None


class Routes(Protocol):
    """What the rules need of a process's routes (``serving.kserve_app.App``)."""

    traffic: Traffic
    max_request_size: int
    access_log: bool

    def authorized(self, header: str | None) -> bool: ...

    async def predictions(self, route: str, body: bytes) -> Reply: ...


class HostRules:
    """The ASGI app uvicorn runs: the request's ID (``X-Request-ID``: the client's when valid, else a new one; on
    every answer), token auth on every path, the body limit on every body (KServe's v1 ``:predict`` bodies parsed
    as strictly as the API's), the drain's bookkeeping, then the API's routes answered here directly (no framework
    in between) and everything else by KServe's FastAPI app; an error line
    for every answer of 500 or more and, with the access log on, an access line for every request, each with the
    request ID."""

    def __init__(self, inner: Any, state: Routes) -> None:
        self.inner, self.state = inner, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan
            return await self.inner(scope, receive, send)
        traffic = self.state.traffic
        traffic.in_flight += 1
        traffic.last = started = time.monotonic()
        headers = dict(scope["headers"])
        rid = request_id(headers.get(b"x-request-id"))
        limit, body = self.state.max_request_size, b""
        answered = {"status": 0, "size": 0, "detail": b""}
        try:
            if not self.state.authorized(headers.get(b"authorization", b"").decode("latin-1")):
                reply = error_reply(RequestError("Authorization", "unauthorized",
                                                 "send 'Authorization: Bearer <inference key>'", 401))
            elif scope["method"] not in BODILESS and (body := await read_body(receive, limit)) is None:
                reply = error_reply(RequestError("body", "body_too_large", "the body is over the server's limit of "
                                                 f"{limit} bytes", 413))
            elif scope["path"].startswith(PATH_PREFIX) and scope["method"] == "POST":
                reply = await self.state.predictions(scope["path"].removeprefix(PATH_PREFIX), body)
            elif (refused := strict_predict_body(scope, body)) is not None:
                reply = refused
            else:
                extra = {REQUEST_ID: rid} | ({"Connection": "close"} if traffic.draining else {})
                inner_receive = receive if scope["method"] in BODILESS else replaying(body)
                await self.inner(scope, inner_receive, self.adding(send, extra, answered))
                return
            extra = {REQUEST_ID: rid} | ({"Connection": "close"} if traffic.draining else {})
            answered.update(status=reply.status, size=len(reply.body), detail=reply.body)
            await send({"type": "http.response.start", "status": reply.status,
                        "headers": [(b"content-type", reply.content_type.encode()),
                                    (b"content-length", str(len(reply.body)).encode()),
                                    *((k.encode(), v.encode()) for k, v in (reply.headers | extra).items())]})
            await send({"type": "http.response.body", "body": reply.body})
        finally:
            traffic.in_flight -= 1
            traffic.last = time.monotonic()
            self.log(scope, rid, answered, traffic.last - started)

    def log(self, scope: dict, rid: str, answered: dict, seconds: float) -> None:
        """The request's error line (an answer of 500 or more) and access line (access log on)."""
        status, path = answered["status"], scope["path"]
        if status >= 500:
            LOG.error("request %s: %s %s answered %d: %s", rid, scope["method"], path, status,
                      answered["detail"][:300].decode(errors="replace"))
        if self.state.access_log:
            host, port = scope.get("client") or ("-", "-")
            LOG.info('request %s: %s:%s "%s %s" %d %d bytes %.1f ms', rid, host, port, scope["method"], path,
                     status, answered["size"], seconds * 1e3)

    @staticmethod
    def adding(send: Any, headers: dict[str, str], answered: dict) -> Any:
        """``send`` that adds ``headers`` to the response and notes its status and size in ``answered``."""
        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
                message = message | {"headers": [*message.get("headers", []),
                                                 *((k.lower().encode(), v.encode()) for k, v in headers.items())]}
            elif message["type"] == "http.response.body":
                answered["size"] += len(message.get("body", b""))
            await send(message)
        return wrapped
