"""Sub-commands around bundles: ``compile``, ``inspect``, ``verify`` and ``profile`` (the
argument parsers and handlers; ``splitpack.cli`` wires them in)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from splitpack.cli.common import add_data_args, parse_floats, print_inspect

__all__ = ["add_bundle_commands"]


def _cmd_compile(args) -> int:
    from splitpack.api import run_compile  # splitpack.compile's own path

    options = {
        "weights": args.weights, "input_shape": args.input_shape,
        "image_size": args.image_size, "mean": _floats(args.mean), "std": _floats(args.std),
        "train_limit": args.train_limit, "test_limit": args.test_limit, "variants": args.variants,
        "max_accuracy_drop": args.max_accuracy_drop, "bandwidth": args.bandwidth,
        "device_slowdown": args.device_slowdown, "tflite": args.tflite, "budget": args.budget,
        "sample_seconds": args.sample_seconds,
        "epochs": args.epochs, "final_epochs": args.final_epochs, "samples": args.samples, "seed": args.seed,
    }
    result = run_compile(args.model, args.data, Path(args.out), config=args.config,
                         **{key: value for key, value in options.items() if value is not None})
    print_inspect(Path(args.out))
    print(f"bundle {result['bundle']} (archive {result['archive']}); step seconds: {result['step_seconds']}")
    return 0


def _floats(text):
    return parse_floats(text, "--mean/--std")


def _cmd_inspect(args) -> int:
    from splitpack.formats.bundle import read_bundle

    if not args.json:
        print_inspect(Path(args.bundle))
        return 0
    manifest = read_bundle(args.bundle).manifest
    print(json.dumps({
        "bundle_id": manifest.bundle_id,
        "model_id": manifest.model_id,
        "baseline_accuracy": manifest.baseline_accuracy,
        "variants": [{
            "id": v.id, "kind": v.kind, "cut": v.cut_label, "cut_tensor": v.cut, "codec": v.codec,
            "compression_ratio": v.compression_ratio, "bits": v.quantization.bits if v.quantization else None,
            "payload_bytes": v.payload_bytes, "accuracy": v.accuracy, "predicted_accuracy": v.predicted_accuracy,
            "head_ms": v.latency.head_ms + v.latency.encode_ms, "tail_ms": v.latency.decode_ms + v.latency.tail_ms,
            "artifacts": {k: p for k, p in v.artifacts.model_dump().items() if p is not None},
        } for v in manifest.variants],
    }, indent=2))
    return 0


def _cmd_verify(args) -> int:
    from splitpack.api import verify

    report = verify(args.bundle, tflite=not args.no_tflite)
    for variant_id, difference in report.variants.items():
        extra, wire = report.tflite.get(variant_id), report.wire.get(variant_id)
        print(f"  {variant_id}: outputs match (max abs diff {difference:.2e})" + (f"; TFLite {extra}" if extra else "")
              + (f"; wire {wire}" if wire else ""))
    for line in report.skipped:
        print(f"  skipped: {line}")
    print(f"bundle {report.bundle_id[:16]} verified: hashes, schema, {len(report.variants)} variants")
    return 0


def _cmd_profile(args) -> int:
    from splitpack.compiler.profile import run_profile_command

    report = run_profile_command(args.target, weights=args.weights, input_shape=args.input_shape,
                                 threads=args.threads, out=args.out, repeats=args.repeats)
    print(json.dumps({k: v for k, v in report.items() if k in ("model_ms", "threads", "provider")}, indent=1))
    print(f"wrote {args.out}")
    return 0


def add_bundle_commands(commands) -> None:
    """Add ``compile``, ``inspect``, ``verify`` and ``profile`` to the CLI's sub-parsers."""
    compile_ = commands.add_parser("compile", help="compile a trained model into a verified bundle")
    compile_.add_argument("model", nargs="?", help="model spec (or `model` in --config)")
    compile_.add_argument("--weights")
    compile_.add_argument("--input-shape")
    add_data_args(compile_)
    compile_.add_argument("--out", required=True, help="bundle folder to write (an archive is written next to it)")
    compile_.add_argument("--config", help="TOML file with the same settings (unknown keys are errors)")
    compile_.add_argument("--variants", type=int, help="split variants to bundle, 1-5 (default 4)")
    compile_.add_argument("--max-accuracy-drop", type=float, help="points below the baseline allowed (default 1.0)")
    compile_.add_argument("--bandwidth", help="uplink range LOW:HIGH in Mbit/s to cover (default 0.5:100)")
    compile_.add_argument("--device-slowdown", type=float, help="the device is F times slower than this host")
    compile_.add_argument("--tflite", action=argparse.BooleanOptionalAction, default=None,
                          help="also emit TFLite heads (default on)")
    compile_.add_argument("--budget", type=int, help="cells trained for the predictor, at most (default 20)")
    compile_.add_argument("--sample-seconds", type=float,
                          help="seconds those cells may take, at most, their features, training and evaluation "
                               "(default 480; 0: no limit): a unit at an early cut trains with the whole tail "
                               "behind it, up to 80x the seconds of one at the last cut")
    compile_.add_argument("--epochs", type=int, help="epochs per sampled cell (default 3)")
    compile_.add_argument("--final-epochs", type=int, help="epochs per bundled variant (default 3, as the sampled cells)")
    compile_.add_argument("--samples", type=int, help="sample inputs embedded for verify (default 32)")
    compile_.add_argument("--seed", type=int)
    # no option default may hide a config file's value; CompileSettings holds the defaults
    compile_.set_defaults(handler=_cmd_compile, data=None)

    inspect = commands.add_parser("inspect", help="show a bundle's variants")
    inspect.add_argument("bundle", help="bundle folder or archive")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=_cmd_inspect)

    verify = commands.add_parser("verify", help="check a bundle's hashes, schema and numerics")
    verify.add_argument("bundle", help="bundle folder or archive")
    verify.add_argument("--no-tflite", action="store_true", help="skip the TFLite heads")
    verify.set_defaults(handler=_cmd_verify)

    profile = commands.add_parser("profile", help="measure head/tail latencies with ONNX Runtime")
    profile.add_argument("target", help="a bundle (folder or archive) or a model spec")
    profile.add_argument("--weights")
    profile.add_argument("--input-shape")
    profile.add_argument("--threads", type=int)
    profile.add_argument("--repeats", type=int, default=50)
    profile.add_argument("--out", required=True)
    profile.set_defaults(handler=_cmd_profile)

