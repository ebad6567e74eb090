"""The explorer's speed in a real browser: ``python -m bench.explorer [--moves 240]`` (``make explorer-bench``).

Starts what ``make serve`` starts (TorchServe with every model, built from the current artifacts and handler code,
and the explorer page), opens the page in headless chromium (Playwright) and, for each latent space, drags the
pointer over the pad along a fixed figure-eight, one move every ``--gap-ms`` (a 60 Hz pointer): each round once
with the page decoding in place (ONNX Runtime Web, the fp32 decoder: ``in_page``) and once, the switch off, with
every move decoded by the server (``server``), after one unrecorded warm-up drag of each. The page keeps at most
one decode in flight and drops stale positions; the Performance API times each move's decode in the page
(``window.explorerStats``: in-page, from the latent to the image drawn; server, the round trip) and a
requestAnimationFrame counter gives frames per second during the drag. Writes ``runs/bench/explorer.json``
(``in_page`` and ``server``) and prints p50/p95 per move, decodes, moves dropped and fps, and whether the in-page
targets hold (p50 <= 2 ms, 60 fps, none dropped).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from bench.errors import BenchError
from explorer.server import Explorer
from runtime import artifacts
from runtime.errors import FmvaeError
from serving.settings import ServerConfig, TorchServeConfig
from serving.torchserve import archive
from serving.torchserve.host import TorchServe

PATHS = ("in_page", "server")
TARGET_P50_MS = 2.0  # the in-page decode per move
WARMUP_MOVES = 60  # one unrecorded drag per space and path first: WebAssembly and JavaScript warm up in it
TARGET_FPS = 59.0  # 60 Hz, with a frame of slack for the start and end of the counting
FRAME_COUNTER = """() => { window.benchFrames = 0; if (window.benchCounting) return; window.benchCounting = true;
  const tick = () => { window.benchFrames += 1; requestAnimationFrame(tick); }; requestAnimationFrame(tick); }"""


def chromium() -> str:
    """Debian's chromium (``make setup`` installs it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise BenchError("chromium not found; run `make setup` (Debian package chromium)")
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def use(page: Page, path: str) -> None:
    """Switch the page to decoding ``path`` ("in_page" or "server") and wait until it does."""
    page.set_checked("#local-decode", path == "in_page")
    state = "in_page" if path == "in_page" else "off"
    page.wait_for_function("s => ['failed', s].includes(document.body.dataset.decoder)", arg=state, timeout=60000)
    if page.evaluate("() => document.body.dataset.decoder") != state:
        raise BenchError(f"the in-page decoder did not load: {page.text_content('#decoder-state')}")


def drag(page: Page, moves: int, gap_ms: float, path: str) -> dict:
    """A figure-eight drag over the pad, the image decoded along ``path``; the decode times per move, drops and
    frame rate it produced."""
    box = page.locator("#pad").bounding_box()
    cx, cy, r = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, 0.4 * box["width"]
    page.mouse.move(cx, cy)
    page.wait_for_timeout(300)
    page.evaluate("() => { Object.assign(window.explorerStats, {decodes: [], dropped: {}, checks: []}); }")
    page.evaluate(FRAME_COUNTER)
    start = time.perf_counter()
    page.mouse.down()
    for i in range(moves):
        t = 2 * math.pi * i / moves
        page.mouse.move(cx + r * math.sin(t), cy + r * math.sin(t) * math.cos(t))
        page.wait_for_timeout(gap_ms)
    page.mouse.up()
    seconds = time.perf_counter() - start
    frames = page.evaluate("() => window.benchFrames")
    page.wait_for_timeout(500)  # let the last decode land
    stats = page.evaluate("() => window.explorerStats")
    if stats["path"] != path:
        raise BenchError(f"the drag was decoded along {stats['path']}, not {path}")
    ms = stats["decodes"]
    row = {"moves": moves, "decodes": len(ms), "dropped": stats["dropped"].get("decode", 0),
           "seconds": round(seconds, 2), "p50_ms": round(statistics.median(ms), 2),
           "p95_ms": round(percentile(ms, 95), 2), "max_ms": round(max(ms), 2), "fps": round(frames / seconds, 1)}
    if path == "in_page":  # the server's decode of the released point, against the page's image
        row["released_diff"] = max((c["diff"] for c in stats["checks"]), default=None)
    return row


def picture(page: Page, path: Path) -> None:
    """The 64-d space with every panel filled: a strip between two clicked points, samples, a point decoded."""
    page.select_option("#space", "64-d")
    page.wait_for_timeout(500)
    box = page.locator("#pad").bounding_box()
    page.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + 0.35 * box["height"])
    page.mouse.click(box["x"] + 0.7 * box["width"], box["y"] + 0.7 * box["height"])
    page.click("#sample")
    page.mouse.move(box["x"] + 0.55 * box["width"], box["y"] + 0.4 * box["height"])
    page.wait_for_timeout(1500)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)


def run(moves: int, gap_ms: float, rounds: int, artifact_dir: Path, screenshot: Path | None = None) -> dict:
    """Serve everything, drag each space ``rounds`` times along each path; the report."""
    with tempfile.TemporaryDirectory() as store:
        archive.build_store(artifact_dir.parent, Path(store))
        config = ServerConfig(torchserve=TorchServeConfig(model_store=Path(store))).with_free_ports()
        with TorchServe(config) as ts:
            explorer = Explorer(ts.url, config.models, artifacts.DEFAULT_DIR.parent)
            threading.Thread(target=explorer.serve_forever, daemon=True).start()
            try:
                with sync_playwright() as pw:
                    browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(explorer.url)
                    page.wait_for_selector("body[data-ready=true]")
                    results: dict = {path: {} for path in PATHS}
                    for space in page.eval_on_selector_all("#space option", "os => os.map(o => o.value)"):
                        page.select_option("#space", space)
                        page.wait_for_timeout(500)
                        for path in PATHS:  # unrecorded: the first drags after a load also compile and tier up
                            use(page, path)
                            drag(page, WARMUP_MOVES, gap_ms, path)
                        for _ in range(rounds):  # the two paths in turn, so that both meet the same machine
                            for path in PATHS:
                                use(page, path)
                                results[path].setdefault(space, []).append(drag(page, moves, gap_ms, path))
                    use(page, "in_page")
                    if screenshot:
                        picture(page, screenshot)
                    browser.close()
            finally:
                explorer.shutdown()
                explorer.server_close()
    return {"moves": moves, "gap_ms": gap_ms, "rounds": rounds, **results}


def target_misses(report: dict) -> list[str]:
    """The in-page targets each space misses (empty when all hold): p50 per move, frame rate, no move dropped."""
    misses = []
    for space, rows in report["in_page"].items():
        p50, fps, dropped = max(r["p50_ms"] for r in rows), min(r["fps"] for r in rows), sum(r["dropped"] for r in rows)
        if p50 > TARGET_P50_MS or fps < TARGET_FPS or dropped:
            misses.append(f"{space}: p50 up to {p50} ms, fps down to {fps}, {dropped} dropped")
    return misses


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.explorer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moves", type=int, default=240, help="pointer moves per drag (default %(default)s)")
    p.add_argument("--gap-ms", type=float, default=16.7, help="between moves (default %(default)s: 60 Hz)")
    p.add_argument("--rounds", type=int, default=3, help="drags per space (default %(default)s)")
    p.add_argument("--artifacts", type=Path, default=artifacts.DEFAULT_DIR)
    p.add_argument("--out", type=Path, default=Path("runs/bench/explorer.json"))
    p.add_argument("--screenshot", type=Path, help="also save a screenshot of the page (docs/explorer.png)")
    args = p.parse_args(argv)
    if args.moves < 200:
        p.error("--moves must be at least 200")
    report = run(args.moves, args.gap_ms, args.rounds, args.artifacts, args.screenshot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| path | space | round | moves | decodes | dropped | p50 per move (ms) | p95 (ms) | fps |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in PATHS:
        for space, rows in report[path].items():
            for i, r in enumerate(rows, 1):
                print(f"| {path} | {space} | {i} | {r['moves']} | {r['decodes']} | {r['dropped']} | "
                      f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['fps']:.0f} |")
    misses = target_misses(report)
    print(f"in-page targets (p50 <= {TARGET_P50_MS} ms, >= {TARGET_FPS:g} fps, 0 dropped): "
          + ("met" if not misses else "missed: " + "; ".join(misses)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except FmvaeError as e:
        raise SystemExit(f"error: {e}") from None
