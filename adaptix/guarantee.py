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
3. Thresholds where so few inputs leave that even m right answers out of m could not reject at
   level α (δ^m > α) have no power and would stop the sequence at once; the sequence starts at
   the first threshold with enough early inputs. That start depends on the confidences of the
   calibration inputs, never on their labels.
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
import numbers
import warnings
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import Tensor

from adaptix.bounds import (
    binomial_pvalue_at_least,
    binomial_pvalue_at_most,
    clopper_pearson_lower,
    clopper_pearson_upper,
    fixed_sequence,
    hoeffding_bentkus_pvalue,
)
from adaptix.errors import ValidationError
from adaptix.plugins import AdaptixPluginManager, resolve_manager
from adaptix.policy import ExitPolicy
from adaptix.simulate import default_grid
from adaptix.statistics import ThresholdCounts, count_thresholds
from adaptix.trace import Trace

if TYPE_CHECKING:
    from adaptix.calibration import Calibration

#: Candidate thresholds of certification's default grid (the criterion's
#: ``default_thresholds(CANDIDATES)``), the same on every path: `guarantee`, `budget`, `Certifier`
#: and counts reduced on workers for `Certifier.from_counts`.
CANDIDATES = 200

Target = Literal["early_accuracy", "accuracy_drop", "relative_cost"]
Method = Literal["binomial", "hoeffding_bentkus"]
METHODS: tuple[Method, ...] = ("binomial", "hoeffding_bentkus")


class CertificateWarning(UserWarning):
    """`guarantee` or `budget` could not certify the target with the data given."""


@dataclass(frozen=True)
class Certificate:
    """What a certified policy promises, and the evidence for it.

    Attributes:
        target: ``"early_accuracy"`` (A(π) ≥ level), ``"accuracy_drop"`` (accuracy of the final
            exit − accuracy of π ≤ level) or ``"relative_cost"`` (mean relative cost ≤ level).
        level: δ, ε or the budget.
        alpha: the probability, over the draw of the calibration inputs, that the statement
            fails (exchangeable calibration and deployment data assumed).
        n: how many labelled calibration inputs the test used.
        method: the p-value (``"binomial"`` or ``"hoeffding_bentkus"``).
        certified: False when no threshold passed the test; the policy then sends every input to
            the last exit (targets on accuracy) or is the cheapest one, uncertified (budget).
        threshold: the chosen threshold (None when nothing was certified).
        estimate: the target quantity at the chosen threshold on the calibration inputs.
        bound: a one-sided (1 − α) confidence bound of that quantity at the chosen threshold
            (lower for early accuracy, upper for drop and cost): Clopper–Pearson for binomial
            counts, Hoeffding–Bentkus for cost. Informative; the statement is the LTT one.
        early_exit_rate: share of calibration inputs that leave early at the chosen threshold.
        tested: how many thresholds were tested before the sequence stopped.
    """

    target: Target
    level: float
    alpha: float
    n: int
    method: Method
    certified: bool
    threshold: float | None
    estimate: float | None
    bound: float | None
    early_exit_rate: float
    tested: int

    def statement(self) -> str:
        """The certified statement in one sentence (or why there is none)."""
        quantity = {
            "early_accuracy": f"early accuracy ≥ {self.level:g}",
            "accuracy_drop": f"accuracy drop against the final exit ≤ {self.level:g}",
            "relative_cost": f"mean relative cost ≤ {self.level:g}",
        }[self.target]
        if not self.certified:
            fallback = (
                "the cheapest threshold is returned, uncertified"
                if self.target == "relative_cost"
                else "every input goes to the last exit"
            )
            return (
                f"nothing certified: no threshold shows {quantity} at α = {self.alpha:g} on "
                f"{self.n} calibration inputs; {fallback}."
            )
        return (
            f"with probability ≥ {1 - self.alpha:g} over the {self.n} calibration inputs, "
            f"{quantity} at threshold {self.threshold:g} (calibration estimate "
            f"{_fmt(self.estimate)}, one-sided bound {_fmt(self.bound)}; {self.method} test)."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Certificate:
        """The inverse of `to_dict`.

        Raises:
            ValidationError: fields missing, unknown or of the wrong type.
        """
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValidationError(
                f"expected a certificate with fields {sorted(names)}, got {got}. Save policies "
                "with ExitPolicy.save."
            )
        try:
            certificate = cls(**data)
            certificate._check()
        except (TypeError, ValueError) as err:
            raise ValidationError(f"malformed certificate {data!r}: {err}") from err
        return certificate

    def _check(self) -> None:
        if self.target not in ("early_accuracy", "accuracy_drop", "relative_cost"):
            raise ValueError(f"unknown target {self.target!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}")
        for name in ("level", "alpha", "early_exit_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not isinstance(self.certified, bool) or not isinstance(self.n, int):
            raise ValueError("certified must be a bool and n an int")
        if self.certified and self.threshold is None:
            raise ValueError("a certified certificate needs its threshold")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ------------------------------------------------------------------------------- the entry points


class Certifier:
    """Every candidate threshold of one criterion, evaluated once on a calibration trace.

    `guarantee` and `budget` build one per call; build it yourself to certify many targets
    (a grid of δ, several α) on the same trace without recomputing the exits::

        certifier = adaptix.Certifier(cal_trace, "confidence")
        policies = [certifier.early_accuracy(d, alpha=0.05) for d in (0.9, 0.95, 0.99)]

    Everything it reads is a count over the calibration inputs
    (`adaptix.statistics.ThresholdCounts`), so shards counted on separate workers and added
    give, through `from_counts`, the same certifier as the whole trace.

    Args:
        trace: a labelled trace of calibration data.
        criterion: any registered criterion, built-in or third-party.
        calibration: for criteria that read one.
        thresholds: candidate thresholds (default: `default_thresholds(CANDIDATES)`, 200).
        plugins: the plugin manager to resolve ``criterion`` with.
        **params: the criterion's own parameters.

    Raises:
        ValidationError: an unlabelled or empty trace, fewer than 2 exits, bad thresholds.
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
        counts = count_thresholds(trace, criterion, values, calibration, plugins=manager, **params)
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
        and added (`adaptix.statistics.count_thresholds`): the same as a `Certifier` of the
        whole trace with the same thresholds, which goes through its counts too.

        Args:
            counts: labelled counts of the calibration inputs at the candidate thresholds.
            calibration: the calibration the counts were made with, if any.
            plugins: the plugin manager to resolve the criterion with.

        Raises:
            ValidationError: unlabelled counts, or fewer than 2 exits.
            CalibrationError: ``calibration`` is not the one counted with.
            PluginError: the criterion is not installed.
        """
        certifier = cls.__new__(cls)
        certifier._fill(counts, calibration, resolve_manager(plugins))
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
                f"expected adaptix.statistics.ThresholdCounts, got {type(counts).__name__}."
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
        self._early = counts.early[rows].numpy()
        self._early_correct = correct[rows, :-1].sum(dim=1).numpy()
        self._lost = lost[rows].numpy()  # final right, policy wrong
        self._drop = (final_correct - right).numpy() / self.n
        self._accuracy = (right.double() / self.n).numpy()
        self._cost = counts.relative_cost[rows].numpy()

    def early_accuracy(
        self, delta: float, *, alpha: float = 0.05, method: Method = "binomial"
    ) -> ExitPolicy:
        """The cheapest threshold with P(early accuracy ≥ δ) ≥ 1 − α (see `guarantee`)."""
        level = _unit(delta, "early_accuracy", open_low=True, open_high=True)
        alpha, method = _alpha(alpha), _method(method)
        m, k = self._early, self._early_correct
        if method == "binomial":
            pvalues = binomial_pvalue_at_least(k, m, level)
        else:
            # L = 1{early}·(1{wrong} − (1 − δ)) + (1 − δ) ∈ [0, 1]; A < δ ⟺ E[L] > 1 − δ.
            mean = ((m - k) - (1 - level) * m) / self.n + (1 - level)
            pvalues = hoeffding_bentkus_pvalue(mean, self.n, 1 - level)
        start = _first_with_power(m, level, alpha)
        estimates = np.where(m > 0, k / np.maximum(m, 1), np.nan)
        bounds = clopper_pearson_lower(k, m, alpha)
        return self._choose("early_accuracy", level, alpha, method, pvalues, start, estimates,
                            bounds)  # fmt: skip

    def accuracy_drop(
        self, epsilon: float, *, alpha: float = 0.05, method: Method = "binomial"
    ) -> ExitPolicy:
        """The cheapest threshold with P(accuracy drop ≤ ε) ≥ 1 − α (see `guarantee`)."""
        level = _unit(epsilon, "accuracy_drop", open_low=False, open_high=True)
        alpha, method = _alpha(alpha), _method(method)
        if method == "binomial":
            pvalues = binomial_pvalue_at_most(self._lost, self.n, level)
        else:
            pvalues = hoeffding_bentkus_pvalue(self._lost / self.n, self.n, level)
        bounds = clopper_pearson_upper(self._lost, self.n, alpha)
        return self._choose("accuracy_drop", level, alpha, method, pvalues, 0, self._drop, bounds)

    def budget(self, relative_cost: float, *, alpha: float = 0.05) -> ExitPolicy:
        """The most accurate threshold with P(mean relative cost ≤ budget) ≥ 1 − α (`budget`)."""
        level = _unit(relative_cost, "relative_cost", open_low=True, open_high=False)
        alpha = _alpha(alpha)
        cheapest_first = np.arange(len(self.thresholds))[::-1]
        cost = self._cost[cheapest_first]
        pvalues = hoeffding_bentkus_pvalue(cost, self.n, level)
        passed = fixed_sequence(pvalues, alpha)
        if passed == 0:
            index = int(cheapest_first[0])
            certificate = Certificate(
                "relative_cost", level, alpha, self.n, "hoeffding_bentkus", False, None,
                float(self._cost[index]), None, self._rate(index), 1,
            )  # fmt: skip
            _warn(certificate)
            return self.base.with_threshold(self.thresholds[index]).certified(certificate)
        # Most accurate among the certified; on ties, the cheaper (earlier in the sequence).
        index = int(cheapest_first[int(np.argmax(self._accuracy[cheapest_first][:passed]))])
        certificate = Certificate(
            "relative_cost", level, alpha, self.n, "hoeffding_bentkus", True,
            float(self.thresholds[index]), float(self._cost[index]),
            _hb_upper(float(self._cost[index]), self.n, alpha), self._rate(index),
            min(passed + 1, len(self.thresholds)),
        )  # fmt: skip
        return self.base.with_threshold(self.thresholds[index]).certified(certificate)

    def _rate(self, index: int) -> float:
        return float(self._early[index]) / self.n

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
            certificate = Certificate(
                target, level, alpha, self.n, method, False, None, None, None, 0.0, tested
            )
            _warn(certificate)
            never = self.base.with_threshold(self.thresholds[0])
            return never.certified(certificate, exits_early=False)
        index = start + passed - 1
        certificate = Certificate(
            target, level, alpha, self.n, method, True, float(self.thresholds[index]),
            _number(estimates[index]), _number(bounds[index]), self._rate(index), tested,
        )  # fmt: skip
        return self.base.with_threshold(self.thresholds[index]).certified(certificate)


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
    alpha, method = _alpha(alpha), _method(method)
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
    alpha = _alpha(alpha)
    certifier = Certifier(
        trace, criterion, calibration=calibration, thresholds=thresholds, plugins=plugins, **params
    )
    return certifier.budget(relative_cost, alpha=alpha)


# ------------------------------------------------------------------------------------ helpers


def _candidates(
    trace: Trace, criterion: str, thresholds: Any, manager: AdaptixPluginManager
) -> list[Any]:
    """Validate the trace and the criterion's name; the candidate thresholds, as given."""
    if not isinstance(trace, Trace):
        raise ValidationError(
            f"expected an adaptix.Trace of labelled calibration data, got {type(trace).__name__}."
        )
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


def _first_with_power(early_counts: np.ndarray, delta: float, alpha: float) -> int:
    """The first threshold at which m right answers of m could reject "A < δ" (δ^m ≤ α)."""
    if delta >= 1.0:
        return len(early_counts)  # nothing can show an accuracy of 1 with certainty
    needed = math.ceil(math.log(alpha) / math.log(delta))
    enough = np.nonzero(early_counts >= needed)[0]
    return int(enough[0]) if enough.size else len(early_counts)


def _hb_upper(mean: float, n: int, alpha: float) -> float:
    """The smallest level whose Hoeffding–Bentkus test of "E[L] ≥ level" rejects at α."""
    lo, hi = float(mean), 1.0
    if hoeffding_bentkus_pvalue(mean, n, hi - 1e-12) > alpha:
        return 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if hoeffding_bentkus_pvalue(mean, n, mid) <= alpha:
            hi = mid
        else:
            lo = mid
    return hi


def _alpha(alpha: Any) -> float:
    return _unit(alpha, "alpha", open_low=True, open_high=True)


def _method(method: Any) -> Method:
    if method not in METHODS:
        raise ValidationError(f"expected method in {METHODS}, got {method!r}.")
    chosen: Method = method
    return chosen


def _unit(value: Any, name: str, *, open_low: bool, open_high: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValidationError(f"expected {name} to be a number, got {value!r}.")
    x = float(value)
    low_ok = x > 0 if open_low else x >= 0
    high_ok = x < 1 if open_high else x <= 1
    if not (math.isfinite(x) and low_ok and high_ok):
        bounds = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        raise ValidationError(f"expected {name} in {bounds}, got {value!r}.")
    return x


def _number(value: Any) -> float | None:
    x = float(value)
    return None if math.isnan(x) else x


def _warn(certificate: Certificate) -> None:
    warnings.warn(certificate.statement(), CertificateWarning, stacklevel=3)


__all__ = [
    "Certificate",
    "CertificateWarning",
    "Certifier",
    "budget",
    "guarantee",
]
