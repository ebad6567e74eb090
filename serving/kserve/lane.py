"""Each route's queue in a KServe host process (``Lane``): requests wait for the process's inference thread and go
in batches of those waiting, the queue bounded like TorchServe's; a request beyond the bound is refused at once."""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor

from handlers.errors import RequestError
from handlers.service import Reply, Service
from serving.kserve.request_path import error_reply

OVERLOADED = "overloaded"


class Lane:
    """One route's queue in this process: requests wait for the process's inference thread; each call takes up to
    ``batch_size`` of those waiting, and a request beyond ``queue_size`` waiting is refused at once (503)."""

    def __init__(self, service: Service, queue_size: int, batch_size: int, executor: ThreadPoolExecutor) -> None:
        self.service, self.queue_size, self.batch_size, self.executor = service, queue_size, batch_size, executor
        self.waiting: collections.deque[tuple[bytes | dict, asyncio.Future]] = collections.deque()
        self.running = False
        self.task: asyncio.Task | None = None

    def idle(self) -> bool:
        """Nothing waits and nothing is being answered."""
        return not self.waiting and not self.running

    def refuse(self, error: RequestError, headers: dict[str, str]) -> Reply:
        """A refusal of this route's (503, with ``Retry-After``), counted in the handler metrics as the handlers
        count theirs."""
        worker = self.service.worker
        worker.recorder.submit((worker.count_response, error.status), (worker.count_error, error.reason))
        return error_reply(error, worker.identity, {"Retry-After": "1"} | headers)

    async def submit(self, body: bytes | dict) -> Reply:
        """The route's reply to ``body`` (bytes, or a parsed body: a v2 request's, ``serving/oip/``)."""
        if len(self.waiting) >= self.queue_size:
            return self.refuse(RequestError("body", OVERLOADED, f"{self.service.worker.model}'s queue is full "
                                                                f"({self.queue_size} requests): retry with backoff",
                                            503), {})
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
