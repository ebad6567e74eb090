"""TorchServe's keys (token auth on): renewing them before they expire.

TorchServe 0.12 writes ``KEY_FILE`` into its working directory: ``{"management": {"key", "expiration time"},
"inference": {...}, "API": {"key"}}``. The API key never expires and is what its token API takes
(``/token?type=inference|management`` on the management port); a management or inference key expires
``token_expiration_min`` after it was made, and from then on every request with it gets 400 InvalidKeyException,
/ping included. The launcher renews both at a third of their lifetime (``KeyRenewer``), so they never expire.
TorchServe replaces a renewed key at once, and rewrites the file a moment later: a client reads the key from the
key file and, when a request is refused for its key, waits for the file to hold a new one and retries once (the
client package's ``Keys``, which the launcher, the health check and the explorer use). TorchServe rewrites the
file in place, so a reader retries a file it finds incomplete.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from fmvae_client import ClientError, Keys, TransportError, request

from serving.errors import ServerError

RENEW_FRACTION = 1 / 3  # renew when this share of a key's lifetime has passed


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
        """Both keys, now (TorchServe's token API, with the API key)."""
        for kind in ("management", "inference"):  # its answer is not JSON (a key file's text): status only
            answer = request("POST", f"{self.management_url}/token?type={kind}",
                             keys=Keys(key_file=self.key_file, kind="API"), timeout=10)
            if answer.status != 200:
                raise ServerError(f"the token API answered {answer.status}: {answer.body[:200]!r}")
        self.renewals += 1

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.renew()
            except (ClientError, ServerError) as e:
                if not self.starting(e):
                    print(f"key renewal failed, trying again in {self.interval:.0f} s: {e}", file=sys.stderr,
                          flush=True)

    def starting(self, error: Exception) -> bool:
        """Whether ``error`` only says TorchServe has not written its keys or opened its port yet (not reported)."""
        refused = isinstance(error, TransportError)  # no answer: its port is not open yet
        return not self.renewals and (not self.key_file.exists() or refused)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=15)
