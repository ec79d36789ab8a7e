"""Measure a training recipe for the main job's MSDNet family: per-exit validation accuracy and
time, so that recipes can be compared by accuracy per minute.

Run: .venv/bin/python examples/measure_recipe.py VARIANT [--epochs 3] [--size small] [--pool 3]

It trains on the first 40,000 of the 50,000 Fashion-MNIST training images left after the main
job's calibration split and validates on the other 10,000 (never the calibration or test
split), on one torch thread, and appends one JSON line to --out. The recipe table of docs/job.md
("The training recipe") was measured with it, two runs at a time:

    measure_recipe.py base --pool 1        # and base, ls, ls_1c, ls_1c_hi, ... at --pool 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import adaptix
from adaptix.experiment.data import load_fashion_mnist
from adaptix.online.training import RandomCropFlip, exit_accuracy

#: Recipe variants: keyword arguments of `adaptix.train_exits` ("weights": "rising" gives
#: per-exit loss weights from 0.5 at the first exit to 1.5 at the last).
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {"lr": 3e-3},
    "aug_ls": {"lr": 3e-3, "augment": RandomCropFlip(2, 0.5), "label_smoothing": 0.1},
    "ls": {"lr": 3e-3, "label_smoothing": 0.1},
    "ls_1c": {"lr": 5e-3, "label_smoothing": 0.1, "schedule": "onecycle"},
    "ls_1c_hi": {"lr": 1e-2, "label_smoothing": 0.1, "schedule": "onecycle"},
    "ls_1c_kd": {"lr": 5e-3, "label_smoothing": 0.1, "schedule": "onecycle", "distillation": 0.5},
    "ls_1c_aug": {
        "lr": 1e-2,
        "label_smoothing": 0.1,
        "schedule": "onecycle",
        "augment": RandomCropFlip(1, 0.5),
    },
    "ls_1c_w": {"lr": 1e-2, "label_smoothing": 0.1, "schedule": "onecycle", "weights": "rising"},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", choices=("small", "medium", "large"), default="small")
    parser.add_argument("--pool", type=int, default=3, help="exit features: pool × pool grid")
    parser.add_argument(
        "--train-size", type=int, default=40_000, help="of the first 40,000 (default: all)"
    )
    parser.add_argument("--out", type=Path, default=Path("recipe-results.jsonl"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    adaptix.tune_cpu_allocator()
    options = dict(VARIANTS[args.variant])
    pool = load_fashion_mnist(calibration_size=10_000, seed=0).train
    images, labels = pool.pair()
    n = min(args.train_size, len(labels) - 10_000)
    train = (images[:n], labels[:n])
    val = (images[-10_000:], labels[-10_000:])  # the last 10,000: never trained on
    torch.manual_seed(0)
    model = adaptix.build_model(
        "msdnet",
        10,
        head="mlp",
        backbone_params={"size": args.size, "pool": args.pool},
        head_params={"hidden": 128},
    )
    if options.pop("weights", None) == "rising":
        last = max(model.num_exits - 1, 1)
        options["loss_weights"] = [0.5 + e / last for e in range(model.num_exits)]
    start = time.perf_counter()
    adaptix.train_exits(
        model,
        train,
        mode="joint",
        epochs=args.epochs,
        batch_size=128,
        weight_decay=1e-4,
        progress=False,
        **options,
    )
    seconds = time.perf_counter() - start
    accuracy = exit_accuracy(model, val)
    record = {
        "variant": args.variant,
        "size": args.size,
        "pool": args.pool,
        "epochs": args.epochs,
        "train_size": n,
        "seconds": round(seconds, 1),
        "val_accuracy": [round(a, 4) for a in accuracy],
    }
    with args.out.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    print(
        f"{args.variant}: {args.size} (pool {args.pool}), {args.epochs} epochs on {n} images in "
        f"{seconds:.0f} s; validation accuracy per exit "
        + " / ".join(f"{100 * a:.1f}" for a in accuracy)
        + f" %; appended to {args.out}"
    )


if __name__ == "__main__":
    main()
