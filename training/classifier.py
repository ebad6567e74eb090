"""A small Fashion-MNIST CNN whose penultimate features stand in for Inception in the Frechet distance.

``python -m training.classifier [--out model_store/classifier.pt]`` trains it (about 91% test accuracy).
Evaluation uses it for the Frechet distance; export uses its labels to compare decoders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from training import checkpoint, data
from training.errors import TrainingError

FORMAT = "fmvae-classifier-v1"
DEFAULT_PATH = Path("model_store/classifier.pt")


class Classifier(nn.Module):
    """Two conv+pool blocks, a 128-d feature layer, and 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def embed(self, x: Tensor, batch: int = 1000) -> Tensor:
        """128-d features of images (N, 1, 28, 28) in [0, 1]."""
        return torch.cat([self.features(x[i:i + batch]) for i in range(0, len(x), batch)])

    @torch.no_grad()
    def predict(self, x: Tensor, batch: int = 1000) -> Tensor:
        """Class labels (N,) of images (N, 1, 28, 28) in [0, 1]."""
        return torch.cat([self(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def train(fmnist: data.FashionMNIST, epochs: int = 5, subset: int | None = None, seed: int = 0
          ) -> tuple[Classifier, float]:
    """Adam 1e-3, batch 128; returns the model (eval mode) and its test accuracy."""
    torch.manual_seed(seed)
    x, y = fmnist.train.tensor(), torch.from_numpy(fmnist.train.labels.astype("int64"))
    if subset is not None:
        x, y = x[:subset], y[:subset]
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x))
        for i in tqdm(range(0, len(x), 128), desc=f"classifier epoch {epoch}/{epochs}", unit="batch",
                      leave=False, file=sys.stderr, disable=None):
            idx = order[i:i + 128]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    labels = torch.from_numpy(fmnist.test.labels.astype("int64"))
    accuracy = (model.predict(fmnist.test.tensor()) == labels).float().mean().item()
    return model, accuracy


def load(path: str | Path = DEFAULT_PATH) -> tuple[Classifier, dict]:
    """The saved classifier (eval mode) and its checkpoint dict (holds ``test_accuracy``)."""
    state = checkpoint.load(path, fmt=FORMAT, required=("model", "test_accuracy"))
    model = Classifier()
    model.load_state_dict(state["model"])
    return model.eval(), state


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.classifier", description=__doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_PATH, help=f"default {DEFAULT_PATH}")
    p.add_argument("--data-dir", default=None, help="folder with the four IDX .gz files")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--subset", type=int, default=None, help="train on the first N images only")
    args = p.parse_args(argv)
    fmnist = data.load(args.data_dir)
    model, accuracy = train(fmnist, args.epochs, args.subset)
    checkpoint.save(args.out, {"model": model.state_dict(), "test_accuracy": accuracy,
                               "data_sha256": fmnist.sha256}, fmt=FORMAT)
    print(f"test accuracy {accuracy:.4f}; wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except TrainingError as e:
        raise SystemExit(f"error: {e}") from None
