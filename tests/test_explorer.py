"""The explorer page in a real browser (Debian's chromium driven by Playwright) against the session TorchServe,
and its proxy: same origin only, JSON only, the served models only, the inference key added server-side; the
in-page decoder (ONNX Runtime Web) against the server's decode, and the page's fallback to the server. The proxy's
own refusals on a kept-alive connection and the files it serves for the in-page decoder need neither (fast
tier)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from explorer import server as explorer_server
from explorer.errors import NoSpace
from explorer.server import VENDOR, VENDOR_FILES, Explorer
from runtime.manifest import Manifest
from serving.settings import MODELS, ServerConfig, TorchServeConfig
from serving.torchserve.host import TorchServe
from tests.conftest import ARTIFACTS, running
from training.data import CLASS_NAMES

CHROMIUM = shutil.which("chromium")
NEEDS_CHROMIUM = pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: run `make setup`")

# Records the most decode requests in flight at once (the page must never have more than one).
IN_FLIGHT = """() => { const f = window.fetch; window.inFlight = 0; window.maxInFlight = 0;
  window.fetch = async (...a) => { const d = String(a[0]).includes('decode');
    if (d) { window.inFlight += 1; window.maxInFlight = Math.max(window.maxInFlight, window.inFlight); }
    try { return await f(...a); } finally { if (d) window.inFlight -= 1; } };
  window.padMoves = 0;
  document.addEventListener('pointermove', (e) => { if (e.target.id === 'pad') window.padMoves += 1; }, true); }"""


def serve(explorer: Explorer):
    threading.Thread(target=explorer.serve_forever, daemon=True).start()
    return explorer


@pytest.fixture(scope="module")
def explorer(server, current_store):
    page_server = serve(Explorer(server.url, tuple(MODELS), ARTIFACTS.parent))
    yield page_server
    page_server.shutdown()
    page_server.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


def src(page, selector: str) -> str:
    return page.get_attribute(selector, "src") or ""


def wait_change(page, selector: str, before: str) -> str:
    page.wait_for_function("([s, b]) => (document.querySelector(s).getAttribute('src') || '') !== b",
                           arg=[selector, before], timeout=15000)
    return src(page, selector)


@pytest.mark.integration  # a real TorchServe and a browser
@NEEDS_CHROMIUM
def test_the_page_drives_every_control_through_the_api(explorer, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script(f"({IN_FLIGHT})()")
    page.goto(explorer.url)
    page.wait_for_selector("body[data-ready=true]", timeout=20000)
    assert page.eval_on_selector_all("#space option", "os => os.map(o => o.value)") == ["64-d", "2-d"]
    # The scatter: many coloured pixels on the pad, and a legend of the ten classes.
    coloured = page.evaluate("""() => { const c = document.getElementById('pad');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && !(d[i] === d[i + 1] && d[i + 1] === d[i + 2])) n++;
        return n; }""")
    assert coloured > 2000
    assert page.locator("#legend span").count() == 10
    first = wait_change(page, "#decoded", "")
    # A scripted drag decodes new points, never more than one request at a time.
    box = page.locator("#pad").bounding_box()
    page.evaluate("() => { window.explorerStats.decodes = []; window.explorerStats.dropped = {}; "
                  "window.padMoves = 0; }")
    page.mouse.move(box["x"] + 60, box["y"] + 60)
    for i in range(40):
        page.mouse.move(box["x"] + 60 + 8 * i, box["y"] + 80 + 5 * i)
    dragged = wait_change(page, "#decoded", first)
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.maxInFlight") == 1
    # Every pointer position was decoded or dropped as stale (chromium adds a move of its own after some layout
    # changes, so the count is the page's, not the script's).
    page.wait_for_function("() => window.inFlight === 0", timeout=10000)
    page.wait_for_timeout(300)
    counts = page.evaluate("() => [window.explorerStats.decodes.length, window.explorerStats.dropped.decode || 0,"
                           " window.padMoves]")
    decoded, dropped, moves = counts
    assert decoded >= 1 and decoded + dropped == moves, counts
    assert "onnx-int8 on cpu" in page.text_content("#status") and " ms" in page.text_content("#status")
    # A slider moves the decoded point, whose class probabilities are listed; the class edit lands by default
    # (auto) and follows its strength once auto is off.
    page.eval_on_selector("#sliders input", "el => { el.value = 2.5; el.dispatchEvent(new Event('input')); }")
    wait_change(page, "#decoded", dragged)
    page.wait_for_function("() => document.querySelectorAll('#classes li').length === 3", timeout=15000)
    assert any(name in page.text_content("#classes") for name in CLASS_NAMES)
    edited = wait_change(page, "#edited", "")
    page.wait_for_function("() => / of the way to the nearest /.test(document.getElementById('edit-result')"
                           ".textContent)", timeout=15000)
    page.click("#edit-auto")
    page.eval_on_selector("#edit-strength", "el => { el.value = -1.5; el.dispatchEvent(new Event('input')); }")
    wait_change(page, "#edited", edited)
    # Two clicks on the plane: an interpolation strip of 8 images.
    page.mouse.click(box["x"] + 100, box["y"] + 100)
    page.mouse.click(box["x"] + 380, box["y"] + 360)
    page.wait_for_function("() => document.querySelectorAll('#strip img').length === 8", timeout=15000)
    page.click("#sample")
    page.wait_for_function("() => document.querySelectorAll('#samples img').length === 8", timeout=15000)
    # A drawn garment is encoded onto the plane and reconstructed.
    draw = page.locator("#draw").bounding_box()
    page.mouse.move(draw["x"] + 60, draw["y"] + 40)
    page.mouse.down()
    for i in range(12):
        page.mouse.move(draw["x"] + 60 + 9 * i, draw["y"] + 40 + 12 * i)
    page.mouse.up()
    page.click("#encode")
    page.wait_for_function("() => document.getElementById('encoding').textContent.startsWith('plane')")
    wait_change(page, "#reconstruction", "")
    # What a person sees: in a screenshot of the page, the plane shows the coloured scatter and each image panel
    # a decoded garment (not a blank or broken image).
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
    assert shot.shape == (1000, 1400, 3)

    def region(selector: str) -> np.ndarray:
        b = page.locator(selector).bounding_box()
        return shot[int(b["y"]):int(b["y"] + b["height"]), int(b["x"]):int(b["x"] + b["width"])]

    pad = region("#pad")
    assert (np.ptp(pad, axis=2) > 30).mean() > 0.01  # coloured class points
    for selector in ("#decoded", "#edited", "#reconstruction"):
        pixels = region(selector)
        assert pixels.std() > 20 and np.ptp(pixels, axis=2).max() < 8, selector  # a grey image with content
    # The 2-d model: its own plane, decoded by its own route.
    page.select_option("#space", "2-d")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('decode2d')")
    assert page.is_hidden("#plane-controls")
    assert errors == []
    page.close()


PAGE_IMAGE = """() => { const d = document.getElementById('decoded-page').getContext('2d').getImageData(0, 0, 28, 28)
  .data; return Array.from({ length: 784 }, (_, i) => d[4 * i]); }"""


def hover(page, moves: int, start: float = 0.35) -> None:
    """Pointer moves over the middle of the pad (latents near the data, where the parity figures were measured)."""
    box = page.locator("#pad").bounding_box()
    for i in range(moves):
        page.mouse.move(box["x"] + box["width"] * (start + 0.008 * i), box["y"] + box["height"] * (0.4 + 0.005 * i))


def decoder_ready(page, state: str) -> None:
    """Wait until the page's in-page decoder settles, and check that it settled in ``state``."""
    page.wait_for_function("() => ['in_page', 'failed', 'off'].includes(document.body.dataset.decoder)", timeout=60000)
    assert page.evaluate("() => document.body.dataset.decoder") == state, page.text_content("#decoder-state")


def parity_bound(export: str, backend: str) -> float:
    """The largest difference between the served decoder's image and the page's that the export's parity report
    allows: each decoder's largest pixel difference from the fp32 eager decoder on the report's two latent sets
    (10,000 test posterior means and 10,000 prior draws), the served one's and the page's (the same fp32 ONNX file),
    plus 1/255 for the rounding of both images to 8 bits."""
    decoders = json.loads((ARTIFACTS.parent / export / "export_report.json").read_text())["decoders"]
    worst = {name: max(r["max_abs_test_means"], r["max_abs_prior"]) for name, r in decoders.items()}
    return worst[backend] + worst["onnx-fp32"] + 1 / 255


@pytest.mark.integration  # a real TorchServe and a browser
@NEEDS_CHROMIUM
def test_the_page_decodes_in_place_and_its_images_match_the_servers_decode(explorer, browser):
    """The page loads each space's decoder once, from its own origin only; a drag draws in-page images with no
    request per move; the server's decode of the resting point differs from the page's image by no more than the
    export's parity report allows, and the page shows that difference. The switch puts the server back on every
    move."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script(f"({IN_FLIGHT})()")  # counts the pad's pointer moves
    page.goto(explorer.url)
    spaces = json.loads(urllib.request.urlopen(f"{explorer.url}/api/spaces", timeout=10).read())
    for name in ("64-d", "2-d"):
        page.select_option("#space", name)
        decoder_ready(page, "in_page")
        assert "sha256 checked" in page.text_content("#decoder-state")
        page.wait_for_function("d => window.explorerStats.checks.some(c => c.z.length === d)",  # the first point
                               arg=spaces[name]["latent_dim"], timeout=15000)
        page.evaluate("() => { Object.assign(window.explorerStats, {decodes: [], dropped: {}, checks: []}); "
                      "window.padMoves = 0; }")
        asked = len(requests)
        hover(page, 30)
        page.wait_for_function("() => { const c = window.explorerStats.checks.at(-1); "  # the resting point checked
                               "return c !== undefined && c.z.join() === currentLatent().join(); }", timeout=15000)
        stats = page.evaluate("() => window.explorerStats")
        moves = page.evaluate("() => window.padMoves")  # every move drawn in the page, or dropped as stale
        assert stats["path"] == "in_page" and len(stats["decodes"]) + stats["dropped"].get("decode", 0) == moves > 1
        decodes = [u for u in requests[asked:] if u.endswith(f"/api/predictions/{spaces[name]['routes']['decode']}")]
        assert len(decodes) <= 3, decodes  # the resting point's check (and any pause's), not one per move
        pixels = np.array(page.evaluate(PAGE_IMAGE), dtype=float)
        z = stats["checks"][-1]["z"]
        code, served = request(f"{explorer.url}/api/predictions/{spaces[name]['routes']['decode']}",
                               json.dumps({"latents": [z], "format": "json"}).encode(), JSON)
        assert code == 200
        server_pixels = png_pixels(served["images"][0]).ravel()
        diff = np.abs(pixels - server_pixels).max() / 255
        assert pixels.std() > 20  # a garment, not a blank canvas
        assert diff <= parity_bound(spaces[name]["export"], served["backend"]), (name, diff)
        check = stats["checks"][-1]
        assert check["backend"] == served["backend"] and check["diff"] == pytest.approx(diff, abs=1e-9)
        assert page.text_content("#local-diff") == f"server \u0394 {diff:.3f}" and page.is_visible("#decoded")
    # Off: the server decodes every move again.
    page.uncheck("#local-decode")
    decoder_ready(page, "off")
    page.evaluate("() => Object.assign(window.explorerStats, {decodes: [], dropped: {}, checks: []})")
    hover(page, 10, start=0.45)
    page.wait_for_function("() => window.explorerStats.decodes.length > 0", timeout=15000)
    assert page.evaluate("() => window.explorerStats.path") == "server" and page.is_hidden("#decoded-page")
    # Everything came from the explorer, and each file of the decoder once.
    assert requests and all(u.startswith(explorer.url + "/") for u in requests), requests
    paths = [u.removeprefix(explorer.url) for u in requests]
    for path in ("/vendor/ort/ort.wasm.bundle.min.mjs", "/vendor/ort/ort-wasm-simd-threaded.wasm",
                 "/api/spaces/64-d/decoder.onnx", "/api/spaces/2-d/decoder.onnx"):
        assert paths.count(path) == 1, path
    assert errors == []
    page.close()


def png_pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=float)


def drag_on_the_server(page) -> None:
    """After a failed decoder load: the page says so, and a drag is decoded by the server."""
    assert page.is_visible("#decoder-state") and "error" in page.get_attribute("#decoder-state", "class")
    assert "decoding on the server" in page.text_content("#decoder-state")
    page.evaluate("() => Object.assign(window.explorerStats, {decodes: [], dropped: {}})")
    hover(page, 10)
    page.wait_for_function("() => window.explorerStats.decodes.length > 0", timeout=15000)
    assert page.evaluate("() => window.explorerStats.path") == "server"
    assert src(page, "#decoded").startswith("data:image/png;base64,") and page.is_hidden("#decoded-page")


@pytest.mark.integration  # a real TorchServe and a browser
@NEEDS_CHROMIUM
def test_without_webassembly_the_page_decodes_on_the_server_and_says_so(explorer, browser):
    """V8 without its JIT (as browsers' hardened modes run it) has no WebAssembly."""
    jitless = browser.browser_type.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--js-flags=--jitless"])
    try:
        page = jitless.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(explorer.url)
        assert page.evaluate("() => typeof WebAssembly") == "undefined"
        decoder_ready(page, "failed")
        assert "WebAssembly is not available" in page.text_content("#decoder-state")
        drag_on_the_server(page)
    finally:
        jitless.close()


def tampered(route) -> None:
    """The decoder with one byte changed."""
    response = route.fetch()
    body = bytearray(response.body())
    body[len(body) // 2] ^= 0xFF
    route.fulfill(response=response, body=bytes(body))


NOT_A_MODEL = b"not an onnx model"


def claims_not_a_model(route) -> None:
    """/api/spaces whose decoders' sha256 is that of NOT_A_MODEL (which the decoder route then sends)."""
    response = route.fetch()
    spaces = response.json()
    for space in spaces.values():
        space["decoder"]["sha256"] = hashlib.sha256(NOT_A_MODEL).hexdigest()
    route.fulfill(response=response, body=json.dumps(spaces))


@pytest.mark.integration  # a real TorchServe and a browser
@NEEDS_CHROMIUM
@pytest.mark.parametrize(("routes", "message"), [
    ({"**/decoder.onnx": tampered}, "is not the manifest's"),
    ({"**/api/spaces": claims_not_a_model, "**/decoder.onnx": lambda route: route.fulfill(body=NOT_A_MODEL)},
     "the decoder did not load in ONNX Runtime Web"),
], ids=["hash-mismatch", "load-failure"])
def test_a_decoder_the_page_cannot_use_is_reported_and_the_server_decodes(explorer, browser, routes, message):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    for pattern, handler in routes.items():
        page.route(pattern, handler)
    page.goto(explorer.url)
    decoder_ready(page, "failed")
    assert message in page.text_content("#decoder-state")
    drag_on_the_server(page)
    page.close()


def request(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


BODY = json.dumps({"latents": [[0.0, 0.0]], "format": "json"}).encode()
JSON = {"Content-Type": "application/json"}


@pytest.mark.integration  # a real TorchServe and a browser
@NEEDS_CHROMIUM
def test_the_proxy_takes_json_from_its_own_origin_for_the_served_models_only(explorer):
    url = f"{explorer.url}/api/predictions/decode2d"
    code, body = request(url, BODY, JSON | {"Origin": explorer.url})
    assert code == 200 and len(body["images"]) == 1
    assert request(url, BODY, JSON | {"Origin": "http://evil.example"}) == (403, {
        "code": 403, "reason": "foreign_origin", "field": "Origin",
        "message": f"requests from http://evil.example are not accepted; open {explorer.url}"})
    assert request(url, BODY, {"Content-Type": "text/plain"})[0] == 415  # a "simple" cross-site form post
    code, body = request(f"{explorer.url}/api/predictions/batched", BODY, JSON)  # served, but not the page's
    assert code == 404 and body["field"] == "model"
    code, body = request(url, b'{"latents": [[0.0]]}', JSON)  # the API's own 400 comes through
    assert code == 400 and body["field"] == "latents[0]"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{explorer.url}/static/../server.py", timeout=10)
    assert e.value.code == 404
    spaces = json.loads(urllib.request.urlopen(f"{explorer.url}/api/spaces", timeout=10).read())
    assert spaces["2-d"]["routes"]["decode"] == "decode2d" and spaces["64-d"]["latent_dim"] == 64
    assert len(spaces["64-d"]["scatter_means"]) == len(spaces["64-d"]["scatter_labels"]) >= 1000


@pytest.mark.integration  # a real TorchServe and a browser
@NEEDS_CHROMIUM
def test_with_token_auth_the_page_asks_for_the_key_and_the_proxy_refuses_without_it(current_store, tmp_path,
                                                                                   browser):
    models = tuple(m for m in MODELS if MODELS[m].export == "export-2d")
    config = ServerConfig(torchserve=TorchServeConfig(model_store=current_store), models=models, token_auth=True,
                          work_dir=tmp_path).with_free_ports()
    with TorchServe(config) as ts:
        page_server = serve(Explorer(ts.url, models, ARTIFACTS.parent, key_file=ts.key_file))
        try:
            # Without a session: no spaces, no predictions (any local process could otherwise use the key).
            code, body = request(f"{page_server.url}/api/predictions/decode2d", BODY, JSON)
            assert (code, body["reason"], body["field"]) == (401, "unauthorized", "key")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{page_server.url}/api/spaces", timeout=10)
            assert refused.value.code == 401
            code, body = request(f"{page_server.url}/api/session", json.dumps({"key": "guess"}).encode(), JSON)
            assert (code, body["reason"]) == (401, "invalid_key")
            # In the browser: the page asks once; a wrong key is refused, the right one opens the page.
            page = browser.new_page()
            page.goto(page_server.url)
            page.wait_for_selector("#login:not([hidden])", timeout=20000)
            page.fill("#key", "guess")
            page.click("#login button")
            page.wait_for_function("() => document.getElementById('login-status').textContent.length > 0")
            assert "not the server's current inference key" in page.text_content("#login-status")
            key = ts.key("inference")
            page.fill("#key", key)
            page.click("#login button")
            page.wait_for_selector("body[data-ready=true]", timeout=20000)
            # a prediction answered through the proxy (the page's first calls race: any route's answer will do)
            page.wait_for_function("() => { const s = document.getElementById('status'); "
                                   "return / ms$/.test(s.textContent) && !s.classList.contains('error'); }",
                                   timeout=20000)
            assert page.is_hidden("#login") and key not in page.content()
            cookies = page.context.cookies()
            assert [c["name"] for c in cookies] == ["fmvae_session"] and cookies[0]["httpOnly"]
            assert key not in cookies[0]["value"]
            page.close()
        finally:
            page_server.shutdown()
            page_server.server_close()
    with pytest.raises(NoSpace):
        Explorer("http://127.0.0.1:1", ("sample", "interpolate"), ARTIFACTS.parent)


@pytest.fixture(scope="module")
def guarded(current_store, tmp_path_factory):
    """The explorer with token auth on (inference key "secret") in front of an API that is not there: its own
    refusals need none."""
    key_file = tmp_path_factory.mktemp("keys") / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "m"}, "inference": {"key": "secret"}, "API": {"key": "a"}}))
    with running(Explorer("http://127.0.0.1:1", tuple(MODELS), ARTIFACTS.parent, key_file=key_file)) as page_server:
        yield page_server


def answer(conn: http.client.HTTPConnection, method: str, path: str, body, headers: dict
           ) -> tuple[http.client.HTTPResponse, dict]:
    conn.request(method, path, body, headers)
    response = conn.getresponse()
    return response, json.loads(response.read())


@pytest.mark.parametrize(("method", "path", "headers", "status", "reason", "field"), [
    ("POST", "/api/predictions/decode2d", JSON | {"Origin": "http://evil.example"}, 403, "foreign_origin", "Origin"),
    ("POST", "/api/predictions/decode2d", {"Content-Type": "text/plain"}, 415, "wrong_content_type", "Content-Type"),
    ("POST", "/api/predictions/nope", JSON, 404, "unknown_model", "model"),
    ("POST", "/api/predictions/decode2d", JSON, 401, "unauthorized", "key"),
    ("GET", "/nowhere", JSON, 404, "not_found", "path"),
    ("POST", "/api/session", JSON | {"Transfer-Encoding": "chunked"}, 411, "length_required", "Content-Length"),
    ("POST", "/api/session", JSON | {"Content-Length": str(10**7)}, 413, "body_too_large", "body"),
    ("POST", "/api/session", JSON | {"Content-Length": "-1"}, 400, "bad_content_length", "Content-Length"),
])
def test_a_refusal_before_the_body_is_read_closes_the_kept_alive_connection(guarded, method, path, headers, status,
                                                                            reason, field):
    """The unread body must not be parsed as the next request: the refusal says Connection: close, and the next
    request (on a new socket) is answered as it should be."""
    conn = http.client.HTTPConnection("127.0.0.1", guarded.server_address[1], timeout=10)
    try:
        chunked = "Transfer-Encoding" in headers
        body = iter([b'{"key": ', b'"secret"}']) if chunked else BODY  # http.client sends an iterable chunked
        response, error = answer(conn, method, path, body, headers)
        assert (response.status, error) == (status, {"code": status, "reason": reason, "field": field,
                                                     "message": error["message"]})
        closing = response.getheader("Connection")  # checked last: first, what the next request gets
        response, error = answer(conn, "GET", "/api/spaces", None, {})
        assert (response.status, error["reason"]) == (401, "unauthorized")
        assert closing == "close"
    finally:
        conn.close()


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"[" * 500_000, 400, "malformed_json"),  # nested past the recursion limit
    (json.dumps({"key": "\ud800"}).encode(), 401, "invalid_key"),  # a lone surrogate: no UTF-8 encoding
    (json.dumps({"key": "secret"}).encode(), 204, None),
], ids=["nested", "lone-surrogate", "the-key"])
def test_a_session_request_is_answered_in_the_one_error_shape_whatever_its_json(guarded, body, status, reason):
    """Its body read, the answer keeps the connection alive for the next request."""
    conn = http.client.HTTPConnection("127.0.0.1", guarded.server_address[1], timeout=10)
    try:
        conn.request("POST", "/api/session", body, JSON)
        response = conn.getresponse()
        payload = response.read()
        assert (response.status, response.getheader("Connection"), conn.sock is not None) == (status, None, True)
        if reason:
            error = json.loads(payload)
            assert error == {"code": status, "reason": reason, "field": "key", "message": error["message"]}
        response, error = answer(conn, "GET", "/api/spaces", None, {})  # no cookie jar here: still no session
        assert (response.status, error["reason"]) == (401, "unauthorized")
    finally:
        conn.close()


def get(conn: http.client.HTTPConnection, path: str, headers: dict | None = None
        ) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    return response, response.read()


def test_the_decoders_need_a_session_and_are_the_manifests(guarded):
    """Each space's in-page decoder is the export's fp32 ONNX decoder, byte for byte what its manifest hashes, and
    its document carries that hash and the parity report's largest pixel difference per decoder."""
    conn = http.client.HTTPConnection("127.0.0.1", guarded.server_address[1], timeout=10)
    try:
        response, body = get(conn, "/api/spaces/2-d/decoder.onnx")
        assert (response.status, json.loads(body)["reason"]) == (401, "unauthorized")
        conn.request("POST", "/api/session", json.dumps({"key": "secret"}), JSON)
        response = conn.getresponse()
        response.read()
        cookie = {"Cookie": response.getheader("Set-Cookie").split(";")[0]}
        spaces = json.loads(get(conn, "/api/spaces", cookie)[1])
        assert sorted(spaces) == ["2-d", "64-d"]
        for name, space in spaces.items():
            response, body = get(conn, f"/api/spaces/{name}/decoder.onnx", cookie)
            assert (response.status, response.getheader("Content-Type")) == (200, "application/octet-stream")
            manifest = Manifest.read(ARTIFACTS.parent / space["export"])
            assert hashlib.sha256(body).hexdigest() == space["decoder"]["sha256"] \
                == manifest.artifacts["decoder/onnx-fp32"].sha256
            assert space["decoder"] == {"backend": "onnx-fp32", "sha256": space["decoder"]["sha256"],
                                        "bytes": len(body)}
            report = json.loads((ARTIFACTS.parent / space["export"] / "export_report.json").read_text())["decoders"]
            assert space["parity_max_abs"] == {b: max(r["max_abs_test_means"], r["max_abs_prior"])
                                               for b, r in report.items()}
        response, body = get(conn, "/api/spaces/3-d/decoder.onnx", cookie)
        assert (response.status, json.loads(body)["reason"], json.loads(body)["field"]) == (404, "no_decoder", "space")
        response, body = get(conn, "/api/spaces/2-d/encoder.onnx", cookie)
        assert (response.status, json.loads(body)["reason"]) == (404, "not_found")
    finally:
        conn.close()


def test_the_page_gets_onnx_runtime_web_from_node_modules_and_nothing_else(guarded, monkeypatch, tmp_path):
    """The two files the page loads, as `make setup` installed them, with no session needed; no other file of the
    package or the tree; a clear 404 when they are not installed."""
    conn = http.client.HTTPConnection("127.0.0.1", guarded.server_address[1], timeout=10)
    try:
        for name, content_type in VENDOR_FILES.items():
            response, body = get(conn, f"/vendor/ort/{name}")
            assert (response.status, response.getheader("Content-Type")) == (200, content_type), name
            assert body == (VENDOR / name).read_bytes()
        for path in ("/vendor/ort/ort.min.js", "/vendor/ort/../../package.json", "/vendor/ort/"):
            response, body = get(conn, path)
            assert (response.status, json.loads(body)["reason"]) == (404, "not_found"), path
        monkeypatch.setattr(explorer_server, "VENDOR", tmp_path)
        response, body = get(conn, "/vendor/ort/ort-wasm-simd-threaded.wasm")
        error = json.loads(body)
        assert (response.status, error["reason"]) == (404, "not_installed") and "make setup" in error["message"]
    finally:
        conn.close()
