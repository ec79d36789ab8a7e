"""Tests of the ``margin`` criterion: adaptix's contract checks, then its own semantics."""

from __future__ import annotations

import pytest
import torch

import adaptix
from adaptix.testing import check_criterion, synthetic_trace


@pytest.fixture(scope="module")
def plugins() -> adaptix.plugins.AdaptixPluginManager:
    return adaptix.get_plugin_manager()


def test_margin_honours_the_criterion_contract(plugins) -> None:
    check_criterion("margin", plugins=plugins)


def test_margin_is_top1_minus_top2_probability(plugins) -> None:
    probabilities = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.2, 0.1, 0.7]])
    logits = probabilities.log().unsqueeze(1)  # [3 inputs, 1 exit, 3 classes]
    scores = adaptix.policy("margin", 0.5, plugins=plugins).scores(logits)
    expected = torch.tensor([[0.2], [0.0], [0.5]], dtype=torch.float64)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)


def test_a_single_class_has_margin_one(plugins) -> None:
    scores = adaptix.policy("margin", 1.0, plugins=plugins).scores(torch.randn(4, 2, 1))
    assert torch.equal(scores, torch.ones(4, 2, dtype=torch.float64))


def test_margin_exits_where_the_margin_reaches_the_threshold(plugins) -> None:
    trace = synthetic_trace(64, 3, 4, seed=5)
    top = torch.softmax(trace.logits.float(), dim=-1).topk(2, dim=-1).values
    margin = (top[..., 0] - top[..., 1]).double()
    threshold = float(margin[0, 0])  # an exact score: ">=" fires
    result = adaptix.simulate(trace, adaptix.policy("margin", threshold, plugins=plugins))
    fires = margin[:, :2] >= threshold
    expected = torch.where(fires.any(dim=1), fires.long().argmax(dim=1), 2)
    assert result.exit_index[0] == 0
    assert torch.equal(result.exit_index, expected)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_thresholds_outside_0_1_are_refused(plugins, threshold: float) -> None:
    with pytest.raises(adaptix.ValidationError, match="margin"):
        adaptix.policy("margin", threshold, plugins=plugins)
