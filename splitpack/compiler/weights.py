"""Read a checkpoint as people publish them and load it into a module by torch's strict rules.

Accepted: whatever ``module.load_state_dict(state, strict=True)`` accepts (e.g. BatchNorm
checkpoints saved before ``num_batches_tracked`` existed), nested under one of
``WEIGHTS_WRAPPER_KEYS`` and/or with the ``module.`` prefix of (Distributed)DataParallel on
every key, always read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from splitpack.errors import InvalidModelError

__all__ = ["WEIGHTS_WRAPPER_KEYS", "DATA_PARALLEL_PREFIX", "load_weights"]

# Keys under which training scripts nest the state_dict in a checkpoint dict (Lightning and timm
# "state_dict", timm "state_dict_ema", torchvision's reference scripts "model", ...).
WEIGHTS_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "state_dict_ema")
# (Distributed)DataParallel saves the wrapped model's keys with this prefix.
DATA_PARALLEL_PREFIX = "module."
_MAX_UNWRAP_STEPS = 3  # a wrapper and the prefix in either order, and a little more; bounds self-nesting


def load_weights(module, path: Path) -> None:
    """Load the checkpoint at ``path`` into ``module`` by torch's strict rules (see load_torch_module).

    On error the module may be partly loaded; load_torch_module then discards it.
    """
    checkpoint = _read_checkpoint(path)
    expected = module.state_dict()
    reading = max(_readings(checkpoint), key=lambda candidate: _rank(candidate, expected))
    if not reading.steps and not _fitting_key_count(checkpoint, expected):
        for key in WEIGHTS_WRAPPER_KEYS:
            if key in checkpoint and not _is_tensor_or_mapping(checkpoint[key]):
                raise InvalidModelError(
                    f"weights file {str(path)!r} holds a dict whose {key!r} entry is a "
                    f"{type(checkpoint[key]).__name__}, not a state_dict (a dict of tensors); "
                    "save the weights with torch.save(model.state_dict(), path)"
                )
    non_string = [key for key in reading.state if not isinstance(key, str)]
    if non_string:
        raise InvalidModelError(
            f"weights file {str(path)!r} holds a dict with non-string keys such as {non_string[0]!r}, "
            "not a state_dict; save the weights with torch.save(model.state_dict(), path)"
        )
    _load_reading(module, expected, reading, path)


@dataclass(frozen=True)
class _Reading:
    """One way to read a checkpoint as a state_dict: what is left after some unwrapping steps."""

    state: Mapping
    steps: tuple[str, ...]


def _read_checkpoint(path: Path) -> Mapping:
    import torch

    if not path.is_file():
        raise InvalidModelError(f"weights file {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises anything from UnpicklingError to KeyError here
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused:
            raise InvalidModelError(
                f"weights file {str(path)!r} holds a pickled {refused.group(1)}, which "
                "torch.load(weights_only=True) refuses because loading it would run arbitrary code; "
                "a whole model saved with torch.save(model) is not a state_dict. Save the weights "
                "with torch.save(model.state_dict(), path) and pass that file."
            ) from exc
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no reason given"
        raise InvalidModelError(
            f"weights file {str(path)!r} cannot be loaded with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {reason}); it must hold a state_dict: save one with "
            "torch.save(model.state_dict(), path)."
        ) from exc
    if not isinstance(checkpoint, Mapping):
        raise InvalidModelError(
            f"weights file {str(path)!r} holds a {type(checkpoint).__name__}, not a state_dict "
            "(a dict of tensors); save one with torch.save(model.state_dict(), path)"
        )
    return checkpoint


def _readings(checkpoint: Mapping) -> list[_Reading]:
    """The checkpoint as saved, then inside wrapper keys and without the DataParallel prefix, in any order."""
    readings = [_Reading(checkpoint, ())]
    for reading in readings:  # appended to while iterated: breadth first, so fewest steps first
        if len(reading.steps) == _MAX_UNWRAP_STEPS:
            continue
        for key in WEIGHTS_WRAPPER_KEYS:
            inner = reading.state.get(key)
            if isinstance(inner, Mapping):
                readings.append(_Reading(inner, reading.steps + (f"inside {key!r}",)))
        keys = list(reading.state)
        if keys and all(isinstance(key, str) and key.startswith(DATA_PARALLEL_PREFIX) for key in keys):
            stripped = _strip_prefix(reading.state, DATA_PARALLEL_PREFIX)
            readings.append(_Reading(stripped, reading.steps + (f"without the {DATA_PARALLEL_PREFIX!r} prefix",)))
    return readings


def _rank(reading: _Reading, expected: Mapping) -> tuple[int, bool, int]:
    """Most keys the model has first, so unwrapping must earn its place; then a dict of tensors; then fewest steps."""
    import torch

    tensors_only = all(isinstance(value, torch.Tensor) for value in reading.state.values())
    return _fitting_key_count(reading.state, expected), tensors_only, -len(reading.steps)


def _fitting_key_count(state: Mapping, expected: Mapping) -> int:
    return sum(1 for key in state if key in expected)


def _is_tensor_or_mapping(value) -> bool:
    import torch

    return isinstance(value, (torch.Tensor, Mapping))


def _strip_prefix(state: Mapping, prefix: str) -> OrderedDict:
    """``state`` with ``prefix`` cut off every key, its ``_metadata`` (module versions) carried along."""
    stripped = OrderedDict((key[len(prefix):], value) for key, value in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        # BatchNorm reads its version here to tolerate a missing num_batches_tracked; the
        # wrapper's own entry ("") is dropped and the wrapped model's ("module") becomes the root
        stripped._metadata = OrderedDict(
            ("" if name == prefix[:-1] else name[len(prefix):], info)
            for name, info in metadata.items()
            if name == prefix[:-1] or name.startswith(prefix)
        )
    return stripped


def _without_keys(state: Mapping, dropped) -> OrderedDict:
    kept = OrderedDict((key, value) for key, value in state.items() if key not in dropped)
    if hasattr(state, "_metadata"):
        kept._metadata = state._metadata
    return kept


def _load_reading(module, expected: Mapping, reading: _Reading, path: Path) -> None:
    """Load one reading; missing and unexpected keys are what strict=True would reject."""
    import torch

    state = reading.state
    mismatched = {
        key: (tuple(value.shape), tuple(expected[key].shape))
        for key, value in state.items()
        if key in expected and isinstance(value, torch.Tensor)
        and not torch.nn.parameter.is_lazy(expected[key]) and value.shape != expected[key].shape
    }
    read_as = f" (keys read {', '.join(reading.steps)})" if reading.steps else ""
    try:
        # without the mismatched tensors torch does not raise, and reports the other keys
        incompatible = module.load_state_dict(_without_keys(state, mismatched), strict=False)
    except RuntimeError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise InvalidModelError(
            f"weights {str(path)!r}{read_as} do not load into the model: {reason}. "
            "Save the weights with torch.save(model.state_dict(), path) from this architecture."
        ) from exc
    missing = sorted(key for key in incompatible.missing_keys if key not in mismatched)
    unexpected = sorted(incompatible.unexpected_keys)
    if not (missing or unexpected or mismatched):
        return
    shapes = [f"{key} (file {file}, model {model})" for key, (file, model) in sorted(mismatched.items())]
    parts = [
        _listing("missing keys", missing), _listing("unexpected keys", unexpected), _listing("shape mismatches", shapes)
    ]
    remedy = (
        "Check that the weights were saved from this architecture, built with the same settings "
        "(e.g. the number of classes), with torch.save(model.state_dict(), path)"
    )
    if not _fitting_key_count(state, expected):
        remedy += f"; a state_dict nested in a checkpoint is found only under {', '.join(WEIGHTS_WRAPPER_KEYS)}"
    raise InvalidModelError(
        f"weights {str(path)!r} do not fit the model: {'; '.join(part for part in parts if part)}{read_as}. {remedy}."
    )


def _listing(label: str, items: list[str], limit: int = 10) -> str:
    if not items:
        return ""
    more = f" ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"{label}: {', '.join(items[:limit])}{more}"
