"""TorchServe's logs as the launcher handles them: its own output copied into a size-capped ``torchserve.out``,
and the log files read for what this server wrote (why a model failed to load, the tail for error messages).

TorchServe's own files roll over at a size cap set in ``serving/log4j2.xml``.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from serving.errors import ServerError

LOG_GRACE_S = 5.0  # how long a worker death waits for the worker's exception to reach model_log.log
# The workers' thread names in TorchServe's logs: W-<port>-<model>_<version>-stdout (or -stderr).
WORKER_VERSION = r"(?:[0-9a-f]{12}|[\d.]+)"


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


def exception_line(lines: list[str]) -> str | None:
    """The exception a worker's last traceback ends with ("module.Type: message"), from its log lines; None when
    they hold no complete traceback."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    return next((line for line in lines[starts[-1] + 1:] if line and not line[0].isspace()), None)


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


class ServerLogs:
    """The log folder of one server. It may hold earlier runs' logs: reads start where the files ended when
    ``mark`` was called (a smaller file has rolled over since, and is read whole)."""

    def __init__(self, log_dir: Path) -> None:
        self.dir = log_dir
        self._offsets: dict[str, int] = {}
        self._deaths: dict[str, float] = {}  # model -> when its workers were first seen dying while loading

    def mark(self) -> None:
        """Remember where every log file ends now: what follows is this server's."""
        self._offsets = {p.name: p.stat().st_size for p in self.dir.glob("*.log")}

    def read(self, name: str) -> str:
        """What this server has written to one of TorchServe's logs."""
        path = self.dir / name
        if not path.is_file():
            return ""
        with open(path, "rb") as f:
            offset = self._offsets.get(name, 0)
            f.seek(offset if offset <= path.stat().st_size else 0)
            return f.read().decode(errors="replace")

    def load_failure(self, models: set[str], model_store: Path) -> str | None:
        """TorchServe's reason why one of ``models`` cannot start: it could not load the archive, or a worker died
        while loading it (the last exception line the worker printed)."""
        ts_log = self.read("ts_log.log")
        for model in sorted(models):
            failed = re.search(rf"Failed to load model: {re.escape(model)}\.mar\n(.*)", ts_log)
            if failed:
                return f"{model_store / model}.mar: TorchServe could not load it: {failed.group(1).strip()}"
            if f"Load model failed: {model}, error: Worker died." in ts_log:
                cause = exception_line(re.findall(rf"W-\d+-{re.escape(model)}_{WORKER_VERSION}-std(?:out|err) "
                                                  r"MODEL_LOG - (.*)", self.read("model_log.log")))
                # The worker's output reaches model_log.log a moment after ts_log.log says it died: wait for it
                # (at most LOG_GRACE_S) rather than report a death without its reason.
                first_seen = self._deaths.setdefault(model, time.monotonic())
                if cause is None and time.monotonic() - first_seen < LOG_GRACE_S:
                    continue
                reason = cause or "no traceback in model_log.log"
                return f"model {model}: its workers die while loading: {reason} (see {self.dir}/model_log.log)"
        return None

    def tail(self, lines: int = 40) -> str:
        """The last lines of TorchServe's logs, for error messages."""
        text = []
        for name in ("torchserve.out", "ts_log.log", "model_log.log"):
            path = self.dir / name
            if path.is_file():
                text += [f"--- {path}"] + path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)
