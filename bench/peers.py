"""What a user would write instead, for the serving benchmark: the released int8 decoder behind a few lines of a
peer server, each with an echo route (that framework's floor). ``python -m bench.peers kserve|starlette --port P``.

- ``kserve``: about 40 lines of KServe's ModelServer: a ``kserve.Model`` per route, ``POST
  /v1/models/sample:predict`` with ``{"n", "seed"}`` answered as npy, ``/v1/models/echo:predict`` echoing the body.
- ``starlette``: a bare starlette app under uvicorn: ``POST /predictions/sample`` and ``/predictions/echo``.

One process, one intra-op thread, no validation, metrics, batching or errors: the floor of what serving this
decoder costs in each framework (``bench/serving.py`` sets the hosts beside them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from runtime import artifacts, backends
from runtime.images import npy_bytes
from runtime.latent import seeded_latents
from runtime.manifest import Manifest

PATHS = {"kserve": "/v1/models/{model}:predict", "starlette": "/predictions/{model}"}  # where bench.serving posts


def decoder(artifact_dir: Path):  # noqa: ANN201
    """decode(request) -> npy bytes of the images of ``{"n", "seed"}``, with the CPU route's decoder on 1 thread."""
    decode = backends.load(artifacts.DECODERS["onnx-int8"], artifact_dir, threads=1)
    latent_dim = Manifest.read(artifact_dir).shapes.latent_dim

    def answer(request: dict) -> bytes:
        logits = decode(seeded_latents(request["seed"], request["n"], latent_dim).astype(np.float32))
        return npy_bytes(1 / (1 + np.exp(-logits[:, 0])))
    return answer


def kserve_peer(port: int, artifact_dir: Path) -> None:
    from kserve import Model, ModelServer
    answer = decoder(artifact_dir)

    class Sample(Model):
        def __init__(self) -> None:
            super().__init__("sample")
            self.ready = True

        def predict(self, payload: dict, headers: dict | None = None) -> bytes:
            return answer(payload if isinstance(payload, dict) else json.loads(payload))

    class Echo(Model):
        def __init__(self) -> None:
            super().__init__("echo")
            self.ready = True

        def predict(self, payload: dict, headers: dict | None = None) -> dict:
            return payload

    ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False).start([Sample(), Echo()])


def starlette_peer(port: int, artifact_dir: Path) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    answer = decoder(artifact_dir)

    async def sample(request: Request) -> Response:
        return Response(answer(json.loads(await request.body())), media_type="application/x-npy")

    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")

    app = Starlette(routes=[Route("/predictions/sample", sample, methods=["POST"]),
                            Route("/predictions/echo", echo, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("kind", choices=list(PATHS))
    cli.add_argument("--port", type=int, required=True)
    cli.add_argument("--artifacts", type=Path, default=artifacts.DEFAULT_DIR)
    args = cli.parse_args(argv)
    sys.argv = sys.argv[:1]  # KServe reads sys.argv when imported
    (kserve_peer if args.kind == "kserve" else starlette_peer)(args.port, args.artifacts)


if __name__ == "__main__":
    main()
