"""Checkpoint files: atomic writes, and loads that fail with a message naming the file."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from training.errors import CheckpointError
from training.model import VAE, VAEConfig

FORMAT = "fmvae-checkpoint-v1"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; readers (a serving user) need the usual mode
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(path: Path, state: dict, fmt: str = FORMAT) -> None:
    """Write a checkpoint dict atomically, tagged with its format name."""
    atomic_write(path, lambda tmp: torch.save({"format": fmt, **state}, tmp))


def load(path: str | os.PathLike, fmt: str = FORMAT, required: tuple[str, ...] = ("model_config", "model")
         ) -> dict:
    """Read and validate a checkpoint dict of format ``fmt`` (weights only: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the unpickler raises anything (KeyError, ...) on foreign bytes
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise CheckpointError(f"{path}: not an fmvae checkpoint of format {fmt!r}")
    for key in required:
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    return state


def load_model(path: str | os.PathLike) -> tuple[VAE, dict]:
    """Rebuild the VAE from a checkpoint, in eval mode on CPU; returns (model, checkpoint dict)."""
    state = load(path)
    model = VAE(VAEConfig.from_dict(state["model_config"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: weights do not match this code's VAE architecture ({detail})") from None
    return model.eval(), state


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
