"""What every operation's handler shares, on any host: the worker's model (shapes and identity from the export
manifest, backend and device from its ``WorkerConfig``, latent statistics), points in latent space from requests,
one decoder call per batch of requests, per-request errors, response encoding and metrics.

A handler file is one operation, named by the file (``handlers/sample.py`` serves ``sample``): ``plan(request,
worker) -> Plan`` turns a validated request into the latents it needs decoded and a ``finish`` that makes the
answer from their logits; ``handle = Service(plan)`` does the rest. Every answer, error or not, carries the
``X-Model-Build`` header: the identity of the export that made it. Request IDs: TorchServe 0.12's frontend gives
every request an ID of its own and sets it as every answer's ``X-Request-ID`` (over a handler's), so under
TorchServe a request's ID is TorchServe's, and the worker's log lines name it beside the client's own
``X-Request-ID`` when it sent one; the KServe host uses the client's (``request_id``: when valid, else a new one).
Each answer of 500 or more is logged as an error line with the IDs; with env FMVAE_ACCESS_LOG=1 (the launcher's
``--access-log``) each request gets an access line.

The worker's settings are one ``WorkerConfig`` (``handlers/config.py``): the backends per device kind, statistics,
threads, body limit and CUDA graph sizes; TorchServe hands it over as the ``handler:`` section of the archive's
model-config YAML, the KServe host in its processes' settings.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from handlers import device, metrics
from handlers.config import WorkerConfig
from handlers.errors import SHUTTING_DOWN, RequestError, internal
from handlers.schema import RequestSchema
from runtime import artifacts, backends
from runtime.images import gif_bytes, npy_bytes, png_bytes, tensor_bytes, tile, to_uint8
from runtime.latent import seeded_latents
from runtime.manifest import Manifest

FREE_FORMATS = ("npy", "tensors")  # encoded as the decoder's thread makes the answer: a copy of its arrays
CONTENT_TYPES = {"png": "image/png", "gif": "image/gif", "npy": "application/x-npy", "json": "application/json",
                 "tensors": "application/x-fmvae-tensors"}
MODEL_HEADER = "X-Model-Build"  # on every answer: the identity of the export that made it (Manifest.identity)
REQUEST_ID = "X-Request-ID"  # on every answer: the client's request ID, or one made here
REQUEST_ID_MAX = 128
LOG = logging.getLogger("fmvae.worker")


def valid_request_id(sent: str | bytes | None) -> str | None:
    """The client's ID when it is 1-128 printable ASCII characters without spaces, else None."""
    if isinstance(sent, bytes):
        sent = sent.decode("latin-1")
    return sent if sent and len(sent) <= REQUEST_ID_MAX and all("!" <= c <= "~" for c in sent) else None


def request_id(sent: str | bytes | None) -> str:
    """The request's ID: the client's when valid, else a new one (32 hex digits)."""
    return valid_request_id(sent) or uuid.uuid4().hex


def log_answer(route: str, rid: str, status: int, size: int, seconds: float, detail: bytes = b"",
               sent: str | None = None) -> None:
    """The request's log lines (``sent``: the client's own ID, where the host's differs): an error line for a 5xx
    answer (with its message), an access line when FMVAE_ACCESS_LOG is 1."""
    named = f"request {rid}" + (f" (client's X-Request-ID {sent})" if sent and sent != rid else "")
    if status >= 500:
        LOG.error("%s: /predictions/%s answered %d: %s", named, route, status, detail[:300].decode(errors="replace"))
    if os.environ.get("FMVAE_ACCESS_LOG") == "1":
        LOG.info("%s: POST /predictions/%s %d %d bytes %.1f ms", named, route, status, size, seconds * 1e3)


def decode_png(text: str, name: str, size: tuple[int, int]) -> np.ndarray:
    """A base64 PNG of an 8-bit grayscale image of ``size`` (height, width) as intensities in [0, 1]; errors name
    the field."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise RequestError(name, "bad_image", f"{name} is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if image.format != "PNG":
            raise RequestError(name, "bad_image", f"{name} must be a PNG image, got {image.format}")
        if image.size[::-1] != size:
            raise RequestError(name, "bad_image", f"{name} must be {size[1]}x{size[0]} pixels, got "
                                                  f"{image.size[0]}x{image.size[1]}")
        if image.mode != "L":
            raise RequestError(name, "bad_image", f"{name} must be 8-bit grayscale (PNG mode L), got mode {image.mode}")
        return np.asarray(image, dtype=np.float32) / 255
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(name, "bad_image", f"{name} is not a readable image (no format Pillow knows: damaged or "
                                              "truncated?)") from None
    except Exception as e:  # Pillow raises many types on damaged data
        raise RequestError(name, "bad_image", f"{name} is not a readable PNG image ({e})") from None


def quiet_batches(record: logging.LogRecord) -> bool:
    """Root-logger filter: TorchServe's worker logs a line per batch ("Backend received ..."); the access log, when
    turned on, is the frontend's (serving/log4j2.xml)."""
    return not record.getMessage().startswith("Backend received")


def images_of(logits: np.ndarray) -> np.ndarray:
    """Mean images (N, H, W) in [0, 1] of decoder logits (N, 1, H, W)."""
    with np.errstate(over="ignore"):  # exp(-logit) of a logit below -88 is inf in float32, and its image 0
        return (1 / (1 + np.exp(-logits)))[:, 0]


_SHARED: dict[tuple, Any] = {}  # what the routes of one export share in a process, by (export folder, what)


def shared(model_dir: Path, key: tuple, make: Callable[[], Any]) -> Any:
    """``make()`` once per process for ``model_dir`` and ``key``: the routes of one export share what it loads (a host
    that serves every route in one process loads each export once) until ``forget``."""
    if (model_dir, *key) not in _SHARED:
        _SHARED[(model_dir, *key)] = make()
    return _SHARED[(model_dir, *key)]


def forget(model_dir: Path) -> None:
    """Drop what the process shares of one export (a build it no longer serves: the workers that still hold it keep
    theirs, and it is freed with them)."""
    for key in [k for k in _SHARED if k[0] == model_dir]:
        del _SHARED[key]


class Worker:
    """The loaded model of one route's worker serving ``operation``: shapes, request schema, decoder (and encoder,
    latent statistics), metrics. ``config`` is the ``handler:`` section of the route's model config
    (``serving/archive.py`` writes it from the settings); ``gpu_id`` the GPU the host gives it, if any."""

    def __init__(self, route: str, operation: str, model_dir: Path, config: WorkerConfig,
                 gpu_id: int | None = None) -> None:
        logging.getLogger().addFilter(quiet_batches)  # once per process: adding the same filter again is a no-op
        self.drain_file = os.environ.get("FMVAE_DRAIN_FILE")  # exists while the launcher drains the server
        model_dir = Path(model_dir).resolve()
        where = device.placement(gpu_id)
        self.model, self.device = route, where.name
        manifest = Manifest.read(model_dir)
        self.shapes, self.identity = manifest.shapes, manifest.identity
        self.model_dir = model_dir
        self.stats = (shared(model_dir, ("stats",), lambda: artifacts.read_stats(model_dir / artifacts.STATS))
                      if config.stats else None)
        self.schema = RequestSchema(self.shapes.latent_dim, self.stats.class_names if self.stats else None,
                                    (operation,), config.max_body_bytes)
        self.threads = device.worker_threads(config.threads, config.store_workers,
                                             kind=where.kind)
        self.backend = device.choose_backend(config, "decoder", self.model, where, model_dir)
        self.artifact = artifacts.DECODERS[self.backend].artifact
        self.decoder = self.network(artifacts.DECODERS[self.backend], where.device)
        batches = config.cuda_graph_batches
        if batches and where.graph_capture and isinstance(self.decoder, backends.TorchScriptModule):
            self.decoder = backends.GraphedDecoder(self.decoder, self.shapes.latent_dim, batches, where.graph_capture)
        self.encoder = None
        if config.encoder:
            backend = device.choose_backend(config, "encoder", self.model, where, model_dir)
            self.encoder = self.network(artifacts.ENCODERS[backend], where.device)
        self.warm_up()
        labels = {"model": self.model, "backend": self.backend, "device": self.device}
        metrics.BACKEND_INFO.labels(**labels, artifact=self.artifact, threads=str(self.threads)).set(1)
        # Labelled children resolved once: a labels() lookup per request costs more than the observation.
        self.request_seconds = metrics.REQUEST_SECONDS.labels(**labels)
        self.decode_seconds = metrics.DECODE_SECONDS.labels(**labels)
        self.images = metrics.IMAGES.labels(**labels)
        self.batch_requests = metrics.BATCH_REQUESTS.labels(self.model)
        self.request_images = metrics.REQUEST_IMAGES.labels(self.model)
        self.recorder = metrics.Recorder.for_process(self.model)

    def network(self, backend: artifacts.Backend, device: str) -> backends.Network:
        """``backend``'s artifact of this export, loaded once per process for a device and thread count (routes of
        one export that run the same backend share it)."""
        return shared(self.model_dir, (backend, device, self.threads),
                      lambda: backends.load(backend, self.model_dir, device, self.threads))

    def warm_up(self) -> None:
        """One call of each network before the first request: lazy initialisation (CUDA kernels, ONNX Runtime's
        allocations) happens here rather than in a client's answer."""
        self.decoder(np.zeros((1, self.shapes.latent_dim), np.float32))
        if self.encoder is not None:
            self.encoder(np.zeros((1, *self.shapes.image_shape), np.float32))

    def draining(self) -> bool:
        """Whether the launcher is stopping the server (one stat per handler call)."""
        return self.drain_file is not None and os.path.exists(self.drain_file)

    def count_response(self, status: int) -> None:
        """Count one answered request under its HTTP status (runs in the recorder's thread)."""
        metrics.REQUESTS.labels(self.model, str(status)).inc()

    def count_error(self, reason: str) -> None:
        """Count one rejected or failed request under its reason (runs in the recorder's thread)."""
        metrics.ERRORS.labels(self.model, reason).inc()

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Logits (N, 1, H, W) for latents (N, latent_dim)."""
        start = time.perf_counter()
        logits = self.decoder(z.astype(np.float32))
        self.recorder.record((self.decode_seconds.observe, time.perf_counter() - start))
        return logits

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and log-variances (N, latent_dim) of images (N, H, W) in [0, 1]."""
        if self.encoder is None:
            raise RuntimeError(f"model {self.model} has no encoder in its config")
        return self.encoder(images[:, None].astype(np.float32))

    def pixels(self, texts: list[str], name: str) -> np.ndarray:
        """Base64 PNGs of the model's image size as intensities (N, H, W); errors name ``name[i]``."""
        size = self.shapes.image_shape[1:]
        return np.stack([decode_png(text, f"{name}[{i}]", size) for i, text in enumerate(texts)])

    def prior_latents(self, seed: int, n: int, temperature: float = 1.0) -> np.ndarray:
        """n seeded draws from the model's prior (its latent statistics carry it; without them, N(0, I))."""
        if self.stats is None:
            return seeded_latents(seed, n, self.shapes.latent_dim, temperature)
        return self.stats.prior_latents(seed, n, temperature)

    def class_index(self, value: str | int | float) -> int:
        """A validated class (a name or an index) as its index."""
        return self.stats.class_names.index(value) if isinstance(value, str) else int(value)

    def point(self, spec: dict, name: str) -> np.ndarray:
        """The latent (latent_dim,) of a validated Point: a seed's first latent, a latent, an image's posterior
        mean or a class's mean."""
        if "seed" in spec:
            return self.prior_latents(spec["seed"], 1)[0]
        if "latent" in spec:
            return np.asarray(spec["latent"], np.float64)
        if "image" in spec:
            size = self.shapes.image_shape[1:]
            return self.encode(decode_png(spec["image"], f"{name}.image", size)[None])[0][0].astype(np.float64)
        return self.stats.class_means[self.class_index(spec["class"])].astype(np.float64)


@dataclass
class Answer:
    """What one request gets back: ``images`` (K, H, W) in [0, 1] (PNGs in json, gif frames), the png grid,
    ``cols`` wide, of ``grid`` (default: the images), ``array`` for npy (default: the images), json ``fields``
    and response ``headers``."""

    images: np.ndarray | None
    cols: int = 8
    grid: np.ndarray | None = None
    array: np.ndarray | None = None
    fields: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)


@dataclass
class Plan:
    """A validated request turned into the latents (M, latent_dim) it needs decoded, and ``finish``, which makes
    the answer from their logits (M, 1, H, W)."""

    latents: np.ndarray
    finish: Callable[[np.ndarray], Answer]


def as_json(value: Any) -> Any:
    """numpy arrays and scalars as JSON (float32 precision is what the model has)."""
    if isinstance(value, np.ndarray):
        return value.astype(np.float32).tolist() if value.dtype.kind == "f" else value.tolist()
    return value.item() if isinstance(value, np.generic) else value


class Tensors(dict):
    """A parsed request body whose answer is its arrays by name (``tensors``: ``runtime.images.tensor_bytes`` of the
    images and every array field, float32) instead of its format's bytes: what a host front that speaks a tensor
    protocol submits (the Open Inference Protocol, ``serving/oip/``). Validated as any body."""


@dataclass
class Staged:
    """A batch past its decoder call (``Service.compute``): each body's reply, or the format and answer ``encode``
    makes into one; ``start``, when the batch was taken up."""

    start: float
    items: list[Reply | tuple[str, Answer]]


@dataclass
class Reply:
    """One request's answer, whatever the host: HTTP status, body, content type and headers."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Service:
    """One operation's handler, ``plan(request, worker) -> Plan`` (the operation is the name of the module that
    defines ``plan``: its handler file). ``load`` builds its worker for a route; ``answer`` answers a batch of request
    bodies, one ``Reply`` each: the host-neutral entry every host calls. ``__call__(data, context)`` is TorchServe's
    entry, a thin adapter over both."""

    def __init__(self, plan: Callable[[dict, Worker], Plan]) -> None:
        self.operation = plan.__module__.rsplit(".", 1)[-1]
        self.plan = plan
        self.worker: Worker | None = None

    def load(self, route: str, model_dir: Path, config: WorkerConfig, gpu_id: int | None = None) -> Service:
        """Load the worker of ``route`` (its export folder, its ``WorkerConfig``)."""
        self.worker = Worker(route, self.operation, model_dir, config, gpu_id)
        return self

    def __call__(self, data: list | None, context: Any) -> list | None:
        if self.worker is None:
            properties = context.system_properties
            config = WorkerConfig.from_dict((context.model_yaml_config or {}).get("handler"))
            self.load(context.model_name, Path(properties["model_dir"]), config, properties.get("gpu_id"))
        if data is None:  # TorchServe's initialization call
            return None
        start = time.perf_counter()
        sent = [next(filter(None, (context.get_request_header(i, name) for name in (REQUEST_ID, REQUEST_ID.lower()))),
                     None) for i in range(len(data))]
        replies = self.answer([row.get("body", row.get("data")) for row in data])
        for i, reply in enumerate(replies):
            if reply.status != 200:
                context.set_response_status(reply.status, HTTPStatus(reply.status).phrase, i)
            context.set_response_content_type(i, reply.content_type)
            for name, value in reply.headers.items():
                context.set_response_header(i, name, value)
            log_answer(self.worker.model, context.get_request_id(i), reply.status, len(reply.body),
                       time.perf_counter() - start, reply.body, valid_request_id(sent[i]))
        return [reply.body for reply in replies]

    def answer(self, bodies: list[Any]) -> list[Reply]:
        """One reply per request body (bytes, text or already-parsed JSON), from one decoder call for the batch: its
        three stages in turn (a host may run ``encode`` elsewhere, e.g. on other threads than the decoder's)."""
        staged = self.compute(bodies)
        return self.settle(staged, [self.encode(item) for item in staged.items])

    def compute(self, bodies: list[Any]) -> Staged:
        """Parse, plan and decode the batch in one decoder call and finish each answer; the replies of the bodies
        refused and of the formats that cost nothing to encode (npy, tensors), and for the others their format and
        answer, which ``encode`` makes into a reply."""
        start = time.perf_counter()
        replies: list[Reply | tuple[str, Answer] | None] = [None] * len(bodies)
        jobs: list[tuple[int, dict, Plan]] = []
        if self.worker.draining():  # refuse what is taken up from now on; the 503 also closes the connection
            replies = [self.error(SHUTTING_DOWN, {"Retry-After": "1"}) for _ in bodies]
            bodies = []
        for i, body in enumerate(bodies):
            try:
                request = self.worker.schema.parse(body, self.operation)
                jobs.append((i, request, self.plan(request, self.worker)))
            except RequestError as e:
                replies[i] = self.error(e)
            except Exception as e:  # a bug must cost one request, never the worker
                replies[i] = self.error(internal(f"internal error: {e}"))
        if jobs:
            counts = [len(plan.latents) for _, _, plan in jobs]
            try:
                logits = self.worker.decode(np.concatenate([plan.latents for _, _, plan in jobs])) if sum(counts) \
                    else np.zeros((0, *self.worker.shapes.image_shape), np.float32)
                parts = [logits[end - n:end] for n, end in zip(counts, itertools.accumulate(counts), strict=True)]
            except Exception as e:
                parts = [internal(f"decoding failed: {e}")] * len(jobs)
            for (i, request, plan), part in zip(jobs, parts, strict=True):
                try:
                    if not isinstance(part, RequestError) and not np.isfinite(part).all():
                        part = internal("the decoder gave non-finite values for this request")
                    fmt = "tensors" if isinstance(bodies[i], Tensors) else request["format"]
                    if isinstance(part, RequestError):
                        replies[i] = self.error(part)
                    else:
                        answer = plan.finish(part)
                        replies[i] = self.reply(fmt, answer) if fmt in FREE_FORMATS else (fmt, answer)
                except RequestError as e:
                    replies[i] = self.error(e)
                except Exception as e:  # one answer that cannot be made or encoded fails alone
                    replies[i] = self.error(internal(f"internal error: {e}"))
        return Staged(start, replies)

    def encode(self, item: Reply | tuple[str, Answer]) -> Reply:
        """A staged item's reply: an answer encoded in its format (PNG, GIF, base64 JSON), or the reply it is."""
        if isinstance(item, Reply):
            return item
        try:
            return self.reply(*item)
        except RequestError as e:
            return self.error(e)
        except Exception as e:  # one answer that cannot be encoded fails alone
            return self.error(internal(f"internal error: {e}"))

    def settle(self, staged: Staged, replies: list[Reply]) -> list[Reply]:
        """The batch's replies, its latency and statuses recorded."""
        elapsed = time.perf_counter() - staged.start
        worker = self.worker
        worker.recorder.record((worker.batch_requests.observe, len(replies)),
                               *[(worker.request_seconds.observe, elapsed)] * len(replies),
                               *[(worker.count_response, reply.status) for reply in replies])
        worker.recorder.flush()
        return replies

    def error(self, e: RequestError, headers: dict[str, str] | None = None) -> Reply:
        """The reply of a request refused or failed with ``e`` (JSON, the project's one error shape)."""
        self.worker.recorder.record((self.worker.count_error, e.reason))
        return Reply(e.status, json.dumps(e.body()).encode(), "application/json",
                     {MODEL_HEADER: self.worker.identity, **(headers or {})})

    def reply(self, fmt: str, answer: Answer) -> Reply:
        """Encode one answer in its request's format."""
        shown = 0 if answer.images is None else len(answer.images)
        self.worker.recorder.record((self.worker.images.inc, shown),
                                    (self.worker.request_images.observe, shown or len(answer.array)))
        headers = {MODEL_HEADER: self.worker.identity, **{name: str(v) for name, v in answer.headers.items()}}
        if fmt == "png":
            body = png_bytes(tile(to_uint8(answer.images if answer.grid is None else answer.grid), answer.cols))
        elif fmt == "gif":
            body = gif_bytes(to_uint8(answer.images))
        elif fmt == "npy":
            body = npy_bytes(answer.images if answer.array is None else answer.array)
        elif fmt == "tensors":
            named = {} if answer.images is None else {"images": answer.images}
            body = tensor_bytes(named | {k: v for k, v in answer.fields.items() if isinstance(v, np.ndarray)})
        else:
            images = {} if answer.images is None else {
                "images": [base64.b64encode(png_bytes(p)).decode() for p in to_uint8(answer.images)]}
            # Strict JSON: a NaN or an infinity raises (a 500 in the error shape) instead of a body no parser takes.
            body = json.dumps(images | {k: as_json(v) for k, v in answer.fields.items()} | self.classes(answer)
                              | {"backend": self.worker.backend, "device": self.worker.device},
                              allow_nan=False).encode()
        return Reply(200, body, CONTENT_TYPES[fmt], headers)

    def classes(self, answer: Answer) -> dict:
        """``class_probabilities``: the class model's, for each returned latent (``latents``, or ``mu`` for
        encode), when the model has latent statistics."""
        stats = self.worker.stats
        z = answer.fields.get("latents", answer.fields.get("mu"))
        if stats is None or z is None:
            return {}
        probabilities = stats.class_probabilities(np.asarray(z, np.float64)).round(4)
        names = stats.class_names
        return {"class_probabilities": [dict(zip(names, row.tolist(), strict=True)) for row in probabilities]}


def square_cols(n: int) -> int:
    """Columns of an about-square grid of n images."""
    return math.ceil(math.sqrt(n))
