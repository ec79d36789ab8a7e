"""Figures of a study (`adaptix.study`): miss frequency and cost against the oracle, per δ.

Drawn like `adaptix.plots` (its canvas, colours and saving; matplotlib imported inside the
functions): one panel per logit scale, one line per criterion, the same colour for the same
criterion in every panel and both figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adaptix.plots import _COLUMNS, DPI, _colour_map, _label_grid, _matplotlib, _save
from adaptix.study import GUARANTEE, StudyResult, StudyRow


def plot_miss_frequency(
    result: StudyResult,
    path: str | os.PathLike[str],
    *,
    title: str = "How often each criterion misses δ (beyond the test split's noise)",
) -> Path:
    """Miss frequency over the splits against δ, with the level α and the noise band.

    A guarantee at level α holds where its line stays under the band's top, α plus the noise
    of the number of splits (`StudyResult.noise_band`).

    Returns:
        ``path``.

    Raises:
        AdaptixError: matplotlib is not installed.
        ValidationError: ``path`` cannot be written.
    """
    alpha, band = result.config.alpha, result.noise_band

    def reference(ax: Any) -> None:
        ax.axhspan(
            100 * alpha, 100 * band, color="tab:green", alpha=0.12, lw=0,
            label=f"noise of {result.config.splits} splits",
        )  # fmt: skip
        ax.axhline(100 * alpha, color="0.3", ls="--", lw=1, label=f"α = {alpha:g}")

    return _panels(
        result, path, lambda r: 100 * r.miss_frequency, reference,
        "miss frequency over splits (%)", title,
    )  # fmt: skip


def plot_cost_vs_oracle(
    result: StudyResult,
    path: str | os.PathLike[str],
    *,
    title: str = "Cost against the hindsight oracle",
) -> Path:
    """Mean relative cost / the hindsight oracle's against δ (1: as cheap as the oracle).

    Returns:
        ``path``.

    Raises:
        AdaptixError: matplotlib is not installed.
        ValidationError: ``path`` cannot be written.
    """

    def reference(ax: Any) -> None:
        ax.axhline(1.0, color="0.3", ls="--", lw=1, label="oracle")

    return _panels(
        result, path, lambda r: r.mean_cost_vs_oracle, reference,
        "mean cost / oracle cost", title,
    )  # fmt: skip


def _panels(
    result: StudyResult,
    path: str | os.PathLike[str],
    value: Callable[[StudyRow], float],
    reference: Callable[[Any], None],
    ylabel: str,
    title: str,
) -> Path:
    """One panel per scale: ``value`` of every criterion against δ, over ``reference``."""
    figure_cls, canvas_cls = _matplotlib()
    scales, criteria = result.config.scales, result.config.criteria
    columns = min(len(scales), _COLUMNS)
    rows = math.ceil(len(scales) / columns)
    figure = figure_cls(
        figsize=(4.8 * columns + 0.4, 4.2 * rows + 0.8), dpi=DPI, layout="constrained"
    )
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    colours = _colour_map(list(criteria))
    for ax, scale in zip(axes, scales, strict=False):
        reference(ax)
        for criterion in criteria:
            points = result.of(scale, criterion)
            ax.plot(
                [100 * r.delta for r in points],
                [value(r) for r in points],
                marker="o",
                markersize=3,
                lw=2.2 if criterion == GUARANTEE else 1.4,  # the mode under study
                color=colours[criterion],
                label=criterion,
            )
        ax.grid(True, alpha=0.3)
        ax.set_title("natural logits" if scale == 1 else f"logits × {scale:g}")
    _label_grid(axes, len(scales), columns, "target δ (%)", ylabel)
    axes[0].legend(loc="upper left", fontsize=8, framealpha=0.9)
    config = result.config
    figure.suptitle(
        f"{title}\n{config.splits} splits, {config.calibration_size} calibration / "
        f"{config.test_size} test inputs",
        fontsize=12,
    )
    return _save(figure, canvas_cls, path)
