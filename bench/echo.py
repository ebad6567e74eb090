"""TorchServe handler that returns each request body unchanged: the framework's latency floor in benchmarks."""

from __future__ import annotations

from typing import Any


def handle(data: list | None, context: Any) -> list | None:
    """One reply per request: its own body."""
    if data is None:
        return None
    return [row.get("body", row.get("data")) or b"" for row in data]
