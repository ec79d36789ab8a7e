"""`adaptix.testing.control_check`: the held-out test of a policy's promise.

Traces are built row by row, so that every count the check reads (inputs leaving early, right
answers, rows the policy loses or gains against the last exit) is known by construction; the
expected p-values and bounds are computed here with scipy, not with `adaptix.core.bounds`. The
validity tests draw many held-out samples where the promise holds exactly and count how often
the check fails them: no more often than α (and, for early accuracy, exactly as often as the
binomial computation says).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor

import adaptix
from adaptix import CertificateWarning, ExitPolicy, ValidationError
from adaptix.testing import synthetic_trace
from adaptix.testing.control_check import ControlReport, ExitRow, check_control

EXITS, CLASSES = 3, 3
COSTS = (1.0, 2.0, 4.0)  # relative costs 0.25, 0.5, 1
SURE, FLAT = 8.0, 0.0  # a confident logit (confidence 0.9993) and a flat one (1/3)
CONFIDENCE = adaptix.policy("confidence", 0.9)


def row_logits(exit_taken: int, right: bool, last_right: bool) -> Tensor:
    """``[E, C]`` logits of an input of class 0 that a confidence-0.9 policy sends to
    ``exit_taken``, predicted right there when ``right``, and right at the last exit when
    ``last_right``."""
    assert exit_taken < EXITS - 1 or right == last_right, "the last exit decides both"
    logits = torch.full((EXITS, CLASSES), FLAT)
    if exit_taken < EXITS - 1:
        logits[exit_taken, 0 if right else 1] = SURE
    logits[EXITS - 1, 0 if last_right else 2] = SURE
    return logits


def held_out(
    *groups: tuple[int, bool, bool, int], labelled: bool = True, costs: tuple[float, ...] = COSTS
) -> adaptix.Trace:
    """A trace of ``count`` inputs for each (exit taken, right, right at the last exit, count)."""
    rows = [row_logits(e, right, last) for e, right, last, count in groups for _ in range(count)]
    logits = torch.stack(rows)
    labels = torch.zeros(len(rows), dtype=torch.long) if labelled else None
    return adaptix.Trace(logits, labels, list(costs))


def early(right: int, wrong: int, late: int = 20) -> adaptix.Trace:
    """``right`` + ``wrong`` inputs leaving at exit 0, ``late`` right ones at the last exit."""
    return held_out((0, True, True, right), (0, False, True, wrong), (2, True, True, late))


def clopper_pearson_upper(k: int, m: int, alpha: float) -> float:
    """One-sided (1 − α) upper bound of a rate from k events in m trials, by its definition."""
    return 1.0 if k == m else float(stats.beta.ppf(1 - alpha, k + 1, m - k))


def clopper_pearson_lower(k: int, m: int, alpha: float) -> float:
    return 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, m - k + 1))


# ---------------------------------------------------------------------- early accuracy ≥ δ


@pytest.mark.parametrize(
    ("right", "wrong", "delta"),
    [(45, 5, 0.9), (40, 10, 0.9), (35, 15, 0.9), (9, 1, 0.99), (30, 0, 0.95), (12, 8, 0.5)],
)
@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_early_accuracy_is_tested_with_the_exact_binomial_tail(
    right: int, wrong: int, delta: float, alpha: float
) -> None:
    report = check_control(early(right, wrong), CONFIDENCE, early_accuracy=delta, alpha=alpha)
    m = right + wrong
    pvalue = float(stats.binom.cdf(right, m, delta))
    bound = clopper_pearson_upper(right, m, alpha)
    assert report.target == "early_accuracy"
    assert (report.level, report.source, report.alpha) == (delta, "given", alpha)
    assert report.estimate == pytest.approx(right / m)
    assert report.pvalue == pytest.approx(pvalue, rel=1e-9, abs=1e-300)
    assert report.bound == pytest.approx(bound, rel=1e-9)
    assert report.holds == (pvalue >= alpha)
    assert report.holds == (bound >= delta)  # the test and the bound agree
    assert report.early_exit_rate == pytest.approx(m / (m + 20))


def test_the_verdict_flips_exactly_at_alpha() -> None:
    right, wrong, delta = 40, 10, 0.9
    pvalue = float(stats.binom.cdf(right, right + wrong, delta))
    assert 0.01 < pvalue < 0.05
    trace = early(right, wrong)
    at = check_control(trace, CONFIDENCE, early_accuracy=delta, alpha=pvalue)
    above = check_control(
        trace, CONFIDENCE, early_accuracy=delta, alpha=float(np.nextafter(pvalue, 1.0))
    )
    assert at.holds  # p = α does not reject
    assert at.reason.startswith("holds within noise")
    assert not above.holds
    assert above.reason.startswith("broken: the held-out data reject early accuracy ≥ 0.9")
    assert f"p = {pvalue:.3g}" in above.reason


def test_a_miss_within_noise_holds_unless_strict() -> None:
    trace = early(43, 7)  # 0.86 on 50 inputs: below δ = 0.9, but p ≈ 0.24
    report = check_control(trace, CONFIDENCE, early_accuracy=0.9)
    assert report.estimate == pytest.approx(0.86)
    assert report.pvalue is not None
    assert report.pvalue > 0.05
    assert report.holds
    assert report.reason == (
        "holds within noise: the estimate misses early accuracy ≥ 0.9, but not significantly "
        "at α = 0.05"
    )
    strict = check_control(trace, CONFIDENCE, early_accuracy=0.9, strict=True)
    assert not strict.holds
    assert (strict.alpha, strict.bound, strict.pvalue) == (None, None, None)
    assert strict.estimate == pytest.approx(0.86)
    assert strict.reason == "broken: the held-out estimate misses early accuracy ≥ 0.9 (strict)"
    met = check_control(early(46, 4), CONFIDENCE, early_accuracy=0.9, strict=True)
    assert met.holds
    assert met.reason == "holds: the held-out estimate meets early accuracy ≥ 0.9 (strict)"


def test_a_met_promise_holds() -> None:
    report = check_control(early(48, 2), CONFIDENCE, early_accuracy=0.9)
    assert report.holds
    assert report.reason == "holds: the held-out estimate meets early accuracy ≥ 0.9"


# ------------------------------------------------------------------------------ the promise


@pytest.fixture(scope="module")
def calibration_trace() -> adaptix.Trace:
    return synthetic_trace(3000, num_exits=4, num_classes=5, seed=1)


@pytest.fixture(scope="module")
def test_trace() -> adaptix.Trace:
    return synthetic_trace(1500, num_exits=4, num_classes=5, seed=2)


@pytest.fixture(scope="module")
def calibration() -> adaptix.Calibration:
    return adaptix.calibrate(synthetic_trace(3000, num_exits=4, num_classes=5, seed=3))


def test_pcee_promises_its_own_delta(
    test_trace: adaptix.Trace, calibration: adaptix.Calibration
) -> None:
    report = check_control(test_trace, adaptix.policy("pcee", 0.8, calibration))
    assert (report.target, report.level, report.source) == ("early_accuracy", 0.8, "criterion")
    assert report.statement is None
    assert "promise    early accuracy ≥ 0.8 (the criterion's δ)" in report.table()
    simulated = adaptix.simulate(test_trace, adaptix.policy("pcee", 0.8, calibration))
    assert report.estimate == pytest.approx(simulated.early_accuracy)


def test_a_certificate_outranks_the_criterions_delta(
    calibration_trace: adaptix.Trace, test_trace: adaptix.Trace, calibration: adaptix.Calibration
) -> None:
    policy = adaptix.guarantee(
        calibration_trace, "pcee", calibration=calibration, early_accuracy=0.8
    )
    certificate = policy.certificate
    assert certificate is not None
    assert certificate.certified
    assert policy.threshold != 0.8  # the two promises differ: which one is checked shows
    report = check_control(test_trace, policy)
    assert (report.target, report.level, report.source) == ("early_accuracy", 0.8, "certificate")
    assert report.statement == certificate.statement()
    assert f"  certified  {certificate.statement()}" in report.table()
    assert "(the policy's certificate)" in report.table()


@pytest.mark.parametrize(
    ("target", "make"),
    [
        (
            "early_accuracy",
            lambda cal: adaptix.guarantee(cal, "confidence", early_accuracy=0.85),
        ),
        ("accuracy_drop", lambda cal: adaptix.guarantee(cal, "confidence", accuracy_drop=0.05)),
        ("relative_cost", lambda cal: adaptix.budget(cal, "confidence", relative_cost=0.7)),
    ],
)
def test_a_certificate_promises_its_target(
    calibration_trace: adaptix.Trace,
    test_trace: adaptix.Trace,
    target: str,
    make: Callable[[adaptix.Trace], ExitPolicy],
) -> None:
    policy = make(calibration_trace)
    certificate = policy.certificate
    assert certificate is not None
    assert certificate.certified
    report = check_control(test_trace, policy)
    assert (report.target, report.level, report.source) == (
        target,
        certificate.level,
        "certificate",
    )
    assert report.holds  # certified on exchangeable data, with room to spare here


def test_a_given_target_outranks_a_certificate(
    calibration_trace: adaptix.Trace, test_trace: adaptix.Trace
) -> None:
    policy = adaptix.guarantee(calibration_trace, "confidence", early_accuracy=0.85)
    given = check_control(test_trace, policy, early_accuracy=0.6)
    assert (given.target, given.level, given.source) == ("early_accuracy", 0.6, "given")
    cost = check_control(test_trace, policy, relative_cost=0.9)
    assert (cost.target, cost.level, cost.source) == ("relative_cost", 0.9, "given")
    assert "(given)" in cost.table()


def test_a_given_target_outranks_the_criterions_delta(
    test_trace: adaptix.Trace, calibration: adaptix.Calibration
) -> None:
    report = check_control(test_trace, adaptix.policy("pcee", 0.8, calibration), early_accuracy=0.5)
    assert (report.level, report.source) == (0.5, "given")


@pytest.mark.parametrize("name", ["confidence", "entropy", "patience"])
def test_a_threshold_that_is_no_target_needs_one(test_trace: adaptix.Trace, name: str) -> None:
    policy = adaptix.policy(name, 2 if name == "patience" else 0.9)
    with pytest.raises(ValidationError, match=r"Pass early_accuracy=δ"):
        check_control(test_trace, policy)


@pytest.mark.parametrize(
    "targets",
    [
        {"early_accuracy": 0.9, "accuracy_drop": 0.05},
        {"early_accuracy": 0.9, "relative_cost": 0.5},
        {"accuracy_drop": 0.0, "relative_cost": 0.5},
    ],
)
def test_more_than_one_target_is_refused(
    test_trace: adaptix.Trace, targets: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError, match="at most one target"):
        check_control(test_trace, CONFIDENCE, **targets)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"early_accuracy": 0.0}, r"early_accuracy in \(0, 1\]"),
        ({"early_accuracy": 1.5}, r"early_accuracy in \(0, 1\]"),
        ({"early_accuracy": True}, r"early_accuracy to be a real number, got True \(bool\)"),
        ({"accuracy_drop": -0.01}, r"accuracy_drop in \[0, 1\]"),
        ({"relative_cost": 0.0}, r"relative_cost in \(0, 1\]"),
        ({"relative_cost": float("nan")}, r"relative_cost to be a finite real number, got nan"),
        ({"early_accuracy": 0.9, "alpha": 0.0}, r"alpha in \(0, 1\)"),
        ({"early_accuracy": 0.9, "alpha": 1.0}, r"alpha in \(0, 1\)"),
        ({"early_accuracy": 0.9, "min_early_exit_rate": 1.5}, r"min_early_exit_rate in \[0, 1\]"),
        ({"early_accuracy": 0.9, "strict": "yes"}, "strict to be True or False"),
    ],
)
def test_bad_arguments_are_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_control(early(40, 10), CONFIDENCE, **arguments)


def test_not_a_trace_or_not_a_policy_is_refused() -> None:
    trace = early(40, 10)
    with pytest.raises(ValidationError, match=r"adaptix\.Trace, got a Tensor"):
        check_control(trace.logits, CONFIDENCE, early_accuracy=0.9)  # type: ignore[arg-type]  # the error under test
    with pytest.raises(ValidationError, match=r"adaptix\.ExitPolicy, got str"):
        check_control(trace, "confidence", early_accuracy=0.9)  # type: ignore[arg-type]  # the error under test


# ----------------------------------------------------------------- accuracy drop, relative cost


def drop_trace(lost: int, gained: int, both_right: int, both_wrong: int) -> adaptix.Trace:
    """Inputs the policy gets wrong where the last exit is right (``lost``), the reverse
    (``gained``), and inputs where the two agree, half of them leaving early."""
    return held_out(
        (0, False, True, lost),
        (1, True, False, gained),
        (0, True, True, both_right // 2),
        (2, True, True, both_right - both_right // 2),
        (0, False, False, both_wrong),
    )


@pytest.mark.parametrize(
    ("lost", "gained", "epsilon", "verdict"),
    [
        (40, 2, 0.05, "broken"),
        (14, 2, 0.05, "holds within noise"),
        (6, 3, 0.05, "holds"),
        (0, 5, 0.0, "holds"),
        (12, 0, 0.0, "broken"),
    ],
)
def test_accuracy_drop_is_tested_with_two_clopper_pearson_bounds(
    lost: int, gained: int, epsilon: float, verdict: str
) -> None:
    n = 200
    trace = drop_trace(lost, gained, both_right=n - lost - gained - 20, both_wrong=20)
    alpha = 0.05
    report = check_control(trace, CONFIDENCE, accuracy_drop=epsilon, alpha=alpha)
    bound = clopper_pearson_lower(lost, n, alpha / 2) - clopper_pearson_upper(gained, n, alpha / 2)
    assert report.n == n
    assert report.estimate == pytest.approx((lost - gained) / n)
    assert report.bound == pytest.approx(bound, rel=1e-9, abs=1e-12)
    assert report.pvalue is None
    assert report.holds == (bound <= epsilon)
    assert report.reason.split(":")[0] == verdict
    # the drop is the last exit's accuracy minus the policy's, counted by hand
    last_right, policy_right = n - 20 - gained, n - 20 - lost
    assert report.last_accuracy == pytest.approx(last_right / n)
    assert report.accuracy == pytest.approx(policy_right / n)
    strict = check_control(trace, CONFIDENCE, accuracy_drop=epsilon, strict=True)
    assert strict.holds == ((lost - gained) / n <= epsilon)


@pytest.mark.parametrize(
    ("budget", "strict", "verdict"),
    [
        (0.45, False, "broken"),
        (0.5, False, "holds within noise"),
        (0.7, False, "holds"),
        (0.55, True, "broken"),
        (0.6, True, "holds"),
    ],
)
@pytest.mark.parametrize("labelled", [True, False])
def test_relative_cost_is_tested_with_hoeffding(
    budget: float, strict: bool, verdict: str, labelled: bool
) -> None:
    # 40 inputs at exit 0 (relative cost 0.25), 20 at exit 1 (0.5), 40 at the last (1): 0.6
    trace = held_out(
        (0, True, True, 30),
        (0, False, False, 10),
        (1, True, True, 20),
        (2, True, True, 40),
        labelled=labelled,
    )
    report = check_control(trace, CONFIDENCE, relative_cost=budget, strict=strict)
    estimate = (40 * 0.25 + 20 * 0.5 + 40 * 1.0) / 100
    assert report.estimate == pytest.approx(estimate)
    if strict:
        assert report.bound is None
    else:
        assert report.bound == pytest.approx(estimate - math.sqrt(math.log(1 / 0.05) / 200))
    assert report.reason.split(":")[0] == verdict
    assert report.holds == verdict.startswith("holds")
    assert [row.relative_cost for row in report.exits] == [0.25, 0.5, 1.0]
    if not labelled:
        assert report.accuracy is None
        assert report.last_accuracy is None
        assert all(row.correct is None for row in report.exits)
        report.table()  # an unlabelled table renders


@pytest.mark.parametrize(
    "targets", [{}, {"early_accuracy": 0.9}, {"accuracy_drop": 0.05}], ids=["criterion", "δ", "ε"]
)
def test_accuracy_promises_need_labels(
    calibration: adaptix.Calibration, targets: dict[str, Any]
) -> None:
    trace = synthetic_trace(100, num_exits=4, num_classes=5, seed=4, labelled=False)
    with pytest.raises(ValidationError, match="labelled trace"):
        check_control(trace, adaptix.policy("pcee", 0.8, calibration), **targets)


# -------------------------------------------------------------------- no early exits, floors


def test_no_early_exit_holds_vacuously_unless_a_floor_is_asked() -> None:
    trace = held_out((2, True, True, 30), (2, False, False, 10))
    report = check_control(trace, CONFIDENCE, early_accuracy=0.9)
    assert report.holds
    assert (report.estimate, report.bound, report.pvalue) == (None, None, None)
    assert report.early_exit_rate == 0.0
    assert report.reason == "holds: no input left early, so early accuracy ≥ 0.9 cannot be broken"
    assert "held-out   no input left early" in report.table()
    floored = check_control(trace, CONFIDENCE, early_accuracy=0.9, min_early_exit_rate=0.1)
    assert not floored.holds
    assert floored.min_early_exit_rate == 0.1
    assert floored.reason.startswith(
        "broken: 0.0% of inputs left early, below the floor of 10.0% (min_early_exit_rate)"
    )


def test_an_uncertified_policy_that_stopped_exiting_fails_the_floor(
    calibration_trace: adaptix.Trace, test_trace: adaptix.Trace
) -> None:
    small = calibration_trace.subset(slice(0, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificateWarning)
        policy = adaptix.guarantee(small, "confidence", early_accuracy=0.999)
    assert not policy.exits_early
    # nothing left early, so nothing of the promise is broken, but nothing was certified
    report = check_control(test_trace, policy)
    assert not report.holds
    assert report.reason.startswith("broken: the policy's certificate certified nothing")
    assert report.reason.endswith(
        "; the promise itself holds (no input left early, so early accuracy ≥ 0.999 cannot be "
        "broken)"
    )
    assert report.policy == "confidence (no early exit) (uncertified)"
    assert check_control(test_trace, policy, require_certified=False).holds
    report = check_control(test_trace, policy, min_early_exit_rate=0.05)
    assert not report.holds
    assert "below the floor of 5.0%" in report.reason
    with pytest.raises(ValidationError, match="require_certified to be True or False"):
        check_control(test_trace, policy, require_certified="yes")  # type: ignore[arg-type]  # the error under test


def test_the_floor_says_whether_the_promise_itself_held() -> None:
    trace = early(18, 2, late=80)  # 20 % leave early, 90 % of them right
    kept = check_control(trace, CONFIDENCE, early_accuracy=0.8, min_early_exit_rate=0.25)
    assert not kept.holds
    assert kept.early_exit_rate == pytest.approx(0.2)
    assert kept.reason.endswith(
        "; the promise itself holds (the held-out estimate meets early accuracy ≥ 0.8)"
    )
    met = check_control(trace, CONFIDENCE, early_accuracy=0.8, min_early_exit_rate=0.2)
    assert met.holds
    broken = check_control(
        early(5, 15, late=80), CONFIDENCE, early_accuracy=0.8, min_early_exit_rate=0.25
    )
    assert not broken.holds
    assert "promise itself holds" not in broken.reason


def test_a_floor_met_exactly_is_met() -> None:
    """80 of 100 inputs leave early (10 at exit 0, 70 at exit 1): a floor of 80 % is met, even
    though the per-exit shares 0.1 + 0.7 add to 0.7999999999999999 in floating point."""
    trace = held_out((0, True, True, 10), (1, True, True, 70), (2, True, True, 20))
    report = check_control(trace, CONFIDENCE, early_accuracy=0.8, min_early_exit_rate=0.8)
    assert report.holds, report.reason


# ---------------------------------------------------------------------------------- the table


def test_the_table_shows_promise_evidence_verdict_and_exits() -> None:
    trace = held_out(
        (0, True, True, 30),
        (0, False, True, 10),
        (1, True, True, 15),
        (1, False, False, 5),
        (2, True, True, 25),
        (2, False, False, 15),
    )
    report = check_control(trace, CONFIDENCE, early_accuracy=0.9)
    assert report.exits == (
        ExitRow(exit=0, inputs=40, correct=30, relative_cost=0.25),
        ExitRow(exit=1, inputs=20, correct=15, relative_cost=0.5),
        ExitRow(exit=2, inputs=40, correct=25, relative_cost=1.0),
    )
    assert not report.holds  # 45 of 60 early inputs right is far below 0.9
    table = report.table()
    lines = table.splitlines()
    assert lines[0] == "control check FAILED: confidence 0.9 on 100 held-out inputs"
    assert lines[1] == "  promise    early accuracy ≥ 0.9 (given)"
    bound = clopper_pearson_upper(45, 60, 0.05)
    pvalue = float(stats.binom.cdf(45, 60, 0.9))
    assert lines[2] == (
        f"  held-out   0.7500, one-sided 0.95 upper bound {bound:.4f}, p = {pvalue:.3g}"
    )
    assert lines[3] == f"  verdict    {report.reason}"
    rows = {line.split()[0]: line.split()[1:] for line in lines[5:]}
    assert rows["exit"] == ["inputs", "share", "accuracy", "rel.", "cost"]
    assert rows["0"] == ["40", "40.0%", "0.7500", "0.250"]
    assert rows["1"] == ["20", "20.0%", "0.7500", "0.500"]
    assert rows["2"] == ["40", "40.0%", "0.6250", "1.000"]
    assert rows["early"] == ["60", "60.0%", "0.7500"]
    assert rows["all"][:2] == ["100", "0.7000"]
    assert table.endswith(f"(last exit alone: {report.last_accuracy:.4f})")
    assert report.last_accuracy == pytest.approx((30 + 10 + 15 + 25) / 100)
    assert len(lines) == 4 + 1 + 1 + EXITS + 2  # header, blank, column names, exits, totals


def test_assert_holds_raises_with_the_table() -> None:
    broken = check_control(early(30, 20), CONFIDENCE, early_accuracy=0.9)
    with pytest.raises(AssertionError) as caught:
        broken.assert_holds()
    assert str(caught.value) == broken.table()
    assert "control check FAILED" in str(caught.value)
    check_control(early(48, 2), CONFIDENCE, early_accuracy=0.9).assert_holds()


# --------------------------------------------------------------- validity of the default test


REPLICATES = 1500
HELD_OUT = 60
ALPHA = 0.05
# Category of a drawn input: (exit taken, right there, right at the last exit).
CATEGORIES = (
    (0, True, True),
    (0, False, True),  # lost against the last exit
    (1, True, False),  # gained against the last exit
    (2, True, True),
)
TEMPLATES = torch.stack([row_logits(*category) for category in CATEGORIES])


def drawn_traces(shares: tuple[float, ...], seed: int) -> list[adaptix.Trace]:
    """``REPLICATES`` held-out traces of ``HELD_OUT`` inputs, each input of category c with
    probability ``shares[c]``."""
    generator = torch.Generator().manual_seed(seed)
    drawn = torch.multinomial(
        torch.tensor(shares), REPLICATES * HELD_OUT, replacement=True, generator=generator
    ).view(REPLICATES, HELD_OUT)
    labels = torch.zeros(HELD_OUT, dtype=torch.long)
    return [adaptix.Trace(TEMPLATES[rows], labels, list(COSTS)) for rows in drawn]


def early_accuracy_size(early_share: float, delta: float) -> float:
    """The exact probability that the binomial test rejects early accuracy ≥ δ when it is
    exactly δ and each input leaves early with probability ``early_share``."""
    size = 0.0
    for m in range(1, HELD_OUT + 1):
        ks = np.arange(m + 1)
        rejected = stats.binom.cdf(ks, m, delta) < ALPHA
        size += (
            stats.binom.pmf(m, HELD_OUT, early_share)
            * stats.binom.pmf(ks, m, delta)[rejected].sum()
        )
    return float(size)


def failure_rate(traces: list[adaptix.Trace], strict: bool, **target: float) -> float:
    failed = sum(
        not check_control(trace, CONFIDENCE, alpha=ALPHA, strict=strict, **target).holds
        for trace in traces
    )
    return failed / len(traces)


def test_a_promise_that_holds_exactly_fails_at_most_alpha_of_the_time() -> None:
    """Early accuracy exactly δ = 0.9 in the population: the default test fails a held-out
    sample as often as the exact binomial computation says, never more than α, while the strict
    comparison fails it about half the time."""
    delta, early_share = 0.9, 0.5
    traces = drawn_traces((early_share * delta, early_share * (1 - delta), 0.0, 0.5), seed=0)
    expected = early_accuracy_size(early_share, delta)
    assert 0.01 < expected <= ALPHA
    rate = failure_rate(traces, strict=False, early_accuracy=delta)
    slack = 4 * math.sqrt(expected * (1 - expected) / REPLICATES)
    assert abs(rate - expected) <= slack
    assert rate <= ALPHA + slack
    assert failure_rate(traces[:300], strict=True, early_accuracy=delta) > 0.3


@pytest.mark.parametrize(
    ("target", "shares", "level"),
    [
        # P(lost) − P(gained) = 0.15 − 0.05 = ε
        ("accuracy_drop", (0.3, 0.15, 0.05, 0.5), 0.1),
        # 0.5 · 0.25 + 0.1 · 0.5 + 0.4 · 1 = b
        ("relative_cost", (0.5, 0.0, 0.1, 0.4), 0.575),
    ],
)
def test_drop_and_cost_promises_that_hold_exactly_rarely_fail(
    target: str, shares: tuple[float, ...], level: float
) -> None:
    traces = drawn_traces(shares, seed=1)[:500]
    rate = failure_rate(traces, strict=False, **{target: level})
    assert rate <= ALPHA + 4 * math.sqrt(ALPHA * (1 - ALPHA) / len(traces))
    assert failure_rate(traces[:200], strict=True, **{target: level}) > 0.3


@pytest.mark.parametrize(
    ("target", "shares", "level"),
    [
        ("early_accuracy", (0.3, 0.2, 0.0, 0.5), 0.9),  # truth 0.6
        ("accuracy_drop", (0.2, 0.35, 0.0, 0.45), 0.1),  # truth 0.35
        ("relative_cost", (0.1, 0.0, 0.05, 0.85), 0.575),  # truth 0.9
    ],
)
def test_a_promise_broken_by_far_fails_almost_always(
    target: str, shares: tuple[float, ...], level: float
) -> None:
    traces = drawn_traces(shares, seed=2)[:200]
    assert failure_rate(traces, strict=False, **{target: level}) > 0.9


def test_the_report_is_a_frozen_record() -> None:
    report = check_control(early(45, 5), CONFIDENCE, early_accuracy=0.9)
    assert isinstance(report, ControlReport)
    with pytest.raises(AttributeError):
        report.holds = False  # type: ignore[misc]  # the error under test
