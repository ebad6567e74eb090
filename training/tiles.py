"""Image grids in numpy only (no matplotlib), shared by the training figures and the serving handlers."""

from __future__ import annotations

import numpy as np


def tile(images: np.ndarray, cols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile uint8 images (N, H, W) row-major into one (rows*(H+pad)+pad, cols*(W+pad)+pad) uint8 canvas."""
    n, h, w = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), fill, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return canvas


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Intensities in [0, 1] (any shape) -> uint8 pixels, rounded."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
