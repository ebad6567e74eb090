"""Where a request's time goes, by stage, under the all-route mix: ``python -m bench.stages [--requests N]``.

Draws each route's bodies as the load tests do (``loadtest/bodies.py``: the mix of ``make capacity`` and ``make
loadtest``, sizes, formats and points varied), answers each with the route's worker in this process (one decoder
thread, as in a KServe host process per CPU) and times its stages one request at a time: ``parse`` (JSON and
validation against the OpenAPI schema), ``plan`` (latent math, images decoded, the class model), ``decode`` (the
decoder call), ``finish`` (the answer's arrays) and ``encode`` (the answer's format: PNG, GIF, base64 JSON, npy).
Each stage's time is wall time on an otherwise idle thread, which is its CPU. The stages are those of
``Service.answer``, called in its order; every answer is checked against ``Service.answer``'s bytes.

Writes ``stages.json`` and ``stages.md`` (a table per route and per format, and the mix's mean) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.serving import write
from handlers.service import Service
from loadtest.bodies import BODIES, EXPLORER_STYLE, Points
from loadtest.mix import mix
from runtime.cpus import available_cpus
from runtime.manifest import Manifest
from serving.inprocess import MODEL_STORE, load_service
from serving.routes import ROUTES
from serving.settings import MODELS

STAGES = ("parse", "plan", "decode", "finish", "encode")


def timed(service: Service, body: bytes) -> tuple[dict[str, float], bytes]:
    """Seconds of each stage of ``body``'s answer, and the answer's bytes."""
    worker = service.worker
    t0 = time.perf_counter()
    request = worker.schema.parse(body, service.operation)
    t1 = time.perf_counter()
    plan = service.plan(request, worker)
    t2 = time.perf_counter()
    logits = worker.decode(plan.latents) if len(plan.latents) else np.zeros((0, *worker.shapes.image_shape),
                                                                             np.float32)
    t3 = time.perf_counter()
    answer = plan.finish(logits)
    t4 = time.perf_counter()
    reply = service.reply(request["format"], answer)
    t5 = time.perf_counter()
    worker.recorder.flush()
    return dict(zip(STAGES, np.diff([t0, t1, t2, t3, t4, t5]), strict=True)), reply.body


def profile(store: Path, requests: int, seed: int = 0) -> dict:
    """``requests`` bodies per route of the mix, each answered and timed by stage."""
    random.seed(seed)
    user = Points()
    sampler = load_service("sample", store, MODELS["sample"], store_workers=available_cpus())
    user.images = json.loads(sampler.answer([{"n": 2, "seed": 1, "format": "json"}])[0].body)["images"]
    routes = {}
    for name, weight in mix().items():
        route = ROUTES[name]
        service = load_service(name, store, MODELS[name], store_workers=available_cpus())
        dim = Manifest.read(store / route.export).shapes.latent_dim
        by_format: dict[str, list[dict[str, float]]] = defaultdict(list)
        for i in range(requests + 1):
            body = {"format": "json"} | BODIES[route.operation](user, dim, route.export == EXPLORER_STYLE)
            raw = json.dumps(body).encode()
            stages, answer = timed(service, raw)
            if i == 0:  # the first warms the route up; its bytes must be the service's
                assert answer == service.answer([raw])[0].body, f"{name}: the staged answer differs"
                continue
            by_format[body["format"]].append(stages)
        every = [s for timings in by_format.values() for s in timings]
        routes[name] = {"weight": weight, "requests": len(every), "ms": mean_ms(every),
                        "formats": {fmt: {"requests": len(t), "ms": mean_ms(t)} for fmt, t in by_format.items()}}
    total = sum(r["weight"] for r in routes.values())
    mixed = {stage: sum(r["weight"] * r["ms"][stage] for r in routes.values()) / total for stage in STAGES}
    return {"requests_per_route": requests, "threads": 1, "routes": routes, "mix_ms": mixed}


def mean_ms(timings: list[dict[str, float]]) -> dict[str, float]:
    return {stage: 1000 * float(np.mean([t[stage] for t in timings])) for stage in STAGES}


def markdown(report: dict) -> str:
    """The stages of each route and of the mix, ms per request, and each stage's share."""
    head = "| " + " | ".join(["route", "weight", *STAGES, "total", "largest stage"]) + " |"
    lines = [f"Milliseconds per request by stage, {report['requests_per_route']} requests per route drawn as the "
             "load tests draw them, one thread:", "", head, "| --- " * (len(STAGES) + 4) + "|"]
    for name, r in [*report["routes"].items(), ("mix (weighted)", {"weight": "", "ms": report["mix_ms"]})]:
        ms = r["ms"]
        top = max(STAGES, key=lambda stage: ms[stage])
        lines.append(f"| {name} | {r['weight']} | " + " | ".join(f"{ms[stage]:.2f}" for stage in STAGES)
                     + f" | {sum(ms.values()):.2f} | {top} {ms[top] / sum(ms.values()):.0%} |")
    lines += ["", "By format (requests, then ms per request by stage):", "",
              "| route | format | requests | " + " | ".join(STAGES) + " |", "| --- " * (len(STAGES) + 3) + "|"]
    for name, r in report["routes"].items():
        for fmt, f in sorted(r["formats"].items()):
            lines.append(f"| {name} | {fmt} | {f['requests']} | " + " | ".join(f"{f['ms'][s]:.2f}" for s in STAGES)
                         + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=MODEL_STORE, help="the model store (export folders)")
    parser.add_argument("--requests", type=int, default=60, help="bodies per route")
    parser.add_argument("--out", type=Path, default=Path("runs/stages"))
    args = parser.parse_args(argv)
    report = profile(args.store, args.requests)
    text = markdown(report)
    write(report, text, args.out, "stages")
    print(text)


if __name__ == "__main__":
    main()
