"""The worker in this process, through TorchServe's ``handle`` entry with a stand-in context
(``serving/inprocess.py``): batching, isolation of bad requests, the model's identity on every answer, and the
stand-in's faithfulness to TorchServe's own context class."""

from __future__ import annotations

import inspect
import json
import logging

import numpy as np
import pytest
from ts.context import Context as TorchServeContext

from handlers.service import MODEL_HEADER, quiet_batches
from runtime.manifest import Manifest
from serving.inprocess import Context, InProcessWorker
from serving.routes import ROUTES, example
from serving.settings import MODELS
from tests.conftest import ARTIFACTS, npy


@pytest.fixture(scope="module")
def sample() -> InProcessWorker:
    return InProcessWorker("sample", ARTIFACTS.parent)


def counting_decoder(worker: InProcessWorker, monkeypatch) -> list[int]:
    """Count the worker's decoder calls (and the latents in each)."""
    calls: list[int] = []
    decode = worker.worker.decode

    def counted(z: np.ndarray) -> np.ndarray:
        calls.append(len(z))
        return decode(z)

    monkeypatch.setattr(worker.worker, "decode", counted)
    return calls


def test_a_batch_of_good_and_bad_requests_answers_each_and_decodes_once(sample, monkeypatch):
    calls = counting_decoder(sample, monkeypatch)
    bodies = [{"n": 3, "seed": 1, "format": "npy"}, b"{not json", {"n": 999}, {"n": 2, "seed": 2, "format": "npy"},
              {"sigma": 0.3}, {"n": 1, "seed": 3, "format": "json"}]
    replies = sample(bodies)
    assert [r.status for r in replies] == [200, 400, 400, 200, 400, 200]
    assert [r.json()["reason"] for r in replies if r.status != 200] == ["malformed_json", "out_of_range", "conflict"]
    assert [r.json()["field"] for r in replies if r.status != 200] == ["body", "n", "sigma"]
    assert calls == [3 + 2 + 1]  # one decoder call for the whole batch
    alone = [sample([b])[0] for b in (bodies[0], bodies[3])]
    assert np.array_equal(npy(replies[0].body), npy(alone[0].body))  # batch-mates change nothing
    assert np.array_equal(npy(replies[3].body), npy(alone[1].body))
    assert replies[5].headers["content-type"] == "application/json" and replies[5].json()["seed"] == 3


def test_a_batch_of_only_bad_requests_decodes_nothing(sample, monkeypatch):
    calls = counting_decoder(sample, monkeypatch)
    replies = sample([{"n": 0}, {"colour": 1}])
    assert [r.status for r in replies] == [400, 400] and calls == []


def test_a_failing_decoder_fails_its_batch_with_500s_and_the_worker_goes_on(sample, monkeypatch):
    def broken(z: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    monkeypatch.setattr(sample.worker, "decode", broken)
    replies = sample([{"n": 1, "seed": 1}, {"n": 0}])
    assert [r.status for r in replies] == [500, 400]
    assert replies[0].json() == {"code": 500, "reason": "internal", "message": "decoding failed: device lost",
                                 "field": "body"}
    monkeypatch.undo()
    assert sample([{"n": 1, "seed": 1}])[0].status == 200


def test_an_answer_that_cannot_be_made_fails_alone(sample, monkeypatch):
    finish_calls = []
    plan = sample.service.plan

    def fragile(request: dict, worker: object):
        made = plan(request, worker)
        if request["n"] == 2:
            def explode(logits: np.ndarray) -> object:
                finish_calls.append(len(logits))
                raise ValueError("cannot encode")
            made.finish = explode
        return made

    monkeypatch.setattr(sample.service, "plan", fragile)
    replies = sample([{"n": 1, "seed": 1}, {"n": 2, "seed": 2}])
    assert [r.status for r in replies] == [200, 500] and finish_calls == [2]
    assert replies[1].json()["message"] == "internal error: cannot encode"


@pytest.mark.parametrize("route", [r for r in ROUTES if ROUTES[r].export == "export"])
def test_every_answer_names_the_model_that_made_it(route):
    worker = InProcessWorker(route, ARTIFACTS.parent)
    identity = Manifest.read(ARTIFACTS).identity
    good, bad = worker([example(ROUTES[route].operation), b"[]"])
    assert good.status == 200 and bad.status == 400
    assert good.headers[MODEL_HEADER.lower()] == bad.headers[MODEL_HEADER.lower()] == identity
    assert len(identity) == 12 and set(identity) <= set("0123456789abcdef")


def test_the_body_limit_comes_from_the_settings(sample):
    limit = MODELS["sample"].max_body_bytes
    over = json.dumps({"n": 1, "pad": "x" * limit}).encode()
    reply = sample([over])[0]
    assert reply.status == 413 and reply.json()["reason"] == "body_too_large"
    assert str(limit) in reply.json()["message"]


def test_the_stand_in_context_has_torchserves_signatures():
    for name, member in inspect.getmembers(Context, inspect.isfunction):
        if name.startswith("_") or name == "new_batch":
            continue
        real = getattr(TorchServeContext, name)
        assert inspect.signature(member).parameters.keys() == inspect.signature(real).parameters.keys(), name
    assert isinstance(inspect.getattr_static(TorchServeContext, "system_properties"), property)
    context = TorchServeContext("m", "/d", None, 8, 0, "0.12", model_yaml_config={"handler": {}})
    assert set(Context("m", "/d", {}, 0, 8).system_properties) <= set(context.system_properties)


def test_workers_share_one_root_logger_filter():
    """Every worker quiets TorchServe's per-batch log line with the same filter: in-process tests that start many
    workers do not pile filters up on the root logger."""
    for route in ("decode", "encode", "decode2d"):
        InProcessWorker(route, ARTIFACTS.parent)
    assert logging.getLogger().filters.count(quiet_batches) == 1
