"""Synthetic distribution shifts: image shifts in pixel space and the class-prior label shift."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import Tensor

from adaptix import ValidationError
from adaptix.experiment.data import FASHION_MNIST_MEAN as MEAN
from adaptix.experiment.data import FASHION_MNIST_STD as STD
from adaptix.experiment.shifts import (
    DEFAULT_SEVERITIES,
    IMAGE_SHIFTS,
    SHIFTS,
    class_prior_weights,
    hardest_classes,
    shift_images,
)

LOW, HIGH = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD  # the normalised image of [0, 1]


def normalise(pixels: Tensor) -> Tensor:
    return (pixels - MEAN) / STD


def pixels_of(images: Tensor) -> Tensor:
    return images * STD + MEAN


def shift(images: Tensor, kind: str, severity: float, seed: int = 0) -> Tensor:
    return shift_images(images, kind, severity, mean=MEAN, std=STD, seed=seed)


def random_images(*shape: int, seed: int = 0) -> Tensor:
    """Normalised images whose pixels are uniform on [0, 1], with some exact 0s and 1s."""
    pixels = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    pixels[..., 0, 0] = 0.0
    pixels[..., -1, -1] = 1.0
    return normalise(pixels)


def test_constants_cover_every_shift_with_four_increasing_severities() -> None:
    assert (*IMAGE_SHIFTS, "class_prior") == SHIFTS
    assert set(DEFAULT_SEVERITIES) == set(SHIFTS)
    for severities in DEFAULT_SEVERITIES.values():
        assert len(severities) == 4
        assert all(a < b for a, b in itertools.pairwise(severities))
    images = random_images(2, 1, 8, 8)
    for kind in IMAGE_SHIFTS:
        for severity in DEFAULT_SEVERITIES[kind]:
            assert shift(images, kind, severity).shape == images.shape


@pytest.mark.parametrize("kind", IMAGE_SHIFTS)
def test_same_seed_same_output_and_input_untouched(kind: str) -> None:
    images = random_images(6, 1, 12, 12)
    before = images.clone()
    first = shift(images, kind, DEFAULT_SEVERITIES[kind][1], seed=3)
    second = shift(images, kind, DEFAULT_SEVERITIES[kind][1], seed=3)
    assert torch.equal(first, second)
    assert torch.equal(images, before)
    assert first.dtype == torch.float32
    assert first.data_ptr() != images.data_ptr()
    assert not torch.allclose(first, images, atol=1e-3)


@pytest.mark.parametrize("kind", ["gaussian_noise", "rotation"])
def test_random_shifts_differ_across_seeds(kind: str) -> None:
    images = random_images(16, 1, 12, 12)
    severity = DEFAULT_SEVERITIES[kind][1]
    assert not torch.allclose(
        shift(images, kind, severity, seed=0), shift(images, kind, severity, seed=1)
    )


@pytest.mark.parametrize("kind", IMAGE_SHIFTS)
@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 5, 9)])
def test_severity_zero_is_identity(kind: str, shape: tuple[int, ...]) -> None:
    images = random_images(*shape)
    torch.testing.assert_close(shift(images, kind, 0.0), images, atol=1e-5, rtol=0)


def test_float64_input_gives_float32_output() -> None:
    images = random_images(2, 1, 6, 6).double()
    out = shift(images, "contrast", 0.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, shift(images.float(), "contrast", 0.5))


@pytest.mark.parametrize("kind", IMAGE_SHIFTS)
def test_outputs_stay_within_the_normalised_unit_interval(kind: str) -> None:
    images = random_images(8, 2, 10, 14)
    out = shift(images, kind, DEFAULT_SEVERITIES[kind][-1] * 2 if kind != "contrast" else 1.0)
    assert out.shape == images.shape
    assert float(out.min()) >= LOW - 1e-5
    assert float(out.max()) <= HIGH + 1e-5


def test_noise_clips_at_the_pixel_range() -> None:
    white = normalise(torch.ones(2, 1, 16, 16))
    out = shift(white, "gaussian_noise", 0.5)
    assert float(out.max()) <= HIGH + 1e-5
    assert bool((out < HIGH - 0.1).any())  # noise went somewhere, only down


@pytest.mark.parametrize("severity", [0.05, 0.1])
def test_noise_std_matches_severity_on_mid_grey(severity: float) -> None:
    grey = normalise(torch.full((4, 1, 64, 64), 0.5))
    pixels = pixels_of(shift(grey, "gaussian_noise", severity, seed=7))
    assert abs(float(pixels.std()) - severity) <= 0.1 * severity
    assert abs(float(pixels.mean()) - 0.5) <= 0.01


@pytest.mark.parametrize("severity", [0.3, 0.5, 0.85])
def test_contrast_scales_per_image_std_and_keeps_the_mean(severity: float) -> None:
    generator = torch.Generator().manual_seed(1)
    pixels = 0.2 + 0.6 * torch.rand(5, 2, 9, 9, generator=generator)
    pixels[1] = 0.7 * pixels[1]  # images with different means and spreads
    out = pixels_of(shift(normalise(pixels), "contrast", severity))
    before = pixels.flatten(1)
    after = out.flatten(1)
    torch.testing.assert_close(
        after.std(dim=1), (1 - severity) * before.std(dim=1), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(after.mean(dim=1), before.mean(dim=1), rtol=0, atol=1e-5)


def test_full_contrast_loss_gives_flat_images_at_their_mean() -> None:
    pixels = torch.rand(3, 1, 7, 7, generator=torch.Generator().manual_seed(2))
    out = pixels_of(shift(normalise(pixels), "contrast", 1.0))
    expected = pixels.mean(dim=(1, 2, 3), keepdim=True).expand_as(pixels)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_rotation_by_90_degrees_is_rot90_either_way() -> None:
    images = random_images(16, 2, 16, 16, seed=4)
    # Away from the border, where bilinear sampling may reach past the edge.
    out = shift(images, "rotation", 90.0, seed=5)[..., 2:-2, 2:-2]
    counter = torch.rot90(images, 1, dims=(2, 3))[..., 2:-2, 2:-2]
    clockwise = torch.rot90(images, -1, dims=(2, 3))[..., 2:-2, 2:-2]
    directions = []
    for i in range(len(images)):
        if torch.allclose(out[i], counter[i], atol=1e-4):
            directions.append(1)
        elif torch.allclose(out[i], clockwise[i], atol=1e-4):
            directions.append(-1)
        else:
            pytest.fail(f"image {i} is neither rotation of its input")
    assert set(directions) == {1, -1}  # the sign is drawn per image


def test_rotation_turns_non_square_images_in_pixel_units() -> None:
    # A bright pixel 4 columns right of the centre of a 21 x 33 image lands 4 rows above or
    # below the centre; rotating in normalised coordinates would put it 4 * 21/33 rows away.
    height, width = 21, 33
    pixels = torch.zeros(8, 1, height, width)
    pixels[:, 0, height // 2, width // 2 + 4] = 1.0
    out = pixels_of(shift(normalise(pixels), "rotation", 90.0, seed=0))
    assert out.shape == pixels.shape
    rows = set()
    for image in out:
        row, column = divmod(int(image.flatten().argmax()), width)
        assert column == width // 2
        assert abs(float(image[0, row, column]) - 1.0) < 1e-4
        rows.add(row)
    assert rows == {height // 2 - 4, height // 2 + 4}


def test_rotation_fills_the_corners_with_black() -> None:
    white = normalise(torch.ones(4, 1, 15, 15))
    out = pixels_of(shift(white, "rotation", 45.0))
    assert torch.allclose(out[:, :, 0, 0], torch.zeros(4, 1), atol=1e-5)
    assert torch.allclose(out[:, :, 7, 7], torch.ones(4, 1), atol=1e-5)


def test_rotation_keeps_the_device_and_shape_of_a_batch_of_one() -> None:
    images = random_images(1, 3, 4, 6)
    out = shift(images, "rotation", 30.0)
    assert out.shape == images.shape
    assert out.device == images.device


def test_class_prior_weights_boost_rows_of_the_boosted_classes() -> None:
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 3, 3, 3])
    weights = class_prior_weights(labels, 4.0, [2, 3])
    assert weights.dtype == torch.float64
    assert weights.shape == labels.shape
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-12)
    boosted = torch.isin(labels, torch.tensor([2, 3]))
    assert torch.allclose(weights[boosted], weights[boosted][0].expand(int(boosted.sum())))
    assert torch.allclose(weights[~boosted], weights[~boosted][0].expand(int((~boosted).sum())))
    assert math.isclose(float(weights[boosted][0] / weights[~boosted][0]), 4.0, rel_tol=1e-12)
    assert math.isclose(float(weights[0]), 1 / (4 * 1 + 5 * 4), rel_tol=1e-12)


def test_boost_one_is_uniform() -> None:
    labels = torch.tensor([0, 1, 1, 2])
    torch.testing.assert_close(
        class_prior_weights(labels, 1.0, [1]), torch.full((4,), 0.25, dtype=torch.float64)
    )


def test_sampling_with_class_prior_weights_realises_the_boosted_prior() -> None:
    labels = torch.arange(10).repeat_interleave(torch.arange(1, 11) * 20)  # unequal classes
    boost, boosted = 8.0, [2, 5]
    weights = class_prior_weights(labels, boost, boosted)
    counts = torch.bincount(labels).double()
    factors = torch.ones(10, dtype=torch.float64)
    factors[boosted] = boost
    expected = counts * factors / (counts * factors).sum()
    draws = torch.multinomial(
        weights, 40_000, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    realised = torch.bincount(labels[draws], minlength=10).double() / draws.numel()
    torch.testing.assert_close(realised, expected, rtol=0, atol=0.01)
    original = counts / counts.sum()
    assert float(realised[boosted].sum()) > 2 * float(original[boosted].sum())


def test_hardest_classes_ranks_by_accuracy_then_index() -> None:
    # accuracies: class 0 → 0.9, 1 → 0.5, 2 → 0.7, 3 → 0.5 (tie with 1), 4 → 1.0; 5 absent, 6 → 0.8
    labels, correct = [], []
    for cls, (hits, total) in {0: (9, 10), 1: (2, 4), 2: (7, 10), 3: (5, 10), 4: (3, 3),
                               6: (4, 5)}.items():  # fmt: skip
        labels += [cls] * total
        correct += [True] * hits + [False] * (total - hits)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    y = torch.tensor(labels)[order]
    ok = torch.tensor(correct)[order]
    assert hardest_classes(y, ok, 1) == [1]
    assert hardest_classes(y, ok, 3) == [1, 3, 2]
    assert hardest_classes(y, ok, 6) == [1, 3, 2, 6, 0, 4]


IMAGES = random_images(2, 1, 4, 4)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"kind": "blur"}, "one of \\['gaussian_noise', 'contrast', 'rotation'\\]"),
        ({"kind": "class_prior"}, "label shift.*class_prior_weights"),
        ({"kind": "gaussian_noise", "severity": -0.1}, "severity >= 0"),
        ({"kind": "gaussian_noise", "severity": math.inf}, "severity >= 0"),
        ({"kind": "rotation", "severity": math.nan}, "severity >= 0"),
        ({"kind": "rotation", "severity": -10.0}, "severity >= 0"),
        ({"kind": "rotation", "severity": True}, "severity >= 0"),
        ({"kind": "contrast", "severity": 1.5}, "in \\[0, 1\\]"),
        ({"kind": "contrast", "severity": -0.2}, "in \\[0, 1\\]"),
        ({"images": IMAGES[0]}, "shape \\[N, C, H, W\\]"),
        ({"images": IMAGES.numpy()}, "torch.Tensor"),
        ({"images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8)}, "floating"),
        ({"images": torch.zeros(2, 1, 0, 4)}, "at least one channel and pixel"),
        ({"std": 0.0}, "std > 0"),
        ({"std": -1.0}, "std > 0"),
        ({"std": math.nan}, "std > 0"),
        ({"mean": math.inf}, "finite pixel mean"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_shift_images_rejects_bad_input(arguments: dict[str, Any], message: str) -> None:
    call: dict[str, Any] = {
        "images": IMAGES, "kind": "gaussian_noise", "severity": 0.1, "mean": MEAN, "std": STD,
    }  # fmt: skip
    call.update(arguments)
    with pytest.raises(ValidationError, match=message):
        shift_images(**call)


LABELS = torch.tensor([0, 1, 2, 2, 4])


@pytest.mark.parametrize(
    ("labels", "boost", "classes", "message"),
    [
        (LABELS.int(), 2.0, [1], "int64 labels"),
        (LABELS.tolist(), 2.0, [1], "torch.Tensor"),
        (LABELS.view(1, -1), 2.0, [1], "shape \\[N\\]"),
        (LABELS[:0], 2.0, [1], "non-empty labels"),
        (LABELS - 1, 2.0, [1], "non-negative"),
        (LABELS, 0.5, [1], "boost >= 1"),
        (LABELS, math.inf, [1], "boost >= 1"),
        (LABELS, math.nan, [1], "boost >= 1"),
        (LABELS, 2.0, [], "non-empty sequence"),
        (LABELS, 2.0, [1.0], "non-empty sequence"),
        (LABELS, 2.0, 1, "non-empty sequence"),
        (LABELS, 2.0, [5], "in \\[0, 4\\]"),
        (LABELS, 2.0, [-1], "in \\[0, 4\\]"),
        (LABELS, 2.0, [1, 1], "distinct"),
        (LABELS, 2.0, [3], "boosted class \\[3\\]"),
    ],
)
def test_class_prior_weights_rejects_bad_input(
    labels: Any, boost: Any, classes: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        class_prior_weights(labels, boost, classes)


CORRECT = torch.tensor([True, False, True, True, False])


@pytest.mark.parametrize(
    ("labels", "correct", "count", "message"),
    [
        (LABELS.float(), CORRECT, 1, "int64 labels"),
        (LABELS, CORRECT.long(), 1, "bool tensor"),
        (LABELS, CORRECT.tolist(), 1, "bool tensor"),
        (LABELS, CORRECT[:3], 1, "labels' shape"),
        (LABELS, CORRECT, 0, "count .* integer in \\[1, 4\\]"),
        (LABELS, CORRECT, 5, "count .* integer in \\[1, 4\\]"),
        (LABELS, CORRECT, 2.0, "count .* to be an integer"),
        (LABELS, CORRECT, True, "count .* to be an integer"),
    ],
)
def test_hardest_classes_rejects_bad_input(
    labels: Any, correct: Any, count: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        hardest_classes(labels, correct, count)
