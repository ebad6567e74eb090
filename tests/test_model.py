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


def test_paths_from_the_origin_stay_finite():
    """The origin has no direction: slerp from it is the straight line, and a projected walk leaves it in place."""
    origin, z1 = np.zeros(16), np.full(16, 1.0)
    for method in ("lerp", "slerp", "constant_norm"):
        path = interpolate(origin, z1, 5, method)
        assert np.isfinite(path).all(), method
    assert np.allclose(interpolate(z1, origin, 5, "slerp"), interpolate(z1, origin, 5, "lerp"))
    walked = walk(origin, 0.3 * seeded_latents(1, 3, 16), project=True)
    assert np.isfinite(walked).all() and np.array_equal(walked[0], origin)
    assert np.allclose(np.linalg.norm(walked[1:], axis=1), 4.0)


def test_a_mixture_prior_log_density_sampling_and_kl():
    """The learned prior: log p(z) is the log-sum-exp of its weighted components (one component at 0 with unit
    variance is N(0, I)), seeded draws repeat, temperature scales each component's spread, and the loss's KL is the
    one-sample estimate log q(z|x) - log p(z)."""
    from training.model import MixturePrior, StandardNormal, gaussian_log_density
    prior = MixturePrior(3, 2)
    prior.place(torch.tensor([[0.0, 0, 0], [5.0, 5, 5]]), torch.tensor([[0.0, 0, 0], [-2.0, -2, -2]]))
    z = torch.randn(7, 3)
    direct = torch.logsumexp(torch.stack([gaussian_log_density(z, prior.means[k], prior.logvars[k])
                                          for k in range(2)]) + math.log(0.5), 0)
    assert torch.allclose(prior.log_prob(z), direct, atol=1e-5)
    one = MixturePrior(3, 1)
    one.place(torch.zeros(1, 3), torch.zeros(1, 3))
    assert torch.allclose(one.log_prob(z), StandardNormal(3).log_prob(z), atol=1e-5)
    draws = prior.sample(4000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draws, prior.sample(4000, generator=torch.Generator().manual_seed(1)))
    near = (draws - 5).norm(dim=1) < 2
    assert 0.4 < near.float().mean() < 0.6  # half the draws from each component
    cold = prior.sample(4000, temperature=0.5, generator=torch.Generator().manual_seed(1))
    assert cold[~near].std().item() == pytest.approx(0.5 * draws[~near].std().item(), rel=0.1)
    model = VAE(VAEConfig(latent_dim=3, channels=(4, 8, 16), prior_components=2))
    model.prior.load_state_dict(prior.state_dict())
    x = torch.rand(5, 1, 28, 28)
    logits, mu, logvar, zs = model(x)
    _, _, kl = model.loss(x, logits, mu, logvar, zs)
    assert torch.allclose(kl, gaussian_log_density(zs, mu, logvar) - prior.log_prob(zs), atol=1e-5)


def test_served_prior_draws_are_seeded_prefix_stable_and_n01_for_the_standard_prior():
    """``LatentStats.prior_latents`` (what sample and every seeded point serve): for N(0, I), exactly
    ``seeded_latents``; for a mixture, row i does not depend on n, components drawn by weight, temperature scaling
    each component's spread around its mean."""
    from runtime.artifacts import stats_from_arrays
    base = {"class_names": np.array(["a"]), "class_means": np.zeros((1, 4))}
    base |= {name: np.zeros(1) for name in ("anchor_means", "anchor_stds", "class_weights", "class_bias",
                                             "principal_directions", "principal_std", "active_order",
                                             "scatter_means", "scatter_labels")}
    standard = stats_from_arrays(base)  # statistics without prior arrays: a model with N(0, I)
    assert np.array_equal(standard.prior_latents(9, 5, 0.7), seeded_latents(9, 5, 4, 0.7))
    mixture = stats_from_arrays(base | {"prior_means": np.array([[0.0] * 4, [10.0] * 4], np.float32),
                                        "prior_stds": np.full((2, 4), 0.5, np.float32),
                                        "prior_weights": np.array([0.25, 0.75])})
    draws = mixture.prior_latents(3, 4000)
    assert np.array_equal(draws[:10], mixture.prior_latents(3, 10)) and not np.allclose(draws[:10],
                                                                                         mixture.prior_latents(4, 10))
    high = draws.mean(1) > 5
    assert 0.72 < high.mean() < 0.78
    assert draws[high].std() == pytest.approx(0.5, rel=0.05)
    assert mixture.prior_latents(3, 4000, 0.2)[high].std() == pytest.approx(0.1, rel=0.05)


def test_the_served_statistics_give_the_priors_density_and_kl():
    """``prior_log_density`` (numpy, what ``reconstruct`` serves) equals the training prior's ``log_prob``;
    ``kl_to_prior`` is analytic for N(0, I) and the mean of log q - log p over the draws for a mixture."""
    from runtime.artifacts import stats_from_arrays
    from runtime.latent import kl_to_prior, prior_log_density
    from training.model import MixturePrior, gaussian_log_density
    torch.manual_seed(0)
    prior = MixturePrior(4, 3)
    prior.place(torch.randn(3, 4), torch.randn(3, 4) * 0.3)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.2, -1.0, 0.5]))
    base = {"class_names": np.array(["a"]), "class_means": np.zeros((1, 4))}
    base |= {name: np.zeros(1) for name in ("anchor_means", "anchor_stds", "class_weights", "class_bias",
                                             "principal_directions", "principal_std", "active_order",
                                             "scatter_means", "scatter_labels")}
    mixture = stats_from_arrays(base | {"prior_means": prior.means.detach().numpy(),
                                        "prior_stds": torch.exp(0.5 * prior.logvars).detach().numpy(),
                                        "prior_weights": torch.softmax(prior.logits, 0).detach().numpy()})
    mu, logvar, z = torch.randn(5, 4), torch.randn(5, 4) * 0.2, torch.randn(5, 6, 4)
    with torch.no_grad():
        density = prior_log_density(mixture.prior_means, mixture.prior_stds, mixture.prior_weights, z.numpy())
        assert np.allclose(density, prior.log_prob(z).numpy(), atol=1e-4)
        expected = (gaussian_log_density(z, mu[:, None], logvar[:, None]) - prior.log_prob(z)).mean(1)
    posterior = (mu.numpy(), logvar.numpy(), z.numpy())
    kl = kl_to_prior(mixture.prior_means, mixture.prior_stds, mixture.prior_weights, *posterior)
    assert np.allclose(kl, expected.numpy(), atol=1e-4)
    standard = stats_from_arrays(base)
    analytic = VAE.kl_per_dim(mu, logvar).sum(1).numpy()
    kl = kl_to_prior(standard.prior_means, standard.prior_stds, standard.prior_weights, *posterior)
    assert np.allclose(kl, analytic, atol=1e-6)
