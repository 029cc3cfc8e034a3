"""Measure a model's head, tail and compression-unit cost per cut (``splitpack profile MODEL``).

The latency model (:mod:`splitpack.planning.latency`) needs, per cut, the device time of the
head and the encoder and the edge time of the decoder and the tail. :func:`profile_model`
measures them with ONNX Runtime on this host's CPU, one sample at a time:

* the plain head and tail of :func:`~splitpack.compiler.split.split_at`;
* the same head and tail with a representative compression unit spliced in
  (:func:`~splitpack.compiler.splice.splice_codec`), built from *untrained* modules of
  :func:`~splitpack.compiler.codec_modules.build_codec_modules` in eval mode: the cost of a 1×1
  convolution does not depend on its weights, so nothing needs training here;
* ``encode_ms = spliced head − plain head`` and ``decode_ms = spliced tail − plain tail``,
  clamped at 0 (for a cheap unit the difference is within timing noise). Each plain part is
  timed interleaved with its spliced twin and the whole model, so that background load hits
  them alike.

One codec per cut stands for all: units of one cut differ only in C', stride and bits, which
change a 1×1 convolution's cost far less than the head or tail around it.
:func:`run_profile_command` is the CLI's entry: a bundle goes to
:func:`splitpack.runtimes.profile.profile_bundle`, a model spec to :func:`profile_model`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from splitpack.compiler.codec import CodecSpec, codec_ladder
from splitpack.compiler.codec_modules import build_codec_modules
from splitpack.compiler.cuts import Cut, find_cuts
from splitpack.compiler.splice import export_codec, splice_codec
from splitpack.compiler.split import split_at
from splitpack.errors import InvalidConfigError
from splitpack.formats.archive import ARCHIVE_SUFFIXES
from splitpack.formats.manifest import MANIFEST_NAME
from splitpack.runtimes.backends import OnnxBackend
from splitpack.runtimes.profile import (
    CPU_PROVIDER, check_timing_arguments, host_info, profile_bundle, summarize_ms, timed_rounds)

__all__ = ["MODEL_PROFILE_FORMAT", "REPRESENTATIVE_LADDER", "representative_codec",
           "profile_model", "is_bundle_path", "run_profile_command"]

MODEL_PROFILE_FORMAT = "splitpack-model-profile/1"
REPRESENTATIVE_LADDER = 12  # codecs in the ladder whose middle codec is profiled
CODEC_RANKS = (1, 2, 3)
STATISTICS = ("median", "min")  # per-sample ranks a codec applies to: vectors, tokens, feature maps

CodecChoice = Callable[[Cut], "CodecSpec | Sequence[CodecSpec]"]


def representative_codec(cut: Cut, codecs_for: CodecChoice | None = None) -> CodecSpec:
    """The codec profiled at ``cut``: the middle of what ``codecs_for`` gives.

    Args:
        cut: The cut.
        codecs_for: ``cut -> CodecSpec`` or ``cut -> list of CodecSpec`` (as for
            :func:`splitpack.compiler.grid.run_grid`); None means
            ``codec_ladder(cut.shape, 12)``.

    Returns:
        The codec itself, or the middle one of the list (sorted by ratio, as ladders are).
    """
    chosen = codecs_for(cut) if codecs_for is not None else codec_ladder(cut.shape, REPRESENTATIVE_LADDER)
    if isinstance(chosen, CodecSpec):
        return chosen
    chosen = list(chosen)
    if not chosen or not all(isinstance(c, CodecSpec) for c in chosen):
        raise InvalidConfigError(f"codecs_for({cut.label!r}) must give a CodecSpec or a non-empty "
                                 f"list of them; got {chosen!r}")
    return chosen[len(chosen) // 2]


def _example_input(backend: OnnxBackend, input_shape: tuple[int, ...]) -> np.ndarray:
    """One sample of the model's input dtype: standard normal for floats, zeros otherwise."""
    shape = (1,) + tuple(input_shape[1:])
    dtype = np.dtype(backend.input_dtype)
    if np.issubdtype(dtype, np.floating):
        return np.random.default_rng(0).standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _backend(model: onnx.ModelProto, threads: int | None) -> OnnxBackend:
    return OnnxBackend(model.SerializeToString(), providers=[CPU_PROVIDER], threads=threads)


def _profile_cut(model: onnx.ModelProto, cut: Cut, codecs_for: CodecChoice | None,
                 whole: OnnxBackend, x: np.ndarray, *, threads: int | None, repeats: int,
                 warmup: int, statistic: str) -> tuple[dict, list[np.ndarray]]:
    """One cut's entry, and the whole model's times taken alongside (seconds)."""
    head, tail = split_at(model, cut)
    codec = representative_codec(cut, codecs_for) if len(cut.shape) in CODEC_RANKS else None
    heads, tails = [_backend(head, threads)], [_backend(tail, threads)]
    if codec is not None:
        encoder, decoder = build_codec_modules(cut.shape, codec)
        encoder_onnx, decoder_onnx = export_codec(encoder.eval(), decoder.eval(), cut, codec, model)
        spliced_head, spliced_tail = splice_codec(head, tail, cut, encoder_onnx, decoder_onnx)
        heads.append(_backend(spliced_head, threads))
        tails.append(_backend(spliced_tail, threads))
    tail_inputs = [backend.run(x) for backend in heads]
    head_rounds = timed_rounds([lambda: whole.run(x)] + [lambda b=b: b.run(x) for b in heads],
                               repeats=repeats, warmup=warmup)
    tail_rounds = timed_rounds([lambda: whole.run(x)] + [lambda b=b, f=f: b.run(f)
                                                         for b, f in zip(tails, tail_inputs)],
                               repeats=repeats, warmup=warmup)
    head_times = [summarize_ms(row) for row in head_rounds[1:]]
    tail_times = [summarize_ms(row) for row in tail_rounds[1:]]
    key = f"{statistic}_ms"
    entry = {
        "tensor": cut.name, "index": cut.index, "codec": None if codec is None else codec.name,
        "head_ms": head_times[0][key], "tail_ms": tail_times[0][key],
        "encode_ms": None, "decode_ms": None,
        "head_p90_ms": head_times[0]["p90_ms"], "tail_p90_ms": tail_times[0]["p90_ms"],
        "model_ms_alongside_head": summarize_ms(head_rounds[0])[key],
        "model_ms_alongside_tail": summarize_ms(tail_rounds[0])[key],
    }
    if codec is not None:
        entry.update({
            "encode_ms": max(0.0, head_times[1][key] - head_times[0][key]),
            "decode_ms": max(0.0, tail_times[1][key] - tail_times[0][key]),
            "spliced_head_ms": head_times[1][key], "spliced_tail_ms": tail_times[1][key],
            "spliced_head_p90_ms": head_times[1]["p90_ms"], "spliced_tail_p90_ms": tail_times[1]["p90_ms"],
        })
    return entry, [head_rounds[0], tail_rounds[0]]


def profile_model(loaded_model_onnx: onnx.ModelProto, input_shape: Sequence[int],
                  cuts: Sequence[Cut], *, codecs_for: CodecChoice | None = None,
                  threads: int | None = None, repeats: int = 50, warmup: int = 5,
                  statistic: str = "median") -> dict:
    """Median (and p90) ms of the whole model and, per cut, of head, tail, encoder and decoder.

    The whole model is timed in the same rounds as every cut's parts, so that each cut also
    reports the whole model's median in its own time window (``model_ms_alongside_head`` /
    ``_tail``); ``model_ms`` pools all of those samples. Under a steady load they agree; when
    other work comes and goes, their ratio tells how loaded the host was while that cut ran.

    Args:
        loaded_model_onnx: A checked ONNX model (``LoadedModel.onnx_model``); not modified.
        input_shape: Full input shape, batch first; profiled at batch 1.
        cuts: Cuts of this model (``find_cuts``) to profile.
        codecs_for: Which codec stands for each cut (see :func:`representative_codec`).
        threads: ONNX Runtime intra-op threads; None leaves ONNX Runtime's default.
        repeats: Timed runs per artifact.
        warmup: Untimed runs first.
        statistic: ``"median"`` (what a device sees) or ``"min"`` (the uncontended cost, for
            a host that other jobs share: their load makes runs bimodal and the median flips
            between the modes from one artifact to the next). The ``*_ms`` fields use it.

    Returns:
        A JSON-able dict: ``format``, ``host``, ``threads``, ``provider``, ``repeats``,
        ``warmup``, ``statistic``, ``input_shape``, ``model_ms``, ``model_p90_ms`` and
        ``cuts``: per cut label ``head_ms``, ``tail_ms``, ``encode_ms``, ``decode_ms``, ``codec``, the cut ``tensor``
        and ``index``, p90s, the spliced parts' own times and the whole model's alongside. At a
        cut no codec applies to (rank other than 1-3), ``codec``, ``encode_ms`` and
        ``decode_ms`` are None.

    Raises:
        InvalidConfigError: Bad ``threads``, ``repeats``, ``warmup`` or ``codecs_for``.
    """
    check_timing_arguments(threads, repeats, warmup)
    if statistic not in STATISTICS:
        raise InvalidConfigError(f"statistic must be one of {', '.join(STATISTICS)}; got {statistic!r}")
    whole = _backend(loaded_model_onnx, threads)
    x = _example_input(whole, tuple(input_shape))
    model_samples = list(timed_rounds([lambda: whole.run(x)], repeats=repeats, warmup=warmup))
    per_cut = {}
    for cut in cuts:
        per_cut[cut.label], alongside = _profile_cut(loaded_model_onnx, cut, codecs_for, whole, x,
                                                     threads=threads, repeats=repeats,
                                                     warmup=warmup, statistic=statistic)
        model_samples += alongside
    model_time = summarize_ms(np.concatenate(model_samples))
    return {
        "format": MODEL_PROFILE_FORMAT, "host": host_info(), "threads": threads,
        "provider": whole.provider, "repeats": repeats, "warmup": warmup, "statistic": statistic,
        "input_shape": [1, *input_shape[1:]], "model_ms": model_time[f"{statistic}_ms"],
        "model_p90_ms": model_time["p90_ms"], "cuts": per_cut,
    }


def is_bundle_path(text: str) -> bool:
    """True for a folder holding ``manifest.json`` or a bundle archive name."""
    path = Path(text)
    return (path.is_dir() and (path / MANIFEST_NAME).is_file()) or text.endswith(ARCHIVE_SUFFIXES)


def run_profile_command(model_or_bundle: str, *, weights: str | os.PathLike[str] | None,
                        input_shape: str | Sequence[int] | None, threads: int | None,
                        out: str | os.PathLike[str], repeats: int = 50, warmup: int = 5) -> dict:
    """``splitpack profile``: profile a bundle or a model and write the JSON to ``out``.

    Args:
        model_or_bundle: A bundle folder (holding ``manifest.json``) or archive (``.tar.gz``,
            ``.tgz``, ``.zip``) -> :func:`~splitpack.runtimes.profile.profile_bundle`; anything
            else is a model spec -> every cut found, then :func:`profile_model`.
        weights: state_dict for a torch model spec (not for bundles).
        input_shape: ``1x3x224x224`` or a tuple, batch first; for model specs only.
        threads: ONNX Runtime intra-op threads; None for its default.
        out: The JSON file to write (parent folders are created).
        repeats, warmup: Timed and untimed runs per artifact.

    Returns:
        The profile that was written.
    """
    from splitpack.compiler.export import load_model, parse_input_shape

    if is_bundle_path(model_or_bundle):
        given = [name for name, value in (("--weights", weights), ("--input-shape", input_shape))
                 if value is not None]
        if given:
            raise InvalidConfigError(f"{' and '.join(given)} apply to model specs; the bundle "
                                     f"{model_or_bundle!r} carries its artifacts and input shape")
        report = profile_bundle(model_or_bundle, threads=threads, repeats=repeats, warmup=warmup)
    else:
        shape = parse_input_shape(input_shape) if isinstance(input_shape, str) else input_shape
        loaded = load_model(model_or_bundle, weights=weights,
                            input_shape=None if shape is None else tuple(shape))
        cuts = find_cuts(loaded.onnx_model, loaded.input_shape)
        report = profile_model(loaded.onnx_model, loaded.input_shape, cuts, threads=threads,
                               repeats=repeats, warmup=warmup)
        report["model"] = model_or_bundle
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report
