"""TorchServe's keys (token auth on): reading them from its key file, and renewing them before they expire.

TorchServe 0.12 writes ``KEY_FILE`` into its working directory: ``{"management": {"key", "expiration time"},
"inference": {...}, "API": {"key"}}``. The API key never expires and is what its token API takes
(``/token?type=inference|management`` on the management port); a management or inference key expires
``token_expiration_min`` after it was made, and from then on every request with it gets 400 InvalidKeyException,
/ping included. The launcher renews both at a third of their lifetime (``KeyRenewer``), so they never expire.
TorchServe replaces a renewed key at once, and rewrites the file a moment later: a client reads the key from the
key file for each request and, when a request is refused for its key (``refused_for_key``), waits for the file
to hold a new one (``next_key``) and retries once (the launcher's own client, the health check and the explorer
retry once). TorchServe rewrites the file in place, so a reader retries a file it finds incomplete.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from serving.errors import ServerError

RENEW_FRACTION = 1 / 3  # renew when this share of a key's lifetime has passed


def read_keys(key_file: Path, attempts: int = 50) -> dict[str, str]:
    """{"management": key, "inference": key, "API": key} from TorchServe's key file, retrying a partly written one."""
    for _ in range(attempts):
        try:
            return {kind: entry["key"] for kind, entry in json.loads(key_file.read_text()).items()}
        except (ValueError, KeyError, TypeError):
            time.sleep(0.01)
    raise ServerError(f"{key_file}: not a readable key file")


def renewed(read: Callable[[], str | None], refused: str | None, timeout: float = 2.0) -> str | None:
    """``read()`` once it no longer gives ``refused``: TorchServe starts refusing a renewed key a moment before it
    rewrites the key file, so a client refused for its key waits for the new one (at most ``timeout`` seconds;
    then whatever ``read`` gives)."""
    deadline, key = time.monotonic() + timeout, read()
    while key == refused and time.monotonic() < deadline:
        time.sleep(0.02)
        key = read()
    return key


def next_key(key_file: Path, kind: str, refused: str) -> str:
    """The ``kind`` key from ``key_file`` once it is no longer ``refused`` (``renewed``)."""
    return renewed(lambda: read_keys(key_file)[kind], refused)


def refused_for_key(status: int, body: bytes) -> bool:
    """Whether TorchServe refused a request for its key (a renewed or expired one): re-read it and retry once."""
    return status == 400 and b"InvalidKeyException" in body


class KeyRenewer:
    """A thread that renews the management and inference keys through TorchServe's token API every
    ``RENEW_FRACTION`` of ``lifetime_s``; ``renewals`` counts them. A failed renewal is reported on stderr and
    tried again at the next turn, well before the key expires."""

    def __init__(self, management_url: str, key_file: Path, lifetime_s: float) -> None:
        self.management_url, self.key_file = management_url, key_file
        self.interval = max(1.0, lifetime_s * RENEW_FRACTION)
        self.renewals = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="key-renewer", daemon=True)
        self.thread.start()

    def renew(self) -> None:
        """Both keys, now."""
        api_key = read_keys(self.key_file)["API"]
        for kind in ("management", "inference"):
            request = urllib.request.Request(f"{self.management_url}/token?type={kind}", method="POST",
                                             headers={"Authorization": f"Bearer {api_key}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        self.renewals += 1

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.renew()
            except (urllib.error.URLError, OSError, ServerError) as e:
                if not self.starting(e):
                    print(f"key renewal failed, trying again in {self.interval:.0f} s: {e}", file=sys.stderr,
                          flush=True)

    def starting(self, error: Exception) -> bool:
        """Whether ``error`` only says TorchServe has not written its keys or opened its port yet (not reported)."""
        refused = isinstance(getattr(error, "reason", error), ConnectionRefusedError)
        return not self.renewals and (not self.key_file.exists() or refused)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=15)
