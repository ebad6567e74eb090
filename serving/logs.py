"""A host's output as the launcher keeps it: copied into size-capped files that roll over, never blocking the
process on a full disk; and the log folder checked before a start. TorchServe's own log files:
``serving/torchserve/logs.py``."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from serving.errors import ServerError


class RotatingFile:
    """An append-only log file that rolls over to ``.1`` .. ``.N`` at ``max_bytes``, keeping ``backups`` copies.
    A write that fails (OSError: the folder is full or unwritable) leaves the file closed; the next write opens it
    again."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.file = open(path, "ab")

    def write(self, data: bytes) -> None:
        try:
            self._write(data)
        except OSError:
            self.close()
            raise

    def _write(self, data: bytes) -> None:
        if self.file.closed:
            self.file = open(self.path, "ab")
        if self.file.tell() + len(data) > self.max_bytes and self.file.tell() > 0:
            self.file.close()
            for i in range(self.backups, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i - 1}") if i > 1 else self.path
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i}"))
            if self.backups == 0:
                self.path.unlink(missing_ok=True)
            self.file = open(self.path, "ab")
        self.file.write(data)
        self.file.flush()

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # the buffer could not be written out: what it held is lost, as the failed write said
            pass


def copy_output(stream: IO[bytes], output: RotatingFile, name: str = "torchserve-output",
                on_line: Callable[[bytes], None] | None = None) -> threading.Thread:
    """A started thread that copies a process's output into ``output`` until the process closes it (``on_line`` sees
    each line first). While the file cannot be written (a full or unwritable log folder) the output is read and
    dropped, with one line on stderr when that starts and one when it ends: the process never blocks on a full
    pipe."""
    def run() -> None:
        dropping = False
        try:
            for line in iter(stream.readline, b""):
                if on_line is not None:
                    on_line(line)
                try:
                    output.write(line)
                except OSError as e:
                    if not dropping:
                        print(f"{output.path}: cannot write ({e.strerror}): dropping this output until it can",
                              file=sys.stderr, flush=True)
                    dropping = True
                    continue
                if dropping:
                    print(f"{output.path}: writing again", file=sys.stderr, flush=True)
                    dropping = False
        finally:
            output.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def check_writable(folder: Path) -> None:
    """Raise ServerError naming ``folder`` unless it exists (or can be made) and a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-") as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as e:
        raise ServerError(f"{folder}: the log folder is not writable ({e.strerror or e}); pick another with "
                          "--log-dir") from None
