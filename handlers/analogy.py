"""Handler of ``analogy``: a is to b as c is to d, with z_d = z_c + (z_b - z_a).

The answer shows a, b, c and d decoded, in that order. Request: ``AnalogyRequest`` in openapi.yaml.
"""

from __future__ import annotations

import numpy as np

from handlers.service import Answer, Plan, Service, Worker, images_of


def plan(request: dict, worker: Worker) -> Plan:
    za, zb, zc = (worker.point(request[name], name) for name in ("a", "b", "c"))
    z = np.stack([za, zb, zc, zc + (zb - za)])
    return Plan(z, lambda logits: Answer(images_of(logits), 4, fields={"latents": z}))


handle = Service(plan)
