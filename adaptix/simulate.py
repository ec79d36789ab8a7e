"""Offline simulation of early exiting over a stored `Trace`, and vectorised threshold sweeps.

`simulate` applies one policy; `sweep` evaluates many thresholds of many criteria at once. Both
compute the criterion's scores for every exit once and decide with tensor ops, no Python loop
over inputs, then measure from the additive counts of `adaptix.statistics` (which shards of a
trace reproduce exactly).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch
from torch import Tensor
from tqdm.auto import tqdm

from adaptix.errors import PluginError, ValidationError
from adaptix.files import atomic_write
from adaptix.plugins import AdaptixPluginManager, call_plugin, resolve_manager
from adaptix.policy import ExitPolicy
from adaptix.scores import prediction
from adaptix.trace import Trace

if TYPE_CHECKING:
    from adaptix.calibration import Calibration


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


@dataclass(frozen=True)
class FrontierPoint:
    """One (criterion, threshold) point of a sweep, with the metrics of `SimulationResult`."""

    criterion: str
    threshold: float
    accuracy: float | None
    early_accuracy: float | None
    relative_cost: float
    mean_cost: float
    exit_histogram: tuple[float, ...]

    @property
    def early_exit_rate(self) -> float:
        """Share of inputs that left before the last exit."""
        return sum(self.exit_histogram[:-1])


class Frontier(Sequence[FrontierPoint]):
    """The compute-accuracy trade-off of a sweep: one `FrontierPoint` per (criterion, threshold)."""

    def __init__(self, points: Sequence[FrontierPoint], costs: Sequence[float]) -> None:
        self.points = list(points)
        self.costs = [float(c) for c in costs]

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: Any) -> Any:
        return self.points[index]

    def __iter__(self) -> Iterator[FrontierPoint]:
        return iter(self.points)

    def __repr__(self) -> str:
        return f"Frontier({len(self)} points, criteria={self.criteria()})"

    def criteria(self) -> list[str]:
        """The criteria in the sweep, in order of first appearance."""
        return list(dict.fromkeys(p.criterion for p in self.points))

    def of(self, criterion: str) -> list[FrontierPoint]:
        """The points of one criterion, in threshold order."""
        return [p for p in self.points if p.criterion == criterion]

    def records(self) -> list[dict[str, Any]]:
        """Flat dicts (histogram spread into ``exit_share_<e>`` columns), e.g. for pandas."""
        rows = []
        for point in self.points:
            row = asdict(point)
            histogram = row.pop("exit_histogram")
            row.update({f"exit_share_{e}": share for e, share in enumerate(histogram)})
            rows.append(row)
        return rows

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write `records` as CSV (empty cells for undefined accuracies), atomically.

        Raises:
            ValidationError: ``path`` is a directory or cannot be written (see
                `adaptix.files.atomic_write`); an existing file is then left as it was.
        """
        rows = self.records()
        fields = (
            list(rows[0]) if rows else [f.name for f in FrontierPoint.__dataclass_fields__.values()]
        )

        def write(handle: BinaryIO) -> None:
            text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            text.flush()
            text.detach()  # atomic_write closes the file itself

        return atomic_write(path, write, "frontier")


def simulate(trace: Trace, policy: ExitPolicy) -> SimulationResult:
    """Apply ``policy`` to every input of ``trace`` as if the model had exited early.

    Raises:
        CalibrationError: the policy's calibration was made for another number of exits/classes.
        PluginError: the criterion raised or returned malformed scores.
    """
    from adaptix.statistics import count_exits  # statistics builds on this module

    _check_inputs(trace, policy)
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
        criterion's points are `adaptix.statistics.count_thresholds` (...).points(): counts of
        shards of ``trace``, added, give the same points, bit for bit.

    Raises:
        ValidationError: no criteria, an empty grid, a threshold the criterion refuses (NaN,
            out of range, not a number), thresholds for a criterion not swept.
        PluginError: an unknown criterion, or one that raised or returned malformed scores.
    """
    from adaptix.statistics import count_thresholds  # statistics builds on this module

    _check_trace(trace)
    manager = resolve_manager(plugins)
    named = _criteria_params(criteria)
    if isinstance(thresholds, Mapping):
        unknown = [name for name in thresholds if name not in named]
        if unknown:
            raise ValidationError(
                f"thresholds given for {unknown}, which are not among the swept criteria "
                f"{list(named)}. Check the names."
            )
        grids = {name: _grid(thresholds.get(name), f"thresholds[{name!r}]") for name in named}
    else:
        shared = _grid(thresholds, "thresholds")
        grids = {name: shared for name in named}
    points: list[FrontierPoint] = []
    for name, params in tqdm(named.items(), desc="sweep", disable=not progress, unit="criterion"):
        counts = count_thresholds(trace, name, grids[name], calibration, plugins=manager, **params)
        points.extend(counts.points())
    return Frontier(points, trace.costs.tolist())


def _check_trace(trace: Trace) -> None:
    if not isinstance(trace, Trace):
        raise ValidationError(
            f"expected an adaptix.Trace, got {type(trace).__name__}. Build one with "
            "adaptix.Trace(logits, labels, costs) or model.trace(...)."
        )


def _check_inputs(trace: Trace, pol: ExitPolicy) -> None:
    _check_trace(trace)
    if not isinstance(pol, ExitPolicy):
        raise ValidationError(
            f"expected an adaptix.ExitPolicy, got {type(pol).__name__}. Build one with "
            "adaptix.policy(name, threshold, ...)."
        )
    pol.check_model(trace.num_exits, trace.num_classes)


def exit_indices(trace: Trace, base: ExitPolicy, grid: Sequence[float]) -> Tensor:
    """The exit every input takes under ``base``'s criterion at each threshold of ``grid``.

    The vectorised core of `sweep` and `adaptix.guarantee`: int64 ``[N, T]``, column t for
    threshold ``grid[t]`` (validated by the criterion), from one computation of the scores.

    Raises:
        ValidationError: not a trace and a policy, or a threshold the criterion refuses.
        CalibrationError: the policy's calibration was made for another model.
        PluginError: the criterion raised or returned malformed scores.

    With ``key`` the score oriented so that larger exits (``-score`` for "le" criteria), an input
    exits at the first e <= E-2 where key >= τ. The running maximum of key over exits is
    non-decreasing, so that first e is the number of exits whose running maximum is still < τ:
    a binary search per input, O(N T log E), instead of a T x N x E comparison.
    """
    _check_inputs(trace, base)
    grid = [base.with_threshold(t).threshold for t in grid]
    num_exits = trace.num_exits
    n = trace.num_inputs
    if num_exits == 1:
        return torch.zeros(n, len(grid), dtype=torch.long, device=trace.logits.device)
    sign = 1.0 if base.criterion.direction == "ge" else -1.0
    key = (base.scores(trace.logits)[:, : num_exits - 1] * sign).nan_to_num(
        nan=-math.inf, posinf=math.inf, neginf=-math.inf
    )
    running = key.cummax(dim=1).values.contiguous()  # [N, E-1], sorted along exits
    taus = torch.tensor(grid, dtype=torch.float64, device=running.device) * sign
    # side="left" counts running maxima strictly below τ: the index of the first exit that fires.
    return torch.searchsorted(running, taus.expand(n, len(grid)).contiguous(), side="left")


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


def _grid(chosen: object, what: str) -> list[Any] | None:
    """The thresholds in ``chosen`` as a non-empty list (None: the criterion's default grid).

    The values themselves are validated by the criterion, when the policies are built.
    """
    if chosen is None:
        return None
    if isinstance(chosen, Tensor):
        values: list[Any] = chosen.flatten().tolist()
    elif isinstance(chosen, (str, bytes)) or not isinstance(chosen, Iterable):
        raise ValidationError(
            f"expected {what} as a list of thresholds, got {type(chosen).__name__} {chosen!r}. "
            "For a single threshold, pass a list of one."
        )
    else:
        try:
            values = list(chosen)
        except TypeError as err:  # e.g. a 0-d numpy array: iterable by type, not by value
            raise ValidationError(
                f"expected {what} as a list of thresholds, got {type(chosen).__name__} "
                f"{chosen!r}. For a single threshold, pass a list of one."
            ) from err
    if not values:
        raise ValidationError(
            f"expected {what} to hold at least one threshold, got an empty "
            f"{type(chosen).__name__}. Give thresholds, or None for the criteria's default grid."
        )
    return values


#: Points of a sweep's default grid (`ExitCriterion.default_thresholds`).
SWEEP_GRID_SIZE = 50


def default_grid(
    name: str, manager: AdaptixPluginManager, size: int = SWEEP_GRID_SIZE
) -> list[Any]:
    """The criterion's own grid of ``size`` thresholds, for a computation that gives none:
    `SWEEP_GRID_SIZE` for sweeps, `adaptix.guarantee.CANDIDATES` for certification, on every
    path (single process or distributed)."""
    entry = manager.criteria.entry(name)
    grid = call_plugin(entry, "default_thresholds", entry.component.default_thresholds, size)
    fix = f"criterion '{name}' from plugin '{entry.plugin}' gives no usable default thresholds"
    try:
        values = _grid(grid, f"{entry.component.__qualname__}.default_thresholds()")
    except ValidationError as err:
        raise PluginError(f"{fix}: {err} Pass thresholds for it.") from err
    if values is None:
        raise PluginError(f"{fix} (got None). Pass thresholds for it.")
    return values
