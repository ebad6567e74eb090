"""Locust users for the service: every route of ``serving/routes.py`` in a configurable mix.

Run it through ``python -m loadtest`` (``make loadtest``), which adds the p50 gates; plain
``locust -f loadtest/locustfile.py --host http://127.0.0.1:8080`` works too. The mix comes from the
environment, so the runner and plain Locust agree:

- ``LOADTEST_MIX``: route weights, default each route's ``load_weight`` (loadtest/mix.py)
- ``LOADTEST_N``: sample sizes drawn uniformly, default ``1,4,16,64``
- ``LOADTEST_STEPS``: interpolation lengths, default ``2,10,32``
- ``LOADTEST_FORMATS``: response formats, default ``png,json,npy``
- ``LOADTEST_WAIT``: think time between a user's requests, seconds, default ``0.5,1.5`` (uniform)

A route's request is made for its operation (``BODIES``, varied: seeds, latents, images or classes as points,
several formats) in its model's latent space. The latent size of each model and two real images come from the
service itself, a json sample of the model fetched by each user before its first request to one of the model's
routes (and again before the next one while it has failed), so a body is always of its route's model. The 2-d
routes are called as the explorer page calls them (json).

Every request follows the clients' retry rule (``fmvae_client.retry``: 503, 507 and "Worker died." 500 retried with
backoff and jitter). A retried attempt is reported under ``<route> (retried)``, apart from the route's own row,
which times the attempt that was answered; a request counts as failed when its last attempt is not a 200 with the
content type of its format. Locust names requests by route, so its statistics are per route.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable

from fmvae_client import retry
from locust import HttpUser, between

from handlers.schema import PATH_PREFIX
from loadtest.bodies import BODIES, EXPLORER_STYLE, Points
from loadtest.mix import CONTENT_TYPES, RETRIED, choices, mix
from serving.routes import ROUTES, Route

MIX = mix()
WAIT = [float(s) for s in choices(os.environ.get("LOADTEST_WAIT", "0.5,1.5"))]


def route_task(name: str) -> Callable[[HttpUser], None]:
    """The Locust task that calls route ``name``."""
    def task(user: ServiceUser) -> None:
        user.call(name, ROUTES[name])

    task.__name__ = name
    return task


class ServiceUser(Points, HttpUser):
    """One client using every route in the mix, thinking between requests like a person would."""

    wait_time = between(WAIT[0], WAIT[-1])
    tasks = {route_task(name): weight for name, weight in MIX.items() if name in ROUTES}  # Locust weighs them

    def on_start(self) -> None:
        """No images and no latent sizes yet: each model's are fetched before its first route is called."""
        self.images: list[str] | None = None
        self.latent_dims: dict[str, int] = {}

    def post(self, name: str, path: str, body: dict) -> tuple[int, bytes, str | None]:
        """POST ``body`` under the retry rule; the last attempt's status, body and content type. Attempts that
        are retried are reported as ``name (retried)``, the last one as ``name`` (a failure unless a 200 with the
        content type of the body's format)."""
        expected = CONTENT_TYPES[body.get("format", "json")]
        attempt = 0
        while True:
            with self.client.post(path, json=body, name=name, catch_response=True) as r:
                if attempt + 1 < retry.ATTEMPTS and retry.retryable(r.status_code, r.content):
                    r.request_meta["name"] = name + RETRIED
                    r.success()
                    wait = retry.backoff(attempt, r.headers.get("Retry-After"))
                else:
                    if r.status_code != 200:
                        r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                    elif r.headers.get("content-type") != expected:
                        r.failure(f"content-type {r.headers.get('content-type')}, expected {expected}")
                    return r.status_code, r.content, r.headers.get("content-type")
            time.sleep(wait)
            attempt += 1

    def latent_dim(self, export: str) -> int | None:
        """The latent size of ``export``'s model (and two real images), from a json sample of it, fetched once."""
        if export not in self.latent_dims:
            sampler = next(name for name, r in ROUTES.items() if r.export == export and r.operation == "sample")
            status, content, _ = self.post("setup", f"{PATH_PREFIX}{sampler}",
                                           {"n": 2, "seed": random.getrandbits(32), "format": "json"})
            if status != 200:
                return None
            reply = json.loads(content)
            self.images = self.images or reply["images"]
            self.latent_dims[export] = len(reply["latents"][0])
        return self.latent_dims[export]

    def call(self, name: str, route: Route) -> None:
        """One request to route ``name``: a varied body for its operation in its model's latent space (none
        when the model's latent size could not be fetched: that failure is the setup's)."""
        dim = self.latent_dim(route.export)
        body = BODIES[route.operation](self, dim, route.export == EXPLORER_STYLE) if dim else None
        if body is not None:  # None: the body needs images, and none could be fetched
            self.post(name, f"{PATH_PREFIX}{name}", {"format": "json"} | body)

