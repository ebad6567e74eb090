"""Stops a TorchServe process group once its launcher is gone: ``python -m serving.watchdog GROUP``.

``serving/process.py`` starts it, in a session of its own, with the read end of a pipe as stdin and keeps the
write end. However the launcher ends (a return, a crash, kill -9), the kernel closes that end; the read here
returns and the group gets SIGTERM, then SIGKILL if it is still there after a few seconds. After a normal stop
the group is already gone and this process just exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time


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


def main(argv: list[str] | None = None) -> int:
    group = int((sys.argv[1:] if argv is None else argv)[0])
    sys.stdin.buffer.read()  # returns at end of file: the launcher's end of the pipe is closed
    if not signal_group(group, signal.SIGTERM, 5):
        signal_group(group, signal.SIGKILL, 10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
