"""A live roll-out on the KServe host (``serving/rollout.py`` says what the command does): every serving process
loads the new build beside the old one and probes it (``serving/kserve/builds.py``), one write of the switchboard
switches them all at once (or sends a canary its share first), and each process frees the old build once its queue
is empty."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from serving.errors import RolloutError
from serving.kserve.builds import MESSAGE, status_file
from serving.kserve.settings import SETTINGS_FILE, RouteSettings
from serving.rollout import Request, write

if TYPE_CHECKING:  # the host imports this module
    from serving.kserve.host import KServe


def rollout(host: KServe, routes: dict[str, Path], request: Request, say: Callable[[str], None]) -> None:
    """Every process loads the new build beside the old one, warms and probes it (``builds.prepare``); once all
    have, one write of the switchboard switches every process (or, with a canary, sends it its share first);
    each process drops the old build once its queue is empty. A process that fails or dies meanwhile leaves
    the old build serving, untouched."""
    generation = max(r.generation for r in host.settings.routes.values()) + 1
    new = {route: RouteSettings.of(host.specs[route], folder.resolve(), host.config.kserve.batch_size,
                                   host.processes, generation) for route, folder in routes.items()}
    started = time.monotonic()
    try:
        answers = message(host, {"action": "prepare", "generation": generation,
                                "routes": {r: settings.to_dict() for r, settings in new.items()}})
    except RolloutError:
        abort(host, generation)
        raise
    failed = {i: a.get("why") or f"answered {a['state']}" for i, a in answers.items() if a["state"] != "ready"}
    if failed:
        abort(host, generation)
        raise RolloutError("the new build was refused, the old one serves on: "
                           + "; ".join(f"process {i}: {why}" for i, why in failed.items()))
    say(f"{len(answers)} processes loaded and probed generation {generation} in {time.monotonic() - started:.1f} s")
    old = {route: host.settings.routes[route].generation for route in routes}
    if request.canary:
        try:
            canary(host, routes, old, generation, request, say)
        except RolloutError:
            abort(host, generation)
            raise
    host.settings = replace(host.settings, routes=host.settings.routes | new)
    write(host.tmp / SETTINGS_FILE, host.settings.to_json())  # a replacement process loads the new build
    for route in routes:
        host.switchboard.write(route, generation)
    say(f"switched {', '.join(routes)} to generation {generation} in every process")
    wait_freed(host, routes, old, say)


def abort(host: KServe, generation: int) -> None:
    """Have every process drop ``generation`` (the processes that loaded it)."""
    try:
        message(host, {"action": "abort", "generation": generation})
    except RolloutError:  # a process gone: its replacement never loaded it
        pass


def canary(host: KServe, routes: dict[str, Path], old: dict[str, int], generation: int, request: Request,
           say: Callable[[str], None]) -> None:
    """Send ``request.canary`` percent of each route's requests to ``generation`` for ``canary_seconds``, then
    compare the builds; RolloutError (the canary stopped) unless the rule promotes it."""
    for route in routes:
        host.switchboard.write(route, old[route], generation, request.canary / 100)
    say(f"canary: {request.canary:g}% of {', '.join(routes)} to generation {generation} for "
        f"{request.canary_seconds:g} s")
    time.sleep(request.canary_seconds)
    totals = {build: {"answered": 0, "failed": 0, "p50s": []} for build in ("serving", "new")}
    for answer in message(host, {"action": "report", "generation": generation}).values():
        for key, tally in answer["tallies"].items():
            total = totals["new" if int(key.rsplit("/", 1)[1]) == generation else "serving"]
            total["answered"] += tally["answered"]
            total["failed"] += tally["failed"]
            total["p50s"] += [tally["p50_ms"]] if tally["p50_ms"] is not None else []
    p50 = {build: max(t["p50s"]) if t["p50s"] else None for build, t in totals.items()}  # the slowest process's
    say("canary: " + "; ".join(f"{build} build {t['answered']} answers, {t['failed']} failed, p50 {p50[build]} ms"
                               for build, t in totals.items()))
    new = totals["new"]
    promote = (new["answered"] > 0 and new["failed"] == 0 and p50["serving"] is not None
               and p50["new"] <= request.promote_if * p50["serving"])
    if not promote:
        for route in routes:
            host.switchboard.write(route, old[route])
        raise RolloutError(f"canary not promoted (rule: no failed request and a p50 at most "
                           f"{request.promote_if:g} times the serving build's): the old build serves on")
    say("canary promoted")


def message(host: KServe, message: dict, timeout: float = 300) -> dict[int, dict]:
    """Hand every serving process a roll-out message and collect their answers ({index: answer}); RolloutError
    when a process is replaced meanwhile or does not answer in time."""
    message = message | {"id": uuid.uuid4().hex}
    write(host.tmp / MESSAGE, json.dumps(message))
    host.process.send_signal(signal.SIGUSR1)  # the supervisor passes it on
    deadline, answers = time.monotonic() + timeout, {}
    while len(answers) < host.processes:
        gaps = host.notes(host.probe())
        if gaps or host.died():
            raise RolloutError(f"a serving process died during the roll-out ({'; '.join(gaps)}): the old build "
                               "serves on")
        if time.monotonic() > deadline:
            raise RolloutError(f"{host.processes - len(answers)} processes did not answer in {timeout:g} s: the "
                               "old build serves on")
        for i in range(host.processes):
            try:
                answer = json.loads(status_file(host.tmp, i).read_text())
            except (OSError, ValueError):
                continue
            if answer["id"] == message["id"]:
                answers[i] = answer
        time.sleep(0.05)
    return answers


def wait_freed(host: KServe, routes: dict[str, Path], old: dict[str, int], say: Callable[[str], None],
               timeout: float = 60) -> None:
    """Until every process has dropped the old builds (their queues answered)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        answers = message(host, {"action": "report", "generation": -1})
        if all(old[r] not in a["builds"][r] for a in answers.values() for r in routes):
            say(f"the old build drained and was freed in every process in {time.monotonic() - started:.1f} s")
            return
        time.sleep(0.2)
    say(f"the old build still held after {timeout:g} s (a long request?): it is freed once idle")

