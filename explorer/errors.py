"""The explorer's errors, in the project's one error shape (``runtime/errors.py``)."""

from __future__ import annotations

from runtime.errors import FmvaeError


class NoSpace(FmvaeError):
    """None of the served models cover a whole latent space: there is nothing for the page to explore."""

    reason = "no_space"
