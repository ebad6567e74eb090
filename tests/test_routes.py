"""The route registry (``serving/routes.py``) is the one list of routes: the OpenAPI document, the handler files,
the settings, the load-test mix, the explorer, the serving benchmark and the image check all agree with it."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from bench.serving import SCENARIOS
from deploy.image import EXAMPLES
from explorer.server import spaces
from handlers.schema import PATH_PREFIX, REQUESTS, SPEC, RequestSchema
from handlers.service import Service
from loadtest.mix import mix
from runtime.artifacts import ARTIFACT_DIR
from serving.inprocess import InProcessWorker
from serving.routes import EXPLORER_OPERATIONS, OPERATIONS, ROUTES, example
from serving.settings import HANDLERS, MIN_QUEUE_REQUESTS, MODELS, REQUEST_COST_IMAGES
from tests.conftest import ARTIFACTS, LATENT, MINIMAL


def test_the_openapi_paths_are_the_operations():
    assert {path.removeprefix(PATH_PREFIX) for path in SPEC["paths"]} == set(OPERATIONS) == set(REQUESTS)
    assert all(path.startswith(PATH_PREFIX) for path in SPEC["paths"])


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_every_operation_has_a_handler_file_and_a_valid_example(operation):
    module = importlib.import_module(f"handlers.{operation}")  # the handler file TorchServe's archive names
    assert (HANDLERS / f"{operation}.py").is_file() and isinstance(module.handle, Service)
    assert (module.handle.operation, module.handle.plan) == (operation, module.plan)
    schema = RequestSchema(LATENT, ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                    "Sneaker", "Bag", "Ankle boot"))
    assert schema.validators[operation].is_valid(example(operation)), operation
    needs = OPERATIONS[operation]
    properties = str(schema.schemas[operation]["properties"])
    assert needs.images == ("image" in properties)  # the encoder is loaded exactly when a request can hold images


def test_every_route_is_served_with_its_operations_needs():
    assert set(MODELS) == set(ROUTES)
    for name, route in ROUTES.items():
        spec = MODELS[name]
        assert spec.handler == HANDLERS / f"{route.operation}.py" and spec.export == route.export
        assert bool(spec.encoder) == route.needs.images and spec.stats == route.needs.stats


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_the_default_images_of_an_operation_are_what_its_handler_decodes(operation):
    """The unit the route's queue is sized in (serving/settings.py) is the request with only its required fields."""
    worker = InProcessWorker(operation, ARTIFACTS.parent)
    request = worker.worker.schema.parse(json.dumps(MINIMAL[operation]), operation)
    work = len(worker.service.plan(request, worker.worker).latents) or len(request.get("images", ()))
    assert work == OPERATIONS[operation].default_images
    spec = MODELS[operation]
    per_worker = spec.job_queue_size // spec.workers
    assert (per_worker * (spec.request_images + REQUEST_COST_IMAGES) <= spec.queue_images_per_worker
            or per_worker == MIN_QUEUE_REQUESTS)


def test_everything_else_derives_from_the_registry(monkeypatch):
    monkeypatch.delenv("LOADTEST_MIX", raising=False)
    assert mix() == {name: route.load_weight for name, route in ROUTES.items()}
    locust = subprocess.run(  # importing Locust monkey-patches the process with gevent: not in this one
        [sys.executable, "-c", "import json, loadtest.locustfile as f; "
         "print(json.dumps([[t.__name__ for t in f.ServiceUser.tasks], sorted(f.BODIES)]))"],
        capture_output=True, text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "LOADTEST_MIX"})
    tasks, bodies = json.loads(locust.stdout.splitlines()[-1])
    assert {name: tasks.count(name) for name in tasks} == mix()  # each route as often as its weight
    assert set(bodies) == set(OPERATIONS)  # every operation has a body of its own model
    released = {name for name, route in ROUTES.items() if route.export == ARTIFACT_DIR}
    assert set(EXAMPLES) == set(ROUTES)  # the image test sends each route's example
    assert {route for route, _ in SCENARIOS.values()} == released
    explorable = spaces(tuple(ROUTES))
    assert {space.export for space in explorable} == {route.export for route in ROUTES.values()}
    assert all(set(space.routes) == set(EXPLORER_OPERATIONS) for space in explorable)


def test_a_route_missing_from_the_document_fails(monkeypatch):
    """What the checks above see when a route is added to the registry alone."""
    monkeypatch.setitem(OPERATIONS, "blur", OPERATIONS["decode"])
    with pytest.raises(AssertionError):
        test_the_openapi_paths_are_the_operations()
    with pytest.raises(KeyError):
        example("blur")
