"""What both TorchServe handlers share: the worker's decoder (artifact and device picked from the model
config), one decoder call per batch of requests, per-request errors, response encoding and metrics.

The model config (``handler:`` in the archive's model-config YAML) names the artifacts:
``decoder`` (CPU), ``gpu_decoder`` (CUDA workers; fp32, since the int8 kernels are CPU-only), ``encoder``
(interpolate only), ``threads`` ("auto" or a number; env FMVAE_WORKER_THREADS overrides it) and
``store_workers`` (the workers of all models in the store, among which "auto" divides the CPUs).
"""

from __future__ import annotations

import base64
import functools
import io
import itertools
import json
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

from export import backends
from export.config import DECODERS, SERVED_LATENT_DIM
from handlers import metrics
from handlers.schema import RequestError, parse
from training.tiles import tile, to_uint8

BACKEND_OF = {file: name for name, file in DECODERS.items()}


def worker_threads(setting: str | int, store_workers: int = 1, cpus: int | None = None) -> int:
    """Intra-op threads per worker: "auto" divides the CPUs this process may use among the ``store_workers``
    workers of all models in the store, so that they do not oversubscribe the machine (at least 1)."""
    setting = os.environ.get("FMVAE_WORKER_THREADS", setting)
    if str(setting) != "auto":
        return max(1, int(setting))
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, cpus // store_workers)


def choose_decoder(config: dict, gpu_id: int | None) -> tuple[str, str]:
    """(artifact file, device) for a worker: see the choice matrix in the README."""
    if gpu_id is not None and torch.cuda.is_available():
        device = f"cuda:{gpu_id}"
        artifact = config.get("gpu_decoder", DECODERS["onnx-fp32"])
        if artifact.endswith(".onnx") and "CUDAExecutionProvider" not in ort.get_available_providers():
            artifact = DECODERS["torchscript-fp32"]  # onnxruntime without CUDA: run fp32 on CUDA torch instead
        return artifact, device
    return config.get("decoder", DECODERS["onnx-int8"]), "cpu"


class Worker:
    """The loaded artifacts of one TorchServe worker."""

    def __init__(self, context: Any) -> None:
        config = (context.model_yaml_config or {}).get("handler", {})
        model_dir = Path(context.system_properties["model_dir"])
        gpu_id = context.system_properties.get("gpu_id")
        self.model = context.model_name
        self.artifact, self.device = choose_decoder(config, gpu_id)
        self.backend = BACKEND_OF.get(self.artifact, self.artifact)
        self.threads = worker_threads(config.get("threads", "auto"), config.get("store_workers", 1))
        self.decoder = backends.load(model_dir / self.artifact, self.device, self.threads)
        self.encoder = backends.load(model_dir / config["encoder"], self.device, self.threads) \
            if "encoder" in config else None
        labels = {"model": self.model, "backend": self.backend, "device": self.device}
        metrics.BACKEND_INFO.labels(**labels, artifact=self.artifact, threads=str(self.threads)).set(1)
        # Labelled children resolved once: a labels() lookup per request costs more than the observation.
        self.request_seconds = metrics.REQUEST_SECONDS.labels(**labels)
        self.decode_seconds = metrics.DECODE_SECONDS.labels(**labels)
        self.images = metrics.IMAGES.labels(**labels)
        self.batch_requests = metrics.BATCH_REQUESTS.labels(self.model)
        self.request_images = metrics.REQUEST_IMAGES.labels(self.model)
        self.recorder = metrics.Recorder(self.model)

    def count_response(self, status: int) -> None:
        """Count one answered request under its HTTP status (runs in the recorder's thread)."""
        metrics.REQUESTS.labels(self.model, str(status)).inc()

    def count_error(self, reason: str) -> None:
        """Count one rejected or failed request under its reason (runs in the recorder's thread)."""
        metrics.ERRORS.labels(self.model, reason).inc()

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Mean images (N, 28, 28) in [0, 1] for latents (N, 64)."""
        start = time.perf_counter()
        logits = self.decoder(z.astype(np.float32))
        self.recorder.record((self.decode_seconds.observe, time.perf_counter() - start))
        return (1 / (1 + np.exp(-logits)))[:, 0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Posterior means (N, 64) of images (N, 28, 28) in [0, 1]."""
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


_LATENT_RNG = np.random.Generator(np.random.Philox(key=0))
_NO_COUNTER = np.zeros(4, np.uint64)


def seeded_latents(seed: int, n: int, temperature: float = 1.0) -> np.ndarray:
    """n latents from N(0, temperature^2 I), a pure function of the seed; row i does not depend on n.

    The seed is the key of a Philox counter-based generator (Random123: each key is an independent stream),
    whose state is reset here on every call: cheaper than hashing the seed through a SeedSequence
    (``default_rng``) for every request. One shared generator, so not for concurrent threads (a worker runs
    one handler call at a time).
    """
    _LATENT_RNG.bit_generator.state = {
        "bit_generator": "Philox", "state": {"counter": _NO_COUNTER, "key": np.array([seed, 0], np.uint64)},
        "buffer": _NO_COUNTER, "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return _LATENT_RNG.standard_normal((n, SERVED_LATENT_DIM)) * temperature


def png_bytes(pixels: np.ndarray) -> bytes:
    """A uint8 (H, W) array as grayscale PNG bytes, at zlib level 1: much cheaper to encode than Pillow's default
    level 6, for about 13% more bytes on a grid of 64 images."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@functools.lru_cache(maxsize=512)
def npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a little-endian float32 C-order array of ``shape``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """The array as float32 .npy bytes (what np.save writes, with the header cached per shape)."""
    array = np.ascontiguousarray(array, dtype="<f4")
    return npy_header(array.shape) + array.tobytes()


def decode_png(text: str, name: str) -> np.ndarray:
    """A base64 PNG of a 28x28 8-bit grayscale image as intensities in [0, 1]; errors name the field."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise RequestError(name, "bad_image", f"{name} is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if image.format != "PNG":
            raise RequestError(name, "bad_image", f"{name} must be a PNG image, got {image.format}")
        if image.size != (28, 28):
            raise RequestError(name, "bad_image", f"{name} must be 28x28 pixels, got {image.size[0]}x{image.size[1]}")
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
        for i, row in enumerate(data):
            try:
                request = parse(row.get("body", row.get("data")), self.endpoint)
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
