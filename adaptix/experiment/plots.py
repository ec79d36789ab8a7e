"""Figures of the measurements: control of early accuracy, accuracy against compute, reliability.

Every function writes a PNG and returns its path. Matplotlib is optional
(``pip install 'adaptix[mlflow]'`` installs it) and imported inside the functions. The figures
are drawn on an Agg canvas of their own, without pyplot: the process's backend (a notebook's,
say) is left alone, nothing is kept open, and the functions are safe to call from worker
threads or on machines without a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adaptix.core.calibration import Calibration
from adaptix.errors import AdaptixError, ValidationError
from adaptix.scalars import real

#: Resolution of every figure adaptix draws.
DPI = 120
#: Panels per row of a grid of panels.
COLUMNS = 3
# Reliability diagrams: bins narrower than this (of the [0, 1] axis) get no count label, which
# would overlap its neighbours'; bars are drawn at least this wide.
_MIN_LABELLED_WIDTH = 0.02
_MIN_BAR_WIDTH = 0.004
_INSTALL_HINT = "pip install matplotlib (or pip install 'adaptix[mlflow]')"
ControlCurve = Sequence[tuple[float, float | None]]


def plot_control(
    curves: Mapping[str, ControlCurve],
    path: str | os.PathLike[str],
    *,
    title: str = "Control of early accuracy",
) -> Path:
    """Realised early accuracy against the target δ, one line per criterion, with y = x.

    Args:
        curves: criterion -> (δ, early accuracy) pairs, accuracies as fractions. None means no
            input left early at that δ: the point is left out (the line breaks there).
        path: the PNG to write (parent folders are created).
        title: the figure's title.

    Returns:
        ``path``.
    """
    return plot_control_panels({"": curves}, path, title=title)


def plot_control_panels(
    panels: Mapping[str, Mapping[str, ControlCurve]],
    path: str | os.PathLike[str],
    *,
    title: str = "Control of early accuracy",
) -> Path:
    """`plot_control` for several conditions side by side, one panel each (shared axes).

    Args:
        panels: panel title (e.g. "natural", "logits ×2") -> the curves of `plot_control`.
        path: the PNG to write.
        title: the figure's title.

    Returns:
        ``path``.

    Raises:
        ValidationError: no panel, or a point that is not (δ, early accuracy or None) in finite
            numbers.
    """
    if not panels:
        raise ValidationError(
            "expected at least one panel of curves, got none. Pass {panel title: {criterion: "
            "[(δ, early accuracy), ...]}}."
        )
    for curves in panels.values():
        _check_curves(curves, "(δ, early accuracy or None)", x_positive=False, y_optional=True)
    figure_cls, canvas_cls = figure_classes()
    columns = min(len(panels), COLUMNS)
    rows = math.ceil(len(panels) / columns)
    figure = figure_cls(
        figsize=(4.5 * columns + 0.4, 4.5 * rows + 0.6), dpi=DPI, layout="constrained"
    )
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    points = [point for curves in panels.values() for curve in curves.values() for point in curve]
    deltas = [d for d, _ in points]
    realised = [a for _, a in points if a is not None]
    # The x-axis spans the δ grid; the y-axis the realised accuracies (and the δ it must meet
    # there), so that a knob whose curves all sit above 85 % still shows how they move.
    x_span = (100 * min(deltas, default=0.0) - 1.0, 100 * max(deltas, default=1.0) + 1.0)
    y_low = min([*realised, max(deltas, default=1.0)], default=0.0)
    span = (0.0, 100.5)  # the diagonal y = δ and the region below it, clipped by the view
    y_span = (max(100 * y_low - 1.0, 0.0), 100.5)
    colours = colour_map([name for curves in panels.values() for name in curves])
    for ax, (panel, curves) in zip(axes, panels.items(), strict=False):
        ax.fill_between(
            span, span, [span[0]] * 2, color="tab:red", alpha=0.07, lw=0, label="target missed"
        )
        ax.plot(span, span, color="0.3", ls="--", lw=1, label="target: y = δ")
        for name, curve in curves.items():
            points = sorted(curve, key=lambda p: p[0])
            ax.plot(
                [100 * d for d, _ in points],
                [math.nan if a is None else 100 * a for _, a in points],
                marker="o",
                markersize=3,
                lw=1.5,
                color=colours[name],
                label=name,
            )
        ax.set_xlim(x_span)
        ax.set_ylim(y_span)
        ax.grid(True, alpha=0.3)
        if panel:
            ax.set_title(panel)
    label_grid(axes, len(panels), columns, "target δ (%)", "realised early accuracy on test (%)")
    axes[0].legend(loc="upper left", fontsize=8, framealpha=0.9)
    figure.suptitle(title, fontsize=13)
    return save_png(figure, canvas_cls, path)


def plot_accuracy_vs_flops(
    path: str | os.PathLike[str],
    *,
    models: Mapping[str, tuple[float, float]] | None = None,
    truncated: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    frontiers: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    title: str = "Accuracy against compute",
) -> Path:
    """Accuracy against mean FLOPs per input (log scale, in MFLOPs).

    Args:
        path: the PNG to write.
        models: model name -> (FLOPs, accuracy) at full depth: labelled markers.
        truncated: name -> (FLOPs, accuracy) of a model cut at each fixed exit (static depth):
            dashed lines.
        frontiers: criterion label -> (FLOPs, accuracy) of early exiting: solid lines.
        title: the figure's title.

    Accuracies are fractions, FLOPs are per input; points are drawn in order of FLOPs.

    Returns:
        ``path``.

    Raises:
        ValidationError: nothing to plot, or a point that is not (FLOPs > 0, accuracy) in finite
            numbers (the FLOP axis is logarithmic).
    """
    models, truncated, frontiers = models or {}, truncated or {}, frontiers or {}
    if not (models or truncated or frontiers):
        raise ValidationError(
            "expected something to plot, got no models, truncated curves or frontiers."
        )
    for curves in ({name: [point] for name, point in models.items()}, truncated, frontiers):
        _check_curves(curves, "(FLOPs > 0, accuracy)", x_positive=True, y_optional=False)
    figure_cls, canvas_cls = figure_classes()
    from matplotlib import ticker  # importable: figure_classes checked

    figure = figure_cls(figsize=(7.5, 5.2), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    colours = colour_map([*frontiers, *truncated])
    for name, curve in frontiers.items():
        flops, accuracy = _xy(curve)
        ax.plot(flops, accuracy, lw=2, marker=".", color=colours[name], label=name)
    for name, curve in truncated.items():
        flops, accuracy = _xy(curve)
        ax.plot(
            flops,
            accuracy,
            ls="--",
            lw=1.3,
            marker="s",
            markersize=4,
            color=colours[name],
            label=name,
        )
    for model_flops, model_accuracy in models.values():
        ax.plot(
            [model_flops / 1e6],
            [100 * model_accuracy],
            marker="*",
            markersize=13,
            color="black",
            ls="none",
            zorder=5,
        )
    if models:
        ax.plot([], [], marker="*", markersize=11, color="black", ls="none", label="full depth")
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.08)
    low, high = ax.get_xlim()
    # Plain numbers (1, 2, 5, ...) rather than 2×10^0, as many as the span leaves room for.
    decades = math.log10(high / low)
    subs = range(1, 10) if decades < 1 else (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    middle = math.sqrt(low * high)
    for name, (model_flops, model_accuracy) in models.items():
        right_half = model_flops / 1e6 > middle  # label towards the centre, so it stays inside
        ax.annotate(
            name,
            (model_flops / 1e6, 100 * model_accuracy),
            xytext=(-8 if right_half else 8, -13),
            textcoords="offset points",
            ha="right" if right_half else "left",
            fontsize=9,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"},
        )
    ax.set_xlabel("mean compute per input (MFLOPs, log scale)")
    ax.set_ylabel("accuracy on test (%)")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    ax.set_title(title, fontsize=13)
    return save_png(figure, canvas_cls, path)


def plot_reliability(
    calibration: Calibration,
    path: str | os.PathLike[str],
    *,
    title: str = "Reliability of each exit (calibration data)",
) -> Path:
    """One reliability diagram per exit of ``calibration``.

    Each panel shows, per confidence bin, a bar of the bin's accuracy k/n spanning the bin's
    own edges (`Calibration.edges`: equal-width or, for ``equal_mass``, narrow where inputs
    crowd), a marker at the bin's mean confidence (the gap between the two is the bin's
    miscalibration), the diagonal of perfect calibration and n, the bin's count, as faint text
    over every bin at least 2 % wide. Empty bins are left empty. The panel title gives the
    exit's expected calibration error (ECE); it reads "n/a" when the calibration carries no
    confidence sums.

    Returns:
        ``path``.

    Raises:
        ValidationError: ``calibration`` is not a `Calibration`.
    """
    if not isinstance(calibration, Calibration):
        raise ValidationError(
            f"expected an adaptix.Calibration, got {type(calibration).__name__}. Pass what "
            "adaptix.calibrate returned."
        )
    figure_cls, canvas_cls = figure_classes()
    exits, bins = calibration.num_exits, calibration.bins
    columns = min(exits, COLUMNS + 1)
    rows = math.ceil(exits / columns)
    figure = figure_cls(
        figsize=(3.5 * columns + 0.4, 3.9 * rows + 0.7), dpi=DPI, layout="constrained"
    )
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    counts = calibration.counts.tolist()
    accuracy = calibration.accuracy().tolist()
    # Zero sums with non-zero counts mean the calibrator recorded no confidences (they are > 0).
    has_confidence = bool(calibration.confidence_sum.sum() > 0)
    confidence = calibration.mean_confidence().tolist()
    ece = calibration.expected_calibration_error().tolist()
    for e, ax in enumerate(axes[:exits]):
        lower, upper = calibration.edges[e, :-1].tolist(), calibration.edges[e, 1:].tolist()
        centres = [(a + b) / 2 for a, b in zip(lower, upper, strict=True)]
        widths = [b - a for a, b in zip(lower, upper, strict=True)]
        labelled = [m for m in range(bins) if widths[m] >= _MIN_LABELLED_WIDTH]
        count_size = 7 if len(labelled) <= 12 else 5
        ax.plot([0, 1], [0, 1], color="0.3", ls="--", lw=1, label="perfect calibration")
        filled = [m for m in range(bins) if counts[e][m] > 0]  # empty bins: no bar at all
        ax.bar(
            [centres[m] for m in filled],
            [accuracy[e][m] for m in filled],
            # A last bin [1, 1] (confidences of exactly 1) has no width: drawn as a thin bar.
            width=[max(widths[m] * 0.92, _MIN_BAR_WIDTH) for m in filled],
            color="tab:blue",
            alpha=0.75,
            edgecolor="tab:blue",
            label="accuracy k/n",
        )
        if has_confidence:
            ax.plot(
                centres,
                confidence[e],
                ls="none",
                marker="D",
                markersize=4.5,
                color="tab:orange",
                markeredgecolor="black",
                markeredgewidth=0.5,
                label="mean confidence",
            )
        for m in labelled:
            ax.text(
                centres[m],
                1.015,
                f"{counts[e][m]}",
                ha="center",
                va="bottom",
                fontsize=count_size,
                color="0.45",
                rotation=0 if len(labelled) <= 12 else 90,
            )
        score = f"{ece[e]:.3f}" if has_confidence else "n/a"
        ax.set_title(f"exit {e}   ECE {score}   (n = {sum(counts[e])})", fontsize=10, pad=14)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
    label_grid(axes, exits, columns, "confidence (max softmax)", "accuracy (fraction)")
    axes[0].legend(loc="upper left", fontsize=7, framealpha=0.9)
    binning = "equal-width" if calibration.equal_width else calibration.method
    figure.suptitle(f"{title}\n{bins} {binning} bins; grey numbers: inputs per bin", fontsize=12)
    return save_png(figure, canvas_cls, path)


def figure_classes() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas classes, or an `AdaptixError` saying how to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise AdaptixError(
            f"expected matplotlib to be importable for plots, got {err}. Install it with: "
            f"{_INSTALL_HINT}"
        ) from err
    return Figure, FigureCanvasAgg


def label_grid(axes: Any, used: int, columns: int, xlabel: str, ylabel: str) -> None:
    """Hide the unused panels; label the left column and the lowest panel of every column."""
    for ax in axes[used:]:
        ax.set_visible(False)
    for index in range(used):
        if index % columns == 0:
            axes[index].set_ylabel(ylabel)
        if index + columns >= used:
            axes[index].set_xlabel(xlabel)
            axes[index].xaxis.set_tick_params(labelbottom=True)


def save_png(figure: Any, canvas_cls: Any, path: str | os.PathLike[str]) -> Path:
    """Render ``figure`` with ``canvas_cls`` (Agg) into the PNG ``path``, creating its folder.

    Raises:
        ValidationError: ``path`` cannot be written.
    """
    target = Path(path)
    canvas_cls(figure)  # attaches itself to the figure: savefig renders with Agg
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, format="png", dpi=DPI)
    except OSError as err:
        raise ValidationError(
            f"expected a PNG path in a writable folder, got {target}, which cannot be written "
            f"({err.strerror or err}). Choose another path."
        ) from err
    return target


def _check_curves(
    curves: Mapping[str, Sequence[Any]], shape: str, *, x_positive: bool, y_optional: bool
) -> None:
    """Raise unless every point of every curve is an (x, y) pair of finite numbers."""
    for name, curve in curves.items():
        for point in curve:
            problem = "not a pair"
            if isinstance(point, Sequence) and len(point) == 2:
                try:
                    real(point[0], "x", low=0.0 if x_positive else None, open_low=x_positive)
                    if not (y_optional and point[1] is None):
                        real(point[1], "y")
                    continue
                except ValidationError as err:
                    problem = str(err).rstrip(".")
            raise ValidationError(
                f"expected the points of {name!r} as {shape} pairs of finite numbers, got "
                f"{point!r} ({problem})."
            )


def _xy(curve: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """MFLOPs and accuracy in %, in order of FLOPs."""
    points = sorted(curve, key=lambda p: p[0])
    return [f / 1e6 for f, _ in points], [100 * a for _, a in points]


def colour_map(names: Sequence[str]) -> dict[str, Any]:
    """The same colour for the same name across panels."""
    unique = list(dict.fromkeys(names))
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % len(palette)] for i, name in enumerate(unique)}
