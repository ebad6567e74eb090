"""The request mix, shared by the Locust users and the runner (which must not import Locust itself).

``LOADTEST_MIX`` weights the endpoints, e.g. ``sample=3,interpolate=1``; an endpoint left out (or weighted 0)
gets no requests and no gate.
"""

from __future__ import annotations

import os

DEFAULT_MIX = ("sample=3,interpolate=1,encode=1,decode=1,reconstruct=1,traverse=1,edit=1,analogy=1,walk=1,"
               "sample2d=1,decode2d=1,encode2d=1,interpolate2d=1,edit2d=1")


def choices(spec: str) -> list[str]:
    """``"a, b,c"`` -> ["a", "b", "c"]."""
    return [item.strip() for item in spec.split(",") if item.strip()]


def weights(spec: str) -> dict[str, int]:
    """``"sample=3,interpolate=1"`` -> {"sample": 3, "interpolate": 1}."""
    return {name.strip(): int(weight) for name, weight in (item.split("=") for item in choices(spec))}


def mix() -> dict[str, int]:
    """The endpoints in the mix (``LOADTEST_MIX`` or the default) and their weights, zero weights dropped."""
    return {name: w for name, w in weights(os.environ.get("LOADTEST_MIX", DEFAULT_MIX)).items() if w > 0}
