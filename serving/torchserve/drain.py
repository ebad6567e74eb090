"""A draining stop: the launcher marks the drain (the handlers answer every request they take up from then on with
503 ``shutting_down``, ``handlers/service.py``), closes TorchServe's listener (``serving/listener.py``: new
connections are refused, open ones are answered), and waits for the work accepted before; then the JVM stops.

The end is decided by accepted work only, so clients that keep sending cannot hold it open: with the listener
closed, once nothing is queued and nothing was answered for QUIET_SECONDS (every open connection has had its last
answer: a 503 closes it); where the listener could not be closed, once every request queued at the start has been
answered and no request got a non-503 answer for QUIET_SECONDS (requests that arrive during the JVM's stop may
then be cut off, and the drain line says why).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fmvae_client import ClientError, Keys, fetch
from prometheus_client import CollectorRegistry

from serving.host import QUIET_SECONDS, cut_short, drained, timed_out


@dataclass(frozen=True)
class Load:
    """What the server holds and has done: requests waiting in TorchServe's queues, and the requests the handlers
    have answered so far, in all and other than with 503."""

    queued: int
    answered: float
    answered_not_503: float


def in_flight(management_url: str, models: tuple[str, ...], keys: Keys,
              registry: CollectorRegistry) -> Load:
    """The server's ``Load`` now, from the management API and the handlers' metrics."""
    queued = 0
    for model in models:
        for described in fetch(f"{management_url}/models/{model}", keys):
            queued += described.get("jobQueueStatus", {}).get("pendingRequests", 0)
    answered = not_503 = 0.0
    for metric in registry.collect():
        if metric.name == "fmvae_requests":
            for s in metric.samples:
                if s.name == "fmvae_requests_total":
                    answered += s.value
                    not_503 += s.value if s.labels.get("code") != "503" else 0
    return Load(queued, answered, not_503)


def drain(drain_file: Path, state: Callable[[], Load], timeout: float, hurry: threading.Event,
          close_door: Callable[[], str | None]) -> str:
    """Create ``drain_file`` (the handlers refuse new work), ``close_door()`` (None once new connections are
    refused, else why not), and wait for the accepted work (see the module's docstring), at most ``timeout``
    seconds or until ``hurry`` is set. Returns how it ended, in one line for the operator."""
    drain_file.touch()
    started = time.monotonic()
    deadline = started + timeout
    try:
        door = close_door()
        first = state()
    except (ClientError, OSError, ValueError):
        return "drain ended: the management API no longer answers"
    how = "new connections refused" if door is None else f"listener left open: {door}"
    last, quiet_since = first, time.monotonic()
    while time.monotonic() < deadline and not hurry.is_set():
        try:
            now = state()
        except (ClientError, OSError, ValueError):
            return "drain ended: the management API no longer answers"
        if door is None:
            settled = now.queued == 0 and now == last
        else:
            settled = now.answered >= first.answered + first.queued and now.answered_not_503 == last.answered_not_503
        if not settled:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_SECONDS:
            return drained(time.monotonic() - started, how)
        time.sleep(0.05)
    if hurry.is_set():
        return cut_short(time.monotonic() - started)
    return timed_out(timeout, f"with {last.queued} request(s) still queued ({how})")
