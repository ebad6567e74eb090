"""The host side's errors, in the project's one error shape (``runtime/errors.py``)."""

from __future__ import annotations

from runtime.errors import FmvaeError


class ServerError(FmvaeError):
    """TorchServe cannot start or did not become ready; the message says why (and names the file or port)."""

    reason = "server_failed"


class ArchiveError(FmvaeError):
    """An archive could not be built; the message says why (torch-model-archiver's output, a missing file)."""

    reason = "archive_failed"


class RolloutError(ServerError):
    """A roll-out that cannot be done, or failed and changed nothing: one line for the operator."""

    reason = "rollout_failed"
