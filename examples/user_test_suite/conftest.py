"""Fixtures of a user's own test suite: their model with exits, its policy and held-out data.

In a real project these load saved weights and a saved calibration (``Calibration.load``);
here a small CNN trains on a Fashion-MNIST subset in about ten seconds, so that the suite runs
anywhere adaptix's set-up has run (`make data` installs the dataset).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import adaptix
from adaptix.experiment.data import load_fashion_mnist


def my_network() -> nn.Sequential:
    """An ordinary CNN, as you might already have one: each module is a block."""

    def conv(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(conv(1, 16, 1), conv(16, 32, 2), conv(32, 64, 2), conv(64, 64, 1))


@dataclass(frozen=True)
class Deployment:
    """What the tests guard: the model, its policy, and held-out test data."""

    model: adaptix.MultiExitModel
    policy: adaptix.ExitPolicy
    certified: adaptix.ExitPolicy
    test_inputs: torch.Tensor
    test_labels: torch.Tensor
    test_trace: adaptix.Trace


@pytest.fixture(scope="session")
def deployment() -> Deployment:
    torch.manual_seed(0)
    data = load_fashion_mnist(train_size=8000, calibration_size=2000, test_size=1024, seed=0)
    model = adaptix.build_model(
        "sequential",
        num_classes=10,
        source=my_network(),
        head="linear",
        backbone_params={"feature": "flatten"},
        example_input=data.train.images[:2],
    )
    adaptix.train_exits(model, data.train.pair(), mode="joint", epochs=2, lr=3e-3, progress=False)
    model.eval()
    # Two disjoint halves of the calibration split: one calibrates pcee, the other certifies.
    images, labels = data.calibration.pair()
    calibration = adaptix.calibrate(model.trace(images[:1000], labels[:1000]))
    certified = adaptix.guarantee(
        model.trace(images[1000:], labels[1000:]), "confidence", early_accuracy=0.9, alpha=0.05
    )
    test_images, test_labels = data.test.pair()
    return Deployment(
        model=model,
        policy=adaptix.policy("pcee", 0.9, calibration),
        certified=certified,
        test_inputs=test_images,
        test_labels=test_labels,
        test_trace=model.trace(test_images, test_labels),
    )


@pytest.fixture
def model(deployment: Deployment) -> adaptix.MultiExitModel:
    return deployment.model


@pytest.fixture
def policy(deployment: Deployment) -> adaptix.ExitPolicy:
    return deployment.policy


@pytest.fixture
def test_inputs(deployment: Deployment) -> torch.Tensor:
    return deployment.test_inputs


@pytest.fixture
def test_labels(deployment: Deployment) -> torch.Tensor:
    return deployment.test_labels


@pytest.fixture
def test_trace(deployment: Deployment) -> adaptix.Trace:
    return deployment.test_trace
