"""Figures of a study (`adaptix.experiment.study`): miss frequency and cost against the oracle per
δ, and the paper's tables against survivor tables.

Drawn like `adaptix.experiment.plots` (its canvas, colours and saving; matplotlib imported inside
the functions): the same colour for the same criterion in every panel and every figure. Per δ, one
panel per logit scale and one line per mode: dashed on survivor tables, square markers with a
calibrator other than the paper's, thinner with the Bonferroni correction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adaptix.errors import ValidationError
from adaptix.experiment.config import GUARANTEE_ROW
from adaptix.experiment.plots import COLUMNS, DPI, colour_map, figure_classes, label_grid, save_png
from adaptix.experiment.study import PAPER_CALIBRATOR, StudyMode, StudyResult, StudyRow


def write_plots(result: StudyResult, directory: str | Path) -> list[Path]:
    """Draw the study's figures into ``directory``: miss frequency and cost against the oracle
    per δ, and, when survivor tables were measured, the paper's tables against survivor tables
    (``study-survivors.png``); the paths written.

    Raises:
        ValidationError: a file cannot be written.
        AdaptixError: matplotlib is not installed.
    """
    folder = Path(directory)
    written = [
        plot_miss_frequency(result, folder / "study-miss-frequency.png"),
        plot_cost_vs_oracle(result, folder / "study-cost-vs-oracle.png"),
    ]
    if result.survivor_modes():
        written.append(plot_survivor_comparison(result, folder / "study-survivors.png"))
    return written


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
    figure_cls, canvas_cls = figure_classes()
    scales, criteria = result.config.scales, result.config.criteria
    modes = result.config.modes
    columns = min(len(scales), COLUMNS)
    rows = math.ceil(len(scales) / columns)
    figure = figure_cls(
        figsize=(4.8 * columns + 0.4, 4.2 * rows + 0.8), dpi=DPI, layout="constrained"
    )
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    colours = colour_map(list(criteria))
    for ax, scale in zip(axes, scales, strict=False):
        reference(ax)
        for mode in modes:
            points = result.of(scale, mode.name)
            ax.plot(
                [100 * r.delta for r in points],
                [value(r) for r in points],
                color=colours[mode.criterion],
                label=mode.name,
                **_line_style(mode),
            )
        ax.grid(True, alpha=0.3)
        ax.set_title("natural logits" if scale == 1 else f"logits × {scale:g}")
    label_grid(axes, len(scales), columns, "target δ (%)", ylabel)
    axes[0].legend(loc="upper left", fontsize=8 if len(modes) <= 8 else 6, framealpha=0.9)
    config = result.config
    figure.suptitle(
        f"{title}\n{config.splits} splits, {config.calibration_size} calibration / "
        f"{config.test_size} test inputs",
        fontsize=12,
    )
    return save_png(figure, canvas_cls, path)


def _line_style(mode: StudyMode) -> dict[str, Any]:
    """How a mode's line looks (see the module's docstring)."""
    thin = 0.9 if mode.bonferroni else 1.4
    return {
        "ls": "--" if mode.survivors else "-",
        "marker": "o" if mode.calibrator in (None, PAPER_CALIBRATOR) else "s",
        "markersize": 3,
        "lw": 2.2 if mode.criterion == GUARANTEE_ROW else thin,  # guarantee: the mode under study
    }


#: The rows of the comparison figure: headline key, axis label, scale factor.
_COMPARED = (
    ("worst_shortfall", "worst shortfall over δ (pt)", 100.0),
    ("max_miss_frequency", "max miss frequency over δ (%)", 100.0),
    ("mean_cost_vs_oracle", "mean cost / oracle cost", 1.0),
)


def plot_survivor_comparison(
    result: StudyResult,
    path: str | os.PathLike[str],
    *,
    title: str = "The paper's tables (hatched) against survivor tables (solid)",
) -> Path:
    """Worst shortfall, miss frequency and cost against the oracle of every rule measured on
    survivor tables, beside the same rule on the paper's tables, per logit scale.

    One column of panels per calibrator (their bins), one row per number; in each panel a
    group of bars per logit scale, a pair per rule (paper's tables hatched, survivor tables
    solid, in the rule's colour). The shortfall axis is linear to 1 pt and logarithmic beyond
    (one stray split can fall far short); the miss panels show α and the noise band; the cost
    panels the marginal ``guarantee``'s cost at each scale, when studied, as a black bar.

    Returns:
        ``path``.

    Raises:
        AdaptixError: matplotlib is not installed.
        ValidationError: ``result`` has no survivor modes, or ``path`` cannot be written.
    """
    survivor_modes = result.survivor_modes()
    if not survivor_modes:
        raise ValidationError(
            "expected a study with survivor modes (run_study(..., survivors=['pcee_lcb'])), "
            "got none: there is nothing to compare."
        )
    figure_cls, canvas_cls = figure_classes()
    config = result.config
    calibrators = list(dict.fromkeys(str(mode.calibrator) for mode in survivor_modes))
    figure = figure_cls(
        figsize=(5.6 * len(calibrators) + 0.4, 3.3 * len(_COMPARED) + 0.9),
        dpi=DPI,
        layout="constrained",
    )
    axes = figure.subplots(
        len(_COMPARED), len(calibrators), sharex=True, sharey="row", squeeze=False
    )
    colours = colour_map([mode.rule for mode in survivor_modes])
    marginal = GUARANTEE_ROW in config.criteria
    for column, calibrator in enumerate(calibrators):
        modes = [mode for mode in survivor_modes if mode.calibrator == calibrator]
        for row, (key, label, factor) in enumerate(_COMPARED):
            ax = axes[row, column]
            _compare(ax, result, modes, key, factor, colours, marginal and row == 2)
            if row == 1:
                band = result.noise_band
                ax.axhspan(100 * config.alpha, 100 * band, color="tab:green", alpha=0.12, lw=0)
                ax.axhline(
                    100 * config.alpha, color="0.3", ls="--", lw=1, label=f"α = {config.alpha:g}"
                )
            if row == 0:
                ax.set_yscale("symlog", linthresh=1.0)
                ax.set_title(f"{calibrator} bins", fontsize=10)
            if row == 2:
                ax.axhline(1.0, color="0.3", ls=":", lw=1, label="oracle")
            if column == 0:
                ax.set_ylabel(label)
            ax.grid(True, axis="y", alpha=0.3)
        axes[-1, column].set_xticks(
            range(len(config.scales)),
            ["natural" if scale == 1 else f"logits × {scale:g}" for scale in config.scales],
        )
    handles: dict[str, Any] = {}
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    figure.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncols=4, fontsize=8
    )
    figure.suptitle(
        f"{title}\n{config.splits} splits, {config.calibration_size} calibration / "
        f"{config.test_size} test inputs, δ = {config.deltas[0]:g} … {config.deltas[-1]:g}",
        fontsize=12,
    )
    return save_png(figure, canvas_cls, path)


def _compare(
    ax: Any,
    result: StudyResult,
    modes: list[StudyMode],
    key: str,
    factor: float,
    colours: dict[str, Any],
    marginal: bool,
) -> None:
    """One panel of `plot_survivor_comparison`: bars of ``key`` per scale, paper beside
    survivors for each mode (coloured by rule), and the guarantee's bar where ``marginal``."""
    bars = 2 * len(modes) + (1 if marginal else 0)
    width = 0.8 / bars
    for s, scale in enumerate(result.config.scales):
        left = s - 0.4 + width / 2
        for m, mode in enumerate(modes):
            for k, name in enumerate((mode.paper, mode.name)):
                value = result.headline(scale, name)[key]
                rule = mode.rule
                ax.bar(
                    left + (2 * m + k) * width,
                    math.nan if value is None else factor * value,
                    width,
                    color=colours[rule],
                    alpha=0.45 if k == 0 else 0.95,
                    hatch="///" if k == 0 else None,
                    edgecolor="white" if k == 0 else colours[rule],
                    lw=0,
                    label=(f"{rule}: paper's" if k == 0 else f"{rule}: survivors")
                    if s == 0
                    else None,
                )
        if marginal:
            value = result.headline(scale, GUARANTEE_ROW)[key]
            ax.bar(
                left + 2 * len(modes) * width,
                math.nan if value is None else factor * value,
                width,
                color="0.15",
                label=GUARANTEE_ROW if s == 0 else None,
            )
