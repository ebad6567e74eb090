"""The explorer's HTTP server: the static page, the latent spaces it draws, and a same-origin proxy to the
inference API.

- ``GET /`` and ``/static/*``: the page (``explorer/static``), no build step.
- ``GET /vendor/ort/*``: the two files of ONNX Runtime Web the page decodes with (its WebAssembly-only bundle and
  its ``.wasm``), from ``node_modules`` (``make setup`` runs ``npm ci``): the page loads nothing from another origin.
- ``GET /api/spaces``: per served latent space (one export folder whose routes serve every operation the page
  calls, ``serving/routes.py``), the routes that serve it and, from its export folder's manifest and
  ``latent_stats.npz``, the latent size, class names, the test posterior means
  to scatter with their labels, the leading principal directions, the most active dimensions, the in-page
  decoder's sha256 and the parity gate's largest pixel difference per decoder backend.
- ``GET /api/spaces/<space>/decoder.onnx``: the space's fp32 ONNX decoder, which the page checks against that
  sha256 and runs itself (``decoder_artifact`` says where it comes from).
- ``POST /api/predictions/<model>``: forwarded to TorchServe's inference API for the models of those spaces
  only. The proxy sends no CORS headers, takes ``application/json`` bodies only (another origin cannot send one
  without a preflight, which is refused) and refuses a request whose ``Origin`` is not its own.
- With token auth on, the page and the proxy obey it: ``/api/spaces``, the decoders and the proxy answer 401 until
  the client opens a session with the inference key (``POST /api/session {"key": ...}``: an HttpOnly,
  SameSite=Strict cookie, valid for 12 hours and across key renewals); the proxy then adds TorchServe's current key
  upstream.

Its own errors are the project's one error shape (``runtime/errors.py``), as the API's are; a malformed request
(a bad Content-Length, a chunked body) gets a 4xx and a fault a 500, never a connection closed unanswered. An answer
given before the request's body was read closes the connection (Connection: close), so that the unread bytes are
never taken for the next request. It keeps the request and idle deadlines of ``serving/httpd.py`` and listens on
loopback only, like the rest of ``make serve``.
"""

from __future__ import annotations

import hmac
import http.cookies
import json
import mimetypes
import secrets
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fmvae_client import Client, ClientError

from explorer.errors import NoSpace
from runtime import artifacts
from runtime.errors import error_body
from runtime.manifest import Manifest
from serving.httpd import IDLE_TIMEOUT_S, REQUEST_TIMEOUT_S, DeadlineHandler, DeadlineServer
from serving.keys import read_keys
from serving.routes import EXPLORER_OPERATIONS, ROUTES
from serving.settings import MODELS, ROOT

STATIC = Path(__file__).resolve().parent / "static"
# ONNX Runtime Web as `make setup` installs it (package.json, package-lock.json): the files the page loads, with
# their content types (a module script and WebAssembly streaming compilation need the right ones).
VENDOR = ROOT / "node_modules" / "onnxruntime-web" / "dist"
VENDOR_FILES = {"ort.wasm.bundle.min.mjs": "text/javascript", "ort-wasm-simd-threaded.wasm": "application/wasm"}
LOCAL_DECODER = "onnx-fp32"  # the decoder backend the page runs (fp32: the served int8 one is checked against it)
PRINCIPAL_DIRECTIONS = 8
SESSION_COOKIE = "fmvae_session"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Space:
    """One latent space the page can explore: its export folder and {operation: served model}."""

    export: str
    routes: dict[str, str]


def spaces(models: tuple[str, ...]) -> list[Space]:
    """The spaces among the served ``models``: each export folder whose routes cover every operation the page
    calls."""
    served = [m for m in models if m in ROUTES]
    found = []
    for export in dict.fromkeys(ROUTES[m].export for m in served):
        routes = {ROUTES[m].operation: m for m in served if ROUTES[m].export == export}
        if all(op in routes for op in EXPLORER_OPERATIONS):
            found.append(Space(export, {op: routes[op] for op in EXPLORER_OPERATIONS}))
    return found


def decoder_artifact(space: Space, export_store: Path) -> tuple[bytes, str] | None:
    """The bytes of the decoder the page runs for ``space`` and their sha256 from the export manifest, or None
    when there is none: the one place that says where they come from (the space's export folder)."""
    folder = export_store / space.export
    artifact = Manifest.read(folder).artifacts.get(f"decoder/{LOCAL_DECODER}")
    if artifact is None or not (folder / artifact.file).is_file():
        return None
    return (folder / artifact.file).read_bytes(), artifact.sha256


def space_document(space: Space, export_store: Path, decoder: tuple[bytes, str] | None) -> tuple[str, dict]:
    """The space's name and what the page needs of it, from its export folder (the manifest and the latent
    statistics); with the in-page ``decoder`` (``decoder_artifact``) its backend, sha256 and size."""
    folder = export_store / space.export
    manifest = Manifest.read(folder)
    stats = artifacts.read_stats(folder / artifacts.STATS)
    latent_dim = manifest.shapes.latent_dim

    def rounded(a: np.ndarray) -> list:
        return np.round(a.astype(np.float64), 4).tolist()

    # The largest pixel difference from the fp32 eager decoder that the parity gate measured, per decoder backend
    # (export/parity.py): what the page compares its own image and the served one against.
    parity = {backend: max(r["max_abs_test_means"], r["max_abs_prior"])
              for backend, r in manifest.parity.get("decoders", {}).items()}
    return f"{latent_dim}-d", {
        "export": space.export, "routes": space.routes, "latent_dim": latent_dim,
        "class_names": list(stats.class_names), "scatter_means": rounded(stats.scatter_means),
        "scatter_labels": stats.scatter_labels.tolist(),
        "principal_directions": rounded(stats.principal_directions[:PRINCIPAL_DIRECTIONS]),
        "active_order": stats.active_order.tolist(), "parity_max_abs": parity,
        "decoder": decoder and {"backend": LOCAL_DECODER, "sha256": decoder[1], "bytes": len(decoder[0])}}


class Explorer(DeadlineServer):
    """The explorer on ``port`` (0: any free one), in front of the inference API at ``api``. With ``key_file``
    (TorchServe's, token auth on) a client needs a session: it proves it has the inference key once
    (``POST /api/session``) and gets an HttpOnly cookie that stays valid across key renewals."""

    def __init__(self, api: str, models: tuple[str, ...], export_store: Path, port: int = 0,
                 key_file: Path | None = None, idle_timeout: float = IDLE_TIMEOUT_S,
                 request_timeout: float = REQUEST_TIMEOUT_S) -> None:
        found = spaces(models)
        if not found:
            raise NoSpace(f"none of the models {', '.join(models)} serve a whole latent space "
                          f"({', '.join(EXPLORER_OPERATIONS)})")
        decoders = [decoder_artifact(s, export_store) for s in found]
        documents = dict(space_document(s, export_store, d) for s, d in zip(found, decoders, strict=True))
        self.spaces_json = json.dumps(documents).encode()
        # {space name: the in-page decoder's bytes} (the page fetches each once and checks its sha256)
        self.decoders = {name: d[0] for name, d in zip(documents, decoders, strict=True) if d}
        self.allowed = {route for d in documents.values() for route in d["routes"].values()}
        self.max_body = max(MODELS[route].max_body_bytes for route in self.allowed)  # the handlers' own limit
        self.key_file = key_file
        self.sessions: dict[str, float] = {}  # session token -> when it expires (time.monotonic)
        # The client package's transport and retry rule upstream (kept-alive connections, busy answers retried,
        # a renewed key read again); the proxy forwards the bodies and answers as they are.
        self.upstream = Client(api, key_file=key_file)
        super().__init__(("127.0.0.1", port), ExplorerHandler, idle_timeout, request_timeout)

    def server_close(self) -> None:
        super().server_close()
        self.upstream.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def origins(self) -> tuple[str, str]:
        """The page's own origins: the only ones whose requests the proxy takes."""
        return self.url, f"http://localhost:{self.server_address[1]}"

    def inference_key(self) -> str | None:
        """TorchServe's current inference key (renewed while it serves, so read each time), or None."""
        return None if self.key_file is None else read_keys(self.key_file)["inference"]

    def open_session(self, key: str) -> str | None:
        """A new session token when ``key`` is the current inference key, else None."""
        if not hmac.compare_digest(key.encode(errors="surrogatepass"), (self.inference_key() or "").encode()):
            return None
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        self.sessions = {t: expiry for t, expiry in self.sessions.items() if expiry > now}  # expired ones go
        self.sessions[token] = now + SESSION_SECONDS
        return token

    def authorized(self, cookie_header: str | None) -> bool:
        """Whether a request may use the proxy: always with token auth off, else with a live session cookie."""
        if self.key_file is None:
            return True
        cookies = http.cookies.SimpleCookie()
        try:
            cookies.load(cookie_header or "")
        except http.cookies.CookieError:
            return False
        token = cookies[SESSION_COOKIE].value if SESSION_COOKIE in cookies else ""
        return self.sessions.get(token, 0) > time.monotonic()

    def forward(self, model: str, body: bytes) -> tuple[int, str, bytes]:
        """POST ``body`` to /predictions/<model> under the client's retry rule: (status, content type, body) of
        the last answer; raises ClientError when none came."""
        answer = self.upstream.send(model, body)
        return answer.status, answer.content_type or "application/json", answer.body


class ExplorerHandler(DeadlineHandler):
    """GET the page and the spaces, POST a session and predictions through the proxy. Every error is answered
    in the one error shape; a fault answers 500 rather than a closed connection."""

    protocol_version = "HTTP/1.1"  # keep-alive: one connection for the page's many small requests
    # Headers and body go out in two writes; with Nagle's algorithm on, the body then waits for the browser's
    # delayed ACK (~40 ms a request on a kept-alive connection).
    disable_nagle_algorithm = True
    server: Explorer
    body_read = False  # whether this request's body has been read (``answer`` resets it)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet: one line per pointer move would flood the terminal."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One line on stderr per error answered (the launcher keeps them in explorer.log), none for the rest."""
        if str(code).isdigit() and int(code) >= 400:
            print(f"{self.address_string()} {self.requestline!r} {code}", file=sys.stderr, flush=True)

    def send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        declared = "Transfer-Encoding" in self.headers or (self.headers.get("Content-Length") or "0") != "0"
        if declared and not self.body_read:  # its unread bytes would be parsed as the next request
            self.close_connection = True
        if self.close_connection:
            headers = (headers or {}) | {"Connection": "close"}
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def error(self, status: int, reason: str, message: str, field: str | None = None) -> None:
        """Answer with the project's one error shape."""
        self.send(status, "application/json", json.dumps(error_body(status, reason, message, field)).encode())

    def do_GET(self) -> None:  # noqa: N802
        self.answer(self.get)

    def do_POST(self) -> None:  # noqa: N802
        self.answer(self.post)

    def answer(self, method: Callable[[], None]) -> None:
        self.body_read = False
        try:
            method()
        except Exception as e:  # a fault costs this request a 500, never a closed connection
            self.close_connection = True
            self.error(500, "internal", f"internal error: {type(e).__name__}: {e}")
            traceback.print_exc()

    def get(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/api/"):
            self.get_api(path)
            return
        if path.startswith("/vendor/ort/"):
            self.get_vendor(path.removeprefix("/vendor/ort/"))
            return
        name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
        file = (STATIC / name).resolve()
        if not path.startswith(("/static/", "/index.html")) and path != "/" or file.parent != STATIC \
                or not file.is_file():
            self.error(404, "not_found", f"{path}: not found", "path")
            return
        self.send(200, mimetypes.guess_type(file.name)[0] or "application/octet-stream", file.read_bytes())

    def get_api(self, path: str) -> None:
        """``/api/spaces`` and ``/api/spaces/<space>/decoder.onnx``, for a client with a session when auth is on."""
        space = path.removeprefix("/api/spaces/").removesuffix("/decoder.onnx")
        if path != "/api/spaces" and path != f"/api/spaces/{space}/decoder.onnx":
            self.error(404, "not_found", f"{path}: not found", "path")
        elif not self.server.authorized(self.headers.get("Cookie")):
            self.error(401, "unauthorized", "open a session with the inference key: POST /api/session", "key")
        elif path == "/api/spaces":
            self.send(200, "application/json", self.server.spaces_json)
        elif space in self.server.decoders:
            self.send(200, "application/octet-stream", self.server.decoders[space])
        else:
            self.error(404, "no_decoder", f"{space}: no in-page decoder (spaces with one: "
                                          f"{', '.join(self.server.decoders) or 'none'})", "space")

    def get_vendor(self, name: str) -> None:
        """One of ONNX Runtime Web's files that the page loads, from node_modules."""
        if name not in VENDOR_FILES:
            self.error(404, "not_found", f"/vendor/ort/{name}: not found", "path")
        elif not (VENDOR / name).is_file():
            self.error(404, "not_installed", f"{VENDOR / name} is missing: run `make setup` (npm ci)", "path")
        else:
            self.send(200, VENDOR_FILES[name], (VENDOR / name).read_bytes())

    def body(self) -> bytes | None:
        """The request's body, read whole; None (answered, the connection closed: ``send``) when it is not one
        this server takes."""
        if "Transfer-Encoding" in self.headers:
            self.error(411, "length_required", "send the body with a Content-Length, not a Transfer-Encoding",
                       "Content-Length")
            return None
        length_header = self.headers.get("Content-Length") or "0"
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length_header)
        except ValueError:
            self.error(400, "bad_content_length", f"Content-Length {length_header!r} is not a byte count",
                       "Content-Length")
            return None
        if length > self.server.max_body:
            self.error(413, "body_too_large", f"the body is over {self.server.max_body} bytes", "body")
            return None
        body = self.rfile.read(length) if length else b""
        self.body_read = True
        self.request_received()
        return body

    def post(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.server.origins:
            self.error(403, "foreign_origin", f"requests from {origin} are not accepted; open {self.server.url}",
                       "Origin")
        elif (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self.error(415, "wrong_content_type", "the body must be application/json", "Content-Type")
        elif path == "/api/session":
            self.session()
        elif not path.startswith("/api/predictions/") or path.removeprefix("/api/predictions/") \
                not in self.server.allowed:
            self.error(404, "unknown_model", f"{path.removeprefix('/api/predictions/')}: not a model of the explorer "
                                             f"({', '.join(sorted(self.server.allowed))})", "model")
        elif not self.server.authorized(self.headers.get("Cookie")):
            self.error(401, "unauthorized", "open a session with the inference key: POST /api/session", "key")
        elif (body := self.body()) is not None:
            try:
                status, content_type, answer = self.server.forward(path.removeprefix("/api/predictions/"), body)
            except ClientError as e:
                self.error(502, "upstream_failed", f"the inference API did not answer ({e})")
                return
            self.send(status, content_type, answer)

    def session(self) -> None:
        """``{"key": <inference key>}`` -> a session cookie (204), or 401."""
        body = self.body()
        if body is None:
            return
        try:
            key = json.loads(body)["key"]
            if not isinstance(key, str):
                raise TypeError(key)
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deep
            self.error(400, "malformed_json", 'send {"key": "<the inference key>"}', "key")
            return
        token = self.server.open_session(key) if self.server.key_file else None
        if token is None:
            reason = "no_auth" if self.server.key_file is None else "invalid_key"
            self.error(401 if self.server.key_file else 400, reason, "not the server's current inference key"
                       if self.server.key_file else "token authorization is off: no session is needed", "key")
            return
        cookie = f"{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={int(SESSION_SECONDS)}"
        self.send(204, "application/json", b"", {"Set-Cookie": cookie})
