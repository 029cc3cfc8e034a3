"""Measure accuracy through the emitted ONNX artifacts, exactly as a device and an edge run them:
head → codes → bit-pack → unpack → tail, in ONNX Runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from splitpack.compiler.train import run_onnx
from splitpack.errors import InternalError
from splitpack.formats.wire import round_trip_codes

__all__ = ["SplitEvaluation", "accuracy_percent", "evaluate_model", "evaluate_split"]


def accuracy_percent(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of (N, classes) outputs against integer labels."""
    return float(100.0 * np.mean(np.argmax(outputs, axis=-1) == labels))


@dataclass(frozen=True, eq=False)
class SplitEvaluation:
    """Outputs of a head/tail pair over a test split, and their accuracy."""

    accuracy: float
    outputs: np.ndarray
    codes: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.outputs, axis=-1)


def evaluate_model(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (percent) of a whole ONNX model in ONNX Runtime."""
    return accuracy_percent(run_onnx(model, x), y)


def evaluate_split(head: onnx.ModelProto, tail: onnx.ModelProto, x: np.ndarray, y: np.ndarray, bits: int) -> SplitEvaluation:
    """Run ``head``, pack its codes to ``bits`` bits and back, run ``tail``; measure accuracy.

    Raises:
        InternalError: when the codes leave the b-bit range or the packing is not exact.
    """
    codes = run_onnx(head, x)
    if codes.dtype != np.uint8 or int(codes.max(initial=0)) >= 2**bits:
        raise InternalError(f"head emitted codes of dtype {codes.dtype} up to {codes.max()} for {bits}-bit codes")
    unpacked = round_trip_codes(codes, bits)
    if not np.array_equal(unpacked, codes):
        raise InternalError("bit-packing of the codes is not exact")
    outputs = run_onnx(tail, unpacked)
    return SplitEvaluation(accuracy=accuracy_percent(outputs, y), outputs=outputs, codes=codes)
