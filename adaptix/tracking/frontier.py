"""`log_frontier`: one MLflow run per (criterion, threshold) point of a `sweep`."""

from __future__ import annotations

import math
import numbers
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from adaptix._version import __version__
from adaptix.errors import ValidationError
from adaptix.plugins import AdaptixPluginManager, resolve_manager
from adaptix.simulate import Frontier, FrontierPoint
from adaptix.tracking.tracker import Tracker

if TYPE_CHECKING:
    from adaptix.calibration import Calibration
    from adaptix.components import AccuracyReading

_POINT_PARAMS = ("criterion", "threshold")


def log_frontier(
    frontier: Frontier,
    *,
    tracker: Tracker | None = None,
    parent: str | None = None,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
    calibration: Calibration | None = None,
    extra_metrics: Mapping[tuple[str, float], Mapping[str, float | None]] | None = None,
    plugins: AdaptixPluginManager | None = None,
    artifact_path: str | None = None,
    progress: bool = False,
) -> list[str]:
    """Log every point of ``frontier`` as a finished MLflow run (a child of ``parent``).

    Each run is named ``<criterion>@<threshold>`` and holds:

    - params: ``criterion``, ``threshold``, ``num_exits``, ``adaptix_version``, ``model`` (when
      given), ``bins``, ``calibration_method`` and ``calibration_checksum`` (when
      ``calibration`` is given), and every entry of ``params``;
    - metrics: ``accuracy``, ``early_accuracy``, ``relative_cost``, ``flops`` (the mean cost
      per input, in the trace's cost unit: FLOPs for traces of a `MultiExitModel`),
      ``exit_share_<e>`` for every exit, ``early_exit_rate``, ``threshold`` (also a metric, so
      that MLflow's charts can plot against it), for criteria that declare an
      `AccuracyReading` ``target`` = the accuracy target δ the threshold reads as (1 - τ for
      ``entropy``, τ for ``confidence`` and ``pcee``) and ``shortfall`` = target - early
      accuracy (positive: the target was missed), and the point's entry of
      ``extra_metrics``. Undefined metrics (None: no labels, or no input left early) are not
      logged; the run's ``adaptix.undefined_metrics`` tag names them.

    With a ``parent``, the frontier CSV (`Frontier.to_csv`) and the calibration file
    (`Calibration.save`) are logged as its artifacts ``frontier.csv`` and ``calibration.json``
    (under ``artifact_path`` if given, e.g. one folder per log_frontier call on one parent).

    Args:
        frontier: what `adaptix.sweep` returned.
        tracker: where to log (default: ``Tracker()``, experiment ``adaptix`` at
            `default_tracking_uri`).
        parent: the parent run id, e.g. from ``tracker.start_run``; None logs top-level runs.
        model: the model's name, logged as a param.
        params: more params for every run (seed, split sizes, logit scale, ...).
        calibration: the calibration the sweep used.
        extra_metrics: (criterion, threshold) -> extra metrics for that point's run (e.g. a
            measured speed-up). Thresholds match the frontier's up to floating-point rounding.
        plugins: the plugin manager whose registry declares each criterion's accuracy
            reading (default: the shared one); pass the one the sweep used.
        artifact_path: the folder of the parent's artifacts to write the files into.
        progress: show a progress bar.

    Returns:
        The ids of the runs created (empty, or short, if the tracker is or becomes disabled:
        see ``tracker.failures``).

    Raises:
        ValidationError: ``frontier`` is not a Frontier, ``params`` or ``extra_metrics`` clash
            with the metrics and params set here, or an ``extra_metrics`` key matches no point.
        PluginError: a criterion of ``frontier`` is not registered in ``plugins``.
    """
    if not isinstance(frontier, Frontier):
        raise ValidationError(
            f"expected an adaptix.Frontier, got {type(frontier).__name__}. Pass what "
            "adaptix.sweep returned."
        )
    manager = resolve_manager(plugins)
    readings = {name: manager.criteria.get(name).accuracy_reading for name in frontier.criteria()}
    common = _common_params(frontier, model, params, calibration)
    extras = _match_extras(frontier, extra_metrics or {}, readings)
    tracker = Tracker() if tracker is None else tracker
    run_ids: list[str] = []
    points = tqdm(frontier, desc="log_frontier", disable=not progress, unit="run")
    for index, point in enumerate(points):
        if not tracker.enabled:
            break
        metrics = _point_metrics(point, readings[point.criterion])
        metrics.update(extras.get(index, {}))
        run_id = tracker.log_point(
            parent,
            f"{point.criterion}@{_format_threshold(point.threshold)}",
            {
                "criterion": point.criterion,
                "threshold": _format_threshold(point.threshold),
                **common,
            },
            metrics,
        )
        if run_id is not None:
            run_ids.append(run_id)
    if parent is not None and tracker.enabled:
        _log_files(tracker, parent, frontier, calibration, artifact_path)
    return run_ids


def _common_params(
    frontier: Frontier,
    model: str | None,
    params: Mapping[str, Any] | None,
    calibration: Calibration | None,
) -> dict[str, Any]:
    common: dict[str, Any] = {"num_exits": len(frontier.costs), "adaptix_version": __version__}
    if model is not None:
        common["model"] = model
    if calibration is not None:
        common["bins"] = calibration.bins
        common["calibration_method"] = calibration.method
        common["calibration_checksum"] = calibration.checksum
    clashes = sorted(set(params or {}) & {*common, *_POINT_PARAMS})
    if clashes:
        raise ValidationError(
            f"expected params that log_frontier does not set itself, got {clashes}. Rename them "
            "(or pass model= and calibration= instead)."
        )
    common.update(params or {})
    return common


def _point_metrics(point: FrontierPoint, reading: AccuracyReading | None) -> dict[str, Any]:
    metrics: dict[str, float | None] = {
        "accuracy": point.accuracy,
        "early_accuracy": point.early_accuracy,
        "relative_cost": point.relative_cost,
        "flops": point.mean_cost,
        "early_exit_rate": point.early_exit_rate,
        "threshold": point.threshold,
    }
    metrics.update({f"exit_share_{e}": share for e, share in enumerate(point.exit_histogram)})
    if reading is not None:
        target = reading.target(point.threshold)
        early = point.early_accuracy
        metrics["target"] = target
        metrics["shortfall"] = None if early is None else target - early
    return metrics


def _match_extras(
    frontier: Frontier,
    extra_metrics: Mapping[tuple[str, float], Mapping[str, float | None]],
    readings: Mapping[str, AccuracyReading | None],
) -> dict[int, dict[str, float | None]]:
    """Point index -> extra metrics; every key must match a point, no name may clash."""
    matched: dict[int, dict[str, float | None]] = {}
    for key, metrics in extra_metrics.items():
        if not (
            isinstance(key, tuple)
            and len(key) == 2
            and isinstance(key[1], numbers.Real)
            and isinstance(metrics, Mapping)
        ):
            raise ValidationError(
                "expected extra_metrics as {(criterion, threshold): {metric: value}}, got "
                f"{key!r}: {metrics!r}. Key each point's metrics by its criterion and threshold."
            )
        criterion, threshold = key
        index = next(
            (
                i
                for i, point in enumerate(frontier)
                if point.criterion == criterion
                and math.isclose(point.threshold, float(threshold), rel_tol=1e-9, abs_tol=1e-12)
            ),
            None,
        )
        if index is None:
            grid = [_format_threshold(p.threshold) for p in frontier.of(criterion)]
            raise ValidationError(
                f"expected extra_metrics keys (criterion, threshold) of points in the frontier, "
                f"got {key!r}; the frontier has {criterion!r} at thresholds {grid or 'none'}."
            )
        logged = _point_metrics(frontier[index], readings[criterion])
        clashes = sorted(set(metrics) & set(logged))
        if clashes:
            raise ValidationError(
                f"expected extra metrics with names of their own, got {clashes} for {key!r}, "
                "which log_frontier logs itself. Rename them."
            )
        matched.setdefault(index, {}).update(metrics)
    return matched


def _log_files(
    tracker: Tracker,
    parent: str,
    frontier: Frontier,
    calibration: Calibration | None,
    artifact_path: str | None,
) -> None:
    with tempfile.TemporaryDirectory(prefix="adaptix-") as tmp:
        tracker.log_artifact(parent, frontier.to_csv(Path(tmp) / "frontier.csv"), artifact_path)
        if calibration is not None:
            saved = calibration.save(Path(tmp) / "calibration.json")
            tracker.log_artifact(parent, saved, artifact_path)


def _format_threshold(threshold: float) -> str:
    """Short and exact enough: 0.9900000095367432 (a float32 grid value) reads as 0.99."""
    return f"{threshold:.6g}"
