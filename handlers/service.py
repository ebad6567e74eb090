"""What both TorchServe handlers share: the worker's model (shapes from the export manifest, backend and device
from the model config), one decoder call per batch of requests, per-request errors, response encoding and metrics.

The model config (``handler:`` in the archive's model-config YAML, written from ``handlers/settings.py``) names,
per device kind ("cpu", "cuda"), the backends to run in order of preference: ``decoder`` (every model) and
``encoder`` (interpolate), plus ``threads`` ("auto" or a number; env FMVAE_WORKER_THREADS overrides it) and
``store_workers`` (the workers of all models in the store, among which "auto" divides the CPUs).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from handlers import metrics
from handlers.schema import RequestError, RequestSchema
from runtime import artifacts, backends
from runtime.images import npy_bytes, png_bytes, tile, to_uint8


class ConfigError(Exception):
    """The model config cannot serve this worker (names no backend for its device); raised at worker start."""


def worker_threads(setting: str | int, store_workers: int = 1, cpus: int | None = None) -> int:
    """Intra-op threads per worker: "auto" divides the CPUs this process may use among the ``store_workers``
    workers of all models in the store, so that they do not oversubscribe the machine (at least 1)."""
    setting = os.environ.get("FMVAE_WORKER_THREADS", setting)
    if str(setting) != "auto":
        return max(1, int(setting))
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, cpus // store_workers)


def runnable(backend: str, device: str) -> bool:
    """Whether this process can run ``backend`` on ``device`` (ONNX on CUDA needs onnxruntime's CUDA provider)."""
    return device == "cpu" or not backend.startswith("onnx") or \
        "CUDAExecutionProvider" in ort.get_available_providers()


def choose_backend(config: dict, part: str, model: str, gpu_id: int | None) -> tuple[str, str]:
    """(backend, device) for ``part`` ("decoder" or "encoder"): the first backend the config names for this
    worker's device kind that it can run. CUDA when TorchServe gave the worker a GPU and torch sees CUDA."""
    device = f"cuda:{gpu_id}" if gpu_id is not None and torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    choices = config.get(part) or {}
    if not choices.get(kind):
        raise ConfigError(f"model {model}: its model config names no {part} for {kind} workers "
                          f"(handler.{part}.{kind} in model-config.yaml; handlers/settings.py writes it)")
    for backend in choices[kind]:
        if runnable(backend, device):
            return backend, device
    raise ConfigError(f"model {model}: none of the {part} backends {choices[kind]} can run on {device} here "
                      f"(onnxruntime providers: {ort.get_available_providers()})")


SHUTTING_DOWN = RequestError("body", "shutting_down", "the server is shutting down: retry, on another instance if "
                                                     "there is one", 503)


class Worker:
    """The loaded model of one TorchServe worker: shapes, request schema, decoder (and encoder), metrics."""

    def __init__(self, context: Any) -> None:
        # TorchServe's worker logs a line per batch through the root logger; the access log, when turned on, is
        # the frontend's (handlers/log4j2.xml).
        logging.getLogger().addFilter(lambda record: not record.getMessage().startswith("Backend received"))
        self.drain_file = os.environ.get("FMVAE_DRAIN_FILE")  # exists while the launcher drains the server
        config = (context.model_yaml_config or {}).get("handler", {})
        model_dir = Path(context.system_properties["model_dir"])
        gpu_id = context.system_properties.get("gpu_id")
        self.model = context.model_name
        self.shapes = artifacts.shapes(model_dir)
        self.schema = RequestSchema(self.shapes.latent_dim)
        self.threads = worker_threads(config.get("threads", "auto"), config.get("store_workers", 1))
        self.backend, self.device = choose_backend(config, "decoder", self.model, gpu_id)
        self.artifact = artifacts.DECODERS[self.backend]
        self.decoder = backends.load(model_dir / self.artifact, self.device, self.threads)
        self.encoder = None
        if config.get("encoder"):
            backend, device = choose_backend(config, "encoder", self.model, gpu_id)
            self.encoder = backends.load(model_dir / artifacts.ENCODERS[backend], device, self.threads)
        labels = {"model": self.model, "backend": self.backend, "device": self.device}
        metrics.BACKEND_INFO.labels(**labels, artifact=self.artifact, threads=str(self.threads)).set(1)
        # Labelled children resolved once: a labels() lookup per request costs more than the observation.
        self.request_seconds = metrics.REQUEST_SECONDS.labels(**labels)
        self.decode_seconds = metrics.DECODE_SECONDS.labels(**labels)
        self.images = metrics.IMAGES.labels(**labels)
        self.batch_requests = metrics.BATCH_REQUESTS.labels(self.model)
        self.request_images = metrics.REQUEST_IMAGES.labels(self.model)
        self.recorder = metrics.Recorder(self.model)

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
        """Mean images (N, H, W) in [0, 1] for latents (N, latent_dim)."""
        start = time.perf_counter()
        logits = self.decoder(z.astype(np.float32))
        self.recorder.record((self.decode_seconds.observe, time.perf_counter() - start))
        return (1 / (1 + np.exp(-logits)))[:, 0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Posterior means (N, latent_dim) of images (N, H, W) in [0, 1]."""
        if self.encoder is None:
            raise RuntimeError(f"model {self.model} has no encoder in its config")
        return self.encoder(images[:, None].astype(np.float32))


@dataclass
class Job:
    """One valid request with its latents, waiting for the batch's decoder call."""

    index: int
    request: dict
    latents: np.ndarray
    extra: dict = field(default_factory=dict)  # fields for the json reply (e.g. the seed)


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
    except Exception as e:  # Pillow raises many types on damaged data
        raise RequestError(name, "bad_image", f"{name} is not a readable PNG image ({e})") from None


class Service:
    """A TorchServe entry point ``handle(data, context)`` for one endpoint.

    ``make_job(request, worker) -> (latents, extra)`` turns a validated request into latents; ``grid_cols(n)``
    sets the width of the png grid.
    """

    def __init__(self, endpoint: str, make_job: Callable[[dict, Worker], tuple[np.ndarray, dict]],
                 grid_cols: Callable[[int], int]) -> None:
        self.endpoint, self.make_job, self.grid_cols = endpoint, make_job, grid_cols
        self.worker: Worker | None = None

    def __call__(self, data: list | None, context: Any) -> list | None:
        if self.worker is None:
            self.worker = Worker(context)
        if data is None:  # TorchServe's initialization call
            return None
        start = time.perf_counter()
        replies: list[Any] = [None] * len(data)
        jobs = []
        rows = enumerate(data)
        if self.worker.draining():  # refuse what is taken up from now on; the 503 also closes the connection
            for i in range(len(data)):
                replies[i] = self.error(context, i, SHUTTING_DOWN)
                context.set_response_header(i, "Retry-After", "1")
            rows = enumerate([])
        for i, row in rows:
            try:
                request = self.worker.schema.parse(row.get("body", row.get("data")), self.endpoint)
                asked = request["n"] if "n" in request else request["steps"]
                self.worker.recorder.record((self.worker.request_images.observe, asked))
                jobs.append(Job(i, request, *self.make_job(request, self.worker)))
            except RequestError as e:
                replies[i] = self.error(context, i, e)
            except Exception as e:  # a bug must cost one request, never the worker
                replies[i] = self.error(context, i, RequestError("body", "internal", f"internal error: {e}", 500))
        if jobs:
            try:
                images = self.worker.decode(np.concatenate([job.latents for job in jobs]))
                ends = itertools.accumulate(len(job.latents) for job in jobs)
                parts = [images[end - len(job.latents):end] for job, end in zip(jobs, ends, strict=True)]
            except Exception as e:
                parts = [RequestError("body", "internal", f"decoding failed: {e}", 500)] * len(jobs)
            for job, part in zip(jobs, parts, strict=True):
                try:
                    replies[job.index] = self.error(context, job.index, part) if isinstance(part, RequestError) \
                        else self.reply(context, job, part)
                except Exception as e:  # one reply that cannot be encoded fails alone
                    replies[job.index] = self.error(context, job.index,
                                                    RequestError("body", "internal", f"internal error: {e}", 500))
        elapsed = time.perf_counter() - start
        self.worker.recorder.record((self.worker.batch_requests.observe, len(data)),
                                    *[(self.worker.request_seconds.observe, elapsed)] * len(data),
                                    *[(self.worker.count_response, context.get_response_status(i)[0] or 200)
                                      for i in range(len(data))])
        self.worker.recorder.flush()
        return replies

    def error(self, context: Any, idx: int, e: RequestError) -> str:
        self.worker.recorder.record((self.worker.count_error, e.reason))
        context.set_response_status(e.status, HTTPStatus(e.status).phrase, idx)
        context.set_response_content_type(idx, "application/json")
        return json.dumps(e.body())

    def reply(self, context: Any, job: Job, images: np.ndarray) -> bytes | str:
        """Encode one request's images in its format."""
        self.worker.recorder.record((self.worker.images.inc, len(images)))
        for key, value in job.extra.items():
            context.set_response_header(job.index, f"X-{key.capitalize()}", str(value))
        fmt = job.request["format"]
        if fmt == "png":
            context.set_response_content_type(job.index, "image/png")
            return png_bytes(tile(to_uint8(images), self.grid_cols(len(images))))
        if fmt == "npy":
            context.set_response_content_type(job.index, "application/x-npy")
            return npy_bytes(images)
        context.set_response_content_type(job.index, "application/json")
        pixels = to_uint8(images)
        return json.dumps({"images": [base64.b64encode(png_bytes(p)).decode() for p in pixels],
                           "latents": job.latents.astype(np.float32).tolist(), **job.extra,
                           "backend": self.worker.backend, "device": self.worker.device})


def square_cols(n: int) -> int:
    """Columns of an about-square grid of n images."""
    return math.ceil(math.sqrt(n))
