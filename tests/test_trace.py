"""`Trace`: validation of every field, save/load, `scaled` and `subset`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import adaptix
from adaptix import Trace, ValidationError
from adaptix.core.scores import confidence_and_prediction
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
        (torch.empty(4, 3, 5, device="meta"), "logits that hold data"),
    ],
    ids=["list", "2-d", "4-d", "int64", "empty", "meta-device"],
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
        (torch.zeros(4, dtype=torch.long, device="meta"), r"labels on the logits' device \(cpu\)"),
    ],
    ids=["too-large", "negative", "float", "short", "list", "other-device"],
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
        ([1.0, 2.0, 10**400], "numeric costs"),
    ],
    ids=["decreasing", "short", "negative", "nan", "zero", "strings", "too-large"],
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


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"seed": 3}, "'seed': 3"),
        ({3: "seed"}, "key type int"),
        ("seed=3", "mapping of strings to strings, got str"),
    ],
)
def test_metadata_that_is_not_strings_is_refused_at_construction(meta, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Trace(LOGITS, LABELS, COSTS, meta=meta)


def test_metadata_edited_into_non_strings_is_refused_at_save(tmp_path: Path) -> None:
    trace = Trace(LOGITS, LABELS, COSTS)
    trace.meta["seed"] = 3  # type: ignore[assignment]  # the mistake under test
    with pytest.raises(ValidationError, match="'seed': 3"):
        trace.save(tmp_path / "trace.pt")
    assert list(tmp_path.iterdir()) == []


class _Code:
    """Not a tensor: a file holding it needs code to load, which weights_only refuses."""


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"format": "adaptix.trace", "version": 1}, r"without \['logits', 'labels', 'costs'\]"),
        (
            {"format": "adaptix.trace", "version": 1, "logits": LOGITS, "labels": None},
            r"without \['costs'\]",
        ),
        (
            {
                "format": "adaptix.trace",
                "version": 1,
                "logits": LOGITS.tolist(),
                "labels": None,
                "costs": COSTS,
            },
            "logits as a torch.Tensor",
        ),
        (
            {
                "format": "adaptix.trace",
                "version": 1,
                "logits": LOGITS,
                "labels": None,
                "costs": COSTS,
                "meta": {"seed": 3},
            },
            "'seed': 3",
        ),
        (
            {
                "format": "adaptix.trace",
                "version": 1,
                "logits": LOGITS,
                "labels": [0, 1, 2, 3],
                "costs": COSTS,
            },
            "labels as a torch.Tensor",
        ),
        ({"format": "adaptix.trace", "version": 1, "logits": _Code()}, "could not be read"),
        ({"weight": torch.ones(2)}, "without the 'adaptix.trace' header"),
    ],
    ids=["no-fields", "no-costs", "list-logits", "meta-value", "list-labels", "code", "weights"],
)
def test_a_torch_file_that_is_not_a_valid_trace_is_refused(tmp_path, payload, message) -> None:
    path = tmp_path / "trace.pt"
    torch.save(payload, path)
    with pytest.raises(ValidationError, match=message):
        Trace.load(path)


@pytest.mark.parametrize(
    "content",
    [b"", bytes(range(256)) * 64, b'{"format": "adaptix.trace"}'],
    ids=["empty", "binary", "json"],
)
def test_a_file_that_is_not_a_torch_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "trace.pt"
    path.write_bytes(content)
    with pytest.raises(ValidationError, match="could not be read"):
        Trace.load(path)


def test_a_directory_is_not_a_trace_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="got a directory"):
        Trace.load(tmp_path)


def test_a_trace_file_without_meta_loads(tmp_path: Path) -> None:
    path = tmp_path / "trace.pt"
    payload = {"format": "adaptix.trace", "version": 1, "logits": LOGITS, "labels": None}
    torch.save({**payload, "costs": torch.tensor(COSTS)}, path)
    assert Trace.load(path).meta == {}


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


@pytest.mark.parametrize(
    "factor",
    [0.0, -1.0, float("inf"), float("nan"), 10**400, "2", None, True, torch.tensor([2.0])],
    ids=["zero", "negative", "inf", "nan", "10**400", "string", "none", "bool", "tensor"],
)
def test_scaled_refuses_a_bad_factor(factor: float) -> None:
    with pytest.raises(ValidationError, match="expected factor"):
        synthetic_trace(5, 2, 3).scaled(factor)


def test_scaled_takes_numpy_and_0d_tensor_factors() -> None:
    trace = synthetic_trace(5, 2, 3)
    for factor in (np.float32(2.0), torch.tensor(2.0), 2):
        assert torch.equal(trace.scaled(factor).logits, trace.logits * 2.0)


def test_scaled_refuses_a_factor_that_overflows_the_logits() -> None:
    trace = Trace(LOGITS.half(), LABELS, COSTS)
    with pytest.raises(ValidationError, match=r"keeps the torch\.float16 logits finite"):
        trace.scaled(10**30)
    assert torch.equal(trace.scaled(10**30 // 10**28).logits, LOGITS.half() * 100.0)


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


def test_subset_by_negative_indices_repeats_and_reversed_slices() -> None:
    trace = Trace(LOGITS, LABELS, COSTS)
    assert trace.subset(torch.tensor([-1, 0, 0])).labels.tolist() == [1, 0, 0]
    assert trace.subset(torch.tensor([3, 1], dtype=torch.int32)).labels.tolist() == [1, 4]
    assert trace.subset(slice(None, None, -1)).labels.tolist() == [1, 2, 4, 0]
    assert trace.subset(slice(3, 0, -2)).labels.tolist() == [1, 4]
    assert trace.subset(slice(-2, None)).labels.tolist() == [2, 1]


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (
            torch.tensor([0, 4]),
            r"indices in \[-4, 4\) \(the trace has 4 inputs\), got values from 0 to 4",
        ),
        (torch.tensor([-5]), r"indices in \[-4, 4\)"),
        (torch.tensor([0.0, 1.0]), "1-D integer index tensor, got a 1-D torch.float32"),
        (torch.tensor([[0, 1]]), "1-D integer index tensor, got a 2-D"),
        (torch.tensor(1), "1-D integer index tensor, got a 0-D"),
        (torch.tensor([True, False]), r"boolean mask of shape \[4\]"),
        ([0, 1], "a slice, an integer index tensor or a boolean mask, got list"),
        (2, "a slice, an integer index tensor or a boolean mask, got int"),
        (slice(None, None, 0), "non-zero step"),
        (slice("a", None), "slice of integers"),
        (slice(2, 2), "at least one input"),
    ],
    ids=[
        "too-large",
        "too-small",
        "float",
        "2-d",
        "0-d",
        "short-mask",
        "list",
        "int",
        "zero-step",
        "string-slice",
        "empty-slice",
    ],
)
def test_subset_refuses_a_bad_index(index, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Trace(LOGITS, LABELS, COSTS).subset(index)


def test_the_trace_is_what_simulate_reads(plugins) -> None:
    trace = Trace(LOGITS, LABELS, COSTS)
    result = adaptix.simulate(trace, adaptix.policy("confidence", 0.0, plugins=plugins))
    assert result.exit_index.tolist() == [0, 0, 0, 0]
    assert result.mean_cost == 1.0
    assert result.relative_cost == pytest.approx(1.0 / 3.5)


def test_concat_joins_the_inputs_of_traces_of_one_model() -> None:
    first, second = synthetic_trace(30, 3, 4, seed=0), synthetic_trace(20, 3, 4, seed=1)
    joined = Trace.concat([first, second.subset(torch.arange(20)).scaled(1.0)])
    assert torch.equal(joined.logits, torch.cat([first.logits, second.logits]))
    assert torch.equal(joined.labels, torch.cat([first.labels, second.labels]))
    assert joined.meta == first.meta
    assert torch.equal(joined.costs, first.costs)
    wide = Trace(second.logits.double(), second.labels, second.costs)
    assert Trace.concat([first, wide], meta={"a": "b"}).logits.dtype == torch.float64
    assert Trace.concat([first, wide], meta={"a": "b"}).meta == {"a": "b"}
    with pytest.raises(ValidationError, match="same model"):
        Trace.concat([first, synthetic_trace(5, 2, 4)])
    with pytest.raises(ValidationError, match="different costs"):
        Trace.concat([first, Trace(second.logits, second.labels, second.costs * 2)])
    with pytest.raises(ValidationError, match="all labelled or all unlabelled"):
        Trace.concat([first, synthetic_trace(5, 3, 4, labelled=False)])
    with pytest.raises(ValidationError, match="non-empty list"):
        Trace.concat([])
