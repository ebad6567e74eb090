"""Points and paths in latent space, in numpy: seeded draws from the prior, interpolation (lerp, slerp,
constant norm) and random walks. Training calls them too, on CPU copies of its tensors."""

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
    the low-norm interior, slerp stays on the shell. Falls back to lerp for (anti)parallel endpoints.
    """
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
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
    point after it rescaled onto the prior's shell (norm sqrt(D)) before the next step."""
    point = np.asarray(start, np.float64)
    shell = np.sqrt(len(point))

    def onto_shell(z: np.ndarray) -> np.ndarray:
        return z * shell / np.linalg.norm(z) if project else z

    points = [onto_shell(point)]
    for step in steps:
        points.append(onto_shell(points[-1] + step))
    return np.stack(points)
