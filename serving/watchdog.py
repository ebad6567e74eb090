"""Stops a host's process group (its whole session) once its launcher is gone:
``python -m serving.watchdog GROUP [PATH ...]``.

``serving/process.py`` starts it, in a session of its own, with the read end of a pipe as stdin and keeps the
write end. However the launcher ends (a return, a crash, kill -9), the kernel closes that end; the read here
returns and the group gets SIGTERM, then SIGKILL if it is still there after a few seconds, and the PATHs the
launcher would have removed (its temp dir, its drain mark) are removed. After a normal stop the group is already
gone and the launcher cleans up itself: this process just exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path


def members(session: int) -> list[int]:
    """The live processes of ``session`` (zombies left out: they cannot be signalled away). A session, not a
    process group: a command may move its children to groups of their own (Ray's raylet does), never out of it."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            found.append(int(stat.parent.name))
    return found


def signal_group(group: int, sig: int, seconds: float) -> bool:
    """Send ``sig`` to every process of session ``group`` (the session its leader, pid ``group``, started) every
    50 ms until none is left, at most ``seconds``; True when none is left."""
    deadline = time.monotonic() + seconds
    while True:
        pids = members(group)
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def alive(group: int) -> bool:
    return bool(members(group))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    group, leftovers = int(args[0]), [Path(p) for p in args[1:]]
    sys.stdin.buffer.read()  # returns at end of file: the launcher's end of the pipe is closed
    if not alive(group):  # a normal stop
        return 0
    if not signal_group(group, signal.SIGTERM, 5):
        signal_group(group, signal.SIGKILL, 10)
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
