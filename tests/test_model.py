"""The VAE interface: shapes, the loss against closed-form values, latent interpolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from runtime.latent import interpolate, seeded_latents, walk
from training.model import VAE, VAEConfig


def test_shapes_and_interface():
    model = VAE(VAEConfig(latent_dim=8, channels=(4, 8, 16)))
    x = torch.rand(5, 1, 28, 28)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 8)
    assert model.decode(mu).shape == (5, 1, 28, 28)
    logits, mu2, _, z = model(x)
    assert logits.shape == (5, 1, 28, 28) and torch.equal(mu, mu2) and z.shape == (5, 8)
    samples = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    again = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)
    assert all(t.shape == (5,) for t in model.loss(x, logits, mu, logvar, z))


def test_decoder_has_no_transposed_convolutions():
    # Export quantizes the decoder with ONNX Runtime, which does not quantize ConvTranspose.
    kinds = {type(m).__name__ for m in VAE().decoder.modules()}
    assert "ConvTranspose2d" not in kinds and {"Linear", "Conv2d"} <= kinds


def test_kl_matches_closed_form():
    mu = torch.tensor([[1.0, -2.0, 0.0]])
    sigma = torch.tensor([[1.0, 0.5, 2.0]])
    logvar = (sigma ** 2).log()
    pairs = zip(mu[0].tolist(), sigma[0].tolist(), strict=True)
    expected = sum(0.5 * (s * s + m * m - 1 - math.log(s * s)) for m, s in pairs)
    x = torch.full((1, 1, 28, 28), 0.5)
    model = VAE(VAEConfig(latent_dim=3, channels=(4, 8, 16)))
    _, _, kl = model.loss(x, torch.zeros_like(x), mu, logvar, mu)
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    _, _, kl_prior = model.loss(x, torch.zeros_like(x), torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3))
    assert kl_prior.item() == 0.0


def test_recon_is_summed_bce_in_nats_and_beta_weights_kl():
    x = torch.rand(2, 1, 28, 28)
    logits = torch.randn(2, 1, 28, 28)
    p = torch.sigmoid(logits.double())
    manual = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    mu, logvar = torch.ones(2, 4), torch.zeros(2, 4)  # KL = 0.5 * 4 = 2 nats per image
    model = VAE(VAEConfig(latent_dim=4, channels=(4, 8, 16)))
    total, recon, kl = model.loss(x, logits, mu, logvar, mu, beta=0.25)
    assert torch.allclose(recon.double(), manual, rtol=1e-5)
    assert torch.allclose(kl, torch.full((2,), 2.0))
    assert torch.allclose(total, recon + 0.5)
    # Constant logits 0 give exactly 784 * log 2 nats whatever x is.
    _, recon0, _ = model.loss(x, torch.zeros_like(x), mu, logvar, mu)
    assert torch.allclose(recon0, torch.full((2,), 784 * math.log(2)), rtol=1e-5)


def test_interpolation_paths():
    rng = np.random.default_rng(0)
    z0, z1 = rng.standard_normal(64), rng.standard_normal(64)
    for method in ("lerp", "slerp"):
        path = interpolate(z0, z1, 9, method)
        assert path.shape == (9, 64)
        assert np.allclose(path[0], z0) and np.allclose(path[-1], z1)
    norm0, norm1 = np.linalg.norm(z0), np.linalg.norm(z1)
    slerp_norms = np.linalg.norm(interpolate(z0, z1, 9, "slerp"), axis=1)
    assert np.allclose(slerp_norms, np.linspace(norm0, norm1, 9))
    # Lerp between two prior samples cuts through the low-norm interior of the 64-d shell ...
    assert np.linalg.norm(interpolate(z0, z1, 9, "lerp")[4]) < 0.8 * min(norm0, norm1)
    # ... constant_norm puts every point at the endpoints' mean norm, on the line's directions.
    path = interpolate(z0, z1, 9, "constant_norm")
    assert np.allclose(np.linalg.norm(path, axis=1), (norm0 + norm1) / 2)
    line = interpolate(z0, z1, 9, "lerp")
    assert np.allclose(path / np.linalg.norm(path, axis=1, keepdims=True),
                       line / np.linalg.norm(line, axis=1, keepdims=True))
    with pytest.raises(ValueError, match="method"):
        interpolate(z0, z1, 3, "cubic")


def test_seeded_latents_and_walks():
    a, b = seeded_latents(5, 4, 16), seeded_latents(5, 2, 16)
    assert a.shape == (4, 16) and np.array_equal(a[:2], b)  # row i does not depend on n
    assert not np.allclose(seeded_latents(6, 1, 16), a[:1])
    start, steps = np.full(16, 2.0), 0.3 * seeded_latents(1, 5, 16)
    free = walk(start, steps)
    assert free.shape == (6, 16) and np.allclose(free[0], start) and np.allclose(np.diff(free, axis=0), steps)
    shell = walk(start, steps, project=True)
    assert np.allclose(np.linalg.norm(shell, axis=1), 4.0)  # sqrt(16)
