"""The project's one error shape.

Every error the project raises on purpose derives from ``FmvaeError``, and every JSON error any part of the
service writes (the inference API's handlers, the explorer's proxy) is an ``error_body``: ``code`` (the HTTP
status), ``reason`` (machine-readable), ``message`` (for people) and ``field`` where one field is at fault (a
request field, a header, a flag, a file). Each package keeps its own errors in its ``errors`` module
(``handlers.errors``, ``serving.errors``, ...).
"""

from __future__ import annotations

import re

OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f...>"


def error_body(code: int, reason: str, message: str, field: str | None = None) -> dict:
    """The JSON body of an error answer: ``{code, reason, message}``, plus ``field`` when one is given. A message
    carries no object reprs (a library's exception text may quote one): they tell a client nothing."""
    body = {"code": code, "reason": reason, "message": OBJECT_REPR.sub("", message)}
    return body if field is None else body | {"field": field}


class FmvaeError(Exception):
    """Base of the project's errors: a message, a reason, the HTTP status it answers with and the field at fault."""

    status = 500
    reason = "internal"

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field
        if reason is not None:
            self.reason = reason
        if status is not None:
            self.status = status

    def body(self) -> dict:
        """This error as the JSON body of an answer."""
        return error_body(self.status, self.reason, self.message, self.field)


class ManifestError(FmvaeError):
    """An export manifest or the latent statistics are missing, damaged or of another version; names the file."""

    reason = "bad_manifest"
