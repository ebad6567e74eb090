"""Request parsing against the OpenAPI document (``openapi.yaml``): strict JSON in, validated dict out, or a
``RequestError`` that names the field, the reason and the problem. The operations are the document's paths
(``/predictions/<operation>``), each with its request schema.

A worker builds one ``RequestSchema`` for its model's latent size, read from the export manifest: the
document's ``Latent`` length is the released model's, and every worker puts its own model's in its place.
Two validators read the same schema: fastjsonschema's check, compiled to Python code, passes valid requests
without building error objects, and a request it rejects goes to jsonschema, whose errors carry the path and
keyword the messages are built from. jsonschema decides:
what it accepts is accepted (tests/test_serving.py checks the two agree on every bad-input case).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import fastjsonschema
import yaml
from jsonschema import Draft202012Validator

from handlers.errors import RequestError

SPEC: dict = yaml.safe_load(Path(__file__).with_name("openapi.yaml").read_text())
PATH_PREFIX = "/predictions/"
# operation -> its request schema's name in components/schemas, from the document's paths
REQUESTS = {path.removeprefix(PATH_PREFIX): item["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"].rsplit("/", 1)[1] for path, item in SPEC["paths"].items()}
_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object", type(None): "null"}
_SCHEMA_TYPES = {"integer": "an integer", "number": "a number", "string": "a string", "array": "an array",
                 "object": "an object", "boolean": "true or false"}
# Which error to report when a body has several: its shape first, the endpoint rule last.
_PRIORITY = {"type": 0, "additionalProperties": 1, "oneOf": 3}


def whole_string(pattern: str) -> str:
    """A ``pattern`` with JSON Schema's meaning under Python's ``re``: its ``$`` anchors match only at the end of
    the string (ECMA-262), where Python's also match before a final newline ("auto\\n" would pass ``^auto$``)."""
    return re.sub(r"(?<!\\)\$", r"\\Z", pattern)


def inline_refs(node: Any, schemas: dict) -> Any:
    """The schema with every ``#/components/schemas/`` reference replaced by its target in ``schemas``
    (validation then skips ref lookups), and every ``pattern`` anchored as JSON Schema means it."""
    if isinstance(node, dict):
        if "$ref" in node:  # keywords beside the reference (a default, a description) refine its target
            target = schemas[node["$ref"].removeprefix("#/components/schemas/")]
            return inline_refs(target | {k: v for k, v in node.items() if k != "$ref"}, schemas)
        return {k: whole_string(v) if k == "pattern" and isinstance(v, str) else inline_refs(v, schemas)
                for k, v in node.items()}
    return [inline_refs(v, schemas) for v in node] if isinstance(node, list) else node


def request_schemas(latent_dim: int, class_names: tuple[str, ...] | None = None,
                    operations: tuple[str, ...] = tuple(REQUESTS)) -> dict[str, dict]:
    """The request schemas of ``operations``, references inlined, for the served model: latent vectors of
    ``latent_dim`` numbers, dimensions below it, and (when given) its class names."""
    schemas = SPEC["components"]["schemas"]
    schemas = schemas | {"Latent": schemas["Latent"] | {"minItems": latent_dim, "maxItems": latent_dim},
                         "Dimension": schemas["Dimension"] | {"maximum": latent_dim - 1}}
    if class_names is not None:
        schemas["Class"] = schemas["Class"] | {"enum": [*class_names, *range(len(class_names))]}
    return {operation: inline_refs(schemas[REQUESTS[operation]], schemas) for operation in operations}


def field_name(path: Any) -> str:
    """``deque(['latents', 1, 3])`` -> ``latents[1][3]``; the empty path is the body."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


class Duplicated(dict):
    """A JSON object that named ``key`` more than once (the parser keeps the last value; the request is refused)."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str) -> None:
        super().__init__(pairs)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook`` of the parser: a dict, or a ``Duplicated`` one naming the first repeated key."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return Duplicated(pairs, key)
        seen.add(key)
    return dict(pairs)


def load_json(raw: Any, max_bytes: int | None = None) -> Any:
    """The request body as JSON: bytes/str are parsed strictly, refused over ``max_bytes``; TorchServe may already
    have parsed it."""
    if isinstance(raw, dict | list):
        return raw
    if raw is None:
        raise RequestError("body", "malformed_json", "the request has no body; send a JSON object")
    if isinstance(raw, bytes | bytearray):
        if max_bytes is not None and len(raw) > max_bytes:
            raise RequestError("body", "body_too_large",
                               f"body is {len(raw)} bytes; the limit is {max_bytes}", status=413)
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError("body", "malformed_json", f"body is not UTF-8 text: {e}") from None
    if not isinstance(raw, str):
        raise RequestError("body", "malformed_json", "send the request as a JSON body")
    try:
        return json.loads(raw, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise RequestError("body", "malformed_json", f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise RequestError("body", "malformed_json", "body is nested too deeply to parse (a valid request "
                                                     "nests 3 levels at most)") from None


def first_unparsable(value: Any) -> RequestError | None:
    """The first value JSON Schema cannot judge, depth first in document order: an object that repeats a key
    (``duplicate_key``), or a NaN or infinite number (``not_finite``: Python's parser accepts NaN, Infinity and
    1e999). Iterative, so that a body nested as deep as the parser allows cannot overflow."""
    stack = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return RequestError(field_name(path), "not_finite", f"{field_name(path)} must be a finite number")
        if isinstance(item, Duplicated):
            name = field_name((*path, item.key))
            return RequestError(name, "duplicate_key", f"{name} is given more than once in its object")
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        stack.extend(((*path, key), child) for key, child in reversed(list(children)))
    return None


def _range(schema: dict) -> str:
    lo = f"({schema['exclusiveMinimum']}" if "exclusiveMinimum" in schema else f"[{schema.get('minimum', '-inf')}"
    hi = f"{schema['exclusiveMaximum']})" if "exclusiveMaximum" in schema else f"{schema.get('maximum', 'inf')}]"
    return f"{lo}, {hi}"


def _types(schema: dict) -> str:
    """The schema's type(s) in words: "an integer", "a string or an integer"."""
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return " or ".join(_SCHEMA_TYPES[kind] for kind in kinds)


def _error(err: Any) -> RequestError:
    """One jsonschema error as a RequestError with a message a client can act on."""
    field, kind, schema, value = field_name(err.absolute_path), err.validator, err.schema, err.instance

    def inside(name: str) -> str:
        return f"{field}.{name}" if field != "body" else name

    if kind == "additionalProperties":
        allowed = ", ".join(schema.get("properties", {}))
        unknown = sorted(set(value) - set(schema.get("properties", {})))
        return RequestError(inside(unknown[0]), "unknown_field", f"unknown field '{unknown[0]}' (allowed: {allowed})")
    if kind == "required":
        missing = next(name for name in err.validator_value if name not in value)
        return RequestError(inside(missing), "missing_field", f"{inside(missing)} is required")
    if kind == "type":
        if field == "body":
            return RequestError("body", "not_an_object", f"body must be a JSON object, got {_JSON_TYPES[type(value)]}")
        return RequestError(field, "wrong_type", f"{field} must be {_types(schema)}, "
                                                 f"got {_JSON_TYPES.get(type(value), type(value).__name__)}")
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return RequestError(field, "out_of_range", f"{field} must be in {_range(schema)}, got {value}")
    if kind == "pattern":
        documented = schema["pattern"].replace(r"\Z", "$")  # as openapi.yaml writes it
        return RequestError(field, "invalid_value", f"{field} must match {documented!r} (the whole string), "
                                                    f"got {value!r}")
    if kind == "enum":
        allowed = ", ".join(str(v) for v in schema["enum"])
        return RequestError(field, "invalid_value", f"{field} must be one of {allowed}, got {value!r}")
    if kind in ("minItems", "maxItems"):
        want = schema["minItems"] if schema.get("minItems") == schema.get("maxItems") else _range(
            {"minimum": schema.get("minItems", 0), "maximum": schema.get("maxItems", "inf")})
        return RequestError(field, "wrong_length", f"{field} must have {want} items, got {len(value)}")
    if kind in ("minProperties", "maxProperties"):
        choices = list(schema["properties"])
        return RequestError(field, "one_of", f"give exactly one of {', '.join(choices)} for {field}, got "
                                             f"{', '.join(value) if value else 'none'}")
    if kind == "not":
        both = err.validator_value["required"]
        return RequestError("|".join(both), "conflict", f"give at most one of {', '.join(both)}")
    if kind == "oneOf":  # interpolate's endpoints: the alternatives are each one required field
        choices = [alternative["required"][0] for alternative in err.validator_value]
        given = [k for k in choices if k in value]
        return RequestError("|".join(choices), "missing_endpoints",
                            f"give exactly one of {', '.join(choices)} for the two endpoints, got "
                            f"{', '.join(given) if given else 'none'}")
    return RequestError(field, "invalid_value", f"{field}: {err.message}")


class RequestSchema:
    """The request schemas of one served model (its latent size and class names) and the parser that applies
    them to bodies of at most ``max_body_bytes`` (None: no limit of its own)."""

    def __init__(self, latent_dim: int, class_names: tuple[str, ...] | None = None,
                 operations: tuple[str, ...] = tuple(REQUESTS), max_body_bytes: int | None = None) -> None:
        self.max_body_bytes = max_body_bytes
        self.schemas = request_schemas(latent_dim, class_names, operations)
        self.validators = {endpoint: Draft202012Validator(schema) for endpoint, schema in self.schemas.items()}
        self.fast_checks = {endpoint: fastjsonschema.compile(schema, use_default=False)
                            for endpoint, schema in self.schemas.items()}
        self.defaults = {endpoint: {k: v["default"] for k, v in schema["properties"].items() if "default" in v}
                         for endpoint, schema in self.schemas.items()}

    def parse(self, raw: Any, endpoint: str) -> dict:
        """Validate one request body for ``endpoint`` (an operation); returns it with defaults filled."""
        request = load_json(raw, self.max_body_bytes)
        bad = first_unparsable(request)
        if bad is not None:
            raise bad
        try:
            self.fast_checks[endpoint](request)
        except fastjsonschema.JsonSchemaValueException:
            errors = sorted(self.validators[endpoint].iter_errors(request),
                            key=lambda e: (_PRIORITY.get(e.validator, 2), len(e.absolute_path)))
            if errors:
                raise _error(errors[0]) from None
        return self.defaults[endpoint] | integers(request, self.schemas[endpoint])


def integers(value: Any, schema: dict) -> Any:
    """``value`` with integer-valued floats made ints where the schema says integer (JSON Schema's integer type
    accepts 2.0, which numpy would refuse as an image count or a seed)."""
    if isinstance(value, float) and schema.get("type") == "integer":
        return int(value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: integers(v, properties.get(k, {})) for k, v in value.items()}
    if isinstance(value, list) and schema.get("items", {}).get("type") in ("integer", "array", "object"):
        return [integers(v, schema["items"]) for v in value]
    return value
