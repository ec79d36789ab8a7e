"""`Certificate`: what a certified policy promises, bound to that policy and checked against its
own evidence (``PCEE.md``: Guarantees).

A certificate is produced by `adaptix.guarantee`, `adaptix.budget` or `adaptix.Certifier`. It
records

- **what it certifies**: the criterion, its parameters, the threshold and the checksum of the
  calibration the criterion reads, so that `ExitPolicy.certified` and `ExitPolicy.load` refuse
  to attach it to any other policy (`check_policy`);
- **the promise**: the target, its level, α, the number n of calibration inputs and the test;
- **the evidence**: the counts at the chosen threshold (inputs leaving at each exit, those
  predicted right there, the final exit's right answers and those of them the policy gets
  wrong; the exits' costs for a budget), from which the estimate, the bound and the early-exit
  rate are recomputed on construction. A certificate whose fields contradict each other, or
  whose ``certified`` flag its own counts do not support (the p-value at the chosen threshold
  is above α), is refused: a statement only ever says what was tested.

What a certificate cannot know from its own fields is which calibration inputs it was tested on:
``rows`` carries a digest of their row fingerprints (`Trace.row_digests`), and
`adaptix.offline.guarantee.verify` recounts the evidence on a trace and refuses one that is not the
certified one, or counts that differ.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from adaptix import scalars
from adaptix.core.bounds import (
    binomial_pvalue_at_least,
    binomial_pvalue_at_most,
    clopper_pearson_lower,
    clopper_pearson_upper,
    hoeffding_bentkus_pvalue,
)
from adaptix.errors import ValidationError

if TYPE_CHECKING:
    from adaptix.offline.policy import ExitPolicy

Target = Literal["early_accuracy", "accuracy_drop", "relative_cost"]
Method = Literal["binomial", "hoeffding_bentkus"]
TARGETS: tuple[Target, ...] = ("early_accuracy", "accuracy_drop", "relative_cost")
METHODS: tuple[Method, ...] = ("binomial", "hoeffding_bentkus")
# Recomputed floats (a Clopper–Pearson bound through scipy, a bisection) may differ from the
# stored ones in their last bits on another platform; a forged value differs by far more.
_TOLERANCE = 1e-9


class CertificateWarning(UserWarning):
    """A certification could not certify its target, or left calibration inputs out."""


def rows_digest(digests: Tensor) -> str:
    """SHA-256 of a set of row fingerprints (`Trace.row_digests`), order and repeats ignored."""
    unique = torch.unique(digests.detach().cpu().to(torch.int64))
    return hashlib.sha256(unique.numpy().astype("<i8").tobytes()).hexdigest()


@dataclass(frozen=True)
class Certificate:
    """What a certified policy promises, what it promises it about, and the evidence.

    Build certificates with `adaptix.guarantee`, `adaptix.budget` or `adaptix.Certifier`; the
    constructor checks every field and every relation between them.

    Attributes:
        target: ``"early_accuracy"`` (A(π) ≥ level), ``"accuracy_drop"`` (accuracy of the final
            exit − accuracy of π ≤ level) or ``"relative_cost"`` (mean relative cost ≤ level).
        level: δ in (0, 1), ε in [0, 1) or the budget in (0, 1].
        alpha: the probability, over the draw of the calibration inputs, that the statement
            fails (exchangeable calibration and deployment data assumed), in (0, 1).
        n: how many labelled calibration inputs the test used (≥ 1).
        method: the p-value (``"binomial"`` or ``"hoeffding_bentkus"``; budgets use the latter).
        certified: False when no threshold passed the test; the policy then sends every input to
            the last exit (targets on accuracy) or is the cheapest one, uncertified (budget).
        threshold: the chosen threshold (None when nothing was certified on an accuracy target).
        estimate: the target quantity at the chosen threshold on the calibration inputs.
        bound: a one-sided (1 − α) confidence bound of that quantity at the chosen threshold
            (lower for early accuracy, upper for drop and cost): Clopper–Pearson for binomial
            counts, Hoeffding–Bentkus for cost. Informative; the statement is the LTT one.
        early_exit_rate: share of calibration inputs that leave early at the chosen threshold.
        tested: how many thresholds were tested before the sequence stopped.
        criterion: the registry name of the certified criterion.
        params: its parameters, as JSON (``params.model_dump(mode="json")``).
        calibration: `Calibration.checksum` of the calibration the policy reads, or None.
        exits: per exit, how many calibration inputs leave there at the chosen threshold (all
            at the last exit when nothing was certified on an accuracy target); they sum to n.
        correct: per exit, how many of those are predicted right.
        final_correct: how many calibration inputs the last exit predicts right.
        lost: how many the last exit predicts right and the policy wrong.
        costs: the exits' cumulative costs, for a budget (None for accuracy targets, whose
            statements do not depend on them).
        rows: `rows_digest` of the calibration inputs' row fingerprints, or None when the
            certificate was made from counts (`Certifier.from_counts`), which carry no rows.

    Raises:
        ValidationError: a field of the wrong type or out of range, fields that contradict each
            other, or ``certified`` where the evidence does not reject at level α.
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
    criterion: str
    params: dict[str, Any]
    calibration: str | None
    exits: tuple[int, ...]
    correct: tuple[int, ...]
    final_correct: int
    lost: int
    costs: tuple[float, ...] | None
    rows: str | None

    @property
    def early(self) -> int:
        """How many calibration inputs leave before the last exit at the chosen threshold."""
        return self.n - self.exits[-1]

    @property
    def early_correct(self) -> int:
        """How many of those are predicted right."""
        return sum(self.correct[:-1])

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_evidence(self)

    def __hash__(self) -> int:
        # The generated hash would fail on the params dict: hash the canonical JSON instead.
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def statement(self) -> str:
        """The certified statement in one sentence (or why there is none)."""
        quantity = {
            "early_accuracy": f"early accuracy ≥ {self.level:g}",
            "accuracy_drop": f"accuracy drop against the final exit ≤ {self.level:g}",
            "relative_cost": f"mean relative cost ≤ {self.level:g}",
        }[self.target]
        if not self.certified:
            fallback = (
                f"the cheapest threshold ({self.threshold:g}) is returned, uncertified"
                if self.target == "relative_cost" and self.threshold is not None
                else "every input goes to the last exit"
            )
            return (
                f"nothing certified: no threshold of '{self.criterion}' shows {quantity} at "
                f"α = {self.alpha:g} on {self.n} calibration inputs; {fallback}."
            )
        return (
            f"with probability ≥ {1 - self.alpha:g} over the {self.n} calibration inputs, "
            f"{quantity} for '{self.criterion}' at threshold {self.threshold:g} (calibration "
            f"estimate {_fmt(self.estimate)}, one-sided bound {_fmt(self.bound)}; "
            f"{self.method} test)."
        )

    def check_policy(self, policy: ExitPolicy, exits_early: bool) -> None:
        """Raise `ValidationError` unless this certificate certifies ``policy`` run with
        ``exits_early``: same criterion, parameters, calibration and threshold, and early
        exits exactly where the certificate allows them."""
        wanted = {
            "criterion": policy.name,
            "params": _json_params(policy),
            "calibration": None if policy.calibration is None else policy.calibration.checksum,
        }
        for name, value in wanted.items():
            if getattr(self, name) != value:
                raise ValidationError(
                    f"expected a certificate of this policy, got one whose {name} is "
                    f"{_short(getattr(self, name))} where the policy's is {_short(value)}. A "
                    "certificate belongs to the policy it was computed for: certify this "
                    "policy with adaptix.guarantee or adaptix.budget."
                )
        if self.threshold is not None and self.threshold != policy.threshold:
            raise ValidationError(
                f"expected a certificate of this policy, got one for threshold "
                f"{self.threshold!r} where the policy's is {policy.threshold!r}. Certify the "
                "threshold you run, or use the certified policy as it is."
            )
        allowed = self.certified or self.target == "relative_cost"
        if exits_early != allowed:
            raise ValidationError(
                f"expected exits_early={allowed} with this certificate, got {exits_early}: "
                + (
                    "nothing was certified, so every input must go to the last exit."
                    if not allowed
                    else "the certified policy exits early; that is what was tested."
                )
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Certificate:
        """The inverse of `to_dict`.

        Raises:
            ValidationError: fields missing, unknown, of the wrong type, out of range or
                contradicting each other.
        """
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValidationError(
                f"expected a certificate with fields {sorted(names)}, got {got}. Certificates "
                "saved before they were bound to their policy cannot be trusted: certify the "
                "policy again and save it with ExitPolicy.save."
            )
        try:
            return cls(**data)
        except ValidationError as err:
            raise ValidationError(f"malformed certificate: {err}") from err
        except (TypeError, ValueError, OverflowError) as err:
            raise ValidationError(f"malformed certificate {data!r}: {err}") from err


def _check_fields(cert: Certificate) -> None:
    """Types and ranges of each field on its own (normalised in place: frozen dataclass)."""

    def put(name: str, value: Any) -> None:
        object.__setattr__(cert, name, value)

    scalars.choice(cert.target, "target", TARGETS)
    scalars.choice(cert.method, "method", METHODS)
    if cert.target == "relative_cost" and cert.method != "hoeffding_bentkus":
        raise ValidationError(
            f"expected method 'hoeffding_bentkus' for a relative-cost certificate (cost is not a "
            f"Bernoulli loss), got {cert.method!r}."
        )
    open_low, open_high = {
        "early_accuracy": (True, True),
        "accuracy_drop": (False, True),
        "relative_cost": (True, False),
    }[cert.target]
    put("level", scalars.unit(cert.level, "level", open_low=open_low, open_high=open_high))
    put("alpha", scalars.unit(cert.alpha, "alpha"))
    put("n", scalars.count(cert.n, "n", low=1))
    put("certified", scalars.flag(cert.certified, "certified"))
    put("tested", scalars.count(cert.tested, "tested"))
    put("exits", _counts(cert.exits, "exits"))
    put("correct", _counts(cert.correct, "correct"))
    put("final_correct", scalars.count(cert.final_correct, "final_correct"))
    put("lost", scalars.count(cert.lost, "lost"))
    if cert.costs is not None:
        if isinstance(cert.costs, (str, bytes)) or not hasattr(cert.costs, "__iter__"):
            raise ValidationError(f"expected costs as a list of numbers, got {cert.costs!r}.")
        put("costs", tuple(scalars.real(c, "costs", low=0.0) for c in cert.costs))
    put("early_exit_rate", scalars.unit(cert.early_exit_rate, "early_exit_rate", open_low=False,
                                        open_high=False))  # fmt: skip
    if cert.threshold is not None:
        put("threshold", scalars.real(cert.threshold, "threshold"))
    for name in ("estimate", "bound"):
        value = getattr(cert, name)
        if value is not None:
            put(name, scalars.real(value, name, low=-1.0, high=1.0))
    if not isinstance(cert.criterion, str) or not cert.criterion:
        raise ValidationError(f"expected criterion to be a name, got {cert.criterion!r}.")
    if not isinstance(cert.params, dict) or not all(isinstance(k, str) for k in cert.params):
        raise ValidationError(f"expected params to be a dict by name, got {cert.params!r}.")
    for name in ("calibration", "rows"):
        value = getattr(cert, name)
        if value is not None and not _is_sha256(value):
            raise ValidationError(f"expected {name} to be a SHA-256 hex digest or None, got "
                                  f"{value!r}.")  # fmt: skip


def _check_evidence(cert: Certificate) -> None:
    """Relations between the fields: the counts, the derived figures and the test's outcome."""
    _check_counts(cert)
    n, m, k, lost = cert.n, cert.early, cert.early_correct, cert.lost
    _same("early_exit_rate", cert.early_exit_rate, m / n)
    accuracy = cert.target != "relative_cost"
    if cert.certified and cert.threshold is None:
        raise ValidationError("expected the threshold of a certified certificate, got None.")
    if cert.certified and cert.tested < 1:
        raise ValidationError("expected tested ≥ 1 for a certified certificate, got 0.")
    if accuracy != (cert.costs is None):
        raise ValidationError(
            "expected costs on a budget certificate and on no other, got "
            f"costs={cert.costs!r} on a {cert.target!r} one."
        )
    if accuracy and not cert.certified:
        if (cert.threshold, cert.estimate, cert.bound, m) != (None, None, None, 0):
            raise ValidationError(
                "expected an uncertified accuracy certificate to carry no threshold, estimate "
                "or bound, and every input at the last exit, got "
                f"threshold={cert.threshold!r}, estimate={cert.estimate!r}, "
                f"bound={cert.bound!r}, early={m}."
            )
        return
    if cert.target == "relative_cost" and cert.threshold is None:
        raise ValidationError("expected the threshold of a budget certificate, got None.")
    level, alpha = cert.level, cert.alpha
    if cert.target == "early_accuracy":
        _same("estimate", cert.estimate, k / m if m else None)
        _same("bound", cert.bound, _number(clopper_pearson_lower(k, m, alpha)))
        if cert.method == "binomial":
            pvalue = float(binomial_pvalue_at_least(k, m, level))
        else:
            mean = ((m - k) - (1 - level) * m) / n + (1 - level)
            pvalue = float(hoeffding_bentkus_pvalue(mean, n, 1 - level))
    elif cert.target == "accuracy_drop":
        _same("estimate", cert.estimate, (cert.final_correct - sum(cert.correct)) / n)
        _same("bound", cert.bound, _number(clopper_pearson_upper(lost, n, alpha)))
        if cert.method == "binomial":
            pvalue = float(binomial_pvalue_at_most(lost, n, level))
        else:
            pvalue = float(hoeffding_bentkus_pvalue(lost / n, n, level))
    else:
        _same("estimate", cert.estimate, relative_cost(cert.exits, cert.costs or ()))
        pvalue = float(hoeffding_bentkus_pvalue(cert.estimate, n, level))
        if cert.certified and cert.estimate is not None:  # set by the _same check above
            _same("bound", cert.bound, hoeffding_bentkus_upper(cert.estimate, n, alpha))
        elif cert.bound is not None:
            raise ValidationError(f"expected no bound on an uncertified budget, got {cert.bound}.")
    if cert.certified and not pvalue <= alpha:
        raise ValidationError(
            f"expected evidence that rejects at α = {alpha:g} for a certified certificate, got "
            f"a p-value of {pvalue:.4g} at its threshold: its counts do not support the "
            "statement."
        )


def _check_counts(cert: Certificate) -> None:
    """The relations every row of counts obeys (`adaptix.offline.statistics.ThresholdCounts`)."""
    exits, correct, n = cert.exits, cert.correct, cert.n
    problems = []
    if len(exits) < 2 or len(correct) != len(exits):
        problems.append(f"one count per exit (at least 2) in exits and correct, got "
                        f"{len(exits)} and {len(correct)}")  # fmt: skip
    elif sum(exits) != n:
        problems.append(f"exits summing to n = {n}, got {sum(exits)}")
    elif any(c > e for c, e in zip(correct, exits, strict=True)):
        problems.append("correct[e] ≤ exits[e] at every exit")
    if cert.costs is not None and (
        len(cert.costs) != len(exits)
        or any(b < a for a, b in zip(cert.costs, cert.costs[1:], strict=False))
        or not cert.costs[-1] > 0
    ):
        problems.append("one non-decreasing cost per exit, the last > 0")
    if not problems:
        right, final, lost = sum(correct), cert.final_correct, cert.lost
        # lost = #(last right, policy wrong): at most the early inputs predicted wrong, at most
        # the last exit's right answers outside those that leave there, and it closes the gap
        # between the last exit's right answers and the policy's.
        high = min(cert.early - cert.early_correct, final - correct[-1], n - right)
        if final > n or not max(0, final - right) <= lost <= high:
            problems.append(
                f"final_correct ≤ n and max(0, final_correct − right) ≤ lost ≤ {high}, got "
                f"final_correct={final}, lost={lost}, right={right}"
            )
    if problems:
        raise ValidationError(
            f"expected counts that can be, got: {'; '.join(problems)}. The certificate is corrupt."
        )


def relative_cost(exits: tuple[int, ...], costs: tuple[float, ...]) -> float:
    """Mean cost of the exits taken over the last exit's, summed in exit order exactly as
    `ThresholdCounts.relative_cost` sums it (the same bits on both sides)."""
    total = 0.0
    for count, cost in zip(exits, costs, strict=True):
        total = total + float(count) * cost
    return total / sum(exits) / costs[-1]


def _counts(values: Any, name: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise ValidationError(f"expected {name} as a list of counts, got {values!r}.")
    return tuple(scalars.count(v, name) for v in values)


def hoeffding_bentkus_upper(mean: float, n: int, alpha: float) -> float:
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


def _same(name: str, stored: float | None, recomputed: float | None) -> None:
    if stored is None or recomputed is None:
        if stored is not recomputed:
            raise ValidationError(
                f"expected {name}={recomputed!r} from the counts, got {stored!r}."
            )
        return
    if not math.isclose(stored, recomputed, rel_tol=_TOLERANCE, abs_tol=_TOLERANCE):
        raise ValidationError(
            f"expected {name}={recomputed!r} (recomputed from the certificate's counts), got "
            f"{stored!r}: the fields contradict each other."
        )


def _number(value: Any) -> float | None:
    x = float(np.asarray(value))
    return None if math.isnan(x) else x


def _is_sha256(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _json_params(policy: ExitPolicy) -> dict[str, Any]:
    params: dict[str, Any] = policy.criterion.params.model_dump(mode="json")
    return params


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


__all__ = [
    "METHODS",
    "TARGETS",
    "Certificate",
    "CertificateWarning",
    "Method",
    "Target",
    "hoeffding_bentkus_upper",
    "relative_cost",
    "rows_digest",
]
