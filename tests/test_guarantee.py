"""Certified modes: the bounds' validity, Learn-then-Test's choice, budgets and `pcee_lcb`.

The statements tested are those of ``PCEE.md`` (section "Guarantees"). Validity of each p-value
and bound is checked exactly, by enumerating every outcome of a binomial draw; the end-to-end
guarantee is checked by repeated calibration draws from a large synthetic population.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import Tensor

import adaptix
from adaptix import Certificate, CertificateWarning, Certifier, ValidationError
from adaptix.components import Direction, ExitCriterion
from adaptix.core.bounds import (
    binomial_pvalue_at_least,
    binomial_pvalue_at_most,
    clopper_pearson_lower,
    clopper_pearson_upper,
    fixed_sequence,
    hoeffding_bentkus_pvalue,
)
from adaptix.plugins import AdaptixPluginManager, get_plugin_manager
from adaptix.testing.data import synthetic_trace

# ------------------------------------------------------------------------------------ bounds


def _exact_size(pvalue_of_k: Any, n: int, rate: float, alpha: float) -> float:
    """P(p-value ≤ α) when k ~ Bin(n, rate), summed over every outcome k."""
    ks = np.arange(n + 1)
    return float(stats.binom.pmf(ks, n, rate)[np.asarray(pvalue_of_k(ks)) <= alpha].sum())


@pytest.mark.parametrize("n", [1, 7, 40])
@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_binomial_pvalues_are_valid_at_every_rate_under_the_null(n: int, alpha: float) -> None:
    delta = 0.8
    for rate in np.linspace(0.01, delta, 25):  # "accuracy < δ" holds: rejection ≤ α
        assert _exact_size(lambda k: binomial_pvalue_at_least(k, n, delta), n, rate, alpha) <= (
            alpha + 1e-12
        )
    eps = 0.1
    for rate in np.linspace(eps, 0.99, 25):  # "rate > ε" holds
        assert _exact_size(lambda k: binomial_pvalue_at_most(k, n, eps), n, rate, alpha) <= (
            alpha + 1e-12
        )


def test_binomial_pvalues_equal_the_tail_sums() -> None:
    m, delta = 12, 0.7
    for k in range(m + 1):
        tail = sum(math.comb(m, j) * delta**j * (1 - delta) ** (m - j) for j in range(k, m + 1))
        assert binomial_pvalue_at_least(k, m, delta) == pytest.approx(tail, rel=1e-9)
    assert binomial_pvalue_at_least(0, 0, delta) == 1.0  # no evidence


@pytest.mark.parametrize("n", [30, 200])
def test_hoeffding_bentkus_is_valid_for_bernoulli_losses(n: int) -> None:
    level, alpha = 0.3, 0.1
    for rate in np.linspace(level, 0.95, 15):  # "E[L] ≥ level" holds
        size = _exact_size(lambda k: hoeffding_bentkus_pvalue(k / n, n, level), n, rate, alpha)
        assert size <= alpha + 1e-12


@pytest.mark.parametrize("n", [5, 50, 300])
def test_clopper_pearson_bounds_cover_every_rate(n: int) -> None:
    alpha = 0.1
    ks = np.arange(n + 1)
    lower = clopper_pearson_lower(ks, np.full(n + 1, n), alpha)
    upper = clopper_pearson_upper(ks, np.full(n + 1, n), alpha)
    for rate in np.linspace(0.0, 1.0, 41):
        pmf = stats.binom.pmf(ks, n, rate)
        assert pmf[lower <= rate + 1e-12].sum() >= 1 - alpha - 1e-9
        assert pmf[upper >= rate - 1e-12].sum() >= 1 - alpha - 1e-9
    assert np.isnan(clopper_pearson_lower(0, 0, alpha))
    assert clopper_pearson_lower(0, 10, alpha) == 0.0


def test_fixed_sequence_stops_at_the_first_failure() -> None:
    p = np.array([0.9, 0.01, 0.02, 0.3, 0.001])
    assert fixed_sequence(p, 0.05) == 0
    assert fixed_sequence(p, 0.05, start=1) == 2
    assert fixed_sequence(np.array([0.0, 0.0]), 0.05) == 2
    assert fixed_sequence(np.array([]), 0.05) == 0


# --------------------------------------------------------------------------------- guarantee


def _brute_force_choice(trace: adaptix.Trace, grid: list[float], delta: float, alpha: float):
    """Learn-then-Test written out threshold by threshold: the loosest rejected τ or None."""
    last = trace.num_exits - 1
    strictest_first = sorted(grid, reverse=True)
    needed = math.ceil(math.log(alpha) / math.log(delta))
    chosen, started = None, False
    for tau in strictest_first:
        result = adaptix.simulate(trace, adaptix.policy("confidence", tau))
        early = result.exit_index < last
        m = int(early.sum())
        if not started and m < needed:
            continue
        started = True
        k = int((result.predictions == trace.labels)[early].sum())
        if stats.binom.sf(k - 1, m, delta) > alpha:
            break
        chosen = tau
    return chosen


@pytest.mark.parametrize("delta", [0.6, 0.8, 0.9])
def test_guarantee_picks_what_fixed_sequence_testing_picks(delta: float) -> None:
    trace = synthetic_trace(3000, 5, 6, seed=3)
    grid = torch.linspace(0, 1, 41, dtype=torch.float64).tolist()
    pol = adaptix.guarantee(trace, "confidence", early_accuracy=delta, thresholds=grid)
    expected = _brute_force_choice(trace, grid, delta, 0.05)
    assert expected is not None
    assert pol.certificate is not None
    assert pol.certificate.certified
    assert pol.threshold == pytest.approx(expected)
    result = adaptix.simulate(trace, pol)
    assert pol.certificate.estimate == pytest.approx(result.early_accuracy)
    assert pol.certificate.early_exit_rate == pytest.approx(result.early_exit_rate)
    assert pol.certificate.bound <= pol.certificate.estimate
    assert "early accuracy ≥" in pol.certificate.statement()


def test_the_guarantee_holds_over_repeated_calibration_draws() -> None:
    """Miss frequency ≤ α up to the noise of the number of draws (PCEE.md: how a guarantee is
    checked). The population is 60,000 synthetic inputs: its early accuracy at any threshold
    is known to about ±0.3 points, far below the gaps this test could confuse."""
    population = synthetic_trace(60_000, 4, 5, seed=11)
    manager = get_plugin_manager()
    delta, alpha, draws, n = 0.85, 0.1, 60, 400
    generator = torch.Generator().manual_seed(0)
    misses = certified = 0
    for _ in range(draws):
        rows = torch.randperm(population.num_inputs, generator=generator)[:n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CertificateWarning)
            pol = adaptix.guarantee(
                population.subset(rows), "confidence", early_accuracy=delta, alpha=alpha,
                plugins=manager,
            )  # fmt: skip
        if not pol.exits_early:
            continue
        certified += 1
        truth = adaptix.simulate(population, pol).early_accuracy
        misses += truth is not None and truth < delta - 0.005
    assert certified >= draws // 2  # the test has power here
    noise = 2 * math.sqrt(alpha * (1 - alpha) / draws)
    assert misses / draws <= alpha + noise


def test_too_little_data_sends_everything_to_the_last_exit_and_says_so() -> None:
    trace = synthetic_trace(20, 3, 4, seed=1)
    with pytest.warns(CertificateWarning, match="nothing certified"):
        pol = adaptix.guarantee(trace, "confidence", early_accuracy=0.99)
    assert not pol.exits_early
    assert pol.certificate is not None
    assert not pol.certificate.certified
    assert pol.certificate.threshold is None
    assert "every input goes to the last exit" in pol.certificate.statement()
    result = adaptix.simulate(trace, pol)
    assert bool((result.exit_index == trace.num_exits - 1).all())
    assert result.relative_cost == 1.0


def test_accuracy_drop_is_certified_against_the_final_exit() -> None:
    trace = synthetic_trace(4000, 5, 6, seed=5)
    for method in ("binomial", "hoeffding_bentkus"):
        pol = adaptix.guarantee(trace, "confidence", accuracy_drop=0.03, method=method)
        cert = pol.certificate
        assert cert is not None
        assert cert.certified
        assert cert.method == method
        result = adaptix.simulate(trace, pol)
        final = float((trace.logits[:, -1].argmax(-1) == trace.labels).double().mean())
        assert final - result.accuracy == pytest.approx(cert.estimate)
        assert cert.estimate <= 0.03
        assert result.relative_cost < 1.0  # it does exit early


class Margin(ExitCriterion):
    """A third-party criterion: exit when top-1 minus top-2 probability ≥ τ."""

    name = "test_margin"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        top = torch.softmax(logits.float(), dim=-1).topk(2, dim=-1).values
        return top[:, 0] - top[:, 1], state


class Doubt(ExitCriterion):
    """A third-party "le" criterion: exit when 1 − confidence ≤ τ."""

    name = "test_doubt"
    direction: ClassVar[Direction] = "le"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return 1 - torch.softmax(logits.float(), dim=-1).amax(dim=-1), state


def test_third_party_criteria_are_certified_like_the_built_ins(
    manager_with: Callable[..., AdaptixPluginManager],
) -> None:
    manager = manager_with(Margin, Doubt)
    trace = synthetic_trace(3000, 5, 6, seed=7)
    for name in ("test_margin", "test_doubt"):
        pol = adaptix.guarantee(trace, name, early_accuracy=0.85, plugins=manager)
        assert pol.name == name
        assert pol.certificate is not None
        assert pol.certificate.certified
        result = adaptix.simulate(trace, pol)
        assert result.early_accuracy >= pol.certificate.bound
        assert result.early_exit_rate > 0.0
    # "le": the strictest threshold is the smallest; the doubt and confidence policies agree.
    doubt = adaptix.guarantee(
        trace, "test_doubt", early_accuracy=0.85, plugins=manager,
        thresholds=[1 - t for t in torch.linspace(0, 1, 51, dtype=torch.float64).tolist()],
    )  # fmt: skip
    confidence = adaptix.guarantee(
        trace, "confidence", early_accuracy=0.85,
        thresholds=torch.linspace(0, 1, 51, dtype=torch.float64).tolist(),
    )  # fmt: skip
    assert doubt.threshold == pytest.approx(1 - confidence.threshold)


def test_a_certifier_answers_many_targets_like_guarantee() -> None:
    trace = synthetic_trace(2000, 4, 5, seed=2)
    certifier = Certifier(trace, "confidence")
    for delta in (0.7, 0.8, 0.9):
        one = adaptix.guarantee(trace, "confidence", early_accuracy=delta)
        assert certifier.early_accuracy(delta).threshold == one.threshold


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one target"),
        ({"early_accuracy": 0.9, "accuracy_drop": 0.01}, "exactly one target"),
        ({"early_accuracy": 1.5}, "early_accuracy in"),
        ({"early_accuracy": 0.0}, "early_accuracy in"),
        ({"early_accuracy": float("nan")}, "early_accuracy to be a finite"),
        ({"early_accuracy": "0.9"}, "to be a real number"),
        ({"accuracy_drop": -0.1}, "accuracy_drop in"),
        ({"early_accuracy": 0.9, "alpha": 0.0}, "alpha in"),
        ({"early_accuracy": 0.9, "alpha": True}, "alpha to be a real number"),
        ({"early_accuracy": 0.9, "method": "bogus"}, "method to be one of"),
        ({"early_accuracy": 0.9, "thresholds": []}, "at least one candidate"),
        ({"early_accuracy": 0.9, "thresholds": "0.5"}, "sequence of numbers"),
        ({"early_accuracy": 0.9, "thresholds": [0.5, 2.0]}, "threshold in"),
    ],
)
def test_bad_guarantee_arguments_are_validation_errors(kwargs: dict[str, Any], match: str):
    trace = synthetic_trace(100, 3, 4)
    with pytest.raises(ValidationError, match=match):
        adaptix.guarantee(trace, "confidence", **kwargs)


def test_guarantee_refuses_traces_it_cannot_certify_with() -> None:
    with pytest.raises(ValidationError, match="labelled calibration trace"):
        adaptix.guarantee(synthetic_trace(50, labelled=False), "confidence", early_accuracy=0.9)
    with pytest.raises(ValidationError, match="at least 2 exits"):
        adaptix.guarantee(synthetic_trace(50, 1, 3), "confidence", early_accuracy=0.9)
    with pytest.raises(ValidationError, match=r"adaptix\.Trace"):
        adaptix.guarantee("trace.pt", "confidence", early_accuracy=0.9)  # type: ignore[arg-type]
    with pytest.raises(adaptix.PluginError, match="unknown criterion"):
        adaptix.guarantee(synthetic_trace(50), "nope", early_accuracy=0.9)
    with pytest.raises(adaptix.CalibrationError, match="needs a calibration"):
        adaptix.guarantee(synthetic_trace(50), "pcee", early_accuracy=0.9)


# ------------------------------------------------------------------------------------ budget


def test_budget_returns_the_most_accurate_certified_threshold() -> None:
    trace = synthetic_trace(5000, 6, 6, seed=4)
    pol = adaptix.budget(trace, "confidence", relative_cost=0.5)
    cert = pol.certificate
    assert cert is not None
    assert cert.certified
    assert cert.target == "relative_cost"
    result = adaptix.simulate(trace, pol)
    assert result.relative_cost == pytest.approx(cert.estimate)
    assert cert.estimate <= cert.bound <= 0.5
    # No threshold certified within the budget is more accurate on these inputs.
    grid = type(pol.criterion).default_thresholds(200)
    frontier = adaptix.sweep(trace, "confidence", grid)
    within = [
        p.accuracy
        for p in frontier
        if p.relative_cost <= cert.estimate
        and hoeffding_bentkus_pvalue(p.relative_cost, 5000, 0.5) <= 0.05
    ]
    assert result.accuracy >= max(within) - 1e-12


def test_an_impossible_budget_is_uncertified_and_warned() -> None:
    trace = synthetic_trace(500, 4, 5)
    cheapest = float(trace.costs[0] / trace.costs[-1])
    with pytest.warns(CertificateWarning, match="nothing certified"):
        pol = adaptix.budget(trace, "confidence", relative_cost=cheapest / 2)
    assert pol.certificate is not None
    assert not pol.certificate.certified
    assert pol.exits_early  # the cheapest policy, marked uncertified
    with pytest.raises(ValidationError, match="relative_cost in"):
        adaptix.budget(trace, "confidence", relative_cost=1.5)


# ------------------------------------------------------------------------------- certificate


def test_a_certificate_round_trips_through_a_dict() -> None:
    pol = adaptix.guarantee(synthetic_trace(2000, 4, 5), "confidence", early_accuracy=0.8)
    assert pol.certificate is not None
    assert Certificate.from_dict(pol.certificate.to_dict()) == pol.certificate
    broken = {**pol.certificate.to_dict(), "target": "speed"}
    with pytest.raises(ValidationError, match="malformed certificate"):
        Certificate.from_dict(broken)
    with pytest.raises(ValidationError, match="fields"):
        Certificate.from_dict({"target": "early_accuracy"})
    assert "certified" in repr(pol)


def test_a_policy_that_never_exits_runs_the_whole_model_in_the_runner() -> None:
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
    heads = torch.nn.ModuleList(torch.nn.Linear(4, 3) for _ in range(3))
    model = adaptix.MultiExitModel(blocks, heads).eval()
    inputs, labels = torch.randn(32, 4), torch.randint(0, 3, (32,))
    trace = model.trace(inputs, labels, 32)
    with pytest.warns(CertificateWarning):
        pol = adaptix.guarantee(trace, "confidence", early_accuracy=0.99)
    for mode in ("compact", "lockstep"):
        out = adaptix.EarlyExitRunner(model, pol, mode=mode)(inputs)
        assert bool((out.exit_index == 2).all())
        assert torch.equal(out.exit_index, adaptix.simulate(trace, pol).exit_index)


# ---------------------------------------------------------------------------------- pcee_lcb


def test_pcee_lcb_exits_on_the_clopper_pearson_lower_bound() -> None:
    counts = torch.tensor([[0, 4, 100, 1000], [10, 30, 300, 764]])
    correct = torch.tensor([[0, 4, 93, 960], [5, 20, 250, 700]])
    calibration = adaptix.Calibration(counts, correct, 3)
    lcb = adaptix.policy("pcee_lcb", 0.9, calibration, alpha=0.05)
    bounds = lcb.criterion.accuracy
    expected = stats.beta.ppf(0.05, correct.numpy(), (counts - correct + 1).numpy())
    assert torch.isnan(bounds[0, 0])  # empty bin: undefined, never exits
    assert np.allclose(bounds[0, 1:].numpy(), expected[0, 1:])
    assert np.allclose(bounds[1].numpy(), expected[1])
    # 4 of 4 is 100 % accurate but a weak bound: pcee exits there at δ = 0.9, pcee_lcb does not.
    pcee = adaptix.policy("pcee", 0.9, calibration)
    assert float(pcee.criterion.accuracy[0, 1]) == 1.0
    assert float(bounds[0, 1]) < 0.9
    joint = adaptix.policy("pcee_lcb", 0.9, calibration, alpha=0.05, bonferroni=True)
    assert bool((joint.criterion.accuracy[:, 1:] <= bounds[:, 1:] + 1e-12).all())


@pytest.mark.parametrize("params", [{"alpha": 0.0}, {"alpha": 1.0}, {"alpha": "x"}, {"w": 1}])
def test_pcee_lcb_parameters_are_validated(params: dict[str, Any]) -> None:
    calibration = adaptix.calibrate(synthetic_trace(200))
    with pytest.raises(ValidationError, match="pcee_lcb"):
        adaptix.policy("pcee_lcb", 0.9, calibration, **params)


def test_pcee_lcb_is_never_looser_than_pcee() -> None:
    trace = synthetic_trace(2000, 5, 6, seed=9)
    calibration = adaptix.calibrate(trace.subset(slice(0, 1000)))
    test = trace.subset(slice(1000, 2000))
    for delta in (0.5, 0.7, 0.9):
        plain = adaptix.simulate(test, adaptix.policy("pcee", delta, calibration))
        bound = adaptix.simulate(test, adaptix.policy("pcee_lcb", delta, calibration))
        assert bool((bound.exit_index >= plain.exit_index).all())


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_any_trace_and_target_gives_a_sound_policy_or_an_adaptix_error(
    data: st.DataObject, traces: Callable[..., st.SearchStrategy[adaptix.Trace]]
) -> None:
    """Fuzz: random small traces, targets and α. Whatever comes back keeps its promise on the
    calibration inputs themselves (a certified early accuracy is at least its bound, which is a
    lower bound of the calibration estimate), or the call raises an AdaptixError."""
    trace = data.draw(traces(labelled=None, min_exits=1))
    target = data.draw(st.sampled_from(["early_accuracy", "accuracy_drop", "relative_cost"]))
    level = data.draw(st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, 0.5])))
    alpha = data.draw(st.sampled_from([0.05, 0.5, 0.0, 1.0, -1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificateWarning)
        try:
            if target == "relative_cost":
                pol = adaptix.budget(trace, "confidence", relative_cost=level, alpha=alpha)
            else:
                pol = adaptix.guarantee(trace, "confidence", alpha=alpha, **{target: level})
        except adaptix.AdaptixError:
            return
    cert = pol.certificate
    assert cert is not None
    assert 0 < cert.alpha < 1
    assert cert.n == trace.num_inputs
    result = adaptix.simulate(trace, pol)
    if not cert.certified:
        assert cert.threshold is None
        if target != "relative_cost":
            assert not pol.exits_early
            assert result.early_exit_rate == 0.0
        return
    assert pol.threshold == cert.threshold
    assert cert.early_exit_rate == pytest.approx(result.early_exit_rate)
    if target == "early_accuracy":
        assert result.early_accuracy == pytest.approx(cert.estimate)
        assert cert.bound <= cert.estimate + 1e-12
    elif target == "relative_cost":
        assert result.relative_cost == pytest.approx(cert.estimate)
        assert cert.estimate <= cert.bound <= level + 1e-12


def test_a_certified_policy_saves_and_loads_with_its_certificate_and_calibration(tmp_path):
    trace = synthetic_trace(3000, 5, 6, seed=8)
    calibration = adaptix.calibrate(trace.subset(slice(0, 1500)), "equal_mass", 8)
    cal = trace.subset(slice(1500, 3000))
    for pol in (
        adaptix.guarantee(cal, "pcee_lcb", early_accuracy=0.8, calibration=calibration, alpha=0.1),
        adaptix.budget(cal, "confidence", relative_cost=0.6),
        adaptix.policy("pcee_ws", 0.9, calibration, window=2),
    ):
        path = pol.save(tmp_path / "policies" / f"{pol.name}.json")
        loaded = adaptix.ExitPolicy.load(path)
        assert loaded.name == pol.name
        assert loaded.threshold == pol.threshold
        assert loaded.certificate == pol.certificate
        assert loaded.exits_early == pol.exits_early
        assert loaded.criterion.params == pol.criterion.params
        assert loaded.calibration == pol.calibration
        assert torch.equal(
            adaptix.simulate(trace, loaded).exit_index, adaptix.simulate(trace, pol).exit_index
        )


def test_an_uncertified_policy_still_never_exits_after_loading(tmp_path) -> None:
    with pytest.warns(CertificateWarning):
        pol = adaptix.guarantee(synthetic_trace(20, 3, 4), "confidence", early_accuracy=0.99)
    loaded = adaptix.ExitPolicy.load(pol.save(tmp_path / "never.json"))
    assert not loaded.exits_early
    assert not loaded.certificate.certified


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda text: text[: len(text) // 2], "could not be parsed"),
        (
            lambda text: text.replace('"threshold": ', '"threshold": 0.0001 + '),
            "could not be parsed",
        ),
        (lambda text: text.replace('"exits_early": true', '"exits_early": false'), "checksum"),
        (lambda text: text.replace('"adaptix.policy"', '"adaptix.trace"'), "adaptix.policy"),
        (lambda text: text.replace('"version": 2', '"version": 7'), "version"),
        (lambda text: "[]", "adaptix.policy"),
    ],
)
def test_a_corrupt_policy_file_is_a_validation_error(tmp_path, corrupt, match: str) -> None:
    pol = adaptix.guarantee(synthetic_trace(2000, 4, 5), "confidence", early_accuracy=0.8)
    path = pol.save(tmp_path / "policy.json")
    path.write_text(corrupt(path.read_text()))
    with pytest.raises(ValidationError, match=match):
        adaptix.ExitPolicy.load(path)
    with pytest.raises(ValidationError, match="could not be read"):
        adaptix.ExitPolicy.load(tmp_path / "missing.json")
