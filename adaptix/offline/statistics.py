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

The exits counted come from `exit_indices`: the exit every input takes at every threshold of a
grid, from one computation of the criterion's scores. It lives here, with the checks of its
inputs and the criteria's default grids (`default_grid`), as the one core that `simulate`,
`sweep`, `adaptix.guarantee` and the study share.
"""

from __future__ import annotations

import math
import operator
import reprlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adaptix.core.scores import prediction
from adaptix.core.trace import Trace, check_trace
from adaptix.errors import CalibrationError, PluginError, ValidationError
from adaptix.offline.frontier import FrontierPoint
from adaptix.offline.policy import ExitPolicy, policy
from adaptix.plugins import AdaptixPluginManager, call_plugin, resolve_manager
from adaptix.scalars import count, flag, real

if TYPE_CHECKING:
    from adaptix.core.calibration import Calibration

#: The fields that must be equal for two counts to add, in the order they are compared.
_KEYS = ("criterion", "params", "thresholds", "costs", "calibration", "num_classes")


@dataclass(frozen=True, eq=False)
class ThresholdCounts:
    """Additive per-threshold counts of one criterion over a set of inputs (a shard).

    Counts of shards of a data set, made with the same criterion, parameters, thresholds,
    costs, calibration and number of classes, add with ``+`` to the counts of the whole
    (``sum(shards)`` works too, as does ``functools.reduce(operator.add, shards)``). They
    pickle, so they travel between workers.

    Every relation that holds between the counts of real inputs is checked on construction,
    so counts that no data set could produce (edited, corrupted, or made by another tool) are
    refused rather than certified or reported. Per threshold t, with F = ``final_correct``,
    a = ``correct[t, E-1]`` (right at the last exit: the last exit's own predictions),
    m = ``early[t]`` and k = ``early_correct[t]``:

    - ``exits[t]`` sums to N, and 0 ≤ ``correct`` ≤ ``exits`` cell by cell;
    - a ≤ F ≤ a + m (the inputs the last exit gets right are the ones right there, plus some
      that left early), and ``final_correct`` ≤ N;
    - with f = F − a (of those, how many left early): max(0, f − k) ≤ ``lost[t]`` ≤
      min(f, m − k), which implies max(0, F − right[t]) ≤ ``lost[t]`` ≤ min(F, N − right[t])
      for right[t] = ``correct[t].sum()``: an accuracy drop is never estimated above the
      loss that certifies it;
    - with one class (C = 1) every prediction is right: ``correct`` = ``exits``, F = N.

    Across thresholds (every criterion decides from scores computed once, so a looser
    threshold sends every input to the same exit or an earlier one): sorted by threshold, the
    inputs leaving at or before each exit change in one direction only, equal thresholds give
    equal counts, and between two thresholds the right and the wrong predictions at each exit,
    and ``lost``, change by no more than the inputs that move (so two thresholds that send the
    same numbers to every exit send the same inputs, with the same counts).

    Attributes:
        criterion: the criterion's registry name.
        params: the criterion's parameters (``params.model_dump()`` items), sorted by name.
        thresholds: the thresholds as the criterion validated them (finite reals), in the
            caller's order (repeats allowed); T of them.
        costs: the cumulative cost of each of the E exits (the trace's ``costs``: finite,
            non-negative, non-decreasing, the last > 0).
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
        num_classes: C, the number of classes of the model counted (at least 1).
        rows: the fingerprints (`Trace.row_digests`) of the inputs counted, sorted and unique,
            when counted with ``fingerprints=True`` (certification counts them, so that
            `adaptix.Certifier.from_counts` can refuse a calibration counted on the same rows
            and record them in its certificate); None otherwise. Sums carry the union, or None
            when a part has none. At most N of them (repeated rows share one).

    Numbers may be Python or numpy scalars (stored as Python ones); a bool is never a number.

    Raises:
        ValidationError: a field of the wrong type, shape or range (a non-numeric or NaN
            threshold, decreasing costs, a negative count, a bool), or counts that contradict
            each other by any relation above; the message names the field and the threshold.
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
    num_classes: int
    rows: Tensor | None = None

    def __post_init__(self) -> None:
        # Frozen: normalised fields (Python scalars, CPU tensors) are set through
        # object.__setattr__.
        for name, value in _normalised_fields(self).items():
            object.__setattr__(self, name, value)
        _check_counts(self)

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
            ValidationError: ``other`` is not `ThresholdCounts`; the two differ in criterion,
                parameters, thresholds, costs, calibration or number of classes (the message
                names the field), or one is labelled and the other not.
        """
        other = self._compatible(other, "add to")
        rows = (
            None if self.rows is None or other.rows is None else torch.cat([self.rows, other.rows])
        )
        return self._combined(other, operator.add, rows)

    def __sub__(self, other: object) -> ThresholdCounts:
        """The counts of the inputs of ``self`` that are not in ``other``, a subset of them.

        What a study does with a pool and a split: the counts of the pool, counted once, minus
        those of a split's calibration rows, are the counts of its test rows (integers: the
        same counts, and so the same points, as counting the test rows themselves). The
        difference carries no fingerprints (``rows`` None): a fingerprint in both may still
        belong to an input left in the difference, since repeated rows share one.

        Raises:
            ValidationError: as for ``+``; or ``other`` is not counts of a proper subset of
                the inputs (as many inputs or more, or a difference that no inputs could give).
        """
        other = self._compatible(other, "subtract from")
        if other.num_inputs >= self.num_inputs:
            raise ValidationError(
                f"expected counts of fewer inputs to subtract, got {other.num_inputs} inputs "
                f"from {self.num_inputs}: the difference would count no input. Subtract the "
                "counts of a subset of the inputs (e.g. a calibration split from its pool)."
            )
        try:
            return self._combined(other, operator.sub, None)
        except ValidationError as err:
            raise ValidationError(
                f"expected the counts of a subset of the inputs to subtract, got counts whose "
                f"difference no inputs could give: {err}"
            ) from err

    def _combined(
        self, other: ThresholdCounts, op: Callable[[Any, Any], Any], rows: Tensor | None
    ) -> ThresholdCounts:
        """The counts with ``op`` (add or subtract) applied to every count of ``other``."""
        return ThresholdCounts(
            criterion=self.criterion,
            params=self.params,
            thresholds=self.thresholds,
            costs=self.costs,
            calibration=self.calibration,
            num_inputs=op(self.num_inputs, other.num_inputs),
            exits=op(self.exits, other.exits),
            correct=_both(op, self.correct, other.correct),
            lost=_both(op, self.lost, other.lost),
            final_correct=_both(op, self.final_correct, other.final_correct),
            num_classes=self.num_classes,
            rows=rows,
        )

    def _compatible(self, other: object, verb: str) -> ThresholdCounts:
        """``other``, checked to add to or subtract from ``self`` (`ValidationError` naming the
        first field that differs)."""
        if not isinstance(other, ThresholdCounts):
            raise ValidationError(
                f"expected ThresholdCounts to {verb} ThresholdCounts, got {_kind(other)}. Use "
                "the counts of shards counted with count_thresholds (sum(shards) works)."
            )
        for key in _KEYS:
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                raise ValidationError(
                    f"expected counts with the same {key} to {verb.split()[0]}, got "
                    f"{describe_difference(mine, theirs)}. Count every shard with the same "
                    "criterion, parameters, thresholds, calibration and model."
                )
        if self.labelled != other.labelled:
            raise ValidationError(
                f"expected counts that are both labelled or both unlabelled to "
                f"{verb.split()[0]}, got one of each: the result would not know which "
                "predictions of the unlabelled shard are right. Count every shard with labels, "
                "or every shard without."
            )
        return other

    def __radd__(self, other: object) -> ThresholdCounts:
        """``0 + counts`` is ``counts``, so that ``sum(shards)`` adds them.

        Raises:
            ValidationError: anything but the integer 0 (``sum``'s start) or `ThresholdCounts`.
        """
        if is_sum_start(other):
            return self
        return self.__add__(other)

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
    fingerprints: bool = False,
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
        fingerprints: record the rows' fingerprints (``rows``), as certification needs.
        **params: the criterion's own parameters.

    Raises:
        ValidationError: not a trace, an empty grid, a threshold the criterion refuses.
        PluginError: an unknown criterion, one without usable default thresholds, or one that
            raised or returned malformed scores.
        CalibrationError: a calibration is needed and missing, or made for another model.
    """
    check_trace(trace)
    if not isinstance(criterion, str):
        raise ValidationError(f"expected a criterion name (str), got {criterion!r}.")
    manager = resolve_manager(plugins)
    grid = threshold_grid(thresholds, "thresholds")
    if grid is None:
        grid = default_grid(criterion, manager)
    base = policy(criterion, grid[0], calibration, plugins=manager, **params)
    validated = [base.with_threshold(t).threshold for t in grid]
    exits = exit_indices(trace, base, validated)
    return count_exits(trace, base, validated, exits, fingerprints=fingerprints)


def count_exits(
    trace: Trace,
    pol: ExitPolicy,
    thresholds: Sequence[float],
    exits: Tensor,
    *,
    fingerprints: bool = False,
    right: Tensor | None = None,
) -> ThresholdCounts:
    """Count exits already decided: the counting half of `count_thresholds`.

    Args:
        trace: the inputs.
        pol: the policy whose criterion, parameters and calibration decided them.
        thresholds: the T thresholds, validated by the criterion.
        exits: int64 ``[N, T]``, the exit each input took at each threshold (on the trace's
            device), as `adaptix.offline.statistics.exit_indices` gives them.
        fingerprints: record the rows' fingerprints (``rows``).
        right: bool ``[N, E]``, whether each exit predicts each input right
            (``prediction(trace.logits) == trace.labels.unsqueeze(1)``), for a caller that
            counts many subsets of one trace (the study); computed from the trace when None.
            Only read for a labelled trace.

    Raises:
        ValidationError: not a trace and a policy, ``right`` not a bool ``[N, E]`` tensor,
            ``exits`` is not an int64 ``[N, T]``
            tensor of exit indices, or exits that no criterion could decide (an input leaving
            later at a looser threshold: see `ThresholdCounts`).
        CalibrationError: the policy's calibration was made for another model.
    """
    check_inputs(trace, pol)
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
        right_all = _right(trace, right)  # [N, E]
        right = right_all.gather(1, exits)  # [N, T]: right at the exit taken
        correct = torch.bincount(cells[right.flatten()], minlength=counted.numel()).view(shape)
        final = right_all[:, -1:]
        lost = (final & ~right).sum(dim=0)
        final_correct = int(final.sum())
    return ThresholdCounts(
        criterion=pol.name,
        params=criterion_params(pol),
        thresholds=tuple(float(t) for t in thresholds),
        costs=tuple(trace.costs.tolist()),
        calibration=_read_checksum(pol),
        num_inputs=n,
        exits=counted.view(shape),
        correct=correct,
        lost=lost,
        final_correct=final_correct,
        num_classes=trace.num_classes,
        rows=trace.row_digests() if flag(fingerprints, "fingerprints") else None,
    )


# ------------------------------------------------------------------------------------ helpers


def right_predictions(trace: Trace) -> Tensor:
    """bool ``[N, E]``: whether each exit predicts each input of a labelled trace right.

    Raises:
        ValidationError: not a trace, or an unlabelled one.
    """
    check_trace(trace)
    if trace.labels is None:
        raise ValidationError(
            "expected a labelled trace, got labels=None: which predictions are right is "
            "unknown. Trace the model with labels."
        )
    return prediction(trace.logits) == trace.labels.unsqueeze(1)


def exit_accuracy(trace: Trace) -> list[float]:
    """The accuracy of every exit on a labelled trace, first to last.

    Raises:
        ValidationError: as `right_predictions`.
    """
    return right_predictions(trace).double().mean(dim=0).tolist()


def _right(trace: Trace, given: Tensor | None) -> Tensor:
    """Whether each exit predicts each input of a labelled ``trace`` right: ``given``
    (checked), or `right_predictions`."""
    if given is None:
        return right_predictions(trace)
    shape = (trace.num_inputs, trace.num_exits)
    if not isinstance(given, Tensor) or given.dtype != torch.bool or tuple(given.shape) != shape:
        got = f"{given.dtype} {list(given.shape)}" if isinstance(given, Tensor) else given
        raise ValidationError(
            f"expected right as a bool tensor [N, E] = {list(shape)}, got {reprlib.repr(got)}."
        )
    return given.to(trace.logits.device)


def criterion_params(pol: ExitPolicy) -> tuple[tuple[str, Any], ...]:
    """The parameters of ``pol``'s criterion as counts record them: ``model_dump()`` items,
    sorted by name."""
    return tuple(sorted(pol.criterion.params.model_dump().items()))


def is_sum_start(value: object) -> bool:
    """Whether ``value`` is the integer 0 that ``sum`` starts from (not False, not 0.0)."""
    return type(value) is int and value == 0


def check_params(params: object, name: str = "params") -> tuple[tuple[str, Any], ...]:
    """``params`` as counts record them: a tuple of (name, value) pairs, sorted by unique names.

    Raises:
        ValidationError: anything else.
    """
    pairs = params if isinstance(params, tuple) else None
    if pairs is None or not all(
        isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) for pair in pairs
    ):
        raise ValidationError(
            f"expected {name} as a tuple of (name, value) pairs, got {reprlib.repr(params)}."
        )
    names = [pair[0] for pair in pairs]
    if names != sorted(set(names)):
        raise ValidationError(
            f"expected {name} sorted by name, each name once, got the names {names}."
        )
    return pairs


def check_costs(costs: object, name: str = "costs") -> tuple[float, ...]:
    """``costs`` as a trace holds them, as a tuple of floats: a non-empty tuple of finite,
    non-negative, non-decreasing reals, the last > 0.

    Raises:
        ValidationError: anything else, naming the first bad value.
    """
    if not isinstance(costs, tuple) or not costs:
        raise ValidationError(f"expected {name} as a non-empty tuple, got {reprlib.repr(costs)}.")
    values = tuple(real(c, f"{name}[{e}]", low=0.0) for e, c in enumerate(costs))
    if any(later < earlier for earlier, later in pairwise(values)):
        raise ValidationError(
            f"expected {name} as a trace holds them (cumulative: non-decreasing), got "
            f"{reprlib.repr(values)}."
        )
    if values[-1] <= 0:
        raise ValidationError(
            f"expected {name} as a trace holds them (the last > 0), got {reprlib.repr(values)}."
        )
    return values


def _normalised_fields(counts: ThresholdCounts) -> dict[str, Any]:
    """The scalar fields checked and converted to Python values, the tables moved to the CPU.

    Raises:
        ValidationError: a field of the wrong type or range.
    """
    if not isinstance(counts.criterion, str) or not counts.criterion:
        raise ValidationError(
            f"expected criterion as a registry name (a non-empty str), got "
            f"{reprlib.repr(counts.criterion)}."
        )
    if not isinstance(counts.thresholds, tuple) or not counts.thresholds:
        raise ValidationError(
            f"expected thresholds as a non-empty tuple, got {reprlib.repr(counts.thresholds)}."
        )
    calibration = counts.calibration
    if calibration is not None and (not isinstance(calibration, str) or not calibration):
        raise ValidationError(
            f"expected calibration as a checksum (a non-empty str) or None, got "
            f"{reprlib.repr(calibration)}."
        )
    fields: dict[str, Any] = {
        "params": check_params(counts.params),
        "thresholds": tuple(real(t, f"thresholds[{i}]") for i, t in enumerate(counts.thresholds)),
        "costs": check_costs(counts.costs),
        "num_inputs": count(counts.num_inputs, "num_inputs", low=1),
        "num_classes": count(counts.num_classes, "num_classes", low=1),
        "final_correct": (
            None if counts.final_correct is None else count(counts.final_correct, "final_correct")
        ),
    }
    for name in ("exits", "correct", "lost"):
        table = getattr(counts, name)
        fields[name] = table.cpu() if isinstance(table, Tensor) else table
    rows = counts.rows
    if rows is not None:
        if not isinstance(rows, Tensor) or rows.dim() != 1 or rows.dtype != torch.int64:
            got = f"{rows.dtype} {list(rows.shape)}" if isinstance(rows, Tensor) else rows
            raise ValidationError(
                f"expected rows as a 1-D int64 tensor of row fingerprints or None, got "
                f"{reprlib.repr(got)}."
            )
        fields["rows"] = torch.unique(rows.detach().cpu())
        if fields["rows"].numel() > fields["num_inputs"]:
            raise ValidationError(
                f"expected at most num_inputs = {fields['num_inputs']} row fingerprints, got "
                f"{fields['rows'].numel()}: more rows than inputs counted."
            )
    return fields


def _check_counts(counts: ThresholdCounts) -> None:
    """`ValidationError` unless the fields of ``counts`` (already normalised) are well formed
    and consistent by every relation of the `ThresholdCounts` docstring."""
    n = counts.num_inputs
    shape = (len(counts.thresholds), len(counts.costs))
    _check_table(counts.exits, "exits", shape)
    sums = counts.exits.sum(dim=1)
    if bool((sums != n).any()):
        t = int((sums != n).nonzero()[0])
        raise ValidationError(
            f"expected every threshold's exits to count all {n} inputs (num_inputs), got row "
            f"sums {reprlib.repr(sums.tolist())} (threshold {t}, {counts.thresholds[t]!r}, "
            f"counts {int(sums[t])})."
        )
    labelled = {
        name: getattr(counts, name) is not None for name in ("correct", "lost", "final_correct")
    }
    if len(set(labelled.values())) != 1:
        raise ValidationError(
            "expected correct, lost and final_correct all given (labelled counts) or all None "
            f"(unlabelled), got {[name for name, given in labelled.items() if given]} only."
        )
    correct, lost, final = counts.correct, counts.lost, counts.final_correct
    if correct is not None and lost is not None and final is not None:
        _check_table(correct, "correct", shape)
        _check_table(lost, "lost", shape[:1])
        _check_labelled(counts, correct, lost, final)
    _check_across_thresholds(counts)


def _check_table(table: object, name: str, shape: tuple[int, ...]) -> None:
    if not isinstance(table, Tensor) or table.dtype != torch.int64 or tuple(table.shape) != shape:
        got = f"{table.dtype} {list(table.shape)}" if isinstance(table, Tensor) else table
        raise ValidationError(
            f"expected {name} as an int64 tensor {list(shape)}, got {reprlib.repr(got)}."
        )
    if bool((table < 0).any()):
        raise ValidationError(f"expected non-negative counts in {name}, got negative ones.")


def _check_labelled(counts: ThresholdCounts, correct: Tensor, lost: Tensor, final: int) -> None:
    """The per-threshold relations between ``correct``, ``lost`` and ``final_correct`` (the
    labelled fields of ``counts``, passed in)."""
    exits, n = counts.exits, counts.num_inputs
    if final > n:
        raise ValidationError(
            f"expected final_correct in [0, {n}] (num_inputs), got {final}: more right "
            "predictions than inputs."
        )
    _first_violation(
        correct > exits,
        counts,
        lambda t, e: (
            f"correct <= exits in every cell, got correct[{t}, {e}] = "
            f"{int(correct[t, e])} right predictions of {int(exits[t, e])} inputs"
        ),
    )
    at_last = correct[:, -1]  # right at the last exit: exactly the last exit's right ones there
    early = n - exits[:, -1]
    early_correct = correct[:, :-1].sum(dim=1)
    left_early = final - at_last  # inputs the last exit gets right that left early
    _first_violation(
        (left_early < 0) | (left_early > early),
        counts,
        lambda t: (
            f"final_correct in [correct[{t}, -1], correct[{t}, -1] + early] = "
            f"[{int(at_last[t])}, {int(at_last[t] + early[t])}] (the inputs the last exit gets "
            f"right are those right there plus some of the {int(early[t])} that left early), "
            f"got {final}"
        ),
    )
    low = (left_early - early_correct).clamp(min=0)
    high = torch.minimum(left_early, early - early_correct)
    _first_violation(
        (lost < low) | (lost > high),
        counts,
        lambda t: (
            f"lost[{t}] in [{int(low[t])}, {int(high[t])}] (of the {int(left_early[t])} "
            f"inputs the last exit gets right that left early, {int(early_correct[t])} right "
            f"early predictions can save at most that many and the "
            f"{int(early[t] - early_correct[t])} wrong ones lose at most that many), got "
            f"{int(lost[t])}: the loss would not match the accuracies (an accuracy drop certified "
            "on lost would contradict its estimate)"
        ),
    )
    if counts.num_classes == 1 and (not torch.equal(correct, exits) or final != n):
        raise ValidationError(
            "expected every prediction right with num_classes = 1 (correct equal to exits, "
            f"final_correct = num_inputs = {n}), got fewer: counts of a one-class model cannot "
            "have a wrong prediction."
        )


def _check_across_thresholds(counts: ThresholdCounts) -> None:
    """The relations between thresholds: see the `ThresholdCounts` docstring.

    Every criterion decides from scores computed once, so as the threshold moves one way the
    set S_e of inputs leaving at or before exit e only grows (it is nested). Ordered so that
    it grows, between two consecutive thresholds with D_e = |S_e| growth (D_-1 = D_E-1 = 0):
    the inputs leaving at exit e gain at most D_e inputs and lose at most D_e-1, so its right
    and its wrong counts each change within [−D_e-1, D_e]; at most Σ_e D_e inputs change exit,
    so ``lost`` changes by at most that many. Equal thresholds have D = 0.
    """
    order = sorted(range(len(counts.thresholds)), key=lambda t: counts.thresholds[t])
    if len(order) < 2:
        return
    cumulative = counts.exits[order].cumsum(dim=1)[:, :-1]  # |S_e| for e < E - 1
    step = cumulative[1:] - cumulative[:-1]
    rises, falls = bool((step > 0).any()), bool((step < 0).any())
    if rises and falls:
        raise ValidationError(
            "expected the inputs leaving at or before each exit to change in one direction as "
            "the threshold grows (a looser threshold sends every input to the same exit or an "
            f"earlier one), got both rises and falls over the thresholds "
            f"{reprlib.repr(sorted(counts.thresholds))}: these exits are not any criterion's."
        )
    for a, b in pairwise(order):
        if counts.thresholds[a] == counts.thresholds[b] and not torch.equal(
            counts.exits[a], counts.exits[b]
        ):
            raise ValidationError(
                f"expected equal thresholds to give equal exits, got thresholds {a} and {b} "
                f"(both {counts.thresholds[a]!r}) with exits {counts.exits[a].tolist()} and "
                f"{counts.exits[b].tolist()}."
            )
    if counts.correct is None or counts.lost is None:
        return
    if falls:  # order the thresholds so that every S_e grows
        order = order[::-1]
        step = -step.flip(0)
    zero = torch.zeros(len(order) - 1, 1, dtype=torch.int64)
    gain = torch.cat((step, zero), dim=1)  # [T - 1, E]: at most this many arrive at exit e
    loss = torch.cat((zero, step), dim=1)  # at most this many leave it (for an earlier exit)
    correct = counts.correct[order]
    wrong = counts.exits[order] - correct
    for name, table in (("correct", correct), ("exits - correct", wrong)):
        change = table[1:] - table[:-1]
        bad = ((change > gain) | (change < -loss)).nonzero()
        if bad.numel():
            i, e = (int(x) for x in bad[0])
            a, b = order[i], order[i + 1]
            raise ValidationError(
                f"expected {name} at exit {e} to change by at most what moves in and out of "
                f"it between thresholds {counts.thresholds[a]!r} and {counts.thresholds[b]!r} "
                f"(at most {int(gain[i, e])} inputs arrive, {int(loss[i, e])} leave; the same "
                f"inputs stay with the same predictions), got {int(table[i, e])} and "
                f"{int(table[i + 1, e])}: these counts are not any criterion's."
            )
    lost = counts.lost[order]
    moved = step.sum(dim=1)  # at most this many inputs change exit
    bad = ((lost[1:] - lost[:-1]).abs() > moved).nonzero()
    if bad.numel():
        i = int(bad[0])
        a, b = order[i], order[i + 1]
        raise ValidationError(
            f"expected lost to change by at most the {int(moved[i])} inputs that change exit "
            f"between thresholds {counts.thresholds[a]!r} and {counts.thresholds[b]!r}, got "
            f"{int(lost[i])} and {int(lost[i + 1])}: these counts are not any criterion's."
        )


def _first_violation(bad: Tensor, counts: ThresholdCounts, expected: Callable[..., str]) -> None:
    """`ValidationError` at the first cell where ``bad`` holds: ``expected(*cell)`` says what
    was expected there and what came."""
    if bool(bad.any()):
        cell = [int(i) for i in bad.nonzero()[0]]
        raise ValidationError(
            f"expected {expected(*cell)} (threshold {counts.thresholds[cell[0]]!r}): the counts "
            "contradict each other; count them again with count_thresholds."
        )


def _read_checksum(pol: ExitPolicy) -> str | None:
    """The checksum of the calibration ``pol``'s criterion reads: None for a criterion that
    reads none (`needs_calibration` False), whatever calibration it was handed."""
    held = pol.calibration
    return held.checksum if held is not None and pol.criterion.needs_calibration else None


def _both(op: Callable[[Any, Any], Any], mine: Any, theirs: Any) -> Any:
    """``op(mine, theirs)``, or None when either is None (unlabelled counts)."""
    return None if mine is None or theirs is None else op(mine, theirs)


def describe_difference(mine: Any, theirs: Any) -> str:
    """How two values of a field differ, briefly (for messages)."""
    if isinstance(mine, tuple) and isinstance(theirs, tuple) and len(mine) == len(theirs):
        i = next(i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b)
        return f"values that differ first at index {i}: {mine[i]!r} and {theirs[i]!r}"
    if isinstance(mine, tuple) and isinstance(theirs, tuple):
        return (
            f"{len(mine)} and {len(theirs)} values: {reprlib.repr(mine)} and {reprlib.repr(theirs)}"
        )
    return f"{reprlib.repr(mine)} and {reprlib.repr(theirs)}"


def _kind(value: object) -> str:
    return f"{reprlib.repr(value)} ({type(value).__name__})"


def _checksum(checksum: str | None) -> str:
    return "none" if checksum is None else f"checksum {checksum[:12]}…"


def check_inputs(trace: Trace, pol: ExitPolicy) -> None:
    """`ValidationError` unless ``trace`` is a trace and ``pol`` an `adaptix.ExitPolicy`;
    `CalibrationError` when the policy's calibration was made for another model."""
    check_trace(trace)
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
    check_inputs(trace, base)
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


def threshold_grid(chosen: object, what: str) -> list[Any] | None:
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

#: Candidate thresholds of certification's default grid (the criterion's
#: ``default_thresholds(CANDIDATES)``), the same on every path: `guarantee`, `budget`, `Certifier`
#: and counts reduced on workers for `Certifier.from_counts`.
CANDIDATES = 200


def default_grid(
    name: str, manager: AdaptixPluginManager, size: int = SWEEP_GRID_SIZE
) -> list[Any]:
    """The criterion's own grid of ``size`` thresholds, for a computation that gives none:
    `SWEEP_GRID_SIZE` for sweeps, `CANDIDATES` for certification, on every
    path (single process or distributed)."""
    entry = manager.criteria.entry(name)
    grid = call_plugin(entry, "default_thresholds", entry.component.default_thresholds, size)
    fix = f"criterion '{name}' from plugin '{entry.plugin}' gives no usable default thresholds"
    try:
        values = threshold_grid(grid, f"{entry.component.__qualname__}.default_thresholds()")
    except ValidationError as err:
        raise PluginError(f"{fix}: {err} Pass thresholds for it.") from err
    if values is None:
        raise PluginError(f"{fix} (got None). Pass thresholds for it.")
    return values


__all__ = [
    "CANDIDATES",
    "SWEEP_GRID_SIZE",
    "ThresholdCounts",
    "check_costs",
    "check_inputs",
    "check_params",
    "count_exits",
    "count_thresholds",
    "criterion_params",
    "default_grid",
    "describe_difference",
    "exit_accuracy",
    "exit_indices",
    "is_sum_start",
    "right_predictions",
    "threshold_grid",
]
