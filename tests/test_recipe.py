"""The training recipe: `RandomCropFlip` and the ``label_smoothing``, ``schedule`` and ``augment``
options of `train_exits`."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
from test_training import quadrants, tiny_model
from torch import Tensor

import adaptix
from adaptix import MultiExitModel, ValidationError
from adaptix.online.training import RandomCropFlip


def images(n: int, channels: int = 1, size: int = 6, seed: int = 0) -> Tensor:
    """Random images: every pixel distinct, so that no two shifts give the same window."""
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def windows(image: Tensor, pad: int) -> list[tuple[int, int, Tensor]]:
    """Every ``(dy, dx, crop)``: the image's size cut from its replicate-padded copy at row dy
    and column dx (the shift of the augmentation, written out by hand)."""
    _, height, width = image.shape
    rows = torch.arange(-pad, height + pad).clamp(0, height - 1)
    cols = torch.arange(-pad, width + pad).clamp(0, width - 1)
    padded = image[:, rows][:, :, cols]  # the edge pixel repeated, as mode="replicate"
    return [
        (dy, dx, padded[:, dy : dy + height, dx : dx + width])
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
    ]


def shift_of(out: Tensor, image: Tensor, pad: int, flips: bool = False) -> tuple[int, int, bool]:
    """The shift (and flip) that turns ``image`` into ``out``; fails if none does."""
    for dy, dx, crop in windows(image, pad):
        if torch.equal(out, crop):
            return dy, dx, False
        if flips and torch.equal(out, crop.flip(-1)):
            return dy, dx, True
    raise AssertionError("the output is no shifted window of the padded input")


# -------------------------------------------------------------------------- RandomCropFlip


def test_no_shift_and_no_flip_is_the_identity() -> None:
    x = images(8, channels=3)
    out = RandomCropFlip(pad=0, flip=0)(x)
    assert torch.equal(out, x)


def test_flip_one_mirrors_every_image_left_to_right() -> None:
    x = images(8, channels=2)
    out = RandomCropFlip(pad=0, flip=1)(x)
    assert torch.equal(out, x.flip(-1))
    assert not torch.equal(out, x)


def test_the_replicate_padding_written_out_by_hand_is_torchs() -> None:
    image = images(1, channels=2)[0]
    padded = F.pad(image[None], (2,) * 4, mode="replicate")[0]
    dy, dx, crop = windows(image, 2)[-1]
    assert (dy, dx) == (4, 4)
    assert torch.equal(crop, padded[:, 4:, 4:])


@pytest.mark.parametrize("pad", [1, 2, 3])
def test_every_output_is_a_window_of_the_padded_image_and_every_shift_occurs(pad: int) -> None:
    n = 400
    x = images(1, channels=3).expand(n, -1, -1, -1)
    torch.manual_seed(0)
    out = RandomCropFlip(pad=pad, flip=0)(x)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert out.is_contiguous()
    shifts = [shift_of(out[i], x[i], pad)[:2] for i in range(n)]
    side = range(2 * pad + 1)
    # 400 draws over at most 49 shifts: every one of them, the extremes included, shows up.
    assert set(shifts) == {(dy, dx) for dy in side for dx in side}


def test_each_image_draws_its_own_shift_and_flip() -> None:
    x = images(6, channels=1, seed=3)
    torch.manual_seed(1)
    out = RandomCropFlip(pad=2, flip=0.5)(x)
    found = [shift_of(out[i], x[i], 2, flips=True) for i in range(len(x))]
    assert len(set(found)) > 1
    # Channels of one image move together: a window of all channels at once.
    x3 = images(50, channels=3, seed=4)
    out3 = RandomCropFlip(pad=2, flip=0.5)(x3)
    for i in range(len(x3)):
        shift_of(out3[i], x3[i], 2, flips=True)


def test_flip_probability_is_the_share_of_flipped_images() -> None:
    n = 4000
    x = images(1).expand(n, -1, -1, -1)
    torch.manual_seed(2)
    out = RandomCropFlip(pad=0, flip=0.3)(x)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())
    assert abs(float(flipped.double().mean()) - 0.3) < 0.03  # 4 standard deviations


def test_torch_seed_decides_the_shifts() -> None:
    x = images(64, channels=1)
    augment = RandomCropFlip(pad=2, flip=0.5)
    torch.manual_seed(7)
    first = augment(x)
    torch.manual_seed(7)
    again = augment(x)
    torch.manual_seed(8)
    other = augment(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_repr_names_the_settings() -> None:
    assert repr(RandomCropFlip(3, 0.25)) == "RandomCropFlip(pad=3, flip=0.25)"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pad": -1},
        {"pad": 1.5},
        {"pad": True},
        {"pad": "2"},
        {"flip": -0.1},
        {"flip": 1.5},
        {"flip": float("nan")},
        {"flip": "0.5"},
    ],
    ids=[
        "negative-pad",
        "float-pad",
        "bool-pad",
        "text-pad",
        "negative-flip",
        "flip-above-1",
        "nan-flip",
        "text-flip",
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(kwargs))):
        RandomCropFlip(**kwargs)


@pytest.mark.parametrize(
    "batch",
    [torch.zeros(1, 6, 6), torch.zeros(2, 1, 1, 6, 6), {"x": torch.zeros(2, 1, 6, 6)}, [1.0]],
    ids=["3d", "5d", "dict", "list"],
)
def test_inputs_that_are_not_image_batches_are_refused(batch: Any) -> None:
    with pytest.raises(ValidationError, match=r"RandomCropFlip expects images \[n, C, H, W\]"):
        RandomCropFlip()(batch)


# ---------------------------------------------------------------- train_exits: the options


@pytest.mark.parametrize(
    "kwargs",
    [
        {"label_smoothing": -0.1},
        {"label_smoothing": 1.0},
        {"label_smoothing": float("nan")},
        {"label_smoothing": "0.1"},
        {"schedule": "linear"},
        {"schedule": None},
        {"augment": 3},
    ],
    ids=[
        "negative-smoothing",
        "smoothing-1",
        "nan-smoothing",
        "text-smoothing",
        "linear",
        "no-schedule",
        "not-callable",
    ],
)
def test_recipe_options_out_of_range_are_refused(kwargs: dict[str, Any]) -> None:
    model = tiny_model(width=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValidationError, match=next(iter(kwargs))):
        adaptix.train_exits(model, quadrants(16, seed=0), mode="joint", progress=False, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_augment_in_frozen_mode_is_refused() -> None:
    with pytest.raises(ValidationError, match="augment needs mode='joint'"):
        adaptix.train_exits(
            tiny_model(width=16),
            quadrants(16, seed=0),
            mode="frozen",
            augment=lambda x: x,
            progress=False,
        )


def test_augment_sees_every_training_batch_and_the_model_sees_its_output() -> None:
    model = tiny_model(width=16)
    seen: list[Tensor] = []
    returned: list[Tensor] = []
    reached: list[Tensor] = []

    def augment(batch: Tensor) -> Tensor:
        seen.append(batch.clone())
        out = batch + 1.0
        returned.append(out)
        return out

    model.blocks[0].register_forward_pre_hook(lambda _, args: reached.append(args[0]))
    train, val = quadrants(100, seed=0), quadrants(40, seed=1)
    adaptix.train_exits(
        model, train, val, mode="joint", epochs=2, batch_size=32, augment=augment, progress=False
    )
    assert [len(b) for b in seen] == [32, 32, 32, 4] * 2  # training batches, not validation
    per_epoch = [torch.cat(seen[:4]), torch.cat(seen[4:])]
    for rows in per_epoch:  # each epoch: every training row once, in a shuffled order
        assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, train[0].tolist()))
    assert not torch.equal(per_epoch[0], train[0])
    training_forwards = [x for x in reached if len(x) != 40]  # validation passes all 40 rows
    assert len(training_forwards) == len(returned)
    assert all(a is b for a, b in zip(training_forwards, returned, strict=True))


def test_label_smoothing_is_the_loss_that_is_minimised() -> None:
    inputs, labels = quadrants(64, seed=0)

    def first_loss(smoothing: float) -> float:
        model = tiny_model(width=16)
        result = adaptix.train_exits(
            model, (inputs, labels), epochs=1, batch_size=64, label_smoothing=smoothing,
            progress=False,
        )  # fmt: skip
        return float(result.history[0]["loss"])

    model = tiny_model(width=16)
    with torch.no_grad():
        logits = model(inputs)
    for smoothing in (0.0, 0.2):
        expected = sum(
            float(F.cross_entropy(out, labels, label_smoothing=smoothing)) for out in logits
        )
        assert first_loss(smoothing) == pytest.approx(expected, rel=1e-5)
    assert first_loss(0.2) != pytest.approx(first_loss(0.0), rel=1e-3)


def record_lr(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The learning rate of every optimiser step `train_exits` takes (AdamW)."""
    rates: list[float] = []
    step = torch.optim.AdamW.step

    def recording(self: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
        rates.append(float(self.param_groups[0]["lr"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    return rates


def test_onecycle_warms_up_to_the_peak_then_anneals(monkeypatch: pytest.MonkeyPatch) -> None:
    rates = record_lr(monkeypatch)
    lr = 0.01
    adaptix.train_exits(
        tiny_model(width=16), quadrants(100, seed=0), mode="joint", epochs=5, batch_size=10, lr=lr,
        schedule="onecycle", progress=False,
    )  # fmt: skip
    assert len(rates) == 50  # one scheduler step per batch, and none too many
    assert rates[0] < lr / 10  # warm-up: far below the peak at the start
    peak = max(range(50), key=rates.__getitem__)
    assert rates[peak] == pytest.approx(lr, rel=1e-3)
    assert 10 <= peak <= 20  # ~30 % of the steps
    assert rates[:peak] == sorted(rates[:peak])
    assert rates[peak:] == sorted(rates[peak:], reverse=True)
    assert rates[-1] < lr / 100


def test_cosine_starts_at_lr_and_decays(monkeypatch: pytest.MonkeyPatch) -> None:
    rates = record_lr(monkeypatch)
    adaptix.train_exits(
        tiny_model(width=16), quadrants(100, seed=0), mode="joint", epochs=5, batch_size=10,
        lr=0.01, progress=False,
    )  # fmt: skip
    assert len(rates) == 50
    assert rates[0] == pytest.approx(0.01)
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] < 0.01 * 0.01


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_either_schedule_learns_the_problem(schedule: Literal["cosine", "onecycle"]) -> None:
    result = adaptix.train_exits(
        tiny_model(width=64), quadrants(512, seed=0), quadrants(256, seed=1), mode="joint",
        epochs=10, lr=3e-2, schedule=schedule, label_smoothing=0.1, progress=False,
    )  # fmt: skip
    assert result.val_accuracy is not None
    assert min(result.val_accuracy) > 0.8


def small_cnn() -> MultiExitModel:
    torch.manual_seed(0)
    return adaptix.build_model(
        "msdnet", 10, head="linear", backbone_params={"base_channels": 4, "blocks": 2}
    )


def test_training_with_random_crops_is_seeded_and_differs_from_training_without() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=generator)
    y = torch.randint(10, (64,), generator=generator)

    def train(augment: RandomCropFlip | None, seed: int) -> dict[str, Tensor]:
        model = small_cnn()
        adaptix.train_exits(
            model, (x, y), mode="joint", epochs=1, batch_size=32, augment=augment, seed=seed,
            progress=False,
        )  # fmt: skip
        return model.state_dict()

    first = train(RandomCropFlip(), seed=0)
    again = train(RandomCropFlip(), seed=0)
    plain = train(None, seed=0)
    identity = train(RandomCropFlip(pad=0, flip=0), seed=0)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], plain[k]) for k in first)
    assert all(torch.equal(identity[k], plain[k]) for k in first)
