"""Stops a TorchServe process group once its launcher is gone: ``python -m serving.watchdog GROUP [PATH ...]``.

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


def signal_group(group: int, sig: int, seconds: float) -> bool:
    """Send ``sig`` to process group ``group`` every 50 ms until the group is gone, at most ``seconds``;
    True when it is gone."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


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
