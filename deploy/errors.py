"""The deploy stage's errors, in the project's one error shape (``runtime/errors.py``)."""

from __future__ import annotations

from runtime.errors import FmvaeError


class ImageError(FmvaeError):
    """An image step failed; the message says which and why."""

    reason = "image_failed"


class BundleError(FmvaeError):
    """The GPU bundle could not be built or did not run; the message says which step and why."""

    reason = "bundle_failed"


class LockError(FmvaeError):
    """A lock file could not be compiled; the message has pip-compile's reason."""

    reason = "lock_failed"
