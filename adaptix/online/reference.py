"""`ReferenceCounts`: what a `ShiftMonitor` keeps of its reference data, checked and added.

Which exit a reference input takes, and in which bins it is counted, depend on the policy, so
`ReferenceCounts` record the policy they were counted for (criterion, parameters, threshold,
``exits_early``, calibration) and the model's classes; a monitor, its `ShiftMonitor.reset` (what
`EarlyExitRunner.swap_policy` calls) and ``+`` refuse counts of another policy or model, or of no
input (a test that could never alarm). A reference given as a path is loaded with `Trace.load`
(`as_reference`); nothing given as a reference is ignored.
"""

from __future__ import annotations

import os
import reprlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adaptix.core.calibration import Calibration
from adaptix.core.describe import describe_value
from adaptix.core.scores import bin_index, confidence
from adaptix.core.trace import Trace
from adaptix.errors import ValidationError
from adaptix.offline.policy import ExitPolicy
from adaptix.offline.statistics import (
    check_costs,
    check_params,
    criterion_params,
    describe_difference,
    is_sum_start,
)
from adaptix.scalars import count, flag, real

#: Bins of the exit-0 test when the policy reads no calibration (whose bins it would use).
DEFAULT_BINS = 10
#: What `ReferenceCounts` record of the policy they were counted for: its decisions.
POLICY_FIELDS = ("criterion", "params", "threshold", "exits_early", "calibration")
#: What must agree, besides the policy, for two `ReferenceCounts` to add: the model, the bins.
MODEL_FIELDS = ("num_classes", "num_exits", "bins", "costs")


@dataclass(frozen=True, eq=False)
class ReferenceCounts:
    """What a `ShiftMonitor` keeps of its reference data: additive counts, so that a reference
    too large for one machine is counted in shards (`adaptix.distributed.reduce_statistics`)
    and added with ``+`` (or ``sum(shards)``).

    The counts depend on the policy's decisions (which exit each input takes, in which bins),
    so they record the policy they were counted for; a monitor refuses counts of another
    policy, and two counts of different policies, models or bins do not add. Build them with
    `adaptix.online.monitor.reference_counts` (it runs the policy: it lives with the monitor).

    Attributes:
        reach: int64 ``[E, M + 1]``: per exit e, the confidence bins of the reference inputs
            that reach exit e under the policy (the last column: undefined confidences).
        exits: int64 ``[E]``: the exit each reference input takes under the policy.
        num_classes: C, the number of classes of the model counted.
        costs: the cumulative costs ``[E]`` of the model.
        criterion: the policy's criterion (registry name).
        params: its parameters (``params.model_dump()`` items, sorted by name).
        threshold: the policy's threshold.
        exits_early: the policy's ``exits_early`` (False: every input went to the last exit).
        calibration: `Calibration.checksum` of the policy's calibration (whose bins were
            counted, whether or not its criterion reads it), or None without one.

    Raises:
        ValidationError: a field of the wrong type, shape or range; counts of no input (a
            monitor could never alarm against them); or counts that contradict each other
            (the inputs reaching exit e are not those leaving at e or later, or a policy
            that does not exit early with inputs leaving early).
    """

    reach: Tensor
    exits: Tensor
    num_classes: int
    costs: tuple[float, ...]
    criterion: str
    params: tuple[tuple[str, Any], ...]
    threshold: float
    exits_early: bool
    calibration: str | None

    def __post_init__(self) -> None:
        for name, value in reference_fields(self).items():  # frozen: set through object
            object.__setattr__(self, name, value)
        check_reference_counts(self)

    @property
    def num_exits(self) -> int:
        """E."""
        return int(self.exits.numel())

    @property
    def bins(self) -> int:
        """M."""
        return int(self.reach.shape[1]) - 1

    @property
    def num_inputs(self) -> int:
        """N, the reference inputs counted."""
        return int(self.exits.sum())

    def check_policy(self, policy: ExitPolicy) -> None:
        """Raise `ValidationError` unless these counts were counted for ``policy``: the same
        criterion, parameters, threshold, ``exits_early`` and calibration (the message names
        the first that differs)."""
        if not isinstance(policy, ExitPolicy):
            raise ValidationError(f"expected an adaptix.ExitPolicy, got {describe_value(policy)}.")
        wanted = policy_record(policy)
        for key in POLICY_FIELDS:
            mine, theirs = getattr(self, key), wanted[key]
            if mine != theirs:
                raise ValidationError(
                    f"expected reference counts of the monitored policy, got counts of another "
                    f"{key}: {describe_difference(mine, theirs)} (counted, monitored). The "
                    "reference's exits and bins are those of the policy it was counted for: "
                    "count it with this policy (reference_counts(trace, policy)) or pass the "
                    "reference trace."
                )

    def __add__(self, other: object) -> ReferenceCounts:
        """The counts of both sets of reference inputs.

        Raises:
            ValidationError: ``other`` is not `ReferenceCounts`, or the two were counted for
                another policy (criterion, parameters, threshold, ``exits_early``,
                calibration), model (classes, exits, costs) or binning; the message names
                the field.
        """
        if not isinstance(other, ReferenceCounts):
            raise ValidationError(
                f"expected ReferenceCounts to add to ReferenceCounts, got "
                f"{reprlib.repr(other)} ({type(other).__name__})."
            )
        for key in (*POLICY_FIELDS, *MODEL_FIELDS):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                raise ValidationError(
                    f"expected reference counts of one policy, model and binning to add, got "
                    f"another {key}: {describe_difference(mine, theirs)}. Count every shard "
                    "with the same policy on the same model."
                )
        return ReferenceCounts(
            self.reach + other.reach,
            self.exits + other.exits,
            self.num_classes,
            self.costs,
            **{key: getattr(self, key) for key in POLICY_FIELDS},
        )

    def __radd__(self, other: object) -> ReferenceCounts:
        """``0 + counts`` is ``counts``, so that ``sum(shards)`` adds them.

        Raises:
            ValidationError: anything but the integer 0 (``sum``'s start) or `ReferenceCounts`.
        """
        if is_sum_start(other):
            return self
        return self.__add__(other)

    def __repr__(self) -> str:
        return (
            f"ReferenceCounts({self.criterion!r} at {self.threshold!r}, N={self.num_inputs}, "
            f"E={self.num_exits}, M={self.bins}, C={self.num_classes})"
        )


def policy_record(policy: ExitPolicy) -> dict[str, Any]:
    """What `ReferenceCounts` record of ``policy`` (the fields of `POLICY_FIELDS`)."""
    calibration = policy.calibration
    return {
        "criterion": policy.name,
        "params": criterion_params(policy),
        "threshold": policy.threshold,
        "exits_early": policy.exits_early,
        "calibration": None if calibration is None else calibration.checksum,
    }


def reference_fields(counts: ReferenceCounts) -> dict[str, Any]:
    """The fields of ``counts`` checked and normalised (Python scalars, CPU tensors)."""
    reach, exits = counts.reach, counts.exits
    if not isinstance(reach, Tensor) or reach.dtype != torch.int64 or reach.dim() != 2:
        raise ValidationError(
            f"expected reach as an int64 tensor [E, M + 1], got {describe_value(reach)}."
        )
    if reach.shape[0] < 1 or reach.shape[1] < 2:
        raise ValidationError(
            f"expected reach [E, M + 1] with E >= 1 exits and M >= 1 bins, got {list(reach.shape)}."
        )
    if (
        not isinstance(exits, Tensor)
        or exits.dtype != torch.int64
        or exits.shape != reach.shape[:1]
    ):
        raise ValidationError(
            f"expected exits as an int64 tensor [{reach.shape[0]}] (one count per exit of "
            f"reach), got {describe_value(exits)}."
        )
    for name, table in (("reach", reach), ("exits", exits)):
        if bool((table < 0).any()):
            raise ValidationError(f"expected non-negative counts in {name}, got negative ones.")
    if not isinstance(counts.criterion, str) or not counts.criterion:
        raise ValidationError(
            f"expected criterion as a registry name (a non-empty str), got "
            f"{reprlib.repr(counts.criterion)}."
        )
    calibration = counts.calibration
    if calibration is not None and (not isinstance(calibration, str) or not calibration):
        raise ValidationError(
            f"expected calibration as a checksum (a non-empty str) or None, got "
            f"{reprlib.repr(calibration)}."
        )
    costs = check_costs(counts.costs)
    if len(costs) != reach.shape[0]:
        raise ValidationError(
            f"expected {reach.shape[0]} costs (one per exit of reach), got {len(costs)}."
        )
    return {
        "reach": reach.detach().cpu(),
        "exits": exits.detach().cpu(),
        "num_classes": count(counts.num_classes, "num_classes", low=1),
        "costs": costs,
        "params": check_params(counts.params),
        "threshold": real(counts.threshold, "threshold"),
        "exits_early": flag(counts.exits_early, "exits_early"),
    }


def check_reference_counts(counts: ReferenceCounts) -> None:
    """`ValidationError` unless the (normalised) counts agree with each other."""
    if counts.num_inputs == 0:
        raise ValidationError(
            "expected reference counts of at least one input, got none: a monitor against an "
            "empty reference could never alarm. Count a reference sample of the data the "
            "policy serves."
        )
    reached = counts.exits.flip(0).cumsum(0).flip(0)  # inputs leaving at exit e or later
    sums = counts.reach.sum(dim=1)
    if not torch.equal(sums, reached):
        e = int((sums != reached).nonzero()[0])
        raise ValidationError(
            f"expected reach[{e}] to count the {int(reached[e])} inputs leaving at exit {e} or "
            f"later (exits {counts.exits.tolist()}), got {int(sums[e])}: the counts contradict "
            "each other; count them again with reference_counts."
        )
    if not counts.exits_early and bool((counts.exits[:-1] > 0).any()):
        raise ValidationError(
            f"expected every input at the last exit for a policy that does not exit early "
            f"(exits_early False), got exits {counts.exits.tolist()}."
        )


def bins_of_exit(
    logits: Tensor, calibration: Calibration | None, exit_index: int, bins: int
) -> Tensor:
    """Confidence bins of one exit's logits ``[n, C]``; undefined confidences get ``bins``."""
    conf = confidence(logits)
    if calibration is not None:
        return calibration.bin_index(conf, exit_index)
    return bin_index(conf, bins)


def confidence_bins(logits: Tensor, calibration: Calibration | None, bins: int) -> Tensor:
    """Confidence bins ``[N, E]`` of stored logits ``[N, E, C]``: by the calibration's edges, or
    ``bins`` equal-width bins without one; undefined confidences get ``bins``."""
    columns = [bins_of_exit(logits[:, e], calibration, e, bins) for e in range(logits.shape[1])]
    return torch.stack(columns, dim=1).cpu()


def reach_counts(bins_by_exit: Tensor, exits: Tensor, num_exits: int, bins: int) -> Tensor:
    """int64 ``[E, M + 1]``: per exit e, the bins of the inputs whose exit is ≥ e."""
    exits = exits.cpu()
    table = torch.zeros(num_exits, bins + 1, dtype=torch.int64)
    for e in range(num_exits):
        reached = bins_by_exit[exits >= e, e]
        table[e] = torch.bincount(reached, minlength=bins + 1)[: bins + 1]
    return table


def as_reference(reference: object) -> Trace | ReferenceCounts | None:
    """A reference as a `Trace` or `ReferenceCounts` (None stays None): a path is loaded with
    `Trace.load`, anything else refused (never ignored)."""
    if reference is None or isinstance(reference, Trace | ReferenceCounts):
        return reference
    if isinstance(reference, str | os.PathLike):
        return Trace.load(reference)
    raise ValidationError(
        f"expected the reference as an adaptix.Trace, the path of a trace saved with "
        f"Trace.save, or ReferenceCounts (reference_counts), got {describe_value(reference)}. "
        "Trace the data the policy was calibrated on (model.trace(inputs))."
    )
