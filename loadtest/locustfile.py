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
several formats) in its model's latent space; an operation without a body maker here sends its OpenAPI example.
The latent size of each model and two real images come from the service itself, a json sample fetched once per
user. The 2-d routes are called as the explorer page calls them (json). A request counts as failed unless it
returns 200 with the content type of its format. Locust names requests by route, so its statistics are per route.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable

from locust import HttpUser, between

from loadtest.mix import choices, mix
from serving.routes import PATH_PREFIX, ROUTES, Route, example

CONTENT_TYPES = {"png": "image/png", "json": "application/json", "npy": "application/x-npy", "gif": "image/gif"}
MIX = mix()
SIZES = [int(n) for n in choices(os.environ.get("LOADTEST_N", "1,4,16,64"))]
STEPS = [int(n) for n in choices(os.environ.get("LOADTEST_STEPS", "2,10,32"))]
FORMATS = choices(os.environ.get("LOADTEST_FORMATS", "png,json,npy"))
WAIT = [float(s) for s in choices(os.environ.get("LOADTEST_WAIT", "0.5,1.5"))]
CLASSES = list(range(10))  # Fashion-MNIST's classes by index (names work too)
EXPLORER_STYLE = "export-2d"  # the model whose routes are called as the explorer page calls them


def route_task(name: str) -> Callable[[HttpUser], None]:
    """The Locust task that calls route ``name``."""
    def task(user: ServiceUser) -> None:
        user.call(name, ROUTES[name])

    task.__name__ = name
    return task


class ServiceUser(HttpUser):
    """One client using every route in the mix, thinking between requests like a person would."""

    wait_time = between(WAIT[0], WAIT[-1])
    tasks = {route_task(name): weight for name, weight in MIX.items() if name in ROUTES}  # Locust weighs them

    def on_start(self) -> None:
        """Fetch two real images for the image inputs, and each model's latent size from a json sample of it."""
        self.images: list[str] | None = None
        self.latent_dims: dict[str, int] = {}
        for export in dict.fromkeys(ROUTES[name].export for name in MIX):
            sampler = next((name for name, r in ROUTES.items() if r.export == export and r.operation == "sample"), None)
            if sampler is None:
                continue
            response = self.client.post(f"{PATH_PREFIX}{sampler}", json={"n": 2, "seed": random.getrandbits(32),
                                                                          "format": "json"}, name="setup")
            if response.status_code == 200:
                reply = json.loads(response.content)
                self.images = self.images or reply["images"]
                self.latent_dims[export] = len(reply["latents"][0])

    def call(self, name: str, route: Route) -> None:
        """One request to route ``name``: a varied body for its operation, or its OpenAPI example."""
        make = BODIES.get(route.operation)
        dim = self.latent_dims.get(route.export)
        body = make(self, dim, route.export == EXPLORER_STYLE) if make and dim else example(route.operation)
        if body is None:  # the body needs images, and none could be fetched
            return
        body = {"format": "json"} | body
        with self.client.post(f"{PATH_PREFIX}{name}", json=body, name=name, catch_response=True) as r:
            expected = CONTENT_TYPES[body["format"]]
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif r.headers.get("content-type") != expected:
                r.failure(f"content-type {r.headers.get('content-type')}, expected {expected}")

    @staticmethod
    def latent(dim: int, page: bool = False) -> list[float]:
        """A latent: from the prior, or (as the explorer page sends) a point of the [-3, 3] square."""
        return [round(random.uniform(-3, 3) if page else random.gauss(0, 1), 4) for _ in range(dim)]

    def point(self, dim: int) -> dict:
        """A point given one of the four ways (an image only once the user has fetched some)."""
        kind = random.choice(["seed", "latent", "class", "image"] if self.images else ["seed", "latent", "class"])
        if kind == "seed":
            return {"seed": random.getrandbits(32)}
        if kind == "latent":
            return {"latent": self.latent(dim)}
        return {"class": random.choice(CLASSES)} if kind == "class" else {"image": random.choice(self.images)}


def sample_body(user: ServiceUser, dim: int, page: bool) -> dict:
    body = {"n": 8 if page else random.choice(SIZES), "seed": random.getrandbits(32),
            "temperature": random.choice([0.7, 1.0]), "format": random.choice(FORMATS)}
    way = "prior" if page else random.choice(["prior", "class", "around"])
    if way == "class":
        body["class"] = random.choice(CLASSES)
    elif way == "around":
        body |= {"around": user.point(dim), "sigma": 0.5}
    return body


def interpolate_body(user: ServiceUser, dim: int, page: bool) -> dict:
    if page:
        return {"latents": [user.latent(dim, page), user.latent(dim, page)], "steps": 8,
                "method": random.choice(["lerp", "slerp", "constant_norm"])}
    kind = random.choice(["seeds", "latents", "images", "classes"] if user.images else ["seeds", "classes"])
    ends = {"seeds": [random.getrandbits(32) for _ in range(2)], "latents": [user.latent(dim), user.latent(dim)],
            "images": user.images, "classes": random.sample(CLASSES, 2)}[kind]
    return {kind: ends, "steps": random.choice(STEPS), "method": random.choice(["lerp", "slerp", "constant_norm"]),
            "format": random.choice([*FORMATS, "gif"])}


def encode_body(user: ServiceUser, dim: int, page: bool) -> dict | None:
    if not user.images:
        return None
    return {"images": user.images[:1]} if page else {"images": user.images, "format": random.choice(["json", "npy"])}


def decode_body(user: ServiceUser, dim: int, page: bool) -> dict:
    if page:
        return {"latents": [user.latent(dim, page)]}
    return {"latents": [user.latent(dim) for _ in range(random.choice(SIZES[:3]))], "format": random.choice(FORMATS)}


def reconstruct_body(user: ServiceUser, dim: int, page: bool) -> dict | None:
    if not user.images:
        return None
    return {"images": user.images, "samples": random.choice([4, 16]), "format": random.choice(FORMATS)}


def traverse_body(user: ServiceUser, dim: int, page: bool) -> dict:
    body = {"start": user.point(dim), "steps": random.choice([5, 9]), "format": random.choice(FORMATS)}
    if random.random() < 0.5:
        body["directions"] = [{"dimension": random.randrange(dim)}, {"principal": 0}, {"class": random.choice(CLASSES)}]
    return body


def edit_body(user: ServiceUser, dim: int, page: bool) -> dict:
    source, target = random.sample(CLASSES, 2)
    if page:  # the explorer: calibrated by default, its strength slider otherwise
        return {"start": {"latent": user.latent(dim, page)}, "from": source, "to": target,
                "strength": random.choice(["auto", round(random.uniform(-2, 2), 2)])}
    return {"start": user.point(dim), "from": source, "to": target,
            "strength": random.choice(["auto", 1, [0, 0.5, 1, 1.5]]), "format": random.choice(FORMATS)}


def analogy_body(user: ServiceUser, dim: int, page: bool) -> dict:
    return {"a": user.point(dim), "b": user.point(dim), "c": user.point(dim), "format": random.choice(FORMATS)}


def walk_body(user: ServiceUser, dim: int, page: bool) -> dict:
    return {"start": user.point(dim), "seed": random.getrandbits(32), "steps": random.choice([8, 16]),
            "project": random.random() < 0.5, "format": random.choice([*FORMATS, "gif"])}


# operation -> body maker (user, latent size, called as the explorer page calls it) -> body, or None to skip
BODIES: dict[str, Callable[[ServiceUser, int, bool], dict | None]] = {
    "sample": sample_body, "interpolate": interpolate_body, "encode": encode_body, "decode": decode_body,
    "reconstruct": reconstruct_body, "traverse": traverse_body, "edit": edit_body, "analogy": analogy_body,
    "walk": walk_body,
}

