"""The request bodies of the load tests, one maker per operation (``BODIES``), varied as people vary them: seeds,
latents, images or classes as points, sizes and formats, in the route's model's latent space. Locust's users
(``locustfile.py``) and the stage profile (``bench/stages.py``) draw from them; this module does not import Locust.

- ``LOADTEST_N``: sample sizes drawn uniformly, default ``1,4,16,64``
- ``LOADTEST_STEPS``: interpolation lengths, default ``2,10,32``
- ``LOADTEST_FORMATS``: response formats, default ``png,json,npy``
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from loadtest.mix import choices

SIZES = [int(n) for n in choices(os.environ.get("LOADTEST_N", "1,4,16,64"))]
STEPS = [int(n) for n in choices(os.environ.get("LOADTEST_STEPS", "2,10,32"))]
FORMATS = choices(os.environ.get("LOADTEST_FORMATS", "png,json,npy"))
CLASSES = list(range(10))  # Fashion-MNIST's classes by index (names work too)
EXPLORER_STYLE = "export-2d"  # the model whose routes are called as the explorer page calls them


class Points:
    """How a user gives a point: ``images`` are the real images it holds (None before it fetched some)."""

    images: list[str] | None = None

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


def sample_body(user: Points, dim: int, page: bool) -> dict:
    body = {"n": 8 if page else random.choice(SIZES), "seed": random.getrandbits(32),
            "temperature": random.choice([0.7, 1.0]), "format": random.choice(FORMATS)}
    way = "prior" if page else random.choice(["prior", "class", "around"])
    if way == "class":
        body["class"] = random.choice(CLASSES)
    elif way == "around":
        body |= {"around": user.point(dim), "sigma": 0.5}
    return body


def interpolate_body(user: Points, dim: int, page: bool) -> dict:
    if page:
        return {"latents": [user.latent(dim, page), user.latent(dim, page)], "steps": 8,
                "method": random.choice(["lerp", "slerp", "constant_norm"])}
    kind = random.choice(["seeds", "latents", "images", "classes"] if user.images else ["seeds", "classes"])
    ends = {"seeds": [random.getrandbits(32) for _ in range(2)], "latents": [user.latent(dim), user.latent(dim)],
            "images": user.images, "classes": random.sample(CLASSES, 2)}[kind]
    return {kind: ends, "steps": random.choice(STEPS), "method": random.choice(["lerp", "slerp", "constant_norm"]),
            "format": random.choice([*FORMATS, "gif"])}


def encode_body(user: Points, dim: int, page: bool) -> dict | None:
    if not user.images:
        return None
    return {"images": user.images[:1]} if page else {"images": user.images, "format": random.choice(["json", "npy"])}


def decode_body(user: Points, dim: int, page: bool) -> dict:
    if page:
        return {"latents": [user.latent(dim, page)]}
    return {"latents": [user.latent(dim) for _ in range(random.choice(SIZES[:3]))], "format": random.choice(FORMATS)}


def reconstruct_body(user: Points, dim: int, page: bool) -> dict | None:
    if not user.images:
        return None
    return {"images": user.images, "samples": random.choice([4, 16]), "format": random.choice(FORMATS)}


def traverse_body(user: Points, dim: int, page: bool) -> dict:
    body = {"start": user.point(dim), "steps": random.choice([5, 9]), "format": random.choice(FORMATS)}
    if random.random() < 0.5:
        body["directions"] = [{"dimension": random.randrange(dim)}, {"principal": 0}, {"class": random.choice(CLASSES)}]
    return body


def edit_body(user: Points, dim: int, page: bool) -> dict:
    source, target = random.sample(CLASSES, 2)
    if page:  # the explorer: calibrated by default, its strength slider otherwise
        return {"start": {"latent": user.latent(dim, page)}, "from": source, "to": target,
                "strength": random.choice(["auto", round(random.uniform(-2, 2), 2)])}
    return {"start": user.point(dim), "from": source, "to": target,
            "strength": random.choice(["auto", 1, [0, 0.5, 1, 1.5]]), "format": random.choice(FORMATS)}


def analogy_body(user: Points, dim: int, page: bool) -> dict:
    return {"a": user.point(dim), "b": user.point(dim), "c": user.point(dim), "format": random.choice(FORMATS)}


def walk_body(user: Points, dim: int, page: bool) -> dict:
    return {"start": user.point(dim), "seed": random.getrandbits(32), "steps": random.choice([8, 16]),
            "project": random.random() < 0.5, "format": random.choice([*FORMATS, "gif"])}


# operation -> body maker (user, latent size, called as the explorer page calls it) -> body, or None to skip
BODIES: dict[str, Callable[[Points, int, bool], dict | None]] = {
    "sample": sample_body, "interpolate": interpolate_body, "encode": encode_body, "decode": decode_body,
    "reconstruct": reconstruct_body, "traverse": traverse_body, "edit": edit_body, "analogy": analogy_body,
    "walk": walk_body,
}

