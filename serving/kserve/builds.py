"""The builds a KServe host process serves, and the switch between them (a live roll-out, ``serving/rollout.py``).

Every process holds, per route, the ``Lane`` of each build it has loaded, numbered by a generation. Which one a
request goes to is read, per request, from the host's ``Switchboard``: a small memory-mapped file the launcher
writes and every process maps, so one write switches every process at the same instant. A request goes wholly to
the build it was given; a build that no route serves any more is dropped by each process once its queue is empty,
and its networks are freed. Roll-out messages (prepare a generation, abort it, or report) reach the processes
through a file and SIGUSR1 (the supervisor forwards it); each process answers in a status file of its own.
"""

from __future__ import annotations

import ctypes
import gc
import json
import mmap
import os
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handlers import service as worker_service
from runtime import artifacts, backends
from runtime.manifest import Manifest
from serving.inprocess import service_of
from serving.kserve.lane import Lane, Threads
from serving.kserve.settings import RouteSettings
from serving.routes import ROUTES, example_for

SLOT = struct.Struct("<IIH2x")  # per route: the serving generation, the canary generation, the canary share (1e-4)
MESSAGE = "rollout.json"  # the launcher's message to the processes, in the host's control folder (its temp dir)
SWITCHBOARD = "switchboard"  # the Switchboard's file there
ANSWERING = threading.Lock()  # one message at a time in a process (a SIGUSR1 may come while one is answered)
PARITY_LATENTS = 16  # prior draws a new build decodes against its export's fp32 decoder before it may serve
PSNR_MIN_DB = 40.0  # the export's parity bar (export/config.py), applied to those draws


def status_file(folder: Path, index: int) -> Path:
    """Where serving process ``index`` answers roll-out messages."""
    return folder / f"rollout-{index}.json"


class Switchboard:
    """Which build serves each route, in a memory-mapped file (``routes`` in a fixed order): the serving
    generation, and a canary generation with its share of the requests (0: none)."""

    def __init__(self, path: Path, routes: tuple[str, ...]) -> None:
        self.index = {route: i for i, route in enumerate(routes)}
        with open(path, "r+b") as f:
            self.map = mmap.mmap(f.fileno(), SLOT.size * len(routes))

    @staticmethod
    def create(path: Path, routes: tuple[str, ...], generation: int = 1) -> Switchboard:
        path.write_bytes(SLOT.pack(generation, 0, 0) * len(routes))
        return Switchboard(path, routes)

    def read(self, route: str) -> tuple[int, int, float]:
        serving, canary, share = SLOT.unpack_from(self.map, SLOT.size * self.index[route])
        return serving, canary, share / 1e4

    def write(self, route: str, serving: int, canary: int = 0, share: float = 0.0) -> None:
        SLOT.pack_into(self.map, SLOT.size * self.index[route], serving, canary, round(share * 1e4))

    def generations(self) -> set[int]:
        """Every generation a route serves or tries now."""
        return {g for route in self.index for g in self.read(route)[:2] if g}


@dataclass
class Tally:
    """A build's answers during a canary: how many, how many failed (500 or more), and their times."""

    answered: int = 0
    failed: int = 0
    seconds: list[float] = field(default_factory=list)


class Builds:
    """The lanes of one process by route and generation; ``lane(route)`` is the one a new request goes to. A
    roll-out's new build is loaded on a thread of its own (``prepare``) while the event loop serves."""

    def __init__(self, routes: dict[str, RouteSettings], switchboard: Switchboard, gpu_of: dict[str, int | None],
                 threads: Threads) -> None:
        self.switchboard, self.gpu_of, self.threads = switchboard, gpu_of, threads
        self.lanes: dict[str, dict[int, Lane]] = {route: {} for route in routes}
        self.pending: set[int] = set()  # prepared generations not switched to yet: kept until switched or aborted
        self.requests = Counter()
        self.tallies: dict[tuple[str, int], Tally] = {}
        for route, settings in routes.items():
            self.lanes[route][settings.generation] = self.load(route, settings)
        self.loading = threading.Lock()

    def load(self, route: str, settings: RouteSettings) -> Lane:
        service = service_of(settings.operation).load(route, Path(settings.export_dir), settings.worker,
                                                      self.gpu_of[route])
        return Lane(service, settings.queue_size, settings.batch_size,
                    self.threads.light if settings.light else self.threads.heavy, self.threads.encoders)

    def lane(self, route: str) -> tuple[Lane, int]:
        """The lane a new request of ``route`` goes to, and its generation: the canary's for its share of the
        requests (every n-th, spread evenly), else the serving build's."""
        serving, canary, share = self.switchboard.read(route)
        lanes = self.lanes[route]
        if canary in lanes and share > 0:
            self.requests[route] += 1
            n = self.requests[route]
            if int(n * share) != int((n - 1) * share):
                return lanes[canary], canary
        return lanes.get(serving) or next(iter(lanes.values())), serving

    def tally(self, route: str, generation: int, status: int, seconds: float) -> None:
        """Count an answer while a canary runs (what the roll-out compares)."""
        if self.switchboard.read(route)[1]:
            tally = self.tallies.setdefault((route, generation), Tally())
            tally.answered += 1
            tally.failed += status >= 500
            tally.seconds.append(seconds)

    def prepare(self, generation: int, routes: dict[str, RouteSettings]) -> str | None:
        """Load ``routes``' new build as ``generation``, answer each route's example and check its decoder against
        the export's fp32 one; None when it may serve, else why not (what was loaded is dropped)."""
        with self.loading:
            loaded: dict[str, Lane] = {}
            try:
                for route, settings in routes.items():
                    loaded[route] = lane = self.load(route, settings)
                    probe(route, lane, Path(settings.export_dir))
            except Exception as e:  # noqa: BLE001 - any failure of a new build is a refusal, named
                for lane in loaded.values():
                    release(lane)
                give_back()
                return f"{type(e).__name__}: {e}"
            self.pending.add(generation)
            for route, lane in loaded.items():
                self.lanes[route][generation] = lane
            return None

    def collect(self) -> None:
        """Drop the builds no route serves or tries any more (an old one after a switch, a canary after it ended, a
        build whose roll-out was aborted), once their queues are empty; runs in the event loop."""
        released = False
        for route, lanes in list(self.lanes.items()):
            serving, canary, _ = self.switchboard.read(route)
            if serving not in lanes or self.loading.locked():  # a build it has not loaded yet: keep what it has
                continue
            for generation, lane in list(lanes.items()):
                if generation in self.pending and generation > serving:
                    continue
                self.pending.discard(generation)
                if generation not in (serving, canary) and lane.idle():
                    release(lanes.pop(generation))
                    released = True
        if released:
            give_back()

    def report(self) -> dict:
        """The tallies and the builds held, for the launcher."""
        return {"builds": {route: sorted(lanes) for route, lanes in list(self.lanes.items())},
                "tallies": {f"{route}/{g}": {"answered": t.answered, "failed": t.failed,
                                              "p50_ms": 1e3 * float(np.median(t.seconds)) if t.seconds else None}
                            for (route, g), t in list(self.tallies.items())}}


def probe(route: str, lane: Lane, export_dir: Path) -> None:
    """Raise unless the new build answers its route's example (200) and decodes prior draws as the export's fp32
    decoder does (PSNR at least the parity bar)."""
    worker = lane.service.worker
    body = example_for(ROUTES[route].operation if route in ROUTES else lane.service.operation,
                       worker.shapes.latent_dim) | {"format": "npy"}
    (reply,) = lane.service.answer([json.dumps(body).encode()])
    if reply.status != 200:
        raise RuntimeError(f"{route}: its example answered {reply.status}: {reply.body[:200].decode(errors='replace')}")
    z = np.random.default_rng(0).standard_normal((PARITY_LATENTS, worker.shapes.latent_dim)).astype(np.float32)
    reference = backends.load(artifacts.DECODERS["onnx-fp32"], export_dir)(z)
    served = worker.decoder(z)
    images = [1 / (1 + np.exp(-a.astype(np.float64))) for a in (served, reference)]
    mse = float(np.mean((images[0] - images[1]) ** 2))
    psnr = 10 * np.log10(1 / mse) if mse > 0 else np.inf
    if psnr < PSNR_MIN_DB:
        raise RuntimeError(f"{route}: its decoder is {psnr:.1f} dB from the export's fp32 decoder (bar "
                           f"{PSNR_MIN_DB:g} dB): not this export's model")
    Manifest.read(export_dir)  # the export still reads whole


def release(lane: Lane) -> None:
    """Let go of a build's lane: its networks and statistics leave the process's caches (``give_back`` returns the
    memory)."""
    worker_service.forget(Path(lane.service.worker.model_dir))
    lane.service.worker = None


def give_back() -> None:
    """Return the memory of what was let go to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused, not returned
        pass


def answer_message(folder: Path, index: int, builds: Builds) -> None:
    """Carry out the launcher's latest message (``MESSAGE``) and answer it in this process's status file; a fault
    answers too, as a refusal."""
    with ANSWERING:
        message = json.loads((folder / MESSAGE).read_text())
        generation = message["generation"]
        try:
            reply = carry_out(builds, message)
        except Exception as e:  # noqa: BLE001 - the launcher waits for an answer: it gets one, saying why
            reply = {"state": "failed", "why": f"{type(e).__name__}: {e}"}
        reply |= builds.report() | {"id": message["id"], "generation": generation, "pid": os.getpid()}
        tmp = status_file(folder, index).with_suffix(".tmp")
        tmp.write_text(json.dumps(reply))
        os.replace(tmp, status_file(folder, index))


def carry_out(builds: Builds, message: dict) -> dict:
    """What one message asks: prepare a generation, abort it (``collect`` then drops it: no route serves it), or
    report."""
    generation = message["generation"]
    if message["action"] == "prepare":
        why = builds.prepare(generation, {name: RouteSettings.from_dict(r) for name, r in message["routes"].items()})
        return {"state": "ready" if why is None else "failed", "why": why}
    if message["action"] == "abort":
        builds.pending.discard(generation)
        return {"state": "aborted"}
    return {"state": "report"}
