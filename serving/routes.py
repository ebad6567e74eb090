"""The served routes, declared once: ``/predictions/<route>`` is served by the handler of its operation
(``handlers/<operation>.py``) over the model exported to its export folder (``model_store/<export>/``).

Everything else derives from this table: the archives and their model configs (``serving/settings.py``,
``serving/archive.py``), the load-test mix (``loadtest/mix.py``), the explorer's latent spaces
(``explorer/server.py``), the benchmarks, the image check and the monitoring test. The OpenAPI document
(``handlers/openapi.yaml``) documents each operation once, with an example; tests/test_routes.py checks that
its paths are exactly these operations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from handlers.schema import PATH_PREFIX
from runtime.artifacts import ARTIFACT_DIR
from runtime.manifest import Manifest

OPENAPI = Path(__file__).resolve().parent.parent / "handlers" / "openapi.yaml"


@dataclass(frozen=True)
class Operation:
    """What a handler needs loaded: the encoder (some request form takes images) and the latent statistics
    (classes or directions); and ``default_images``, the images a request with only its required fields decodes
    (or, for encode, encodes): the unit its queue is sized in (``serving/settings.py``; tests/test_routes.py
    checks the count against the handler)."""

    images: bool
    stats: bool
    default_images: int


OPERATIONS = {
    "sample": Operation(images=True, stats=True, default_images=16),  # by class, or around a point (maybe an image)
    "interpolate": Operation(images=True, stats=True, default_images=10),
    "encode": Operation(images=True, stats=True, default_images=1),  # class probabilities in json answers
    "decode": Operation(images=False, stats=True, default_images=1),
    "reconstruct": Operation(images=True, stats=True, default_images=17),  # the mean and 16 draws; KL to the prior
    "traverse": Operation(images=True, stats=True, default_images=72),  # 8 dimensions x 9 steps
    "edit": Operation(images=True, stats=True, default_images=1),
    "analogy": Operation(images=True, stats=True, default_images=4),
    "walk": Operation(images=True, stats=True, default_images=16),
}
# What the explorer page calls (explorer/static/app.js): a latent space is explorable when it serves all of these.
EXPLORER_OPERATIONS = ("sample", "decode", "encode", "interpolate", "edit")


@dataclass(frozen=True)
class Route:
    """One served route: its operation, the export folder of its model, and its share of the load-test mix."""

    operation: str
    export: str = ARTIFACT_DIR
    load_weight: int = 1

    @property
    def needs(self) -> Operation:
        return OPERATIONS[self.operation]


EXPORT_2D = "export-2d"
ROUTES = {
    # The 64-d model (model_store/export): every operation. sample is the common call: three times the load.
    "sample": Route("sample", load_weight=3),
    "interpolate": Route("interpolate"),
    "encode": Route("encode"),
    "decode": Route("decode"),
    "reconstruct": Route("reconstruct"),
    "traverse": Route("traverse"),
    "edit": Route("edit"),
    "analogy": Route("analogy"),
    "walk": Route("walk"),
    # The 2-d model (model_store/export-2d): what the explorer page calls.
    "sample2d": Route("sample", EXPORT_2D),
    "decode2d": Route("decode", EXPORT_2D),
    "encode2d": Route("encode", EXPORT_2D),
    "interpolate2d": Route("interpolate", EXPORT_2D),
    "edit2d": Route("edit", EXPORT_2D),
}


@cache
def openapi() -> dict:
    """The OpenAPI document (``handlers/openapi.yaml``)."""
    return yaml.safe_load(OPENAPI.read_text())


def example(operation: str) -> dict:
    """The operation's request example in the OpenAPI document (a copy: the document is read once)."""
    content = openapi()["paths"][PATH_PREFIX + operation]["post"]["requestBody"]["content"]
    return copy.deepcopy(content["application/json"]["example"])


def example_for(operation: str, latent_dim: int) -> dict:
    """``operation``'s request example with its latents cut to ``latent_dim`` numbers (the document shows the 64-d
    model's)."""
    body = example(operation)
    if "latents" in body:
        body["latents"] = [latent[:latent_dim] for latent in body["latents"]]
    return body


def route_example(name: str, model_store: Path = Path("model_store")) -> dict:
    """Route ``name``'s request example, for the latent size of the route's model."""
    return example_for(ROUTES[name].operation, Manifest.read(model_store / ROUTES[name].export).shapes.latent_dim)
