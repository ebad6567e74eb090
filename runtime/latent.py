"""Points and paths in latent space, in numpy: seeded draws from the prior, interpolation (lerp, slerp,
constant norm), random walks, and a mixture prior's density and KL. Training calls them too, on CPU copies of its
tensors."""

from __future__ import annotations

import numpy as np

_LATENT_RNG = np.random.Generator(np.random.Philox(key=0))
_NO_COUNTER = np.zeros(4, np.uint64)
METHODS = ("lerp", "slerp", "constant_norm")


def seeded_latents(seed: int, n: int, latent_dim: int, temperature: float = 1.0) -> np.ndarray:
    """n latents (n, latent_dim) from N(0, temperature^2 I), a pure function of the seed; row i does not depend on n.

    The seed is the key of a Philox counter-based generator (Random123: each key is an independent stream),
    whose state is reset here on every call: cheaper than hashing the seed through a SeedSequence
    (``default_rng``) for every request. One shared generator, so not for concurrent threads (a worker runs
    one handler call at a time).
    """
    _LATENT_RNG.bit_generator.state = {
        "bit_generator": "Philox", "state": {"counter": _NO_COUNTER, "key": np.array([seed, 0], np.uint64)},
        "buffer": _NO_COUNTER, "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return _LATENT_RNG.standard_normal((n, latent_dim)) * temperature


def lerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points (len(t), D) on the straight line from z0 to z1."""
    t = t[:, None]
    return (1 - t) * z0 + t * z1


def slerp(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points on the great-circle arc from z0 to z1, with the norm interpolated linearly.

    In D dimensions the prior's mass lies on a thin shell of radius ~sqrt(D) (8 in 64-d); lerp cuts through
    the low-norm interior, slerp stays on the shell. Falls back to lerp for (anti)parallel endpoints and for an
    endpoint at the origin (no direction).
    """
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
    if min(n0, n1) < 1e-9:
        return lerp(z0, z1, t)
    u0, u1 = z0 / n0, z1 / n1
    omega = np.arccos(np.clip(u0 @ u1, -1.0, 1.0))
    if abs(np.sin(omega)) < 1e-6:
        return lerp(z0, z1, t)
    t = t[:, None]
    direction = (np.sin((1 - t) * omega) * u0 + np.sin(t * omega) * u1) / np.sin(omega)
    return direction * ((1 - t) * n0 + t * n1)


def constant_norm(z0: np.ndarray, z1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The straight line's points rescaled to one norm, the mean of the endpoints' norms (so the endpoints move
    when their norms differ); the midpoint of (anti)parallel endpoints through the origin is left at the origin."""
    points = lerp(z0, z1, t)
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    radius = (np.linalg.norm(z0) + np.linalg.norm(z1)) / 2
    return np.where(norms > 1e-9, points * radius / np.maximum(norms, 1e-9), points)


def interpolate(z0: np.ndarray, z1: np.ndarray, steps: int, method: str = "slerp") -> np.ndarray:
    """``steps`` latents from z0 to z1 inclusive, by ``method`` ("lerp", "slerp" or "constant_norm")."""
    paths = {"lerp": lerp, "slerp": slerp, "constant_norm": constant_norm}
    if method not in paths:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    return paths[method](z0, z1, np.linspace(0, 1, steps))


def walk(start: np.ndarray, steps: np.ndarray, project: bool = False) -> np.ndarray:
    """The random walk start, start + steps[0], ... (len(steps) + 1, D); with ``project``, the start and every
    point after it rescaled onto the prior's shell (norm sqrt(D)) before the next step (a point at the origin has
    no direction and stays)."""
    point = np.asarray(start, np.float64)
    shell = np.sqrt(len(point))

    def onto_shell(z: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(z)
        return z * shell / norm if project and norm > 1e-9 else z

    points = [onto_shell(point)]
    for step in steps:
        points.append(onto_shell(points[-1] + step))
    return np.stack(points)


def prior_log_density(means: np.ndarray, stds: np.ndarray, weights: np.ndarray, z: np.ndarray) -> np.ndarray:
    """log p(z) for latents (..., D) under a mixture of diagonal Gaussians (``means``, ``stds`` (K, D),
    ``weights`` (K,)), in float64: a log-sum-exp over the components, whose Gaussian terms come from two matrix
    products."""
    flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
    means, stds = means.astype(np.float64), stds.astype(np.float64)
    inv_var = stds ** -2  # (K, D)
    const = (-0.5 * (np.log(2 * np.pi) * flat.shape[1] + (means ** 2 * inv_var).sum(1)) - np.log(stds).sum(1)
             + np.log(weights))
    terms = const - 0.5 * (flat ** 2 @ inv_var.T) + flat @ (means * inv_var).T  # (N, K)
    top = terms.max(1, keepdims=True)
    return (top[:, 0] + np.log(np.exp(terms - top).sum(1))).reshape(z.shape[:-1])


def kl_to_prior(means: np.ndarray, stds: np.ndarray, weights: np.ndarray, mu: np.ndarray, logvar: np.ndarray,
                z: np.ndarray) -> np.ndarray:
    """KL(q(z|x) || p(z)) per image (N,), nats, for posteriors (N, D) and their draws z (N, S, D) against the prior
    with mixture ``means``, ``stds`` (K, D) and ``weights`` (K,) (``LatentStats.prior_*``): analytic for N(0, I),
    else the Monte Carlo mean of log q(z|x) - log p(z) over the S draws (the evaluation's estimate)."""
    mu, logvar = mu.astype(np.float64), logvar.astype(np.float64)
    if len(weights) == 1 and not means.any() and (stds == 1).all():
        return -0.5 * (1 + logvar - mu ** 2 - np.exp(logvar)).sum(1)
    z = z.astype(np.float64)
    log_q = -0.5 * (np.log(2 * np.pi) + logvar[:, None] + (z - mu[:, None]) ** 2 * np.exp(-logvar)[:, None]).sum(-1)
    return (log_q - prior_log_density(means, stds, weights, z)).mean(1)
