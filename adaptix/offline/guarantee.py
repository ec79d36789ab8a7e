"""Certified early exiting: a target that holds with probability ≥ 1 − α (``PCEE.md``: Guarantees).

`guarantee` picks the cheapest threshold of any registered criterion whose hypothesis "the target
is missed" is rejected by Learn-then-Test (Angelopoulos et al.) on a labelled calibration trace;
`budget` picks the most accurate threshold whose relative cost is certified to stay within a
budget. Both return an `ExitPolicy` that carries its `Certificate`.

How the test works, for a target ``early_accuracy=δ``:

1. The candidate thresholds (the criterion's `default_thresholds`, or the caller's) are ordered
   from strictest to loosest, by the criterion's direction alone: the order never looks at labels.
2. For each threshold λ, the m(λ) calibration inputs that leave before the last exit and the
   k(λ) of them predicted right give the exact binomial p-value P(Bin(m, δ) ≥ k): valid for the
   hypothesis A(λ) < δ, conditionally on m (given m, the early inputs are m independent draws
   from the distribution of inputs that leave early, each right with probability A(λ)).
3. Thresholds where so few inputs leave that the method's own test could not reject even with
   every early input right have no power and would stop the sequence at once; the sequence
   starts at the first threshold where that best case rejects (binomial: δ^m ≤ α;
   Hoeffding–Bentkus, which pays for its generality, needs more early inputs). The start is
   per method and reads m only, never the labels, so the sequence stays valid.
4. Fixed-sequence testing rejects in order and stops at the first p-value above α, which keeps
   the family-wise error ≤ α; the loosest rejected threshold is the cheapest certified one.

``accuracy_drop=ε`` tests the drop against the final exit instead, through the loss
1{the final exit is right and the policy is wrong}: its rate bounds the drop from above (an
early exit that fixes a final-exit mistake only helps), and at the strictest threshold it is 0,
so the sequence starts with power. (The drop itself, 1{final right} − 1{policy right} mapped to
[0, 1], sits at the midpoint with almost no spread, where a bound that assumes the worst
variance, as Hoeffding–Bentkus does, has no power.)

``method="binomial"`` (default) uses the exact binomial tail, ``"hoeffding_bentkus"`` the
Hoeffding–Bentkus p-value of Learn-then-Test, valid for any loss in [0, 1]. The losses here are
Bernoulli, where the exact binomial tail is valid and sharper (Hoeffding–Bentkus pays a factor e
and a Hoeffding tail for its generality), which matters at the n ≈ 500–5,000 calibration inputs
users have. Relative cost is not Bernoulli: `budget` uses Hoeffding–Bentkus.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from adaptix import callsite, scalars
from adaptix.core.bounds import (
    binomial_pvalue_at_least,
    binomial_pvalue_at_most,
    clopper_pearson_lower,
    clopper_pearson_upper,
    fixed_sequence,
    hoeffding_bentkus_pvalue,
)
from adaptix.core.trace import Trace, check_trace, shared_rows
from adaptix.errors import ValidationError
from adaptix.offline.certificate import (
    METHODS,
    Certificate,
    CertificateWarning,
    Method,
    Target,
    hoeffding_bentkus_upper,
    rows_digest,
)
from adaptix.offline.policy import ExitPolicy
from adaptix.offline.statistics import CANDIDATES, ThresholdCounts, count_thresholds, default_grid
from adaptix.plugins import AdaptixPluginManager, resolve_manager

if TYPE_CHECKING:
    from adaptix.core.calibration import Calibration

# ------------------------------------------------------------------------------- the entry points


class Certifier:
    """Every candidate threshold of one criterion, evaluated once on a calibration trace.

    `guarantee` and `budget` build one per call; build it yourself to certify many targets
    (a grid of δ, several α) on the same trace without recomputing the exits::

        certifier = adaptix.Certifier(cal_trace, "confidence")
        policies = [certifier.early_accuracy(d, alpha=0.05) for d in (0.9, 0.95, 0.99)]

    Everything it reads is a count over the calibration inputs
    (`adaptix.offline.statistics.ThresholdCounts`), so shards counted on separate workers and added
    give, through `from_counts`, the same certifier as the whole trace.

    **Data reuse.** A calibration records the fingerprints of the rows it was counted on
    (`Calibration.rows`). Certifying a criterion that reads it on those same rows would test the
    calibration on its own data, which voids the statement (the bins' accuracies are then
    optimistic for exactly these rows). So, for a criterion that reads its calibration:

    - every certification row also a calibration row: `ValidationError`;
    - some: those rows are left out, with a `CertificateWarning` saying how many; the statement
      rests on the others (``Certificate.n`` counts them);
    - a calibration without recorded rows (counted by hand, or loaded from a file of an older
      version) cannot be checked: the caller vouches for disjointness.

    Args:
        trace: a labelled trace of calibration data.
        criterion: any registered criterion, built-in or third-party.
        calibration: for criteria that read one, counted on rows disjoint from ``trace``.
        thresholds: candidate thresholds (default: `default_thresholds(CANDIDATES)`, 200).
        plugins: the plugin manager to resolve ``criterion`` with.
        **params: the criterion's own parameters.

    Raises:
        ValidationError: an unlabelled or empty trace, fewer than 2 exits, bad thresholds, or a
            trace whose every row the calibration was counted on.
        PluginError, CalibrationError: as for `adaptix.policy`.
    """

    def __init__(
        self,
        trace: Trace,
        criterion: str,
        *,
        calibration: Calibration | None = None,
        thresholds: Any = None,
        plugins: AdaptixPluginManager | None = None,
        **params: Any,
    ) -> None:
        manager = resolve_manager(plugins)
        values = _candidates(trace, criterion, thresholds, manager)
        if manager.criteria.get(criterion).needs_calibration:
            trace = _disjoint_from(trace, calibration)
        counts = count_thresholds(
            trace, criterion, values, calibration, plugins=manager, fingerprints=True, **params
        )
        self._fill(counts, calibration, manager)

    @classmethod
    def from_counts(
        cls,
        counts: ThresholdCounts,
        *,
        calibration: Calibration | None = None,
        plugins: AdaptixPluginManager | None = None,
    ) -> Certifier:
        """The certifier of the inputs ``counts`` counted, e.g. shards counted on many workers
        and added (`adaptix.offline.statistics.count_thresholds`): the same as a `Certifier` of the
        whole trace with the same thresholds, which goes through its counts too. (Count with
        the default grid ``default_grid(criterion, manager, CANDIDATES)`` to match `guarantee`
        called without thresholds.)

        Counts made with ``fingerprints=True`` (as `count_thresholds` makes them for
        certification, and `adaptix.distributed.reduce_statistics` with its default purpose)
        carry their rows: a calibration counted on any of them is refused, since counted rows
        cannot be left out afterwards, and the certificate records them. Counts without rows
        cannot be checked: the caller vouches for disjointness, and the certificate's ``rows``
        is None.

        Args:
            counts: labelled counts of the calibration inputs at the candidate thresholds.
            calibration: the calibration the counts were made with, if any.
            plugins: the plugin manager to resolve the criterion with.

        Raises:
            ValidationError: unlabelled counts, fewer than 2 exits, or counts of rows the
                criterion's calibration was counted on.
            CalibrationError: ``calibration`` is not the one counted with.
            PluginError: the criterion is not installed.
        """
        certifier = cls.__new__(cls)
        manager = resolve_manager(plugins)
        certifier._fill(counts, calibration, manager)
        if (
            certifier.base.criterion.needs_calibration
            and calibration is not None
            and calibration.rows is not None
            and counts.rows is not None
        ):
            reused = int(shared_rows(counts.rows, calibration.rows).sum())
            if reused:
                raise ValidationError(
                    f"expected counts of rows disjoint from the criterion's calibration, got "
                    f"counts of {counts.num_inputs} inputs of which {reused} went into that "
                    "calibration: a calibration tested on its own rows certifies an optimistic "
                    "promise, and counted rows cannot be left out. Count calibration and "
                    "certification on disjoint rows."
                )
        return certifier

    def _fill(
        self,
        counts: ThresholdCounts,
        calibration: Calibration | None,
        manager: AdaptixPluginManager,
    ) -> None:
        """Read the per-threshold quantities of the tests off ``counts``, strictest first."""
        if not isinstance(counts, ThresholdCounts):
            raise ValidationError(
                f"expected adaptix.offline.statistics.ThresholdCounts, got {type(counts).__name__}."
            )
        correct, lost, final_correct = counts.correct, counts.lost, counts.final_correct
        if correct is None or lost is None or final_correct is None:
            raise ValidationError(
                "expected labelled counts (counted from a labelled calibration trace), got "
                "unlabelled ones: certifying accuracy needs the labels of held-out data."
            )
        if counts.num_exits < 2:
            raise ValidationError(
                f"expected a model with at least 2 exits to exit early, got {counts.num_exits}."
            )
        probe = counts.resolve(calibration, plugins=manager)
        grid = sorted(set(counts.thresholds))
        column = {t: i for i, t in reversed(list(enumerate(counts.thresholds)))}  # first one
        strict_first = _strictest_first(probe, grid)
        self.base = probe.with_threshold(grid[0])
        #: Candidate thresholds, from the strictest (fewest early exits) to the loosest.
        self.thresholds = [grid[i] for i in strict_first]
        rows = [column[t] for t in self.thresholds]
        right = correct[rows].sum(dim=1)
        self.n = counts.num_inputs
        self._exits = counts.exits[rows]
        self._correct = correct[rows]
        self._final_correct = int(final_correct)
        self._costs = counts.costs
        self._early = counts.early[rows].numpy()
        self._early_correct = correct[rows, :-1].sum(dim=1).numpy()
        self._lost = lost[rows].numpy()  # final right, policy wrong
        self._drop = (final_correct - right).numpy() / self.n
        self._accuracy = (right.double() / self.n).numpy()
        self._cost = counts.relative_cost[rows].numpy()
        self._rows = None if counts.rows is None else rows_digest(counts.rows)

    def early_accuracy(
        self, delta: float, *, alpha: float = 0.05, method: Method = "binomial"
    ) -> ExitPolicy:
        """The cheapest threshold with P(early accuracy ≥ δ) ≥ 1 − α (see `guarantee`)."""
        level = scalars.unit(delta, "early_accuracy")
        alpha = scalars.unit(alpha, "alpha")
        method = _method(method)
        m, k = self._early, self._early_correct
        pvalues = _early_accuracy_pvalues(k, m, self.n, level, method)
        # The sequence starts where the method's own test could reject with every early input
        # right: a label-free rule (it reads m only), so the fixed sequence stays valid.
        start = _first_below(_early_accuracy_pvalues(m, m, self.n, level, method), alpha)
        estimates = np.where(m > 0, k / np.maximum(m, 1), np.nan)
        bounds = clopper_pearson_lower(k, m, alpha)
        return self._choose("early_accuracy", level, alpha, method, pvalues, start, estimates,
                            bounds)  # fmt: skip

    def accuracy_drop(
        self, epsilon: float, *, alpha: float = 0.05, method: Method = "binomial"
    ) -> ExitPolicy:
        """The cheapest threshold with P(accuracy drop ≤ ε) ≥ 1 − α (see `guarantee`)."""
        level = scalars.unit(epsilon, "accuracy_drop", open_low=False)
        alpha = scalars.unit(alpha, "alpha")
        method = _method(method)
        pvalues = _accuracy_drop_pvalues(self._lost, self.n, level, method)
        # Label-free start, as for early accuracy: with no input lost (the best outcome), could
        # the method reject? If not at the strictest threshold, it cannot anywhere.
        best = _accuracy_drop_pvalues(np.zeros_like(self._lost), self.n, level, method)
        start = _first_below(best, alpha)
        bounds = clopper_pearson_upper(self._lost, self.n, alpha)
        return self._choose("accuracy_drop", level, alpha, method, pvalues, start, self._drop,
                            bounds)  # fmt: skip

    def budget(self, relative_cost: float, *, alpha: float = 0.05) -> ExitPolicy:
        """The most accurate threshold with P(mean relative cost ≤ budget) ≥ 1 − α (`budget`)."""
        level = scalars.unit(relative_cost, "relative_cost", open_high=False)
        alpha = scalars.unit(alpha, "alpha")
        cheapest_first = np.arange(len(self.thresholds))[::-1]
        cost = self._cost[cheapest_first]
        pvalues = hoeffding_bentkus_pvalue(cost, self.n, level)
        passed = fixed_sequence(pvalues, alpha)
        if passed == 0:
            index = int(cheapest_first[0])
            policy = self.base.with_threshold(self.thresholds[index])
            certificate = self._certificate(
                policy, index, "relative_cost", level, alpha, "hoeffding_bentkus",
                certified=False, estimate=float(self._cost[index]), bound=None, tested=1,
            )  # fmt: skip
            _warn(certificate)
            return policy.certified(certificate)
        # Most accurate among the certified; on ties, the cheaper (earlier in the sequence).
        index = int(cheapest_first[int(np.argmax(self._accuracy[cheapest_first][:passed]))])
        policy = self.base.with_threshold(self.thresholds[index])
        mean = float(self._cost[index])
        certificate = self._certificate(
            policy, index, "relative_cost", level, alpha, "hoeffding_bentkus", certified=True,
            estimate=mean, bound=hoeffding_bentkus_upper(mean, self.n, alpha),
            tested=min(passed + 1, len(self.thresholds)),
        )  # fmt: skip
        return policy.certified(certificate)

    def _certificate(
        self,
        policy: ExitPolicy,
        index: int | None,
        target: Target,
        level: float,
        alpha: float,
        method: Method,
        *,
        certified: bool,
        estimate: float | None,
        bound: float | None,
        tested: int,
    ) -> Certificate:
        """The certificate of ``policy`` (candidate ``index``, or None when every input goes to
        the last exit), bound to it and carrying the counts at that threshold."""
        calibration = policy.calibration
        if index is None:  # every input at the last exit
            size = len(self._costs)
            exits = (0,) * (size - 1) + (self.n,)
            correct = (0,) * (size - 1) + (self._final_correct,)
            lost = 0
        else:
            exits = tuple(self._exits[index].tolist())
            correct = tuple(self._correct[index].tolist())
            lost = int(self._lost[index])
        return Certificate(
            target=target,
            level=level,
            alpha=alpha,
            n=self.n,
            method=method,
            certified=certified,
            threshold=None if index is None else policy.threshold,
            estimate=estimate,
            bound=bound,
            early_exit_rate=(self.n - exits[-1]) / self.n,
            tested=tested,
            criterion=policy.name,
            params=policy.criterion.params.model_dump(mode="json"),
            calibration=None if calibration is None else calibration.checksum,
            exits=exits,
            correct=correct,
            final_correct=self._final_correct,
            lost=lost,
            costs=tuple(self._costs) if target == "relative_cost" else None,
            rows=self._rows,
        )

    def _choose(
        self,
        target: Target,
        level: float,
        alpha: float,
        method: Method,
        pvalues: np.ndarray,
        start: int,
        estimates: np.ndarray,
        bounds: np.ndarray,
    ) -> ExitPolicy:
        """Fixed-sequence testing from ``start``; the loosest rejected threshold, certified."""
        passed = fixed_sequence(pvalues, alpha, start)
        tested = min(passed + 1, len(self.thresholds) - start)
        if passed == 0:
            never = self.base.with_threshold(self.thresholds[0])
            certificate = self._certificate(
                never, None, target, level, alpha, method, certified=False, estimate=None,
                bound=None, tested=tested,
            )  # fmt: skip
            _warn(certificate)
            return never.certified(certificate, exits_early=False)
        index = start + passed - 1
        policy = self.base.with_threshold(self.thresholds[index])
        certificate = self._certificate(
            policy, index, target, level, alpha, method, certified=True,
            estimate=_number(estimates[index]), bound=_number(bounds[index]), tested=tested,
        )  # fmt: skip
        return policy.certified(certificate)


def verify_certificate(
    policy: ExitPolicy, trace: Trace, *, plugins: AdaptixPluginManager | None = None
) -> None:
    """Check that ``policy``'s certificate is true of it on ``trace``, its calibration inputs:
    the certificate is bound to the policy, ``trace`` holds the certified rows (when the
    certificate recorded them), and recounting the evidence gives the certificate's counts.

    Use it to audit a stored certified policy against the data it was certified on.

    Raises:
        ValidationError: the policy carries no certificate, it does not match the policy, the
            trace is another one, or the counts differ.
    """
    if not isinstance(policy, ExitPolicy) or policy.certificate is None:
        raise ValidationError(f"expected a certified adaptix.ExitPolicy, got {policy!r}.")
    certificate = policy.certificate
    certificate.check_policy(policy, policy.exits_early)
    check_trace(trace, "the calibration trace", labelled=True)
    if certificate.rows is not None and rows_digest(trace.row_digests()) != certificate.rows:
        raise ValidationError(
            "expected the calibration trace this certificate was computed on, got another: its "
            "rows' fingerprints differ."
        )
    counts = count_thresholds(
        trace,
        policy.name,
        [policy.threshold],
        policy.calibration,
        plugins=plugins,
        **policy.criterion.params.model_dump(),
    )
    if counts.correct is None or counts.lost is None:  # a labelled trace: never
        raise ValidationError("expected labelled counts of the calibration trace.")
    counted: dict[str, Any] = {"n": trace.num_inputs, "final_correct": counts.final_correct}
    if certificate.costs is not None:
        counted["costs"] = tuple(counts.costs)
    if certificate.threshold is not None:
        counted["exits"] = tuple(counts.exits[0].tolist())
        counted["correct"] = tuple(counts.correct[0].tolist())
        counted["lost"] = int(counts.lost[0])
    for name, value in counted.items():
        if getattr(certificate, name) != value:
            raise ValidationError(
                f"expected the certificate's evidence to hold on this trace, got {name} = "
                f"{getattr(certificate, name)} in the certificate and {value} recounted."
            )


def guarantee(
    trace: Trace,
    criterion: str,
    *,
    early_accuracy: float | None = None,
    accuracy_drop: float | None = None,
    alpha: float = 0.05,
    calibration: Calibration | None = None,
    thresholds: Any = None,
    method: Method = "binomial",
    plugins: AdaptixPluginManager | None = None,
    **params: Any,
) -> ExitPolicy:
    """The cheapest threshold of ``criterion`` whose target is certified at level α.

    Example::

        policy = adaptix.guarantee(cal_trace, "confidence", early_accuracy=0.95, alpha=0.05)
        print(policy.certificate.statement())

    Args:
        trace: a labelled trace of calibration data (held out from training; exchangeable with
            the data the policy will serve).
        criterion: any registered criterion, built-in or third-party.
        early_accuracy: target δ: P(A(π) ≥ δ) ≥ 1 − α, with A the accuracy of the inputs that
            leave before the last exit.
        accuracy_drop: target ε: P(accuracy(last exit) − accuracy(π) ≤ ε) ≥ 1 − α.
        alpha: the error level, in (0, 1).
        calibration: for criteria that read one (``pcee``, ``pcee_ws``, ``pcee_lcb``), built on
            data disjoint from ``trace``: the test then holds conditionally on it.
        thresholds: candidate thresholds (default: `default_thresholds(CANDIDATES)`, 200).
        method: ``"binomial"`` (exact binomial tail) or ``"hoeffding_bentkus"``.
        plugins: the plugin manager to resolve ``criterion`` with.
        **params: the criterion's own parameters.

    Returns:
        An `ExitPolicy` with its `Certificate` (``policy.certificate``). When nothing can be
        certified it sends every input to the last exit (``policy.exits_early`` is False), says
        so in the certificate and warns (`CertificateWarning`).

    Raises:
        ValidationError: not exactly one target, a target or α out of range, an unlabelled or
            empty trace, or bad thresholds.
    """
    targets = {"early_accuracy": early_accuracy, "accuracy_drop": accuracy_drop}
    given = {name: value for name, value in targets.items() if value is not None}
    if len(given) != 1:
        raise ValidationError(
            f"expected exactly one target (early_accuracy=δ or accuracy_drop=ε), got "
            f"{sorted(given) or 'none'}."
        )
    alpha, method = scalars.unit(alpha, "alpha"), _method(method)
    certifier = Certifier(
        trace, criterion, calibration=calibration, thresholds=thresholds, plugins=plugins, **params
    )
    if early_accuracy is not None:
        return certifier.early_accuracy(early_accuracy, alpha=alpha, method=method)
    return certifier.accuracy_drop(given["accuracy_drop"], alpha=alpha, method=method)


def budget(
    trace: Trace,
    criterion: str,
    *,
    relative_cost: float,
    alpha: float = 0.05,
    calibration: Calibration | None = None,
    thresholds: Any = None,
    plugins: AdaptixPluginManager | None = None,
    **params: Any,
) -> ExitPolicy:
    """The most accurate threshold whose mean relative cost is certified ≤ ``relative_cost``.

    For users who start from "I can afford 40 %": candidate thresholds are tested from the
    cheapest (loosest) to the most expensive, each with the Hoeffding–Bentkus p-value of "mean
    relative cost > budget" (relative cost lies in [0, 1]); the sequence stops at the first that
    fails. Among the thresholds that passed, the one most accurate on the calibration inputs is
    returned (every one of them is certified: the family-wise error is ≤ α).

    Args:
        trace: a labelled calibration trace (labels choose the most accurate; costs certify).
        criterion: any registered criterion.
        relative_cost: the budget, in (0, 1]: mean cost / cost of the last exit.
        alpha: the error level, in (0, 1).
        calibration: for criteria that read one.
        thresholds: candidate thresholds (default: `default_thresholds(CANDIDATES)`, 200).
        plugins: the plugin manager to resolve ``criterion`` with.
        **params: the criterion's own parameters.

    Returns:
        An `ExitPolicy` with its `Certificate`. When even the cheapest threshold cannot be
        certified within the budget, that cheapest threshold is returned, marked uncertified,
        with a `CertificateWarning`.

    Raises:
        ValidationError: budget or α out of range, an unlabelled or empty trace, bad thresholds.
    """
    alpha = scalars.unit(alpha, "alpha")
    certifier = Certifier(
        trace, criterion, calibration=calibration, thresholds=thresholds, plugins=plugins, **params
    )
    return certifier.budget(relative_cost, alpha=alpha)


# ------------------------------------------------------------------------------------ helpers


def _candidates(
    trace: Trace, criterion: str, thresholds: Any, manager: AdaptixPluginManager
) -> list[Any]:
    """Validate the trace and the criterion's name; the candidate thresholds, as given."""
    check_trace(trace, "the calibration data")
    if trace.labels is None:
        raise ValidationError(
            "expected a labelled calibration trace, got labels=None: certifying accuracy needs "
            "the labels of held-out data."
        )
    if trace.num_inputs == 0:
        raise ValidationError("expected a calibration trace with at least one input, got none.")
    if trace.num_exits < 2:
        raise ValidationError(
            f"expected a model with at least 2 exits to exit early, got {trace.num_exits}."
        )
    if not isinstance(criterion, str):
        raise ValidationError(f"expected a criterion name (str), got {criterion!r}.")
    values = (
        default_grid(criterion, manager, CANDIDATES) if thresholds is None else _as_list(thresholds)
    )
    if not values:
        raise ValidationError("expected at least one candidate threshold, got none.")
    return values


def _as_list(thresholds: Any) -> list[Any]:
    if isinstance(thresholds, Tensor):
        return thresholds.flatten().tolist()
    if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__iter__"):
        raise ValidationError(
            f"expected candidate thresholds as a sequence of numbers, got {thresholds!r}."
        )
    return list(thresholds)


def _strictest_first(base: ExitPolicy, grid: list[float]) -> list[int]:
    """Indices of the sorted grid from the strictest threshold (fewest exits) to the loosest."""
    order = list(range(len(grid)))
    return order[::-1] if base.criterion.direction == "ge" else order


def _first_below(pvalues: np.ndarray, alpha: float) -> int:
    """The first candidate whose p-value is ≤ α (the number of candidates if none is)."""
    below = np.nonzero(np.asarray(pvalues) <= alpha)[0]
    return int(below[0]) if below.size else len(pvalues)


def _early_accuracy_pvalues(
    k: np.ndarray, m: np.ndarray, n: int, level: float, method: Method
) -> np.ndarray:
    """p-values of "early accuracy < δ" given k right of m early inputs out of n."""
    if method == "binomial":
        return binomial_pvalue_at_least(k, m, level)
    # L = 1{early}·(1{wrong} − (1 − δ)) + (1 − δ) ∈ [0, 1]; A < δ ⟺ E[L] > 1 − δ.
    mean = ((m - k) - (1 - level) * m) / n + (1 - level)
    return hoeffding_bentkus_pvalue(mean, n, 1 - level)


def _accuracy_drop_pvalues(lost: np.ndarray, n: int, level: float, method: Method) -> np.ndarray:
    """p-values of "accuracy drop > ε" through the lost count (see the module's docstring)."""
    if method == "binomial":
        return binomial_pvalue_at_most(lost, n, level)
    return hoeffding_bentkus_pvalue(lost / n, n, level)


def _disjoint_from(trace: Trace, calibration: Calibration | None) -> Trace:
    """``trace`` without the rows ``calibration`` was counted on (see `Certifier`)."""
    if calibration is None or calibration.rows is None:
        return trace
    shared = shared_rows(trace.row_digests(), calibration.rows)
    reused = int(shared.sum())
    if reused == 0:
        return trace
    if reused == trace.num_inputs:
        raise ValidationError(
            f"expected calibration inputs disjoint from the calibration of the criterion, got "
            f"a trace whose {reused} rows all went into that calibration: a calibration tested "
            "on its own rows certifies an optimistic promise. Split the held-out data in two "
            "(one part to calibrate, the other to certify)."
        )
    callsite.warn(
        f"{reused} of the {trace.num_inputs} certification rows were also counted in the "
        f"criterion's calibration; they were left out, and the statement rests on the other "
        f"{trace.num_inputs - reused}.",
        CertificateWarning,
    )
    return trace.subset(~shared.to(trace.logits.device))


def _method(method: Any) -> Method:
    chosen: Method = scalars.choice(method, "method", METHODS)  # type: ignore[assignment]
    return chosen


def _number(value: Any) -> float | None:
    x = float(value)
    return None if math.isnan(x) else x


def _warn(certificate: Certificate) -> None:
    callsite.warn(certificate.statement(), CertificateWarning)


__all__ = [
    "Certificate",
    "CertificateWarning",
    "Certifier",
    "budget",
    "guarantee",
    "verify_certificate",
]
