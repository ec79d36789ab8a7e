"""`ShiftMonitor`: does the data still look like the data the policy was calibrated on?

PCEE's calibration (and every certificate of `adaptix.guarantee`) holds only while deployment
inputs are exchangeable with the calibration inputs. A `ShiftMonitor`, attached to an
`EarlyExitRunner`, watches for the opposite, and recalibrates.

**What it counts**, on the batch's device and without any host synchronisation of its own: for
every exit e, the confidence-bin counts of the inputs that reach exit e (exit 0's are unbiased:
every input reaches it), and the exit histogram. Every ``check_every`` batches it reads them back
(one transfer) and updates the test.

**The test** (`ShiftTest`) compares the stream's exit-0 bin counts, and its exit counts, with those
of a reference sample (the calibration data, or any data the policy is known to serve well). It
is an e-process built by universal inference (Wasserman, Ramdas and Balakrishnan, 2020) for the
two-sample null "reference and stream are i.i.d. draws from one categorical distribution p, p
unknown". For counts r (reference, n inputs) and s (stream, t inputs) over K categories::

    E_t = DM(r; J) · DM(s; β) / max_p p^(r + s)

where DM(x; a) is the Dirichlet-multinomial probability of a sequence with counts x (a
Krichevsky–Trofimov / Jeffreys mixture, J = ½ per category) and β is a prior for the stream
fixed before the stream starts (`ShiftTest`). Under the null, with the true p*, the numerator
divided by p*^(r + s) is a product of a mean-one variable of the reference and a mean-one
martingale of the stream, and the denominator is at least p*^(r + s); so E_t is bounded by a
nonnegative martingale of mean one, and by Ville's inequality **P(E_t ≥ 1/α for some t) ≤ α,
however long the stream and however often it is checked**. The reference being a sample, not
the truth, is paid for in the numerator: comparing a long stream with a fixed empirical
reference as if it were exact would alarm on every long unshifted stream.

The exit-0 bins and the exit histogram each give such an e-process; the monitor alarms when
their average, itself an e-process, reaches 1/α. Why an e-process rather than Wald's SPRT: the
null is composite (p is unknown) and the alternative unspecified, and the e-process needs
neither, stays valid under optional stopping and continuous monitoring, and is computed from the
cumulative counts alone.

**The reference belongs to its policy and model.** Which exit a reference input takes, and in
which bins it is counted, depend on the policy, so `ReferenceCounts` record the policy they were
counted for (criterion, parameters, threshold, ``exits_early``, calibration) and the model's
classes; a monitor, its `ShiftMonitor.reset` (what `EarlyExitRunner.swap_policy` calls) and
``+`` refuse counts of another policy or model, or of no input (a test that could never alarm).
A reference given as a path is loaded with `Trace.load`; nothing given as a reference is ignored.

**Recalibration.** Labelled feedback (`ShiftMonitor.observe`) accumulates into a running
calibration over a sliding window of the latest inputs or with exponential decay. Label-free,
the runner can route a share of rows (``audit``) through to the last exit and the monitor keeps
their logits at every exit, labelled with the last exit's prediction: a calibration built on
them measures **agreement with the last exit**, not accuracy (they coincide only where the last
exit is right). `ShiftMonitor.recalibrated_policy` and `ShiftMonitor.recertify` build the policy
that `EarlyExitRunner.swap_policy` then swaps in between batches.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from adaptix import callsite
from adaptix.core.calibration import Calibration, count_bins
from adaptix.core.scores import bin_index, confidence, prediction
from adaptix.core.trace import Trace
from adaptix.errors import CalibrationError, ValidationError
from adaptix.offline.guarantee import guarantee
from adaptix.offline.policy import ExitPolicy
from adaptix.offline.simulate import simulate
from adaptix.offline.statistics import (
    check_costs,
    check_params,
    criterion_params,
    describe_difference,
    is_sum_start,
)
from adaptix.plugins import call_plugin, resolve_manager
from adaptix.scalars import choice, count, flag, integer, real, unit

if TYPE_CHECKING:
    from adaptix.tracking import Tracker

#: The Jeffreys (Krichevsky–Trofimov) prior weight per category of the reference's mixture.
JEFFREYS = 0.5
#: Bins of the exit-0 test when the policy reads no calibration (whose bins it would use).
DEFAULT_BINS = 10
Source = Literal["labels", "proxy"]
SOURCES: tuple[Source, ...] = ("labels", "proxy")
#: The seeds a torch generator takes.
_SEEDS = (-(2**63), 2**64 - 1)
#: What `ReferenceCounts` record of the policy they were counted for: its decisions.
POLICY_FIELDS = ("criterion", "params", "threshold", "exits_early", "calibration")
#: What must agree, besides the policy, for two `ReferenceCounts` to add: the model, the bins.
_MODEL_FIELDS = ("num_classes", "num_exits", "bins", "costs")


class ShiftWarning(UserWarning):
    """Warned when a `ShiftMonitor` raises an alarm."""


def log_sequence_probability(counts: Tensor, prior: Tensor) -> Tensor:
    """log DM(x; a): the log probability of one sequence with category counts ``x`` under the
    Dirichlet(a) mixture of categorical distributions (float64, over the last dimension).

    Args:
        counts: ``[..., K]`` counts (any real dtype).
        prior: ``[K]`` or ``[..., K]`` positive Dirichlet weights.
    """
    x = counts.double()
    a = prior.double()
    total_prior = a.sum(-1)
    return (
        torch.lgamma(total_prior)
        - torch.lgamma(total_prior + x.sum(-1))
        + (torch.lgamma(a + x) - torch.lgamma(a)).sum(-1)
    )


def _max_log_likelihood(counts: Tensor) -> Tensor:
    """max_p Σ x_k log p_k = Σ x_k log(x_k / Σx), float64, 0 log 0 = 0."""
    x = counts.double()
    total = x.sum(-1)
    terms = torch.where(x > 0, x * torch.log(x.clamp(min=1)), torch.zeros_like(x)).sum(-1)
    return terms - torch.where(total > 0, total * torch.log(total.clamp(min=1)), 0.0)


@dataclass(frozen=True)
class ShiftTest:
    """The two-sample e-process of the module docstring, for one categorical variable.

    Args:
        reference: int64 ``[K]`` counts of the reference sample (integer counts, at least one
            input: with none, E_t ≤ 1 for every stream and the test could never alarm).
        concentration: κ, the weight of the reference in the stream's prior β = J + κ · (r + J)
            / Σ(r + J): 0 gives the plain Jeffreys prior; a larger κ spends less evidence when
            the stream is close to the reference and reaches an alarm faster on moderate
            shifts. Fixed before the stream starts, as validity requires. A finite real ≥ 0
            (Python or numpy; never a bool or a string).

    Raises:
        ValidationError: reference counts that are not a 1-d tensor of non-negative integers
            with a positive total, or a concentration that is not a finite real ≥ 0.
    """

    reference: Tensor
    concentration: float = 0.0

    def __post_init__(self) -> None:
        ref = _check_counts_tensor(self.reference, "reference counts", dims=1)
        if int(ref.sum()) == 0:
            raise ValidationError(
                "expected reference counts of at least one input, got all zeros: against an "
                "empty reference E_t ≤ 1 for every stream, so the test could never alarm. "
                "Count a reference sample of the data the policy serves."
            )
        concentration = real(self.concentration, "concentration", low=0.0)
        object.__setattr__(self, "reference", ref.detach().to("cpu", torch.int64))
        object.__setattr__(self, "concentration", concentration)

    @property
    def categories(self) -> int:
        """K, the number of categories."""
        return int(self.reference.numel())

    def stream_prior(self) -> Tensor:
        """β, float64 ``[K]``."""
        jeffreys = torch.full((self.categories,), JEFFREYS, dtype=torch.float64)
        if self.concentration == 0:
            return jeffreys
        smoothed = self.reference.double() + JEFFREYS
        return jeffreys + self.concentration * smoothed / smoothed.sum()

    def log_evalue(self, stream: Tensor) -> Tensor:
        """log E_t for stream counts ``[..., K]`` (every leading index is one stream state),
        float64 on the CPU.

        Raises:
            ValidationError: not a tensor of K non-negative integer counts per state.
        """
        if not isinstance(stream, Tensor) or stream.shape[-1:] != (self.categories,):
            got = tuple(stream.shape) if isinstance(stream, Tensor) else _describe(stream)
            raise ValidationError(f"expected stream counts [..., {self.categories}], got {got}.")
        _check_counts_tensor(stream, "stream counts")
        s = stream.detach().to("cpu", torch.float64)
        r = self.reference.double()
        jeffreys = torch.full((self.categories,), JEFFREYS, dtype=torch.float64)
        return (
            log_sequence_probability(r, jeffreys)
            + log_sequence_probability(s, self.stream_prior())
            - _max_log_likelihood(r + s)
        )


def segment_threshold(alpha: float, segment: int | Tensor) -> float | Tensor:
    """log(1/α_j), the alarm line of the j-th test segment (1-based) when the test restarts:
    α_j = α · 6 / (π² j²), so that the false-alarm probabilities of all segments add up to α
    (each segment's e-process is valid on its own; a union bound joins them).

    Raises:
        ValidationError: ``alpha`` outside (0, 1), or a segment that is not an integer ≥ 1.
    """
    alpha = unit(alpha, "alpha")
    if isinstance(segment, Tensor):
        return torch.log(math.pi**2 * segment.double() ** 2 / (6 * alpha))
    segment = count(segment, "segment", low=1)
    return math.log(math.pi**2 * segment**2 / (6 * alpha))


def evidence_path(
    tests: tuple[ShiftTest, ShiftTest],
    bin_counts: Tensor,
    exit_counts: Tensor,
    *,
    alpha: float,
    check_inputs: int,
    restart_every: int | None,
) -> tuple[Tensor, Tensor]:
    """What a `ShiftMonitor` computes along a stream checked every ``check_inputs`` inputs:
    log E and the alarm line after each of T checks, from the cumulative counts at the checks
    (exit-0 bins ``[T, M]``, exits ``[T, E]``), with the monitor's restarts (a new segment after
    the check where the current one reached ``restart_every`` inputs). Vectorised: the offline
    study's path through the monitor's own test.

    Raises:
        ValidationError: ``alpha`` outside (0, 1), ``check_inputs`` or ``restart_every`` not
            an integer ≥ 1, or counts that are not ``[T, K]`` non-negative integers of the
            tests' categories.
    """
    alpha = unit(alpha, "alpha")
    check_inputs = count(check_inputs, "check_inputs", low=1)
    if restart_every is not None:
        restart_every = count(restart_every, "restart_every", low=1)
    if not (
        isinstance(tests, tuple)
        and len(tests) == 2
        and all(isinstance(test, ShiftTest) for test in tests)
    ):
        raise ValidationError(
            f"expected tests as a tuple of two ShiftTests (exit-0 bins, exits), got "
            f"{reprlib.repr(tests)}."
        )
    for name, counts, test in (
        ("bin_counts", bin_counts, tests[0]),
        ("exit_counts", exit_counts, tests[1]),
    ):
        if (
            not isinstance(counts, Tensor)
            or counts.dim() != 2
            or counts.shape[1] != test.categories
        ):
            raise ValidationError(
                f"expected {name} as a [T, {test.categories}] tensor, got {_describe(counts)}."
            )
    if bin_counts.shape[0] != exit_counts.shape[0]:
        raise ValidationError(
            f"expected bin_counts and exit_counts at the same {bin_counts.shape[0]} checks, got "
            f"{exit_counts.shape[0]} checks of exits."
        )
    checks = bin_counts.shape[0]
    index = torch.arange(checks)
    if restart_every is None:
        segment = torch.zeros(checks, dtype=torch.long)
    else:
        per_segment = -(-restart_every // check_inputs)  # checks per segment
        segment = index // per_segment
    start = segment * (checks if restart_every is None else per_segment)  # first check
    bins0 = torch.cat((torch.zeros_like(bin_counts[:1]), bin_counts))
    exits0 = torch.cat((torch.zeros_like(exit_counts[:1]), exit_counts))
    log_e = combine(
        [
            tests[0].log_evalue(bin_counts - bins0[start]),
            tests[1].log_evalue(exit_counts - exits0[start]),
        ]
    )
    if restart_every is None:
        return log_e, torch.full((checks,), math.log(1 / alpha), dtype=torch.float64)
    line = segment_threshold(alpha, segment + 1)
    assert isinstance(line, Tensor)
    return log_e, line


def combine(log_evalues: list[Tensor]) -> Tensor:
    """log of the average of several e-values (itself an e-value): logsumexp − log m."""
    stacked = torch.stack([value.double() for value in log_evalues])
    return torch.logsumexp(stacked, dim=0) - math.log(len(log_evalues))


@dataclass(frozen=True)
class Move:
    """One category whose share moved: live against reference, with a two-proportion z."""

    what: str
    reference_share: float
    live_share: float
    z: float


@dataclass(frozen=True)
class ShiftReport:
    """What `ShiftMonitor.report` says: the test's state and what moved.

    Attributes:
        inputs: stream inputs of the test segment described (all since the last reset when
            the test does not restart).
        segment: which test segment, 1 for the first (see ``restart_every``).
        log_evalue: log E of the combined test (its current segment) at the last check (0
            before any).
        threshold: the current alarm line, log(1/α_j) (`segment_threshold`).
        alarmed: whether the monitor has alarmed since the last reset.
        alarm_inputs: the inputs counted when it alarmed (None: no alarm).
        bins: every exit-0 confidence bin, reference and live shares.
        exits: every exit, reference and live shares of the inputs leaving there.
        reach: per exit e, the bins of the inputs that reach exit e (exit 0 repeats ``bins``).
    """

    inputs: int
    segment: int
    log_evalue: float
    threshold: float
    alarmed: bool
    alarm_inputs: int | None
    bins: tuple[Move, ...]
    exits: tuple[Move, ...]
    reach: tuple[tuple[Move, ...], ...]

    def moved(self, z: float = 3.0) -> list[Move]:
        """The exit-0 bins, exits and reached bins whose |z| ≥ ``z``, largest first.

        Raises:
            ValidationError: ``z`` is not a real ≥ 0.
        """
        z = real(z, "z", low=0.0)
        every = [*self.bins, *self.exits, *(m for moves in self.reach[1:] for m in moves)]
        return sorted((m for m in every if abs(m.z) >= z), key=lambda m: -abs(m.z))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""

        def rows(moves: tuple[Move, ...]) -> list[dict[str, Any]]:
            return [m.__dict__.copy() for m in moves]

        return {
            "inputs": self.inputs,
            "segment": self.segment,
            "log_evalue": self.log_evalue,
            "threshold": self.threshold,
            "alarmed": self.alarmed,
            "alarm_inputs": self.alarm_inputs,
            "bins": rows(self.bins),
            "exits": rows(self.exits),
            "reach": [rows(moves) for moves in self.reach],
        }

    def __str__(self) -> str:
        state = f"ALARM at {self.alarm_inputs} inputs" if self.alarmed else "no alarm"
        lines = [
            f"shift monitor: segment {self.segment}, {self.inputs} inputs, "
            f"log E = {self.log_evalue:.2f} "
            f"(alarm at {self.threshold:.2f}), {state}",
        ]
        moved = self.moved()
        if not moved:
            lines.append("nothing moved by |z| >= 3")
        else:
            lines.append(f"{'moved':<22} {'reference':>9} {'live':>7} {'z':>7}")
            lines += [
                f"{m.what:<22} {m.reference_share:>9.3f} {m.live_share:>7.3f} {m.z:>7.1f}"
                for m in moved[:12]
            ]
        return "\n".join(lines)


@dataclass(frozen=True)
class ShiftAlarm:
    """What an alarm hands the ``on_alarm`` callback.

    Attributes:
        inputs: stream inputs counted when the alarm was raised.
        batches: batches counted by then.
        log_evalue: the combined test's log E (≥ log(1/α)).
        alpha: the false-alarm level.
        report: what moved.
    """

    inputs: int
    batches: int
    log_evalue: float
    alpha: float
    report: ShiftReport

    def message(self) -> str:
        """One line for a warning or a log."""
        moved = ", ".join(f"{m.what} ({m.z:+.1f} sd)" for m in self.report.moved()[:4])
        return (
            f"adaptix: the input distribution shifted (log E = {self.log_evalue:.1f} ≥ "
            f"{self.report.threshold:.1f} after {self.inputs} inputs; false-alarm "
            f"probability ≤ {self.alpha}). Moved: {moved or 'no single bin by 3 sd'}. The "
            "policy's calibration may no longer hold: recalibrate (ShiftMonitor.recalibrated_"
            "policy / recertify) and swap it in (EarlyExitRunner.swap_policy)."
        )


@dataclass
class _Counts:
    """The stream's counts on the device: per exit, the bins of the inputs reaching it (one
    extra column for undefined confidences), and the exit histogram."""

    reach: Tensor  # int64 [E, M + 1]
    exits: Tensor  # int64 [E]


@dataclass
class _Window:
    """Logits ``[n, E, C]`` and labels ``[n]`` of the latest inputs, at most ``size`` of them,
    kept as given (on their device: adding never synchronises); `trace` builds the trace."""

    size: int
    costs: Tensor
    parts: deque[tuple[Tensor, Tensor]] = field(default_factory=deque)
    inputs: int = 0

    def add(self, logits: Tensor, labels: Tensor) -> None:
        self.parts.append((logits, labels))
        self.inputs += int(logits.shape[0])
        while self.inputs - int(self.parts[0][0].shape[0]) >= self.size:
            self.inputs -= int(self.parts.popleft()[0].shape[0])
        excess = self.inputs - self.size
        if excess > 0:  # trim the oldest part's oldest rows
            logits, labels = self.parts.popleft()
            self.parts.appendleft((logits[excess:], labels[excess:]))
            self.inputs -= excess

    def trace(self, meta: dict[str, str]) -> Trace | None:
        if not self.parts:
            return None
        logits = torch.cat([part[0].cpu() for part in self.parts])
        labels = torch.cat([part[1].cpu() for part in self.parts])
        # Audited rows with NaN or infinite logits (a runner with check_finite=False) have no
        # confidence to calibrate: they are left out here rather than refused.
        finite = logits.isfinite().flatten(1).all(dim=1)
        if not bool(finite.all()):
            logits, labels = logits[finite], labels[finite]
        if logits.shape[0] == 0:
            return None
        return Trace(logits, labels, self.costs, meta=meta)


@dataclass(frozen=True, eq=False)
class ReferenceCounts:
    """What a `ShiftMonitor` keeps of its reference data: additive counts, so that a reference
    too large for one machine is counted in shards (`adaptix.distributed.reduce_statistics`)
    and added with ``+`` (or ``sum(shards)``).

    The counts depend on the policy's decisions (which exit each input takes, in which bins),
    so they record the policy they were counted for; a monitor refuses counts of another
    policy, and two counts of different policies, models or bins do not add. Build them with
    `reference_counts`.

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
        for name, value in _reference_fields(self).items():  # frozen: set through object
            object.__setattr__(self, name, value)
        _check_reference_counts(self)

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
            raise ValidationError(f"expected an adaptix.ExitPolicy, got {_describe(policy)}.")
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
        for key in (*POLICY_FIELDS, *_MODEL_FIELDS):
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


def reference_counts(trace: Trace, policy: ExitPolicy, bins: int = DEFAULT_BINS) -> ReferenceCounts:
    """Count a reference trace as a `ShiftMonitor` for ``policy`` counts it (the policy's
    calibration's bins, or ``bins`` equal-width bins when it reads none), recording the policy.

    Raises:
        ValidationError: not a trace and a policy, ``bins`` not an integer ≥ 1, or a policy
            whose criterion does not fit the trace's model.
        CalibrationError: the policy's calibration does not fit the trace.
    """
    if not isinstance(trace, Trace):
        raise ValidationError(
            f"expected the reference as an adaptix.Trace, got {_describe(trace)}."
        )
    if not isinstance(policy, ExitPolicy):
        raise ValidationError(f"expected an adaptix.ExitPolicy, got {_describe(policy)}.")
    bins = count(bins, "bins", low=1)
    calibration = policy.calibration
    num_exits = trace.num_exits
    if calibration is not None:
        calibration.check_compatible(num_exits, trace.num_classes, "the reference")
        bins = calibration.bins
    reference_bins = confidence_bins(trace.logits, calibration, bins)  # [N, E]
    exits = simulate(trace, policy).exit_index.cpu()
    return ReferenceCounts(
        _reach_counts(reference_bins, exits, num_exits, bins),
        torch.bincount(exits, minlength=num_exits),
        trace.num_classes,
        tuple(float(c) for c in trace.costs.tolist()),
        **policy_record(policy),
    )


def _reference_fields(counts: ReferenceCounts) -> dict[str, Any]:
    """The fields of ``counts`` checked and normalised (Python scalars, CPU tensors)."""
    reach, exits = counts.reach, counts.exits
    if not isinstance(reach, Tensor) or reach.dtype != torch.int64 or reach.dim() != 2:
        raise ValidationError(
            f"expected reach as an int64 tensor [E, M + 1], got {_describe(reach)}."
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
            f"reach), got {_describe(exits)}."
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


def _check_reference_counts(counts: ReferenceCounts) -> None:
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


class ShiftMonitor:
    """Watch a runner's inputs for distribution shift, and recalibrate.

    Attach it with ``EarlyExitRunner(model, policy, monitor=monitor)``. Example::

        monitor = adaptix.ShiftMonitor(policy, calibration_trace, alpha=0.01,
                                       on_alarm=lambda alarm: print(alarm.message()))
        runner = adaptix.EarlyExitRunner(model, policy, monitor=monitor)
        for batch, labels in stream:
            out = runner(batch)
            if labels is not None:                       # labelled feedback, when some comes
                monitor.observe(model.trace(batch, labels))
            if monitor.alarmed and monitor.feedback_inputs >= 1000:
                runner.swap_policy(monitor.recalibrated_policy())

    Args:
        policy: the policy the runner serves. Its calibration's bins (or ``bins`` equal-width
            bins when it reads none) are the bins the monitor counts.
        reference: a trace of data the policy is known to serve (its calibration data, or
            held-out data like it); labels are not needed. Or the path of such a trace saved
            with `Trace.save` (loaded with `Trace.load`). Or its `ReferenceCounts`
            (`reference_counts`, or added up from shards on Ray by
            `adaptix.distributed.reduce_statistics`): the monitor keeps only these counts,
            which must have been counted for ``policy`` (same criterion, parameters,
            threshold, ``exits_early`` and calibration).
            The test is exact when the policy was not fitted on it (pass the held-out half
            of the calibration data when you can); with the calibration data itself the
            exit-rate part carries a small selection effect (the policy chose its bins on it).
        alpha: the false-alarm probability over the whole stream, in (0, 1) (a Python or numpy
            real; numbers below are the same: never a bool, never a string).
        check_every: read the counts back and test every this many batches (one host
            synchronisation each time; the test stays valid whatever the schedule).
        on_alarm: called once with a `ShiftAlarm` when the test first alarms (again after
            `reset`). An exception it raises propagates.
        tracker: an `adaptix.tracking.Tracker` (or an object with its ``start_run``,
            ``log_metrics`` and ``log_artifact``); an alarm logs its metrics and report to
            ``run_id`` (which the monitor starts, named ``shift-monitor``, when not given).
        run_id: the MLflow run to log alarms to (a str).
        window: labelled (and proxy) feedback kept for recalibration: the latest this many
            inputs (a sliding window).
        decay: instead of a window, weigh the labelled feedback's counts by ``decay`` per input
            observed since (exponential forgetting, in (0, 1)); counts are rounded to whole
            numbers when a calibration is built. `recertify` then still uses the window.
        audit: the share of rows, in [0, 1), that the runner routes through to the last exit
            (they get its prediction) to label-free proxy-label the early exits.
        concentration: the stream prior's weight κ of `ShiftTest`, a finite real ≥ 0.
        restart_every: start a fresh test segment after this many inputs (None: one test
            over the whole stream). A test over everything since the start reacts ever more
            slowly to a shift that comes late; segments keep the reaction time bounded. The
            j-th segment alarms at log(1/α_j), α_j = α · 6 / (π² j²): the false-alarm
            probability over all segments together stays ≤ α.
        bins: equal-width bins when the policy reads no calibration.
        seed: seeds the choice of audited rows (an integer, as `torch.Generator.manual_seed`
            takes).

    Raises:
        ValidationError: an argument of the wrong type or out of range (checked here, before
            any work); a reference that does not fit the policy: counts of another policy,
            of no input, of another number of exits or classes than the policy's
            calibration or criterion accepts; a path that is not a trace file.
        CalibrationError: the policy's calibration does not fit the reference trace.

    A runner the monitor is attached to refuses a monitor of another policy or number of
    exits; the number of classes is checked on the first batch after each `reset` (the model
    declares none), against the reference's.
    """

    policy: ExitPolicy
    reference: Trace | None  # None when the reference was given as counts
    _reference: ReferenceCounts
    num_exits: int
    num_classes: int
    bins: int

    def __init__(
        self,
        policy: ExitPolicy,
        reference: Trace | ReferenceCounts | str | os.PathLike[str],
        *,
        alpha: float = 0.05,
        check_every: int = 8,
        on_alarm: Callable[[ShiftAlarm], None] | None = None,
        tracker: Tracker | None = None,
        run_id: str | None = None,
        window: int = 1000,
        decay: float | None = None,
        audit: float = 0.0,
        concentration: float = 100.0,
        restart_every: int | None = 10_000,
        bins: int = DEFAULT_BINS,
        seed: int = 0,
    ) -> None:
        if not isinstance(policy, ExitPolicy):
            raise ValidationError(f"expected an adaptix.ExitPolicy, got {_describe(policy)}.")
        self.alpha = unit(alpha, "alpha")
        self.check_every = count(check_every, "check_every", low=1)
        window = count(window, "window", low=1)
        self._default_bins = count(bins, "bins", low=1)
        self.restart_every = (
            None if restart_every is None else count(restart_every, "restart_every", low=1)
        )
        self.decay = None if decay is None else unit(decay, "decay")
        self.audit = real(audit, "audit", low=0.0, high=1.0, open_high=True)
        self.concentration = real(concentration, "concentration", low=0.0)
        seed = integer(seed, "seed", low=_SEEDS[0], high=_SEEDS[1])
        if on_alarm is not None and not callable(on_alarm):
            raise ValidationError(f"expected on_alarm to be callable, got {_describe(on_alarm)}.")
        _check_tracker(tracker)
        if run_id is not None and not isinstance(run_id, str):
            raise ValidationError(f"expected run_id to be a str or None, got {_describe(run_id)}.")
        given = _as_reference(reference)  # after the cheap checks: a path is loaded
        if given is None:
            raise ValidationError(
                "expected the reference as an adaptix.Trace, the path of a saved trace or "
                "ReferenceCounts, got None. Trace the calibration data (model.trace(inputs))."
            )
        self.on_alarm = on_alarm
        self.tracker = tracker
        self.run_id = run_id
        self._generator = torch.Generator().manual_seed(seed)
        self._audit_credit = 0.0
        costs = torch.tensor(
            given.costs if isinstance(given, ReferenceCounts) else given.costs.tolist(),
            dtype=torch.float64,
        )
        self._feedback = _Window(window, costs)
        self._proxy = _Window(window, costs)
        self.reference = None
        self._decayed: tuple[Tensor, Tensor, Tensor] | None = None
        self.reset(policy=policy, reference=given)

    # -- set-up --------------------------------------------------------------------------------

    def reset(
        self,
        *,
        policy: ExitPolicy | None = None,
        reference: Trace | ReferenceCounts | str | os.PathLike[str] | None = None,
    ) -> None:
        """Start a new test: clear the stream's counts and the alarm; optionally against another
        policy (after a swap) and another reference (the data the new policy was calibrated on:
        a `Trace`, the path of one saved with `Trace.save`, or `ReferenceCounts` counted for
        the new policy). Feedback kept for recalibration stays. Everything is checked before
        anything changes: a refused reset leaves the monitor as it was.

        Raises:
            ValidationError: ``policy`` is not an `ExitPolicy`; ``reference`` is none of the
                above (it is never ignored), or a path that holds no trace; counts of another
                policy (the message names the field that differs), of no input, or of another
                number of exits or classes than the monitor's model; a new policy with a
                reference given as counts and no new reference (counts are the old policy's
                exits: count the reference again).
            CalibrationError: the policy's calibration does not fit the reference.
        """
        if policy is not None and not isinstance(policy, ExitPolicy):
            raise ValidationError(f"expected an adaptix.ExitPolicy, got {_describe(policy)}.")
        given = _as_reference(reference)
        if given is None and policy is not None and self.reference is None:
            raise ValidationError(
                "expected reference counts for the new policy: the monitor's reference was "
                "given as counts of the old policy's exits. Pass reference= (a Trace, or "
                "ReferenceCounts counted with the new policy)."
            )
        policy = self.policy if policy is None else policy
        trace = self.reference if given is None else given
        if isinstance(trace, Trace):
            counts = reference_counts(trace, policy, self._default_bins)
        else:
            counts = self._reference if trace is None else trace
        self._check_reference(policy, counts)
        tests = (
            ShiftTest(counts.reach[0, : counts.bins].clone(), self.concentration),
            ShiftTest(counts.exits.clone(), self.concentration),
        )
        self.reference = trace if isinstance(trace, Trace) else None
        self.policy = policy
        self._reference = counts
        self.num_exits = counts.num_exits
        self.num_classes = counts.num_classes
        self.bins = counts.bins
        self._reference_reach = counts.reach
        self._reference_exits = counts.exits
        self.tests = tests
        self._segment = 1
        self._base: tuple[Tensor, Tensor] | None = None  # counts where the segment started
        self.threshold = self._line()
        self._counts: _Counts | None = None
        self._batches = 0
        self._host: tuple[Tensor, Tensor] | None = None  # counts read at the last check
        self._tested: tuple[Tensor, Tensor, int] | None = None  # the last tested segment's
        self.log_evalue = 0.0
        self.history: list[tuple[int, float]] = []  # (inputs, log E) at every check
        self.alarm: ShiftAlarm | None = None
        self._alarm_inputs: int | None = None

    def _check_reference(self, policy: ExitPolicy, counts: ReferenceCounts) -> None:
        """`ValidationError` (or `CalibrationError`) unless ``counts`` can be the reference of
        a test of ``policy`` on this monitor's model."""
        counts.check_policy(policy)
        model = getattr(self, "num_exits", None), getattr(self, "num_classes", None)
        if model != (None, None) and model != (counts.num_exits, counts.num_classes):
            raise ValidationError(
                f"expected a reference of the monitor's model ({model[0]} exits, {model[1]} "
                f"classes), got one of {counts.num_exits} exits and {counts.num_classes} "
                "classes. Build a new ShiftMonitor for another model."
            )
        policy.check_model(counts.num_exits, counts.num_classes)
        calibration = policy.calibration
        if calibration is not None:
            calibration.check_compatible(counts.num_exits, counts.num_classes, "the reference")
            if calibration.bins != counts.bins:
                raise ValidationError(
                    f"expected reference counts in the policy's {calibration.bins} bins, got "
                    f"{counts.bins}. Count them with this policy."
                )
        if int(counts.reach[0, : counts.bins].sum()) == 0:
            raise ValidationError(
                "expected reference inputs with a defined exit-0 confidence, got none (every "
                "one in the undefined column): the bin test could never alarm. Count a "
                "reference of finite logits."
            )

    @property
    def alarmed(self) -> bool:
        """Whether the test has alarmed since the last reset."""
        return self.alarm is not None

    @property
    def feedback_inputs(self) -> int:
        """Labelled feedback inputs in the window."""
        return self._feedback.inputs

    @property
    def proxy_inputs(self) -> int:
        """Audited (proxy-labelled) inputs in the window."""
        return self._proxy.inputs

    # -- what the runner calls -----------------------------------------------------------------

    def audit_rows(self, n: int) -> Tensor | None:
        """Positions (CPU int64, random, sorted) of the rows of an ``n``-row batch to route
        through to the last exit, or None. The share ``audit`` is met over batches (the
        fractional part carries over). Host work only."""
        if self.audit == 0.0:
            return None
        self._audit_credit += self.audit * n
        k = min(int(self._audit_credit + 1e-9), n)  # 1e-9: 10 × 0.1 is 0.999…
        self._audit_credit -= k
        if k == 0:
            return None
        return torch.randperm(n, generator=self._generator)[:k].sort().values

    def count_exit(self, exit_index: int, logits: Tensor, reach: Tensor | None = None) -> None:
        """Count the confidence bins of the rows at exit ``exit_index`` (``reach``: a bool mask
        of the rows that count, None: all). Device work only, no synchronisation.

        Raises:
            ValidationError: on the first call after a `reset`, logits of another number of
                classes than the reference's (the model the runner serves is not the one the
                reference was counted on). Checked once per reset, not per batch.
        """
        if self._counts is None and int(logits.shape[-1]) != self.num_classes:
            raise ValidationError(
                f"expected logits of the reference's {self.num_classes} classes, got "
                f"{int(logits.shape[-1])} at exit {exit_index}: the monitor's reference was "
                "counted on another model. Count the reference on this model's outputs."
            )
        counts = self._device_counts(logits.device)
        cells = _bins_of_exit(logits, self.policy.calibration, exit_index, self.bins)
        ones = (
            torch.ones(cells.shape, dtype=torch.int64, device=cells.device)
            if reach is None
            else reach.to(torch.int64)
        )
        counts.reach[exit_index].index_add_(0, cells, ones)

    def end_batch(
        self,
        exit_index: Tensor,
        audited_exit: Tensor | None = None,
        audited_logits: Tensor | None = None,
    ) -> None:
        """Count a batch's exits and keep its audited rows; test every ``check_every`` batches.

        Args:
            exit_index: int64 ``[N]``, the exit each row took.
            audited_exit: int64 ``[k]``: the exit each audited row would have taken (the
                runner reports those rows at the last exit, where they really left).
            audited_logits: ``[k, E, C]``: the audited rows' logits at every exit.
        """
        counts = self._device_counts(exit_index.device)
        ones = torch.ones(exit_index.shape, dtype=torch.int64, device=exit_index.device)
        counts.exits.index_add_(0, exit_index, ones)
        if audited_exit is not None and audited_logits is not None:
            k = int(audited_exit.numel())
            counts.exits[self.num_exits - 1] -= k
            counts.exits.index_add_(0, audited_exit, torch.ones_like(audited_exit))
            self._add_proxy(audited_logits)
        self._batches += 1
        if self._batches % self.check_every == 0:
            self.check()

    def _add_proxy(self, logits: Tensor) -> None:
        """Keep audited rows' logits ``[k, E, C]`` labelled with the last exit's prediction."""
        logits = logits.detach()
        self._proxy.add(logits, prediction(logits[:, -1]))

    def _device_counts(self, device: torch.device) -> _Counts:
        counts = self._counts
        if counts is None or counts.exits.device != device:
            if counts is not None:  # the runner moved: carry the counts over
                self._counts = _Counts(counts.reach.to(device), counts.exits.to(device))
            else:
                self._counts = _Counts(
                    torch.zeros(self.num_exits, self.bins + 1, dtype=torch.int64, device=device),
                    torch.zeros(self.num_exits, dtype=torch.int64, device=device),
                )
            counts = self._counts
        return counts

    # -- the test -------------------------------------------------------------------------------

    def check(self) -> float:
        """Read the counts back (one synchronisation), update the test, alarm if it says so;
        returns log E. Called by the runner every ``check_every`` batches; call it yourself at
        any time (the test stays valid)."""
        if self._counts is None:
            return self.log_evalue
        host = torch.cat((self._counts.reach.flatten(), self._counts.exits)).cpu()
        size = self.num_exits * (self.bins + 1)
        reach = host[:size].view(self.num_exits, self.bins + 1)
        exits = host[size:]
        self._host = (reach, exits)
        inputs = int(exits.sum())
        segment_reach, segment_exits = reach, exits
        if self._base is not None:
            segment_reach, segment_exits = reach - self._base[0], exits - self._base[1]
        self._tested = (segment_reach, segment_exits, self._segment)
        log_e = float(
            combine(
                [
                    self.tests[0].log_evalue(segment_reach[0, : self.bins]),
                    self.tests[1].log_evalue(segment_exits),
                ]
            )
        )
        self.log_evalue = log_e
        self.history.append((inputs, log_e))
        if log_e >= self.threshold and self.alarm is None:
            self._raise_alarm(inputs, log_e)
        if self.restart_every is not None and int(segment_exits.sum()) >= self.restart_every:
            self._base = (reach.clone(), exits.clone())
            self._segment += 1
            self.threshold = self._line()
        return log_e

    def _line(self) -> float:
        """The current segment's alarm line, log(1/α_j) (log(1/α) without restarts)."""
        if self.restart_every is None:
            return math.log(1 / self.alpha)
        line = segment_threshold(self.alpha, self._segment)
        assert isinstance(line, float)
        return line

    def _raise_alarm(self, inputs: int, log_e: float) -> None:
        self._alarm_inputs = inputs
        alarm = ShiftAlarm(inputs, self._batches, log_e, self.alpha, self.report())
        self.alarm = alarm
        callsite.warn(alarm.message(), ShiftWarning)
        if self.tracker is not None:
            self._log_alarm(alarm)
        if self.on_alarm is not None:
            self.on_alarm(alarm)

    def _log_alarm(self, alarm: ShiftAlarm) -> None:
        tracker = self.tracker
        assert tracker is not None
        if self.run_id is None:
            self.run_id = tracker.start_run(
                "shift-monitor", params={"alpha": self.alpha, "check_every": self.check_every}
            )
        tracker.log_metrics(
            self.run_id,
            {
                "shift_alarm": 1.0,
                "shift_log_evalue": alarm.log_evalue,
                "shift_alarm_inputs": float(alarm.inputs),
            },
            step=alarm.inputs,
        )
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "shift-report.json"
            path.write_text(json.dumps(alarm.report.to_dict(), indent=1))
            tracker.log_artifact(self.run_id, path)

    def report(self) -> ShiftReport:
        """The test's state and, per exit-0 bin, exit and reached bin, the reference's and
        the live shares with a two-proportion z: those of the test segment checked last (every
        input since the last reset when the test does not restart)."""
        if self._tested is None:
            reach = torch.zeros(self.num_exits, self.bins + 1, dtype=torch.int64)
            exits = torch.zeros(self.num_exits, dtype=torch.int64)
            segment = self._segment
        else:
            reach, exits, segment = self._tested
        edges = self._edges()
        reach_moves = tuple(
            _moves(
                self._reference_reach[e, : self.bins],
                reach[e, : self.bins],
                [
                    f"exit {e} bin [{edges[e][m]:.2f},{edges[e][m + 1]:.2f})"
                    for m in range(self.bins)
                ],
            )
            for e in range(self.num_exits)
        )
        exit_moves = _moves(
            self._reference_exits, exits, [f"exit rate {e}" for e in range(self.num_exits)]
        )
        return ShiftReport(
            inputs=int(exits.sum()),
            segment=segment,
            log_evalue=self.log_evalue,
            threshold=self.threshold,
            alarmed=self._alarm_inputs is not None,
            alarm_inputs=self._alarm_inputs,
            bins=reach_moves[0],
            exits=exit_moves,
            reach=reach_moves,
        )

    def _edges(self) -> list[list[float]]:
        calibration = self.policy.calibration
        if calibration is not None:
            return calibration.edges.tolist()
        return [[m / self.bins for m in range(self.bins + 1)]] * self.num_exits

    # -- recalibration -------------------------------------------------------------------------

    def observe(self, trace: Trace, *, proxy: bool = False) -> None:
        """Add feedback: the trace of some served inputs with their true labels, or (``proxy``)
        of audited inputs, labelled here with the last exit's prediction (any labels ignored).

        Raises:
            ValidationError: not a trace of this model's exits and classes, unlabelled
                without ``proxy``, or ``proxy`` not a bool.
        """
        proxy = flag(proxy, "proxy")
        if not isinstance(trace, Trace) or (trace.labels is None and not proxy):
            raise ValidationError(
                f"expected a labelled adaptix.Trace of served inputs, got {_describe(trace)}. "
                "Trace them with their labels: model.trace(inputs, labels), or pass "
                "proxy=True for proxy labels."
            )
        if (trace.num_exits, trace.num_classes) != (self.num_exits, self.num_classes):
            raise ValidationError(
                f"expected a trace of {self.num_exits} exits and {self.num_classes} classes "
                f"(the reference's), got {trace.num_exits} exits and {trace.num_classes} classes."
            )
        if proxy:
            self._add_proxy(trace.logits)
            return
        assert trace.labels is not None  # checked above
        self._feedback.add(trace.logits, trace.labels)
        if self.decay is not None:
            fresh = self._count(trace)
            tables = (
                fresh.counts.double(),
                fresh.correct.double(),
                fresh.confidence_sum,
            )
            if self._decayed is None:
                self._decayed = tables
            else:
                weight = self.decay**trace.num_inputs
                self._decayed = tuple(  # type: ignore[assignment]  # three tables in, three out
                    old * weight + new for old, new in zip(self._decayed, tables, strict=True)
                )

    def forget_feedback(self) -> None:
        """Drop every labelled and proxy input kept for recalibration (e.g. after a swap, to
        recalibrate next on data that came after it only)."""
        self._feedback = _Window(self._feedback.size, self._feedback.costs)
        self._proxy = _Window(self._proxy.size, self._proxy.costs)
        self._decayed = None

    def feedback_trace(self, source: Source = "labels") -> Trace:
        """The window's trace: labelled feedback, or audited rows with proxy labels.

        Raises:
            ValidationError: ``source`` is not ``"labels"`` or ``"proxy"``.
            CalibrationError: no such feedback yet.
        """
        choice(source, "source", SOURCES)
        window = self._feedback if source == "labels" else self._proxy
        trace = window.trace(_PROXY_META if source == "proxy" else {"labels": "feedback"})
        if trace is None:
            how = (
                "pass labelled traces to ShiftMonitor.observe"
                if source == "labels"
                else "build the monitor with audit > 0 and run batches"
            )
            raise CalibrationError(
                f"expected {source} feedback to recalibrate on, got none: {how}."
            )
        return trace

    def calibration(self, source: Source = "labels") -> Calibration:
        """A calibration of the feedback, with the policy's bins: the window's (or, with
        ``decay`` and labels, the decayed tables rounded to whole counts). From the proxy, its
        accuracies are agreement with the last exit.

        Raises:
            ValidationError: ``source`` is not ``"labels"`` or ``"proxy"``.
            CalibrationError: no such feedback yet.
        """
        choice(source, "source", SOURCES)
        if source == "labels" and self.decay is not None and self._decayed is not None:
            counts, correct, conf_sum = _whole_counts(*self._decayed)
            template = self._count(self.feedback_trace())
            return Calibration(
                counts,
                correct,
                self.num_classes,
                confidence_sum=conf_sum,
                edges=template.edges,
                method=template.method,
                meta={**template.meta, "recalibrated": f"decay {self.decay}"},
            )
        return self._count(self.feedback_trace(source))

    def _count(self, trace: Trace) -> Calibration:
        calibration = self.policy.calibration
        edges = None if calibration is None or calibration.equal_width else calibration.edges
        method = "reliability" if calibration is None else calibration.method
        return count_bins(trace, self.bins, edges=edges, method=method)

    def recalibrated_policy(self, source: Source = "labels") -> ExitPolicy:
        """The served policy (criterion, parameters, threshold) reading `calibration`
        (``source``): what `EarlyExitRunner.swap_policy` takes.

        Raises:
            ValidationError: the policy's criterion reads no calibration (use `recertify`).
            CalibrationError: no feedback of that source yet.
        """
        current = self.policy
        if not current.criterion.needs_calibration:
            raise ValidationError(
                f"expected a policy whose criterion reads a calibration, got '{current.name}', "
                "which reads none. Use ShiftMonitor.recertify to re-choose its threshold."
            )
        entry = current.entry
        criterion = call_plugin(
            entry, "__init__", entry.component, current.criterion.params, self.calibration(source)
        )
        return ExitPolicy(criterion, current.threshold, entry)

    def recertify(
        self,
        *,
        early_accuracy: float | None = None,
        accuracy_drop: float | None = None,
        alpha: float = 0.05,
        criterion: str | None = None,
        source: Source = "labels",
        **params: Any,
    ) -> ExitPolicy:
        """`adaptix.guarantee` on the window's feedback: a policy certified for the data as it
        is now. A criterion that reads a calibration is calibrated on the window's first half
        and certified on its second (they must be disjoint).

        Args:
            early_accuracy: as `adaptix.guarantee`.
            accuracy_drop: as `adaptix.guarantee`.
            alpha: as `adaptix.guarantee`.
            criterion: default: the served policy's, with its parameters.
            source: ``"labels"``, or ``"proxy"`` (then the target is agreement with the last
                exit, not accuracy).
            **params: the criterion's parameters (default: the served policy's).

        Raises:
            ValidationError: ``criterion`` is not a name, ``source`` is not ``"labels"`` or
                ``"proxy"``, or what `adaptix.guarantee` refuses.
            CalibrationError: no feedback of that source yet.
        """
        if criterion is not None and not isinstance(criterion, str):
            raise ValidationError(
                f"expected criterion as a registry name (a str) or None, got "
                f"{_describe(criterion)}."
            )
        trace = self.feedback_trace(source)
        name = self.policy.name if criterion is None else criterion
        if criterion is None and not params:
            params = self.policy.criterion.params.model_dump()
        needs = self.policy.entry.component.needs_calibration if criterion is None else None
        if needs is None:
            needs = resolve_manager(None).criteria.get(name).needs_calibration
        calibration = None
        if needs:
            half = trace.num_inputs // 2
            calibration = self._count(_rows(trace, slice(0, half)))
            trace = _rows(trace, slice(half, None))
        return guarantee(
            trace,
            name,
            early_accuracy=early_accuracy,
            accuracy_drop=accuracy_drop,
            alpha=alpha,
            calibration=calibration,
            **params,
        )


_PROXY_META = {"labels": "proxy: the last exit's prediction (agreement, not accuracy)"}


def _whole_counts(counts: Tensor, correct: Tensor, conf_sum: Tensor) -> tuple[Tensor, ...]:
    """Decayed (fractional) tables ``[E, M]`` as whole counts that a `Calibration` accepts:
    every exit's counts rounded to the same total (every input is counted at every exit) by
    largest remainders; per bin, the accuracy and the mean confidence kept (k and the
    confidence sum scaled with n, k rounded, both at most n)."""
    total = round(float(counts[0].sum()))
    floor = counts.floor()
    short = (total - floor.sum(dim=1)).round().long().clamp(min=0)  # units left per exit
    order = (counts - floor).argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(counts.shape[1]).expand_as(order).contiguous())
    whole = floor + (ranks < short.unsqueeze(1)).double()
    scale = torch.where(counts > 0, whole / counts.clamp(min=1e-300), 0.0)
    hits = torch.minimum((correct * scale).round(), whole)
    sums = torch.minimum(conf_sum * scale, whole)
    return whole, hits, sums


def _rows(trace: Trace, rows: slice) -> Trace:
    labels = None if trace.labels is None else trace.labels[rows]
    return Trace(trace.logits[rows], labels, trace.costs, meta=trace.meta)


def _bins_of_exit(
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
    columns = [_bins_of_exit(logits[:, e], calibration, e, bins) for e in range(logits.shape[1])]
    return torch.stack(columns, dim=1).cpu()


def _reach_counts(bins_by_exit: Tensor, exits: Tensor, num_exits: int, bins: int) -> Tensor:
    """int64 ``[E, M + 1]``: per exit e, the bins of the inputs whose exit is ≥ e."""
    exits = exits.cpu()
    table = torch.zeros(num_exits, bins + 1, dtype=torch.int64)
    for e in range(num_exits):
        reached = bins_by_exit[exits >= e, e]
        table[e] = torch.bincount(reached, minlength=bins + 1)[: bins + 1]
    return table


def _moves(reference: Tensor, live: Tensor, names: list[str]) -> tuple[Move, ...]:
    """Per category: shares and the two-proportion z (0 where either side has no inputs)."""
    n_ref = float(reference.sum())
    n_live = float(live.sum())
    moves = []
    for name, r, s in zip(names, reference.tolist(), live.tolist(), strict=True):
        p_ref = r / n_ref if n_ref else 0.0
        p_live = s / n_live if n_live else 0.0
        pooled = (r + s) / (n_ref + n_live) if n_ref + n_live else 0.0
        spread = (
            math.sqrt(pooled * (1 - pooled) * (1 / n_ref + 1 / n_live)) if n_ref and n_live else 0.0
        )
        moves.append(Move(name, p_ref, p_live, (p_live - p_ref) / spread if spread > 0 else 0.0))
    return tuple(moves)


def _as_reference(reference: object) -> Trace | ReferenceCounts | None:
    """A reference as a `Trace` or `ReferenceCounts` (None stays None): a path is loaded with
    `Trace.load`, anything else refused (never ignored)."""
    if reference is None or isinstance(reference, Trace | ReferenceCounts):
        return reference
    if isinstance(reference, str | os.PathLike):
        return Trace.load(reference)
    raise ValidationError(
        f"expected the reference as an adaptix.Trace, the path of a trace saved with "
        f"Trace.save, or ReferenceCounts (reference_counts), got {_describe(reference)}. "
        "Trace the data the policy was calibrated on (model.trace(inputs))."
    )


def _check_tracker(tracker: object) -> None:
    """`ValidationError` unless ``tracker`` is None or has a `Tracker`'s logging methods."""
    needed = ("start_run", "log_metrics", "log_artifact")
    if tracker is not None and not all(callable(getattr(tracker, m, None)) for m in needed):
        raise ValidationError(
            f"expected tracker to be an adaptix.tracking.Tracker (or an object with "
            f"{', '.join(needed)}), got {_describe(tracker)}. Build one: "
            "adaptix.tracking.Tracker('adaptix')."
        )


def _check_counts_tensor(counts: object, name: str, dims: int | None = None) -> Tensor:
    """``counts`` as a tensor of non-negative integer counts (``dims`` dimensions, at least
    one entry), or `ValidationError` naming ``name``."""
    if not isinstance(counts, Tensor) or (dims is not None and counts.dim() != dims):
        shape = f"a {dims}-d tensor" if dims is not None else "a tensor"
        raise ValidationError(f"expected {name} as {shape}, got {_describe(counts)}.")
    if counts.numel() == 0:
        raise ValidationError(f"expected {name} with at least one category, got none.")
    if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
        raise ValidationError(
            f"expected integer {name}, got dtype {counts.dtype} (counts are whole numbers: "
            "never NaN, fractions or flags)."
        )
    if bool((counts < 0).any()):
        raise ValidationError(f"expected non-negative {name}, got a negative one.")
    return counts


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    if isinstance(value, str | bytes | int | float):
        return f"{reprlib.repr(value)} (a {type(value).__name__})"
    return f"a {type(value).__name__}"
