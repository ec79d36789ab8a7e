"""`Recalibrator`: the feedback a `ShiftMonitor` keeps, and the policies it builds on it.

Labelled feedback (`ShiftMonitor.observe`) accumulates into a running calibration over a sliding
window of the latest inputs or with exponential decay. Label-free, the runner can route a share
of rows (``audit``) through to the last exit and the monitor keeps their logits at every exit,
labelled with the last exit's prediction: a calibration built on them measures **agreement with
the last exit**, not accuracy (they coincide only where the last exit is right).
`Recalibrator.recalibrated_policy` builds the policy that `EarlyExitRunner.swap_policy` then swaps
in between batches; `Recalibrator.recertification_data` is what `ShiftMonitor.recertify` hands
`adaptix.guarantee` (the monitor calls it: importing it here would add an import floor).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from adaptix.core.calibration import Calibration, count_bins
from adaptix.core.describe import describe_value
from adaptix.core.scores import prediction
from adaptix.core.trace import Trace
from adaptix.errors import CalibrationError, ValidationError
from adaptix.offline.policy import ExitPolicy
from adaptix.plugins import call_plugin, resolve_manager
from adaptix.scalars import choice

Source = Literal["labels", "proxy"]
SOURCES: tuple[Source, ...] = ("labels", "proxy")
PROXY_META = {"labels": "proxy: the last exit's prediction (agreement, not accuracy)"}


@dataclass
class FeedbackWindow:
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


class Recalibrator:
    """The feedback kept for recalibration (labelled, and audited rows with proxy labels), and
    the calibrations and policies built on it. A `ShiftMonitor` owns one; the policy and the bins
    are the monitor's and are passed in, since they change when it is reset.

    Args:
        window: inputs kept of each kind of feedback (the latest ones).
        costs: the model's cumulative costs ``[E]`` (float64), for the traces built.
        decay: weigh the labelled feedback's counts by ``decay`` per input observed since
            (None: the window only).
    """

    def __init__(self, window: int, costs: Tensor, decay: float | None = None) -> None:
        self.decay = decay
        self._feedback = FeedbackWindow(window, costs)
        self._proxy = FeedbackWindow(window, costs)
        self._decayed: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def feedback_inputs(self) -> int:
        """Labelled feedback inputs in the window."""
        return self._feedback.inputs

    @property
    def proxy_inputs(self) -> int:
        """Audited (proxy-labelled) inputs in the window."""
        return self._proxy.inputs

    def add_labelled(self, trace: Trace, policy: ExitPolicy, bins: int) -> None:
        """Keep a labelled trace (and, with ``decay``, fold its counts into the decayed tables)."""
        assert trace.labels is not None  # the monitor checks it
        self._feedback.add(trace.logits, trace.labels)
        if self.decay is not None:
            fresh = count_policy_bins(trace, policy, bins)
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

    def add_proxy(self, logits: Tensor) -> None:
        """Keep audited rows' logits ``[k, E, C]`` labelled with the last exit's prediction."""
        logits = logits.detach()
        self._proxy.add(logits, prediction(logits[:, -1]))

    def forget(self) -> None:
        """Drop every labelled and proxy input kept."""
        self._feedback = FeedbackWindow(self._feedback.size, self._feedback.costs)
        self._proxy = FeedbackWindow(self._proxy.size, self._proxy.costs)
        self._decayed = None

    def feedback_trace(self, source: Source = "labels") -> Trace:
        """As `ShiftMonitor.feedback_trace`."""
        choice(source, "source", SOURCES)
        window = self._feedback if source == "labels" else self._proxy
        trace = window.trace(PROXY_META if source == "proxy" else {"labels": "feedback"})
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

    def calibration(self, policy: ExitPolicy, bins: int, source: Source = "labels") -> Calibration:
        """As `ShiftMonitor.calibration`, in ``policy``'s ``bins``."""
        choice(source, "source", SOURCES)
        if source == "labels" and self.decay is not None and self._decayed is not None:
            counts, correct, conf_sum = whole_counts(*self._decayed)
            template = count_policy_bins(self.feedback_trace(), policy, bins)
            return Calibration(
                counts,
                correct,
                template.num_classes,
                confidence_sum=conf_sum,
                edges=template.edges,
                method=template.method,
                meta={**template.meta, "recalibrated": f"decay {self.decay}"},
            )
        return count_policy_bins(self.feedback_trace(source), policy, bins)

    def recalibrated_policy(
        self, policy: ExitPolicy, bins: int, source: Source = "labels"
    ) -> ExitPolicy:
        """As `ShiftMonitor.recalibrated_policy`, for the served ``policy``."""
        if not policy.criterion.needs_calibration:
            raise ValidationError(
                f"expected a policy whose criterion reads a calibration, got '{policy.name}', "
                "which reads none. Use ShiftMonitor.recertify to re-choose its threshold."
            )
        entry = policy.entry
        criterion = call_plugin(
            entry,
            "__init__",
            entry.component,
            policy.criterion.params,
            self.calibration(policy, bins, source),
        )
        return ExitPolicy(criterion, policy.threshold, entry)

    def recertification_data(
        self,
        policy: ExitPolicy,
        bins: int,
        criterion: str | None,
        source: Source,
        params: dict[str, Any],
    ) -> tuple[Trace, str, dict[str, Any], Calibration | None]:
        """What `ShiftMonitor.recertify` hands `adaptix.guarantee`: the feedback trace to
        certify on, the criterion's name and parameters (default: the served ``policy``'s), and
        the calibration of the window's first half when the criterion reads one (the trace is
        then the second half: they must be disjoint).

        Raises:
            ValidationError: ``criterion`` is not a name, or ``source`` is not ``"labels"`` or
                ``"proxy"``.
            CalibrationError: no feedback of that source yet.
        """
        if criterion is not None and not isinstance(criterion, str):
            raise ValidationError(
                f"expected criterion as a registry name (a str) or None, got "
                f"{describe_value(criterion)}."
            )
        trace = self.feedback_trace(source)
        name = policy.name if criterion is None else criterion
        if criterion is None and not params:
            params = policy.criterion.params.model_dump()
        needs = policy.entry.component.needs_calibration if criterion is None else None
        if needs is None:
            needs = resolve_manager(None).criteria.get(name).needs_calibration
        calibration = None
        if needs:
            half = trace.num_inputs // 2
            calibration = count_policy_bins(rows_of(trace, slice(0, half)), policy, bins)
            trace = rows_of(trace, slice(half, None))
        return trace, name, params, calibration


def count_policy_bins(trace: Trace, policy: ExitPolicy, bins: int) -> Calibration:
    """A calibration of ``trace`` in ``policy``'s bins (its calibration's edges and method), or
    ``bins`` equal-width reliability bins when the policy reads none."""
    calibration = policy.calibration
    edges = None if calibration is None or calibration.equal_width else calibration.edges
    method = "reliability" if calibration is None else calibration.method
    return count_bins(trace, bins, edges=edges, method=method)


def whole_counts(counts: Tensor, correct: Tensor, conf_sum: Tensor) -> tuple[Tensor, ...]:
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


def rows_of(trace: Trace, rows: slice) -> Trace:
    """The trace of ``trace``'s ``rows`` (labels, costs and meta kept)."""
    labels = None if trace.labels is None else trace.labels[rows]
    return Trace(trace.logits[rows], labels, trace.costs, meta=trace.meta)
