"""Locust users for the service: ``sample`` and ``interpolate`` in a configurable mix.

Run it through ``python -m loadtest`` (``make loadtest``), which adds the p50 gates; plain
``locust -f loadtest/locustfile.py --host http://127.0.0.1:8080`` works too. The mix comes from the
environment, so the runner and plain Locust agree:

- ``LOADTEST_MIX``: endpoint weights, default ``sample=3,interpolate=1``
- ``LOADTEST_N``: sample sizes drawn uniformly, default ``1,4,16,64``
- ``LOADTEST_STEPS``: interpolation lengths, default ``2,10,32``
- ``LOADTEST_FORMATS``: response formats, default ``png,json,npy``
- ``LOADTEST_WAIT``: think time between a user's requests, seconds, default ``0.5,1.5`` (uniform)

Seeds are random; interpolation endpoints are seeds, latents or images (the images, and the latent size of
the served model, come from the service itself: a json sample fetched once per user). A request counts as
failed unless it returns 200 with the content type of its format. Locust names requests by endpoint, so its
statistics are per endpoint.
"""

from __future__ import annotations

import json
import os
import random

from locust import HttpUser, between, task

CONTENT_TYPES = {"png": "image/png", "json": "application/json", "npy": "application/x-npy"}


def weights(spec: str) -> dict[str, int]:
    """``"sample=3,interpolate=1"`` -> {"sample": 3, "interpolate": 1}."""
    pairs = (item.split("=") for item in spec.split(",") if item.strip())
    return {name.strip(): int(weight) for name, weight in pairs}


def choices(spec: str) -> list[str]:
    return [item.strip() for item in spec.split(",") if item.strip()]


MIX = weights(os.environ.get("LOADTEST_MIX", "sample=3,interpolate=1"))
SIZES = [int(n) for n in choices(os.environ.get("LOADTEST_N", "1,4,16,64"))]
STEPS = [int(n) for n in choices(os.environ.get("LOADTEST_STEPS", "2,10,32"))]
FORMATS = choices(os.environ.get("LOADTEST_FORMATS", "png,json,npy"))
WAIT = [float(s) for s in choices(os.environ.get("LOADTEST_WAIT", "0.5,1.5"))]


class ServiceUser(HttpUser):
    """One client: mostly sampling, sometimes interpolating, thinking between requests like a person would."""

    wait_time = between(WAIT[0], WAIT[-1])

    def on_start(self) -> None:
        """Fetch two real images for image-input interpolation, and the served latent size from their latents."""
        response = self.client.post("/predictions/sample", json={"n": 2, "seed": random.getrandbits(32),
                                                                 "format": "json"}, name="setup")
        reply = json.loads(response.content) if response.status_code == 200 else {}
        self.images = reply.get("images")
        self.latent_dim = len(reply["latents"][0]) if reply else None

    def call(self, endpoint: str, body: dict) -> None:
        with self.client.post(f"/predictions/{endpoint}", json=body, name=endpoint, catch_response=True) as r:
            expected = CONTENT_TYPES[body["format"]]
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif r.headers.get("content-type") != expected:
                r.failure(f"content-type {r.headers.get('content-type')}, expected {expected}")

    @task(MIX.get("sample", 0))
    def sample(self) -> None:
        self.call("sample", {"n": random.choice(SIZES), "seed": random.getrandbits(32),
                             "temperature": random.choice([0.7, 1.0]), "format": random.choice(FORMATS)})

    @task(MIX.get("interpolate", 0))
    def interpolate(self) -> None:
        kind = random.choice(["seeds", "latents", "images"] if self.images else ["seeds"])
        if kind == "seeds":
            ends = [random.getrandbits(32), random.getrandbits(32)]
        elif kind == "latents":
            ends = [[round(random.gauss(0, 1), 4) for _ in range(self.latent_dim)] for _ in range(2)]
        else:
            ends = self.images
        self.call("interpolate", {kind: ends, "steps": random.choice(STEPS),
                                  "method": random.choice(["lerp", "slerp"]), "format": random.choice(FORMATS)})
