"""TorchServe handler for ``sample`` (placeholder until the handlers issue): decodes z ~ N(0, I) for each request.

The decoder artifact comes from the archive's model-config YAML, ``handler.decoder``.
"""

from __future__ import annotations

import json
import os

import backends
import numpy as np

_decoder = None


def handle(data: list | None, context) -> list | None:  # noqa: ANN001 - TorchServe's Context
    """One JSON reply per request: ``{"n": int}`` -> mean images as nested lists."""
    global _decoder
    if data is None:
        return None
    if _decoder is None:
        model_dir = context.system_properties["model_dir"]
        artifact = context.model_yaml_config["handler"]["decoder"]
        _decoder = backends.load(os.path.join(model_dir, artifact))
    replies = []
    for row in data:
        body = row.get("body") or row.get("data") or b"{}"
        n = int(json.loads(body).get("n", 1)) if isinstance(body, bytes | bytearray) else int(body.get("n", 1))
        z = np.random.default_rng().standard_normal((n, 64)).astype(np.float32)
        replies.append({"images": (1 / (1 + np.exp(-_decoder(z)))).round(4).tolist()})
    return replies
