"""A draining stop: the handlers answer every request they take up from then on with 503 ``shutting_down`` (they
see the drain file, ``handlers/service.py``), and the launcher waits until nothing is queued or being answered."""

from __future__ import annotations

import threading
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from serving.client import http_json

QUIET_SECONDS = 0.3  # a drain ends once nothing was queued or answered for this long


def in_flight(management_url: str, models: tuple[str, ...], key: Callable[[], str | None],
              registry: CollectorRegistry) -> tuple[int, float]:
    """(requests waiting in TorchServe's queues, requests the handlers have answered so far, not counting the 503s
    they answer while draining: clients that keep sending must not keep the drain going)."""
    pending = 0
    for model in models:
        for described in http_json(f"{management_url}/models/{model}", key=key):
            pending += described.get("jobQueueStatus", {}).get("pendingRequests", 0)
    answered = sum(s.value for metric in registry.collect() if metric.name == "fmvae_requests"
                   for s in metric.samples if s.name == "fmvae_requests_total" and s.labels.get("code") != "503")
    return pending, answered


def drain(drain_file: Path, state: Callable[[], tuple[int, float]], timeout: float, hurry: threading.Event) -> str:
    """Create ``drain_file`` (the handlers refuse new work) and wait until ``state()`` (``in_flight``) shows
    nothing queued and no change for QUIET_SECONDS, at most ``timeout`` seconds or until ``hurry`` is set.
    Returns how it ended, in one line for the operator."""
    drain_file.touch()
    started = time.monotonic()
    deadline = started + timeout
    last, quiet_since = None, started
    while time.monotonic() < deadline and not hurry.is_set():
        try:
            now = state()
        except (urllib.error.URLError, OSError, ValueError):
            return "drain ended: the management API no longer answers"
        if now != last or now[0] > 0:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_SECONDS:
            return f"drained in {time.monotonic() - started:.1f} s: nothing queued or answered for {QUIET_SECONDS:g} s"
        time.sleep(0.05)
    if hurry.is_set():
        return f"drain cut short after {time.monotonic() - started:.1f} s (asked to stop now)"
    queued = "" if last is None else f" with {last[0]} request(s) still queued"
    return f"drain timed out after {timeout:g} s{queued}"
