"""The retry rule every client of the service follows (README, "Errors"), defined once.

Every operation is a pure function of its body, so a request may be sent again. Retry an answer that says the
service is busy or lost the request's worker: 503 (a full queue, ``overloaded``, or ``shutting_down``), 507
(TorchServe's own full queue) and TorchServe's "Worker died." 500, and a connection reset or refused before an
answer came. Wait between tries with exponential backoff and jitter, never less than the answer's
``Retry-After``; give up after ``ATTEMPTS`` tries. The client (``fmvae_client.Client``) and the load test's users
follow it.
"""

from __future__ import annotations

import random

ATTEMPTS = 5  # the first try and four retries
BASE_S = 0.1  # the first retry's backoff before jitter; doubled each retry
CAP_S = 5.0  # no wait longer than this
RETRY_STATUSES = (503, 507)


def retryable(status: int, body: bytes) -> bool:
    """Whether an answer with ``status`` and ``body`` should be retried."""
    return status in RETRY_STATUSES or (status == 500 and b"Worker died" in body)


def backoff(retry: int, retry_after: str | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (0 for the first): the larger of the exponential backoff and
    the answer's ``Retry-After`` seconds, times a uniform jitter in [1, 1.5] so that clients refused together
    do not come back together, capped."""
    try:
        after = float(retry_after) if retry_after else 0.0
    except ValueError:  # an HTTP date, which this service never sends
        after = 0.0
    return min(CAP_S, max(after, BASE_S * 2 ** retry) * random.uniform(1.0, 1.5))
