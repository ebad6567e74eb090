"""Write the serving artifacts of one VAE into a folder: decoders (TorchScript fp32 and int8 and ONNX fp32 and int8
for CPUs, TorchScript fp16 for GPUs) and encoders (posterior mean and log-variance, fp32).

There is no ONNX fp16 decoder: ONNX Runtime's CPU provider has no fp16 convolution (the gate runs on CPU) and
the GPU hosts this project measures on have no CUDA provider, so it could neither be checked nor served there.
There is no bf16 decoder: fp16 is closer to fp32 (80 against 62 dB PSNR) and no GPU run has shown bf16 faster;
``bench.gpu`` measures a bf16 cast of the fp32 decoder in process.

The TorchScript int8 decoder is PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``) of the
one Linear layer, the only kind of layer it quantizes: per-channel int8 weights, activations quantized per call
from their range in the batch (fbgemm's kernels use 7 of the 8 bits on CPUs without VNNI, so they cannot
saturate). Its outputs therefore depend a little on the batch. ``python -m bench.quantization`` compares the
qconfigs; docs/export.md says why this API and what a move to torchao would take.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor, nn
from torch.ao.quantization import QConfig, per_channel_dynamic_qconfig, quantize_dynamic

from export.config import ExportConfig
from export.lowres import LowResDecoder
from runtime.artifacts import DECODERS, ENCODERS
from training.model import IMAGE_SHAPE, VAE


class CastDecoder(nn.Module):
    """``decoder`` with its weights and arithmetic in ``dtype``: float32 latents in, float32 logits out, so that every
    decoder artifact has the same interface."""

    def __init__(self, decoder: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.decoder = copy.deepcopy(decoder).to(dtype)
        self.dtype = dtype

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(z.to(self.dtype)).float()


def prior_latents(model: VAE, n: int, seed: int) -> np.ndarray:
    """``n`` fixed-seed draws from the model's prior (N(0, I) or its learned mixture), float32 (n, latent_dim)."""
    with torch.no_grad():
        return model.prior.sample(n, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu")).numpy()


class PriorCalibration(CalibrationDataReader):
    """Calibration batches of prior samples for ONNX Runtime's static quantization."""

    def __init__(self, latents: np.ndarray, batch: int = 64) -> None:
        self.batches: Iterator[np.ndarray] = iter(np.array_split(latents, max(1, len(latents) // batch)))

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {"z": batch}


def torchscript(module: nn.Module, example: Tensor, path: Path) -> None:
    """Trace ``module`` on ``example`` and save it (torch.jit is deprecated in torch 2.13 but still supported).
    The trace is not re-run to check itself: the parity gate compares every artifact with the eager model."""
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(module.eval(), example, check_trace=False), str(path))


def onnx_fp32(module: nn.Module, example: Tensor, path: Path, input_name: str, output_names: list[str],
              opset: int) -> None:
    """Export with the TorchScript-based ONNX exporter and a dynamic batch axis.

    The default (dynamo) exporter's graph failed ONNX Runtime's quantization shape inference; the
    legacy exporter's graph quantizes cleanly, so both ONNX decoders come from it.
    """
    with torch.no_grad():
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=output_names,
                          dynamic_axes={name: {0: "batch"} for name in (input_name, *output_names)})


def fp32_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes left in fp32 by the int8 ONNX decoder.

    - Gemm (the latent-to-7x7 Linear): ONNX Runtime's per-channel QGemm was slower than the fp32 Gemm plus
      the quantize/dequantize pair around it at every batch size measured (whole decoder, 1 thread: batch 1
      0.33 -> 0.29 ms, batch 64 6.9 -> 6.7 ms), and quantizing it cost 3.7 dB of PSNR (48.5 -> 44.9 dB).
    - Reshape: a quantized Reshape after QGemm decoded garbage (PSNR 9.9 dB against fp32); it is only a view.
    - The last Conv (to the 16 output sub-pixels) and the DepthToSpace after it: quantizing the output logits
      to 8 bits cost 5 dB of PSNR (38.7 -> 43.4 dB).
    """
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    return [n.name for n in graph.node if n.op_type in ("Gemm", "Reshape", "DepthToSpace")] + convs[-1:]


def onnx_int8(fp32_path: Path, path: Path, model: VAE, cfg: ExportConfig) -> None:
    """Static int8 quantization of the convolutions (QOperator QLinearConv, per-channel weights), calibrated on
    draws from the model's prior.

    Static rather than dynamic: dynamic quantization turns Conv into ConvInteger, which ran 8x slower than
    fp32 here; QLinearConv runs on the CPU's int8 dot-product instructions. Percentile calibration (clip
    the 0.001% tails of each activation) measured 1.3 dB better than min/max.
    """
    prepared = path.with_name(path.stem + ".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    calibration = PriorCalibration(prior_latents(model, cfg.calibration_samples, cfg.seed + 1))
    quantize_static(str(prepared), str(path), calibration, quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=fp32_nodes(onnx.load(str(prepared)).graph),
                    calibrate_method=CalibrationMethod.Percentile)
    prepared.unlink()


def dynamic_int8(decoder: nn.Module, qconfig: QConfig = per_channel_dynamic_qconfig) -> nn.Module:
    """``decoder`` with its Linear layers dynamically quantized to int8 under ``qconfig`` (a copy)."""
    with warnings.catch_warnings():  # torch.ao's eager quantization warns that it moves to torchao (docs/export.md)
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(decoder).eval(), {nn.Linear: qconfig}, dtype=torch.qint8)


def build(model: VAE, out: Path, cfg: ExportConfig) -> dict[str, Path]:
    """Write every artifact into ``out``; returns {"decoder/<backend>" or "encoder/<backend>": path}."""
    model = model.eval()
    z = torch.zeros(2, model.latent_dim)
    x = torch.zeros(2, *IMAGE_SHAPE)
    decoder = LowResDecoder(model.decoder).eval()  # same logits, every conv at 7x7: see export/lowres.py
    paths = {f"decoder/{k}": out / v.artifact for k, v in DECODERS.items()}
    paths |= {f"encoder/{k}": out / v.artifact for k, v in ENCODERS.items()}
    torchscript(decoder, z, paths["decoder/torchscript-fp32"])
    torchscript(CastDecoder(decoder, torch.float16), z, paths["decoder/torchscript-fp16"])
    torchscript(dynamic_int8(decoder), z, paths["decoder/torchscript-int8"])
    onnx_fp32(decoder, z, paths["decoder/onnx-fp32"], "z", ["logits"], cfg.opset)
    onnx_int8(paths["decoder/onnx-fp32"], paths["decoder/onnx-int8"], model, cfg)
    torchscript(model.encoder, x, paths["encoder/torchscript-fp32"])  # images -> (mu, logvar)
    onnx_fp32(model.encoder, x, paths["encoder/onnx-fp32"], "x", ["mu", "logvar"], cfg.opset)
    return paths
