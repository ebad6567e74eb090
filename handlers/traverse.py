"""Handler of ``traverse``: from a start, straight along latent directions.

A direction is a step: the unit vector of a latent dimension or of a principal direction of the test set's
posterior means, or a class's step (``class_step``). Without directions: the most active dimensions, as in the
evaluation report's traversal figure, but from the given start. Request: ``TraverseRequest`` in openapi.yaml.
"""

from __future__ import annotations

import numpy as np

from handlers.errors import RequestError
from handlers.service import Answer, Plan, Service, Worker, images_of
from runtime.artifacts import LatentStats

DEFAULT_DIRECTIONS = 8
SWEEPS = 1000  # at most, of Hildreth's method in class_step; the released statistics need under 10


def class_step(stats: LatentStats, index: int) -> np.ndarray:
    """The step (D,) of class ``index``'s direction: the class's mean minus the mean of all class means, or, where
    that step lowers the class model's log-odds of the class against another class, the nearest step that lowers
    none (its projection on that cone, by Hildreth's method). Along it the class model's probability of the class
    rises from every start; zero where no step raises the class against every other class."""
    weights = stats.class_weights.astype(np.float64)
    rows = np.delete(weights[index] - weights, index, axis=0)  # log-odds gained against each class per unit step
    step = stats.class_means[index].astype(np.float64) - stats.class_means.astype(np.float64).mean(0)
    scale, dual = np.linalg.norm(step), np.zeros(len(rows))
    for _ in range(SWEEPS):
        largest = 0.0
        for k, row in enumerate(rows):
            change = max(-dual[k], -(row @ step) / (row @ row))
            dual[k] += change
            step = step + change * row
            largest = max(largest, abs(change) * np.linalg.norm(row))
        if largest <= 1e-12 * scale:
            break
    return step if np.linalg.norm(step) > 1e-6 * scale else np.zeros_like(step)


def step_of(direction: dict, worker: Worker) -> np.ndarray:
    """The step (latent_dim,) of a validated Direction: t = 1 along it."""
    stats = worker.stats
    if "dimension" in direction:
        return np.eye(worker.shapes.latent_dim)[direction["dimension"]]
    if "principal" in direction:
        return stats.principal_directions[direction["principal"]].astype(np.float64)
    step = class_step(stats, worker.class_index(direction["class"]))
    if not step.any():
        raise RequestError("directions", "invalid_value", f"class {direction['class']!r} gives no direction: no "
                                                          "step raises it against every other class")
    return step


def plan(request: dict, worker: Worker) -> Plan:
    """start + t * u for each direction's step u (a row each) and each t evenly over the range."""
    start = worker.point(request["start"], "start")
    directions = request.get("directions") or [
        {"dimension": int(d)} for d in worker.stats.active_order[:DEFAULT_DIRECTIONS]]
    units = np.stack([step_of(d, worker) for d in directions])
    t = np.linspace(*request["range"], request["steps"])
    z = (start + t[None, :, None] * units[:, None, :]).reshape(-1, len(start))

    def finish(logits: np.ndarray) -> Answer:
        images = images_of(logits)
        return Answer(images, len(t), array=images.reshape(len(directions), len(t), *images.shape[1:]),
                      fields={"latents": z, "directions": directions})

    return Plan(z, finish)


handle = Service(plan)
