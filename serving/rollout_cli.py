"""The roll-out command's side (``python -m serving rollout EXPORT`` / ``rollback``, ``serving/rollout.py`` says
what they do): hand the request to the running launcher through its working directory and follow its lines."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from serving.rollout import LOG, PID_FILE, REQUEST, RESULT, Request, write
from serving.routes import ROUTES

ANSWER_S = 600.0  # how long the command waits for the launcher's result


def send(work_dir: Path, request: Request, out: Callable[[str], None] = print) -> int:
    """Hand ``request`` to the launcher of ``work_dir``, follow its lines and return the exit code."""
    try:
        pid = int((work_dir / PID_FILE).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        out(f"error: no running service in {work_dir} (no live {PID_FILE}): start one with `make serve`, or give its "
            "--work-dir")
        return 1
    (work_dir / RESULT).unlink(missing_ok=True)
    (work_dir / LOG).write_text("")
    write(work_dir / REQUEST, asdict(request))
    os.kill(pid, signal.SIGUSR1)
    deadline, shown = time.monotonic() + ANSWER_S, 0
    while time.monotonic() < deadline:
        lines = (work_dir / LOG).read_text().splitlines()
        for line in lines[shown:]:
            out(line)
        shown = len(lines)
        try:
            result = json.loads((work_dir / RESULT).read_text())
        except (OSError, ValueError):
            result = None
        if result and result.get("id") == request.id:
            out(result["line"])
            return 0 if result["ok"] else 1
        time.sleep(0.1)
    out(f"error: the launcher did not answer within {ANSWER_S:g} s")
    return 1


def main(argv: list[str]) -> int:
    """``python -m serving rollout EXPORT [...]`` or ``python -m serving rollback [...]``."""
    command, args = argv[0], argv[1:]
    cli = argparse.ArgumentParser(prog=f"python -m serving {command}", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    if command == "rollout":
        cli.add_argument("export", type=Path, help="the export folder `make export` wrote (e.g. model_store/export)")
        cli.add_argument("--canary", type=float, default=0.0, help="send this share of each route's requests (in "
                         "percent) to the new build first, then promote it or roll it back")
        cli.add_argument("--canary-seconds", type=float, default=30.0, help="how long the canary runs")
        cli.add_argument("--promote-if", type=float, default=1.5, help="promote a canary with no failed request and "
                         "a p50 at most this many times the serving build's")
    cli.add_argument("--routes", nargs="+", default=[], choices=sorted(ROUTES), metavar="ROUTE",
                     help="the routes to roll (default: every served route of the export's latent size)")
    cli.add_argument("--work-dir", type=Path, default=Path("runs/serve/work"), help="the running launcher's")
    parsed = cli.parse_args(args)
    request = Request(uuid.uuid4().hex, str(parsed.export.resolve()) if command == "rollout" else "",
                      tuple(parsed.routes), getattr(parsed, "canary", 0.0), getattr(parsed, "canary_seconds", 30.0),
                      getattr(parsed, "promote_if", 1.5), rollback=command == "rollback")
    return send(parsed.work_dir, request, lambda line: print(line, flush=True))
