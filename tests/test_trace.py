"""`Trace`: validation of every field, save/load, `scaled` and `subset`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adaptix
from adaptix import Trace, ValidationError
from adaptix.scores import confidence_and_prediction
from adaptix.testing import synthetic_trace

LOGITS = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 4, 2, 1])
COSTS = [1.0, 2.0, 3.5]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_a_valid_trace(dtype: torch.dtype) -> None:
    trace = Trace(LOGITS.to(dtype), LABELS, COSTS, meta={"split": "test"})
    assert (trace.num_inputs, trace.num_exits, trace.num_classes, len(trace)) == (4, 3, 5, 4)
    assert trace.costs.dtype == torch.float64
    assert trace.costs.tolist() == COSTS
    assert "N=4, E=3, C=5, labelled" in repr(trace)


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (LOGITS.tolist(), "as a torch.Tensor"),
        (LOGITS[0], r"shape \[N, E, C\]"),
        (LOGITS.unsqueeze(0), r"shape \[N, E, C\]"),
        (LOGITS.long(), "floating logits"),
        (torch.empty(0, 3, 5), "at least one input"),
    ],
    ids=["list", "2-d", "4-d", "int64", "empty"],
)
def test_malformed_logits_are_refused(logits, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Trace(logits, None, COSTS)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_are_refused_with_their_position(bad: float) -> None:
    logits = LOGITS.clone()
    logits[2, 1, 3] = bad
    with pytest.raises(
        ValidationError, match="1 NaN/inf values \\(first at input 2, exit 1, class 3"
    ):
        Trace(logits, LABELS, COSTS)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([0, 5, 2, 1]), r"labels in \[0, 5\), got values from 0 to 5"),
        (torch.tensor([0, -1, 2, 1]), r"labels in \[0, 5\)"),
        (torch.tensor([0.0, 1.0, 2.0, 1.0]), "int64 labels"),
        (torch.tensor([0, 1, 2], dtype=torch.long), r"labels of shape \[4\]"),
        ([0, 1, 2, 1], "labels as a torch.Tensor"),
    ],
    ids=["too-large", "negative", "float", "short", "list"],
)
def test_bad_labels_are_refused(labels, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Trace(LOGITS, labels, COSTS)


@pytest.mark.parametrize(
    ("costs", "message"),
    [
        ([3.0, 2.0, 4.0], "non-decreasing"),
        ([1.0, 2.0], r"costs of shape \[3\]"),
        ([-1.0, 2.0, 3.0], "non-negative"),
        ([1.0, float("nan"), 3.0], "finite"),
        ([0.0, 0.0, 0.0], "positive cost for the last exit"),
        (["a", "b", "c"], "numeric costs"),
    ],
    ids=["decreasing", "short", "negative", "nan", "zero", "strings"],
)
def test_bad_costs_are_refused(costs, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Trace(LOGITS, LABELS, costs)


@pytest.mark.parametrize("labelled", [True, False])
def test_save_and_load_round_trip(tmp_path: Path, labelled: bool) -> None:
    trace = Trace(LOGITS.half(), LABELS if labelled else None, COSTS, meta={"model": "m"})
    path = trace.save(tmp_path / "trace.pt")
    loaded = Trace.load(path)
    assert loaded.logits.dtype == torch.float16
    assert torch.equal(loaded.logits, trace.logits)
    assert (loaded.labels is None) == (not labelled)
    if labelled:
        assert torch.equal(loaded.labels, LABELS)
    assert torch.equal(loaded.costs, trace.costs)
    assert loaded.meta == {"model": "m"}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b"definitely not a torch file"), "could not be read"),
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "could not be read"),
        (lambda p: torch.save({"logits": LOGITS}, p), "without the 'adaptix.trace' header"),
        (lambda p: torch.save([1, 2], p), "without the 'adaptix.trace' header"),
        (lambda p: p.unlink(), "no trace file"),
    ],
    ids=["garbage", "truncated", "no-header", "a-list", "gone"],
)
def test_a_corrupt_file_is_refused(tmp_path: Path, write, message: str) -> None:
    path = Trace(LOGITS, LABELS, COSTS).save(tmp_path / "trace.pt")
    write(path)
    with pytest.raises(ValidationError, match=message):
        Trace.load(path)


def test_a_file_of_another_version_or_with_bad_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trace.pt"
    payload = {"format": "adaptix.trace", "version": 2, "logits": LOGITS, "labels": None}
    torch.save({**payload, "costs": torch.tensor(COSTS)}, path)
    with pytest.raises(ValidationError, match="trace format version 1, got 2"):
        Trace.load(path)
    torch.save({**payload, "version": 1, "costs": torch.tensor([3.0, 2.0, 1.0])}, path)
    with pytest.raises(ValidationError, match="non-decreasing"):
        Trace.load(path)


def test_scaled_sharpens_without_changing_predictions() -> None:
    trace = synthetic_trace(50, 3, 4)
    sharp = trace.scaled(3.0)
    confidence, prediction = confidence_and_prediction(trace.logits)
    sharp_confidence, sharp_prediction = confidence_and_prediction(sharp.logits)
    assert torch.equal(sharp_prediction, prediction)
    assert bool((sharp_confidence >= confidence).all())
    assert bool((sharp_confidence > confidence).any())
    assert torch.equal(sharp.logits, trace.logits * 3.0)
    assert torch.equal(sharp.labels, trace.labels)
    assert sharp.meta["logit_scale"] == "3.0"
    assert "logit_scale" not in trace.meta


@pytest.mark.parametrize("factor", [0.0, -1.0, float("inf"), float("nan")])
def test_scaled_refuses_a_bad_factor(factor: float) -> None:
    with pytest.raises(ValidationError, match="finite factor > 0"):
        synthetic_trace(5, 2, 3).scaled(factor)


def test_subset_by_slice_index_and_mask() -> None:
    trace = Trace(LOGITS, LABELS, COSTS, meta={"split": "test"})
    by_slice = trace.subset(slice(1, 3))
    by_index = trace.subset(torch.tensor([3, 0]))
    by_mask = trace.subset(LABELS > 1)
    assert torch.equal(by_slice.logits, LOGITS[1:3])
    assert by_slice.labels.tolist() == [4, 2]
    assert by_index.labels.tolist() == [1, 0]
    assert torch.equal(by_index.logits[0], LOGITS[3])
    assert by_mask.labels.tolist() == [4, 2]
    assert by_mask.meta == {"split": "test"}
    assert torch.equal(by_mask.costs, trace.costs)
    assert trace.subset(slice(0, 2)).num_inputs == 2
    unlabelled = Trace(LOGITS, None, COSTS).subset(slice(0, 1))
    assert unlabelled.labels is None
    with pytest.raises(ValidationError, match="at least one input"):
        trace.subset(LABELS > 10)


def test_the_trace_is_what_simulate_reads(plugins) -> None:
    trace = Trace(LOGITS, LABELS, COSTS)
    result = adaptix.simulate(trace, adaptix.policy("confidence", 0.0, plugins=plugins))
    assert result.exit_index.tolist() == [0, 0, 0, 0]
    assert result.mean_cost == 1.0
    assert result.relative_cost == pytest.approx(1.0 / 3.5)
