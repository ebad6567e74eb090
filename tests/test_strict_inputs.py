"""Inputs judged as JSON and JSON Schema mean them, answers that every JSON parser reads: whole-string patterns and
enums (no trailing-newline slack), latents bounded so that every decoder and the class model stay finite, strict
JSON out, duplicate keys refused, no object reprs in messages. Every string field and every latent-taking field of
``handlers/openapi.yaml`` is found by walking the document, so a field added later is covered too."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from handlers.schema import request_schemas
from runtime import artifacts
from serving.inprocess import InProcessWorker
from serving.routes import ROUTES
from tests.conftest import ARTIFACTS, LATENT, MINIMAL, post

CLASSES = artifacts.read_stats(ARTIFACTS / artifacts.STATS).class_names
GOOD_PNG = MINIMAL["encode"]["images"][0]
SCHEMAS = request_schemas(LATENT, CLASSES)
ENDPOINTS = ("seeds", "latents", "images", "classes")  # interpolate's: exactly one


def valid_string(schema: dict) -> str | None:
    """A valid string for a field that takes strings, or None if it takes none."""
    kinds = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    if "string" not in kinds:
        return None
    if "enum" in schema:
        return next(v for v in schema["enum"] if isinstance(v, str))
    if "pattern" in schema:
        return "auto"  # the document's one pattern (a test below checks there is no other)
    return GOOD_PNG  # a plain string is a base64 PNG


def with_field(operation: str, name: str, value: object) -> dict:
    """MINIMAL[operation] with top-level field ``name`` set, minus what it excludes."""
    body = dict(MINIMAL[operation])
    if name in ENDPOINTS:
        body = {k: v for k, v in body.items() if k not in ENDPOINTS}
    return body | {name: value}


def string_cases() -> Iterator[tuple[str, dict, str]]:
    """(operation, body, field) for every string field of every request schema, given its valid value plus a
    newline: top-level fields, arrays of strings, and the string fields of points and directions."""
    for operation, schema in SCHEMAS.items():
        for name, field in schema["properties"].items():
            if (value := valid_string(field)) is not None:
                yield operation, with_field(operation, name, value + "\n"), name
            elif field.get("type") == "array" and (value := valid_string(field["items"])) is not None:
                count = max(1, field.get("minItems", 1))
                items = [value + "\n"] + [value] * (count - 1)
                yield operation, with_field(operation, name, items), f"{name}[0]"
            elif field.get("type") == "object":
                for inner, inner_schema in field["properties"].items():
                    if (value := valid_string(inner_schema)) is not None:
                        yield operation, with_field(operation, name, {inner: value + "\n"}), f"{name}.{inner}"
            elif field.get("type") == "array" and field["items"].get("type") == "object":  # traverse's directions
                for inner, inner_schema in field["items"]["properties"].items():
                    if (value := valid_string(inner_schema)) is not None:
                        yield operation, with_field(operation, name, [{inner: value + "\n"}]), f"{name}[0].{inner}"


def latent_fields(schema: dict, path: str = "") -> Iterator[str]:
    """Paths of the latent vectors in a request schema: ``latents`` (a list of them), ``around.latent``, ..."""
    for name, field in schema.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        if field.get("type") == "array" and field.get("minItems") == LATENT == field.get("maxItems"):
            yield here
        elif field.get("type") == "array" and field["items"].get("minItems") == LATENT:
            yield f"{here}[]"
        elif field.get("type") == "object":
            yield from latent_fields(field, here)


def latent_cases() -> Iterator[tuple[str, dict, str]]:
    """(operation, body, field) with a huge number as the first coordinate of every latent-taking field."""
    for operation, schema in SCHEMAS.items():
        for path in latent_fields(schema):
            for big in (1e38, 1e308, -1e308):
                latent = [big] + [0.0] * (LATENT - 1)
                if path.endswith("[]"):
                    name = path[:-2]
                    count = max(1, schema["properties"][name].get("minItems", 1))
                    yield operation, with_field(operation, name, [latent] * count), f"{name}[0][0]"
                else:
                    outer, inner = path.split(".")
                    yield operation, with_field(operation, outer, {inner: latent}), f"{path}[0]"


STRINGS = list(string_cases())
LATENTS = list(latent_cases())


def test_the_walks_find_every_kind_of_field():
    """The cases cover what the document has: formats, methods, classes, images, edit's pattern, and latents."""
    fields = {(operation, field) for operation, _, field in STRINGS}
    assert {("sample", "format"), ("interpolate", "method"), ("interpolate", "classes[0]"), ("encode", "images[0]"),
            ("edit", "strength"), ("edit", "from"), ("traverse", "directions[0].class"), ("sample", "around.image"),
            ("analogy", "c.class"), ("walk", "format")} <= fields
    patterns = [f for s in SCHEMAS.values() for f in json.dumps(s).split('"pattern": ')[1:]]
    assert all(p.startswith('"^auto\\\\Z"') for p in patterns)  # the one pattern, anchored as JSON Schema means
    latents = {(operation, field) for operation, _, field in LATENTS}
    assert {("decode", "latents[0][0]"), ("interpolate", "latents[0][0]"), ("sample", "around.latent[0]"),
            ("traverse", "start.latent[0]"), ("edit", "start.latent[0]"), ("analogy", "b.latent[0]"),
            ("walk", "start.latent[0]")} <= latents


@pytest.mark.parametrize(("operation", "body", "field"), STRINGS, ids=[f"{o}-{f}" for o, _, f in STRINGS])
def test_a_valid_string_plus_a_newline_is_refused_naming_the_field(api, operation, body, field):
    code, headers, payload = post(api, operation, body)
    error = json.loads(payload)
    assert (code, error["field"], error["reason"]) == (400, field, error["reason"]), error
    assert error["reason"] in ("invalid_value", "bad_image"), error
    assert post(api, operation, MINIMAL[operation])[0] == 200  # the same request without the newline


@pytest.mark.parametrize(("operation", "body", "field"), LATENTS, ids=[f"{o}-{f}-{i}" for i, (o, _, f) in
                                                                     enumerate(LATENTS)])
def test_a_latent_too_large_for_the_decoders_is_out_of_range(api, operation, body, field):
    code, _, payload = post(api, operation, body)
    error = json.loads(payload)
    assert (code, error["field"], error["reason"]) == (400, field, "out_of_range"), error
    assert "[-100, 100]" in error["message"]


@pytest.mark.parametrize("route", ["decode", "decode2d"])
def test_the_largest_latents_allowed_give_finite_strict_json(api, route):
    latent = 2 if route.endswith("2d") else LATENT
    body = {"latents": [[100.0] * latent, [-100.0] * latent, [100.0, -100.0] * (latent // 2)], "format": "json"}
    code, _, payload = post(api, route, body)
    assert code == 200
    reply = json.loads(payload, parse_constant=lambda name: pytest.fail(f"{name} in the answer"))
    assert np.isfinite(np.array([list(p.values()) for p in reply["class_probabilities"]])).all()


def test_a_non_finite_value_is_a_500_in_the_error_shape_never_a_malformed_200(monkeypatch):
    worker = InProcessWorker("decode", ARTIFACTS.parent)
    body = {"latents": [[0.0] * LATENT], "format": "json"}
    monkeypatch.setattr(type(worker.worker.stats), "class_probabilities",
                        lambda self, z: np.full((len(z), len(CLASSES)), np.nan))
    reply = worker([body])[0]
    assert reply.status == 500 and reply.json()["reason"] == "internal"
    monkeypatch.undo()
    decoder = worker.worker.decoder
    worker.worker.decoder = lambda z: np.full_like(decoder(z), np.inf)
    for fmt in ("json", "png", "npy"):
        reply = worker([body | {"format": fmt}])[0]
        assert (reply.status, reply.json()["reason"]) == (500, "internal"), fmt
        assert "non-finite" in reply.json()["message"]


@pytest.mark.parametrize(("body", "field"), [
    (b'{"n": 300, "n": 2}', "n"),
    (b'{"n": 2, "around": {"seed": 1, "seed": 2}}', "around.seed"),
    (b'{"n": 2, "format": "png", "seed": 1, "format": "npy"}', "format"),
])
def test_duplicate_keys_are_refused_naming_the_key(api, body, field):
    code, _, payload = post(api, "sample", body)
    error = json.loads(payload)
    assert (code, error["field"], error["reason"]) == (400, field, "duplicate_key"), error


def png_bytes(size: int = 28) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("damaged", [png_bytes()[:20], png_bytes()[:-30], b"\x89PNG\r\n\x1a\n" + b"\0" * 40],
                         ids=["header-cut", "data-cut", "empty-chunks"])
def test_a_damaged_png_is_named_without_object_reprs(api, damaged):
    code, _, payload = post(api, "encode", {"images": [base64.b64encode(damaged).decode()]})
    error = json.loads(payload)
    assert (code, error["field"], error["reason"]) == (400, "images[0]", "bad_image"), error
    assert " at 0x" not in error["message"] and "<" not in error["message"], error["message"]


def test_every_route_takes_the_same_strictness():
    """The 2-d routes use the same schema code with their own latent size: a newline and a huge latent fail."""
    worker = InProcessWorker("decode2d", ARTIFACTS.parent)
    assert worker([{"latents": [[1e38, 0.0]]}])[0].json()["field"] == "latents[0][0]"
    assert worker([{"latents": [[0.0, 0.0]], "format": "png\n"}])[0].json()["field"] == "format"
    assert set(ROUTES) >= {"decode2d", "edit2d"}
