"""The KServe host's request path in each process: the ASGI rules every request passes (its request ID, token
auth, the body limit, the drain's bookkeeping, the API's routes answered without a framework in between, the access
and error log lines, refusals counted rather than logged one by one), the Open Inference Protocol's v2 model metadata
and infer paths (``serving/oip/rest.py``; its own error shape on every ``/v2/`` path). Each route's queue is
``serving/kserve/lane.py``'s ``Lane``; the HTTP protocol under it, ``serving/kserve/http_protocol.py``'s."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from handlers.errors import RequestError, internal
from handlers.schema import PATH_PREFIX, first_unparsable, load_json
from handlers.service import MODEL_HEADER, REQUEST_ID, Reply, request_id
from serving.oip import rest as v2

METHOD_NOT_ALLOWED = "method_not_allowed"
ALLOW_POST = {"Allow": "POST"}
BODILESS = ("GET", "HEAD", "OPTIONS")  # methods whose requests carry no body here
LOG = logging.getLogger("fmvae.kserve")
# A body over the limit is still read (and dropped) up to this many bytes, so that the client, which sends its
# whole body before it reads, gets the 413; beyond it the connection is closed as it stands.
DISCARD_BYTES = 64 * 2**20
REFUSALS_LOG_S = 10.0  # 503 refusals are logged as one line per route and reason per this many seconds
V2 = "/v2/"  # the Open Inference Protocol's paths: errors in its shape


def error_reply(e: RequestError, identity: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    """A reply of the host itself (no worker involved) in the one error shape."""
    named = {MODEL_HEADER: identity} if identity else {}
    return Reply(e.status, json.dumps(e.body()).encode(), "application/json", named | (headers or {}))


@dataclass
class Traffic:
    """What the drain watches: requests in flight and when the last one arrived."""

    in_flight: int = 0
    last: float = 0.0
    draining: bool = False


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The request body from ASGI messages, or None once it is over ``limit`` bytes; the rest of such a body is
    read and dropped up to ``DISCARD_BYTES`` in all, so that a client that sends it whole then reads the answer."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            while more and size <= DISCARD_BYTES:
                message = await receive()
                size += len(message.get("body", b""))
                more = message.get("more_body", False)
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Refusals:
    """503 refusals (``overloaded``, ``shutting_down``) kept out of the error log line by line: counted per route
    and reason, and written as one warning line per ``REFUSALS_LOG_S`` while they go on (an overload of thousands
    of requests a second would otherwise write a line each and roll the log's start-up lines away)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.since = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def count(self, path: str, detail: bytes) -> None:
        try:
            reason = json.loads(detail)["reason"]
        except (ValueError, KeyError, TypeError):
            reason = "-"
        if not self.counts:
            self.since = time.monotonic()
            self.timer = asyncio.get_running_loop().call_later(REFUSALS_LOG_S, self.flush)
        self.counts[path.removeprefix(PATH_PREFIX), reason] += 1

    def flush(self) -> None:
        """Write the line for what was counted (at the interval's end, and when the process drains)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counts:
            total = sum(self.counts.values())
            each = ", ".join(f"{route} {reason} {n}" for (route, reason), n in sorted(self.counts.items()))
            LOG.warning("refused %d requests with 503 in %.1f s: %s", total, time.monotonic() - self.since, each)
            self.counts.clear()


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
    """What the rules need of a process's routes (``serving.kserve.app.App``)."""

    traffic: Traffic
    refusals: Refusals
    signatures: dict  # route -> its v2 model (serving.oip.tensors.Signature)
    max_request_size: int
    access_log: bool

    def authorized(self, header: str | None) -> bool: ...

    async def predictions(self, route: str, body: bytes) -> Reply: ...


class HostRules:
    """The ASGI app uvicorn runs: the request's ID (``X-Request-ID``: the client's when valid, else a new one; on
    every answer), token auth on every path, the body limit on every body (KServe's v1 ``:predict`` bodies parsed
    as strictly as the API's), the drain's bookkeeping, then the API's routes and the v2 model metadata and infer
    paths answered here directly (no framework in between) and everything else by KServe's FastAPI app; an error line
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
        rid = request_id(dict(scope["headers"]).get(b"x-request-id"))
        answered = {"status": 0, "size": 0, "detail": b""}
        sending = self.adding(send, {REQUEST_ID: rid}, answered)
        try:
            try:
                reply = await self.answer(scope, receive, sending)
            except Exception as e:  # a fault of this process's code: the one shape, unless the answer has begun
                if answered["status"]:
                    raise
                LOG.exception("request %s: %s %s failed", rid, scope["method"], scope["path"])
                refuse = v2.refusal if scope["path"].startswith(V2) else error_reply
                reply = refuse(internal(f"internal error: {type(e).__name__}: {e}"))
            if reply is not None:
                closing = {"Connection": "close"} if traffic.draining else {}
                answered["detail"] = reply.body
                await sending({"type": "http.response.start", "status": reply.status,
                               "headers": [(b"content-type", reply.content_type.encode()),
                                           (b"content-length", str(len(reply.body)).encode()),
                                           *((k.encode(), v.encode()) for k, v in (reply.headers | closing).items())]})
                await sending({"type": "http.response.body", "body": reply.body})
        finally:
            traffic.in_flight -= 1
            traffic.last = time.monotonic()
            self.log(scope, rid, answered, traffic.last - started)

    async def answer(self, scope: dict, receive: Any, send: Any) -> Reply | None:
        """The reply to send, or None when KServe's app has answered (through ``send``)."""
        headers, method, path = dict(scope["headers"]), scope["method"], scope["path"]
        limit, body = self.state.max_request_size, b""
        refuse = v2.refusal if path.startswith(V2) else error_reply
        if not self.state.authorized(headers.get(b"authorization", b"").decode("latin-1")):
            return refuse(RequestError("Authorization", "unauthorized", "send 'Authorization: Bearer <inference key>'",
                                       401))
        if method not in BODILESS and (body := await read_body(receive, limit)) is None:
            return refuse(RequestError("body", "body_too_large", f"the body is over the server's limit of {limit} "
                                       "bytes", 413), headers={"Connection": "close"})
        if path.startswith(PATH_PREFIX):
            if method == "POST":
                return await self.state.predictions(path.removeprefix(PATH_PREFIX), body)
            return error_reply(RequestError("method", METHOD_NOT_ALLOWED, f"{method} is not allowed on {path}: "
                                            "send POST", 405), headers=ALLOW_POST)
        if (reply := await v2.answer(self.state, method, path, headers, body)) is not None:
            return reply
        if (refused := strict_predict_body(scope, body)) is not None:
            return refused
        if self.state.traffic.draining:
            send = self.adding(send, {"Connection": "close"})
        await self.inner(scope, receive if method in BODILESS else replaying(body), send)
        return None

    def log(self, scope: dict, rid: str, answered: dict, seconds: float) -> None:
        """The request's error line (an answer of 500 or more) and access line (access log on)."""
        status, path = answered["status"], scope["path"]
        if status == 503:
            self.state.refusals.count(path, answered["detail"])
        elif status >= 500:
            LOG.error("request %s: %s %s answered %d: %s", rid, scope["method"], path, status,
                      answered["detail"][:300].decode(errors="replace"))
        if self.state.access_log:
            host, port = scope.get("client") or ("-", "-")
            LOG.info('request %s: %s:%s "%s %s" %d %d bytes %.1f ms', rid, host, port, scope["method"], path,
                     status, answered["size"], seconds * 1e3)

    @staticmethod
    def adding(send: Any, headers: dict[str, str], answered: dict | None = None) -> Any:
        """``send`` that adds ``headers`` to the response and notes its status and size in ``answered``."""
        noted = answered if answered is not None else {"status": 0, "size": 0}

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                noted["status"] = message["status"]
                message = message | {"headers": [*message.get("headers", []),
                                                 *((k.lower().encode(), v.encode()) for k, v in headers.items())]}
            elif message["type"] == "http.response.body":
                noted["size"] += len(message.get("body", b""))
            await send(message)
        return wrapped
