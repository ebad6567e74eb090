"""Benchmark reference: a handler that decodes sample requests and does nothing else (no validation, no
metrics, no batched decoder call, no error handling). Its latency is what any handler of this decoder pays;
``python -m handlers.bench`` sets it beside the real ``sample`` handler and the echo floor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from export import backends
from handlers.service import npy_bytes, seeded_latents, worker_threads

_decoder: list = []  # the worker's decoder, loaded on the initialization call


def handle(data: list | None, context: Any) -> list | None:
    """Each request ``{"n": int, "seed": int}`` decoded on its own, as npy."""
    if not _decoder:
        config = context.model_yaml_config["handler"]
        threads = worker_threads(config["threads"], config["store_workers"])
        _decoder.append(backends.load(Path(context.system_properties["model_dir"]) / config["decoder"], "cpu", threads))
    if data is None:
        return None
    replies = []
    for i, row in enumerate(data):
        request = json.loads(row.get("body") or row.get("data"))
        logits = _decoder[0](seeded_latents(request["seed"], request["n"]).astype(np.float32))
        context.set_response_content_type(i, "application/x-npy")
        replies.append(npy_bytes(1 / (1 + np.exp(-logits[:, 0]))))
    return replies
