"""Does ``traverse`` along a class direction lead to the class? ``python -m bench.class_directions [--judged 300]``.

In this process, on the released 64-d export (``model_store/export``), from 4,000 starts (the statistics' 2,000
test posterior means and 2,000 prior draws, seed 0), per class, over the ranges [-2, 2] and [-3, 3] in 9 steps,
the former class direction (the unit vector from the mean of all class means toward the class's mean, t in latent
units) against the current one (``handlers.traverse.class_step``):

- the class model (the service's ``class_probabilities``): share of starts where the class's probability never
  falls along t, where it is higher at the range's end than at its start, and where it is at least 1/2 at the end;
- the project's classifier on the images that the fp32 ONNX decoder makes of the first ``--judged`` starts of each
  kind: share where it gives the class a higher probability at the range's end than at its start, and share it
  labels as the class at the end.

Prints a markdown table of the mean over the ten classes and the worst class, then one per class.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from handlers.traverse import class_step
from runtime import artifacts, backends
from training import classifier

EXPORT = Path("model_store/export")
STEPS = 9


def former_step(stats: artifacts.LatentStats, index: int) -> np.ndarray:
    """The class direction before: a unit vector from the mean of all class means toward the class's mean."""
    toward = stats.class_means[index].astype(np.float64) - stats.class_means.mean(0)
    return toward / np.linalg.norm(toward)


def model_shares(stats: artifacts.LatentStats, starts: np.ndarray, step: np.ndarray, index: int,
                 t: np.ndarray) -> tuple[float, float, float]:
    """Shares of starts whose class probability never falls, ends above its start, ends at least 1/2."""
    z = starts[:, None] + t[None, :, None] * step
    p = stats.class_probabilities(z.reshape(-1, z.shape[-1]))[:, index].reshape(len(starts), len(t))
    return (float((np.diff(p, axis=1) >= -1e-12).all(1).mean()), float((p[:, -1] > p[:, 0]).mean()),
            float((p[:, -1] >= 0.5).mean()))


def judge_shares(judge: Callable[[np.ndarray], np.ndarray], starts: np.ndarray, step: np.ndarray, index: int,
                 t: np.ndarray) -> tuple[float, float]:
    """Shares of starts whose decoded end the classifier finds more class-like than the start, labels as the class."""
    first, last = judge(starts + t[0] * step), judge(starts + t[-1] * step)
    return float((last[:, index] > first[:, index]).mean()), float((last.argmax(1) == index).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.class_directions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judged", type=int, default=300, help="starts of each kind the classifier judges")
    args = parser.parse_args(argv)
    began = time.monotonic()
    stats = artifacts.read_stats(EXPORT / artifacts.STATS)
    decoder = backends.load(artifacts.DECODERS["onnx-fp32"], EXPORT)
    clf, _ = classifier.load(classifier.DEFAULT_PATH)

    def judge(z: np.ndarray) -> np.ndarray:
        images = 1 / (1 + np.exp(-decoder(z.astype(np.float32)).astype(np.float64)))
        with torch.no_grad():
            return torch.softmax(clf(torch.from_numpy(images.astype(np.float32))), 1).numpy()

    test, prior = stats.scatter_means.astype(np.float64), stats.prior_latents(0, len(stats.scatter_means))
    starts, judged = np.concatenate([test, prior]), np.concatenate([test[:args.judged], prior[:args.judged]])
    print(f"{len(starts)} starts, {len(judged)} judged; mean over the classes (worst class)\n")
    print("| range | class direction | class model: never falls | ends higher | ends >= 1/2 | "
          "classifier: ends more class-like | labels the end as the class |")
    print("| --- " * 7 + "|")
    found = {}
    for end in (2, 3):
        t = np.linspace(-end, end, STEPS)
        for name, step_of in (("former: unit vector, latent units", former_step), ("class_step", class_step)):
            rows = []
            for index in range(len(stats.class_names)):
                step = step_of(stats, index)
                rows.append(model_shares(stats, starts, step, index, t) + judge_shares(judge, judged, step, index, t))
            shares = found[end, name] = np.array(rows)
            cells = [f"{mean:.1%}" + (f" ({worst:.1%} {stats.class_names[k]})" if worst < mean else "")
                     for mean, worst, k in zip(shares.mean(0), shares.min(0), shares.argmin(0), strict=True)]
            print(f"| [-{end}, {end}] | {name} | " + " | ".join(cells) + " |")
    print("\nPer class, former / class_step\n\n| class | [-2, 2] class model: never falls | [-2, 2] classifier: ends "
          "more class-like | [-3, 3] classifier: ends more class-like |\n| --- | --- | --- | --- |")
    for index, name in enumerate(stats.class_names):
        cells = [f"{found[end, 'former: unit vector, latent units'][index, k]:.1%} / "
                 f"{found[end, 'class_step'][index, k]:.1%}" for end, k in ((2, 0), (2, 3), (3, 3))]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
