"""The ``reconstruct`` worker: images to their reconstructions, with reconstruction error and KL.

The reconstruction is the decoded posterior mean. The error is the evaluation report's recon term for the image:
the Bernoulli negative log-likelihood (BCE summed over pixels, nats) averaged over ``samples`` posterior draws,
all decoded in the batch's one decoder call; the KL is to the model's prior (analytic for N(0, I), over the same
draws for a learned one). Request and response: ``ReconstructRequest`` in openapi.yaml.
"""

from __future__ import annotations

import numpy as np

from handlers.service import Answer, Plan, Service, Worker, images_of
from runtime.latent import kl_to_prior, seeded_latents

ROW = 8  # png: rows of up to 8 inputs, each above its reconstruction


def bce_nats(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """BCE of Bernoulli logits against intensities, summed over the last axis, in nats (stable form)."""
    logits = logits.astype(np.float64)
    return (np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))).sum(-1)


def plan(request: dict, worker: Worker) -> Plan:
    """Decode the means and, for the error, ``samples`` draws z = mu + sigma * eps per image."""
    x = worker.pixels(request["images"], "images")
    mu, logvar = worker.encode(x)
    n, draws, dim = len(x), request["samples"], worker.shapes.latent_dim
    eps = seeded_latents(request["seed"], n * draws, dim).reshape(n, draws, dim)
    z = mu[:, None] + eps * np.exp(0.5 * logvar)[:, None]

    def finish(logits: np.ndarray) -> Answer:
        recon = images_of(logits[:n])
        error = bce_nats(logits[n:].reshape(n, draws, -1), x.reshape(n, 1, -1).astype(np.float64)).mean(1)
        stats = worker.stats
        kl = kl_to_prior(stats.prior_means, stats.prior_stds, stats.prior_weights, mu, logvar, z)
        cols = min(n, ROW)

        def row(images: np.ndarray) -> np.ndarray:  # a short last row padded with white
            return np.concatenate([images, np.ones((cols - len(images), *images.shape[1:]), images.dtype)])

        pairs = np.concatenate([row(part) for i in range(0, n, cols) for part in (x[i:i + cols], recon[i:i + cols])])
        return Answer(recon, cols, grid=pairs, fields={"latents": mu, "recon_error": error, "kl": kl})

    return Plan(np.concatenate([mu, z.reshape(-1, dim)]), finish)


handle = Service(plan)
