"""Each route's queue in a KServe host process (``Lane``): requests wait for an inference thread of the process and
go in batches of those waiting, the queue bounded like TorchServe's; a request beyond the bound is refused at once.
The inference thread parses, plans, decodes and finishes a batch (``Service.compute``); its answers in PNG, GIF or
base64 JSON are encoded on the process's encoding threads (``Service.encode``), so that the decoder never waits
behind an encoder, nor any route's requests behind another's GIF. The light routes (``RouteSettings.light``: decode,
encode, edit) have an inference thread of their own (``Threads``): their requests never wait behind a heavy
route's decoding."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from handlers.errors import RequestError
from handlers.service import Reply, Service, Staged
from runtime.cpus import available_cpus
from serving.kserve.request_path import error_reply

OVERLOADED = "overloaded"


def queue_full(route: str, queue_size: int) -> RequestError:
    """The refusal of a request beyond a route's queue bound (503 ``overloaded``), on every host with lanes."""
    return RequestError("body", OVERLOADED, f"{route}'s queue is full ({queue_size} requests): retry with backoff",
                        503)


@dataclass(frozen=True)
class Threads:
    """A serving process's threads: one inference thread for the heavy routes, one for the light ones, and the
    encoding threads (one per CPU) that every route's answers share."""

    heavy: ThreadPoolExecutor
    light: ThreadPoolExecutor
    encoders: ThreadPoolExecutor

    @classmethod
    def start(cls) -> Threads:
        return cls(ThreadPoolExecutor(1, thread_name_prefix="inference"),
                   ThreadPoolExecutor(1, thread_name_prefix="inference-light"),
                   ThreadPoolExecutor(available_cpus(), thread_name_prefix="encode"))


class Lane:
    """One route's queue in this process: requests wait for the process's inference thread; each call takes up to
    ``batch_size`` of those waiting, and a request beyond ``queue_size`` waiting is refused at once (503)."""

    def __init__(self, service: Service, queue_size: int, batch_size: int, executor: ThreadPoolExecutor,
                 encoders: ThreadPoolExecutor) -> None:
        self.service, self.queue_size, self.batch_size = service, queue_size, batch_size
        self.executor, self.encoders = executor, encoders
        self.waiting: collections.deque[tuple[bytes | dict, asyncio.Future]] = collections.deque()
        self.running = False
        self.encoding = 0  # batches past the decoder whose answers are being encoded
        self.tasks: set[asyncio.Task] = set()  # kept: the loop holds its tasks only weakly

    def idle(self) -> bool:
        """Nothing waits and nothing is being answered."""
        return not self.waiting and not self.running and not self.encoding

    def refuse(self, error: RequestError, headers: dict[str, str]) -> Reply:
        """A refusal of this route's (503, with ``Retry-After``), counted in the handler metrics as the handlers
        count theirs."""
        worker = self.service.worker
        worker.recorder.submit((worker.count_response, error.status), (worker.count_error, error.reason))
        return error_reply(error, worker.identity, {"Retry-After": "1"} | headers)

    async def submit(self, body: bytes | dict) -> Reply:
        """The route's reply to ``body`` (bytes, or a parsed body: a v2 request's, ``serving/oip/``)."""
        if len(self.waiting) >= self.queue_size:
            return self.refuse(queue_full(self.service.worker.model, self.queue_size), {})
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((body, future))
        if not self.running:
            self.running = True
            self.keep(self.run())
        return await future

    def keep(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        """Batches of what waits through the inference thread, one after another; each batch's answers are encoded
        and sent meanwhile (``deliver``)."""
        loop = asyncio.get_running_loop()
        try:
            while self.waiting:
                batch = [self.waiting.popleft() for _ in range(min(self.batch_size, len(self.waiting)))]
                try:
                    staged = await loop.run_in_executor(self.executor, self.service.compute, [b for b, _ in batch])
                except Exception as e:  # compute() fails requests one by one; this is a last resort, never a hang
                    answer(batch, [last_resort(e)] * len(batch))
                    continue
                self.encoding += 1
                self.keep(self.deliver(batch, staged))
        finally:
            self.running = False

    async def deliver(self, batch: list[tuple[bytes | dict, asyncio.Future]], staged: Staged) -> None:
        """Encode the batch's answers that are not replies yet on the encoding threads, then answer each request."""
        loop = asyncio.get_running_loop()
        try:
            encoding = {i: loop.run_in_executor(self.encoders, self.service.encode, item)
                        for i, item in enumerate(staged.items) if not isinstance(item, Reply)}
            encoded = dict(zip(encoding, await asyncio.gather(*encoding.values()), strict=True))
            replies = self.service.settle(staged, [encoded.get(i, item) for i, item in enumerate(staged.items)])
        except Exception as e:  # encode() fails requests one by one; this is a last resort, never a hang
            replies = [last_resort(e)] * len(batch)
        finally:
            self.encoding -= 1
        answer(batch, replies)


def last_resort(e: Exception) -> Reply:
    return error_reply(RequestError("body", "internal", f"internal error: {e}", 500))


def answer(batch: list[tuple[bytes | dict, asyncio.Future]], replies: list[Reply]) -> None:
    for (_, future), reply in zip(batch, replies, strict=True):
        if not future.done():
            future.set_result(reply)
