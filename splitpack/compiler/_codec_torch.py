"""torch modules of the compression unit (kept apart so that ``compiler.codec`` stays importable
for parsing and ratios without torch)."""

from __future__ import annotations

import torch
from torch import nn

from splitpack.compiler.codec import CodecSpec, quantization_params


class Encoder(nn.Module):
    """features → (strided) 1×1 projection → clamp → b-bit codes.

    In training mode the output is the dequantized value, with a straight-through estimator so
    that gradients pass the rounding; in eval mode it is the uint8 code itself, which is what
    the exported head emits.
    """

    def __init__(self, cut_shape: tuple[int, ...], codec: CodecSpec):
        super().__init__()
        self.bits = codec.bits
        scale, offset = quantization_params(codec.bits)
        self.scale, self.offset = scale, offset
        if len(cut_shape) == 3:
            self.project = nn.Sequential(
                nn.Conv2d(cut_shape[0], codec.channels, kernel_size=codec.stride, stride=codec.stride),
                nn.BatchNorm2d(codec.channels),
            )
        else:
            self.project = nn.Sequential(nn.Linear(cut_shape[-1], codec.channels), _LastDimNorm(codec.channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = torch.clamp(self.project(features), -1.0, 1.0)
        levels = torch.round((z - self.offset) / self.scale)
        if self.training:
            return z + (levels * self.scale + self.offset - z).detach()
        return levels.to(torch.uint8)


class _LastDimNorm(nn.Module):
    """BatchNorm over the last dimension of (N, D) or (N, T, D) tensors (folds into the Linear
    at export, like BatchNorm2d into the Conv)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.norm(x)
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class Decoder(nn.Module):
    """codes → dequantize → 1×1 (transposed when strided) back to C → norm → ReLU → 1×1."""

    def __init__(self, cut_shape: tuple[int, ...], codec: CodecSpec):
        super().__init__()
        self.scale, self.offset = quantization_params(codec.bits)
        if len(cut_shape) == 3:
            channels = cut_shape[0]
            expand = (
                nn.ConvTranspose2d(codec.channels, channels, kernel_size=codec.stride, stride=codec.stride)
                if codec.stride > 1
                else nn.Conv2d(codec.channels, channels, kernel_size=1)
            )
            self.body = nn.Sequential(expand, nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 1))
        else:
            dim = cut_shape[-1]
            self.body = nn.Sequential(nn.Linear(codec.channels, dim), _LastDimNorm(dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dtype == torch.uint8:
            values = codes.to(torch.float32) * self.scale + self.offset
        else:  # training: already dequantized by the encoder's straight-through path
            values = codes
        return self.body(values)


def build_modules(cut_shape: tuple[int, ...], codec: CodecSpec) -> tuple[Encoder, Decoder]:
    return Encoder(cut_shape, codec), Decoder(cut_shape, codec)
