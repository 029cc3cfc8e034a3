"""Summarize a measured grid (``splitpack bench grid``) against issue 12's must-show figures.

    python benchmarks/grid_report.py benchmarks/results/cifar_resnet20_grid.json [MORE.json ...] [--out SUMMARY.json]

Several grids of one model (same baseline accuracy and test set) are read as one: their cells
are pooled, the first grid's cuts and input baselines come first.

Prints, and writes as JSON (default: the grid's name with ``_summary.json``):

* per cut: calibrated 8-bit quantization's drop from the baseline; the learned unit that keeps
  every channel at 8 bits against ``q8`` at the same cut; the largest compression ratio within
  1 point of the baseline (any method) and the fewest wire bytes within 1 point;
* the input-upload baseline: the fewest bytes of an image upload within 1 point, and every cut
  whose fewest-bytes split within 1 point sends fewer bytes than the cheapest image upload at
  least as accurate (or, when none is, than the most accurate one);
* entropy coding: the share of cells whose entropy-coded mean payload is ≤ 0.8× the
  bit-packed one;
* training cost: ``train_seconds`` of the learned units (median, max) and what tail fine-tuning
  adds (``tail_seconds``);
* the knee: per cut, the best accuracy at each compression ratio (any method), as a Markdown
  table.

Every figure is computed from the grid's cells; nothing is assumed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _cells(grid: dict, **match) -> list[dict]:
    return [cell for cell in grid["cells"] if all(cell.get(key) == value for key, value in match.items())]


def _full_channel_codec(cut: dict) -> str:
    channels = cut["shape"][0] if len(cut["shape"]) == 3 else cut["shape"][-1]
    return f"c{channels}s1b8"


def summarize(grid: dict, tolerance: float = 1.0) -> dict:
    """The must-show figures of one grid (see the module docstring)."""
    baseline = grid["baseline_accuracy"]
    floor = baseline - tolerance
    per_cut = []
    for cut in grid["cuts"]:
        label = cut["label"]
        cells = _cells(grid, cut=label)
        q8 = _cells(grid, cut=label, codec="q8", coding="bitpack")
        full = _cells(grid, cut=label, codec=_full_channel_codec(cut), coding="bitpack")
        within = [cell for cell in cells if cell["accuracy"] >= floor]
        best_ratio = max(within, key=lambda c: (c["compression_ratio"], c["accuracy"]), default=None)
        fewest = min(within, key=lambda c: (c["payload_bytes"], -c["accuracy"]), default=None)
        per_cut.append({
            "cut": label,
            "shape": cut["shape"],
            "q8_accuracy": q8[0]["accuracy"] if q8 else None,
            "q8_drop": baseline - q8[0]["accuracy"] if q8 else None,
            "full_channel_b8": full[0]["codec"] if full else None,
            "full_channel_b8_minus_q8": (full[0]["accuracy"] - q8[0]["accuracy"]) if full and q8 else None,
            "largest_ratio_within_1pt": best_ratio and {
                "ratio": best_ratio["compression_ratio"], "codec": best_ratio["codec"],
                "method": best_ratio["method"], "accuracy": best_ratio["accuracy"]},
            "fewest_bytes_within_1pt": fewest and {
                "payload_bytes": fewest["payload_bytes"], "codec": fewest["codec"], "method": fewest["method"],
                "coding": fewest["coding"], "accuracy": fewest["accuracy"]},
        })
    images = grid.get("input_baselines") or []
    image_within = [b for b in images if b["accuracy"] >= floor]
    best_image = min(image_within, key=lambda b: b["payload_bytes"], default=None)
    beats = []
    for entry in per_cut:
        split = entry["fewest_bytes_within_1pt"]
        if not split:
            continue
        # the cheapest image upload that is at least as accurate as the split
        rivals = [b for b in images if b["accuracy"] >= split["accuracy"]]
        rival = min(rivals, key=lambda b: b["payload_bytes"], default=None)
        if rival is None:  # more accurate than every image upload: compare with the best image upload
            rival = max(images, key=lambda b: (b["accuracy"], -b["payload_bytes"]), default=None)
        if rival is not None and split["payload_bytes"] < rival["payload_bytes"]:
            beats.append({"cut": entry["cut"], "split": split,
                          "image": {k: rival[k] for k in ("format", "quality", "payload_bytes", "accuracy")}})
    pairs = {}
    for cell in grid["cells"]:
        pairs.setdefault((cell["cut"], cell["codec"]), {})[cell["coding"]] = cell["payload_bytes"]
    ratios = [p["entropy"] / p["bitpack"] for p in pairs.values() if "entropy" in p and "bitpack" in p]
    learned = [c for c in _cells(grid, method="learned", coding="bitpack")]
    tuned = [c for c in _cells(grid, method="finetuned", coding="bitpack")]
    q8_drops = [e["q8_drop"] for e in per_cut if e["q8_drop"] is not None]
    full_gaps = [e["full_channel_b8_minus_q8"] for e in per_cut if e["full_channel_b8_minus_q8"] is not None]
    best_by_ratio = {}
    for cell in grid["cells"]:
        row = best_by_ratio.setdefault(cell["cut"], {})
        ratio = f"{cell['compression_ratio']:g}"
        row[ratio] = max(row.get(ratio, 0.0), cell["accuracy"])
    return {
        "best_accuracy_by_ratio": best_by_ratio,
        "grid_model": grid.get("model"),
        "baseline_accuracy": baseline,
        "train_examples": grid.get("train_examples"),
        "test_examples": grid.get("test_examples"),
        "epochs": grid.get("epochs"),
        "per_cut": per_cut,
        "q8_max_drop": max(q8_drops, default=None),
        "full_channel_b8_worst_minus_q8": min(full_gaps, default=None),
        "input_fewest_bytes_within_1pt": best_image,
        "cuts_beating_input_upload_within_1pt": beats,
        "entropy_cells": len(ratios),
        "entropy_share_at_or_below_0.8": (sum(r <= 0.8 for r in ratios) / len(ratios)) if ratios else None,
        "entropy_ratio_median": statistics.median(ratios) if ratios else None,
        "learned_train_seconds_median": statistics.median([c["train_seconds"] for c in learned]) if learned else None,
        "learned_train_seconds_max": max((c["train_seconds"] for c in learned), default=None),
        "tail_seconds_median": statistics.median([c["tail_seconds"] for c in tuned]) if tuned else None,
        "tail_seconds_max": max((c["tail_seconds"] for c in tuned), default=None),
    }


def _print(summary: dict) -> None:
    print(f"{summary['grid_model']}: baseline {summary['baseline_accuracy']:.2f}% "
          f"({summary['train_examples']} train / {summary['test_examples']} test images, {summary['epochs']} epochs)")
    print(f"{'cut':>18} {'q8 drop':>8} {'c*b8-q8':>8} {'largest ratio <=1pt':>30} {'fewest bytes <=1pt':>34}")
    for entry in summary["per_cut"]:
        ratio, fewest = entry["largest_ratio_within_1pt"], entry["fewest_bytes_within_1pt"]
        fmt = lambda v: "-" if v is None else f"{v:+.2f}"  # noqa: E731
        ratio_text = f"{ratio['ratio']:.0f}x {ratio['codec']} {ratio['accuracy']:.2f}%" if ratio else "-"
        fewest_text = (f"{fewest['payload_bytes']:.0f} B {fewest['codec']}/{fewest['coding']} "
                       f"{fewest['accuracy']:.2f}%") if fewest else "-"
        print(f"{entry['cut']:>18} {fmt(entry['q8_drop']):>8} {fmt(entry['full_channel_b8_minus_q8']):>8} "
              f"{ratio_text:>30} {fewest_text:>34}")
    best = summary["input_fewest_bytes_within_1pt"]
    print("input upload within 1 pt: " + (f"{best['format']} q{best['quality']} {best['payload_bytes']:.0f} B "
                                          f"{best['accuracy']:.2f}%" if best else "none"))
    for beat in summary["cuts_beating_input_upload_within_1pt"]:
        image = beat["image"]
        rival = f"{image['format']} q{image['quality']} {image['payload_bytes']:.0f} B {image['accuracy']:.2f}%"
        print(f"  {beat['cut']}: {beat['split']['payload_bytes']:.0f} B {beat['split']['codec']}/"
              f"{beat['split']['coding']} {beat['split']['accuracy']:.2f}% beats {rival}")
    if summary["entropy_cells"]:
        print(f"entropy coding: {summary['entropy_share_at_or_below_0.8']:.0%} of {summary['entropy_cells']} cells "
              f"at <= 0.8x the bit-packed payload (median ratio {summary['entropy_ratio_median']:.2f})")
    if summary["learned_train_seconds_median"] is not None:
        print(f"learned unit train_seconds: median {summary['learned_train_seconds_median']:.1f}, "
              f"max {summary['learned_train_seconds_max']:.1f}")
    if summary["tail_seconds_median"] is not None:
        print(f"tail fine-tuning adds: median {summary['tail_seconds_median']:.1f} s, "
              f"max {summary['tail_seconds_max']:.1f} s")
    table = summary["best_accuracy_by_ratio"]
    ratios = sorted({float(r) for row in table.values() for r in row})
    print("best accuracy (%) at each ratio, any method:")
    print("| cut | " + " | ".join(f"{r:g}x" for r in ratios) + " |")
    print("|---" * (len(ratios) + 1) + "|")
    for cut, row in table.items():
        print(f"| {cut} | " + " | ".join(f"{row[f'{r:g}']:.1f}" if f"{r:g}" in row else "–" for r in ratios) + " |")


def merge_grids(grids: list[dict]) -> dict:
    """One grid of the cells of several grids of the same model and test set."""
    first = grids[0]
    for other in grids[1:]:
        for key in ("model", "baseline_accuracy", "test_examples", "train_examples", "epochs"):
            if other.get(key) != first.get(key):
                raise SystemExit(f"grids differ in {key}: {first.get(key)!r} and {other.get(key)!r}; "
                                 "merge only grids of one model measured at one setting")
    merged = dict(first)
    labels = [cut["label"] for cut in first["cuts"]]
    merged["cuts"] = list(first["cuts"]) + [cut for grid in grids[1:] for cut in grid["cuts"]
                                            if cut["label"] not in labels]
    merged["cuts"] = list({cut["label"]: cut for cut in merged["cuts"]}.values())
    merged["cells"] = [cell for grid in grids for cell in grid["cells"]]
    merged["input_baselines"] = next((g["input_baselines"] for g in grids if g.get("input_baselines")), None)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="+", help="grid JSON(s) from `splitpack bench grid`, of one model")
    parser.add_argument("--tolerance", type=float, default=1.0, help="points below the baseline (default 1)")
    parser.add_argument("--out", help="summary JSON (default: the first GRID with _summary.json)")
    args = parser.parse_args(argv)
    paths = [Path(name) for name in args.grids]
    path = paths[0]
    summary = summarize(merge_grids([json.loads(p.read_text()) for p in paths]), args.tolerance)
    summary["grid"] = [str(p) for p in paths]
    out = Path(args.out) if args.out else path.with_name(path.stem + "_summary.json")
    out.write_text(json.dumps(summary, indent=1) + "\n")
    _print(summary)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
