"""Train the CIFAR-10 reference models (ResNet-20 and a MobileNetV2-style model) on real images.

    python benchmarks/cifar_models.py train resnet20 --data ../shared/datasets/cifar10 \
        --epochs 15 --out benchmarks/results/cifar_resnet20.pt

The data is the ``imagefolder:`` CIFAR-10 copy in ``../shared/datasets/cifar10`` (40,000 train
and 5,000 test JPEG images, 32x32), normalized with splitpack's imagefolder defaults (ImageNet
mean and std), so that ``--data imagefolder:../shared/datasets/cifar10 --image-size 32`` in
``splitpack compile`` / ``bench grid`` sees the same inputs. Training: SGD with Nesterov momentum
0.9, weight decay 5e-4, batch 128, a one-cycle learning-rate schedule peaking at 0.1 (0.05 for
the MobileNet), random 32x32 crops of the image padded by 4 pixels (zeros in the normalized
space, i.e. the mean colour) and random horizontal flips.

The run is resumable: after every epoch the model, optimizer and schedule state go to
``OUT.ckpt``; a rerun with the same arguments continues from there. The final state_dict goes to
``OUT`` and a summary (accuracy per epoch, seconds) to ``OUT`` with ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from splitpack.datasets import load_dataset
from splitpack.models import cifar_mobilenetv2, cifar_resnet20, evaluate_accuracy

FACTORIES = {"resnet20": cifar_resnet20, "mobilenetv2": cifar_mobilenetv2}
PEAK_LR = {"resnet20": 0.1, "mobilenetv2": 0.05}


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the 4-pixel zero-padded image and random horizontal flip, per sample."""
    count, _, height, width = batch.shape
    padded = F.pad(batch, (4, 4, 4, 4))
    offsets = torch.randint(0, 9, (count, 2), generator=generator)
    rows = offsets[:, 0, None] + torch.arange(height)[None]  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(width)[None]  # (N, W)
    flip = torch.rand(count, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    index_n = torch.arange(count)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[index_n, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


def train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    checkpoint_path = out.with_suffix(out.suffix + ".ckpt")
    started = time.perf_counter()
    dataset = load_dataset(f"imagefolder:{args.data}", image_size=32)
    print(f"loaded {len(dataset.x_train)} train and {len(dataset.x_test)} test images "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    x_train, y_train = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
    torch.manual_seed(args.seed)
    model = FACTORIES[args.model](num_classes=dataset.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=PEAK_LR[args.model], momentum=0.9,
                                nesterov=True, weight_decay=5e-4)
    steps_per_epoch = len(x_train) // args.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=PEAK_LR[args.model], total_steps=args.epochs * steps_per_epoch,
        pct_start=0.25)
    history: list[dict] = []
    first_epoch = 0
    state: dict = {}
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=True)
        if state["epochs"] != args.epochs or state["model_name"] != args.model:
            print(f"{checkpoint_path} is for {state['model_name']} x {state['epochs']} epochs; "
                  "remove it or rerun with those settings", file=sys.stderr)
            return 2
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        history = json.loads(state["history"])
        first_epoch = len(history)
        print(f"resumed after epoch {first_epoch}", flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    if first_epoch and "generator" in state:  # the same batch order and crops as an uninterrupted run
        generator.set_state(state["generator"])
    for epoch in range(first_epoch, args.epochs):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size:(step + 1) * args.batch_size]
            loss = F.cross_entropy(model(augment(x_train[index], generator)), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach())
        accuracy = evaluate_accuracy(model, dataset.x_test, dataset.y_test)
        seconds = time.perf_counter() - epoch_started
        history.append({"epoch": epoch + 1, "loss": total_loss / steps_per_epoch,
                        "test_accuracy": accuracy, "seconds": seconds})
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total_loss / steps_per_epoch:.4f}, "
              f"test accuracy {accuracy:.2f}%, {seconds:.0f} s", flush=True)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "schedule": schedule.state_dict(), "history": json.dumps(history),
                 "epochs": args.epochs, "model_name": args.model, "generator": generator.get_state()}
        torch.save(state, str(checkpoint_path) + ".partial")
        os.replace(str(checkpoint_path) + ".partial", checkpoint_path)
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    final = evaluate_accuracy(model, dataset.x_test, dataset.y_test)
    summary = {
        "model": f"splitpack.models:cifar_{args.model}",
        "data": f"imagefolder:{args.data}",
        "image_size": 32, "mean": dataset.mean, "std": dataset.std,
        "train_images": len(dataset.x_train), "test_images": len(dataset.x_test),
        "epochs": args.epochs, "batch_size": args.batch_size, "peak_lr": PEAK_LR[args.model],
        "threads": args.threads, "test_accuracy": final,
        "train_seconds": sum(entry["seconds"] for entry in history),
        "history": history,
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"test accuracy {final:.2f}% after {args.epochs} epochs "
          f"({summary['train_seconds'] / 60:.1f} min of training): wrote {out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train one reference model")
    train_parser.add_argument("model", choices=sorted(FACTORIES))
    train_parser.add_argument("--data", required=True, help="the imagefolder root (train/, test/)")
    train_parser.add_argument("--out", required=True, help="where to write the state_dict")
    train_parser.add_argument("--epochs", type=int, default=15)
    train_parser.add_argument("--batch-size", type=int, default=128)
    train_parser.add_argument("--threads", type=int, default=2)
    train_parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 2 or args.threads < 1:
        parser.error("--epochs and --threads must be >= 1, --batch-size >= 2")
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
