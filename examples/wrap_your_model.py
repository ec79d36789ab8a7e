"""Wrap your own PyTorch model with exits, train the heads, calibrate, and exit early for real.

Run: .venv/bin/python examples/wrap_your_model.py   (about a minute on two CPU cores;
--train-size and --epochs make it quicker or better)

Uses Fashion-MNIST from Debian's dataset-fashion-mnist package (`make data` installs it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import adaptix
from adaptix.experiment.data import load_fashion_mnist


def my_network() -> nn.Sequential:
    """An ordinary CNN, as you might already have one."""

    def conv(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(conv(1, 16, 1), conv(16, 32, 2), conv(32, 32, 1), conv(32, 64, 2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--train-size", type=int, default=8000, help="training images")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of joint training")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    data = load_fashion_mnist(train_size=args.train_size, calibration_size=3000, test_size=3000)

    # 1. Cut the network into blocks (every module here) and put a head after each block.
    model = adaptix.build_model(
        "sequential",
        num_classes=10,
        source=my_network(),
        head="linear",
        backbone_params={"feature": "avgpool"},
        example_input=data.train.images[:2],
    )
    # 2. Train backbone and heads together (or mode="frozen" for a pretrained backbone).
    result = adaptix.train_exits(
        model, data.train.pair(), data.calibration.pair(), mode="joint", epochs=args.epochs, lr=3e-3
    )
    print("validation accuracy per exit:", [f"{a:.3f}" for a in result.val_accuracy or []])

    # 3. Calibrate on held-out data; check the file round-trips.
    calibration = adaptix.calibrate(model.trace(*data.calibration.pair()))
    path = Path(tempfile.mkdtemp()) / "my-calibration.json"
    calibration.save(path)
    calibration = adaptix.Calibration.load(path, num_exits=model.num_exits)

    # 4. Ask for 95 % accuracy on early exits, offline first, then for real.
    policy = adaptix.policy("pcee", 0.95, calibration)
    test = model.trace(*data.test.pair())
    simulated = adaptix.simulate(test, policy)
    print(
        f"simulated: accuracy {simulated.accuracy:.3f}, early accuracy "
        f"{simulated.early_accuracy}, relative cost {simulated.relative_cost:.3f}, "
        f"exit shares {[round(s, 3) for s in simulated.exit_histogram.tolist()]}"
    )
    runner = adaptix.EarlyExitRunner(model, policy)
    images = data.test.images
    start = time.perf_counter()
    out = runner(images)
    runner_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        model.forward_plain(images)
    plain_seconds = time.perf_counter() - start
    if not torch.equal(out.exit_index, simulated.exit_index):
        raise SystemExit("runtime and simulation disagree: please report this as a bug")
    print(
        f"runtime: same exits as the simulation; speed-up over the plain model on this batch: "
        f"{plain_seconds / runner_seconds:.2f}× (one timing, no warm-up)"
    )


if __name__ == "__main__":
    main()
