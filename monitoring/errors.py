"""The monitoring stage's errors, in the project's one error shape (``runtime/errors.py``)."""

from __future__ import annotations

from runtime.errors import FmvaeError


class PrometheusError(FmvaeError):
    """Prometheus cannot run here, did not start, or a query failed; the message says why."""

    reason = "prometheus_failed"
