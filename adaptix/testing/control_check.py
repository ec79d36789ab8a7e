"""Check a policy's control promise on held-out data: what the pytest fixture ``control_check``
runs (``adaptix_pytest``), usable in any script as well::

    report = check_control(test_trace, policy)
    print(report.table())
    report.assert_holds()

What is promised, in this order of precedence:

1. a target given explicitly: ``early_accuracy=δ``, ``accuracy_drop=ε`` or ``relative_cost=b``;
2. the policy's `Certificate` (`adaptix.guarantee`, `adaptix.budget`): its target and level;
3. the criterion's own δ, where its threshold *is* an accuracy target (its
   `AccuracyReading` says ``is_target``: ``pcee``, ``pcee_ws``, ``pcee_lcb``).

A confidence threshold promises nothing by itself (that is the paper's point), so ``confidence``
needs an explicit target.

How the held-out data decide. A promise is about the population the policy will serve, and a
held-out estimate a little below δ is what sampling noise gives half the time when the truth is
exactly δ; so by default the check fails only when the held-out data *reject* the promise at
level ``alpha`` (default 0.05):

- early accuracy ≥ δ: the exact binomial p-value P(Bin(m, δ) ≤ k) of the k right answers among
  the m inputs that left early, below α (equivalently, the one-sided (1 − α) Clopper–Pearson
  upper bound of the early accuracy is below δ). No early input: nothing to break.
- accuracy drop ≤ ε: the drop is P(last right, policy wrong) − P(last wrong, policy right); its
  lower bound, the Clopper–Pearson lower bound of the first minus the upper bound of the
  second (each at α/2), above ε.
- relative cost ≤ b: the Hoeffding lower bound of the mean relative cost (each input's lies in
  [0, 1]) above b.

``strict=True`` compares the point estimate instead (fails whenever it misses the target): right
for a fixed trace that is large enough that noise cannot matter, or a gate meant to be tight.
``min_early_exit_rate`` also fails a policy that has stopped exiting early, which keeps every
accuracy promise vacuously; for the same reason a policy whose certificate certified nothing
fails unless ``require_certified=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from adaptix.core.bounds import (
    binomial_pvalue_at_most,
    clopper_pearson_lower,
    clopper_pearson_upper,
)
from adaptix.core.trace import Trace, check_trace
from adaptix.errors import ValidationError
from adaptix.offline.policy import ExitPolicy
from adaptix.offline.simulate import simulate
from adaptix.scalars import flag, unit
from adaptix.testing.speed import describe

Target = Literal["early_accuracy", "accuracy_drop", "relative_cost"]
QUANTITY = {
    "early_accuracy": "early accuracy ≥",
    "accuracy_drop": "accuracy drop against the last exit ≤",
    "relative_cost": "mean relative cost ≤",
}


@dataclass(frozen=True)
class ExitRow:
    """One exit's share of the held-out inputs.

    Attributes:
        exit: the exit index.
        inputs: inputs that left there.
        correct: of them, predicted right (None without labels).
        relative_cost: the exit's cost / the last exit's.
    """

    exit: int
    inputs: int
    correct: int | None
    relative_cost: float


@dataclass(frozen=True)
class ControlReport:
    """The verdict of `check_control`, with the table that explains it.

    Attributes:
        policy: the policy, in words.
        target: the promised quantity.
        level: δ, ε or the budget.
        source: where the promise came from (``"given"``, ``"certificate"`` or ``"criterion"``).
        n: held-out inputs.
        estimate: the quantity on the held-out inputs (None: no input left early).
        bound: the one-sided (1 − α) bound that would show a break (upper for early accuracy,
            lower for drop and cost); None when ``strict`` or undefined.
        pvalue: the exact binomial p-value (early accuracy only).
        alpha: the test's level (None when ``strict``).
        early_exit_rate: share of held-out inputs that left early.
        min_early_exit_rate: the floor asked for (0: none).
        holds: the verdict.
        reason: the verdict in words.
        exits: per-exit rows.
        accuracy: overall accuracy of the policy (None without labels).
        last_accuracy: accuracy of the last exit alone (None without labels).
        statement: the certificate's statement, if the policy has one.
    """

    policy: str
    target: Target
    level: float
    source: str
    n: int
    estimate: float | None
    bound: float | None
    pvalue: float | None
    alpha: float | None
    early_exit_rate: float
    min_early_exit_rate: float
    holds: bool
    reason: str
    exits: tuple[ExitRow, ...]
    accuracy: float | None
    last_accuracy: float | None
    statement: str | None

    def table(self) -> str:
        """The promise, the held-out evidence, the verdict and the per-exit table."""
        lines = [
            f"control check {'passed' if self.holds else 'FAILED'}: {self.policy} on {self.n} "
            "held-out inputs",
            f"  promise    {QUANTITY[self.target]} {self.level:g} ({_source(self.source)})",
        ]
        if self.statement is not None:
            lines.append(f"  certified  {self.statement}")
        evidence = "no input left early" if self.estimate is None else f"{self.estimate:.4f}"
        if self.bound is not None and self.alpha is not None:
            side = "upper" if self.target == "early_accuracy" else "lower"
            evidence += f", one-sided {1 - self.alpha:g} {side} bound {self.bound:.4f}"
        if self.pvalue is not None:
            evidence += f", p = {self.pvalue:.3g}"
        lines.append(f"  held-out   {evidence}")
        lines.append(f"  verdict    {self.reason}")
        lines.append("")
        lines.append(f"  {'exit':>4} {'inputs':>7} {'share':>6} {'accuracy':>8} {'rel. cost':>9}")
        for row in self.exits:
            lines.append(
                f"  {row.exit:>4} {row.inputs:>7} {_share(row.inputs, self.n):>6} "
                f"{_ratio(row.correct, row.inputs):>8} {row.relative_cost:>9.3f}"
            )
        early = self.exits[:-1]
        early_inputs = sum(r.inputs for r in early)
        early_correct = None if self.accuracy is None else sum(r.correct or 0 for r in early)
        lines.append(
            f"  {'early':>4} {early_inputs:>7} {_share(early_inputs, self.n):>6} "
            f"{_ratio(early_correct, early_inputs):>8}"
        )
        if self.accuracy is not None and self.last_accuracy is not None:
            lines.append(
                f"  {'all':>4} {self.n:>7} {'':>6} {self.accuracy:>8.4f}   (last exit alone: "
                f"{self.last_accuracy:.4f})"
            )
        return "\n".join(lines)

    def assert_holds(self) -> None:
        """Raise `AssertionError` with the table when the promise does not hold."""
        if not self.holds:
            raise AssertionError(self.table())


def check_control(
    trace: Trace,
    policy: ExitPolicy,
    *,
    early_accuracy: float | None = None,
    accuracy_drop: float | None = None,
    relative_cost: float | None = None,
    alpha: float = 0.05,
    strict: bool = False,
    min_early_exit_rate: float = 0.0,
    require_certified: bool = True,
) -> ControlReport:
    """Check ``policy``'s promise on the held-out ``trace`` (see the module docstring).

    Args:
        trace: a labelled trace of held-out data, disjoint from what calibrated or certified
            the policy (labels may be missing for a ``relative_cost`` promise).
        policy: the policy to check.
        early_accuracy: check early accuracy ≥ δ.
        accuracy_drop: check accuracy(last exit) − accuracy(policy) ≤ ε.
        relative_cost: check mean relative cost ≤ b.
        alpha: the level at which the held-out data must reject the promise to fail it.
        strict: compare the held-out point estimate instead of testing.
        min_early_exit_rate: also fail when fewer inputs than this share leave early.
        require_certified: fail a policy whose certificate certified nothing (such a policy
            sends every input to the last exit, so its accuracy promises hold vacuously while
            the speed is gone); False accepts it.

    Raises:
        ValidationError: not a trace or not a policy, more than one target, no promise to
            check (a criterion whose threshold is not an accuracy target, without a target or
            certificate), targets, α or the floor out of range, or an unlabelled trace for an
            accuracy promise.
    """
    check_trace(trace)
    if not isinstance(policy, ExitPolicy):
        raise ValidationError(f"expected an adaptix.ExitPolicy, got {type(policy).__name__}.")
    target, level, source = _promise(policy, early_accuracy, accuracy_drop, relative_cost)
    strict = flag(strict, "strict")
    require_certified = flag(require_certified, "require_certified")
    test_alpha = None if strict else unit(alpha, "alpha")
    min_early_exit_rate = unit(
        min_early_exit_rate, "min_early_exit_rate", open_low=False, open_high=False
    )
    _check_fits(trace, policy)
    if target != "relative_cost" and trace.labels is None:
        raise ValidationError(
            f"expected a labelled trace to check {QUANTITY[target]} {level:g}, got an unlabelled "
            "one. Trace held-out data with its labels: model.trace(inputs, labels)."
        )
    simulated = simulate(trace, policy)
    n = trace.num_inputs
    exits = simulated.exit_index.cpu()
    costs = trace.costs.double().cpu()
    relative = costs / costs[-1]
    right = None
    if trace.labels is not None:
        right = (simulated.predictions == trace.labels).cpu()
    rows = tuple(
        ExitRow(
            exit=e,
            inputs=int((exits == e).sum()),
            correct=None if right is None else int(right[exits == e].sum()),
            relative_cost=float(relative[e]),
        )
        for e in range(trace.num_exits)
    )
    estimate, bound, pvalue, broken = _evidence(
        target, level, trace, exits, right, relative, test_alpha
    )
    early = int((exits < trace.num_exits - 1).sum())
    rate = early / n  # from counts: a sum of float shares can miss a floor met exactly
    reason = _reason(target, level, estimate, bound, pvalue, test_alpha, broken)
    holds = not broken
    certificate = policy.certificate
    if early < min_early_exit_rate * n:
        holds = False
        reason = (
            f"broken: {rate:.1%} of inputs left early, below the floor of "
            f"{min_early_exit_rate:.1%} (min_early_exit_rate)"
            + ("" if broken else f"; the promise itself holds ({_detail(reason)})")
        )
    elif certificate is not None and not certificate.certified and require_certified:
        holds = False
        reason = (
            "broken: the policy's certificate certified nothing, so every input goes to the "
            "last exit (pass require_certified=False to accept that)"
            + ("" if broken else f"; the promise itself holds ({_detail(reason)})")
        )
    last_accuracy = None
    if trace.labels is not None:
        last = trace.logits[:, -1].argmax(dim=-1)
        last_accuracy = float((last == trace.labels).double().mean())
    return ControlReport(
        policy=describe(policy),
        target=target,
        level=level,
        source=source,
        n=n,
        estimate=estimate,
        bound=bound,
        pvalue=pvalue,
        alpha=test_alpha,
        early_exit_rate=rate,
        min_early_exit_rate=min_early_exit_rate,
        holds=holds,
        reason=reason,
        exits=rows,
        accuracy=simulated.accuracy,
        last_accuracy=last_accuracy,
        statement=None if certificate is None else certificate.statement(),
    )


def _promise(
    policy: ExitPolicy,
    early_accuracy: float | None,
    accuracy_drop: float | None,
    relative_cost: float | None,
) -> tuple[Target, float, str]:
    given = {
        name: value
        for name, value in (
            ("early_accuracy", early_accuracy),
            ("accuracy_drop", accuracy_drop),
            ("relative_cost", relative_cost),
        )
        if value is not None
    }
    if len(given) > 1:
        raise ValidationError(
            f"expected at most one target (early_accuracy, accuracy_drop or relative_cost), got "
            f"{sorted(given)}."
        )
    if given:
        ((name, value),) = given.items()
        target: Target = name  # type: ignore[assignment]  # one of the three literal keys
        open_low = name != "accuracy_drop"
        return target, unit(value, name, open_low=open_low, open_high=False), "given"
    certificate = policy.certificate
    if certificate is not None:
        return certificate.target, float(certificate.level), "certificate"
    reading = policy.criterion.accuracy_reading
    if reading is not None and reading.is_target:
        return "early_accuracy", float(reading.target(policy.threshold)), "criterion"
    raise ValidationError(
        f"expected a promise to check, got {describe(policy)}, whose threshold is not an "
        "accuracy target and which carries no certificate. Pass early_accuracy=δ (or "
        "accuracy_drop=ε, relative_cost=b), or check a pcee or certified policy."
    )


def _evidence(
    target: Target,
    level: float,
    trace: Trace,
    exits: torch.Tensor,
    right: torch.Tensor | None,
    relative: torch.Tensor,
    alpha: float | None,
) -> tuple[float | None, float | None, float | None, bool]:
    """(estimate, bound, p-value, broken) for the promise."""
    n = trace.num_inputs
    if target == "early_accuracy":
        assert right is not None  # checked by the caller: accuracy promises need labels
        early = exits < trace.num_exits - 1
        m, k = int(early.sum()), int(right[early].sum())
        if m == 0:
            return None, None, None, False
        estimate = k / m
        if alpha is None:
            return estimate, None, None, estimate < level
        pvalue = float(binomial_pvalue_at_most(k, m, level))
        bound = float(clopper_pearson_upper(k, m, alpha))
        return estimate, bound, pvalue, pvalue < alpha
    if target == "accuracy_drop":
        assert right is not None  # checked by the caller: accuracy promises need labels
        assert trace.labels is not None
        last_right = (trace.logits[:, -1].argmax(dim=-1) == trace.labels).cpu()
        lost = int((last_right & ~right).sum())
        gained = int((~last_right & right).sum())
        estimate = (lost - gained) / n
        if alpha is None:
            return estimate, None, None, estimate > level
        bound = float(clopper_pearson_lower(lost, n, alpha / 2)) - float(
            clopper_pearson_upper(gained, n, alpha / 2)
        )
        return estimate, bound, None, bound > level
    estimate = float(relative[exits].mean())
    if alpha is None:
        return estimate, None, None, estimate > level
    bound = estimate - math.sqrt(math.log(1 / alpha) / (2 * n))
    return estimate, bound, None, bound > level


def _reason(
    target: Target,
    level: float,
    estimate: float | None,
    bound: float | None,
    pvalue: float | None,
    alpha: float | None,
    broken: bool,
) -> str:
    promise = f"{QUANTITY[target]} {level:g}"
    if estimate is None:
        return f"holds: no input left early, so {promise} cannot be broken"
    if alpha is None:
        verb = "misses" if broken else "meets"
        return f"{'broken' if broken else 'holds'}: the held-out estimate {verb} {promise} (strict)"
    if broken:
        detail = f"p = {pvalue:.3g} < α = {alpha:g}" if pvalue is not None else f"bound {bound:.4f}"
        return f"broken: the held-out data reject {promise} ({detail})"
    missed = (estimate < level) if target == "early_accuracy" else (estimate > level)
    if missed:
        return (
            f"holds within noise: the estimate misses {promise}, but not significantly at "
            f"α = {alpha:g}"
        )
    return f"holds: the held-out estimate meets {promise}"


def _detail(reason: str) -> str:
    """A reason without its leading verdict ("holds: ...")."""
    return reason.split(": ", 1)[1] if ": " in reason else reason


def _check_fits(trace: Trace, policy: ExitPolicy) -> None:
    """Refuse a held-out trace of another model than the policy's, naming exits and classes."""
    try:
        policy.check_model(trace.num_exits, trace.num_classes)
    except ValidationError as err:  # a CalibrationError from the built-ins, or a plugin's own
        raise type(err)(
            f"expected a held-out trace of the model that {describe(policy)} was calibrated "
            f"for, got a trace of {trace.num_exits} exits and {trace.num_classes} classes, "
            f"which the policy does not fit: {err}"
        ) from err


def _source(source: str) -> str:
    return {
        "given": "given",
        "certificate": "the policy's certificate",
        "criterion": "the criterion's δ",
    }[source]


def _share(count: int, total: int) -> str:
    return f"{count / total:.1%}" if total else "-"


def _ratio(correct: int | None, inputs: int) -> str:
    return f"{correct / inputs:.4f}" if correct is not None and inputs else "-"


__all__ = ["ControlReport", "ExitRow", "check_control"]
