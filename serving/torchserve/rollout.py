"""A live roll-out on the TorchServe host (``serving/rollout.py`` says what the command does), through TorchServe's
model versions: each route's new build is archived (its version: the build's identity) and registered beside the
serving one with its own workers, probed on its version's URL (the route's example, and decode's images against
the export's fp32 decoder), then made each route's default version (TorchServe switches every request from then
on); the old version is unregistered once its queue is empty, which stops its workers. A refused build is
unregistered again and the old one serves on. TorchServe has no traffic split between versions: no canary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fmvae_client import ClientError, request

from runtime import artifacts, backends
from runtime.manifest import Manifest
from serving.errors import RolloutError
from serving.host import QUIET_SECONDS
from serving.rollout import Request
from serving.routes import ROUTES, example_for
from serving.settings import MODELS
from serving.torchserve import archive

if TYPE_CHECKING:  # the host imports this module
    from serving.torchserve.host import TorchServe

PARITY_LATENTS = 16  # prior draws the new decode build answers against its export's fp32 decoder
PSNR_MIN_DB = 40.0  # the export's parity bar (export/config.py)


def rollout(host: TorchServe, routes: dict[str, Path], request_: Request, say: Callable[[str], None]) -> None:
    """Register, probe, switch, drain (the module's docstring); RolloutError with nothing changed when refused."""
    if request_.canary:
        raise RolloutError("TorchServe has no traffic split between a model's versions: a canary needs the KServe "
                           "host (--server kserve)")
    store = host.config.torchserve.model_store.resolve()
    registered: dict[str, str] = {}
    started = time.monotonic()
    try:
        for route, folder in routes.items():
            version = Manifest.read(folder).identity
            # A file name of its own: TorchServe unpacks an archive into a folder named after its file
            built = archive.build(f"{route}-{version}", MODELS[route], folder, store)
            manage(host, "POST", f"/models?url={built.name}&model_name={route}"
                                 f"&initial_workers={MODELS[route].workers}&synchronous=true")
            registered[route] = version
            probe(host, route, version, folder)
        say(f"registered and probed {', '.join(f'{r} {v}' for r, v in registered.items())} in "
            f"{time.monotonic() - started:.1f} s")
    except (RolloutError, ClientError, OSError, ValueError) as e:
        for route, version in registered.items():
            try:
                manage(host, "DELETE", f"/models/{route}/{version}")
            except (ClientError, RolloutError):
                pass
        raise RolloutError(f"the new build was refused, the old one serves on: {e}") from None
    old = {route: host.versions[route] for route in registered}
    for route, version in registered.items():
        manage(host, "PUT", f"/models/{route}/{version}/set-default")
        host.versions[route] = version
        host.archives[route] = store / f"{route}-{version}.mar"
    say(f"switched {', '.join(registered)} to the new build (TorchServe's default version)")
    drained = time.monotonic()
    for route, version in old.items():
        wait_empty(host, route, version)
        manage(host, "DELETE", f"/models/{route}/{version}")
    say(f"the old build drained and was unregistered (its workers stopped) in {time.monotonic() - drained:.1f} s")


def manage(host: TorchServe, method: str, path: str) -> Any:
    """One call of TorchServe's management API; RolloutError with TorchServe's message unless it answered 200."""
    answer = request(method, f"{host.management_url}{path}", keys=host.keys("management"), timeout=300)
    if answer.status != 200:
        try:
            said = json.loads(answer.body)["message"]
        except (ValueError, KeyError, TypeError):
            said = " ".join(answer.body[:300].decode(errors="replace").split())
        raise RolloutError(f"TorchServe answered {method} {path.split('?')[0]} with {answer.status}: {said}")
    return json.loads(answer.body or b"{}")


def probe(host: TorchServe, route: str, version: str, folder: Path) -> None:
    """The new version answers the route's example (200, naming its build); decode's answers for prior draws are
    the export's fp32 decoder's images (at least the parity bar)."""
    latent_dim = Manifest.read(folder).shapes.latent_dim
    operation = ROUTES[route].operation
    body = example_for(operation, latent_dim) | {"format": "npy"}
    answer = request("POST", f"{host.url}/predictions/{route}/{version}", body, host.keys("inference"), timeout=60)
    if answer.status != 200 or answer.headers.get("x-model-build") != version:
        raise RolloutError(f"{route}: its example answered {answer.status} from build "
                           f"{answer.headers.get('x-model-build')}: {answer.body[:200].decode(errors='replace')}")
    if operation != "decode":
        return
    z = np.random.default_rng(0).standard_normal((PARITY_LATENTS, latent_dim)).astype(np.float32)
    answer = request("POST", f"{host.url}/predictions/{route}/{version}", {"latents": z.tolist(), "format": "npy"},
                     host.keys("inference"), timeout=60)
    served = answer.value().astype(np.float64)
    reference = 1 / (1 + np.exp(-backends.load(artifacts.DECODERS["onnx-fp32"], folder)(z).astype(np.float64)))
    mse = float(np.mean((served.reshape(reference.shape) - reference) ** 2))
    psnr = 10 * np.log10(1 / mse) if mse > 0 else np.inf
    if psnr < PSNR_MIN_DB:
        raise RolloutError(f"{route}: its images are {psnr:.1f} dB from the export's fp32 decoder (bar "
                           f"{PSNR_MIN_DB:g} dB): not this export's model")


def wait_empty(host: TorchServe, route: str, version: str, timeout: float = 60) -> None:
    """Until nothing waits in the version's queue, for QUIET_SECONDS in a row (at most ``timeout``)."""
    deadline, quiet = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        described = manage(host, "GET", f"/models/{route}/{version}")
        if any(d.get("jobQueueStatus", {}).get("pendingRequests", 0) for d in described):
            quiet = time.monotonic()
        elif time.monotonic() - quiet >= QUIET_SECONDS:
            return
        time.sleep(0.05)
