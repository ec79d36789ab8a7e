"""`simulate` against the naive per-input reference of ``PCEE.md``, for every built-in criterion."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import adaptix
from adaptix import Calibration, CalibrationError, MultiExitModel, PluginError, ValidationError
from adaptix.components import ExitCriterion, ParamsModel
from adaptix.plugins import AdaptixPluginManager
from adaptix.testing import synthetic_trace

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Entropy is defined in exact arithmetic; the library computes it in float32, the reference in
#: float64, so decisions are compared only where no entropy lies this close to the threshold.
ENTROPY_TOLERANCE = 1e-5


def _trace(logits: list[list[list[float]]], labels: list[int] | None = None) -> adaptix.Trace:
    tensor = torch.tensor(logits, dtype=torch.float32)
    costs = torch.arange(1, tensor.shape[1] + 1, dtype=torch.float64)
    return adaptix.Trace(tensor, None if labels is None else torch.tensor(labels), costs)


@pytest.mark.parametrize("name", ["confidence", "entropy", "patience", "pcee", "pcee_ws"])
@SETTINGS
@given(data=st.data())
def test_simulate_matches_the_definitions(name, data, traces, naive, plugins) -> None:
    trace = data.draw(traces(labelled=None), label="trace")
    quantities = naive.quantities(trace)
    calibration = None
    params: dict[str, int] = {}
    exact: list[float] = []  # scores a threshold may hit exactly, to pin ">=" and "<="
    rule: Callable[[float, int, list], bool]
    if name in ("pcee", "pcee_ws"):
        held_out = data.draw(
            traces(num_exits=trace.num_exits, num_classes=trace.num_classes), label="held out"
        )
        bins = data.draw(st.integers(1, 12), label="bins")
        window = data.draw(st.integers(0, 3), label="window") if name == "pcee_ws" else 0
        params = {"window": window} if name == "pcee_ws" else {}
        calibration = adaptix.calibrate(held_out, bins=bins, plugins=plugins)
        table = naive.accuracy(*naive.tables(held_out, bins), window=window)
        exact = [a for row in table for a in row if a is not None]

        def rule(threshold: float, e: int, row: list) -> bool:
            accuracy = table[e][naive.bin_of(row[e].confidence, bins)]
            return accuracy is not None and accuracy >= threshold

    elif name == "confidence":
        exact = [q.confidence for row in quantities for q in row]

        def rule(threshold: float, e: int, row: list) -> bool:
            return row[e].confidence >= threshold

    elif name == "entropy":

        def rule(threshold: float, e: int, row: list) -> bool:
            return row[e].entropy <= threshold

    else:

        def rule(threshold: float, e: int, row: list) -> bool:
            return naive.streaks(row)[e] >= threshold

    if name == "patience":
        threshold: float = data.draw(st.integers(1, trace.num_exits + 1), label="threshold")
    else:
        options = st.floats(0.0, 1.0)
        if exact:
            options = options | st.sampled_from(exact)
        threshold = data.draw(options, label="threshold")

    pol = adaptix.policy(name, threshold, calibration, plugins=plugins, **params)
    result = adaptix.simulate(trace, pol)
    expected = naive.exits(quantities, lambda i, e, row: rule(threshold, e, row))

    decided = list(range(trace.num_inputs))
    if name == "entropy":
        decided = [
            i
            for i, row in enumerate(quantities)
            if all(abs(q.entropy - threshold) > ENTROPY_TOLERANCE for q in row[:-1])
        ]
    got = result.exit_index.tolist()
    assert result.exit_index.dtype == torch.int64
    assert [got[i] for i in decided] == [expected[i] for i in decided]
    if len(decided) < trace.num_inputs:
        return
    assert result.predictions.tolist() == [quantities[i][e].prediction for i, e in enumerate(got)]
    metrics = naive.metrics(trace, quantities, expected)
    assert result.accuracy == metrics["accuracy"]
    assert result.early_accuracy == metrics["early_accuracy"]
    assert result.exit_histogram.tolist() == metrics["exit_histogram"]
    assert result.relative_cost == pytest.approx(metrics["relative_cost"], rel=1e-12)
    assert result.mean_cost == pytest.approx(metrics["mean_cost"], rel=1e-12)
    assert result.early_exit_rate == pytest.approx(1.0 - metrics["exit_histogram"][-1])


def test_a_confidence_equal_to_the_threshold_exits(plugins) -> None:
    trace = _trace([[[2.0, 0.0, 0.0], [5.0, 0.0, 0.0]]], labels=[0])
    confidence = float(torch.softmax(torch.tensor([2.0, 0.0, 0.0]), dim=0).max())
    at = adaptix.simulate(trace, adaptix.policy("confidence", confidence, plugins=plugins))
    above = math.nextafter(confidence, 1.0)
    past = adaptix.simulate(trace, adaptix.policy("confidence", above, plugins=plugins))
    assert at.exit_index.tolist() == [0]
    assert past.exit_index.tolist() == [1]


def _calibration(counts: list[int], correct: list[int], exits: int = 2) -> Calibration:
    """Tables with the given bins at exit 0; later exits count the same inputs, all in bin 0."""
    rest = [[sum(counts)] + [0] * (len(counts) - 1)] * (exits - 1)
    return Calibration(torch.tensor([counts, *rest]), torch.tensor([correct, *rest]), 3)


def test_a_bin_accuracy_equal_to_delta_exits(plugins) -> None:
    # Confidence 1.0 at exit 0 lands in the last of 4 bins, whose accuracy is 3/4.
    calibration = _calibration([1, 0, 0, 4], [0, 0, 0, 3])
    trace = _trace([[[200.0, 0.0, 0.0], [200.0, 0.0, 0.0]]])
    exits = [
        adaptix.simulate(trace, adaptix.policy("pcee", delta, calibration, plugins=plugins))
        for delta in (0.75, math.nextafter(0.75, 1.0))
    ]
    assert [r.exit_index.tolist() for r in exits] == [[0], [1]]


def test_an_empty_bin_never_lets_an_input_exit_even_at_delta_zero(plugins) -> None:
    calibration = _calibration([4, 0, 0, 0], [4, 0, 0, 0])
    trace = _trace([[[200.0, 0.0, 0.0], [200.0, 0.0, 0.0]]])  # confidence 1.0: the empty bin 3
    pcee = adaptix.policy("pcee", 0.0, calibration, plugins=plugins)
    assert adaptix.simulate(trace, pcee).exit_index.tolist() == [1]
    # Pooled with 3 neighbours, bin 3 borrows bin 0's perfect accuracy; with 2 it stays empty.
    for window, exit_taken in ((3, 0), (2, 1)):
        smoothed = adaptix.policy("pcee_ws", 1.0, calibration, window=window, plugins=plugins)
        assert adaptix.simulate(trace, smoothed).exit_index.tolist() == [exit_taken]


def test_pcee_ws_pools_one_neighbour_by_default(plugins) -> None:
    calibration = _calibration([2, 2, 0, 0], [2, 0, 0, 0])
    trace = _trace([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # confidence 1/3: bin 1 of 4
    default = adaptix.policy("pcee_ws", 0.5, calibration, plugins=plugins)
    assert default.criterion.params.window == 1
    assert adaptix.simulate(trace, default).exit_index.tolist() == [0]  # (2 + 0) / (2 + 2)
    plain = adaptix.policy("pcee", 0.5, calibration, plugins=plugins)
    assert adaptix.simulate(trace, plain).exit_index.tolist() == [1]  # 0 / 2


def test_patience_counts_consecutive_equal_predictions(plugins) -> None:
    predictions = [0, 0, 1, 1, 1, 1]  # k = 0, 1, 0, 1, 2, 3
    logits = [[[3.0 if c == y else 0.0 for c in range(2)] for y in predictions]]
    trace = _trace(logits)
    exits = [
        adaptix.simulate(trace, adaptix.policy("patience", t, plugins=plugins)).exit_index.item()
        for t in (1, 2, 3)
    ]
    assert exits == [1, 4, 5]


def test_a_single_exit_trace_exits_there(plugins) -> None:
    trace = _trace([[[1.0, 0.0]], [[0.0, 1.0]]], labels=[0, 0])
    result = adaptix.simulate(trace, adaptix.policy("confidence", 0.0, plugins=plugins))
    assert result.exit_index.tolist() == [0, 0]
    assert result.accuracy == 0.5
    assert result.early_accuracy is None
    assert result.relative_cost == 1.0
    assert result.exit_histogram.tolist() == [1.0]


def test_unlabelled_traces_have_no_accuracy(plugins) -> None:
    trace = _trace([[[4.0, 0.0], [0.0, 4.0]]])
    result = adaptix.simulate(trace, adaptix.policy("confidence", 0.9, plugins=plugins))
    assert result.exit_index.tolist() == [0]
    assert (result.accuracy, result.early_accuracy) == (None, None)
    assert result.relative_cost == 0.5


def test_simulate_refuses_what_is_not_a_trace_or_a_policy(plugins) -> None:
    trace = _trace([[[1.0, 0.0], [0.0, 1.0]]])
    with pytest.raises(ValidationError, match=r"adaptix\.Trace"):
        adaptix.simulate(trace.logits, adaptix.policy("confidence", 0.5, plugins=plugins))
    with pytest.raises(ValidationError, match=r"adaptix\.ExitPolicy"):
        adaptix.simulate(trace, "confidence")


@pytest.mark.parametrize(("exits", "classes"), [(3, 3), (2, 4)])
def test_a_calibration_for_another_model_is_refused(plugins, exits, classes) -> None:
    calibration = adaptix.calibrate(synthetic_trace(32, exits, classes), plugins=plugins)
    trace = synthetic_trace(8, 2, 3)
    pol = adaptix.policy("pcee", 0.5, calibration, plugins=plugins)
    with pytest.raises(CalibrationError, match=f"{exits} exits and {classes} classes"):
        adaptix.simulate(trace, pol)


class DtypeScoresParams(ParamsModel):
    dtype: str  # a torch dtype name


class DtypeScores(ExitCriterion):
    """A third-party criterion that scores every row 1, in the dtype its parameter names."""

    name = "dtype_scores"
    Params = DtypeScoresParams
    params: DtypeScoresParams

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        dtype = getattr(torch, self.params.dtype)
        return torch.ones(logits.shape[0], dtype=dtype, device=logits.device), state


def _share_leaving_at_exit_0(via: str, dtype: str, manager: AdaptixPluginManager) -> float:
    """Run ``dtype_scores`` at threshold 0.5 through ``via``."""
    trace = synthetic_trace(6, 3, 4)
    pol = adaptix.policy("dtype_scores", 0.5, plugins=manager, dtype=dtype)
    if via == "simulate":
        return float(adaptix.simulate(trace, pol).exit_histogram[0])
    if via == "sweep":
        criteria = {"dtype_scores": {"dtype": dtype}}
        return adaptix.sweep(trace, criteria, [0.5], plugins=manager)[0].exit_histogram[0]
    torch.manual_seed(0)
    model = MultiExitModel(
        nn.ModuleList(nn.Linear(4, 4) for _ in range(3)),
        nn.ModuleList(nn.Linear(4, 4) for _ in range(3)),
    ).eval()
    output = adaptix.EarlyExitRunner(model, pol)(torch.randn(6, 4))
    return float((output.exit_index == 0).double().mean())


@pytest.mark.parametrize("via", ["simulate", "sweep", "runner"])
@pytest.mark.parametrize("dtype", ["complex64", "bool"])
def test_scores_that_are_not_real_numbers_are_a_plugin_error(manager_with, via, dtype) -> None:
    manager = manager_with(DtypeScores, name="dtype_plugin")
    with pytest.raises(PluginError, match=r"'dtype_scores' from plugin 'dtype_plugin'") as info:
        _share_leaving_at_exit_0(via, dtype, manager)
    assert f"torch.{dtype}" in str(info.value)
    assert "(an integer or floating dtype)" in str(info.value)


@pytest.mark.parametrize("via", ["simulate", "sweep", "runner"])
@pytest.mark.parametrize("dtype", ["int64", "float16", "float64"])
def test_integer_and_floating_scores_are_compared_as_numbers(manager_with, via, dtype) -> None:
    manager = manager_with(DtypeScores, name="dtype_plugin")
    assert _share_leaving_at_exit_0(via, dtype, manager) == 1.0  # 1 >= 0.5 at exit 0
