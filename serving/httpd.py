"""The host side's own HTTP servers (the handlers' metrics exporter, the explorer) and their deadlines: a request's
line, headers and body must arrive within ``request_timeout`` seconds however slowly they trickle in (a slowloris
client is cut off), and a kept-alive connection waits at most ``idle_timeout`` for its next request.
TorchServe's own ports have no such setting in 0.12 (docs/operations.md, timeouts)."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

IDLE_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0


class DeadlineServer(ThreadingHTTPServer):
    """A threading HTTP server whose connections keep the deadlines above. One thread watches the requests in
    progress and shuts the connection of any whose deadline has passed (a thread per request would cost each
    request a thread start: milliseconds on a busy machine)."""

    daemon_threads = True
    WATCH_INTERVAL_S = 0.25

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 idle_timeout: float = IDLE_TIMEOUT_S, request_timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.idle_timeout, self.request_timeout = idle_timeout, request_timeout
        self.arriving: dict[int, tuple[float, DeadlineHandler]] = {}  # requests still arriving, by handler id
        self.arriving_lock, self.closed = threading.Lock(), threading.Event()
        super().__init__(address, handler)
        threading.Thread(target=self._watch, name="request-deadlines", daemon=True).start()

    def arriving_until(self, handler: DeadlineHandler, deadline: float | None) -> None:
        """Watch ``handler``'s request until ``deadline`` (time.monotonic()), or stop watching it (None)."""
        with self.arriving_lock:
            if deadline is None:
                self.arriving.pop(id(handler), None)
            else:
                self.arriving[id(handler)] = (deadline, handler)

    def _watch(self) -> None:
        while not self.closed.wait(self.WATCH_INTERVAL_S):
            now = time.monotonic()
            with self.arriving_lock:
                late = [handler for deadline, handler in self.arriving.values() if deadline < now]
            for handler in late:
                self.arriving_until(handler, None)
                handler.expire()

    def server_close(self) -> None:
        self.closed.set()
        super().server_close()


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
        self.server.arriving_until(self, time.monotonic() + self.server.request_timeout)
        try:
            super().handle_one_request()
        finally:
            self.server.arriving_until(self, None)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if self.command == "GET":
            self.request_received()
        return ok

    def request_received(self) -> None:
        """The whole request has arrived: the deadline no longer applies to this one."""
        self.server.arriving_until(self, None)

    def expire(self) -> None:
        """The deadline passed: shut the connection (the handler's read fails, and it closes)."""
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
