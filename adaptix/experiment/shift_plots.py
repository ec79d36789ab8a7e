"""Figures of the shift-monitor study (`adaptix.experiment.shift_study`), drawn like
`adaptix.experiment.plots` (its canvas, colours and saving; matplotlib imported inside the
functions)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from adaptix.experiment.plots import colour_map, figure_classes, save_png

if TYPE_CHECKING:
    from adaptix.experiment.shift_study import ShiftStudyResult


def write_plots(result: ShiftStudyResult, folder: Path) -> list[Path]:
    """Every figure of the study, written into ``folder``; the paths written."""
    return [
        plot_detection(result, folder / "shift-detection.png"),
        plot_early_accuracy(result, folder / "shift-early-accuracy.png"),
        plot_evidence(result, folder / "shift-evidence.png"),
    ]


def plot_detection(result: ShiftStudyResult, path: Path) -> Path:
    """Median inputs to the alarm against severity, one line per shift (log scale)."""
    figure_cls, canvas_cls = figure_classes()
    figure = figure_cls(figsize=(6.4, 4.2))
    ax = figure.add_subplot(1, 1, 1)
    kinds = list(dict.fromkeys(c.kind for c in result.cells))
    colours = colour_map(kinds)
    cap = result.settings.delay_length
    for kind in kinds:
        cells = [c for c in result.cells if c.kind == kind]
        ax.plot(
            [c.severity for c in cells],
            [c.median_delay if math.isfinite(c.median_delay) else cap * 1.5 for c in cells],
            marker="o",
            color=colours[kind],
            label=kind,
        )
    ax.axhline(2000, color="grey", linestyle="--", linewidth=1, label="2,000 inputs (target)")
    ax.axhline(cap, color="black", linestyle=":", linewidth=1, label=f"stream length {cap:,}")
    ax.set_yscale("log")
    ax.set_xlabel("severity (each shift's own unit)")
    ax.set_ylabel("median inputs to the alarm")
    ax.set_title(f"Detection delay (α = {result.settings.alpha}); above the dotted line: no alarm")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return save_png(figure, canvas_cls, path)


def plot_early_accuracy(result: ShiftStudyResult, path: Path) -> Path:
    """Early accuracy under each shift against severity, one panel per shift, one line per
    way of serving (none, recalibrated, re-certified, proxy), with δ."""
    figure_cls, canvas_cls = figure_classes()
    kinds = list(dict.fromkeys(c.kind for c in result.cells))
    columns = min(len(kinds), 2) or 1
    rows = max(1, math.ceil(len(kinds) / columns))
    figure = figure_cls(figsize=(5.2 * columns, 3.8 * rows))
    names = [m.mode for m in result.cells[0].modes] if result.cells else []
    colours = colour_map(names)
    delta = result.settings.delta
    for i, kind in enumerate(kinds):
        ax = figure.add_subplot(rows, columns, i + 1)
        cells = [c for c in result.cells if c.kind == kind]
        for name in names:
            ax.plot(
                [c.severity for c in cells],
                [c.mode(name).mean_early_accuracy for c in cells],
                marker="o",
                markersize=3,
                color=colours[name],
                label=name,
            )
        ax.axhline(delta, color="black", linestyle="--", linewidth=1, label=f"δ = {delta}")
        ax.set_title(kind)
        ax.set_xlabel("severity")
        ax.set_ylabel("early accuracy")
        if i == 0:
            ax.legend(fontsize=7)
    figure.suptitle("Early accuracy under shift, and after recalibrating")
    figure.tight_layout()
    return save_png(figure, canvas_cls, path)


def plot_evidence(result: ShiftStudyResult, path: Path) -> Path:
    """The monitor's evidence along streams (log E minus the current segment's alarm line):
    unshifted ones and a few shifted ones; an alarm where a line crosses 0."""
    figure_cls, canvas_cls = figure_classes()
    figure = figure_cls(figsize=(6.4, 4.2))
    ax = figure.add_subplot(1, 1, 1)
    check = result.settings.check_inputs
    keys = list(result.paths)
    colours = colour_map(keys)
    for key in keys:
        for j, trajectory in enumerate(result.paths[key]):
            ax.plot(
                [(t + 1) * check for t in range(len(trajectory))],
                trajectory,
                color=colours[key],
                linewidth=0.6,
                alpha=0.6,
                label=key if j == 0 else None,
            )
    ax.axhline(0, color="red", linestyle="--", linewidth=1, label="alarm line")
    ax.set_xscale("log")
    ax.set_ylim(-80, 40)
    ax.set_xlabel("inputs")
    ax.set_ylabel("log E − alarm line (monitor's evidence)")
    ax.set_title("Evidence along streams: unshifted stays low, shifted crosses")
    ax.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    return save_png(figure, canvas_cls, path)
