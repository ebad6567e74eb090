"""The HTTP/1.1 protocol the KServe host's processes run: uvicorn's (httptools), with the answers uvicorn writes
itself put right."""

from __future__ import annotations

import json

from handlers.errors import RequestError
from handlers.service import request_id

MALFORMED_REQUEST = "malformed_request"


def http_protocol() -> type:
    """uvicorn's HTTP/1.1 protocol (httptools) with the two answers it writes itself put right: a request it
    cannot parse (a bad request line, header, ``Content-Length`` or chunk size) gets 400 ``malformed_request`` in
    the one error shape instead of a text body, and a client that half-closes its side after a whole request
    (``shutdown(SHUT_WR)``) still gets its answer, then the connection closes."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    class ShapedHttpTools(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            error = RequestError("body", MALFORMED_REQUEST, "not a valid HTTP/1.1 request: its request line, a "
                                 "header, its Content-Length or a chunk size could not be parsed")
            body = json.dumps(error.body()).encode()
            head = [STATUS_LINE[400], *(name + b": " + value + b"\r\n" for name, value in
                                        self.server_state.default_headers),
                    b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                    b"x-request-id: " + request_id(None).encode() + b"\r\n", b"connection: close\r\n\r\n"]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

        def eof_received(self) -> bool | None:
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not cycle.more_body:
                cycle.keep_alive = False  # answer the whole request that came, then close
                return True  # the transport stays open for writing
            return None  # nothing to answer (or half a request): the transport closes

    return ShapedHttpTools
