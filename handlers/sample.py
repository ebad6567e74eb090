"""Handler of ``sample``: latents from the prior, from a class's region, or around a point, decoded.

Request and response: ``SampleRequest`` in handlers/openapi.yaml. Without a seed, one is drawn and returned.
"""

from __future__ import annotations

import secrets

import numpy as np

from handlers.errors import RequestError
from handlers.service import Answer, Plan, Service, Worker, images_of, square_cols
from runtime.latent import seeded_latents

DEFAULT_SIGMA = 0.5  # the spread around a point, with around (openapi.yaml says so)


def plan(request: dict, worker: Worker) -> Plan:
    """z from the model's prior at the temperature (N(0, I): temperature * eps; a learned mixture: a component,
    then its mean + temperature * its std * eps); with a class, a random anchor of the class plus its posterior's
    std * temperature * eps (the class's aggregate posterior); around a point, point + sigma * temperature * eps."""
    if "sigma" in request and "around" not in request:
        raise RequestError("sigma", "conflict", "sigma is the spread around a point: give it with around")
    seed = request["seed"] if "seed" in request else secrets.randbits(63)  # get() would draw one every time
    if "class" not in request and "around" not in request:
        z = worker.prior_latents(seed, request["n"], request["temperature"])
        return Plan(z, lambda logits: Answer(images_of(logits), square_cols(len(z)),
                                             fields={"latents": z, "seed": seed}, headers={"X-Seed": seed}))
    eps = seeded_latents(seed, request["n"], worker.shapes.latent_dim, request["temperature"])
    if "class" in request:
        label = worker.class_index(request["class"])
        means, stds = worker.stats.anchor_means[label], worker.stats.anchor_stds[label]
        pick = np.random.default_rng([seed, label]).integers(len(means), size=len(eps))  # row i does not depend on n
        z = means[pick] + stds[pick] * eps
    else:
        z = worker.point(request["around"], "around") + request.get("sigma", DEFAULT_SIGMA) * eps
    return Plan(z, lambda logits: Answer(images_of(logits), square_cols(len(z)), fields={"latents": z, "seed": seed},
                                         headers={"X-Seed": seed}))


handle = Service(plan)
