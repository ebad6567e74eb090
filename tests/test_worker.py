"""The worker in this process, through the host-neutral entry (``Service.answer``, ``serving/inprocess.py``):
batching, isolation of bad requests, the model's identity on every answer; and TorchServe's adapter over it
(``handle(data, context)``) through a stand-in context faithful to TorchServe's own context class."""

from __future__ import annotations

import inspect
import json
import logging

import numpy as np
import pytest
from ts.context import Context as TorchServeContext

from handlers.device import CPU_DECODER
from handlers.service import MODEL_HEADER, REQUEST_ID, Service, quiet_batches, request_id
from runtime.manifest import Manifest
from serving.inprocess import InProcessWorker
from serving.routes import ROUTES, example, route_example
from serving.settings import MODELS
from serving.torchserve.archive import model_config
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
    assert replies[5].content_type == "application/json" and replies[5].json()["seed"] == 3


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
    assert good.headers[MODEL_HEADER] == bad.headers[MODEL_HEADER] == identity
    assert len(identity) == 12 and set(identity) <= set("0123456789abcdef")


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_every_route_answers_its_example_from_the_torchscript_int8_decoder_when_the_env_puts_it_first(
        route, monkeypatch):
    monkeypatch.setenv(CPU_DECODER, "torchscript-int8")
    worker = InProcessWorker(route, ARTIFACTS.parent)
    assert (worker.worker.backend, worker.worker.device) == ("torchscript-int8", "cpu")
    reply = worker([route_example(route, ARTIFACTS.parent)])[0]
    assert reply.status == 200, reply.body[:200]


def test_the_body_limit_comes_from_the_settings(sample):
    limit = MODELS["sample"].max_body_bytes
    over = json.dumps({"n": 1, "pad": "x" * limit}).encode()
    reply = sample([over])[0]
    assert reply.status == 413 and reply.json()["reason"] == "body_too_large"
    assert str(limit) in reply.json()["message"]


class Context:
    """What the handlers use of TorchServe's ``ts.context.Context``, with its method signatures (a test compares
    them): the model's name, model-config YAML and system properties, and each request's response status and
    headers in the current batch."""

    def __init__(self, model_name: str, model_dir: str, model_yaml_config: dict, gpu_id: int | None = None,
                 batch_size: int = 1, request_headers: dict[int, dict[str, str]] | None = None) -> None:
        self.model_name = model_name
        self._request_headers = request_headers or {}
        self.model_yaml_config = model_yaml_config
        self._system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": batch_size}
        self._status: dict[int, tuple[int, str]] = {}
        self._headers: dict[int, dict[str, str]] = {}

    @property
    def system_properties(self) -> dict:
        return self._system_properties

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self._status[idx] = (code, phrase)

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self._request_headers.get(idx, {}).get(key)

    def get_request_id(self, idx: int = 0) -> str | None:
        return f"ts-{idx}"  # TorchServe's own ID of the request (its frontend sets it as X-Request-ID)

    def get_response_status(self, idx: int) -> tuple[int, str]:
        return self._status.get(idx, (200, None))

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self._headers.setdefault(idx, {})[key] = value

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self._headers.get(idx, {})

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)


def test_the_stand_in_context_has_torchserves_signatures():
    for name, member in inspect.getmembers(Context, inspect.isfunction):
        if name.startswith("_"):
            continue
        real = getattr(TorchServeContext, name)
        assert inspect.signature(member).parameters.keys() == inspect.signature(real).parameters.keys(), name
    assert isinstance(inspect.getattr_static(TorchServeContext, "system_properties"), property)
    context = TorchServeContext("m", "/d", None, 8, 0, "0.12", model_yaml_config={"handler": {}})
    assert set(Context("m", "/d", {}, 0, 8).system_properties) <= set(context.system_properties)


def test_torchserves_adapter_answers_what_the_host_neutral_entry_answers():
    """``handle(data, context)``: TorchServe's initialization call loads the worker from the context; a batch sets
    each request's status, content type and headers on the context and returns the bodies of ``answer``."""
    import handlers.edit as edit
    spec = MODELS["edit"]
    model_dir = ARTIFACTS.parent / spec.export
    context = Context("edit", model_dir, model_config(spec, Manifest.read(model_dir)))
    handle = Service(edit.plan)
    assert handle(None, context) is None and handle.worker.model == "edit"
    bodies = [json.dumps(example("edit") | {"format": "npy"}).encode(), b'{"to": "Bag"}']
    bodies_out = handle([{"body": b} for b in bodies], context)
    direct = InProcessWorker("edit", ARTIFACTS.parent)(bodies)
    assert [context.get_response_status(i)[0] for i in range(2)] == [r.status for r in direct] == [200, 400]
    assert np.array_equal(npy(bodies_out[0]), npy(direct[0].body)) and bodies_out[1] == direct[1].body
    for i, reply in enumerate(direct):
        assert {k.lower(): v for k, v in context.get_response_headers(i).items()} == {
            k.lower(): v for k, v in reply.headers.items()} | {"content-type": reply.content_type}


def test_a_failed_request_is_logged_with_its_request_ids_and_access_lines_follow_the_setting(monkeypatch, caplog):
    """Under TorchServe a request's ID is TorchServe's (its frontend sets it on the answer); the worker's lines
    name it and the client's own X-Request-ID (an invalid one is left out)."""
    import handlers.sample as sample

    spec = MODELS["sample"]
    model_dir = ARTIFACTS.parent / spec.export
    context = Context("sample", model_dir, model_config(spec, Manifest.read(model_dir)),
                      request_headers={0: {"x-request-id": "fails-1"}, 1: {"X-Request-ID": "not valid"}})
    handle = Service(sample.plan)
    handle(None, context)
    monkeypatch.setattr(handle.worker, "decode", lambda z: np.full((len(z), 1, 28, 28), np.nan, np.float32))
    monkeypatch.delenv("FMVAE_ACCESS_LOG", raising=False)
    with caplog.at_level(logging.INFO, logger="fmvae.worker"):
        handle([{"body": b'{"n": 1}'}], context)
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert caplog.records[0].message.startswith("request ts-0 (client's X-Request-ID fails-1): /predictions/sample "
                                                "answered 500")
    monkeypatch.undo()
    monkeypatch.setenv("FMVAE_ACCESS_LOG", "1")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fmvae.worker"):
        handle([{"body": b'{"n": 1}'}, {"body": b'{"n": 2}'}], context)
    lines = [r.message for r in caplog.records]
    assert len(lines) == 2 and lines[1].startswith("request ts-1: POST /predictions/sample 200")
    assert REQUEST_ID not in context.get_response_headers(0)  # TorchServe's frontend sets it


@pytest.mark.parametrize(("sent", "kept"), [("abc-123", True), ("x" * 128, True), ("x" * 129, False), ("", False),
                                            ("a b", False), ("caf\u00e9", False), (None, False)])
def test_a_request_id_is_the_clients_when_short_and_printable(sent, kept):
    rid = request_id(sent)
    assert (rid == sent) == kept and 1 <= len(rid) <= 128


def test_workers_share_one_root_logger_filter():
    """Every worker quiets TorchServe's per-batch log line with the same filter: in-process tests that start many
    workers do not pile filters up on the root logger."""
    for route in ("decode", "encode", "decode2d"):
        InProcessWorker(route, ARTIFACTS.parent)
    assert logging.getLogger().filters.count(quiet_batches) == 1


def test_the_routes_of_one_export_share_its_loaded_artifacts():
    """A host that serves every route in one process loads each export once (handlers.service, shared)."""
    sample, walk, decode2d = (InProcessWorker(r, ARTIFACTS.parent) for r in ("sample", "walk", "decode2d"))
    assert sample.worker.decoder is walk.worker.decoder and sample.worker.encoder is walk.worker.encoder
    assert sample.worker.stats is walk.worker.stats
    assert decode2d.worker.decoder is not sample.worker.decoder  # another export
