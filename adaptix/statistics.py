"""Per-threshold counts that add: what `adaptix.sweep` and `adaptix.Certifier` read, by shard.

Every quantity behind a sweep point or a certificate is a count over inputs: how many leave at
each exit under each threshold, how many of those are predicted right, how many the policy gets
wrong where the last exit is right. `count_thresholds` counts one shard of a trace for a whole
threshold grid in one pass; the counts of shards of a data set add with ``+`` to the counts of
the whole, exactly (they are integers), like `Calibration` tables.

`sweep`, `simulate` and `Certifier` compute their metrics from these counts and nothing else, so
a sharded computation reduces to exactly the single-process result, floats included: the only
float steps (shares, accuracies and the mean cost Σ_e exits[t, e] · costs[e] / N, summed over
exits in order) run on the summed counts, the same numbers on both paths.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adaptix.errors import CalibrationError, ValidationError
from adaptix.plugins import AdaptixPluginManager, resolve_manager
from adaptix.policy import ExitPolicy, policy
from adaptix.scores import prediction
from adaptix.simulate import (
    FrontierPoint,
    _check_inputs,
    _check_trace,
    _grid,
    default_grid,
    exit_indices,
)
from adaptix.trace import Trace

if TYPE_CHECKING:
    from adaptix.calibration import Calibration

#: The fields that must be equal for two counts to add, in the order they are compared.
_KEYS = ("criterion", "params", "thresholds", "costs", "calibration")


@dataclass(frozen=True, eq=False)
class ThresholdCounts:
    """Additive per-threshold counts of one criterion over a set of inputs (a shard).

    Counts of shards of a data set, made with the same criterion, parameters, thresholds,
    costs and calibration, add with ``+`` to the counts of the whole (reduce a list of them
    with ``functools.reduce(operator.add, shards)``). They pickle, so they travel between
    workers.

    Attributes:
        criterion: the criterion's registry name.
        params: the criterion's parameters (``params.model_dump()`` items), sorted by name.
        thresholds: the thresholds as the criterion validated them, in the caller's order
            (repeats allowed); T of them.
        costs: the cumulative cost of each of the E exits (the trace's ``costs``).
        calibration: `Calibration.checksum` of the calibration the criterion reads, or None
            for a criterion that reads none (``needs_calibration`` False: confidence counted
            with or without a calibration adds).
        num_inputs: N, how many inputs were counted (at least 1).
        exits: int64 ``[T, E]``: inputs leaving at exit e under threshold t.
        correct: int64 ``[T, E]``: of those, how many are predicted right (None when counted
            without labels).
        lost: int64 ``[T]``: inputs the last exit predicts right and the policy wrong (None
            without labels).
        final_correct: inputs the last exit predicts right (None without labels).

    Raises:
        ValidationError: fields of the wrong type or shape, or counts that contradict each
            other (rows of ``exits`` not summing to N, more right predictions than inputs).
    """

    criterion: str
    params: tuple[tuple[str, Any], ...]
    thresholds: tuple[float, ...]
    costs: tuple[float, ...]
    calibration: str | None
    num_inputs: int
    exits: Tensor
    correct: Tensor | None
    lost: Tensor | None
    final_correct: int | None

    def __post_init__(self) -> None:
        _check_counts(self)
        for name in ("exits", "correct", "lost"):  # frozen: set through object.__setattr__
            table = getattr(self, name)
            if table is not None:
                object.__setattr__(self, name, table.cpu())

    @property
    def num_exits(self) -> int:
        """E, the number of exits."""
        return len(self.costs)

    @property
    def labelled(self) -> bool:
        """Whether the counts know which predictions are right (counted with labels)."""
        return self.correct is not None

    @property
    def early(self) -> Tensor:
        """int64 ``[T]``: inputs leaving before the last exit, per threshold."""
        return self.exits[:, :-1].sum(dim=1)

    @property
    def early_correct(self) -> Tensor | None:
        """int64 ``[T]``: of those, how many are predicted right (None without labels)."""
        return None if self.correct is None else self.correct[:, :-1].sum(dim=1)

    @property
    def exit_shares(self) -> Tensor:
        """float64 ``[T, E]``: share of inputs leaving at each exit, per threshold."""
        return self.exits.double() / self.num_inputs

    @property
    def accuracy(self) -> Tensor | None:
        """float64 ``[T]``: share of inputs predicted right, per threshold (None without
        labels)."""
        return None if self.correct is None else self.correct.sum(dim=1).double() / self.num_inputs

    @property
    def mean_cost(self) -> Tensor:
        """float64 ``[T]``: mean cost of the exits taken, Σ_e exits[t, e] · costs[e] / N.

        Summed over exits in order, so equal counts give the same bits however they were
        reduced.
        """
        total = torch.zeros(len(self.thresholds), dtype=torch.float64)
        for e, cost in enumerate(self.costs):
            total = total + self.exits[:, e].double() * cost
        return total / self.num_inputs

    @property
    def relative_cost(self) -> Tensor:
        """float64 ``[T]``: `mean_cost` / the cost of the last exit."""
        return self.mean_cost / self.costs[-1]

    def points(self) -> list[FrontierPoint]:
        """One `FrontierPoint` per threshold, in order: what `adaptix.sweep` reports."""
        size = len(self.thresholds)
        accuracy: list[float | None] = [None] * size
        early_accuracy: list[float | None] = [None] * size
        if self.accuracy is not None and self.early_correct is not None:
            accuracy = self.accuracy.tolist()
            early_accuracy = [
                right / early if early > 0 else None
                for right, early in zip(
                    self.early_correct.tolist(), self.early.tolist(), strict=True
                )
            ]
        mean_cost, relative_cost = self.mean_cost.tolist(), self.relative_cost.tolist()
        shares = self.exit_shares.tolist()
        return [
            FrontierPoint(
                criterion=self.criterion,
                threshold=threshold,
                accuracy=accuracy[t],
                early_accuracy=early_accuracy[t],
                relative_cost=relative_cost[t],
                mean_cost=mean_cost[t],
                exit_histogram=tuple(shares[t]),
            )
            for t, threshold in enumerate(self.thresholds)
        ]

    def resolve(
        self,
        calibration: Calibration | None = None,
        *,
        plugins: AdaptixPluginManager | None = None,
    ) -> ExitPolicy:
        """The counted criterion as a policy at the first threshold, built with ``calibration``.

        Raises:
            CalibrationError: the criterion reads a calibration and ``calibration`` is not the
                one counted with (checksums differ, or it is missing), or not a `Calibration`.
            PluginError: the criterion is not installed.
            ValidationError: the parameters do not validate.
        """
        built = policy(
            self.criterion, self.thresholds[0], calibration, plugins=plugins, **dict(self.params)
        )
        given = _read_checksum(built)
        if given != self.calibration:
            raise CalibrationError(
                f"expected the calibration the counts were made with "
                f"({_checksum(self.calibration)}), got {_checksum(given)}. Pass the calibration "
                "that count_thresholds read."
            )
        return built

    def __add__(self, other: object) -> ThresholdCounts:
        """The counts of both sets of inputs.

        Raises:
            ValidationError: the two differ in criterion, parameters, thresholds, costs or
                calibration, or one is labelled and the other not.
        """
        if not isinstance(other, ThresholdCounts):
            return NotImplemented
        for key in _KEYS:
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                raise ValidationError(
                    f"expected counts with the same {key} to add, got {_differ(mine, theirs)}. "
                    "Count every shard with the same criterion, parameters, thresholds, "
                    "calibration and model."
                )
        if self.labelled != other.labelled:
            raise ValidationError(
                "expected counts that are both labelled or both unlabelled to add, got one of "
                "each: the sum would not know which predictions of the unlabelled shard are "
                "right. Count every shard with labels, or every shard without."
            )
        return ThresholdCounts(
            criterion=self.criterion,
            params=self.params,
            thresholds=self.thresholds,
            costs=self.costs,
            calibration=self.calibration,
            num_inputs=self.num_inputs + other.num_inputs,
            exits=self.exits + other.exits,
            correct=_add(self.correct, other.correct),
            lost=_add(self.lost, other.lost),
            final_correct=(
                None
                if self.final_correct is None or other.final_correct is None
                else self.final_correct + other.final_correct
            ),
        )

    def __repr__(self) -> str:
        labelled = "labelled" if self.labelled else "unlabelled"
        return (
            f"ThresholdCounts({self.criterion!r}, T={len(self.thresholds)}, E={self.num_exits}, "
            f"N={self.num_inputs}, {labelled})"
        )


def count_thresholds(
    trace: Trace,
    criterion: str,
    thresholds: Sequence[float] | Tensor | None = None,
    calibration: Calibration | None = None,
    *,
    plugins: AdaptixPluginManager | None = None,
    **params: Any,
) -> ThresholdCounts:
    """Count ``trace`` under ``criterion`` at every threshold, from one computation of the scores.

    Args:
        trace: the inputs to count (a shard; labelled or not).
        criterion: any registered criterion.
        thresholds: a non-empty list (or 1-D tensor) of thresholds, or None for the criterion's
            `default_thresholds`, as `adaptix.sweep` uses them.
        calibration: for criteria that read one.
        plugins: the plugin manager to resolve ``criterion`` with.
        **params: the criterion's own parameters.

    Raises:
        ValidationError: not a trace, an empty grid, a threshold the criterion refuses.
        PluginError: an unknown criterion, one without usable default thresholds, or one that
            raised or returned malformed scores.
        CalibrationError: a calibration is needed and missing, or made for another model.
    """
    _check_trace(trace)
    if not isinstance(criterion, str):
        raise ValidationError(f"expected a criterion name (str), got {criterion!r}.")
    manager = resolve_manager(plugins)
    grid = _grid(thresholds, "thresholds")
    if grid is None:
        grid = default_grid(criterion, manager)
    base = policy(criterion, grid[0], calibration, plugins=manager, **params)
    validated = [base.with_threshold(t).threshold for t in grid]
    return count_exits(trace, base, validated, exit_indices(trace, base, validated))


def count_exits(
    trace: Trace, pol: ExitPolicy, thresholds: Sequence[float], exits: Tensor
) -> ThresholdCounts:
    """Count exits already decided: the counting half of `count_thresholds`.

    Args:
        trace: the inputs.
        pol: the policy whose criterion, parameters and calibration decided them.
        thresholds: the T thresholds, validated by the criterion.
        exits: int64 ``[N, T]``, the exit each input took at each threshold (on the trace's
            device), as `adaptix.simulate.exit_indices` gives them.

    Raises:
        ValidationError: not a trace and a policy, or ``exits`` is not an int64 ``[N, T]``
            tensor of exit indices.
        CalibrationError: the policy's calibration was made for another model.
    """
    _check_inputs(trace, pol)
    n, num_exits = trace.num_inputs, trace.num_exits
    if (
        not isinstance(exits, Tensor)
        or exits.dtype != torch.int64
        or tuple(exits.shape) != (n, len(thresholds))
    ):
        got = f"{exits.dtype} {list(exits.shape)}" if isinstance(exits, Tensor) else exits
        raise ValidationError(
            f"expected exits as an int64 tensor [N, T] = {[n, len(thresholds)]}, got "
            f"{reprlib.repr(got)}."
        )
    if bool(((exits < 0) | (exits >= num_exits)).any()):
        raise ValidationError(
            f"expected exit indices in [0, {num_exits}) (the trace's exits), got values from "
            f"{int(exits.min())} to {int(exits.max())}."
        )
    shape = (len(thresholds), num_exits)
    # One flat bincount over (threshold, exit) cells: no loop over inputs or thresholds.
    offsets = torch.arange(shape[0], device=exits.device) * num_exits
    cells = (exits + offsets).flatten()
    counted = torch.bincount(cells, minlength=shape[0] * num_exits)
    correct = lost = final_correct = None
    if trace.labels is not None:
        right_all = prediction(trace.logits) == trace.labels.unsqueeze(1)  # [N, E]
        right = right_all.gather(1, exits)  # [N, T]: right at the exit taken
        correct = torch.bincount(cells[right.flatten()], minlength=counted.numel()).view(shape)
        final = right_all[:, -1:]
        lost = (final & ~right).sum(dim=0)
        final_correct = int(final.sum())
    return ThresholdCounts(
        criterion=pol.name,
        params=tuple(sorted(pol.criterion.params.model_dump().items())),
        thresholds=tuple(float(t) for t in thresholds),
        costs=tuple(trace.costs.tolist()),
        calibration=_read_checksum(pol),
        num_inputs=n,
        exits=counted.view(shape),
        correct=correct,
        lost=lost,
        final_correct=final_correct,
    )


# ------------------------------------------------------------------------------------ helpers


def _check_counts(counts: ThresholdCounts) -> None:
    """`ValidationError` unless the fields of ``counts`` are well formed and consistent."""
    if not isinstance(counts.criterion, str) or not isinstance(counts.params, tuple):
        raise ValidationError(
            f"expected a criterion name and a tuple of parameters, got {counts.criterion!r} and "
            f"{reprlib.repr(counts.params)}."
        )
    for key in ("thresholds", "costs"):
        values = getattr(counts, key)
        if not isinstance(values, tuple) or not values:
            raise ValidationError(f"expected {key} as a non-empty tuple, got {values!r}.")
    if not all(_is_real(c) and 0 <= c < math.inf for c in counts.costs) or counts.costs[-1] <= 0:
        raise ValidationError(
            f"expected costs as a trace holds them (finite, non-negative, the last > 0), got "
            f"{reprlib.repr(counts.costs)}."
        )
    n = counts.num_inputs
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValidationError(f"expected num_inputs to be an integer >= 1, got {n!r}.")
    shape = (len(counts.thresholds), len(counts.costs))
    _check_table(counts.exits, "exits", shape)
    if bool((counts.exits.sum(dim=1) != n).any()):
        raise ValidationError(
            f"expected every threshold's exits to count all {n} inputs, got row sums "
            f"{reprlib.repr(counts.exits.sum(dim=1).tolist())}."
        )
    labelled = {
        name: getattr(counts, name) is not None for name in ("correct", "lost", "final_correct")
    }
    if len(set(labelled.values())) != 1:
        raise ValidationError(
            "expected correct, lost and final_correct all given (labelled counts) or all None "
            f"(unlabelled), got {[name for name, given in labelled.items() if given]} only."
        )
    if counts.correct is None or counts.lost is None:
        return
    _check_table(counts.correct, "correct", shape)
    _check_table(counts.lost, "lost", shape[:1])
    final = counts.final_correct
    if isinstance(final, bool) or not isinstance(final, int) or not 0 <= final <= n:
        raise ValidationError(
            f"expected final_correct to be an integer in [0, {n}], got {final!r}."
        )
    if bool((counts.correct > counts.exits).any()) or bool((counts.lost > final).any()):
        raise ValidationError(
            "expected correct <= exits in every cell and lost <= final_correct, got more right "
            "(or lost) predictions than inputs: the counts are corrupt."
        )


def _check_table(table: object, name: str, shape: tuple[int, ...]) -> None:
    if not isinstance(table, Tensor) or table.dtype != torch.int64 or tuple(table.shape) != shape:
        got = f"{table.dtype} {list(table.shape)}" if isinstance(table, Tensor) else table
        raise ValidationError(f"expected {name} as an int64 tensor {list(shape)}, got {got!r}.")
    if bool((table < 0).any()):
        raise ValidationError(f"expected non-negative counts in {name}, got negative ones.")


def _read_checksum(pol: ExitPolicy) -> str | None:
    """The checksum of the calibration ``pol``'s criterion reads: None for a criterion that
    reads none (`needs_calibration` False), whatever calibration it was handed."""
    held = pol.calibration
    return held.checksum if held is not None and pol.criterion.needs_calibration else None


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _add(mine: Tensor | None, theirs: Tensor | None) -> Tensor | None:
    return None if mine is None or theirs is None else mine + theirs


def _differ(mine: Any, theirs: Any) -> str:
    """How two values of a field differ, briefly."""
    if isinstance(mine, tuple) and isinstance(theirs, tuple) and len(mine) == len(theirs):
        i = next(i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b)
        return f"values that differ first at index {i}: {mine[i]!r} and {theirs[i]!r}"
    if isinstance(mine, tuple) and isinstance(theirs, tuple):
        return (
            f"{len(mine)} and {len(theirs)} values: {reprlib.repr(mine)} and {reprlib.repr(theirs)}"
        )
    return f"{reprlib.repr(mine)} and {reprlib.repr(theirs)}"


def _checksum(checksum: str | None) -> str:
    return "none" if checksum is None else f"checksum {checksum[:12]}…"


__all__ = ["ThresholdCounts", "count_exits", "count_thresholds"]
