"""Settings of ``splitpack compile``: one typed, closed record, from the command line and/or a
TOML file (unknown keys are errors)."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from splitpack.errors import InvalidConfigError
from splitpack.predictors import DEFAULT_SAMPLE_SECONDS

__all__ = ["CompileSettings", "load_settings", "parse_bandwidth"]


def parse_bandwidth(text: str) -> tuple[float, float]:
    """``0.5:100`` -> (0.5, 100.0) Mbit/s."""
    low, sep, high = text.partition(":")
    try:
        values = (float(low), float(high))
    except ValueError:
        values = None
    if not sep or values is None or not 0 < values[0] < values[1]:
        raise InvalidConfigError(f"bandwidth range {text!r} is malformed; write LOW:HIGH in Mbit/s with 0 < LOW < HIGH, e.g. 0.5:100")
    return values


# Training images the compression units see by default: a unit starts from the calibration (principal
# components or the identity), so a few epochs over a few thousand feature maps train it; on the CIFAR
# ResNet-20 one unit then takes under a minute here (benchmarks/README.md, `train_seconds`).
DEFAULT_TRAIN_LIMIT = 5000


class CompileSettings(BaseModel):
    """Everything ``compile`` needs besides the output folder. Field names match the options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    weights: str | None = None
    input_shape: str | None = None
    data: str = "digits"
    image_size: int | None = Field(default=None, ge=1)
    mean: list[float] | None = None
    std: list[float] | None = None
    train_limit: int | None = Field(default=DEFAULT_TRAIN_LIMIT, ge=1)
    test_limit: int | None = Field(default=None, ge=1)
    variants: int = Field(default=4, ge=1, le=5)
    max_accuracy_drop: float = Field(default=1.0, ge=0)
    bandwidth: str = "0.5:100"
    device_slowdown: float = Field(default=1.0, gt=0)
    tflite: bool = True
    budget: int = Field(default=20, ge=1)
    sample_seconds: float = Field(default=DEFAULT_SAMPLE_SECONDS, ge=0)  # 0: no time limit
    epochs: int = Field(default=3, ge=1)
    final_epochs: int = Field(default=3, ge=1)
    samples: int = Field(default=32, ge=1, le=1024)
    seed: int = Field(default=0, ge=0)

    @field_validator("bandwidth")
    @classmethod
    def _check_bandwidth(cls, value: str) -> str:
        parse_bandwidth(value)
        return value

    def fingerprint(self) -> str:
        """Hash of everything that changes what is trained (names the work folder)."""
        # a cell's training does not depend on how many cells are sampled: those settings key
        # the selection (compiler.pipeline.selection_key), and the cells are kept across them
        identity = self.model_dump(exclude={"variants", "max_accuracy_drop", "bandwidth", "device_slowdown", "tflite",
                                            "budget", "sample_seconds"})
        files = {"weights_sha256": self.weights,  # what a path names can change under it
                 "model_sha256": self.model if self.model.endswith(".onnx") else None,
                 "data_sha256": self.data[len("npz:"):] if self.data.startswith("npz:") else None}
        for key, path in files.items():
            if path and Path(path).expanduser().is_file():
                identity[key] = hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def load_settings(config: str | None, overrides: dict) -> CompileSettings:
    """Merge a TOML config file (optional) with command-line values (those not None win).

    Raises:
        InvalidConfigError: unreadable TOML, unknown keys, or values out of range, naming each.
    """
    values: dict = {}
    if config:
        path = Path(config)
        if not path.is_file():
            raise InvalidConfigError(f"config file {config!r} does not exist")
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidConfigError(f"config file {config!r} is not valid TOML: {exc}") from None
        values = {key.replace("-", "_"): value for key, value in values.items()}
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return CompileSettings(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(settings)"
            if error["type"] == "extra_forbidden":
                allowed = ", ".join(sorted(CompileSettings.model_fields))
                problems.append(f"unknown key {key!r} (allowed: {allowed})")
            else:
                problems.append(f"{key}: {error['msg']} (got {error.get('input')!r})")
        source = f"config {config!r} and options" if config else "options"
        raise InvalidConfigError(f"compile settings from {source}: " + "; ".join(problems)) from None
