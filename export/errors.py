"""The export stage's errors, in the project's one error shape (``runtime/errors.py``)."""

from __future__ import annotations

from runtime.errors import FmvaeError


class ExportError(FmvaeError):
    """The export cannot proceed or did not pass its gate; the message says why."""

    reason = "export_failed"
