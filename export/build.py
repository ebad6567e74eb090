"""Write the serving artifacts of one VAE into a folder: decoders (TorchScript fp32 and int8 and ONNX fp32 and int8
for CPUs, TorchScript fp16 for GPUs) and encoders (posterior mean and log-variance, fp32).

There is no ONNX fp16 decoder: ONNX Runtime's CPU provider has no fp16 convolution (the gate runs on CPU) and
the GPU hosts this project measures on have no CUDA provider, so it could neither be checked nor served there.
There is no bf16 decoder: fp16 is closer to fp32 (80 against 62 dB PSNR) and no GPU run has shown bf16 faster;
``bench.gpu`` measures a bf16 cast of the fp32 decoder in process.

The TorchScript int8 decoder is PyTorch's static int8 (eager mode) of the two middle convolutions, which hold
most of the decoder's multiply-adds: per-channel 7-bit weights, 8-bit activations calibrated on prior draws. The
Linear that reads the latent and the last convolution, which writes the logits, stay fp32 (``static_int8``).
``python -m bench.quantization`` compares the qconfigs and gates the artifact on both kinds of CPU.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor, nn
from torch.ao import quantization as tq
from torch.ao.nn.intrinsic import ConvReLU2d

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


def onnx_int8(fp32_path: Path, path: Path, calibration: np.ndarray) -> None:
    """Static int8 quantization of the convolutions (QOperator QLinearConv, per-channel weights), calibrated on
    ``calibration`` latents (draws from the model's prior).

    Static rather than dynamic: dynamic quantization turns Conv into ConvInteger, which ran 8x slower than
    fp32 here; QLinearConv runs on the CPU's int8 dot-product instructions. Percentile calibration (clip
    the 0.001% tails of each activation) measured 1.3 dB better than min/max.
    """
    prepared = path.with_name(path.stem + ".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(path), PriorCalibration(calibration), quant_format=QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=fp32_nodes(onnx.load(str(prepared)).graph),
                    calibrate_method=CalibrationMethod.Percentile)
    prepared.unlink()


# 7-bit weights: on CPUs without VNNI fbgemm's and oneDNN's int8 kernels add pairs of uint8 x int8 products in
# int16, which 8-bit activations times 7-bit weights cannot overflow (255 * 64 * 2 < 2**15), so the int8 decoder
# computes the same on both kinds of CPU. 8-bit activations (not torch's x86 default of 7) because the activations'
# rounding costs more than the weights' (bench/quantization.py).
INT8_QCONFIG = tq.QConfig(activation=tq.HistogramObserver.with_args(reduce_range=False),
                          weight=tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, quant_min=-64, quant_max=63,
                                                                       qscheme=torch.per_channel_symmetric))


class StaticInt8Decoder(nn.Module):
    """``LowResDecoder`` prepared for static quantization: the Linear, the first ReLU and the last convolution (to
    the logits) run fp32; between a QuantStub and a DeQuantStub, the two middle convolutions fused with their ReLUs
    are what ``prepare``/``convert`` quantize."""

    def __init__(self, decoder: LowResDecoder) -> None:
        super().__init__()
        relu, conv7, relu7, conv14, relu14, conv_out, shuffle = (copy.deepcopy(m) for m in decoder.conv)
        self.channels = decoder.channels
        self.fc = copy.deepcopy(decoder.fc)
        self.relu = relu
        self.int8 = nn.Sequential(tq.QuantStub(), ConvReLU2d(conv7, relu7), ConvReLU2d(conv14, relu14),
                                  tq.DeQuantStub())
        self.out = nn.Sequential(conv_out, shuffle)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.int8(self.relu(self.fc(z).view(-1, self.channels, 7, 7))))


def static_int8(decoder: LowResDecoder, calibration: np.ndarray, qconfig: tq.QConfig = INT8_QCONFIG,
                batch: int = 64) -> nn.Module:
    """``decoder`` with its middle convolutions in static int8 under ``qconfig``, the activations' ranges observed
    on ``calibration`` latents in batches of ``batch`` (a copy)."""
    model = StaticInt8Decoder(decoder).eval()
    model.int8.qconfig = qconfig
    with warnings.catch_warnings(), torch.no_grad():  # torch.ao's eager quantization warns that it moves to torchao
        warnings.simplefilter("ignore")
        tq.prepare(model, inplace=True)
        for part in torch.from_numpy(calibration).split(batch):
            model(part)
        return tq.convert(model)


@dataclass(frozen=True)
class Sources:
    """What the builders make the artifacts from: the model, its decoder as exported (``LowResDecoder``), example
    inputs, the int8 decoders' calibration latents (prior draws), the settings, and the artifacts' paths (a builder
    may start from an artifact built before it)."""

    model: VAE
    decoder: nn.Module
    z: Tensor
    x: Tensor
    calibration: np.ndarray
    cfg: ExportConfig
    paths: dict[str, Path]


# One builder per backend of runtime/artifacts.py, run in the records' order (onnx-int8 starts from onnx-fp32):
# a new backend is its record, its runtime adapter (runtime/backends.py) and its builder here; the parity gate
# (export/parity.py) checks every record's artifact.
BUILDERS: dict[str, Callable[[Sources, Path], None]] = {
    "decoder/torchscript-fp32": lambda s, path: torchscript(s.decoder, s.z, path),
    "decoder/torchscript-fp16": lambda s, path: torchscript(CastDecoder(s.decoder, torch.float16), s.z, path),
    "decoder/torchscript-int8": lambda s, path: torchscript(static_int8(s.decoder, s.calibration), s.z, path),
    "decoder/onnx-fp32": lambda s, path: onnx_fp32(s.decoder, s.z, path, "z", ["logits"], s.cfg.opset),
    "decoder/onnx-int8": lambda s, path: onnx_int8(s.paths["decoder/onnx-fp32"], path, s.calibration),
    "encoder/torchscript-fp32": lambda s, path: torchscript(s.model.encoder, s.x, path),  # images -> (mu, logvar)
    "encoder/onnx-fp32": lambda s, path: onnx_fp32(s.model.encoder, s.x, path, "x", ["mu", "logvar"], s.cfg.opset),
}


def build(model: VAE, out: Path, cfg: ExportConfig) -> dict[str, Path]:
    """Write every backend's artifact into ``out``; returns {"decoder/<backend>" or "encoder/<backend>": path}."""
    model = model.eval()
    paths = {f"decoder/{k}": out / v.artifact for k, v in DECODERS.items()}
    paths |= {f"encoder/{k}": out / v.artifact for k, v in ENCODERS.items()}
    sources = Sources(model, LowResDecoder(model.decoder).eval(),  # same logits, every conv at 7x7: export/lowres.py
                      torch.zeros(2, model.latent_dim), torch.zeros(2, *IMAGE_SHAPE),
                      prior_latents(model, cfg.calibration_samples, cfg.seed + 1), cfg, paths)
    for key, path in paths.items():
        BUILDERS[key](sources, path)
    return paths
