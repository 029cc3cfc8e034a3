"""The Python surface of splitpack's three jobs, re-exported by ``splitpack`` itself (lazily:
``import splitpack`` loads none of this, and loading a bundle never imports torch):

* :func:`compile` a model — an ``nn.Module``, an ``onnx.ModelProto``, an ``.onnx`` file or a
  spec string — on a data set — a spec string, a :class:`~splitpack.datasets.Dataset` or
  arrays — into a verified bundle; the ``splitpack compile`` command calls it too;
* :func:`load_bundle` and :func:`verify` it;
* run it on a device with :class:`~splitpack.runtimes.device.DeviceRuntime` (``infer``,
  ``pin`` / ``unpin``), against an edge that :func:`serve` runs.

Objects are handed to the compiler as the files its command line takes: a model object is
written as ONNX, arrays as an ``.npz``, each under ``<out>.work/inputs/<sha256 of the
content>/``, so that an interrupted compile resumes and a changed model is compiled anew.
Settings are the command line's, by the same names, validated the same way
(:class:`~splitpack.compiler.settings.CompileSettings`); every failure raises the CLI's typed
error (:mod:`splitpack.errors`), never prints and exits.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

from splitpack.errors import InvalidConfigError, InvalidDatasetError, InvalidModelError

__all__ = ["compile", "run_compile", "load_bundle", "verify", "serve"]

_MODEL_FORMS = ("an nn.Module, an onnx.ModelProto, a path to an .onnx file, or a spec string "
                "'path/to/file.py:factory' / 'package.module:factory'")
_DATA_FORMS = ("a spec string (digits, scenes, npz:PATH, imagefolder:PATH), a "
               "splitpack.datasets.Dataset, or arrays (x_train, y_train, x_test, y_test)")


def compile(model: Any = None, data: Any = None, out: str | os.PathLike[str] | None = None, *,
            config: str | os.PathLike[str] | None = None,
            log: Callable[[str], None] | None = None, **settings: Any):
    """Compile a trained model into a verified bundle of head/tail variants.

    Args:
        model: An ``nn.Module`` (its input shape from ``input_shape=`` or from the data's
            samples), an ``onnx.ModelProto``, a path to an ``.onnx`` file, or a spec string
            ``path/to/file.py:factory`` / ``package.module:factory`` (with ``weights=``). None:
            the ``model`` of ``config``.
        data: A data set spec (``digits``, ``scenes``, ``npz:PATH``, ``imagefolder:PATH``), a
            :class:`~splitpack.datasets.Dataset`, or arrays ``(x_train, y_train, x_test,
            y_test)`` (x uint8 pixels or float, NCHW / NHWC / NHW; y integer labels from 0).
            None: the config's, else ``digits``.
        out: The bundle folder to write (its archive is written next to it).
        config: A TOML file of settings; keyword settings override it.
        log: Also given every progress line (they are INFO messages of the ``splitpack``
            loggers either way).
        **settings: The options of ``splitpack compile`` by their names: ``variants``,
            ``max_accuracy_drop``, ``bandwidth`` (``"0.5:100"``), ``device_slowdown``,
            ``tflite``, ``budget``, ``sample_seconds``, ``epochs``, ``final_epochs``, ``samples``, ``seed``,
            ``weights``, ``input_shape`` (``"1x3x32x32"`` or a tuple), ``image_size``,
            ``mean``, ``std``, ``train_limit``, ``test_limit``.

    Returns:
        The written bundle, loaded and verified (:class:`~splitpack.formats.bundle.Bundle`).

    Raises:
        InvalidModelError: ``model`` is none of the forms above, or cannot be exported.
        InvalidDatasetError: ``data`` is none of the forms above, or its arrays do not fit
            (shapes, dtypes, labels) or do not fit the model.
        InvalidConfigError: ``out`` is missing, or a setting is unknown or out of range.
    """
    result = run_compile(model, data, out, config=config, log=log, **settings)
    return load_bundle(result["bundle"])


def run_compile(model: Any = None, data: Any = None, out: str | os.PathLike[str] | None = None, *,
                config: str | os.PathLike[str] | None = None,
                log: Callable[[str], None] | None = None, **settings: Any):
    """What :func:`compile` runs, returning the compile's report instead of the bundle: what
    ``splitpack compile`` prints. Arguments and errors as in :func:`compile`.

    Returns:
        The :class:`~splitpack.compiler.pipeline.CompileResult` (``bundle``, ``archive``,
        ``step_seconds``, ``variants``, ``dropped``).
    """
    from splitpack.compiler.pipeline import compile_bundle
    from splitpack.compiler.settings import load_settings

    if out is None:
        raise InvalidConfigError("out: the bundle folder to write is required, e.g. "
                                 "splitpack.compile(model, data, 'bundle')")
    out = Path(out)
    inputs = out.parent / f"{out.name}.work" / "inputs"
    if isinstance(settings.get("input_shape"), (tuple, list)):  # the setting is "1x3x32x32"
        settings["input_shape"] = "x".join(str(int(d)) for d in settings["input_shape"])
    config = None if config is None else str(config)
    overrides = dict(settings)
    if data is not None:
        overrides.update(_data_spec(data, inputs))
    if model is not None and not isinstance(model, (str, os.PathLike)):
        # the config file's data, image size, weights... count for the module's export too
        merged = load_settings(config, {**overrides, "model": "(the model object)"})
        overrides["model"] = _model_spec(model, merged, inputs)
    elif model is not None:
        overrides["model"] = os.fspath(model)
    return compile_bundle(load_settings(config, overrides), out, log=log)


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:16]


def _write_once(folder: Path, name: str, payload: bytes) -> Path:
    """``folder/<sha of payload>/name`` holding ``payload`` (written atomically, once)."""
    path = folder / _digest(payload) / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(payload)
        partial.replace(path)
    return path


def _data_spec(data: Any, inputs: Path) -> dict:
    """The ``data`` setting (and ``mean`` / ``std`` for a Dataset) of a data argument."""
    import io

    import numpy as np

    from splitpack.datasets import NPZ_KEYS, Dataset, check_arrays

    if isinstance(data, (str, os.PathLike)):
        return {"data": os.fspath(data)}
    extra: dict = {}
    if isinstance(data, Dataset):
        arrays = {"x_train": data.to_uint8(data.x_train), "y_train": data.y_train,
                  "x_test": data.to_uint8(data.x_test), "y_test": data.y_test}
        extra = {"mean": list(data.mean), "std": list(data.std)}
        step = 0.5 / 255 / min(data.std) + 1e-5  # what rounding to pixels may move an input
        for split in ("x_train", "x_test"):
            if not np.allclose(data.from_uint8(arrays[split]), getattr(data, split), rtol=0, atol=step):
                raise InvalidDatasetError(
                    f"data: Dataset {data.name!r}: its {split} is not pixels normalized by its "
                    f"mean {data.mean} and std {data.std} (they do not round-trip through uint8, "
                    "e.g. an npz of already normalized floats); pass its arrays (x_train, y_train, "
                    "x_test, y_test) as floats or uint8 pixels instead")
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        arrays = {key: np.asarray(value) for key, value in zip(NPZ_KEYS, data)}
    else:
        raise InvalidDatasetError(f"data: found {type(data).__name__}; allowed: {_DATA_FORMS}")
    check_arrays("arrays", arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return {"data": f"npz:{_write_once(inputs, 'data.npz', buffer.getvalue())}", **extra}


def _model_spec(model: Any, settings, inputs: Path) -> str:
    """The ``model`` setting of a model object, written as ONNX under ``inputs``; ``settings``
    are the compile's (config and keywords merged) for its input shape."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        name = model.graph.name or "model"
        return str(_write_once(inputs, f"{_safe(name)}.onnx", model.SerializeToString()))
    import torch

    if not isinstance(model, torch.nn.Module):
        raise InvalidModelError(f"model: found {type(model).__module__}.{type(model).__name__}; "
                                f"allowed: {_MODEL_FORMS}")
    if settings.weights is not None:
        raise InvalidModelError("weights: an nn.Module carries its own weights; load them into "
                                "it (module.load_state_dict) and drop weights= (or the config's "
                                "weights)")
    from splitpack.compiler.export import check_forward, export_onnx, parse_input_shape

    shape = (parse_input_shape(settings.input_shape) if settings.input_shape
             else _data_input_shape(settings))
    check_forward(model, shape, type(model).__name__)
    exported = export_onnx(model, shape)
    return str(_write_once(inputs, f"{_safe(type(model).__name__)}.onnx",
                           exported.SerializeToString()))


def _data_input_shape(settings) -> tuple[int, ...]:
    """(1, C, H, W) of the data set the settings name: an nn.Module's example input."""
    from splitpack.datasets import load_dataset

    dataset = load_dataset(settings.data, image_size=settings.image_size, mean=settings.mean,
                           std=settings.std, train_limit=1, test_limit=1)
    return (1,) + tuple(dataset.input_shape)


def _safe(name: str) -> str:
    kept = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
    return kept[:64] or "model"


def load_bundle(path: str | os.PathLike[str]):
    """Open a bundle folder or archive, checking every file's hash, the schema and the paths.

    Args:
        path: The bundle folder, or its ``.tar.gz`` / ``.zip`` archive.

    Returns:
        The :class:`~splitpack.formats.bundle.Bundle` (``manifest``, ``variants``,
        ``variant(id)``, ``root``).

    Raises:
        InvalidBundleError: A file is missing or altered, the schema is unknown, or a path
            leaves the bundle; the message names it.
    """
    from splitpack.formats.bundle import read_bundle

    return read_bundle(path)


def verify(bundle, *, tflite: bool = True):
    """Run every artifact of a bundle on its embedded samples against the expected outputs
    (head then tail, the whole model, the wire round trip, TFLite heads).

    Args:
        bundle: A :class:`~splitpack.formats.bundle.Bundle`, or a bundle folder or archive.
        tflite: Also run the TFLite heads (needs ``ai-edge-litert``; reported if absent).

    Returns:
        The :class:`~splitpack.runtimes.verify.VerifyReport` (per variant, the largest
        difference).

    Raises:
        InvalidBundleError: An artifact's outputs differ from the expected ones, naming it.
    """
    from splitpack.runtimes.verify import verify_bundle

    return verify_bundle(bundle, tflite=tflite)


def serve(bundle, *, host: str = "127.0.0.1", port: int = 8000, block: bool = True,
          token: str | None = None, max_inflight: int = 8, threads: int | None = None):
    """Serve every tail of a bundle over HTTP: the edge of ``DeviceRuntime``.

    Args:
        bundle: A :class:`~splitpack.formats.bundle.Bundle`, or a bundle folder or archive.
        host, port: Where to listen (loopback unless told otherwise; with ``block=False``,
            port 0 picks a free one).
        block: True: serve until interrupted, as ``splitpack serve`` does. False: serve from a
            thread of this process and return at once.
        token: A bearer token that requests must carry.
        max_inflight: Requests handled at once; more get 503.
        threads: Threads of each tail's ONNX Runtime session.

    Returns:
        None when ``block``; else the running
        :class:`~splitpack.serving.edge.BackgroundServer` (``url``, ``stop()``, a context
        manager).

    Raises:
        InvalidBundleError: The bundle cannot be loaded.
        InvalidConfigError: An option is out of range, or the port is taken.
    """
    from splitpack.serving import edge

    options = {"token": token, "max_inflight": max_inflight, "threads": threads}
    if block:
        edge.serve(bundle, host=host, port=port, **options)
        return None
    return edge.start_server(bundle, host, port, **options)
