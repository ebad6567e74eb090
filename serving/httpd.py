"""The host side's own HTTP servers (the handlers' metrics exporter, the explorer) and their deadlines: a request's
line, headers and body must arrive within ``request_timeout`` seconds however slowly they trickle in (a slowloris
client is cut off), and a kept-alive connection waits at most ``idle_timeout`` for its next request.
TorchServe's own ports have no such setting in 0.12 (docs/operations.md, timeouts)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

IDLE_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0


class DeadlineServer(ThreadingHTTPServer):
    """A threading HTTP server whose connections keep the deadlines above."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 idle_timeout: float = IDLE_TIMEOUT_S, request_timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.idle_timeout, self.request_timeout = idle_timeout, request_timeout
        super().__init__(address, handler)


class DeadlineHandler(BaseHTTPRequestHandler):
    """A request handler of a ``DeadlineServer``: the connection is shut once the request deadline passes, unless
    the handler has called ``request_received`` (GET handlers need not: their request ends with the headers)."""

    server: DeadlineServer

    def handle_one_request(self) -> None:
        self.connection.settimeout(self.server.idle_timeout)
        try:
            if not self.rfile.peek(1):  # the client closed the connection
                self.close_connection = True
                return
        except OSError:  # idle for too long (TimeoutError), or reset
            self.close_connection = True
            return
        self.deadline = threading.Timer(self.server.request_timeout, self._expire)
        self.deadline.daemon = True
        self.deadline.start()
        try:
            super().handle_one_request()
        finally:
            self.deadline.cancel()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if self.command == "GET":
            self.request_received()
        return ok

    def request_received(self) -> None:
        """The whole request has arrived: the deadline no longer applies to this one."""
        self.deadline.cancel()

    def _expire(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class MetricsHandler(DeadlineHandler):
    """``GET /metrics``: the server's registry in Prometheus' text format (the handlers' metrics)."""

    server: MetricsServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet: Prometheus scrapes every few seconds."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class MetricsServer(DeadlineServer):
    """The handlers' metrics exporter, serving in a thread of its own from the start; ``shutdown`` and
    ``server_close`` stop it."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, idle_timeout: float = IDLE_TIMEOUT_S,
                 request_timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.registry = registry
        super().__init__((host, port), MetricsHandler, idle_timeout, request_timeout)
        threading.Thread(target=self.serve_forever, name="metrics-exporter", daemon=True).start()
