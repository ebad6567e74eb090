"""The training stage's errors, in the project's one error shape (``runtime/errors.py``): each names the file or
flag at fault."""

from __future__ import annotations

from runtime.errors import FmvaeError


class TrainingError(FmvaeError):
    """Base of the training stage's errors; on its own, flags that cannot go together (the message names them)."""

    reason = "bad_arguments"


class DataError(TrainingError):
    """A data file is missing, truncated or not what it should be; the message names the file."""

    reason = "bad_data"


class CheckpointError(TrainingError):
    """A checkpoint is missing, unreadable, or not a checkpoint of this project."""

    reason = "bad_checkpoint"
