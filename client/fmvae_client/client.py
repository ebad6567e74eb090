"""The service's Python client: ``Client`` (sync) and ``AsyncClient`` (async), one method per operation.

Each method's parameters are its operation's request fields in the OpenAPI document (``handlers/openapi.yaml``;
Python keywords take a trailing underscore: ``class_``, ``from_``, ``range_``), and ``route`` picks the served
route (``sample2d`` for the 2-d model's sample, ...). Values may be given as the service takes them or as Python
objects: a point as a seed (int), a class (str), a latent (a sequence or array) or an image; an image as a PNG's
bytes, a path to one, a Pillow image or a 28x28 array in [0, 1] (or uint8), or base64 text. An answer comes back
by its content type: a Pillow image for PNG (its bytes without Pillow), a numpy array for npy, the parsed JSON for
json, bytes for GIF. ``call`` gives the whole ``Response`` (status, headers, body, request ID).

Every call keeps its connection pool (keep-alive), sends ``X-Request-ID`` (yours, or a new one; the same on every
try) and follows the retry rule (``fmvae_client.retry``). With token auth on, the key comes from ``key`` or is
read from the service's key file (``key_file``); a request refused for its key (a renewed one) reads the file
again and is sent once more. An error answer raises ``APIError`` with the one error shape and the request ID.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from fmvae_client import retry
from fmvae_client.errors import APIError, TransportError

DEFAULT_URL = "http://127.0.0.1:8080"
PATH_PREFIX = "/predictions/"
REQUEST_ID = "X-Request-ID"
TIMEOUT = httpx.Timeout(60.0, connect=5.0)
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)
# No answer came: the connection was refused, reset or closed before the answer (every operation is a pure
# function of its body, so sending it again is safe). Any other transport failure (a read timeout: the service may
# still be working on it) ends the call at once with TransportError.
NO_ANSWER = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
KEY_WAIT_S = 2.0  # how long a call refused for its key waits for the key file to hold a new one

Point = Mapping[str, Any] | int | str | Sequence[float] | np.ndarray | bytes | os.PathLike
Image = str | bytes | os.PathLike | np.ndarray | Any  # Any: a Pillow image


def new_request_id() -> str:
    return uuid.uuid4().hex


def refused_for_key(status: int, body: bytes) -> bool:
    """Whether the service refused a request for its key: TorchServe's 400 InvalidKeyException, the KServe
    host's 401 unauthorized."""
    return (status == 400 and b"InvalidKeyException" in body) or (status == 401 and b"unauthorized" in body)


def read_key_file(path: str | os.PathLike) -> dict[str, str]:
    """{"management": key, "inference": key, "API": key} from the service's key file (TorchServe's format, which
    the KServe host writes too); a partly written file is read again."""
    for _ in range(50):
        try:
            return {kind: entry["key"] for kind, entry in json.loads(Path(path).read_text()).items()}
        except (ValueError, KeyError, TypeError):
            time.sleep(0.01)
        except OSError as e:
            raise TransportError(f"cannot read the key file {path}: {e.strerror}", "-") from None
    raise TransportError(f"{path}: not a readable key file", "-")


class Keys:
    """A key the calls send (``kind``: "inference", or "management" and "API" for TorchServe's management API):
    given, or read from the service's key file when first needed and again when the service refuses it."""

    def __init__(self, key: str | None = None, key_file: str | os.PathLike | None = None,
                 kind: str = "inference") -> None:
        self.file = Path(key_file) if key_file else None
        self.kind = kind
        self._key = key

    @property
    def key(self) -> str | None:
        if self._key is None and self.file is not None:
            self._key = self.read()
        return self._key

    def read(self) -> str | None:
        """The key in the file now."""
        return read_key_file(self.file)[self.kind]

    def renew(self, refused: str | None) -> bool:
        """Read the file again until it holds a key other than ``refused`` (at most KEY_WAIT_S; the service starts
        refusing a renewed key a moment before it rewrites the file); whether it did."""
        if self.file is None:
            return False
        deadline = time.monotonic() + KEY_WAIT_S
        while (key := self.read()) == refused and time.monotonic() < deadline:
            time.sleep(0.02)
        self._key = key
        return key != refused


@dataclass(frozen=True)
class Response:
    """One call's answer: its status, headers and body, the request ID it went under, and the tries it took."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    request_id: str
    attempts: int

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def value(self) -> Any:
        """The body by its content type: Pillow image (PNG; bytes without Pillow), numpy array (npy), parsed
        JSON (json), else bytes."""
        if self.content_type == "application/json":
            return json.loads(self.body)
        if self.content_type == "application/x-npy":
            return np.load(io.BytesIO(self.body), allow_pickle=False)
        if self.content_type == "image/png":
            try:
                from PIL import Image as PILImage
            except ImportError:
                return self.body
            image = PILImage.open(io.BytesIO(self.body))
            image.load()
            return image
        return self.body


class Call:
    """One request under the retry rule (at most ``attempts`` tries; a refused key is read again once): what each
    try sends, and what follows its outcome."""

    def __init__(self, method: str, path: str, payload: bytes | None, request_id: str | None, keys: Keys,
                 attempts: int = retry.ATTEMPTS) -> None:
        self.method, self.path, self.payload = method, path, payload
        self.request_id = request_id or new_request_id()
        self.keys, self.limit = keys, attempts
        self.attempts = 0
        self.rekeyed = False

    def headers(self) -> dict[str, str]:
        self.attempts += 1
        key = {"Authorization": f"Bearer {self.keys.key}"} if self.keys.key else {}
        body = {"Content-Type": "application/json"} if self.payload is not None else {}
        return {**body, REQUEST_ID: self.request_id, **key}

    def wait(self, answer: httpx.Response | None) -> float | None:
        """Seconds to wait before trying again, or None when this try ends the call (no answer: ``answer`` None)."""
        if answer is not None and answer.status_code == 200:
            return None
        if answer is not None and refused_for_key(answer.status_code, answer.content) and not self.rekeyed:
            self.rekeyed = True
            return 0.0 if self.keys.renew(self.keys.key) else None
        if self.attempts >= self.limit:
            return None
        if answer is None:
            return retry.backoff(self.attempts - 1)
        if retry.retryable(answer.status_code, answer.content):
            return retry.backoff(self.attempts - 1, answer.headers.get("Retry-After"))
        return None

    def unanswered(self, error: httpx.HTTPError) -> httpx.HTTPError:
        """``error`` when the request may be sent again (``NO_ANSWER``); else the call ends with TransportError."""
        if isinstance(error, NO_ANSWER):
            return error
        raise self.no_answer(error)

    def no_answer(self, error: Exception | None) -> TransportError:
        """The call's TransportError: no answer came, for ``error``."""
        return TransportError(f"no answer from {self.path} after {self.attempts} tries: "
                              f"{type(error).__name__}: {error}", self.request_id)

    def result(self, answer: httpx.Response | None, error: Exception | None) -> Response:
        """The last answer as a ``Response`` (any status); raises TransportError when there was none."""
        if answer is None:
            raise self.no_answer(error)
        request_id = answer.headers.get(REQUEST_ID, self.request_id)
        return Response(answer.status_code, answer.headers, answer.content, request_id, self.attempts)

    def run(self, http: httpx.Client) -> Response:
        """Every try of this call on ``http``, waiting between them; the last answer, whatever its status."""
        while True:
            answer, error = None, None
            try:
                answer = http.request(self.method, self.path, content=self.payload, headers=self.headers())
            except httpx.HTTPError as e:
                error = self.unanswered(e)
            wait = self.wait(answer)
            if wait is None:
                return self.result(answer, error)
            time.sleep(wait)

    async def run_async(self, http: httpx.AsyncClient) -> Response:
        """``run`` on an async client."""
        while True:
            answer, error = None, None
            try:
                answer = await http.request(self.method, self.path, content=self.payload, headers=self.headers())
            except httpx.HTTPError as e:
                error = self.unanswered(e)
            wait = self.wait(answer)
            if wait is None:
                return self.result(answer, error)
            await asyncio.sleep(wait)


def ok(response: Response) -> Response:
    """``response`` when it is a 200; else raises APIError with its error shape and request ID."""
    if response.status != 200:
        raise APIError(response.status, response.body, response.request_id)
    return response


def request(method: str, url: str, body: Mapping[str, Any] | None = None, keys: Keys | None = None,
            timeout: float = 5.0, attempts: int = 1) -> Response:
    """One request to any URL of the service (``body`` sent as JSON), under the retry rule's ``attempts`` and the
    key protocol; the last answer, whatever its status. Raises TransportError when none came."""
    payload = None if body is None else json.dumps(body).encode()
    with httpx.Client(timeout=timeout) as http:
        return Call(method, url, payload, None, keys or Keys(), attempts).run(http)


def fetch(url: str, keys: Keys | None = None, timeout: float = 5.0, method: str = "GET") -> Any:
    """One request outside the API's routes (health, readiness, TorchServe's management API, metrics), with the
    key ``keys`` holds: a refused key is read again and the request sent once more; nothing else is retried (a
    probe answers for now). The answer decoded by its content type (``Response.value``); raises APIError or
    TransportError."""
    return ok(request(method, url, keys=keys, timeout=timeout)).value()


def drop_none(body: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in body.items() if value is not None}


def png_base64(image: Image) -> str:
    """An image as the service takes it: base64 of a PNG."""
    if isinstance(image, str):
        return image
    if isinstance(image, os.PathLike):
        return base64.b64encode(Path(image).read_bytes()).decode()
    if isinstance(image, bytes):
        return base64.b64encode(image).decode()
    try:
        from PIL import Image as PILImage
    except ImportError:
        raise TypeError("arrays and Pillow images need Pillow: pip install 'fmvae-client[images]'") from None
    if isinstance(image, np.ndarray):
        array = np.squeeze(image)
        if array.dtype != np.uint8:
            array = np.clip(np.rint(array * 255), 0, 255).astype(np.uint8)
        image = PILImage.fromarray(array, mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def point(value: Point | None) -> dict[str, Any] | None:
    """A point as the service takes it: {"seed"}, {"class"}, {"latent"} or {"image"}."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    if isinstance(value, bool):
        raise TypeError("a point is a seed, a class, a latent or an image, not a bool")
    if isinstance(value, int):
        return {"seed": value}
    if isinstance(value, str):
        return {"class": value}
    if (isinstance(value, np.ndarray) and value.ndim == 1) or (isinstance(value, Sequence)
                                                               and not isinstance(value, bytes)):
        return {"latent": np.asarray(value, dtype=float).tolist()}
    return {"image": png_base64(value)}


def latent_list(values: Sequence[Sequence[float]] | np.ndarray | None) -> list[list[float]] | None:
    """Latent vectors as the service takes them: lists of numbers."""
    return None if values is None else np.asarray(values, dtype=float).reshape(len(values), -1).tolist()


def image_list(values: Sequence[Image] | None) -> list[str] | None:
    """Images as the service takes them: base64 PNGs."""
    return None if values is None else [png_base64(v) for v in values]


class Operations:
    """One method per operation; ``_operation(route, body, request_id)`` sends it (sync or async)."""

    def _operation(self, route: str, body: dict[str, Any], request_id: str | None) -> Any:
        raise NotImplementedError

    def sample(self, n: int | None = None, seed: int | None = None, temperature: float | None = None,
               class_: str | int | None = None, around: Point | None = None, sigma: float | None = None,
               format: str | None = None, *, route: str = "sample", request_id: str | None = None) -> Any:  # noqa: A002
        """``n`` images from the prior, from a class, or around a point."""
        return self._operation(route, drop_none({"n": n, "seed": seed, "temperature": temperature, "class": class_,
                                                 "around": point(around), "sigma": sigma, "format": format}),
                               request_id)

    def interpolate(self, seeds: Sequence[int] | None = None, latents: Any = None,
                    images: Sequence[Image] | None = None, classes: Sequence[str | int] | None = None,
                    steps: int | None = None, method: str | None = None, format: str | None = None, *,  # noqa: A002
                    route: str = "interpolate", request_id: str | None = None) -> Any:
        """A path between two endpoints: seeds, latents, images or classes."""
        return self._operation(route, drop_none({"seeds": seeds, "latents": latent_list(latents),
                                                 "images": image_list(images), "classes": classes, "steps": steps,
                                                 "method": method, "format": format}), request_id)

    def encode(self, images: Sequence[Image], format: str | None = None, *, route: str = "encode",  # noqa: A002
               request_id: str | None = None) -> Any:
        """Each image's posterior (mean and log-variance)."""
        return self._operation(route, drop_none({"images": image_list(images), "format": format}), request_id)

    def decode(self, latents: Any, format: str | None = None, *, route: str = "decode",  # noqa: A002
               request_id: str | None = None) -> Any:
        """Images of latent vectors."""
        return self._operation(route, drop_none({"latents": latent_list(latents), "format": format}), request_id)

    def reconstruct(self, images: Sequence[Image], samples: int | None = None, seed: int | None = None,
                    format: str | None = None, *, route: str = "reconstruct",  # noqa: A002
                    request_id: str | None = None) -> Any:
        """Each image through the model: its reconstruction and samples of its posterior."""
        return self._operation(route, drop_none({"images": image_list(images), "samples": samples, "seed": seed,
                                                 "format": format}), request_id)

    def traverse(self, start: Point, directions: Sequence[Any] | None = None, range_: Sequence[float] | None = None,
                 steps: int | None = None, format: str | None = None, *, route: str = "traverse",  # noqa: A002
                 request_id: str | None = None) -> Any:
        """A grid: the point moved along each direction over the range."""
        return self._operation(route, drop_none({"start": point(start), "directions": directions, "range": range_,
                                                 "steps": steps, "format": format}), request_id)

    def edit(self, start: Point, to: str | int, from_: str | int | None = None, strength: Any = None,
             target_probability: float | None = None, format: str | None = None, *,  # noqa: A002
             route: str = "edit", request_id: str | None = None) -> Any:
        """A point moved from one class toward another."""
        return self._operation(route, drop_none({"start": point(start), "from": from_, "to": to, "strength": strength,
                                                 "target_probability": target_probability, "format": format}),
                               request_id)

    def analogy(self, a: Point, b: Point, c: Point, format: str | None = None, *, route: str = "analogy",  # noqa: A002
                request_id: str | None = None) -> Any:
        """b - a + c."""
        return self._operation(route, drop_none({"a": point(a), "b": point(b), "c": point(c), "format": format}),
                               request_id)

    def walk(self, start: Point, seed: int | None = None, step_size: float | None = None, steps: int | None = None,
             project: bool | None = None, format: str | None = None, *, route: str = "walk",  # noqa: A002
             request_id: str | None = None) -> Any:
        """A random walk from a point."""
        return self._operation(route, drop_none({"start": point(start), "seed": seed, "step_size": step_size,
                                                 "steps": steps, "project": project, "format": format}), request_id)


class Client(Operations):
    """The sync client: ``Client(url, key_file=...)``, a context manager (it closes its connections);
    ``attempts``: the retry rule's tries."""

    def __init__(self, url: str = DEFAULT_URL, *, key: str | None = None, key_file: str | os.PathLike | None = None,
                 timeout: float | httpx.Timeout = TIMEOUT, attempts: int = retry.ATTEMPTS,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.keys, self.attempts = Keys(key, key_file), attempts
        self.http = httpx.Client(base_url=url, timeout=timeout, limits=LIMITS, transport=transport)

    def call(self, route: str, body: Mapping[str, Any], request_id: str | None = None) -> Response:
        """POST ``body`` to ``route`` under the retry rule; raises APIError unless the answer is a 200."""
        return ok(self.send(route, json.dumps(body).encode(), request_id))

    def send(self, route: str, payload: bytes, request_id: str | None = None) -> Response:
        """POST ``payload`` as it is to ``route`` under the retry rule; the last answer, whatever its status (a
        proxy forwards it)."""
        return Call("POST", PATH_PREFIX + route, payload, request_id, self.keys, self.attempts).run(self.http)

    def _operation(self, route: str, body: dict[str, Any], request_id: str | None) -> Any:
        return self.call(route, body, request_id).value()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(Operations):
    """The async client: the same methods, awaited; ``async with AsyncClient(url) as client``."""

    def __init__(self, url: str = DEFAULT_URL, *, key: str | None = None, key_file: str | os.PathLike | None = None,
                 timeout: float | httpx.Timeout = TIMEOUT, attempts: int = retry.ATTEMPTS,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.keys, self.attempts = Keys(key, key_file), attempts
        self.http = httpx.AsyncClient(base_url=url, timeout=timeout, limits=LIMITS, transport=transport)

    async def call(self, route: str, body: Mapping[str, Any], request_id: str | None = None) -> Response:
        """POST ``body`` to ``route`` under the retry rule; raises APIError unless the answer is a 200."""
        call = Call("POST", PATH_PREFIX + route, json.dumps(body).encode(), request_id, self.keys, self.attempts)
        return ok(await call.run_async(self.http))

    async def _operation(self, route: str, body: dict[str, Any], request_id: str | None) -> Any:
        return (await self.call(route, body, request_id)).value()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
