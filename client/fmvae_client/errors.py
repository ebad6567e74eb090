"""What a call raises: ``APIError`` for an answer that is not a 200 after the retry rule, ``TransportError`` when
no answer came (each retried connection refused or reset), both with the call's request ID."""

from __future__ import annotations

import json


class ClientError(Exception):
    """Every error of this package; ``request_id`` names the call in the service's logs."""

    def __init__(self, message: str, request_id: str) -> None:
        super().__init__(f"{message} (request {request_id})")
        self.request_id = request_id


class APIError(ClientError):
    """An error answer, in the service's one error shape: ``status``, ``code``, ``reason``, ``message`` and
    ``field`` (the request field it names, or None). TorchServe's own answers (503 and 507 when a queue is full,
    "Worker died.", a refused key) are mapped onto the same shape."""

    def __init__(self, status: int, body: bytes, request_id: str) -> None:
        try:
            error = json.loads(body) if body else {}
        except ValueError:
            error = {}
        if not isinstance(error, dict):
            error = {}
        self.status = status
        self.code = error.get("code", status)
        self.reason = str(error.get("reason") or error.get("type") or "http_error")
        self.message = str(error.get("message") or body[:200].decode(errors="replace") or f"HTTP {status}")
        self.field = error.get("field")
        named = f" (field {self.field})" if self.field else ""
        super().__init__(f"HTTP {status} {self.reason}{named}: {self.message}", request_id)


class TransportError(ClientError):
    """No answer: the connection was refused or reset on every try."""
