"""Offline simulation of early exiting over a stored `Trace`, and vectorised threshold sweeps.

`simulate` applies one policy; `sweep` evaluates many thresholds of many criteria at once. Both
compute the criterion's scores for every exit once and decide with tensor ops, no Python loop
over inputs, then measure from the additive counts of `adaptix.offline.statistics` (which shards
of a trace reproduce exactly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from adaptix.core.scores import prediction
from adaptix.core.trace import Trace, check_trace
from adaptix.errors import ValidationError
from adaptix.offline.frontier import Frontier, FrontierPoint
from adaptix.offline.policy import ExitPolicy
from adaptix.offline.statistics import (
    check_inputs,
    count_exits,
    count_thresholds,
    threshold_grid,
)
from adaptix.plugins import AdaptixPluginManager, resolve_manager

if TYPE_CHECKING:
    from adaptix.core.calibration import Calibration


@dataclass(frozen=True)
class SimulationResult:
    """What `simulate` returns.

    Attributes:
        exit_index: int64 ``[N]``, the exit each input took.
        predictions: int64 ``[N]``, the prediction at that exit.
        accuracy: share of inputs predicted right (None without labels).
        early_accuracy: the same over inputs that left before the last exit (None without labels
            or when no input left early).
        relative_cost: mean cost of the exits taken / cost of the last exit.
        mean_cost: mean cost of the exits taken, in the trace's cost unit (e.g. FLOPs).
        exit_histogram: float64 ``[E]``, share of inputs leaving at each exit.
    """

    exit_index: Tensor
    predictions: Tensor
    accuracy: float | None
    early_accuracy: float | None
    relative_cost: float
    mean_cost: float
    exit_histogram: Tensor

    @property
    def early_exit_rate(self) -> float:
        """Share of inputs that left before the last exit."""
        return float(self.exit_histogram[:-1].sum())


def simulate(trace: Trace, policy: ExitPolicy) -> SimulationResult:
    """Apply ``policy`` to every input of ``trace`` as if the model had exited early.

    Raises:
        CalibrationError: the policy's calibration was made for another number of exits/classes.
        PluginError: the criterion raised or returned malformed scores.
    """
    check_inputs(trace, policy)
    num_exits = trace.num_exits
    scores = policy.scores(trace.logits)
    fired = policy.fires(scores[:, : num_exits - 1])
    # The last exit always fires; argmax picks the first exit that does.
    last = torch.ones(trace.num_inputs, 1, dtype=torch.bool, device=fired.device)
    exit_index = torch.cat([fired, last], dim=1).to(torch.int8).argmax(dim=1).long()
    predictions = prediction(trace.logits).gather(1, exit_index.unsqueeze(1)).squeeze(1)
    # The metrics of a sweep point, from the same counts: simulate and sweep agree exactly.
    counts = count_exits(trace, policy, [policy.threshold], exit_index.unsqueeze(1))
    (point,) = counts.points()
    return SimulationResult(
        exit_index=exit_index,
        predictions=predictions,
        accuracy=point.accuracy,
        early_accuracy=point.early_accuracy,
        relative_cost=point.relative_cost,
        mean_cost=point.mean_cost,
        exit_histogram=counts.exit_shares[0],
    )


def sweep(
    trace: Trace,
    criteria: str | Sequence[str] | Mapping[str, Mapping[str, Any]],
    thresholds: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    calibration: Calibration | None = None,
    *,
    plugins: AdaptixPluginManager | None = None,
    progress: bool = False,
) -> Frontier:
    """The trade-off frontier: metrics for every (criterion, threshold), vectorised.

    Args:
        trace: the (usually test) trace to evaluate on.
        criteria: a name, a list of names, or a mapping name -> criterion parameters.
        thresholds: one grid for all criteria, a mapping name -> grid, or None for each
            criterion's `default_thresholds` (also used for names missing from a mapping).
            Patience takes integers, so give it its own grid in a mapping. A grid is a
            non-empty list (or 1-D tensor) of thresholds; repeats give repeated points.
        calibration: passed to every criterion (needed by ``pcee`` and ``pcee_ws``).
        plugins: the plugin manager (default: `adaptix.plugins.default_plugin_manager`).
        progress: show a progress bar over criteria.

    Returns:
        A `Frontier`, criteria in the given order, thresholds in the given order. Each
        criterion's points are `adaptix.offline.statistics.count_thresholds` (...).points():
        counts of shards of ``trace``, added, give the same points, bit for bit.

    Raises:
        ValidationError: no criteria, an empty grid, a threshold the criterion refuses (NaN,
            out of range, not a number), thresholds for a criterion not swept.
        PluginError: an unknown criterion, or one that raised or returned malformed scores.
    """
    check_trace(trace)
    manager = resolve_manager(plugins)
    named = _criteria_params(criteria)
    if isinstance(thresholds, Mapping):
        unknown = [name for name in thresholds if name not in named]
        if unknown:
            raise ValidationError(
                f"thresholds given for {unknown}, which are not among the swept criteria "
                f"{list(named)}. Check the names."
            )
        grids = {
            name: threshold_grid(thresholds.get(name), f"thresholds[{name!r}]") for name in named
        }
    else:
        shared = threshold_grid(thresholds, "thresholds")
        grids = {name: shared for name in named}
    points: list[FrontierPoint] = []
    for name, params in tqdm(named.items(), desc="sweep", disable=not progress, unit="criterion"):
        counts = count_thresholds(trace, name, grids[name], calibration, plugins=manager, **params)
        points.extend(counts.points())
    return Frontier(points, trace.costs.tolist())


def _criteria_params(
    criteria: str | Sequence[str] | Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Criterion name -> parameters, from any of the forms `sweep` accepts."""
    if isinstance(criteria, str):
        return {criteria: {}}
    if not isinstance(criteria, (Mapping, Sequence)):
        raise ValidationError(
            f"expected criteria as a name, a list of names or a mapping name -> parameters, got "
            f"{type(criteria).__name__}."
        )
    names = list(criteria)
    if not names:
        raise ValidationError(
            "expected at least one criterion to sweep, got none. Pass a name such as "
            "'confidence', a list of names, or a mapping name -> parameters."
        )
    bad_names = [name for name in names if not isinstance(name, str)]
    if bad_names:
        raise ValidationError(f"expected criterion names (str), got {bad_names!r}.")
    if not isinstance(criteria, Mapping):
        if len(set(names)) != len(names):
            raise ValidationError(
                f"expected distinct criterion names, got {names}. To sweep one criterion with "
                "several parameter sets, call sweep once per set."
            )
        return {name: {} for name in names}
    bad = [name for name, params in criteria.items() if not isinstance(params, Mapping)]
    if bad:
        raise ValidationError(
            f"expected criterion parameters as mappings (name -> {{param: value}}), got "
            f"{[type(criteria[name]).__name__ for name in bad]} for {bad}."
        )
    return {name: dict(params) for name, params in criteria.items()}
