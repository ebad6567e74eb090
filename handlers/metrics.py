"""Prometheus metrics of the handlers (prometheus-client), shared across TorchServe's worker processes.

Each worker writes its samples into ``$PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode);
the launcher (``python -m serving``, ``serving/server.py``) sets that directory and serves the sum over all
workers on its metrics port
(default 8083, path /metrics). Without the variable the metrics stay in the worker's memory, unexported.

| metric | type | labels | what |
| --- | --- | --- | --- |
| fmvae_request_duration_seconds | histogram | model, backend, device | handler time per request (batch in to replies) |
| fmvae_decode_duration_seconds | histogram | model, backend, device | time of the one decoder call per batch |
| fmvae_batch_requests | histogram | model | requests per handler call (TorchServe's dynamic batch) |
| fmvae_request_images | histogram | model | images (or, for encode, encodings) returned per request |
| fmvae_images_generated_total | counter | model, backend, device | images decoded and returned |
| fmvae_requests_total | counter | model, code | requests answered, by HTTP status |
| fmvae_errors_total | counter | model, reason | rejected or failed requests, by reason (the Error body's reason) |
| fmvae_backend_info | gauge | model, backend, device, artifact, threads | 1 per loaded worker configuration |
| fmvae_worker_cpu_seconds | gauge | model, pid | CPU seconds of each worker process (rate() gives cores used) |
| fmvae_worker_resident_memory_bytes | gauge | model, pid | resident memory of each worker process |

Series of a worker that died stay until the server restarts (prometheus-client keeps its file).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# 0.1 ms .. 1 s: ~1-2-5 steps, dense where this service's latencies lie (0.2 .. 50 ms).
LATENCY_BUCKETS = (0.0001, 0.0002, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
                   0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
IMAGE_BUCKETS = (1, 2, 4, 8, 10, 16, 32, 64, 128, 256)

REQUEST_SECONDS = Histogram("fmvae_request_duration_seconds", "Handler time per request",
                            ["model", "backend", "device"], buckets=LATENCY_BUCKETS)
DECODE_SECONDS = Histogram("fmvae_decode_duration_seconds", "Decoder call time per batch",
                           ["model", "backend", "device"], buckets=LATENCY_BUCKETS)
BATCH_REQUESTS = Histogram("fmvae_batch_requests", "Requests per handler call", ["model"], buckets=BATCH_BUCKETS)
REQUEST_IMAGES = Histogram("fmvae_request_images", "Images (encode: encodings) returned per request", ["model"],
                           buckets=IMAGE_BUCKETS)
IMAGES = Counter("fmvae_images_generated", "Images decoded and returned", ["model", "backend", "device"])
REQUESTS = Counter("fmvae_requests", "Requests answered, by HTTP status", ["model", "code"])
ERRORS = Counter("fmvae_errors", "Rejected or failed requests, by reason", ["model", "reason"])
BACKEND_INFO = Gauge("fmvae_backend_info", "Loaded worker configuration (value 1)",
                     ["model", "backend", "device", "artifact", "threads"], multiprocess_mode="max")
# Per worker process (label pid, added by multiprocess mode "all"), refreshed every second by the Recorder.
WORKER_CPU = Gauge("fmvae_worker_cpu_seconds", "CPU seconds used by the worker process (use rate())", ["model"],
                   multiprocess_mode="all")
WORKER_MEMORY = Gauge("fmvae_worker_resident_memory_bytes", "Resident memory of the worker process", ["model"],
                      multiprocess_mode="all")


def update_worker_usage(model: str) -> None:
    """Refresh this worker's CPU and memory gauges (Linux /proc)."""
    WORKER_CPU.labels(model).set(time.process_time())
    with open("/proc/self/statm") as statm:
        WORKER_MEMORY.labels(model).set(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))


class Recorder:
    """Writes a worker's metric samples in a daemon thread, off the request path.

    The handler's threads record ``(write, value)`` pairs (``Histogram.observe``, ``Counter.inc``, ...; under a
    lock: a batch's decoding and its answers' encoding may run on different threads), flush them in one piece when
    the replies are ready, and return. The thread wakes every ``drain_interval``
    seconds, writes what was flushed into the multiprocess files (each write takes a lock and packs into an
    mmap; a request makes about ten) and refreshes the usage gauges every ``usage_interval`` seconds. It polls
    rather than blocking on the queue: a blocked reader is woken by every flush, and then competes with the
    worker for the GIL while the reply is still being sent. Samples reach the exporter within
    ``drain_interval`` of the reply (tests that read them right after a request poll until they are there).
    The thread stops when the process exits normally (a thread still polling while the interpreter finalizes can
    abort the process).
    """

    _process: Recorder | None = None

    def __init__(self, model: str, usage_interval: float = 1.0, drain_interval: float = 0.05) -> None:
        self.model, self.usage_interval, self.drain_interval = model, usage_interval, drain_interval
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: list[tuple[Callable[[Any], None], Any]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fmvae-metrics", daemon=True)
        self.thread.start()
        RECORDERS.add(self)

    @classmethod
    def for_process(cls, model: str) -> Recorder:
        """The process's one recorder, made for its first model: a host that serves every route in one process
        (the KServe host) runs one metrics thread, and the process's CPU and memory gauges are reported once, under
        that model's label."""
        if cls._process is None:
            cls._process = cls(model)
        return cls._process

    def stop(self) -> None:
        """Write what was flushed, then end the thread."""
        self.stopped.set()
        self.thread.join(timeout=5)

    def record(self, *writes: tuple[Callable[[Any], None], Any]) -> None:
        """Hold writes until the next ``flush``; they run in the order recorded."""
        with self.lock:
            self.pending.extend(writes)

    def flush(self) -> None:
        """Hand the held writes to the thread in one piece: one queue operation per handler call."""
        with self.lock:
            if self.pending:
                self.queue.put(self.pending)
                self.pending = []

    def submit(self, *writes: tuple[Callable[[Any], None], Any]) -> None:
        """Hand writes to the thread at once, from any thread (a refusal the host answers outside the handler)."""
        self.queue.put(list(writes))

    def _run(self) -> None:
        next_usage = time.monotonic()
        while True:
            stopping = self.stopped.is_set()  # read first: what was flushed before stop() is written below
            writes: list[tuple[Callable[[Any], None], Any]] = []
            while not self.queue.empty():
                writes.extend(self.queue.get())
            if time.monotonic() >= next_usage:
                writes.append((update_worker_usage, self.model))
                next_usage = time.monotonic() + self.usage_interval
            for write, value in writes:
                try:
                    write(value)
                except Exception:  # a failed write loses one sample, never the thread
                    logging.getLogger(__name__).exception("metric write failed")
            if stopping:
                return
            self.stopped.wait(self.drain_interval)


RECORDERS: weakref.WeakSet[Recorder] = weakref.WeakSet()


@atexit.register
def stop_recorders() -> None:
    """Stop every recorder's thread before the interpreter finalizes."""
    for recorder in list(RECORDERS):
        recorder.stop()
