"""The benchmarks' errors, in the project's one error shape (``runtime/errors.py``)."""

from __future__ import annotations

from runtime.errors import FmvaeError


class BenchError(FmvaeError):
    """A benchmark cannot run here (a missing tool or input); the message says what to do."""

    reason = "bench_failed"
