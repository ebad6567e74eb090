"""The trained decoder re-parametrized so that every convolution runs at 7x7: the graph all artifacts export.

The training decoder upsamples twice (nearest 7 -> 14, then a sub-pixel PixelShuffle 14 -> 28). A 3x3
convolution applied after a 2x upsampling equals a 3x3 convolution on the small input with 4x the output
channels, one per sub-pixel phase, followed by PixelShuffle(2); the same holds when the input is itself
a PixelShuffle(2) output. Applying this to the two convolutions at 14x14 gives

    Linear -> (128, 7, 7) -> ReLU -> Conv 128->64 -> ReLU -> Conv 64->128 -> ReLU -> Conv 128->16 -> PixelShuffle(4)

with the same outputs (to float rounding); a decoder trained with BatchNorm has it folded into the convolutions
first. Why: ONNX Runtime's int8 graph of the original spent more time in
its uint8 nearest Resize (1.9 ms at batch 64) than in either int8 convolution, and a DepthToSpace at
64 channels cost as much again; with all convolutions at 7x7 only one small DepthToSpace remains, at the end.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from training.model import Decoder


def fold_batch_norm(layers: nn.Sequential) -> list[nn.Module]:
    """``layers`` in eval mode with each Conv2d -> BatchNorm2d pair folded into one Conv2d (same outputs)."""
    folded: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d):
            if not folded or not isinstance(folded[-1], nn.Conv2d):
                raise ValueError("a BatchNorm2d that does not follow a Conv2d cannot be folded")
            folded[-1] = fuse_conv_bn_eval(folded[-1].eval(), layer.eval())
        else:
            folded.append(layer)
    return folded


def low_res_conv(conv: nn.Conv2d, input_shuffled: bool) -> nn.Conv2d:
    """``conv`` (3x3, padding 1) applied to a 2x upsampled input, as a 3x3 conv on the input itself.

    The upsampling is nearest (input: C channels) or, with ``input_shuffled``, PixelShuffle(2) (input: 4C
    channels). Output channel ``o * 4 + a * 2 + b`` is output ``o`` at sub-pixel phase (row a, column b), the
    order PixelShuffle(2) expects. High-res row ``2i + a + u`` (kernel offset u in -1..1) is low-res row
    ``i + (a + u) // 2`` at phase ``(a + u) % 2``; zero padding maps to zero padding.
    """
    if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.bias is None:
        raise ValueError(f"expected a 3x3 stride-1 padding-1 convolution with bias, got {conv}")
    weight = conv.weight.detach()
    out_ch, in_ch = weight.shape[:2]
    low_in = 4 * in_ch if input_shuffled else in_ch
    low = torch.zeros(out_ch, 4, low_in, 3, 3, dtype=weight.dtype)
    for a in range(2):
        for b in range(2):
            for u in (-1, 0, 1):
                for v in (-1, 0, 1):
                    di, phase_row = divmod(a + u, 2)
                    dj, phase_col = divmod(b + v, 2)
                    inputs = slice(phase_row * 2 + phase_col, None, 4) if input_shuffled else slice(None)
                    low[:, a * 2 + b, inputs, di + 1, dj + 1] += weight[:, :, u + 1, v + 1]
    new = nn.Conv2d(low_in, 4 * out_ch, 3, padding=1)
    new.weight.data = low.reshape(4 * out_ch, low_in, 3, 3)
    new.bias.data = conv.bias.detach().repeat_interleave(4)
    return new


def shuffle_twice_as_once(conv: nn.Conv2d) -> nn.Conv2d:
    """Reorder the 16 output channels of ``conv`` so that PixelShuffle(4) equals PixelShuffle(2) twice.

    ``conv``'s channel ``(p * 2 + q) * 4 + a * 2 + b`` (outer phase p, q; inner phase a, b) lands on output
    pixel ``(4i + 2a + p, 4j + 2b + q)``, which PixelShuffle(4) reads from channel ``(2a + p) * 4 + 2b + q``.
    """
    order = [(p * 2 + q) * 4 + a * 2 + b for a in range(2) for p in range(2) for b in range(2) for q in range(2)]
    conv.weight.data = conv.weight.data[order]
    conv.bias.data = conv.bias.data[order]
    return conv


class LowResDecoder(nn.Module):
    """``Decoder`` with all convolutions at 7x7 (see the module docstring); same logits (N, 1, 28, 28)."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        folded = fold_batch_norm(decoder.conv)
        layers = [type(m).__name__ for m in folded]
        expected = ["ReLU", "Conv2d", "ReLU", "Upsample", "Conv2d", "ReLU", "Conv2d", "PixelShuffle"]
        if layers != expected:
            raise ValueError(f"decoder layers {layers} are not the layout this rewrite knows ({expected})")
        _, conv7, _, _, conv14, _, conv_out, _ = folded
        self.channels = decoder.c3
        self.fc = copy.deepcopy(decoder.fc)
        self.conv = nn.Sequential(
            nn.ReLU(), copy.deepcopy(conv7), nn.ReLU(),
            low_res_conv(conv14, input_shuffled=False), nn.ReLU(),
            shuffle_twice_as_once(low_res_conv(conv_out, input_shuffled=True)), nn.PixelShuffle(4),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.conv(self.fc(z).view(-1, self.channels, 7, 7))
