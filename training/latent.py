"""Paths between latent vectors: linear (lerp) and spherical (slerp) interpolation."""

from __future__ import annotations

import torch
from torch import Tensor


def lerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Points (len(t), D) on the straight line from z0 to z1."""
    t = t.unsqueeze(1)
    return (1 - t) * z0 + t * z1


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Points on the great-circle arc from z0 to z1, with the norm interpolated linearly.

    In 64-d the prior's mass lies on a thin shell of radius ~8; lerp cuts through the low-norm
    interior, slerp stays on the shell. Falls back to lerp for (anti)parallel endpoints.
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
