"""TorchServe's log files read for what this server wrote: why a model failed to load, and the tail for error
messages. TorchServe's own files roll over at a size cap set in ``serving/torchserve/log4j2.xml``."""

from __future__ import annotations

import re
import time
from pathlib import Path

LOG_GRACE_S = 5.0  # how long a worker death waits for the worker's exception to reach model_log.log
# The workers' thread names in TorchServe's logs: W-<port>-<model>_<version>-stdout (or -stderr).
WORKER_VERSION = r"(?:[0-9a-f]{12}|[\d.]+)"


def exception_line(lines: list[str]) -> str | None:
    """The exception a worker's last traceback ends with ("module.Type: message"), from its log lines; None when
    they hold no complete traceback."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    return next((line for line in lines[starts[-1] + 1:] if line and not line[0].isspace()), None)


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
