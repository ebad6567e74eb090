"""The latent-space operations, in this process and on the session's TorchServe (``api``): every OpenAPI example,
each operation's arithmetic against the artifacts and statistics, and bad input for every field."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fmvae_client import fetch
from jsonschema import Draft202012Validator
from PIL import Image

from handlers import traverse
from handlers.errors import RequestError
from handlers.schema import SPEC, RequestSchema, inline_refs
from runtime import artifacts, backends
from runtime.latent import interpolate, seeded_latents
from tests.conftest import ARTIFACTS, LATENT, b64png, fast_check_passes, npy, png, post
from tests.test_serving import BAD_INPUTS as SERVING_BAD_INPUTS
from tests.test_serving import VALID_INPUTS as SERVING_VALID_INPUTS
from training.checkpoint import load, load_model
from training.data import CLASS_NAMES
from training.model import gaussian_log_density

STATS = artifacts.read_stats(ARTIFACTS / artifacts.STATS)
GOOD_IMAGE = b64png(np.full((28, 28), 40, np.uint8))
DECODER = backends.load(artifacts.DECODERS["onnx-int8"], ARTIFACTS)
ENCODER = backends.load(artifacts.ENCODERS["onnx-fp32"], ARTIFACTS)
OPERATIONS = [path.removeprefix("/predictions/") for path in SPEC["paths"]]
CONTENT_TYPES = {"png": "image/png", "gif": "image/gif", "npy": "application/x-npy", "json": "application/json"}


def request_schema(operation: str) -> dict:
    """The operation's request body in the OpenAPI document: its schema reference and its example."""
    return SPEC["paths"][f"/predictions/{operation}"]["post"]["requestBody"]["content"]["application/json"]


def formats(operation: str) -> list[str]:
    """The formats an operation's schema allows."""
    schema = RequestSchema(LATENT).schemas[operation]["properties"]["format"]
    return schema["enum"]


def images_of(logits: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-logits)))[:, 0]


def real_images(api, n: int = 3) -> tuple[np.ndarray, list[str]]:
    """Decoded samples as uint8 pixels and base64 PNGs: images the encoder has seen the like of."""
    pixels = (npy(post(api, "sample", {"n": n, "seed": 21, "format": "npy"})[2]) * 255).round().astype(np.uint8)
    return pixels, [b64png(p) for p in pixels]


def json_reply(api, operation: str, body: dict) -> dict:
    code, headers, payload = post(api, operation, body | {"format": "json"})
    assert code == 200, payload[:300]
    return json.loads(payload)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_openapi_example_answers_in_every_format(api, operation):
    example = request_schema(operation)["example"]
    reply = "EncodeResponse" if operation == "encode" else "ImagesResponse"
    validator = Draft202012Validator(inline_refs(SPEC["components"]["schemas"][reply], SPEC["components"]["schemas"]))
    for fmt in formats(operation):
        code, headers, payload = post(api, operation, example | {"format": fmt})
        assert code == 200, (fmt, payload[:300])
        assert headers["content-type"] == CONTENT_TYPES[fmt]
        if fmt == "json":
            validator.validate(json.loads(payload))
        elif fmt == "png":
            assert png(payload).shape[0] >= 30
        elif fmt == "gif":
            assert Image.open(io.BytesIO(payload)).n_frames == example.get("steps", 16)
        else:
            assert npy(payload).dtype == np.float32


def test_encode_gives_the_encoders_mean_and_log_variance(api):
    pixels, texts = real_images(api)
    reply = json_reply(api, "encode", {"images": texts})
    mu, logvar = ENCODER(pixels[:, None].astype(np.float32) / 255)
    assert np.allclose(reply["mu"], mu, atol=1e-5) and np.allclose(reply["logvar"], logvar, atol=1e-5)
    array = npy(post(api, "encode", {"images": texts, "format": "npy"})[2])
    assert array.shape == (3, 2, LATENT) and np.allclose(array[:, 0], mu, atol=1e-5)


def test_decode_is_samples_decoder(api):
    sampled = json_reply(api, "sample", {"n": 5, "seed": 8})
    images = npy(post(api, "decode", {"latents": sampled["latents"], "format": "npy"})[2])
    assert images.shape == (5, 28, 28)
    assert np.allclose(images, npy(post(api, "sample", {"n": 5, "seed": 8, "format": "npy"})[2]), atol=1e-5)


def test_reconstruct_reports_the_recon_term_and_kl(api):
    pixels, texts = real_images(api, 10)
    reply = json_reply(api, "reconstruct", {"images": texts, "samples": 4, "seed": 3})
    x = pixels.astype(np.float32) / 255
    mu, logvar = ENCODER(x[:, None])
    eps = seeded_latents(3, 10 * 4, LATENT).reshape(10, 4, LATENT)
    z = (mu[:, None] + eps * np.exp(0.5 * logvar)[:, None]).reshape(-1, LATENT)
    logits = DECODER(z.astype(np.float32)).reshape(10, 4, -1).astype(np.float64)
    target = x.reshape(10, 1, -1)
    bce = (np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))).sum(-1).mean(1)
    model, _ = load_model(ARTIFACTS.parent / "release" / "vae.pt")  # the KL to the model's own (mixture) prior
    with torch.no_grad():
        zt = torch.from_numpy(z.reshape(10, 4, LATENT)).float()
        log_q = gaussian_log_density(zt, torch.from_numpy(mu)[:, None], torch.from_numpy(logvar)[:, None])
        kl = (log_q - model.prior.log_prob(zt)).mean(1).numpy()
    assert np.allclose(reply["recon_error"], bce, rtol=1e-4) and np.allclose(reply["kl"], kl, rtol=1e-4, atol=1e-3)
    assert not np.allclose(kl, -0.5 * (1 + logvar - mu ** 2 - np.exp(logvar)).sum(1), atol=0.5)  # not N(0, I)'s
    assert 50 < np.mean(bce) < 784 * np.log(2)  # nats: better than a coin per pixel
    recon = npy(post(api, "reconstruct", {"images": texts, "format": "npy"})[2])
    assert np.allclose(recon, images_of(DECODER(mu)), atol=1e-5)  # the decoded posterior mean
    grid = png(post(api, "reconstruct", {"images": texts})[2])
    assert grid.shape == (2 + 4 * 30, 2 + 8 * 30)  # 8 inputs, their reconstructions, 2 inputs, theirs
    assert np.array_equal(grid[2:30, 2:30], pixels[0])
    assert (grid[2 + 60:30 + 60, 2 + 60:30 + 60] == 255).all()  # the short row is padded with white


def test_traverse_walks_the_named_directions(api):
    start = STATS.prior_latents(4, 1)[0]  # a seed's point: the model's prior draw
    reply = json_reply(api, "traverse", {"start": {"seed": 4}, "range": [-2, 2], "steps": 5})
    z = np.array(reply["latents"]).reshape(-1, 5, LATENT)
    default = [int(d) for d in STATS.active_order[:8]]
    assert reply["directions"] == [{"dimension": d} for d in default] and z.shape == (8, 5, LATENT)
    t = np.linspace(-2, 2, 5)
    assert np.allclose(z[0], start + t[:, None] * np.eye(LATENT)[default[0]], atol=1e-5)
    body = {"start": {"seed": 4}, "directions": [{"principal": 1}, {"class": "Bag"}], "steps": 3}
    z = np.array(json_reply(api, "traverse", body)["latents"]).reshape(2, 3, LATENT)
    assert np.allclose(z[0, -1] - z[0, 0], 6 * STATS.principal_directions[1], atol=1e-4)
    bag = STATS.class_means[8] - STATS.class_means.mean(0)  # Bag's class-mean step raises it against every class
    assert np.allclose(z[1, -1] - z[1, 0], 6 * bag, atol=1e-4)
    assert npy(post(api, "traverse", body | {"format": "npy"})[2]).shape == (2, 3, 28, 28)


def class_steps(api) -> np.ndarray:
    """Every class direction's step (C, D) as the route walks it: its latents at t = 0 and t = 1."""
    body = {"start": {"seed": 1}, "directions": [{"class": c} for c in CLASS_NAMES], "range": [0, 1], "steps": 2}
    z = np.array(json_reply(api, "traverse", body)["latents"]).reshape(len(CLASS_NAMES), 2, LATENT)
    return z[:, 1] - z[:, 0]


def test_every_class_direction_raises_its_class_from_every_start_and_reaches_it(api):
    """Along each class's step the class model never lowers the class, from 4,000 starts (the test posterior means
    of the statistics and prior draws), and over the default range it ends where the class is the likelier half for
    most of them; a class-mean step that raises the class against every other class is the step itself."""
    steps = class_steps(api)
    starts = np.concatenate([STATS.scatter_means, STATS.prior_latents(0, 2000)]).astype(np.float64)
    t = np.linspace(-3, 3, 25)
    reached = []
    for index, name in enumerate(CLASS_NAMES):
        z = starts[:, None] + t[None, :, None] * steps[index]
        p = STATS.class_probabilities(z.reshape(-1, LATENT))[:, index].reshape(len(starts), len(t))
        assert (np.diff(p, axis=1) >= -1e-9).all() and (p[:, -1] > p[:, 0]).all(), name
        reached.append((p[:, -1] >= 0.5).mean())
    assert np.mean(reached) > 0.85, reached
    weights = STATS.class_weights.astype(np.float64)
    for index, name in enumerate(CLASS_NAMES):
        gains = np.delete(weights[index] - weights, index, axis=0)  # log-odds gained per unit step, per class
        mean_step = STATS.class_means[index] - STATS.class_means.mean(0)
        assert (gains @ steps[index] >= -1e-6).all()
        assert np.allclose(steps[index], mean_step, atol=1e-5) == (gains @ mean_step >= 0).all(), name


def test_traverse_along_each_class_from_test_images_ends_more_like_the_class(api):
    """The issue's request, from the first ten test images' posterior means along every class over [-2, 2]: the
    answer's own class probabilities of the class never fall along a row and end higher than they start, and the
    class is the likelier half at the end of most rows."""
    ends = []
    for start in STATS.scatter_means[:10]:
        body = {"start": {"latent": start.tolist()}, "directions": [{"class": c} for c in CLASS_NAMES],
                "range": [-2, 2]}
        rows = json_reply(api, "traverse", body)["class_probabilities"]
        p = np.array([row[name] for row, name in zip(rows, np.repeat(CLASS_NAMES, 9), strict=True)]).reshape(10, 9)
        assert (np.diff(p, axis=1) >= 0).all() and (p[:, -1] > p[:, 0]).all(), p
        ends.extend(p[:, -1])
    assert np.mean(np.array(ends) >= 0.5) >= 0.7


def test_a_class_that_no_step_raises_against_every_other_class_gives_no_direction():
    """The 2-d model's Dress sits inside the other classes' weights: every step lowers it against some class."""
    stats = artifacts.read_stats(ARTIFACTS.parent / "export-2d" / artifacts.STATS)
    worker = SimpleNamespace(stats=stats, class_index=CLASS_NAMES.index)
    assert not traverse.class_step(stats, 3).any() and traverse.class_step(stats, 1).any()
    with pytest.raises(RequestError, match="gives no direction"):
        traverse.step_of({"class": "Dress"}, worker)


def test_edit_moves_between_class_means_and_strength_zero_is_the_reconstruction(api):
    pixels, texts = real_images(api, 1)
    body = {"start": {"image": texts[0]}, "from": "Sneaker", "to": 9, "strength": [0, 1, 2]}
    reply = json_reply(api, "edit", body)
    z = np.array(reply["latents"])
    mu, _ = ENCODER(pixels[:, None].astype(np.float32) / 255)
    vector = STATS.class_means[9] - STATS.class_means[7]
    assert np.allclose(z, mu[0] + np.array([0, 1, 2])[:, None] * vector, atol=1e-5)
    images = npy(post(api, "edit", body | {"format": "npy"})[2])
    assert np.allclose(images[0], images_of(DECODER(mu))[0], atol=1e-5)
    single = json_reply(api, "edit", body | {"strength": 1.5})
    assert single["strengths"] == [1.5] and len(single["images"]) == 1


def test_an_auto_edit_stops_where_the_class_model_reaches_the_target(api):
    stopped_inside = 0
    for seed in range(12):
        start = STATS.prior_latents(seed, 1)[0]
        reply = json_reply(api, "edit", {"start": {"seed": seed}, "to": "Bag", "target_probability": 0.9})
        (fraction,), (reached,) = reply["strengths"], reply["reached"]
        anchor = STATS.nearest_anchor(8, start[None])[0]
        assert np.allclose(reply["latents"][0], start + fraction * (anchor - start), atol=1e-5)
        path = start + np.linspace(0, 1, 101)[:, None] * (anchor - start)
        bag = STATS.class_probabilities(path)[:, 8]
        if reached:  # the first step that gets there
            assert reply["class_probabilities"][0]["Bag"] >= 0.9 - 1e-4
            assert np.isclose(fraction, np.linspace(0, 1, 101)[np.argmax(bag >= 0.9)])
            stopped_inside += 0 < fraction < 1
        else:  # best effort: the anchor
            assert fraction == 1 and bag.max() < 0.9
    assert stopped_inside  # the class model does stop some edits short of the anchor
    images = npy(post(api, "edit", {"start": {"seed": 4}, "to": "Bag", "format": "npy"})[2])
    assert images.shape == (1, 28, 28)  # "auto" and 0.99 are the defaults


def test_an_unreachable_auto_edit_ends_at_the_anchor_and_says_so(api):
    start = STATS.class_means[1].astype(np.float64)  # Trouser's mean, toward Shirt, at a probability few points have
    reply = json_reply(api, "edit", {"start": {"class": "Trouser"}, "to": "Shirt", "target_probability": 0.999999})
    probabilities = STATS.class_probabilities(STATS.nearest_anchor(6, start[None]))[0, 6]
    if probabilities >= 0.999999:
        pytest.skip("this export's class model is sure of that anchor")
    assert reply["reached"] == [False] and reply["strengths"] == [1.0]
    assert np.allclose(reply["latents"][0], STATS.nearest_anchor(6, start[None])[0], atol=1e-5)


@pytest.mark.parametrize(("operation", "body", "count"), [
    ("sample", {"n": 3, "seed": 1, "class": "Coat"}, 3), ("decode", {"latents": [[0.0] * LATENT] * 2}, 2),
    ("encode", {"images": [GOOD_IMAGE]}, 1), ("edit", {"start": {"seed": 2}, "to": 3}, 1)])
def test_answers_carry_the_class_models_probabilities_for_each_image(api, operation, body, count):
    reply = json_reply(api, operation, body)
    z = np.array(reply.get("latents", reply.get("mu")))
    rows = reply["class_probabilities"]
    assert len(rows) == count and all(list(row) == list(CLASS_NAMES) for row in rows)
    assert np.allclose([list(row.values()) for row in rows], STATS.class_probabilities(z), atol=1e-4)


def test_the_named_openapi_examples_answer(api):
    for operation in OPERATIONS:
        for name, example in request_schema(operation).get("examples", {}).items():
            code, _, payload = post(api, operation, example["value"])
            assert code == 200, (operation, name, payload[:300])


def test_analogy_adds_the_difference(api):
    body = {"a": {"class": "Sneaker"}, "b": {"class": "Ankle boot"}, "c": {"seed": 5}}
    z = np.array(json_reply(api, "analogy", body)["latents"])
    assert np.allclose(z[:3], [STATS.class_means[7], STATS.class_means[9], STATS.prior_latents(5, 1)[0]], atol=1e-5)
    assert np.allclose(z[3], z[2] + z[1] - z[0], atol=1e-5)
    assert png(post(api, "analogy", body)[2]).shape == (32, 2 + 4 * 30)


def test_walk_is_seeded_and_can_stay_on_the_shell(api):
    body = {"start": {"seed": 7}, "seed": 2, "steps": 6, "step_size": 0.5}
    reply = json_reply(api, "walk", body)
    z = np.array(reply["latents"])
    assert reply["seed"] == 2 and z.shape == (6, LATENT)
    assert np.allclose(np.diff(z, axis=0), 0.5 * seeded_latents(2, 5, LATENT), atol=1e-5)
    shell = np.array(json_reply(api, "walk", body | {"project": True})["latents"])
    assert np.allclose(np.linalg.norm(shell, axis=1), np.sqrt(LATENT), rtol=1e-5)
    code, headers, drawn = post(api, "walk", {"start": {"class": 0}, "format": "npy"})
    again = post(api, "walk", {"start": {"class": 0}, "seed": int(headers["x-seed"]), "format": "npy"})[2]
    assert code == 200 and np.array_equal(npy(drawn), npy(again))  # the returned seed is the one drawn


def test_paths_through_the_origin_answer_finite_latents(api):
    """A zero latent is valid input: interpolate (slerp) and a projected walk from it answer finite JSON."""
    origin = [0.0] * LATENT
    path = json_reply(api, "interpolate", {"latents": [origin, [1.0] * LATENT], "steps": 4})["latents"]
    assert np.isfinite(np.array(path)).all() and np.allclose(path[0], origin)
    walked = np.array(json_reply(api, "walk", {"start": {"latent": origin}, "project": True, "seed": 1})["latents"])
    assert np.isfinite(walked).all() and np.allclose(np.linalg.norm(walked[1:], axis=1), np.sqrt(LATENT), rtol=1e-5)


def test_sample_by_class_draws_anchors_posteriors_and_around_a_point(api):
    reply = json_reply(api, "sample", {"n": 4, "seed": 6, "class": "Trouser", "temperature": 0.5})
    pick = np.random.default_rng([6, 1]).integers(len(STATS.anchor_means[1]), size=4)
    eps = seeded_latents(6, 4, LATENT, 0.5)
    assert np.allclose(reply["latents"], STATS.anchor_means[1][pick] + STATS.anchor_stds[1][pick] * eps, atol=1e-5)
    more = json_reply(api, "sample", {"n": 9, "seed": 6, "class": 1, "temperature": 0.5})
    assert np.allclose(more["latents"][:4], reply["latents"], atol=1e-6)  # a seed's first images whatever n
    hot = json_reply(api, "sample", {"n": 4, "seed": 6, "class": "Trouser", "temperature": 1.0})
    anchors = STATS.anchor_means[1][pick]
    assert np.allclose(np.array(hot["latents"]) - anchors, 2 * (np.array(reply["latents"]) - anchors), atol=1e-5)
    around = json_reply(api, "sample", {"n": 3, "seed": 6, "around": {"seed": 11}, "sigma": 0.2})
    assert np.allclose(around["latents"], STATS.prior_latents(11, 1)[0] + 0.2 * seeded_latents(6, 3, LATENT),
                       atol=1e-5)
    default_sigma = json_reply(api, "sample", {"n": 1, "seed": 6, "around": {"seed": 11}})
    assert np.allclose(default_sigma["latents"][0],
                       STATS.prior_latents(11, 1)[0] + 0.5 * seeded_latents(6, 1, LATENT)[0], atol=1e-5)


def test_sample_draws_from_the_released_models_learned_prior(api):
    """The 64-d export's statistics carry the release's mixture prior, and sample serves its seeded draws: the same
    seed the same latents, a seed's first images whatever n, temperature scaling each draw's spread around its
    component's mean (the component drawn does not depend on the temperature)."""
    checkpoint = load(ARTIFACTS.parent / "release" / "vae.pt")
    prior = {k.removeprefix("prior."): v.double().numpy() for k, v in checkpoint["model"].items()
             if k.startswith("prior.")}
    assert len(STATS.prior_weights) == checkpoint["model_config"]["prior_components"] == 512
    assert np.allclose(STATS.prior_means, prior["means"], atol=1e-6)
    assert np.allclose(STATS.prior_stds, np.exp(0.5 * prior["logvars"]), rtol=1e-5)
    weights = np.exp(prior["logits"] - prior["logits"].max())
    assert np.allclose(STATS.prior_weights, weights / weights.sum(), atol=1e-6)
    reply = json_reply(api, "sample", {"n": 6, "seed": 3})
    assert np.allclose(reply["latents"], STATS.prior_latents(3, 6), atol=1e-5)
    assert np.allclose(json_reply(api, "sample", {"n": 2, "seed": 3})["latents"], reply["latents"][:2], atol=1e-6)
    cold = np.array(json_reply(api, "sample", {"n": 6, "seed": 3, "temperature": 0.5})["latents"])
    assert np.allclose(cold, STATS.prior_latents(3, 6, 0.5), atol=1e-5)
    hot = np.array(reply["latents"])
    nearest = np.argmin(((STATS.prior_means[None] - (2 * cold - hot)[:, None]) ** 2).sum(-1), axis=1)
    assert np.allclose(2 * cold - hot, STATS.prior_means[nearest], atol=1e-4)  # 2 (m + s e / 2) - (m + s e) = m
    assert len(set(nearest)) > 1 and np.abs(STATS.prior_means[nearest]).max() > 0.5  # components, not N(0, I)'s 0


def test_interpolate_between_classes_with_constant_norm_and_as_a_gif(api):
    body = {"classes": ["Sneaker", "Bag"], "steps": 6, "method": "constant_norm"}
    reply = json_reply(api, "interpolate", body)
    z = np.array(reply["latents"])
    expected = interpolate(STATS.class_means[7], STATS.class_means[8], 6, "constant_norm")
    assert np.allclose(z, expected, atol=1e-4)
    assert np.allclose(reply["norms"], np.linalg.norm(expected, axis=1), rtol=1e-4)
    images = npy(post(api, "interpolate", body | {"format": "npy"})[2])
    assert np.isclose(reply["smoothness"], np.mean(np.diff(images, axis=0) ** 2), rtol=1e-3)
    gif = Image.open(io.BytesIO(post(api, "interpolate", body | {"format": "gif"})[2]))
    assert gif.format == "GIF" and gif.n_frames == 6 and gif.size == (112, 112)


def test_openapi_class_list_is_the_models():
    """The document lists the released model's classes; workers put their own model's in its place."""
    assert SPEC["components"]["schemas"]["Class"]["enum"] == [*STATS.class_names, *range(len(STATS.class_names))]
    assert STATS.class_names == CLASS_NAMES


GOOD = b64png(np.zeros((28, 28), np.uint8))
NAN_LATENT = b'{"latents": [[' + b"0," * (LATENT - 1) + b"NaN]]}"
BAD_INPUTS = [
    ("sample", {"class": "cat"}, "class", "invalid_value"),
    ("sample", {"class": 10}, "class", "invalid_value"),
    ("sample", {"class": True}, "class", "wrong_type"),
    ("sample", {"class": 1, "around": {"seed": 1}}, "class|around", "conflict"),
    ("sample", {"sigma": 0.3}, "sigma", "conflict"),
    ("sample", {"around": {"seed": 1}, "sigma": 0}, "sigma", "out_of_range"),
    ("sample", {"around": {}}, "around", "one_of"),
    ("sample", {"around": {"seed": 1, "class": 2}}, "around", "one_of"),
    ("sample", {"around": {"colour": 1}}, "around.colour", "unknown_field"),
    ("sample", {"around": {"latent": [0.0] * (LATENT - 1)}}, "around.latent", "wrong_length"),
    ("sample", {"around": {"image": "not base64!"}}, "around.image", "bad_image"),
    ("interpolate", {"classes": ["Bag", "hat"]}, "classes[1]", "invalid_value"),
    ("interpolate", {"classes": ["Bag"]}, "classes", "wrong_length"),
    ("interpolate", {"seeds": [1, 2], "method": "spline"}, "method", "invalid_value"),
    ("interpolate", {"seeds": [1, 2], "format": "bmp"}, "format", "invalid_value"),
    ("encode", {}, "images", "missing_field"),
    ("encode", {"images": []}, "images", "wrong_length"),
    ("encode", {"images": [GOOD] * 257}, "images", "wrong_length"),
    ("encode", {"images": [GOOD, b64png(np.zeros((32, 32), np.uint8))]}, "images[1]", "bad_image"),
    ("encode", {"images": [GOOD], "format": "png"}, "format", "invalid_value"),
    ("decode", {"latents": [[0.0] * (LATENT + 1)]}, "latents[0]", "wrong_length"),
    ("decode", NAN_LATENT, f"latents[0][{LATENT - 1}]", "not_finite"),
    ("decode", {"latents": []}, "latents", "wrong_length"),
    ("reconstruct", {"images": [GOOD], "samples": 0}, "samples", "out_of_range"),
    ("reconstruct", {"images": [GOOD], "samples": 65}, "samples", "out_of_range"),
    ("reconstruct", {"images": [b64png(np.zeros((28, 28, 3), np.uint8))]}, "images[0]", "bad_image"),
    ("traverse", {}, "start", "missing_field"),
    ("traverse", {"start": {"seed": 1}, "directions": [{"dimension": LATENT}]}, "directions[0].dimension",
     "out_of_range"),
    ("traverse", {"start": {"seed": 1}, "directions": [{"principal": -1}]}, "directions[0].principal",
     "out_of_range"),
    ("traverse", {"start": {"seed": 1}, "directions": [{"class": "hat"}]}, "directions[0].class", "invalid_value"),
    ("traverse", {"start": {"seed": 1}, "directions": [{"dimension": 1, "principal": 1}]}, "directions[0]",
     "one_of"),
    ("traverse", {"start": {"seed": 1}, "directions": []}, "directions", "wrong_length"),
    ("traverse", {"start": {"seed": 1}, "range": [-11, 3]}, "range[0]", "out_of_range"),
    ("traverse", {"start": {"seed": 1}, "range": [1]}, "range", "wrong_length"),
    ("traverse", {"start": {"seed": 1}, "steps": 1}, "steps", "out_of_range"),
    ("traverse", {"start": {"seed": 1}, "steps": 33}, "steps", "out_of_range"),
    ("edit", {"start": {"seed": 1}, "to": 2, "strength": 1}, "from", "missing_field"),
    ("edit", {"start": {"seed": 1}, "to": 2, "target_probability": 1}, "target_probability", "out_of_range"),
    ("edit", {"start": {"seed": 1}, "to": 2, "target_probability": 0}, "target_probability", "out_of_range"),
    ("edit", {"start": {"seed": 1}, "from": 0, "to": 2, "strength": 1, "target_probability": 0.9},
     "target_probability", "conflict"),
    ("edit", {"start": {"seed": 1}, "to": 2, "strength": "max"}, "strength", "invalid_value"),
    ("edit", {"start": {"seed": 1}, "from": "Bag", "to": "hat"}, "to", "invalid_value"),
    ("edit", {"start": {"seed": 1}, "from": 0, "to": 1, "strength": 5}, "strength", "out_of_range"),
    ("edit", {"start": {"seed": 1}, "from": 0, "to": 1, "strength": [0, "x"]}, "strength[1]", "wrong_type"),
    ("edit", {"start": {"seed": 1}, "from": 0, "to": 1, "strength": []}, "strength", "wrong_length"),
    ("analogy", {"a": {"seed": 1}, "b": {"seed": 2}}, "c", "missing_field"),
    ("analogy", {"a": {"seed": 1}, "b": {"seed": 2}, "c": {"latent": [1.0] * (LATENT + 2)}}, "c.latent",
     "wrong_length"),
    ("walk", {"start": {"seed": 1}, "steps": 65}, "steps", "out_of_range"),
    ("walk", {"start": {"seed": 1}, "step_size": 0}, "step_size", "out_of_range"),
    ("walk", {"start": {"seed": 1}, "project": "yes"}, "project", "wrong_type"),
    ("walk", {"start": {"image": GOOD, "seed": 3}}, "start", "one_of"),
]


@pytest.mark.parametrize(("operation", "body", "field", "reason"), BAD_INPUTS,
                         ids=[f"{o}-{r}-{f}" for o, _, f, r in BAD_INPUTS])
def test_bad_input_gets_a_400_naming_the_field(api, operation, body, field, reason):
    code, headers, payload = post(api, operation, body)
    error = json.loads(payload)
    assert (code, headers["content-type"]) == (400, "application/json"), payload[:300]
    assert (error["field"], error["reason"]) == (field, reason), error


def test_a_wrong_class_lists_the_valid_ones(api):
    error = json.loads(post(api, "edit", {"start": {"seed": 1}, "from": "Sneakers", "to": 1})[2])
    assert error["field"] == "from" and all(f"{name}, " in error["message"] for name in CLASS_NAMES)


def test_workers_survive_bad_input(server):
    """Every route's bad inputs of both lists (the latent API's and the API's basics): no worker dies, every route
    answers its example afterwards."""
    def pids() -> dict:
        return {op: sorted(w["pid"] for w in fetch(f"{server.management_url}/models/{op}")[0]["workers"])
                for op in OPERATIONS}

    before = pids()
    for operation, body, *_ in [*BAD_INPUTS, *SERVING_BAD_INPUTS]:
        post(server, operation, body)
    assert pids() == before
    assert all(post(server, op, request_schema(op)["example"] | {"format": "npy"})[0] == 200
               for op in OPERATIONS if op != "encode")


def test_fast_check_agrees_with_the_reference_validator_on_every_operation():
    """fastjsonschema passes requests without building errors; jsonschema (the reference) explains rejections: the
    two agree on every bad and valid input of both lists and every operation's example."""
    schema = RequestSchema(LATENT, CLASS_NAMES)
    cases = [(op, body) for op, body, *_ in [*BAD_INPUTS, *SERVING_BAD_INPUTS] if isinstance(body, dict)]
    cases += [(op, request_schema(op)["example"]) for op in OPERATIONS] + SERVING_VALID_INPUTS
    for operation, body in cases:
        assert fast_check_passes(schema, operation, body) == schema.validators[operation].is_valid(body), (
            operation, body)
    assert all(schema.parse(json.dumps(body), operation) for operation, body in SERVING_VALID_INPUTS)
