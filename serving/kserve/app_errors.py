"""KServe's FastAPI app made to answer as the API does: its v1 ``:predict`` refusals and the framework's own 4xx in
the one error shape, or on the Open Inference Protocol's ``/v2/`` paths in that protocol's (``serving/oip/rest.py``),
as KServe's own v2 errors are."""

from __future__ import annotations

from typing import Any

from handlers.errors import RequestError
from handlers.schema import PATH_PREFIX
from serving.kserve.request_path import METHOD_NOT_ALLOWED, V2, error_reply
from serving.oip import rest as v2


def shape_errors(app: Any) -> None:
    """Have KServe's FastAPI ``app`` answer its v1 ``:predict`` refusals (``RequestError``) and the framework's own
    4xx (no such path, not with this method) in the one error shape, on the v2 paths in the protocol's."""
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    def response(e: RequestError, headers: dict[str, str] | None, path: str = "") -> Response:
        reply = (v2.refusal if path.startswith(V2) else error_reply)(e, headers=headers)
        return Response(reply.body, reply.status, reply.headers, reply.content_type)

    async def refused(_: object, e: RequestError) -> Response:
        return response(e, {"Retry-After": "1"} if e.status == 503 else None)

    async def not_served(request: Any, e: HTTPException) -> Response:
        path = request.url.path
        error = {404: RequestError("path", "not_found", f"nothing is served at {path}: the API is POST "
                                                        f"{PATH_PREFIX}<route>", 404),
                 405: RequestError("method", METHOD_NOT_ALLOWED, f"{request.method} is not allowed on {path}", 405)
                 }.get(e.status_code, RequestError("body", "invalid_value", str(e.detail), e.status_code))
        return response(error, e.headers, path)

    app.add_exception_handler(RequestError, refused)
    app.add_exception_handler(HTTPException, not_served)
