"""torch modules of the compression unit (kept apart so that ``compiler.codec`` stays importable
for parsing and ratios without torch). The method is described in ``compiler.codec``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from splitpack.compiler.codec import CodecSpec, check_codec_fits, cut_channels, kept_channels

# Clipping candidates of the range calibration, as (low, high) percentiles; (0, 100) is min/max.
_CLIP_PERCENTILES = ((0.0, 100.0), (0.01, 99.99), (0.1, 99.9), (0.5, 99.5), (1.0, 99.0), (2.0, 98.0))
_CALIBRATION_VALUES = 200_000  # values per channel used to calibrate (a seeded subsample)
_PCA_VECTORS = 100_000


def calibrate_range(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, step) of a ``bits``-bit uniform quantizer for ``values`` (M, C).

    Each channel takes, among min/max and a few percentile clips, the range with the least
    squared quantization error over ``values``. A constant channel gets a unit step.
    """
    levels = 2**bits - 1
    values = np.asarray(values, dtype=np.float64)
    best_error = np.full(values.shape[1], np.inf)
    best_low = values.min(axis=0)
    best_step = np.ones(values.shape[1])
    for low_pct, high_pct in _CLIP_PERCENTILES:
        low = np.percentile(values, low_pct, axis=0)
        high = np.percentile(values, high_pct, axis=0)
        step = np.where(high - low > 1e-12, (high - low) / levels, 1.0)
        codes = np.clip(np.rint((values - low) / step), 0, levels)
        error = ((codes * step + low - values) ** 2).mean(axis=0)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_low = np.where(better, low, best_low)
        best_step = np.where(better, step, best_step)
    return best_low.astype(np.float32), best_step.astype(np.float32)


def _patch_vectors(features: np.ndarray, stride: int) -> np.ndarray:
    """(N, C, H, W) -> (N·H/s·W/s, C·s·s) in a conv weight's (C, s, s) order; (N, ..., D) -> (M, D)."""
    if features.ndim == 4:
        n, c, h, w = features.shape
        patches = features.reshape(n, c, h // stride, stride, w // stride, stride)
        return patches.transpose(0, 2, 4, 1, 3, 5).reshape(-1, c * stride * stride)
    return features.reshape(-1, features.shape[-1])


def _subsample(rows: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    if len(rows) <= count:
        return rows
    return rows[np.random.default_rng(seed).choice(len(rows), count, replace=False)]


def principal_components(features: np.ndarray, stride: int, components: int):
    """(mean per channel, top ``components`` principal directions (components, C·s·s)) of the
    s×s patches (or D-vectors) of ``features``, centred with the per-channel mean."""
    vectors = _subsample(_patch_vectors(features, stride), _PCA_VECTORS).astype(np.float64)
    channels = features.shape[1] if features.ndim == 4 else features.shape[-1]
    channel_mean = vectors.reshape(len(vectors), channels, -1).mean(axis=(0, 2))
    centred = vectors - np.repeat(channel_mean, vectors.shape[1] // channels)
    covariance = centred.T @ centred / max(1, len(centred) - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:components]
    return channel_mean.astype(np.float32), eigenvectors[:, order].T.astype(np.float32)


class Quantizer(nn.Module):
    """Per-channel uniform quantizer with a learned range: code = clip(round((z - low) / step)).

    Shared by the encoder (quantize) and the decoder (dequantize), so that both always use the
    same range. Training mode returns the dequantized value with a straight-through estimator
    for the rounding; the clip passes no gradient outside the range, while ``low`` and ``step``
    get gradients from every value (as in learned step size quantization).
    """

    def __init__(self, channels: int, bits: int, channel_dim: int, low=None, step=None):
        super().__init__()
        self.levels = 2**bits - 1
        self.channel_dim = channel_dim
        low = np.full(channels, -1.0, np.float32) if low is None else low
        step = np.full(channels, 2.0 / self.levels, np.float32) if step is None else step
        self.low = nn.Parameter(torch.from_numpy(np.asarray(low, np.float32).copy()))
        self.log_step = nn.Parameter(torch.from_numpy(np.log(np.asarray(step, np.float32))))

    def _shaped(self, value: torch.Tensor, rank: int) -> torch.Tensor:
        if self.channel_dim == 1 and rank == 4:
            return value.reshape(1, -1, 1, 1)
        return value

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        low, step = self._shaped(self.low, z.dim()), self._shaped(self.log_step.exp(), z.dim())
        units = torch.clamp((z - low) / step, 0.0, float(self.levels))
        if self.training:
            rounded = units + (torch.round(units) - units).detach()
            return rounded * step + low
        return torch.round(units).to(torch.uint8)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        low, step = self._shaped(self.low, codes.dim()), self._shaped(self.log_step.exp(), codes.dim())
        return codes.to(torch.float32) * step + low


class Encoder(nn.Module):
    """features → projection (none for calibrated quantization) → quantizer → uint8 codes."""

    def __init__(self, projection: nn.Module | None, quantizer: Quantizer):
        super().__init__()
        self.project = projection if projection is not None else nn.Identity()
        self.quantizer = quantizer

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.project(features))


class Decoder(nn.Module):
    """codes → dequantize → back-projection → + residual refinement (zero at the start)."""

    def __init__(self, quantizer: Quantizer, back: nn.Module | None, refine: nn.Module | None):
        super().__init__()
        self.quantizer = quantizer
        self.back = back if back is not None else nn.Identity()
        self.refine = refine

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        # training: the encoder's straight-through path already gives dequantized floats
        values = self.quantizer.dequantize(codes) if codes.dtype == torch.uint8 else codes
        restored = self.back(values)
        return restored + self.refine(restored) if self.refine is not None else restored


def _refinement(cut_shape: tuple[int, ...]) -> nn.Module:
    if len(cut_shape) == 3:
        channels = cut_shape[0]
        last = nn.Conv2d(channels, channels, 1)
        body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), last)
    else:
        dim = cut_shape[-1]
        last = nn.Linear(dim, dim)
        body = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), last)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return body


def _projections(cut_shape: tuple[int, ...], codec: CodecSpec, calibration: np.ndarray | None):
    """(encoder projection, decoder back-projection), initialized from the principal components
    of ``calibration`` (random when it is None); None, None when the unit keeps the tensor as is."""
    full = cut_channels(cut_shape)
    channels, stride = codec.channels, codec.stride
    if len(cut_shape) == 3:
        project = nn.Conv2d(full, channels, kernel_size=stride, stride=stride)
        back = (nn.ConvTranspose2d(channels, full, kernel_size=stride, stride=stride) if stride > 1
                else nn.Conv2d(channels, full, kernel_size=1))
    else:
        project, back = nn.Linear(full, channels), nn.Linear(channels, full)
    with torch.no_grad():
        if channels == full and stride == 1:
            eye = torch.eye(full)
            project.weight.copy_(eye.reshape(project.weight.shape))
            back.weight.copy_(eye.reshape(back.weight.shape))
            project.bias.zero_(), back.bias.zero_()
        elif calibration is not None:
            mean, directions = principal_components(calibration, stride, channels)
            patch_mean = np.repeat(mean, directions.shape[1] // full)
            weight = torch.from_numpy(directions)  # (C', C·s·s)
            project.weight.copy_(weight.reshape(project.weight.shape))
            project.bias.copy_(torch.from_numpy(-(directions @ patch_mean)))
            # Conv2d weight (C, C', 1, 1) / ConvTranspose2d (C', C, s, s) / Linear (C, C')
            back.weight.copy_(weight.T.reshape(back.weight.shape) if isinstance(back, (nn.Conv2d, nn.Linear))
                              else weight.reshape(back.weight.shape))
            back.bias.copy_(torch.from_numpy(mean))
    return project, back


def build_modules(cut_shape: tuple[int, ...], codec: CodecSpec, calibration: np.ndarray | None = None):
    """Encoder and decoder of ``codec`` at a cut of ``cut_shape``, calibrated on ``calibration``."""
    channel_dim = 1 if len(cut_shape) == 3 else -1
    channels = kept_channels(cut_shape, codec)
    if codec.method == "calibrated":
        project, back, refine = None, None, None
    else:
        project, back = _projections(cut_shape, codec, calibration)
        refine = _refinement(cut_shape)
    low = step = None
    if calibration is not None:
        with torch.no_grad():
            sample = torch.from_numpy(np.ascontiguousarray(_subsample(calibration, 2048)))
            projected = (project(sample) if project is not None else sample).numpy()
        if projected.ndim == 4:
            values = projected.transpose(0, 2, 3, 1).reshape(-1, channels)
        else:
            values = projected.reshape(-1, channels)
        low, step = calibrate_range(_subsample(values, _CALIBRATION_VALUES), codec.bits)
    quantizer = Quantizer(channels, codec.bits, channel_dim, low, step)
    return Encoder(project, quantizer), Decoder(quantizer, back, refine)


def build_codec_modules(cut_shape: tuple[int, ...], codec: CodecSpec, calibration=None):
    """Build the torch encoder and decoder for one codec at one cut.

    Args:
        cut_shape: per-sample shape of the cut tensor.
        codec: the codec.
        calibration: training features at the cut, float32 (N, *cut_shape). They set the
            projections (principal components, or the identity when every channel is kept) and
            the quantization ranges; without them the projections are the identity or random and
            the range is [-1, 1] (for tests that do not train).

    Returns:
        ``(encoder, decoder)``: ``encoder(features) -> codes`` (uint8 in eval mode; in training
        mode it returns dequantized values through a straight-through estimator) and
        ``decoder(codes) -> features``.
    """
    check_codec_fits(cut_shape, codec)
    return build_modules(cut_shape, codec, calibration)
