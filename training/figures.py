"""PNG figures: image grids (Pillow) and training curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from runtime.images import tile, to_uint8  # noqa: E402
from training.checkpoint import atomic_write  # noqa: E402


def grid(images: torch.Tensor, rows: int, pad: int = 2, scale: int = 2) -> np.ndarray:
    """Tile images (N, 1, H, W) in [0, 1] into a uint8 array, ``rows`` rows, row-major, upscaled by ``scale``."""
    pixels = to_uint8(images.detach().cpu().numpy()[:, 0])
    canvas = tile(pixels, cols=-(-len(pixels) // rows), pad=pad)
    return np.kron(canvas, np.ones((scale, scale), dtype=np.uint8))


def interleave_rows(a: torch.Tensor, b: torch.Tensor, width: int = 8) -> torch.Tensor:
    """Rows of ``width`` images taken alternately from a and b (originals over reconstructions)."""
    return torch.cat([torch.stack([a[i:i + width], b[i:i + width]]) for i in range(0, len(a), width)]).flatten(0, 1)


def save_grid(images: torch.Tensor, rows: int, path: Path) -> None:
    """Write ``grid(images, rows)`` as a grayscale PNG, atomically."""
    atomic_write(path, lambda tmp: Image.fromarray(grid(images, rows), mode="L").save(tmp, format="PNG"))


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_curves(history: list[dict], path: Path) -> None:
    """Train and test total / reconstruction / KL per epoch, one panel each (KL on a log scale: under KL warm-up or
    a large beta it spans orders of magnitude)."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, term in zip(axes, ("total", "recon", "kl"), strict=True):
        ax.plot(epochs, [h[f"train_{term}"] for h in history], label="train")
        ax.plot(epochs, [h[f"test_{term}"] for h in history], label="test")
        ax.set_title({"total": "negative ELBO", "recon": "reconstruction (BCE)", "kl": "KL"}[term])
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats / image")
        if term == "kl" and min(min(h["train_kl"], h["test_kl"]) for h in history) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    save_figure(fig, path)
