"""Watch a deployed early-exit model for distribution shift, and recalibrate when it comes.

Run: .venv/bin/python examples/monitor_shift.py   (about a minute on two CPU cores)

A small CNN with exits is trained on Fashion-MNIST and a PCEE policy calibrated at δ = 0.9.
A `ShiftMonitor` rides along with the runner. Clean test images stream in first (the monitor
stays quiet: its false-alarm probability over the whole stream is at most α); then the camera
gets noisy (Gaussian noise). The monitor alarms, says what moved, and labelled feedback from
the noisy stream re-certifies the policy, which the runner swaps in between two batches.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

import adaptix
from adaptix.experiment.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from adaptix.experiment.shifts import shift_images


def small_cnn() -> nn.Sequential:
    """Four convolutional blocks; a head after each."""

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(block(1, 32, 1), block(32, 32, 2), block(32, 64, 1), block(64, 64, 2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--train-size", type=int, default=8000, help="training images")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of joint training")
    parser.add_argument("--noise", type=float, default=0.15, help="noise std, in pixel units")
    return parser.parse_args()


def early_accuracy(outputs: list[adaptix.RunnerOutput], labels: torch.Tensor, last: int) -> str:
    """Accuracy of the inputs that left before the last exit, as text."""
    predictions = torch.cat([out.predictions for out in outputs])
    exits = torch.cat([out.exit_index for out in outputs])
    early = exits < last
    if not bool(early.any()):
        return "no early exits"
    right = (predictions[early] == labels[: len(predictions)][early]).float().mean()
    return f"{float(right):.3f} over {int(early.sum())} early exits of {len(exits)}"


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    data = load_fashion_mnist(train_size=args.train_size, calibration_size=4000, test_size=10000)
    model = adaptix.build_model(
        "sequential",
        num_classes=10,
        source=small_cnn(),
        head="mlp",
        backbone_params={"feature": "avgpool"},
        example_input=data.train.images[:2],
    )
    adaptix.train_exits(
        model,
        data.train.pair(),
        None,
        mode="joint",
        epochs=args.epochs,
        lr=1e-2,
        schedule="onecycle",
    )
    model.eval()
    calibration_trace = model.trace(*data.calibration.pair())
    policy = adaptix.policy("pcee", 0.9, adaptix.calibrate(calibration_trace))

    # 1. Attach the monitor: α is the false-alarm probability over the whole stream, however
    #    long and however often it is checked; the test restarts every 2,000 inputs (so that a
    #    shift after a long clean stretch is not diluted by it); audit=0.05 sends 5 % of rows
    #    through to the last exit to recalibrate label-free if no labels come.
    alarms: list[adaptix.ShiftAlarm] = []
    monitor = adaptix.ShiftMonitor(
        policy,
        calibration_trace,
        alpha=0.01,
        check_every=2,
        restart_every=2_000,
        audit=0.05,
        on_alarm=alarms.append,
    )
    runner = adaptix.EarlyExitRunner(model, policy, monitor=monitor)
    last = model.num_exits - 1
    images, labels = data.test.pair()
    clean, shifted = images[:5000], images[5000:]
    clean_labels, shifted_labels = labels[:5000], labels[5000:]

    # 2. Clean inputs: nothing moves.
    outputs = [runner(clean[i : i + 64]) for i in range(0, len(clean), 64)]
    monitor.check()
    print(f"clean stream: {len(clean)} inputs, log E = {monitor.log_evalue:.1f}, ", end="")
    print(f"alarm: {monitor.alarmed}; early accuracy {early_accuracy(outputs, clean_labels, last)}")

    # 3. The same kind of images, noisier: the monitor alarms and says what moved.
    noisy = shift_images(
        shifted, "gaussian_noise", args.noise, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD
    )
    served = 0
    outputs = []
    with warnings.catch_warnings():  # an alarm also warns; here the callback reports it
        warnings.simplefilter("ignore", adaptix.ShiftWarning)
        while served < 2500:
            outputs.append(runner(noisy[served : served + 64]))
            served += 64
    if not alarms:
        print(f"noisy stream: no alarm after {served} inputs (log E = {monitor.log_evalue:.1f})")
    else:
        print(f"noisy stream: ALARM after {alarms[0].inputs - len(clean)} noisy inputs")
        print(alarms[0].report)
    print(
        f"noisy stream, deployed policy: early accuracy "
        f"{early_accuracy(outputs, shifted_labels[:served], last)}"
    )

    # 4. Labelled feedback from the noisy stream (1,000 inputs). Two ways on:
    #    - recalibrate: the same pcee at δ = 0.9, reading bin accuracies measured on the noisy
    #      data (what PCEE promises, now about the data being served);
    #    - re-certify: adaptix.guarantee on the feedback, a statement with probability ≥ 1 - α
    #      (on little data it may certify nothing: then every input goes to the last exit).
    feedback = model.trace(noisy[:1000], shifted_labels[:1000])
    monitor.observe(feedback)
    with warnings.catch_warnings():  # "nothing certified" is an answer here, not a surprise
        warnings.simplefilter("ignore", adaptix.CertificateWarning)
        recertified = monitor.recertify(criterion="confidence", early_accuracy=0.9, alpha=0.05)
    assert recertified.certificate is not None
    print("re-certified:", recertified.certificate.statement())
    recalibrated = monitor.recalibrated_policy()
    runner.swap_policy(recalibrated, reference=feedback)  # between two batches, atomically
    rest, rest_labels = noisy[1000:], shifted_labels[1000:]  # inputs the feedback did not see
    outputs = [runner(rest[i : i + 64]) for i in range(0, len(rest), 64)]
    print(
        f"noisy stream, recalibrated pcee: early accuracy "
        f"{early_accuracy(outputs, rest_labels, last)}"
    )
    print(f"label-free: {monitor.proxy_inputs} audited inputs kept for a proxy recalibration")


if __name__ == "__main__":
    main()
