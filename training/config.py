"""Every training default in one place: the recipe (Adam 1e-3, beta 1, latent 64, 60 epochs, batch 128)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from training.model import VAEConfig


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run; saved in each checkpoint and restored by ``--resume``."""

    model: VAEConfig = field(default_factory=VAEConfig)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay_start: int | None = None  # after this epoch, cosine decay of lr to ~0 at the last epoch; None = constant
    beta: float = 1.0
    kl_warmup_epochs: int = 0  # beta rises linearly from 0 over this many epochs; 0 = off
    freeze_decoder_epochs: int = 0  # the decoder's weights stay fixed up to this epoch (a new encoder learns first)
    seed: int = 0
    subset: int | None = None  # train on the first N training images (quick runs)
    checkpoint_every: int = 10  # also the interval for the reconstruction/sample/interpolation grids

    def beta_at(self, epoch: int) -> float:
        """KL weight during 1-based ``epoch``, with the optional linear warm-up."""
        if self.kl_warmup_epochs <= 0:
            return self.beta
        return self.beta * min(1.0, epoch / self.kl_warmup_epochs)

    def lr_at(self, epoch: int) -> float:
        """Learning rate during 1-based ``epoch``: constant, then (optionally) a per-epoch cosine decay."""
        if self.lr_decay_start is None or epoch <= self.lr_decay_start:
            return self.lr
        progress = (epoch - self.lr_decay_start) / (self.epochs - self.lr_decay_start + 1)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def to_dict(self) -> dict:
        """Plain-JSON form, as saved in checkpoints."""
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of ``to_dict``."""
        defaults = {"lr_decay_start": None, "freeze_decoder_epochs": 0}  # older checkpoints lack them
        return cls(**{**defaults, **d, "model": VAEConfig.from_dict(d["model"])})
