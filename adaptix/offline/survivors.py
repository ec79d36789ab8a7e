"""Survivor calibration: exit e's bins count only the calibration inputs that reach exit e.

The paper's tables count every calibration input at every exit, but under a policy only the
survivors of exits 0 … e − 1 reach exit e, and they are harder than their bin's average
(``PCEE.md``: survivor calibration). For a rule (a criterion whose score is a table of its
calibration's bins, `adaptix.components.ExitCriterion.bin_table`: ``pcee``, ``pcee_ws``,
``pcee_lcb``) and a grid of targets δ, exit 0's tables count every calibration input; the rule
at δ on exit 0's table decides who leaves there; exit 1's tables count the inputs that remain;
and so on, for every δ of the grid at once (counts ``[D, E, M]``).

Exit e's decision needs the tables of exits 0 … e − 1 over the whole calibration set, so shards
are counted exit by exit, one reduction per exit; `SurvivorCounts` adds with ``+``::

    counts = SurvivorCounts.empty(deltas, "pcee_lcb", num_exits=E, num_classes=C)
    for _ in range(E):
        counts = sum(count_survivors(shard, counts) for shard in shards)
    policy = counts.policy(0.9)

`calibrate_survivors` does the same in one process, with the same arithmetic.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adaptix import scalars
from adaptix.components import ExitCriterion, build_params, params_items
from adaptix.core.calibration import (
    BinnedTrace,
    Calibration,
    SurvivorRule,
    bin_trace,
    checked_edges,
)
from adaptix.core.scores import confidence_and_prediction
from adaptix.core.trace import Trace, check_trace
from adaptix.errors import CalibrationError, PluginError, ValidationError
from adaptix.kernels.reference import table_passes
from adaptix.offline.policy import ExitPolicy, policy
from adaptix.offline.statistics import is_sum_start
from adaptix.plugins import AdaptixPluginManager, Entry, call_plugin, resolve_manager

#: The fields that must be equal for two counts to add, in the order they are compared.
_KEYS = ("criterion", "params", "deltas", "counted", "num_classes")


@dataclass(frozen=True, eq=False)
class SurvivorCounts:
    """Additive survivor counts of a calibration set (or a shard of it), for a grid of δ.

    ``counts[d, e, m]`` counts the inputs whose exit-e confidence falls in bin m among those
    that ``criterion`` (with ``params``) at δ = ``deltas[d]`` does not let leave before exit
    e, deciding at each exit j < e with the tables of exit j over the *whole* calibration set.
    Only the first ``counted`` exits are counted (the later ones are zero): counting exit e of
    a shard needs the complete tables of exits < e, so shards are counted exit by exit
    (`count_survivors`), their counts added, and the sum passed back for the next exit.

    Counts of shards made from the same counts (same criterion, parameters, grid, exits
    counted, bins and classes) add with ``+`` (``sum(shards)`` works); they pickle, so they
    travel between workers. Once every exit is counted (`complete`), `calibration` gives the
    survivor calibration of one δ, which ``criterion`` reads at that δ only.

    Attributes:
        criterion: the registry name of the rule's criterion.
        params: its parameters, ``params.model_dump(mode="json")`` items sorted by name.
        deltas: the grid of targets δ in [0, 1], distinct, in the caller's order; D of them.
        counted: how many exits (0 … E) are counted.
        counts: n, int64 ``[D, E, M]``.
        correct: k, int64 ``[D, E, M]``: of those, how many exit-e predictions are right.
        confidence_sum: float64 ``[D, E, M]``: the sum of their confidences.
        edges: float64 ``[E, M + 1]``: the bin edges of every exit (as `Calibration.edges`).
        num_classes: C, the number of classes of the model counted.
        rows: the fingerprints (`Trace.row_digests`) of the inputs counted (exit 0 counts all
            of them), sorted and unique; None when unknown. Sums carry the union.

    Raises:
        CalibrationError: a field of the wrong type, shape or range, or counts that no data
            set could produce (k > n, a negative count, a later exit counting more inputs than
            an earlier one, δ values whose exit 0 counts differ, counts beyond ``counted``).
    """

    criterion: str
    params: tuple[tuple[str, Any], ...]
    deltas: tuple[float, ...]
    counted: int
    counts: Tensor
    correct: Tensor
    confidence_sum: Tensor
    edges: Tensor
    num_classes: int
    rows: Tensor | None = None

    def __post_init__(self) -> None:
        rule = SurvivorRule(self.criterion, self.params, 0.0)  # checks the name and parameters
        object.__setattr__(self, "params", rule.params)
        object.__setattr__(self, "deltas", _grid(self.deltas))
        for name in ("counts", "correct", "confidence_sum"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or value.dim() != 3 or value.is_complex():
                raise CalibrationError(
                    f"expected '{name}' as a real tensor [D, E, M], got {reprlib.repr(value)}."
                )
        shape = tuple(self.counts.shape)
        num_exits, bins = shape[1], shape[2]
        if shape[0] != len(self.deltas) or num_exits < 1 or bins < 1:
            raise CalibrationError(
                f"expected counts of shape [D, E, M] with D = {len(self.deltas)} (one per δ) "
                f"and E, M >= 1, got {list(shape)}."
            )
        for name in ("correct", "confidence_sum"):
            if tuple(getattr(self, name).shape) != shape:
                raise CalibrationError(
                    f"expected '{name}' of shape {list(shape)} like 'counts', got "
                    f"{list(getattr(self, name).shape)}."
                )
        counted = scalars.integer(
            self.counted, "counted", low=0, high=num_exits, error=CalibrationError
        )
        object.__setattr__(self, "counted", counted)
        object.__setattr__(
            self,
            "num_classes",
            scalars.count(self.num_classes, "num_classes", low=1, error=CalibrationError),
        )
        object.__setattr__(self, "edges", checked_edges(self.edges, num_exits, bins))
        for name in ("counts", "correct"):
            object.__setattr__(self, name, _whole(getattr(self, name), name))
        object.__setattr__(
            self, "confidence_sum", self.confidence_sum.detach().cpu().to(torch.float64)
        )
        if self.rows is not None:
            if not isinstance(self.rows, Tensor) or self.rows.dtype != torch.int64:
                raise CalibrationError(
                    f"expected rows as a 1-D int64 tensor of row fingerprints, got "
                    f"{reprlib.repr(self.rows)}."
                )
            object.__setattr__(self, "rows", torch.unique(self.rows.detach().cpu().flatten()))
        _check_counts(self)

    @classmethod
    def empty(
        cls,
        deltas: Sequence[float] | Tensor,
        criterion: str = "pcee",
        *,
        num_exits: int,
        num_classes: int,
        bins: int = 10,
        edges: object = None,
        plugins: AdaptixPluginManager | None = None,
        **params: Any,
    ) -> SurvivorCounts:
        """The counts before any exit is counted: what `count_survivors` starts from.

        Args:
            deltas: the grid of targets δ, each in [0, 1], distinct (a list or 1-D tensor).
            criterion: a registered criterion whose score is a table of its calibration's bins
                (`ExitCriterion.bin_table`): ``pcee`` (default), ``pcee_ws``, ``pcee_lcb``.
            num_exits: E, of the model to calibrate.
            num_classes: C, of the model to calibrate.
            bins: M, the number of confidence bins (default 10).
            edges: ``[E, M + 1]`` bin edges (e.g. an ``equal_mass`` calibration's ``edges``),
                or None for M equal-width bins.
            plugins: the plugin manager to resolve ``criterion`` with.
            **params: the criterion's own parameters (``alpha``, ``bonferroni``, ``window``).

        Raises:
            ValidationError: a δ out of [0, 1] or repeated, an empty grid, a size below 1, or
                parameters that do not validate.
            PluginError: an unknown criterion, or one without a bin table.
            CalibrationError: the edges break the rules of `Calibration`.
        """
        num_exits = scalars.count(num_exits, "num_exits", low=1)
        num_classes = scalars.count(num_classes, "num_classes", low=1)
        bins = scalars.count(bins, "bins", low=1)
        grid = _grid(deltas)
        entry, built = _resolve(criterion, params, plugins)
        zeros = torch.zeros(len(grid), num_exits, bins, dtype=torch.int64)
        _rule_table(entry, built, zeros, zeros)  # refuses a criterion without a bin table
        return cls(
            criterion=criterion,
            params=params_items(built),
            deltas=grid,
            counted=0,
            counts=zeros,
            correct=zeros,
            confidence_sum=zeros.double(),
            edges=checked_edges(edges, num_exits, bins),
            num_classes=num_classes,
        )

    @property
    def num_exits(self) -> int:
        """E, the number of exits."""
        return int(self.counts.shape[1])

    @property
    def bins(self) -> int:
        """M, the number of confidence bins."""
        return int(self.counts.shape[2])

    @property
    def complete(self) -> bool:
        """Whether every exit is counted (then `calibration` can be taken)."""
        return self.counted == self.num_exits

    @property
    def num_inputs(self) -> int:
        """How many inputs were counted (at exit 0, where every input is; 0 before)."""
        return int(self.counts[0, 0].sum())

    def calibration(self, delta: float) -> Calibration:
        """The survivor calibration at ``delta``: a `Calibration` whose `SurvivorRule` binds it
        to this criterion, its parameters and δ.

        Raises:
            ValidationError: ``delta`` is not in the grid (compared exactly), or not every exit
                is counted yet.
        """
        index = self._index(delta)
        return Calibration(
            self.counts[index],
            self.correct[index],
            self.num_classes,
            confidence_sum=self.confidence_sum[index],
            edges=self.edges,
            method="survivors",
            rows=self.rows,
            survivors=SurvivorRule(self.criterion, self.params, self.deltas[index]),
        )

    def policy(self, delta: float, *, plugins: AdaptixPluginManager | None = None) -> ExitPolicy:
        """The criterion, with its parameters, reading `calibration` (``delta``) at ``delta``.

        Raises:
            As `calibration`; PluginError: the criterion is not installed.
        """
        calibration = self.calibration(delta)
        return policy(self.criterion, delta, calibration, plugins=plugins, **dict(self.params))

    def exit_indices(self, trace: Trace, *, plugins: AdaptixPluginManager | None = None) -> Tensor:
        """The exit every input of ``trace`` takes under the rule at each δ of the grid, each
        δ reading its own survivor calibration: int64 ``[N, D]``, column d for ``deltas[d]``.

        Column d is what ``simulate(trace, self.policy(deltas[d])).exit_index`` gives, from one
        softmax and one bin lookup of the trace for the whole grid (``simulate`` per δ redoes
        both): the vectorised path of a survivor sweep, as
        `adaptix.offline.statistics.exit_indices` is for one calibration. An input leaves at the
        first exit e < E − 1 whose table at δ passes its bin
        (`adaptix.kernels.reference.table_passes`), else at the last exit; an input whose softmax
        is undefined at an exit never leaves there.

        Raises:
            ValidationError: ``trace`` is not a trace, or not every exit is counted.
            CalibrationError: the trace is of another model.
            PluginError: the criterion is not installed or its bin table is malformed.
        """
        check_trace(trace)
        calibration = self.calibration(self.deltas[0])  # refuses incomplete counts
        calibration.check_compatible(trace.num_exits, trace.num_classes)
        entry, built = _resolve(self.criterion, dict(self.params), plugins)
        device = trace.logits.device
        # Bin M holds undefined confidences (`Calibration.bin_index`): it never passes.
        passes = torch.cat(
            [
                _passes(_rule_table(entry, built, self.counts, self.correct), self.deltas),
                torch.zeros(len(self.deltas), self.num_exits, 1, dtype=torch.bool),
            ],
            dim=2,
        ).to(device)  # [D, E, M + 1]
        confidence = confidence_and_prediction(trace.logits)[0].t().contiguous()  # [E, N]
        size, n, early = len(self.deltas), trace.num_inputs, self.num_exits - 1
        fired = torch.ones(size, n, self.num_exits, dtype=torch.bool, device=device)
        for e in range(early):
            bins = calibration.bin_index(confidence[e], e).unsqueeze(0).expand(size, n)
            fired[:, :, e] = passes[:, e].gather(1, bins)
        # The last exit always fires; argmax picks the first exit that does.
        return fired.to(torch.int8).argmax(dim=2).t().contiguous().long()

    def _index(self, delta: float) -> int:
        if not self.complete:
            raise ValidationError(
                f"expected survivor counts of every exit, got {self.counted} of "
                f"{self.num_exits} exits counted. Count the rest with count_survivors (one "
                "call per exit and shard), or use calibrate_survivors."
            )
        value = scalars.unit(delta, "δ", open_low=False, open_high=False)
        if value not in self.deltas:
            raise ValidationError(
                f"expected a δ of the grid {reprlib.repr(list(self.deltas))}, got {delta!r}: "
                "survivor tables depend on δ and hold for the δ they were counted at only. "
                "Count a grid that holds it."
            )
        return self.deltas.index(value)

    def __add__(self, other: object) -> SurvivorCounts:
        """The counts of both sets of inputs.

        Raises:
            ValidationError: ``other`` is not `SurvivorCounts`, or the two differ in criterion,
                parameters, grid, exits counted, bins (edges) or classes.
        """
        if not isinstance(other, SurvivorCounts):
            raise ValidationError(
                f"expected SurvivorCounts to add to SurvivorCounts, got "
                f"{type(other).__name__}. Add the counts of shards made with count_survivors "
                "from the same counts (sum(shards) works)."
            )
        for key in _KEYS:
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                raise ValidationError(
                    f"expected survivor counts with the same {key} to add, got "
                    f"{reprlib.repr(mine)} and {reprlib.repr(theirs)}. Count every shard "
                    "from the same SurvivorCounts, one exit at a time."
                )
        if not torch.equal(self.edges, other.edges):
            raise ValidationError(
                "expected survivor counts with the same bin edges to add, got different "
                "edges. Count every shard from the same SurvivorCounts."
            )
        return SurvivorCounts(
            criterion=self.criterion,
            params=self.params,
            deltas=self.deltas,
            counted=self.counted,
            counts=self.counts + other.counts,
            correct=self.correct + other.correct,
            confidence_sum=self.confidence_sum + other.confidence_sum,
            edges=self.edges,
            num_classes=self.num_classes,
            rows=(
                None
                if self.rows is None or other.rows is None
                else torch.cat([self.rows, other.rows])
            ),
        )

    def __radd__(self, other: object) -> SurvivorCounts:
        """``0 + counts`` is ``counts``, so that ``sum(shards)`` adds them."""
        if is_sum_start(other):
            return self
        return self.__add__(other)

    def __repr__(self) -> str:
        return (
            f"SurvivorCounts({self.criterion!r}, D={len(self.deltas)}, E={self.num_exits}, "
            f"M={self.bins}, counted={self.counted}, N={self.num_inputs})"
        )


def count_survivors(
    trace: Trace, counts: SurvivorCounts, *, plugins: AdaptixPluginManager | None = None
) -> SurvivorCounts:
    """Count one shard's survivors up to the next exit, deciding with the tables so far.

    With k = ``counts.counted``: the shard's inputs are sent through exits 0 … k − 1 by the
    criterion at each δ, reading ``counts``' tables of those exits (the whole calibration
    set's), and its survivors counted at exits 0 … k. The shards' results add to the counts
    of exits 0 … k of the whole set: the ones ``counts`` holds, and exit k.

    Args:
        trace: a labelled shard of held-out data, of the model ``counts`` is for.
        counts: the counts of every shard, added, with k < E exits counted
            (`SurvivorCounts.empty` before the first exit).
        plugins: the plugin manager to resolve the criterion with.

    Returns:
        The shard's counts, with k + 1 exits counted.

    Raises:
        ValidationError: ``counts`` is not `SurvivorCounts` or already complete, or ``trace``
            is not a trace.
        CalibrationError: the trace is unlabelled, of another model, or its softmax undefined.
        PluginError: the criterion is not installed or its bin table is malformed.
    """
    _check_counts_arg(counts)
    binned = _bin(trace, counts)
    entry, built = _resolve(counts.criterion, dict(counts.params), plugins)
    return _count_next(binned, counts, entry, built, trace.row_digests())


def calibrate_survivors(
    trace: Trace,
    deltas: Sequence[float] | Tensor,
    criterion: str = "pcee",
    *,
    bins: int = 10,
    edges: object = None,
    plugins: AdaptixPluginManager | None = None,
    **params: Any,
) -> SurvivorCounts:
    """Survivor calibration of ``trace`` for every δ of ``deltas``, in one process.

    Exit by exit as shards would be counted (`count_survivors`), with the same arithmetic:
    the result equals the sum of the shards' counts exactly. Take a δ's calibration with
    ``.calibration(δ)`` or its policy with ``.policy(δ)``.

    Args:
        trace: a labelled trace of held-out data (not used for training).
        deltas: the grid of targets δ, each in [0, 1], distinct.
        criterion: the rule (default ``pcee``; ``pcee_ws``, ``pcee_lcb`` or any criterion
            with a bin table).
        bins: M (default 10).
        edges: ``[E, M + 1]`` bin edges, or None for M equal-width bins.
        plugins: the plugin manager to resolve ``criterion`` with.
        **params: the criterion's own parameters.

    Raises:
        ValidationError: as `SurvivorCounts.empty` and `count_survivors`.
        CalibrationError: as `SurvivorCounts.empty` and `count_survivors`.
        PluginError: as `SurvivorCounts.empty` and `count_survivors`.
    """
    check_trace(trace)
    counts = SurvivorCounts.empty(
        deltas,
        criterion,
        num_exits=trace.num_exits,
        num_classes=trace.num_classes,
        bins=bins,
        edges=edges,
        plugins=plugins,
        **params,
    )
    binned = _bin(trace, counts)
    entry, built = _resolve(counts.criterion, dict(counts.params), plugins)
    reach = _Reach(binned, counts)
    for last in range(counts.num_exits):
        reach.advance(
            _passes(_rule_table(entry, built, reach.counts, reach.correct), counts.deltas), last
        )
    return reach.survivor_counts(counts, trace.row_digests())


def _count_next(
    binned: BinnedTrace,
    counts: SurvivorCounts,
    entry: Entry[Any],
    params: Any,
    rows: Tensor,
) -> SurvivorCounts:
    """The counts of ``binned``'s survivors at exits 0 … k (k = ``counts.counted``), deciding
    exits 0 … k − 1 with ``counts``' tables: a shard's round (`count_survivors`)."""
    reach = _Reach(binned, counts)
    reach.advance(
        _passes(_rule_table(entry, params, counts.counts, counts.correct), counts.deltas),
        counts.counted,
    )
    return reach.survivor_counts(counts, rows)


class _Reach:
    """Which inputs of ``binned`` reach each exit at every δ, and their counts ``[D, E, M]``:
    the one arithmetic of shards and single process.

    `advance` counts exits 0 … k, deciding exits < k with ``passes``, and keeps the exits it
    counted before whose earlier decisions did not change. A shard's round starts afresh and
    counts every exit; `calibrate_survivors` keeps one `_Reach` for all E rounds, so that a
    round counts only its new exit for a criterion whose exit-e table reads exit e alone (every
    built-in: O(E) exits counted instead of O(E²)), and counts again from the first decision
    that changed for any other. The counts equal a fresh count either way.
    """

    def __init__(self, binned: BinnedTrace, counts: SurvivorCounts) -> None:
        self.binned = binned
        size, num_exits, bins = counts.counts.shape
        device = binned.bins.device
        self.offsets = (torch.arange(size, device=device) * bins).unsqueeze(1)  # [D, 1]
        self.alive: list[Tensor] = []  # per exit counted: bool [D, N], the inputs reaching it
        self.used = torch.zeros(size, num_exits, bins, dtype=torch.bool, device=device)
        self.counts = torch.zeros(size, num_exits, bins, dtype=torch.int64)
        self.correct = torch.zeros_like(self.counts)
        self.confidence_sum = torch.zeros(size, num_exits, bins, dtype=torch.float64)

    def advance(self, passes: Tensor, last: int) -> None:
        """Count exits 0 … ``last``, deciding exits < ``last`` with ``passes`` ``[D, E, M]``."""
        passes = passes.to(self.binned.bins.device)
        keep = min(len(self.alive), 1)  # exit 0 counts every input, whatever the decisions
        while keep < len(self.alive) and torch.equal(passes[:, keep - 1], self.used[:, keep - 1]):
            keep += 1
        del self.alive[keep:]
        for e in range(keep, last + 1):
            self._count(e, passes)
        self.used = passes

    def _count(self, e: int, passes: Tensor) -> None:
        """Count the inputs that reach exit e: those of exit e − 1 whose bin does not pass."""
        binned = self.binned
        size, n = self.offsets.shape[0], binned.bins.shape[0]
        if e == 0:
            alive = torch.ones(size, n, dtype=torch.bool, device=binned.bins.device)
        else:
            leave = passes[:, e - 1].gather(1, binned.bins[:, e - 1].expand(size, n))
            alive = self.alive[e - 1] & ~leave
        self.alive.append(alive)
        # Weighted counts of every (δ, bin) cell: no compaction of the [D, N] masks, and the
        # same float64 sums as over the inputs alive alone (the others add exact zeros).
        cells = (binned.bins[:, e] + self.offsets).flatten()
        bins = self.counts.shape[2]

        def total(weights: Tensor) -> Tensor:
            summed = torch.bincount(cells, weights=weights.flatten(), minlength=size * bins)
            return summed.view(size, bins).cpu()

        weight = alive.double()
        self.counts[:, e] = total(weight).to(torch.int64)
        self.correct[:, e] = total(weight * binned.correct[:, e]).to(torch.int64)
        self.confidence_sum[:, e] = total(weight * binned.confidence[:, e].double())

    def survivor_counts(self, start: SurvivorCounts, rows: Tensor) -> SurvivorCounts:
        """The counts so far, as `SurvivorCounts` of ``start``'s rule, grid and bins."""
        return SurvivorCounts(
            criterion=start.criterion,
            params=start.params,
            deltas=start.deltas,
            counted=len(self.alive),
            counts=self.counts,
            correct=self.correct,
            confidence_sum=self.confidence_sum,
            edges=start.edges,
            num_classes=start.num_classes,
            rows=rows,
        )


def reads_bin_table(criterion: str, *, plugins: AdaptixPluginManager | None = None) -> bool:
    """Whether survivor calibration can decide with ``criterion``: whether its score is a
    table of its calibration's bins (`ExitCriterion.bin_table`, asked with its default
    parameters), as for ``pcee``, ``pcee_ws`` and ``pcee_lcb``.

    Raises:
        PluginError: ``criterion`` is not installed, or its bin table is malformed.
    """
    entry, built = _resolve(criterion, {}, plugins)
    zeros = torch.zeros(1, 1, dtype=torch.int64)
    return _bin_table(entry, built, zeros, zeros) is not None


def _passes(table: Tensor, deltas: Sequence[float]) -> Tensor:
    """Which bins let an input leave, per δ: bool ``[D, E, M]`` of a table ``[D, E, M]``."""
    return torch.stack([table_passes(table[d], delta) for d, delta in enumerate(deltas)])


def _rule_table(entry: Entry[Any], params: Any, counts: Tensor, correct: Tensor) -> Tensor:
    """The criterion's bin table of ``counts`` and ``correct`` ``[D, E, M]``, checked; a
    `PluginError` for a criterion without one."""
    table = _bin_table(entry, params, counts, correct)
    if table is None:
        raise PluginError(
            f"expected a criterion whose score is a table of its calibration's bins (pcee, "
            f"pcee_ws, pcee_lcb), got '{entry.name}', whose bin_table returns None: survivor "
            "calibration decides with that table at every exit."
        )
    return table


def _bin_table(entry: Entry[Any], params: Any, counts: Tensor, correct: Tensor) -> Tensor | None:
    """The criterion's bin table of ``counts`` and ``correct``, checked, or None (none)."""
    component: type[ExitCriterion] = entry.component
    table = call_plugin(entry, "bin_table", component.bin_table, params, counts, correct)
    if table is None:
        return None
    if (
        not isinstance(table, Tensor)
        or tuple(table.shape) != tuple(counts.shape)
        or not table.is_floating_point()
    ):
        got = (
            f"{table.dtype} {list(table.shape)}"
            if isinstance(table, Tensor)
            else type(table).__name__
        )
        raise PluginError(
            f"criterion '{entry.name}' from plugin '{entry.plugin}' returned {got} from "
            f"{component.__qualname__}.bin_table, expected a floating tensor "
            f"{list(counts.shape)}. Fix the criterion's bin_table."
        )
    return table.detach().cpu().double()


def _resolve(
    criterion: str, params: dict[str, Any], plugins: AdaptixPluginManager | None
) -> tuple[Entry[Any], Any]:
    """The criterion's registry entry and its validated parameters."""
    if not isinstance(criterion, str):
        raise ValidationError(f"expected a criterion name (str), got {criterion!r}.")
    entry = resolve_manager(plugins).criteria.entry(criterion)
    return entry, build_params(entry.component.Params, params, f"criterion '{criterion}'")


def _bin(trace: Trace, counts: SurvivorCounts) -> BinnedTrace:
    """``trace`` binned with ``counts``' edges, after checking that it fits them."""
    check_trace(trace)
    if (trace.num_exits, trace.num_classes) != (counts.num_exits, counts.num_classes):
        raise CalibrationError(
            f"expected a trace of {counts.num_exits} exits and {counts.num_classes} classes "
            f"(the survivor counts'), got {trace.num_exits} exits and {trace.num_classes} "
            "classes. Count shards of the data of one model."
        )
    return bin_trace(trace, counts.bins, edges=counts.edges)


def _check_counts_arg(counts: object) -> None:
    if not isinstance(counts, SurvivorCounts):
        raise ValidationError(
            f"expected SurvivorCounts (SurvivorCounts.empty before the first exit), got "
            f"{type(counts).__name__}."
        )
    if counts.complete:
        raise ValidationError(
            f"expected survivor counts with an exit left to count, got all {counts.num_exits} "
            "counted. Take .calibration(δ)."
        )


def _grid(deltas: object) -> tuple[float, ...]:
    """The grid of δ as a tuple of floats in [0, 1], non-empty and distinct."""
    if isinstance(deltas, Tensor):
        if deltas.dim() != 1:
            raise ValidationError(
                f"expected deltas as a 1-D tensor, got shape {list(deltas.shape)}."
            )
        values: list[Any] = deltas.tolist()
    elif isinstance(deltas, (list, tuple)):
        values = list(deltas)
    else:
        raise ValidationError(
            f"expected deltas as a list (or 1-D tensor) of targets δ in [0, 1], got "
            f"{type(deltas).__name__} {reprlib.repr(deltas)}."
        )
    grid = tuple(
        scalars.unit(value, f"deltas[{i}]", open_low=False, open_high=False)
        for i, value in enumerate(values)
    )
    if not grid:
        raise ValidationError("expected at least one target δ in deltas, got none.")
    if len(set(grid)) != len(grid):
        raise ValidationError(
            f"expected distinct targets δ, got repeats in {reprlib.repr(list(grid))}: one "
            "survivor table per δ."
        )
    return grid


def _whole(value: Tensor, name: str) -> Tensor:
    """``value`` as int64 on the CPU, refusing fractions, NaN and bool."""
    if value.dtype == torch.bool:
        raise CalibrationError(f"expected '{name}' as whole numbers (int64), got bool.")
    if value.is_floating_point() and not bool(
        (torch.isfinite(value) & (value == value.round())).all()
    ):
        raise CalibrationError(f"expected '{name}' as whole numbers, got fractions or NaN.")
    return value.detach().cpu().to(torch.int64)


def _check_counts(counts: SurvivorCounts) -> None:
    """`CalibrationError` unless the counts could come from a data set (see the class)."""
    n, k = counts.counts, counts.correct
    if bool((n < 0).any()) or bool((k < 0).any()) or bool((k > n).any()):
        raise CalibrationError(
            "expected 0 <= correct <= counts in every cell, got a cell that breaks it: the "
            "counts are corrupt. Count them with count_survivors."
        )
    if bool(n[:, counts.counted :].any()):
        raise CalibrationError(
            f"expected no counts beyond the {counts.counted} exits counted, got some."
        )
    per_exit = n.sum(dim=2)  # [D, E]
    if bool((per_exit[:, 1:] > per_exit[:, :-1]).any()):
        raise CalibrationError(
            "expected no exit to count more inputs than the exit before (survivors only "
            "leave), got one that does. Count them with count_survivors."
        )
    if bool((per_exit[:, 0] != per_exit[0, 0]).any()):
        raise CalibrationError(
            "expected every δ to count every input at exit 0, got different totals. Count "
            "them with count_survivors."
        )


__all__ = ["SurvivorCounts", "calibrate_survivors", "count_survivors", "reads_bin_table"]
