"""Synthetic distribution shifts for the shift-monitor study (issue 12).

Three image shifts (Gaussian noise, contrast loss, rotation) act on normalised images; one label
shift (a class-prior shift) acts on which rows are sampled, through per-row sampling weights.
Each comes at several severities (`DEFAULT_SEVERITIES`), mildest first.

Image shifts work in pixel space: the images are un-normalised with the dataset's ``mean`` and
``std`` (for Fashion-MNIST, ``adaptix.experiment.data.FASHION_MNIST_MEAN`` and
``FASHION_MNIST_STD``), shifted, clipped to ``[0, 1]``
and normalised again, so a shifted image is still an image the model could have been given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from adaptix.errors import ValidationError, expect
from adaptix.scalars import integer, real

#: Every shift, image shifts first.
SHIFTS: tuple[str, ...] = ("gaussian_noise", "contrast", "rotation", "class_prior")
#: The shifts that `shift_images` applies; ``class_prior`` is a label shift.
IMAGE_SHIFTS: tuple[str, ...] = ("gaussian_noise", "contrast", "rotation")
#: Four increasing severities per shift: the noise std in pixel units (``[0, 1]``), the share of
#: contrast removed, the rotation in degrees, and the boost of the boosted classes' prior.
DEFAULT_SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.05, 0.1, 0.15, 0.2),
    "contrast": (0.3, 0.5, 0.7, 0.85),
    "rotation": (10.0, 20.0, 30.0, 45.0),
    "class_prior": (2.0, 4.0, 8.0, 16.0),
}


def shift_images(
    images: Tensor, kind: str, severity: float, *, mean: float, std: float, seed: int = 0
) -> Tensor:
    """Apply an image shift to normalised images.

    The images are un-normalised (``x * std + mean``), shifted in pixel space, clipped to
    ``[0, 1]`` and normalised again. Severity 0 returns the input (up to rounding) for images
    whose pixels lie in ``[0, 1]``.

    - ``gaussian_noise``: ``x + severity * N(0, 1)``, the noise drawn on the CPU from a
      ``torch.Generator`` seeded with ``seed``; ``severity >= 0`` is the noise std.
    - ``contrast``: ``m + (1 - severity) * (x - m)``, ``m`` the mean of each image over its
      channels and pixels; ``severity`` in ``[0, 1]`` is the share of contrast removed (1: a flat
      image).
    - ``rotation``: each image rotates about its centre by ``+severity`` or ``-severity`` degrees
      (the sign drawn per image from the seeded generator; positive is counter-clockwise as
      displayed), bilinear, in pixel units so that non-square images are not sheared; what
      comes from outside the image is pixel value 0.

    Args:
        images: normalised images ``[N, C, H, W]`` (any floating dtype, any device).
        kind: one of `IMAGE_SHIFTS`.
        severity: how strong the shift is (see above; `DEFAULT_SEVERITIES` has the study's).
        mean: the pixel mean used to normalise the images.
        std: the pixel standard deviation used to normalise the images (> 0).
        seed: seeds the noise and the rotation signs; the same seed gives the same output.

    Returns:
        A new float32 tensor of the images' shape, on their device; ``images`` is not modified.

    Raises:
        ValidationError: an unknown kind, ``class_prior`` (a label shift: use
            `class_prior_weights`), a severity out of range or not finite, images that are not a
            4-d floating tensor, a mean that is not finite, ``std <= 0``, or a seed that is not a
            non-negative int.
    """
    _check_kind(kind)
    _check_severity(kind, severity)
    _check_images(images)
    # The mean and std used to normalise the images (adaptix.experiment.data.FASHION_MNIST_MEAN and
    # FASHION_MNIST_STD for Fashion-MNIST).
    mean = real(mean, "a finite pixel mean")
    std = real(std, "a pixel std > 0", low=0.0, open_low=True)
    seed = integer(seed, "seed", low=0, high=2**63 - 1)
    pixels = images.detach().to(torch.float32) * std + mean
    generator = torch.Generator().manual_seed(seed)
    if kind == "gaussian_noise":
        noise = torch.randn(pixels.shape, generator=generator, dtype=torch.float32)
        shifted = pixels + severity * noise.to(pixels.device)
    elif kind == "contrast":
        image_mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        shifted = image_mean + (1.0 - severity) * (pixels - image_mean)
    else:
        shifted = _rotate(pixels, severity, generator)
    return (shifted.clamp(0.0, 1.0) - mean) / std


def _rotate(pixels: Tensor, degrees: float, generator: torch.Generator) -> Tensor:
    """Rotate each image by ``±degrees`` (sign drawn from ``generator``), zeros outside."""
    n, _, height, width = pixels.shape
    signs = torch.randint(0, 2, (n,), generator=generator).to(pixels.device) * 2 - 1
    angles = signs.to(torch.float32) * math.radians(degrees)
    cos, sin = torch.cos(angles), torch.sin(angles)
    # affine_grid maps each output location to the input location it samples, in coordinates
    # normalised to [-1, 1] per axis. Rotating in pixel units (x scaled by W/2, y by H/2) keeps
    # non-square images from shearing: theta = S⁻¹ R S with S = diag(W/2, H/2). With y pointing
    # down, sampling at R(+a)·p turns the content counter-clockwise as displayed.
    theta = torch.zeros(n, 2, 3, dtype=torch.float32, device=pixels.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * (height / width)
    theta[:, 1, 0] = sin * (width / height)
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def class_prior_weights(labels: Tensor, boost: float, classes: Sequence[int]) -> Tensor:
    """Per-row sampling weights that multiply the prior of ``classes`` by ``boost``.

    A row of a boosted class weighs ``boost / Z``, any other row ``1 / Z`` (``Z`` makes the
    weights sum to 1), so rows of one class stay equally likely among themselves and, sampling
    rows with these weights (``torch.multinomial``), a class of ``n_c`` rows is drawn with
    probability ``n_c * boost / Z`` if boosted and ``n_c / Z`` otherwise.

    Args:
        labels: int64 class indices ``[N]`` (non-negative).
        boost: the factor (finite, >= 1; 1 leaves the prior as it is).
        classes: the boosted classes: a non-empty sequence of distinct ints in
            ``[0, labels.max()]``.

    Returns:
        float64 weights ``[N]`` summing to 1, on the labels' device.

    Raises:
        ValidationError: labels that are not a non-empty 1-d int64 tensor of non-negative
            indices, a boost that is not finite or below 1, classes that are empty, not ints,
            repeated or out of range, or no row of a boosted class.
    """
    _check_labels(labels)
    _check_boost(boost)
    largest = int(labels.max())
    boosted = _check_classes(classes, largest)
    is_boosted = torch.isin(labels, torch.tensor(boosted, device=labels.device))
    expect(
        bool(is_boosted.any()),
        f"at least one row of a boosted class {boosted}",
        "none among the labels",
        "Boost classes that occur in the labels.",
    )
    weights = torch.where(
        is_boosted,
        torch.tensor(float(boost), dtype=torch.float64, device=labels.device),
        torch.tensor(1.0, dtype=torch.float64, device=labels.device),
    )
    return weights / weights.sum()


def hardest_classes(labels: Tensor, correct: Tensor, count: int) -> list[int]:
    """The ``count`` classes with the lowest accuracy, hardest first.

    Only classes that occur in ``labels`` are ranked; equal accuracies are broken by class
    index (lower first).

    Args:
        labels: int64 class indices ``[N]`` (non-negative), e.g. of the calibration split.
        correct: bool ``[N]``, whether each row was predicted right (e.g. exit-0 predictions
            ``== labels``).
        count: how many classes to return (1 to the number of classes present).

    Returns:
        The class indices, hardest first.

    Raises:
        ValidationError: labels as in `class_prior_weights`, ``correct`` not a bool tensor of
            the labels' shape, or ``count`` not an int in range.
    """
    _check_labels(labels)
    expect(
        isinstance(correct, Tensor) and correct.dtype == torch.bool,
        "correct as a bool tensor",
        type(correct).__name__ if not isinstance(correct, Tensor) else correct.dtype,
        "Pass (predictions == labels).",
    )
    expect(
        correct.shape == labels.shape,
        f"correct of the labels' shape {list(labels.shape)}",
        f"shape {list(correct.shape)}",
        "Pass one bool per row.",
    )
    totals = torch.bincount(labels.cpu())
    hits = torch.bincount(labels.cpu(), weights=correct.cpu().to(torch.float64))
    present = [c for c in range(totals.numel()) if int(totals[c]) > 0]
    count = integer(count, "count (at most the classes present)", low=1, high=len(present))
    # Accuracies are ratios of exact integers, so equal accuracies compare equal.
    accuracy = {c: float(hits[c]) / int(totals[c]) for c in present}
    return sorted(present, key=lambda c: (accuracy[c], c))[:count]


def check_severities(
    severities: Mapping[str, Sequence[float]],
) -> dict[str, tuple[float, ...]]:
    """``severities`` (shift kind -> its levels) checked as `shift_images` and
    `class_prior_weights` would check each level, so that a study refuses them before it loads
    or traces anything.

    Raises:
        ValidationError: not a mapping, an unknown kind, no level, or a level out of range.
    """
    if not isinstance(severities, Mapping):
        raise ValidationError(
            f"expected severities as a dict of shift kind -> levels, got "
            f"{type(severities).__name__}."
        )
    checked = {}
    for kind, levels in severities.items():
        expect(kind in SHIFTS, f"a shift kind, one of {list(SHIFTS)}", repr(kind), "Pick one.")
        if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
            raise ValidationError(
                f"expected the severities of {kind} as a non-empty sequence of numbers, got "
                f"{levels!r}."
            )
        for level in levels:
            if kind == "class_prior":
                _check_boost(level)
            else:
                _check_severity(kind, level)
        checked[kind] = tuple(float(level) for level in levels)
    return checked


def _check_boost(boost: float) -> None:
    real(boost, "the class-prior boost >= 1 (1 leaves the prior as is)", low=1.0)


def _check_kind(kind: str) -> None:
    if kind == "class_prior":
        raise ValidationError(
            "expected an image shift, got 'class_prior', which is a label shift: it changes "
            "which rows are sampled, not the images. Use class_prior_weights(labels, boost, "
            "classes) and sample rows with torch.multinomial."
        )
    expect(
        kind in IMAGE_SHIFTS,
        f"an image shift, one of {list(IMAGE_SHIFTS)}",
        repr(kind),
        "Pick one of those.",
    )


def _check_severity(kind: str, severity: float) -> None:
    if kind == "contrast":
        real(severity, "a contrast severity (the share of contrast removed)", low=0.0, high=1.0)
    else:
        unit = "noise std in pixel units" if kind == "gaussian_noise" else "degrees"
        real(severity, f"a {kind} severity >= 0 ({unit})", low=0.0)


def _check_images(images: object) -> None:
    if not isinstance(images, Tensor):
        raise ValidationError(
            f"expected images as a torch.Tensor, got {type(images).__name__}. "
            "Convert with torch.as_tensor."
        )
    expect(
        images.dim() == 4,
        "images of shape [N, C, H, W]",
        f"shape {list(images.shape)}",
        "Add the missing dimensions, e.g. images.unsqueeze(1) for one channel.",
    )
    expect(
        images.is_floating_point(),
        "floating (normalised) images",
        images.dtype,
        "Scale to [0, 1] and normalise with the dataset's mean and std.",
    )
    _, channels, height, width = images.shape
    expect(
        channels >= 1 and height >= 1 and width >= 1,
        "images with at least one channel and pixel",
        f"C={channels}, H={height}, W={width}",
        "Pass non-empty images.",
    )


def _check_labels(labels: object) -> None:
    if not isinstance(labels, Tensor):
        raise ValidationError(
            f"expected labels as a torch.Tensor, got {type(labels).__name__}. "
            "Convert with torch.as_tensor(labels, dtype=torch.int64)."
        )
    expect(labels.dtype == torch.int64, "int64 labels", labels.dtype, "Cast with .long().")
    expect(
        labels.dim() == 1 and labels.numel() >= 1,
        "non-empty labels of shape [N]",
        f"shape {list(labels.shape)}",
        "Pass one class index per row.",
    )
    expect(
        int(labels.min()) >= 0,
        "non-negative class indices",
        f"minimum {int(labels.min())}",
        "Labels index classes from 0.",
    )


def _is_index(value: object) -> bool:
    try:
        integer(value, "class")
    except ValidationError:
        return False
    return True


def _check_classes(classes: Sequence[int], largest: int) -> list[int]:
    expect(
        isinstance(classes, Sequence)
        and not isinstance(classes, str)
        and len(classes) >= 1
        and all(_is_index(c) for c in classes),
        "a non-empty sequence of class indices (ints)",
        repr(classes),
        "Pass e.g. hardest_classes(labels, correct, 2).",
    )
    boosted = list(classes)
    expect(
        all(0 <= c <= largest for c in boosted),
        f"classes in [0, {largest}] (the range of the labels)",
        boosted,
        "Boost classes that the labels index.",
    )
    expect(
        len(set(boosted)) == len(boosted),
        "distinct classes",
        boosted,
        "List each boosted class once.",
    )
    return boosted
