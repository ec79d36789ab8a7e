"""`log_frontier`: one MLflow run per (criterion, threshold) point of a `sweep`; `log_certified`:
one per certified policy (`adaptix.guarantee`, `adaptix.budget`); `log_survivors`: one per
policy on a survivor calibration (`adaptix.offline.survivors`)."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from adaptix._version import __version__
from adaptix.components import ParamsModel, build_params
from adaptix.errors import ValidationError
from adaptix.offline.certificate import Certificate
from adaptix.offline.frontier import Frontier, FrontierPoint
from adaptix.offline.policy import ExitPolicy
from adaptix.plugins import AdaptixPluginManager, resolve_manager
from adaptix.tracking.tracker import Tracker

if TYPE_CHECKING:
    from adaptix.components import AccuracyReading
    from adaptix.core.calibration import Calibration

_POINT_PARAMS = ("criterion", "threshold")
#: The tag that holds a certified run's statement (`Certificate.statement`).
CERTIFICATE_TAG = "adaptix.certificate"


def log_frontier(
    frontier: Frontier,
    *,
    tracker: Tracker | None = None,
    parent: str | None = None,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
    calibration: Calibration | None = None,
    extra_metrics: Mapping[tuple[str, float], Mapping[str, float | None]] | None = None,
    criterion_params: Mapping[str, Mapping[str, Any]] | None = None,
    plugins: AdaptixPluginManager | None = None,
    artifact_path: str | None = None,
    progress: bool = False,
) -> list[str]:
    """Log every point of ``frontier`` as a finished MLflow run (a child of ``parent``).

    Each run is named ``<criterion>@<threshold>`` and holds:

    - params: ``criterion``, ``threshold``, the criterion's own parameters as
      ``criterion.<name>`` (``criterion.alpha`` for ``pcee_lcb``, ``criterion.window`` for
      ``pcee_ws``), ``num_exits``, ``adaptix_version``, ``model`` (when given), ``bins``,
      ``calibration_method`` and ``calibration_checksum`` (when ``calibration`` is given), and
      every entry of ``params``;
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
        criterion_params: criterion -> the parameters it was swept with, as given to `sweep`
            (a criterion left out: its defaults).
        plugins: the plugin manager whose registry declares each criterion's accuracy
            reading (default: the shared one); pass the one the sweep used.
        artifact_path: the folder of the parent's artifacts to write the files into.
        progress: show a progress bar.

    Returns:
        The ids of the runs created (empty, or short, if the tracker is or becomes disabled:
        see ``tracker.failures``).

    Raises:
        ValidationError: ``frontier`` is not a Frontier, ``params`` or ``extra_metrics`` clash
            with the metrics and params set here, an ``extra_metrics`` key matches no point, or
            ``criterion_params`` names a criterion the frontier lacks or a parameter it refuses.
        PluginError: a criterion of ``frontier`` is not registered in ``plugins``.
    """
    if not isinstance(frontier, Frontier):
        raise ValidationError(
            f"expected an adaptix.Frontier, got {type(frontier).__name__}. Pass what "
            "adaptix.sweep returned."
        )
    manager = resolve_manager(plugins)
    readings = {name: manager.criteria.get(name).accuracy_reading for name in frontier.criteria()}
    swept = _swept_params(frontier, criterion_params or {}, manager)
    common = _common_params(frontier, model, params, calibration, swept)
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
                **swept[point.criterion],
                **common,
            },
            metrics,
        )
        if run_id is not None:
            run_ids.append(run_id)
    if parent is not None and tracker.enabled:
        _log_files(tracker, parent, frontier, calibration, artifact_path)
    return run_ids


def log_certified(
    policies: Sequence[ExitPolicy],
    points: Sequence[FrontierPoint],
    *,
    tracker: Tracker | None = None,
    parent: str | None = None,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> list[str]:
    """Log every certified policy, with the point it realised on test data, as a finished run.

    ``policies[i]`` is what `adaptix.guarantee`, `adaptix.budget` or `adaptix.Certifier`
    returned, ``points[i]`` its `simulate` on held-out data as a `FrontierPoint`. Each run is
    named ``<mode>:<criterion>@<level>`` and holds:

    - params: ``mode`` (``guarantee``, or ``budget`` for a relative-cost target),
      ``criterion``, its own parameters as ``criterion.<name>``, the certificate's fields
      (``target``, ``level`` (δ, ε or the budget), ``alpha``, ``n``, ``method``,
      ``certified``, ``threshold`` (None when nothing was certified), ``estimate``, ``bound``,
      ``tested``, and its ``early_exit_rate`` as ``calibration_early_exit_rate``),
      ``num_exits``, ``adaptix_version``, ``model`` (when given) and every entry of ``params``;
    - metrics: those of `log_frontier` (accuracy, early accuracy, relative cost, FLOPs, exit
      shares, early-exit rate), with ``target`` = the level and, for an early-accuracy target,
      ``shortfall`` = level − early accuracy;
    - the tag ``adaptix.offline.certificate``: the certificate's statement.

    Args:
        policies: certified policies (each with a `Certificate`).
        points: what each policy realised, in the same order.
        tracker: where to log (default: ``Tracker()``).
        parent: the parent run id; None logs top-level runs.
        model: the model's name, logged as a param.
        params: more params for every run (seed, split sizes, ...).

    Returns:
        The ids of the runs created.

    Raises:
        ValidationError: a policy without a certificate, a point that is not a `FrontierPoint`,
            sequences of different lengths, or ``params`` that clash with the params set here.
    """
    checked = []
    for certified, point in _paired(policies, points, "certified"):
        certificate = certified.certificate if isinstance(certified, ExitPolicy) else None
        if certificate is None:
            raise ValidationError(
                f"expected policies returned by adaptix.guarantee or adaptix.budget, got "
                f"{certified!r}, which carries no certificate."
            )
        if not isinstance(point, FrontierPoint):
            raise ValidationError(
                f"expected FrontierPoints, got a {type(point).__name__}. Build one from what "
                "adaptix.simulate returned."
            )
        checked.append((certified, certificate, point))
    own = {"mode", "criterion", "num_exits", "calibration_early_exit_rate"}
    own |= {field.name for field in dataclasses.fields(Certificate)}
    common = _shared_params(
        "log_certified", own, [certified for certified, _, _ in checked], model, params
    )
    tracker = Tracker() if tracker is None else tracker
    run_ids: list[str] = []
    for certified, certificate, point in checked:
        if not tracker.enabled:
            break
        fields = certificate.to_dict()
        fields.pop("params")  # logged as criterion.<name>, like every other run's
        fields["calibration_early_exit_rate"] = fields.pop("early_exit_rate")
        for name in ("exits", "correct", "costs"):  # the evidence, one entry per exit
            if fields[name] is not None:
                fields[name] = json.dumps(list(fields[name]))
        mode = "budget" if certificate.target == "relative_cost" else "guarantee"
        metrics = _point_metrics(point, None)
        metrics["target"] = certificate.level
        if certificate.target == "early_accuracy":
            early = point.early_accuracy
            metrics["shortfall"] = None if early is None else certificate.level - early
        run_id = tracker.log_point(
            parent,
            f"{mode}:{certified.name}@{certificate.level:g}",
            {
                "mode": mode,
                "criterion": certified.name,
                **_prefixed(certified.criterion.params),
                **fields,
                "num_exits": len(point.exit_histogram),
                **common,
            },
            metrics,
            tags={CERTIFICATE_TAG: certificate.statement()},
        )
        if run_id is not None:
            run_ids.append(run_id)
    return run_ids


def log_survivors(
    policies: Sequence[ExitPolicy],
    points: Sequence[FrontierPoint],
    *,
    tracker: Tracker | None = None,
    parent: str | None = None,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
    plugins: AdaptixPluginManager | None = None,
) -> list[str]:
    """Log every policy that reads a survivor calibration, with the point it realised on test
    data, as a finished run.

    ``policies[i]`` is what ``SurvivorCounts.policy(δ)`` returned (`adaptix.offline.survivors`: the
    criterion at δ reading its survivor calibration at δ), ``points[i]`` its `simulate` on
    held-out data as a `FrontierPoint`. Each δ reads tables of its own, so each run records
    its own calibration. Each run is named ``survivors:<criterion>@<δ>`` and holds:

    - params: ``mode`` (``survivors``), ``criterion``, its own parameters as
      ``criterion.<name>``, ``threshold`` (δ), ``num_exits``, ``adaptix_version``, ``model``
      (when given), ``bins``, ``calibration_method`` (``survivors``), ``calibration_checksum``
      (that δ's calibration, `Calibration.checksum`), ``calibration_inputs`` (the calibration
      inputs its tables count at each exit, a JSON list: the survivors), and every entry of
      ``params``;
    - metrics: those of `log_frontier` (accuracy, early accuracy, relative cost, FLOPs, exit
      shares, early-exit rate, threshold, and ``target`` and ``shortfall`` for a criterion
      that declares an `AccuracyReading`).

    Args:
        policies: policies that read survivor calibrations.
        points: what each policy realised, in the same order.
        tracker: where to log (default: ``Tracker()``).
        parent: the parent run id; None logs top-level runs.
        model: the model's name, logged as a param.
        params: more params for every run (seed, split sizes, ...).
        plugins: the plugin manager whose registry declares each criterion's accuracy reading
            (default: the shared one).

    Returns:
        The ids of the runs created.

    Raises:
        ValidationError: a policy that reads no survivor calibration, a point that is not a
            `FrontierPoint`, sequences of different lengths, or ``params`` that clash with the
            params set here.
        PluginError: a policy's criterion is not registered in ``plugins``.
    """
    checked = []
    for pol, point in _paired(policies, points, "survivor"):
        calibration = pol.calibration if isinstance(pol, ExitPolicy) else None
        if calibration is None or calibration.survivors is None:
            raise ValidationError(
                f"expected policies that read survivor calibrations (SurvivorCounts.policy), "
                f"got {pol!r}. Log policies on the paper's calibration with log_frontier."
            )
        if not isinstance(point, FrontierPoint):
            raise ValidationError(
                f"expected FrontierPoints, got a {type(point).__name__}. Build one from what "
                "adaptix.simulate returned."
            )
        checked.append((pol, calibration, point))
    manager = resolve_manager(plugins)
    readings = {pol.name: manager.criteria.get(pol.name).accuracy_reading for pol, _, _ in checked}
    own = {"mode", "num_exits", "bins", "calibration_method", "calibration_checksum"}
    own |= {"calibration_inputs", *_POINT_PARAMS}
    common = _shared_params("log_survivors", own, [pol for pol, _, _ in checked], model, params)
    tracker = Tracker() if tracker is None else tracker
    run_ids: list[str] = []
    for pol, calibration, point in checked:
        if not tracker.enabled:
            break
        threshold = _format_threshold(pol.threshold)
        run_id = tracker.log_point(
            parent,
            f"survivors:{pol.name}@{threshold}",
            {
                "mode": "survivors",
                "criterion": pol.name,
                "threshold": threshold,
                **_prefixed(pol.criterion.params),
                "num_exits": len(point.exit_histogram),
                "bins": calibration.bins,
                "calibration_method": calibration.method,
                "calibration_checksum": calibration.checksum,
                "calibration_inputs": json.dumps(calibration.counts.sum(dim=1).tolist()),
                **common,
            },
            _point_metrics(point, readings[pol.name]),
        )
        if run_id is not None:
            run_ids.append(run_id)
    return run_ids


def _paired(
    policies: Sequence[ExitPolicy], points: Sequence[FrontierPoint], kind: str
) -> list[tuple[ExitPolicy, FrontierPoint]]:
    """One point per policy, in order.

    Raises:
        ValidationError: sequences of different lengths.
    """
    policies, points = list(policies), list(points)
    if len(policies) != len(points):
        raise ValidationError(
            f"expected one point per {kind} policy, got {len(policies)} policies and "
            f"{len(points)} points. Simulate each policy on the test trace once."
        )
    return list(zip(policies, points, strict=True))


def _shared_params(
    caller: str,
    own: set[str],
    policies: Sequence[ExitPolicy],
    model: str | None,
    params: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The params every run of ``caller`` shares: adaptix's version, the model and the caller's
    ``params``, which may not name what ``caller`` sets itself (``own``, the criteria's
    prefixed parameters, the version and the model).

    Raises:
        ValidationError: a clash, naming the params to rename.
    """
    common: dict[str, Any] = {"adaptix_version": __version__}
    if model is not None:
        common["model"] = model
    taken = own | set(common)
    taken |= {name for pol in policies for name in _prefixed(pol.criterion.params)}
    clashes = sorted(set(params or {}) & taken)
    if clashes:
        raise ValidationError(
            f"expected params that {caller} does not set itself, got {clashes}. Rename them."
        )
    common.update(params or {})
    return common


def _prefixed(params: ParamsModel) -> dict[str, Any]:
    """A criterion's parameters as MLflow params, ``criterion.<name>``."""
    return {f"criterion.{name}": value for name, value in params.model_dump().items()}


def _swept_params(
    frontier: Frontier,
    given: Mapping[str, Mapping[str, Any]],
    manager: AdaptixPluginManager,
) -> dict[str, dict[str, Any]]:
    """Criterion -> its validated parameters as MLflow params (defaults where not given)."""
    if not isinstance(given, Mapping):
        raise ValidationError(
            f"expected criterion_params as {{criterion: {{parameter: value}}}}, got "
            f"{type(given).__name__}."
        )
    unknown = sorted(set(given) - set(frontier.criteria()))
    if unknown:
        raise ValidationError(
            f"expected criterion_params for criteria of the frontier {frontier.criteria()}, got "
            f"{unknown}. Leave them out."
        )
    swept = {}
    for name in frontier.criteria():
        component = manager.criteria.get(name)
        built = build_params(component.Params, given.get(name, {}), f"criterion '{name}'")
        swept[name] = _prefixed(built)
    return swept


def _common_params(
    frontier: Frontier,
    model: str | None,
    params: Mapping[str, Any] | None,
    calibration: Calibration | None,
    swept: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    common: dict[str, Any] = {"num_exits": len(frontier.costs), "adaptix_version": __version__}
    if model is not None:
        common["model"] = model
    if calibration is not None:
        common["bins"] = calibration.bins
        common["calibration_method"] = calibration.method
        common["calibration_checksum"] = calibration.checksum
    own = {name for names in swept.values() for name in names}
    clashes = sorted(set(params or {}) & {*common, *_POINT_PARAMS, *own})
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
