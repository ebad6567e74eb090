"""Handler of ``walk``: a seeded random walk from a start, optionally kept on the prior's shell.

z_{k+1} = z_k + step_size * eps_k, eps_k ~ N(0, I) from the seed (drawn and returned when not given). Request:
``WalkRequest`` in openapi.yaml.
"""

from __future__ import annotations

import secrets

from handlers.service import Answer, Plan, Service, Worker, images_of
from runtime.latent import seeded_latents, walk

GRID_COLS = 16


def plan(request: dict, worker: Worker) -> Plan:
    seed = request["seed"] if "seed" in request else secrets.randbits(63)
    steps = request["step_size"] * seeded_latents(seed, request["steps"] - 1, worker.shapes.latent_dim)
    path = walk(worker.point(request["start"], "start"), steps, request["project"])
    return Plan(path, lambda logits: Answer(images_of(logits), min(len(path), GRID_COLS),
                                            fields={"latents": path, "seed": seed}, headers={"X-Seed": seed}))


handle = Service(plan)
