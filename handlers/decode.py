"""Handler of ``decode``: latent vectors to images, in the order given.

Request and response: ``DecodeRequest`` in handlers/openapi.yaml.
"""

from __future__ import annotations

import numpy as np

from handlers.service import Answer, Plan, Service, Worker, images_of, square_cols


def plan(request: dict, worker: Worker) -> Plan:
    z = np.asarray(request["latents"], dtype=np.float64)
    return Plan(z, lambda logits: Answer(images_of(logits), square_cols(len(z)), fields={"latents": z}))


handle = Service(plan)
