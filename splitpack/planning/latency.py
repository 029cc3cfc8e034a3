"""Latency and energy of a plan (variant) under given network and load conditions.

A plan's latency is a sum of device compute, uplink transfer, round trip, edge compute and
downlink transfer. Every term is a profile quantity times a condition quantity, so over many
candidates and conditions the model is one matrix product: ``features (N, 5)`` of the
candidates against ``weights (..., 5)`` of the conditions. The selector uses that form on its
hot path. Runs on devices: numpy and the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Sequence

import numpy as np

from splitpack.errors import InvalidConfigError
from splitpack.formats.variants import VariantProfile, check_number

__all__ = [
    "Conditions",
    "PowerModel",
    "ProfileArrays",
    "ConditionArrays",
    "plan_latency_ms",
    "after_upload_ms",
    "plan_energy_mj",
    "latency_matrix",
    "energy_matrix",
    "latency_weights",
    "energy_weights",
]

# Milliseconds per byte at 1 Mbit/s: bytes * 8 / (mbps * 1e6) * 1e3 == bytes * 8e-3 / mbps.
_MS_PER_BYTE_AT_1MBPS = 8e-3


# Field -> (lower bound, whether the bound is strict), shared by Conditions and ConditionArrays.
_CONDITION_LIMITS = {
    "uplink_mbps": (0.0, True), "downlink_mbps": (0.0, True), "rtt_ms": (0.0, False),
    "device_slowdown": (0.0, True), "device_load": (1.0, False),
    "edge_slowdown": (0.0, True), "edge_load": (1.0, False),
}


@dataclass(frozen=True)
class Conditions:
    """Network and load conditions at one moment.

    Attributes:
        uplink_mbps: Device -> edge bandwidth in Mbit/s (> 0).
        downlink_mbps: Edge -> device bandwidth in Mbit/s (> 0). Defaults to a fixed 20.0 rather
            than a multiple of the uplink: results are small (logits), so this term is minor.
        rtt_ms: Round-trip time in ms (>= 0), paid once per remote request.
        device_slowdown: The device is this many times slower than where profiles were measured.
        device_load: Multiplies device compute (>= 1; 2 means half the device is busy).
        edge_slowdown: As ``device_slowdown``, for the edge.
        edge_load: As ``device_load``, for the edge.
    """

    uplink_mbps: float
    downlink_mbps: float = 20.0
    rtt_ms: float = 20.0
    device_slowdown: float = 1.0
    device_load: float = 1.0
    edge_slowdown: float = 1.0
    edge_load: float = 1.0

    def __post_init__(self) -> None:
        for name, (minimum, strict) in _CONDITION_LIMITS.items():
            check_number("Conditions", name, getattr(self, name), minimum=minimum, strict=strict)


@dataclass(frozen=True)
class PowerModel:
    """Device power draw, for the energy objective. Watts x milliseconds = millijoules.

    Attributes:
        compute_w: Power while the device computes (head, encoder or the whole model).
        radio_tx_w: Power while the radio sends the payload.
        idle_w: Power while waiting for the edge (round trip, edge compute, downlink).
    """

    compute_w: float
    radio_tx_w: float
    idle_w: float = 0.0

    def __post_init__(self) -> None:
        for name in ("compute_w", "radio_tx_w", "idle_w"):
            check_number("PowerModel", name, getattr(self, name))


def _device_ms(profile: VariantProfile, conditions: Conditions) -> float:
    device_factor = conditions.device_slowdown * conditions.device_load
    return device_factor * (profile.head_ms + profile.encode_ms)


def _edge_ms(profile: VariantProfile, conditions: Conditions) -> float:
    return conditions.edge_slowdown * conditions.edge_load * (profile.decode_ms + profile.tail_ms)


def _transfer_ms(num_bytes: float, mbps: float) -> float:
    return num_bytes * 8 / (mbps * 1e6) * 1e3


def after_upload_ms(profile: VariantProfile, conditions: Conditions) -> float:
    """The terms of :func:`plan_latency_ms` that come after a remote plan's upload: the
    edge's compute and the answer's way back (``rtt_ms`` excluded); 0 for ``local``."""
    if profile.kind == "local":
        return 0.0
    return (_edge_ms(profile, conditions)
            + _transfer_ms(profile.result_bytes, conditions.downlink_mbps))


def plan_latency_ms(profile: VariantProfile, conditions: Conditions) -> float:
    """End-to-end latency of one request with this plan.

    For ``split`` and ``edge``::

        device_slowdown * device_load * (head_ms + encode_ms)
        + payload_bytes * 8 / (uplink_mbps * 1e6) * 1e3
        + rtt_ms
        + edge_slowdown * edge_load * (decode_ms + tail_ms)
        + result_bytes * 8 / (downlink_mbps * 1e6) * 1e3

    (for ``edge`` the payload is the raw uint8 input and ``head_ms`` any on-device
    preprocessing). For ``local`` only the first term: nothing is sent, no round trip.

    Args:
        profile: The plan's profile.
        conditions: Bandwidths, round trip, slowdowns and loads.

    Returns:
        Latency in milliseconds.
    """
    device_ms = _device_ms(profile, conditions)
    if profile.kind == "local":
        return device_ms
    return (device_ms + _transfer_ms(profile.payload_bytes, conditions.uplink_mbps)
            + conditions.rtt_ms + after_upload_ms(profile, conditions))


def plan_energy_mj(profile: VariantProfile, conditions: Conditions, power: PowerModel) -> float:
    """Device energy of one request with this plan.

    ``compute_w * device compute ms + radio_tx_w * uplink ms + idle_w * (rtt_ms + edge compute
    ms + downlink ms)``, with the terms of :func:`plan_latency_ms`; ``local`` pays compute only.

    Args:
        profile: The plan's profile.
        conditions: Bandwidths, round trip, slowdowns and loads.
        power: The device's power draw.

    Returns:
        Energy in millijoules (W x ms).
    """
    device_ms = _device_ms(profile, conditions)
    if profile.kind == "local":
        return power.compute_w * device_ms
    uplink_ms = _transfer_ms(profile.payload_bytes, conditions.uplink_mbps)
    wait_ms = (conditions.rtt_ms + _edge_ms(profile, conditions)
               + _transfer_ms(profile.result_bytes, conditions.downlink_mbps))
    return power.compute_w * device_ms + power.radio_tx_w * uplink_ms + power.idle_w * wait_ms


@dataclass(frozen=True, eq=False)
class ProfileArrays:
    """Candidates as arrays: ``features`` is (N, 5), columns as in ``FEATURE_COLUMNS``.

    Columns: device ms (head + encode), edge ms (decode + tail), payload bytes, result bytes,
    1.0 if the plan is remote (pays the round trip) else 0.0. Build with :meth:`from_profiles`.
    """

    features: np.ndarray

    FEATURE_COLUMNS = ("device_ms", "edge_ms", "payload_bytes", "result_bytes", "remote")

    @classmethod
    def from_profiles(cls, profiles: Sequence[VariantProfile]) -> "ProfileArrays":
        """Stack profiles into the (N, 5) feature matrix.

        Args:
            profiles: The candidates, in the order the matrix columns will follow.

        Returns:
            The arrays, read-only.
        """
        features = np.array(
            [[p.head_ms + p.encode_ms, p.decode_ms + p.tail_ms, p.payload_bytes, p.result_bytes,
              0.0 if p.kind == "local" else 1.0] for p in profiles],
            dtype=np.float64).reshape(len(profiles), 5)
        features.setflags(write=False)
        return cls(features)


@dataclass(frozen=True, eq=False)
class ConditionArrays:
    """Many conditions at once: each field an array; all fields broadcast to one shape S.

    Build with :meth:`from_conditions` (a list) or :meth:`grid` (an operating range), or
    directly from arrays (validated like :class:`Conditions`).
    """

    uplink_mbps: np.ndarray
    downlink_mbps: np.ndarray
    rtt_ms: np.ndarray
    device_slowdown: np.ndarray
    device_load: np.ndarray
    edge_slowdown: np.ndarray
    edge_load: np.ndarray

    def __post_init__(self) -> None:
        arrays = {f.name: np.asarray(getattr(self, f.name), dtype=np.float64) for f in fields(self)}
        try:
            np.broadcast_shapes(*(a.shape for a in arrays.values()))
        except ValueError:
            shapes = {name: a.shape for name, a in arrays.items()}
            raise InvalidConfigError(f"ConditionArrays fields do not broadcast: {shapes}") from None
        for name, values in arrays.items():
            minimum, strict = _CONDITION_LIMITS[name]
            ok = np.isfinite(values) & ((values > minimum) if strict else (values >= minimum))
            if not ok.all():
                bad = values[~ok].flat[0]
                check_number("ConditionArrays", name, float(bad), minimum=minimum, strict=strict)
            object.__setattr__(self, name, values)

    @classmethod
    def from_conditions(cls, conditions: Iterable[Conditions]) -> "ConditionArrays":
        """Stack a list of conditions into 1-D arrays of length M.

        Args:
            conditions: Validated conditions.

        Returns:
            The arrays.
        """
        items = list(conditions)
        return cls(**{f.name: np.array([getattr(c, f.name) for c in items], dtype=np.float64)
                      for f in fields(Conditions)})

    @classmethod
    def grid(cls, uplink_mbps: Sequence[float], device_loads: Sequence[float] = (1.0,),
             edge_loads: Sequence[float] = (1.0,), *, downlink_mbps: float = 20.0,
             rtt_ms: float = 20.0, device_slowdown: float = 1.0,
             edge_slowdown: float = 1.0) -> "ConditionArrays":
        """Every combination of bandwidth x device load x edge load, flattened to length M.

        Args:
            uplink_mbps: Uplink bandwidths (Mbit/s).
            device_loads: Device load factors (>= 1).
            edge_loads: Edge load factors (>= 1).
            downlink_mbps: Fixed downlink bandwidth.
            rtt_ms: Fixed round trip.
            device_slowdown: Fixed device slowdown.
            edge_slowdown: Fixed edge slowdown.

        Returns:
            Arrays of length ``len(uplink_mbps) * len(device_loads) * len(edge_loads)``, bandwidth
            varying slowest.
        """
        up, dev, edge = np.meshgrid(np.asarray(uplink_mbps, dtype=np.float64),
                                    np.asarray(device_loads, dtype=np.float64),
                                    np.asarray(edge_loads, dtype=np.float64), indexing="ij")
        ones = np.ones(up.size)
        return cls(uplink_mbps=up.ravel(), downlink_mbps=downlink_mbps * ones, rtt_ms=rtt_ms * ones,
                   device_slowdown=device_slowdown * ones, device_load=dev.ravel(),
                   edge_slowdown=edge_slowdown * ones, edge_load=edge.ravel())


def _weight_terms(c: Conditions | ConditionArrays, power: PowerModel | None) -> tuple:
    """The five weights (scalars or arrays): latency if ``power`` is None, else energy."""
    device = c.device_slowdown * c.device_load
    edge = c.edge_slowdown * c.edge_load
    uplink = _MS_PER_BYTE_AT_1MBPS / c.uplink_mbps
    downlink = _MS_PER_BYTE_AT_1MBPS / c.downlink_mbps
    if power is None:
        return device, edge, uplink, downlink, c.rtt_ms
    return (power.compute_w * device, power.idle_w * edge, power.radio_tx_w * uplink,
            power.idle_w * downlink, power.idle_w * c.rtt_ms)


def latency_weights(conditions: Conditions) -> np.ndarray:
    """Weights (5,) of one condition: ``ProfileArrays.features @ weights`` is the latency (ms).

    The selector's hot path: a few float operations, then one small matrix-vector product.

    Args:
        conditions: One condition.

    Returns:
        Float64 array, columns matching :attr:`ProfileArrays.FEATURE_COLUMNS`.
    """
    return np.array(_weight_terms(conditions, None))


def energy_weights(conditions: Conditions, power: PowerModel) -> np.ndarray:
    """Weights (5,) of one condition: ``ProfileArrays.features @ weights`` is the energy (mJ).

    Args:
        conditions: One condition.
        power: The device's power draw.

    Returns:
        Float64 array, columns matching :attr:`ProfileArrays.FEATURE_COLUMNS`.
    """
    return np.array(_weight_terms(conditions, power))


def latency_matrix(profiles: ProfileArrays, conditions: ConditionArrays) -> np.ndarray:
    """Latency of every candidate under every condition, the formula of :func:`plan_latency_ms`.

    Args:
        profiles: N candidates.
        conditions: Conditions of broadcast shape S (``()`` for a single one).

    Returns:
        Latencies in ms, shape ``S + (N,)``.
    """
    weights = np.stack(np.broadcast_arrays(*_weight_terms(conditions, None)), axis=-1)
    return weights @ profiles.features.T


def energy_matrix(profiles: ProfileArrays, conditions: ConditionArrays,
                  power: PowerModel) -> np.ndarray:
    """Energy of every candidate under every condition, the formula of :func:`plan_energy_mj`.

    Args:
        profiles: N candidates.
        conditions: Conditions of broadcast shape S.
        power: The device's power draw.

    Returns:
        Energies in mJ, shape ``S + (N,)``.
    """
    weights = np.stack(np.broadcast_arrays(*_weight_terms(conditions, power)), axis=-1)
    return weights @ profiles.features.T
