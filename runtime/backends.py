"""One small interface over the exported artifacts: ``decode(z) -> logits`` and ``encode(x) -> (mu, logvar)``.

Used by the TorchServe workers, the parity gate and the benchmarks. Inputs and outputs are float32 numpy
arrays: z (N, latent_dim), images (N, 1, 28, 28) in [0, 1], logits (N, 1, 28, 28) (the shapes in the manifest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


class TorchScriptModule:
    """A TorchScript file run with torch.jit on CPU or a CUDA device."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
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


class OnnxModule:
    """An ONNX file run with ONNX Runtime; CUDA provider first when ``device`` is a CUDA device."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            index = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, array: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(array, dtype=np.float32)})
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def load(path: str | Path, device: str = "cpu", threads: int | None = None) -> TorchScriptModule | OnnxModule:
    """Open an artifact with the runtime its file extension names (.pt TorchScript, .onnx ONNX Runtime)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxModule(path, device, threads)
    if path.suffix == ".pt":
        return TorchScriptModule(path, device, threads)
    raise ValueError(f"{path}: unknown artifact type (expected .pt or .onnx)")
