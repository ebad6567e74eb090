"""Benchmark reference: a handler that decodes sample requests and does nothing else (no validation, no
metrics, no batched decoder call, no error handling). Its latency is what any handler of this decoder pays;
``python -m bench.serving_breakdown`` sets it beside the real ``sample`` handler and the echo floor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from handlers.config import WorkerConfig
from handlers.device import worker_threads
from runtime import artifacts, backends
from runtime.images import npy_bytes
from runtime.latent import seeded_latents
from runtime.manifest import Manifest

_model: list = []  # the worker's (decoder, latent size), loaded on the initialization call


def handle(data: list | None, context: Any) -> list | None:
    """Each request ``{"n": int, "seed": int}`` decoded on its own, as npy."""
    if not _model:
        config = WorkerConfig.from_dict(context.model_yaml_config["handler"])
        model_dir = Path(context.system_properties["model_dir"])
        threads = worker_threads(config.threads, config.store_workers)
        decoder = artifacts.DECODERS[config.decoder["cpu"][0]]
        _model.append((backends.load(decoder, model_dir, "cpu", threads), Manifest.read(model_dir).shapes.latent_dim))
    if data is None:
        return None
    decode, latent_dim = _model[0]
    replies = []
    for i, row in enumerate(data):
        request = json.loads(row.get("body") or row.get("data"))
        logits = decode(seeded_latents(request["seed"], request["n"], latent_dim).astype(np.float32))
        context.set_response_content_type(i, "application/x-npy")
        replies.append(npy_bytes(1 / (1 + np.exp(-logits[:, 0]))))
    return replies
