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
import tempfile
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from adaptix.calibration import Calibration, count_bins
from adaptix.errors import CalibrationError, ValidationError
from adaptix.plugins import call_plugin, resolve_manager
from adaptix.policy import ExitPolicy
from adaptix.scores import bin_index, confidence, prediction
from adaptix.simulate import simulate
from adaptix.trace import Trace

if TYPE_CHECKING:
    from adaptix.tracking import Tracker

#: The Jeffreys (Krichevsky–Trofimov) prior weight per category of the reference's mixture.
JEFFREYS = 0.5
#: Bins of the exit-0 test when the policy reads no calibration (whose bins it would use).
DEFAULT_BINS = 10
Source = Literal["labels", "proxy"]


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
        reference: int64 ``[K]`` counts of the reference sample.
        concentration: κ, the weight of the reference in the stream's prior β = J + κ · (r + J)
            / Σ(r + J): 0 gives the plain Jeffreys prior; a larger κ spends less evidence when
            the stream is close to the reference and reaches an alarm faster on moderate
            shifts. Fixed before the stream starts, as validity requires.
    """

    reference: Tensor
    concentration: float = 0.0

    def __post_init__(self) -> None:
        ref = self.reference
        if not (isinstance(ref, Tensor) and ref.dim() == 1 and ref.numel() >= 1):
            raise ValidationError(
                f"expected reference counts as a 1-d tensor, got {_describe(ref)}."
            )
        if ref.is_floating_point() or ref.is_complex() or ref.dtype == torch.bool:
            raise ValidationError(f"expected integer reference counts, got dtype {ref.dtype}.")
        if bool((ref < 0).any()):
            raise ValidationError("expected non-negative reference counts, got a negative one.")
        if not (math.isfinite(self.concentration) and self.concentration >= 0):
            raise ValidationError(
                f"expected a finite concentration >= 0, got {self.concentration!r}."
            )
        object.__setattr__(self, "reference", ref.detach().to("cpu", torch.int64))

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
        float64 on the CPU."""
        if stream.shape[-1:] != (self.categories,):
            raise ValidationError(
                f"expected stream counts [..., {self.categories}], got {tuple(stream.shape)}."
            )
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
    (each segment's e-process is valid on its own; a union bound joins them)."""
    if isinstance(segment, Tensor):
        return torch.log(math.pi**2 * segment.double() ** 2 / (6 * alpha))
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
    study's path through the monitor's own test."""
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
        """The exit-0 bins, exits and reached bins whose |z| ≥ ``z``, largest first."""
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
    and added with ``+``.

    Attributes:
        reach: int64 ``[E, M + 1]``: per exit e, the confidence bins of the reference inputs
            that reach exit e under the policy (the last column: undefined confidences).
        exits: int64 ``[E]``: the exit each reference input takes under the policy.
        num_classes: C.
        costs: the cumulative costs ``[E]`` of the model.
    """

    reach: Tensor
    exits: Tensor
    num_classes: int
    costs: tuple[float, ...]

    @property
    def num_exits(self) -> int:
        """E."""
        return int(self.exits.numel())

    @property
    def bins(self) -> int:
        """M."""
        return int(self.reach.shape[1]) - 1

    def __add__(self, other: object) -> ReferenceCounts:
        if not isinstance(other, ReferenceCounts):
            return NotImplemented
        if (
            self.reach.shape != other.reach.shape
            or self.num_classes != other.num_classes
            or self.costs != other.costs
        ):
            raise ValidationError(
                "expected reference counts of one model and one binning to add, got "
                f"[E, M + 1] = {list(self.reach.shape)} and {list(other.reach.shape)}, C = "
                f"{self.num_classes} and {other.num_classes}, costs {list(self.costs)} and "
                f"{list(other.costs)}."
            )
        return ReferenceCounts(
            self.reach + other.reach, self.exits + other.exits, self.num_classes, self.costs
        )


def reference_counts(trace: Trace, policy: ExitPolicy, bins: int = DEFAULT_BINS) -> ReferenceCounts:
    """Count a reference trace as a `ShiftMonitor` for ``policy`` counts it (the policy's
    calibration's bins, or ``bins`` equal-width bins when it reads none).

    Raises:
        CalibrationError: the policy's calibration does not fit the trace.
    """
    calibration = policy.calibration
    num_exits = trace.num_exits
    if calibration is not None:
        calibration.check_compatible(num_exits, trace.num_classes, "the reference")
        bins = calibration.bins
    reference_bins = _bins_of(trace.logits, calibration, bins)  # [N, E]
    exits = simulate(trace, policy).exit_index.cpu()
    return ReferenceCounts(
        _reach_counts(reference_bins, exits, num_exits, bins),
        torch.bincount(exits, minlength=num_exits),
        trace.num_classes,
        tuple(float(c) for c in trace.costs.tolist()),
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
            held-out data like it); labels are not needed. Or its `ReferenceCounts`
            (`reference_counts`, or added up from shards on Ray by
            `adaptix.distributed.reduce_statistics`): the monitor keeps only these counts.
            The test is exact when the policy was not fitted on it (pass the held-out half
            of the calibration data when you can); with the calibration data itself the
            exit-rate part carries a small selection effect (the policy chose its bins on it).
        alpha: the false-alarm probability over the whole stream, in (0, 1).
        check_every: read the counts back and test every this many batches (one host
            synchronisation each time; the test stays valid whatever the schedule).
        on_alarm: called once with a `ShiftAlarm` when the test first alarms (again after
            `reset`). An exception it raises propagates.
        tracker: an `adaptix.tracking.Tracker`; an alarm logs its metrics and report to
            ``run_id`` (which the monitor starts, named ``shift-monitor``, when not given).
        run_id: the MLflow run to log alarms to.
        window: labelled (and proxy) feedback kept for recalibration: the latest this many
            inputs (a sliding window).
        decay: instead of a window, weigh the labelled feedback's counts by ``decay`` per input
            observed since (exponential forgetting, in (0, 1)); counts are rounded to whole
            numbers when a calibration is built. `recertify` then still uses the window.
        audit: the share of rows, in [0, 1), that the runner routes through to the last exit
            (they get its prediction) to label-free proxy-label the early exits.
        concentration: the stream prior's weight κ of `ShiftTest`.
        restart_every: start a fresh test segment after this many inputs (None: one test
            over the whole stream). A test over everything since the start reacts ever more
            slowly to a shift that comes late; segments keep the reaction time bounded. The
            j-th segment alarms at log(1/α_j), α_j = α · 6 / (π² j²): the false-alarm
            probability over all segments together stays ≤ α.
        bins: equal-width bins when the policy reads no calibration.
        seed: seeds the choice of audited rows.

    Raises:
        ValidationError: an argument out of range, or a reference that does not fit the policy.
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
        reference: Trace | ReferenceCounts,
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
        if not isinstance(reference, Trace | ReferenceCounts):
            raise ValidationError(
                f"expected the reference as an adaptix.Trace (or ReferenceCounts), got "
                f"{_describe(reference)}. Trace the calibration data (model.trace(inputs))."
            )
        _check_open_unit(alpha, "alpha")
        _check_count(check_every, "check_every")
        _check_count(window, "window")
        _check_count(bins, "bins")
        if restart_every is not None:
            _check_count(restart_every, "restart_every")
        if decay is not None:
            _check_open_unit(decay, "decay")
        if isinstance(audit, bool) or not (isinstance(audit, int | float) and 0 <= audit < 1):
            raise ValidationError(f"expected audit as a share in [0, 1), got {audit!r}.")
        if on_alarm is not None and not callable(on_alarm):
            raise ValidationError(f"expected on_alarm to be callable, got {_describe(on_alarm)}.")
        self.alpha = float(alpha)
        self.check_every = check_every
        self.on_alarm = on_alarm
        self.tracker = tracker
        self.run_id = run_id
        self.decay = decay
        self.audit = float(audit)
        self.concentration = float(concentration)
        self.restart_every = restart_every
        self._default_bins = bins
        self._generator = torch.Generator().manual_seed(seed)
        self._audit_credit = 0.0
        costs = torch.tensor(
            reference.costs if isinstance(reference, ReferenceCounts) else reference.costs.tolist(),
            dtype=torch.float64,
        )
        self._feedback = _Window(window, costs)
        self._proxy = _Window(window, costs)
        self.reference = None
        self._decayed: tuple[Tensor, Tensor, Tensor] | None = None
        self.reset(policy=policy, reference=reference)

    # -- set-up --------------------------------------------------------------------------------

    def reset(
        self,
        *,
        policy: ExitPolicy | None = None,
        reference: Trace | ReferenceCounts | None = None,
    ) -> None:
        """Start a new test: clear the stream's counts and the alarm; optionally against another
        policy (after a swap) and another reference (the data the new policy was calibrated on).
        Feedback kept for recalibration stays.

        Raises:
            ValidationError: a new policy with a reference given as counts and no new
                reference (counts are the old policy's exits: count the reference again).
        """
        if reference is None and policy is not None and self.reference is None:
            raise ValidationError(
                "expected reference counts for the new policy: the monitor's reference was "
                "given as counts of the old policy's exits. Pass reference= (a Trace, or "
                "ReferenceCounts counted with the new policy)."
            )
        policy = self.policy if policy is None else policy
        if reference is None:
            reference = self.reference
        if isinstance(reference, Trace):
            counts = reference_counts(reference, policy, self._default_bins)
            self.reference = reference
        elif isinstance(reference, ReferenceCounts):
            counts = reference
            self.reference = None
        else:  # the reference is unchanged and given as counts
            counts = self._reference
        calibration = policy.calibration
        if calibration is not None:
            calibration.check_compatible(counts.num_exits, counts.num_classes, "the reference")
            if calibration.bins != counts.bins:
                raise ValidationError(
                    f"expected reference counts in the policy's {calibration.bins} bins, got "
                    f"{counts.bins}. Count them with this policy."
                )
        self.policy = policy
        self._reference = counts
        self.num_exits = counts.num_exits
        self.num_classes = counts.num_classes
        self.bins = counts.bins
        self._reference_reach = counts.reach
        self._reference_exits = counts.exits
        self.tests = (
            ShiftTest(self._reference_reach[0, : self.bins].clone(), self.concentration),
            ShiftTest(self._reference_exits.clone(), self.concentration),
        )
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
        of the rows that count, None: all). Device work only, no synchronisation."""
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
        warnings.warn(alarm.message(), ShiftWarning, stacklevel=3)
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
            ValidationError: not a trace of this model's exits and classes, or unlabelled
                without ``proxy``.
        """
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
            CalibrationError: no such feedback yet.
        """
        window = self._feedback if source == "labels" else self._proxy
        if source not in ("labels", "proxy"):
            raise ValidationError(f"expected source 'labels' or 'proxy', got {source!r}.")
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
        accuracies are agreement with the last exit."""
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
            early_accuracy, accuracy_drop, alpha: as `adaptix.guarantee`.
            criterion: default: the served policy's, with its parameters.
            source: ``"labels"``, or ``"proxy"`` (then the target is agreement with the last
                exit, not accuracy).
            **params: the criterion's parameters (default: the served policy's).
        """
        from adaptix.guarantee import guarantee  # the guarantee module imports the policy one

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


def _bins_of(logits: Tensor, calibration: Calibration | None, bins: int) -> Tensor:
    """Bins ``[N, E]`` of stored logits ``[N, E, C]``."""
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


def _check_open_unit(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValidationError(f"expected {name} in (0, 1), got {value!r}.")


def _check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"expected {name} to be an integer >= 1, got {value!r}.")


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    return f"a {type(value).__name__}"
