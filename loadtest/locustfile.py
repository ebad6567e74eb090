"""Locust users for the service: every route in a configurable mix.

Run it through ``python -m loadtest`` (``make loadtest``), which adds the p50 gates; plain
``locust -f loadtest/locustfile.py --host http://127.0.0.1:8080`` works too. The mix comes from the
environment, so the runner and plain Locust agree:

- ``LOADTEST_MIX``: endpoint weights, default ``sample=3`` and 1 for each other route, the 2-d model's
  included (loadtest/mix.py)
- ``LOADTEST_N``: sample sizes drawn uniformly, default ``1,4,16,64``
- ``LOADTEST_STEPS``: interpolation lengths, default ``2,10,32``
- ``LOADTEST_FORMATS``: response formats, default ``png,json,npy``
- ``LOADTEST_WAIT``: think time between a user's requests, seconds, default ``0.5,1.5`` (uniform)

Seeds are random; points in latent space come as seeds, latents, images or classes (by index); the images and
the latent size come from the service itself, a json sample fetched once per user. A request counts as failed
unless it returns 200 with the content type of its format. Locust names requests by endpoint, so its statistics
are per endpoint.
"""

from __future__ import annotations

import json
import os
import random

from locust import HttpUser, between, task

from loadtest.mix import choices, mix

CONTENT_TYPES = {"png": "image/png", "json": "application/json", "npy": "application/x-npy", "gif": "image/gif"}
MIX = mix()
SIZES = [int(n) for n in choices(os.environ.get("LOADTEST_N", "1,4,16,64"))]
STEPS = [int(n) for n in choices(os.environ.get("LOADTEST_STEPS", "2,10,32"))]
FORMATS = choices(os.environ.get("LOADTEST_FORMATS", "png,json,npy"))
WAIT = [float(s) for s in choices(os.environ.get("LOADTEST_WAIT", "0.5,1.5"))]
CLASSES = list(range(10))  # Fashion-MNIST's classes by index (names work too)


class ServiceUser(HttpUser):
    """One client using every route, thinking between requests like a person would."""

    wait_time = between(WAIT[0], WAIT[-1])

    def on_start(self) -> None:
        """Fetch two real images for the image inputs, and the served latent size from their latents."""
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

    def latent(self) -> list[float]:
        return [round(random.gauss(0, 1), 4) for _ in range(self.latent_dim)]

    def point(self) -> dict:
        """A point given one of the four ways (an image only once the user has fetched some)."""
        kind = random.choice(["seed", "latent", "class", "image"] if self.images else ["seed", "latent", "class"])
        if kind == "seed":
            return {"seed": random.getrandbits(32)}
        if kind == "latent":
            return {"latent": self.latent()}
        return {"class": random.choice(CLASSES)} if kind == "class" else {"image": random.choice(self.images)}

    @task(MIX.get("sample", 0))
    def sample(self) -> None:
        body = {"n": random.choice(SIZES), "seed": random.getrandbits(32), "temperature": random.choice([0.7, 1.0]),
                "format": random.choice(FORMATS)}
        way = random.choice(["prior", "class", "around"])
        if way == "class":
            body["class"] = random.choice(CLASSES)
        elif way == "around":
            body |= {"around": self.point(), "sigma": 0.5}
        self.call("sample", body)

    @task(MIX.get("interpolate", 0))
    def interpolate(self) -> None:
        kind = random.choice(["seeds", "latents", "images", "classes"] if self.images else ["seeds", "classes"])
        ends = {"seeds": [random.getrandbits(32) for _ in range(2)], "latents": [self.latent(), self.latent()],
                "images": self.images, "classes": random.sample(CLASSES, 2)}[kind]
        self.call("interpolate", {kind: ends, "steps": random.choice(STEPS),
                                  "method": random.choice(["lerp", "slerp", "constant_norm"]),
                                  "format": random.choice([*FORMATS, "gif"])})

    @task(MIX.get("encode", 0))
    def encode(self) -> None:
        if self.images:
            self.call("encode", {"images": self.images, "format": random.choice(["json", "npy"])})

    @task(MIX.get("decode", 0))
    def decode(self) -> None:
        self.call("decode", {"latents": [self.latent() for _ in range(random.choice(SIZES[:3]))],
                             "format": random.choice(FORMATS)})

    @task(MIX.get("reconstruct", 0))
    def reconstruct(self) -> None:
        if self.images:
            self.call("reconstruct", {"images": self.images, "samples": random.choice([4, 16]),
                                      "format": random.choice(FORMATS)})

    @task(MIX.get("traverse", 0))
    def traverse(self) -> None:
        body = {"start": self.point(), "steps": random.choice([5, 9]), "format": random.choice(FORMATS)}
        if random.random() < 0.5:
            body["directions"] = [{"dimension": random.randrange(self.latent_dim)}, {"principal": 0},
                                  {"class": random.choice(CLASSES)}]
        self.call("traverse", body)

    @task(MIX.get("edit", 0))
    def edit(self) -> None:
        source, target = random.sample(CLASSES, 2)
        self.call("edit", {"start": self.point(), "from": source, "to": target,
                           "strength": random.choice([1, [0, 0.5, 1, 1.5]]), "format": random.choice(FORMATS)})

    @task(MIX.get("analogy", 0))
    def analogy(self) -> None:
        self.call("analogy", {"a": self.point(), "b": self.point(), "c": self.point(),
                              "format": random.choice(FORMATS)})

    # The 2-d model's routes, as the explorer page calls them: one point at a time, json.
    @staticmethod
    def plane_point() -> list[float]:
        return [round(random.uniform(-3, 3), 4), round(random.uniform(-3, 3), 4)]

    @task(MIX.get("decode2d", 0))
    def decode2d(self) -> None:
        self.call("decode2d", {"latents": [self.plane_point()], "format": "json"})

    @task(MIX.get("sample2d", 0))
    def sample2d(self) -> None:
        self.call("sample2d", {"n": 8, "seed": random.getrandbits(32), "format": random.choice(FORMATS)})

    @task(MIX.get("encode2d", 0))
    def encode2d(self) -> None:
        if self.images:
            self.call("encode2d", {"images": self.images[:1], "format": "json"})

    @task(MIX.get("interpolate2d", 0))
    def interpolate2d(self) -> None:
        self.call("interpolate2d", {"latents": [self.plane_point(), self.plane_point()], "steps": 8,
                                    "method": random.choice(["lerp", "slerp", "constant_norm"]), "format": "json"})

    @task(MIX.get("edit2d", 0))
    def edit2d(self) -> None:
        source, target = random.sample(CLASSES, 2)
        self.call("edit2d", {"start": {"latent": self.plane_point()}, "from": source, "to": target,
                             "strength": round(random.uniform(-2, 2), 2), "format": "json"})

    @task(MIX.get("walk", 0))
    def walk(self) -> None:
        self.call("walk", {"start": self.point(), "seed": random.getrandbits(32), "steps": random.choice([8, 16]),
                           "project": random.random() < 0.5, "format": random.choice([*FORMATS, "gif"])})
