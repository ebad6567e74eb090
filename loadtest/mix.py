"""The request mix, shared by the Locust users and the runner (which must not import Locust itself).

Every route of ``serving/routes.py`` is in the default mix with its ``load_weight``. ``LOADTEST_MIX`` overrides
the weights, e.g. ``sample=3,interpolate=1``; a route left out (or weighted 0) gets no requests and no gate.
"""

from __future__ import annotations

import os

from serving.routes import ROUTES

CONTENT_TYPES = {"png": "image/png", "json": "application/json", "npy": "application/x-npy", "gif": "image/gif"}
RETRIED = " (retried)"  # the suffix of the name Locust reports a retried attempt under
DEFAULT_MIX = ",".join(f"{name}={route.load_weight}" for name, route in ROUTES.items())


def choices(spec: str) -> list[str]:
    """``"a, b,c"`` -> ["a", "b", "c"]."""
    return [item.strip() for item in spec.split(",") if item.strip()]


def weights(spec: str) -> dict[str, int]:
    """``"sample=3,interpolate=1"`` -> {"sample": 3, "interpolate": 1}."""
    return {name.strip(): int(weight) for name, weight in (item.split("=") for item in choices(spec))}


def mix() -> dict[str, int]:
    """The routes in the mix (``LOADTEST_MIX`` or the default) and their weights, zero weights dropped."""
    return {name: w for name, w in weights(os.environ.get("LOADTEST_MIX", DEFAULT_MIX)).items() if w > 0}
