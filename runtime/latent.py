"""Points in latent space: seeded draws from the prior (numpy), and paths between latents, linear (lerp) and
spherical (slerp) (torch, so that training runs them on its device)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_LATENT_RNG = np.random.Generator(np.random.Philox(key=0))
_NO_COUNTER = np.zeros(4, np.uint64)


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


def lerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Points (len(t), D) on the straight line from z0 to z1."""
    t = t.unsqueeze(1)
    return (1 - t) * z0 + t * z1


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Points on the great-circle arc from z0 to z1, with the norm interpolated linearly.

    In D dimensions the prior's mass lies on a thin shell of radius ~sqrt(D) (8 in 64-d); lerp cuts through
    the low-norm interior, slerp stays on the shell. Falls back to lerp for (anti)parallel endpoints.
    """
    t = t.unsqueeze(1)
    n0, n1 = z0.norm(), z1.norm()
    u0, u1 = z0 / n0, z1 / n1
    omega = torch.arccos(torch.clamp((u0 * u1).sum(), -1.0, 1.0))
    if torch.sin(omega).abs() < 1e-6:
        return lerp(z0, z1, t.squeeze(1))
    direction = (torch.sin((1 - t) * omega) * u0 + torch.sin(t * omega) * u1) / torch.sin(omega)
    return direction * ((1 - t) * n0 + t * n1)


def interpolate(z0: Tensor, z1: Tensor, steps: int, method: str = "slerp") -> Tensor:
    """``steps`` latents from z0 to z1 inclusive, by ``method`` ("lerp" or "slerp")."""
    t = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device)
    if method == "lerp":
        return lerp(z0, z1, t)
    if method == "slerp":
        return slerp(z0, z1, t)
    raise ValueError(f"method must be 'lerp' or 'slerp', got {method!r}")
