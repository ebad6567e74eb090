"""One small interface over the exported artifacts: ``decode(z) -> logits`` and ``encode(x) -> (mu, logvar)``.

Used by the TorchServe workers, the parity gate and the benchmarks. Inputs and outputs are float32 numpy
arrays: z (N, latent_dim), images (N, 1, 28, 28) in [0, 1], logits (N, 1, 28, 28) (the shapes in the manifest).
On a CUDA device a TorchScript decoder can also replay CUDA graphs captured for fixed batch sizes
(``GraphedDecoder``). Devices are strings ("cpu", "cuda:0"). torch is needed for TorchScript only: an install
without it (the KServe host's CPU image) opens ONNX artifacts, and ``TORCH_MISSING`` says why it cannot open more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from runtime.artifacts import Backend

try:
    import torch
    TORCH_MISSING = None
except ImportError:  # an ONNX-only install
    torch = None
    TORCH_MISSING = "torch is not installed here (an ONNX Runtime-only install)"

if TYPE_CHECKING:
    from torch import Tensor

# (the module's forward, its static input) -> (replay, its static output): fills the output from the input again
GraphCapture = Callable[[Callable[["Tensor"], "Tensor"], "Tensor"], tuple[Callable[[], None], "Tensor"]]
WARMUP_CALLS = 3  # TorchScript's profiling executor settles its graph within the first calls; capture after them


class TorchScriptModule:
    """A TorchScript file run with torch.jit on CPU or a CUDA device."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        if torch is None:
            raise RuntimeError(f"{path}: {TORCH_MISSING}")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def __call__(self, array: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(array).to(self.device))
        if isinstance(out, tuple):
            return tuple(t.float().cpu().numpy() for t in out)
        return out.float().cpu().numpy()


def cuda_capture(forward: Callable[[Tensor], Tensor], static: Tensor) -> tuple[Callable[[], None], Tensor]:
    """Capture ``forward(static)`` as a CUDA graph after warm-up calls on a side stream (PyTorch's recipe)."""
    stream = torch.cuda.Stream(device=static.device)
    stream.wait_stream(torch.cuda.current_stream(static.device))
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(WARMUP_CALLS):
            forward(static)
    torch.cuda.current_stream(static.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = forward(static)
    return graph.replay, out


class GraphedDecoder:
    """A TorchScript decoder whose calls for the batch sizes ``batches`` are captured graphs: a call of n latents
    copies them into the static input of the smallest captured size that holds them, replays that graph and returns
    the first n rows (the rest are whatever an earlier call left there, and are cut off). Larger calls run the
    module. ``capture`` is ``cuda_capture`` on a GPU; ``replays`` counts the calls that replayed a graph."""

    def __init__(self, decoder: TorchScriptModule, latent_dim: int, batches: list[int] | tuple[int, ...],
                 capture: GraphCapture) -> None:
        self.decoder = decoder
        self.graphs: dict[int, tuple[Tensor, Callable[[], None], Tensor]] = {}
        for n in sorted(set(batches)):
            static = torch.zeros(n, latent_dim, device=decoder.device)
            self.graphs[n] = (static, *capture(decoder.module, static))
        self.replays = 0

    def __call__(self, z: np.ndarray) -> np.ndarray:
        n = len(z)
        size = next((b for b in self.graphs if b >= n), None)
        if size is None:
            return self.decoder(z)
        static, replay, out = self.graphs[size]
        with torch.no_grad():
            static[:n].copy_(torch.from_numpy(z))
            replay()
            self.replays += 1
            return out[:n].float().cpu().numpy()


class OnnxModule:
    """An ONNX file run with ONNX Runtime; CUDA provider first when ``device`` is a CUDA device."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers: list[Any] = ["CPUExecutionProvider"]
        kind, _, index = str(device).partition(":")
        if kind == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(index or 0)}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, array: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(array, dtype=np.float32)})
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


Network = TorchScriptModule | OnnxModule


def torchscript_unavailable(kind: str) -> str | None:
    """Why TorchScript cannot run on a ``kind`` device here (None: it can)."""
    return TORCH_MISSING


def onnx_unavailable(kind: str) -> str | None:
    """Why ONNX Runtime cannot run on a ``kind`` device here (None: it can): on CUDA it needs its CUDA provider."""
    if kind == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime has no CUDAExecutionProvider (providers: {', '.join(ort.get_available_providers())})"
    return None


@dataclass(frozen=True)
class Runtime:
    """How one kind of artifact runs: ``open(path, device, threads)`` gives a network, ``unavailable(kind)`` says
    why it cannot run on a kind of device ("cpu", "cuda") in this process (None: it can)."""

    open: Callable[[Path, str, int | None], Network]
    unavailable: Callable[[str], str | None]


# The runtime adapters, by ``Backend.runtime``: a backend of a new kind is its record (runtime/artifacts.py), its
# adapter here and its builder in export/build.py.
RUNTIMES = {"torchscript": Runtime(TorchScriptModule, torchscript_unavailable),
            "onnx": Runtime(OnnxModule, onnx_unavailable)}


def load(backend: Backend, where: str | Path, device: str = "cpu", threads: int | None = None) -> Network:
    """Open ``backend``'s artifact with the runtime its record names: ``where`` is the export folder that holds it
    under its record's file name, or the artifact file itself."""
    path = Path(where) / backend.artifact if Path(where).is_dir() else Path(where)
    return RUNTIMES[backend.runtime].open(path, device, threads)
