"""The worker's errors, in the project's one error shape (``runtime/errors.py``): what a rejected request answers
(``RequestError``) and why a worker cannot start (``ConfigError``)."""

from __future__ import annotations

from runtime.errors import FmvaeError


class RequestError(FmvaeError):
    """A request answered with an error: the HTTP ``status`` (400 unless said), the offending ``field`` (``body``
    for the body as a whole), a machine-readable ``reason`` (the OpenAPI document's Error reasons) and a message."""

    def __init__(self, field: str, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message, field=field, reason=reason, status=status)


class ConfigError(FmvaeError):
    """The model config cannot serve this worker (it names no backend it can run); raised at worker start."""

    reason = "bad_config"


def internal(message: str) -> RequestError:
    """A fault while answering one request: 500, reason internal."""
    return RequestError("body", "internal", message, 500)


SHUTTING_DOWN = RequestError("body", "shutting_down", "the server is shutting down: retry, on another instance if "
                                                     "there is one", 503)
