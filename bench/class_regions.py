"""Which model of a class's region of latent space to ship: ``python -m bench.class_regions [--model 64|2]``.

In this process, on a released checkpoint with the project's classifier as the judge (no server), it compares
class-conditional samplers and edit rules that ``export/stats.py`` could ship:

- samplers, ``--per-class`` samples per class: one Gaussian per class (mean and covariance of its training
  posterior means); the aggregate posterior (a random training image of the class, then a draw from its
  posterior); the same from the shipped anchors (``ANCHORS`` images whose reconstruction the classifier recognises).
  Per class: share labelled as the class, and diversity (mean pairwise distance of 200 samples over that of 200
  real test images of the class);
- edits of ``--edits`` test images per class toward every other class: the class-mean difference at strength 1;
  the same direction with the strength calibrated by the class model (the smallest of 0..4 where it gives the
  target 0.99); toward the nearest anchor of the target, stopped by the class model at 0.99 (shipped as
  ``"strength": "auto"``). Mean and worst pair of the share labelled as the target, and the mean distance of the
  edits to their inputs against the inputs' distance to the target class's mean test image.

Writes ``OUT/class_regions.{json,md}`` (default docs/latent/).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.latent_report import spread
from export import stats
from runtime.artifacts import LatentStats, stats_from_arrays
from training import checkpoint, classifier, data

CHECKPOINTS = {"64": Path("model_store/release/vae.pt"), "2": Path("model_store/release-2d/vae.pt")}
PROBABILITY = 0.99


def decoded(model: torch.nn.Module, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model.decode(torch.from_numpy(z).float()))[:, 0].numpy()


def samplers(model, clf, fmnist, mu, sd, latent: LatentStats, per_class: int, rng) -> dict:  # noqa: ANN001
    """Per sampler and class: share labelled as the class, diversity over real images."""
    found: dict[str, dict] = {"gaussian": {}, "aggregate posterior": {}, "recognised anchors (shipped)": {}}
    for label, name in enumerate(data.CLASS_NAMES):
        members = np.flatnonzero(fmnist.train.labels == label)
        real = fmnist.test.images[fmnist.test.labels == label].astype(np.float64) / 255
        chol = np.linalg.cholesky(np.cov(mu[members], rowvar=False) + 1e-9 * np.eye(mu.shape[1]))
        pick_all = rng.choice(members, per_class)
        pick = rng.integers(latent.anchor_means.shape[1], size=per_class)
        eps = rng.standard_normal((3, per_class, mu.shape[1]))
        draws = {"gaussian": mu[members].mean(0) + eps[0] @ chol.T,
                 "aggregate posterior": mu[pick_all] + sd[pick_all] * eps[1],
                 "recognised anchors (shipped)": latent.anchor_means[label][pick]
                 + latent.anchor_stds[label][pick] * eps[2]}
        for sampler, z in draws.items():
            images = decoded(model, z)
            labelled = clf.predict(torch.from_numpy(images[:, None])).numpy()
            found[sampler][name] = {"labelled_as_class": float((labelled == label).mean()),
                                    "diversity_over_real": spread(images) / spread(real)}
    return found


def edits(model, clf, fmnist, mu, latent: LatentStats, per_class: int) -> dict:  # noqa: ANN001
    """Per edit rule: mean and worst pair of the share labelled as the target, distances."""
    pixels = fmnist.test.images.astype(np.float64) / 255
    mean_images = np.stack([pixels[fmnist.test.labels == c].mean(0) for c in range(10)])
    with torch.no_grad():
        starts = model.encode(fmnist.test.tensor())[0].double().numpy()
    means = np.stack([mu[fmnist.train.labels == c].mean(0) for c in range(10)])
    strengths, fractions = np.linspace(0, 4, 401), np.linspace(0, 1, 101)

    def first_reaching(paths: np.ndarray, target: int) -> np.ndarray:
        """Per start, the index of the first point on its path (N, S, D) where the class model reaches it."""
        p = latent.class_probabilities(paths.reshape(-1, paths.shape[-1])).reshape(paths.shape[:2] + (10,))
        ok = p[..., target] >= PROBABILITY
        return np.where(ok.any(1), ok.argmax(1), paths.shape[1] - 1)

    def rule(name: str, z0: np.ndarray, source: int, target: int) -> np.ndarray:
        direction = means[target] - means[source]
        if name == "class means, strength 1":
            return z0 + direction
        if name == "class means, calibrated":
            paths = z0[:, None] + strengths[None, :, None] * direction
            return paths[np.arange(len(z0)), first_reaching(paths, target)]
        anchors = np.stack([latent.nearest_anchor(target, z[None])[0] for z in z0])
        paths = z0[:, None] + fractions[None, :, None] * (anchors - z0)[:, None]
        return paths[np.arange(len(z0)), first_reaching(paths, target)]

    found = {}
    for name in ("class means, strength 1", "class means, calibrated", "nearest anchor, auto (shipped)"):
        landed, kept, target_distance = [], [], []
        for source in range(10):
            index = np.flatnonzero(fmnist.test.labels == source)[:per_class]
            for target in range(10):
                if target == source:
                    continue
                images = decoded(model, rule(name, starts[index], source, target))
                landed.append(float((clf.predict(torch.from_numpy(images[:, None])).numpy() == target).mean()))
                kept.append(np.sqrt(((images - pixels[index]) ** 2).sum((1, 2))).mean())
                target_distance.append(np.sqrt(((pixels[index] - mean_images[target]) ** 2).sum((1, 2))).mean())
        found[name] = {"mean": float(np.mean(landed)), "worst_pair": float(min(landed)),
                       "distance_to_input": float(np.mean(kept)),
                       "input_to_target_mean_image": float(np.mean(target_distance))}
    return found


def markdown(report: dict) -> str:
    lines = [f"{report['model']}-d model, {report['per_class']} samples per class: share labelled as the class "
             "(diversity over real images).", "", "| class | " + " | ".join(report["samplers"]) + " |",
             "| --- " * (1 + len(report["samplers"])) + "|"]
    for name in data.CLASS_NAMES:
        cells = [f"{r[name]['labelled_as_class']:.1%} ({r[name]['diversity_over_real']:.0%})"
                 for r in report["samplers"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Edits of {report['edits_per_class']} test images per class toward each other class (90 pairs):",
              "", "| rule | landed (mean) | worst pair | distance to the input | input to the target's mean image |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {r['mean']:.1%} | {r['worst_pair']:.0%} | {r['distance_to_input']:.2f} | "
              f"{r['input_to_target_mean_image']:.2f} |" for name, r in report["edits"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.class_regions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(CHECKPOINTS), default="64")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/latent"))
    args = parser.parse_args(argv)
    start, rng = time.monotonic(), np.random.default_rng(0)
    model, _ = checkpoint.load_model(CHECKPOINTS[args.model])
    model.eval()
    clf, _ = classifier.load(classifier.DEFAULT_PATH)
    fmnist = data.load(args.data_dir)
    arrays = stats.latent_statistics(model, clf, fmnist.train, fmnist.test)
    latent = stats_from_arrays(arrays)
    mu, sd = stats.posteriors(model, fmnist.train)
    report = {"model": args.model, "per_class": args.per_class, "edits_per_class": args.edits,
              "samplers": samplers(model, clf, fmnist, mu, sd, latent, args.per_class, rng),
              "edits": edits(model, clf, fmnist, mu, latent, args.edits)}
    report["seconds"] = time.monotonic() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"class_regions_{args.model}d.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / f"class_regions_{args.model}d.md").write_text(text + "\n")
    print(text)
    print(f"{report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
