"""`train_exits`: frozen and joint training, seeding, early stopping and argument checks, on a
small learnable problem."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import adaptix
from adaptix import MultiExitModel, ValidationError
from adaptix.online.training import exit_accuracy


def quadrants(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """A learnable problem: the class is the quadrant of the first two of eight features."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 8, generator=generator)
    return inputs, (inputs[:, 0] > 0).long() + 2 * (inputs[:, 1] > 0).long()


def tiny_model(seed: int = 0, width: int = 64) -> MultiExitModel:
    """Two ReLU layers with an exit after each."""
    torch.manual_seed(seed)
    blocks = [nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()]
    return MultiExitModel(
        nn.ModuleList([nn.Sequential(*blocks[:2]), nn.Sequential(*blocks[2:])]),
        nn.ModuleList([nn.Linear(width, 4), nn.Linear(width, 4)]),
    )


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


def same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_frozen_training_keeps_blocks_and_learns_heads() -> None:
    model = tiny_model()
    blocks, heads = snapshot(model.blocks), snapshot(model.heads)
    val = quadrants(256, seed=1)
    before = exit_accuracy(model, val)
    result = adaptix.train_exits(
        model, quadrants(512, seed=0), val, mode="frozen", epochs=30, lr=0.1, progress=False
    )
    assert same_weights(snapshot(model.blocks), blocks)
    assert not same_weights(snapshot(model.heads), heads)
    assert result.val_accuracy is not None
    assert len(result.val_accuracy) == model.num_exits
    assert max(before) < 0.4  # chance is 0.25
    assert min(result.val_accuracy) > 0.6
    assert result.val_accuracy == exit_accuracy(model, val)  # the kept weights' accuracy
    assert len(result.history) == 30
    assert all(len(record["val_accuracy"]) == model.num_exits for record in result.history)
    assert not model.training


def test_joint_training_changes_blocks() -> None:
    model = tiny_model()
    blocks = snapshot(model.blocks)
    result = adaptix.train_exits(
        model,
        quadrants(512, seed=0),
        quadrants(256, seed=1),
        mode="joint",
        epochs=10,
        lr=3e-2,
        progress=False,
    )
    assert not same_weights(snapshot(model.blocks), blocks)
    assert result.val_accuracy is not None
    assert min(result.val_accuracy) > 0.8


def test_without_validation_data_no_accuracy_is_returned() -> None:
    result = adaptix.train_exits(tiny_model(), quadrants(64, seed=0), epochs=2, progress=False)
    assert result.val_accuracy is None
    assert result.best_epoch == 1
    assert [set(record) for record in result.history] == [{"epoch", "loss"}] * 2


@pytest.mark.parametrize("mode", ["frozen", "joint"])
def test_same_seed_same_weights(mode: str) -> None:
    def train(seed: int) -> tuple[dict[str, Tensor], list[dict[str, object]]]:
        model = tiny_model()
        result = adaptix.train_exits(
            model,
            quadrants(256, seed=0),
            quadrants(64, seed=1),
            mode=mode,
            epochs=3,
            batch_size=32,
            seed=seed,
            progress=False,
        )
        return snapshot(model), result.history

    first, again, other = train(seed=5), train(seed=5), train(seed=6)
    assert same_weights(first[0], again[0])
    assert first[1] == again[1]
    assert not same_weights(first[0], other[0])  # the seed really drives the shuffling


def test_patience_returns_early() -> None:
    # A learning rate this small leaves every prediction, hence the accuracy, unchanged.
    result = adaptix.train_exits(
        tiny_model(),
        quadrants(128, seed=0),
        quadrants(64, seed=1),
        epochs=20,
        lr=1e-12,
        patience=2,
        progress=False,
    )
    assert len(result.history) == 3
    assert result.best_epoch == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "partial"},
        {"epochs": 0},
        {"batch_size": 0},
        {"lr": 0.0},
        {"distillation": 1.0},
        {"loss_weights": [1.0]},
        {"loss_weights": [1.0, -1.0]},
        {"train": (torch.randn(4, 8), torch.zeros(4))},
        {"train": (torch.randn(4, 8), torch.zeros(3, dtype=torch.long))},
        {"train": torch.randn(4, 8)},
        {"train": (torch.randn(0, 8), torch.zeros(0, dtype=torch.long))},
        {"val": (torch.randn(4, 8), torch.zeros(4, 1, dtype=torch.long))},
    ],
    ids=[
        "mode",
        "epochs",
        "batch-size",
        "lr",
        "distillation",
        "weights-length",
        "negative-weight",
        "float-labels",
        "label-count",
        "not-a-pair",
        "empty",
        "val-labels",
    ],
)
def test_bad_training_arguments_are_refused(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"train": quadrants(16, seed=0), "progress": False, **kwargs}
    with pytest.raises(ValidationError):
        adaptix.train_exits(tiny_model(), **arguments)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight_decay": -1.0},
        {"temperature": 0.0},
        {"patience": 0},
        {"loss_weights": [1.0, float("nan")]},
        {"lr": float("nan")},
        {"lr": "0.1"},
        {"epochs": 2.5},
    ],
    ids=["weight-decay", "temperature", "patience", "nan-weight", "nan-lr", "text-lr", "epochs"],
)
def test_options_out_of_range_are_validation_errors(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"train": quadrants(16, seed=0), "progress": False, **kwargs}
    with pytest.raises(ValidationError, match=next(iter(kwargs))):
        adaptix.train_exits(tiny_model(), **arguments)


def test_exit_accuracy_refuses_an_empty_batch_size() -> None:
    with pytest.raises(ValidationError, match="batch_size"):
        exit_accuracy(tiny_model(), quadrants(16, seed=0), batch_size=0)


@pytest.mark.parametrize("mode", ["frozen", "joint"])
@pytest.mark.parametrize(
    ("label", "message"),
    [
        (4, r"class indices 0\.\.3 for the 4 classes of exit 0's head, got the label 4"),
        (9, "got the label 9"),
        (-1, r"class indices 0\.\.C-1, got -1 at input 5"),
    ],
)
def test_labels_outside_the_classes_are_refused_before_training(mode, label, message) -> None:
    model = tiny_model()
    before = snapshot(model)
    inputs, labels = quadrants(16, seed=0)
    labels[5] = label
    with pytest.raises(ValidationError, match=message):
        adaptix.train_exits(model, (inputs, labels), mode=mode, progress=False)
    assert same_weights(snapshot(model), before)
    with pytest.raises(ValidationError, match=message):
        exit_accuracy(model, (inputs, labels))


def test_validation_labels_outside_the_classes_are_refused() -> None:
    inputs, labels = quadrants(16, seed=1)
    with pytest.raises(ValidationError, match="got the label 4"):
        adaptix.train_exits(
            tiny_model(), quadrants(16, seed=0), (inputs, labels + 1), epochs=1, progress=False
        )


@pytest.mark.parametrize("which", ["train", "val"])
@pytest.mark.parametrize("mode", ["frozen", "joint"])
def test_inputs_with_nan_or_inf_are_refused_before_training(which, mode) -> None:
    model = tiny_model()
    before = snapshot(model)
    data = {"train": quadrants(16, seed=0), "val": quadrants(16, seed=1)}
    data[which][0][3, 2] = float("nan")
    data[which][0][7, 0] = -float("inf")
    with pytest.raises(
        ValidationError, match=r"NaN or infinite values in 2 inputs \(rows \[3, 7\]"
    ):
        adaptix.train_exits(model, data["train"], data["val"], mode=mode, progress=False)
    assert same_weights(snapshot(model), before)


def test_inputs_that_are_all_nan_are_refused() -> None:
    inputs, labels = quadrants(4, seed=0)
    with pytest.raises(ValidationError, match=r"in 4 inputs \(rows \[0, 1, 2, 3\]\)"):
        adaptix.train_exits(
            tiny_model(), (torch.full_like(inputs, torch.nan), labels), progress=False
        )


def test_a_loss_that_diverges_is_refused_naming_the_epoch() -> None:
    with pytest.raises(ValidationError, match=r"mean loss of nan in epoch 0 of 0\.\.2") as info:
        adaptix.train_exits(
            tiny_model(),
            quadrants(16, seed=0),
            mode="joint",
            epochs=3,
            batch_size=4,
            lr=1e30,
            progress=False,
        )
    assert "Lower the learning rate (lr=1e+30)" in str(info.value)
