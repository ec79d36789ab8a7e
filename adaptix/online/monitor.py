"""`ShiftMonitor`: does the data still look like the data the policy was calibrated on?

PCEE's calibration (and every certificate of `adaptix.guarantee`) holds only while deployment
inputs are exchangeable with the calibration inputs. A `ShiftMonitor`, attached to an
`EarlyExitRunner`, watches for the opposite, and recalibrates.

**What it counts**, on the batch's device and without any host synchronisation of its own: for
every exit e, the confidence-bin counts of the inputs that reach exit e (exit 0's are unbiased:
every input reaches it), and the exit histogram. Every ``check_every`` batches it reads them back
(one transfer) and updates the test.


**The test** is `adaptix.core.evalues.ShiftTest`, a two-sample e-process (its module docstring
gives the maths): the exit-0 bins and the exit histogram each give one, and the monitor alarms
when their average, itself an e-process, reaches 1/α; the false-alarm probability stays ≤ α
however long the stream and however often it is checked.

**The reference belongs to its policy and model.** Which exit a reference input takes, and in
which bins it is counted, depend on the policy, so `ReferenceCounts` (`adaptix.online.reference`)
record the policy they were counted for (criterion, parameters, threshold, ``exits_early``,
calibration) and the model's classes; a monitor, its `ShiftMonitor.reset` (what
`EarlyExitRunner.swap_policy` calls) and ``+`` refuse counts of another policy or model, or of
no input (a test that could never alarm).
A reference given as a path is loaded with `Trace.load`; nothing given as a reference is ignored.

**Recalibration** is a `Recalibrator` (`adaptix.online.recalibration`) the monitor owns: labelled
feedback (`ShiftMonitor.observe`) and audited rows with proxy labels, from which
`ShiftMonitor.recalibrated_policy` and `ShiftMonitor.recertify` build the policy that
`EarlyExitRunner.swap_policy` then swaps in between batches. The report and alarm types live in
`adaptix.online.shift_report`; logging an alarm to a tracker in `adaptix.online.alarm_log`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adaptix import callsite
from adaptix.core.calibration import Calibration
from adaptix.core.describe import describe_value
from adaptix.core.evalues import (
    ShiftTest,
    combine,
    evidence_path,
    log_sequence_probability,
    segment_threshold,
)
from adaptix.core.trace import Trace, check_trace
from adaptix.errors import ValidationError
from adaptix.offline.guarantee import guarantee
from adaptix.offline.policy import ExitPolicy
from adaptix.offline.simulate import simulate
from adaptix.online.alarm_log import check_tracker, log_alarm
from adaptix.online.recalibration import Recalibrator, Source
from adaptix.online.reference import (
    DEFAULT_BINS,
    ReferenceCounts,
    as_reference,
    bins_of_exit,
    confidence_bins,
    policy_record,
    reach_counts,
)
from adaptix.online.shift_report import ShiftAlarm, ShiftReport, ShiftWarning, moves
from adaptix.scalars import count, flag, integer, real, unit

if TYPE_CHECKING:
    from adaptix.tracking import Tracker

#: Names other modules import from here (homes: `adaptix.core.evalues`,
#: `adaptix.online.reference`, `adaptix.online.shift_report`, and this module).
__all__ = [
    "DEFAULT_BINS",
    "ReferenceCounts",
    "ShiftAlarm",
    "ShiftMonitor",
    "ShiftReport",
    "ShiftTest",
    "ShiftWarning",
    "combine",
    "confidence_bins",
    "evidence_path",
    "log_sequence_probability",
    "reference_counts",
    "segment_threshold",
]

#: The seeds a torch generator takes.
_SEEDS = (-(2**63), 2**64 - 1)


@dataclass
class _Counts:
    """The stream's counts on the device: per exit, the bins of the inputs reaching it (one
    extra column for undefined confidences), and the exit histogram."""

    reach: Tensor  # int64 [E, M + 1]
    exits: Tensor  # int64 [E]


def reference_counts(trace: Trace, policy: ExitPolicy, bins: int = DEFAULT_BINS) -> ReferenceCounts:
    """Count a reference trace as a `ShiftMonitor` for ``policy`` counts it (the policy's
    calibration's bins, or ``bins`` equal-width bins when it reads none), recording the policy.

    Raises:
        ValidationError: not a trace and a policy, ``bins`` not an integer ≥ 1, or a policy
            whose criterion does not fit the trace's model.
        CalibrationError: the policy's calibration does not fit the trace.
    """
    check_trace(trace, "the reference")
    if not isinstance(policy, ExitPolicy):
        raise ValidationError(f"expected an adaptix.ExitPolicy, got {describe_value(policy)}.")
    bins = count(bins, "bins", low=1)
    calibration = policy.calibration
    num_exits = trace.num_exits
    if calibration is not None:
        calibration.check_compatible(num_exits, trace.num_classes, "the reference")
        bins = calibration.bins
    reference_bins = confidence_bins(trace.logits, calibration, bins)  # [N, E]
    exits = simulate(trace, policy).exit_index.cpu()
    return ReferenceCounts(
        reach_counts(reference_bins, exits, num_exits, bins),
        torch.bincount(exits, minlength=num_exits),
        trace.num_classes,
        tuple(float(c) for c in trace.costs.tolist()),
        **policy_record(policy),
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
            raise ValidationError(f"expected an adaptix.ExitPolicy, got {describe_value(policy)}.")
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
            raise ValidationError(
                f"expected on_alarm to be callable, got {describe_value(on_alarm)}."
            )
        check_tracker(tracker)
        if run_id is not None and not isinstance(run_id, str):
            raise ValidationError(
                f"expected run_id to be a str or None, got {describe_value(run_id)}."
            )
        given = as_reference(reference)  # after the cheap checks: a path is loaded
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
        self.recalibrator = Recalibrator(window, costs, self.decay)
        self.reference = None
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
            raise ValidationError(f"expected an adaptix.ExitPolicy, got {describe_value(policy)}.")
        given = as_reference(reference)
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
        return self.recalibrator.feedback_inputs

    @property
    def proxy_inputs(self) -> int:
        """Audited (proxy-labelled) inputs in the window."""
        return self.recalibrator.proxy_inputs

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
        cells = bins_of_exit(logits, self.policy.calibration, exit_index, self.bins)
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
            self.recalibrator.add_proxy(audited_logits)
        self._batches += 1
        if self._batches % self.check_every == 0:
            self.check()

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
        log_alarm(tracker, self.run_id, alarm)

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
            moves(
                self._reference_reach[e, : self.bins],
                reach[e, : self.bins],
                [
                    f"exit {e} bin [{edges[e][m]:.2f},{edges[e][m + 1]:.2f})"
                    for m in range(self.bins)
                ],
            )
            for e in range(self.num_exits)
        )
        exit_moves = moves(
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

    # -- recalibration (delegated to the monitor's Recalibrator) --------------------------------

    def observe(self, trace: Trace, *, proxy: bool = False) -> None:
        """Add feedback: the trace of some served inputs with their true labels, or (``proxy``)
        of audited inputs, labelled here with the last exit's prediction (any labels ignored).

        Raises:
            ValidationError: not a trace of this model's exits and classes, unlabelled
                without ``proxy``, or ``proxy`` not a bool.
        """
        proxy = flag(proxy, "proxy")
        check_trace(
            trace,
            "the served inputs",
            labelled=not proxy,
            fix="Trace them with their labels: model.trace(inputs, labels), or pass "
            "proxy=True for proxy labels.",
        )
        if (trace.num_exits, trace.num_classes) != (self.num_exits, self.num_classes):
            raise ValidationError(
                f"expected a trace of {self.num_exits} exits and {self.num_classes} classes "
                f"(the reference's), got {trace.num_exits} exits and {trace.num_classes} classes."
            )
        if proxy:
            self.recalibrator.add_proxy(trace.logits)
            return
        self.recalibrator.add_labelled(trace, self.policy, self.bins)

    def forget_feedback(self) -> None:
        """Drop every labelled and proxy input kept for recalibration (e.g. after a swap, to
        recalibrate next on data that came after it only)."""
        self.recalibrator.forget()

    def feedback_trace(self, source: Source = "labels") -> Trace:
        """The window's trace: labelled feedback, or audited rows with proxy labels.

        Raises:
            ValidationError: ``source`` is not ``"labels"`` or ``"proxy"``.
            CalibrationError: no such feedback yet.
        """
        return self.recalibrator.feedback_trace(source)

    def calibration(self, source: Source = "labels") -> Calibration:
        """A calibration of the feedback, with the policy's bins: the window's (or, with
        ``decay`` and labels, the decayed tables rounded to whole counts). From the proxy, its
        accuracies are agreement with the last exit.

        Raises:
            ValidationError: ``source`` is not ``"labels"`` or ``"proxy"``.
            CalibrationError: no such feedback yet.
        """
        return self.recalibrator.calibration(self.policy, self.bins, source)

    def recalibrated_policy(self, source: Source = "labels") -> ExitPolicy:
        """The served policy (criterion, parameters, threshold) reading `calibration`
        (``source``): what `EarlyExitRunner.swap_policy` takes.

        Raises:
            ValidationError: the policy's criterion reads no calibration (use `recertify`).
            CalibrationError: no feedback of that source yet.
        """
        return self.recalibrator.recalibrated_policy(self.policy, self.bins, source)

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
        trace, name, params, calibration = self.recalibrator.recertification_data(
            self.policy, self.bins, criterion, source, params
        )
        return guarantee(
            trace,
            name,
            early_accuracy=early_accuracy,
            accuracy_drop=accuracy_drop,
            alpha=alpha,
            calibration=calibration,
            **params,
        )
