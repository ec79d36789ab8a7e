"""A calibration owns its binning: its edges, the one bin lookup, ``equal_mass``, and every reader
of the bins (criteria, `ExitDecider`, the runner) agreeing on it.

The lookups are checked against brute force: for equal-width bins, ``PCEE.md``'s float32 rule
written in numpy; for edges, a float64 ``searchsorted`` of each confidence among the edges.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import adaptix
from adaptix import Calibration, CalibrationError, EarlyExitRunner, MultiExitModel
from adaptix.core.calibration import count_bins
from adaptix.core.scores import bin_edges, bin_index, confidence, float32_edges
from adaptix.kernels import ExitDecider, exit_decision_reference
from adaptix.testing import synthetic_trace

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAN = math.nan


def _float32(value: float) -> float:
    return float(np.float32(value))


def _neighbours(value: float) -> list[float]:
    """``value`` rounded to float32, and the float32 values one step below and above it."""
    rounded = np.float32(value)
    return [
        float(np.nextafter(rounded, np.float32(-1.0))),
        float(rounded),
        float(np.nextafter(rounded, np.float32(2.0))),
    ]


def _one_bin_holds_all(edges: Tensor) -> Calibration:
    """A calibration with these edges ``[E, M + 1]`` whose one input sits in the last bin (which
    is never of zero width), so that any edges are consistent with its tables."""
    exits, bins = edges.shape[0], edges.shape[1] - 1
    counts = torch.zeros(exits, bins, dtype=torch.long)
    counts[:, -1] = 1
    return Calibration(counts, counts, 2, edges=edges)


def _naive_equal_width(values: list[float], bins: int) -> list[int]:
    """``PCEE.md``: bin(c) = min(floor(c · M), M - 1) with the product in float32; NaN: M."""
    result = []
    for value in values:
        if math.isnan(value):
            result.append(bins)
        else:
            product = np.float32(value) * np.float32(bins)
            result.append(max(min(math.floor(product), bins - 1), 0))
    return result


def _naive_edges(values: list[float], edges: list[float]) -> list[int]:
    """The bin m with edges[m] <= c < edges[m + 1] (last closed), by float64 searchsorted."""
    interior = np.array(edges[1:-1], dtype=np.float64)
    found = np.searchsorted(interior, np.array(values, dtype=np.float64), side="right")
    return [len(edges) - 1 if math.isnan(v) else int(b) for v, b in zip(values, found, strict=True)]


# --------------------------------------------------------------------------- the bin lookup


@SETTINGS
@given(data=st.data())
def test_equal_width_lookup_is_the_contract_rule(data: st.DataObject) -> None:
    """Equal-width calibrations look bins up exactly as `adaptix.core.scores.bin_index`: c = 0 and
    1, c on and one float32 step around every edge k / M, NaN, and anything in [0, 1]."""
    bins = data.draw(st.sampled_from([1, 2, 3, 7, 10, 13, 64, 100]), label="bins")
    on_edges = [v for k in range(bins + 1) for v in _neighbours(k / bins) if 0 <= v <= 1]
    values = data.draw(
        st.lists(st.sampled_from([*on_edges, NAN]) | st.floats(0.0, 1.0, width=32), min_size=1),
        label="confidences",
    )
    counts = torch.zeros(2, bins, dtype=torch.long)
    counts[:, 0] = 1
    calibration = Calibration(counts, counts, 2)
    assert calibration.equal_width
    assert torch.equal(calibration.float32_edges(1), bin_edges(bins))
    c = torch.tensor(values, dtype=torch.float32)
    expected = _naive_equal_width(values, bins)
    for e in range(2):
        got = calibration.bin_index(c, e)
        assert got.dtype == torch.int64
        assert got.tolist() == bin_index(c, bins).tolist() == expected
        # The decision's lookup (bucketize against exact float32 edges) agrees.
        assert bin_index(c, bins, calibration.float32_edges(e)).tolist() == expected


@st.composite
def _edges_and_confidences(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    """Non-decreasing float64 edges from 0 to 1 (repeats, values float32 cannot hold and values
    it can), and float32 confidences on, around and between them, with 0, 1 and NaN."""
    bins = draw(st.integers(1, 12))
    edge = st.floats(0.0, 1.0) | st.sampled_from([0.0, 0.1, 0.2, 0.25, 1 / 3, 0.5, 1.0])
    interior = sorted(draw(st.lists(edge, min_size=bins - 1, max_size=bins - 1)))
    if len(interior) >= 2 and draw(st.booleans()):
        interior[1] = interior[0]  # a bin of zero width
    edges = [0.0, *interior, 1.0]
    near = [v for e in edges for v in _neighbours(e) if 0 <= v <= 1]
    values = draw(
        st.lists(st.sampled_from([*near, NAN]) | st.floats(0.0, 1.0, width=32), min_size=1)
    )
    return edges, values


@SETTINGS
@given(case=_edges_and_confidences())
def test_edge_lookup_is_a_float64_searchsorted(case: tuple[list[float], list[float]]) -> None:
    """Bins with edges: exactly float64 ``searchsorted`` among the edges, which is also the
    ``searchsorted`` among the float32 edges of the lookup (rounded up: exact for float32 c)."""
    edges, values = case
    bins = len(edges) - 1
    calibration = _one_bin_holds_all(torch.tensor([edges, edges], dtype=torch.float64))
    c = torch.tensor(values, dtype=torch.float32)
    expected = _naive_edges(values, edges)
    lookup = calibration.float32_edges(1)
    assert lookup.dtype == torch.float32
    assert lookup.shape == (bins,)
    assert lookup[-1] == math.inf
    on_float32_edges = _naive_edges(values, [0.0, *lookup[:-1].double().tolist(), 1.0])
    if not calibration.equal_width:  # edges k / M are looked up by PCEE.md's float32 rule
        assert calibration.bin_index(c, 1).tolist() == expected == on_float32_edges
    assert calibration.bin_index(c, 0).tolist() == calibration.bin_index(c, 1).tolist()


def test_edges_of_k_over_m_are_the_equal_width_bins() -> None:
    """Edges k / M given explicitly mean equal-width bins: the same lookup, file and checksum."""
    counts = torch.tensor([[1, 2, 3], [3, 2, 1]])
    implicit = Calibration(counts, counts, 4)
    explicit = Calibration(counts, counts, 4, edges=torch.arange(4).double().repeat(2, 1) / 3)
    assert explicit.equal_width
    assert explicit == implicit
    assert explicit.checksum == implicit.checksum
    assert torch.equal(implicit.edges, explicit.edges)
    assert implicit.edges.dtype == torch.float64
    assert implicit.edges.tolist()[0] == [0.0, 1 / 3, 2 / 3, 1.0]


def test_nan_confidences_get_no_bin() -> None:
    """NaN (an undefined softmax) gets bin M, for both kinds of bins (it was bin 0 before: the
    float-to-int conversion of NaN, clamped)."""
    c = torch.tensor([NAN, 0.0, 1.0])
    assert bin_index(c, 10).tolist() == [10, 0, 9]
    quantiles = _one_bin_holds_all(torch.tensor([[0.0, 0.3, 0.6, 1.0]], dtype=torch.float64))
    assert quantiles.bin_index(c, 0).tolist() == [3, 0, 2]


@pytest.mark.parametrize("exit_index", [-1, 2, 1.0, True, "0"])
def test_an_exit_the_calibration_lacks_is_refused(exit_index: object) -> None:
    calibration = Calibration([[1, 1], [0, 2]], [[1, 1], [0, 1]], 2)
    with pytest.raises(CalibrationError, match=r"exit_index to be an integer"):
        calibration.bin_index(torch.zeros(3), exit_index)  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(CalibrationError, match=r"exit_index to be an integer"):
        calibration.float32_edges(exit_index)  # type: ignore[arg-type]  # deliberately wrong


def test_float32_edges_round_up() -> None:
    """0.1 and 1/3 are not float32 values: their lookup entries are the next float32 above."""
    edges = torch.tensor([0.0, 0.1, 1 / 3, 0.5, 1.0], dtype=torch.float64)
    lookup = float32_edges(edges)
    assert lookup.tolist()[2:] == [0.5, math.inf]
    for entry, edge in zip(lookup[:2].tolist(), (0.1, 1 / 3), strict=True):
        assert entry >= edge
        assert float(np.nextafter(np.float32(entry), np.float32(0.0))) < edge


# ------------------------------------------------------------------------- edges: the rules


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([[0.0, 0.5, 1.0]], r"'edges' of shape \[E, M \+ 1\] = \[2, 3\]"),
        ([[0.0, 1.0], [0.0, 1.0]], r"= \[2, 3\] .*got \[2, 2\]"),
        ([[0.0, 0.5, 1.0], [0.1, 0.5, 1.0]], "from 0 to 1.*got 0.1 to 1.0 at exit 1"),
        ([[0.0, 0.5, 1.0], [0.0, 0.5, 0.9]], "from 0 to 1.*got 0.0 to 0.9 at exit 1"),
        ([[0.0, 0.7, 0.5], [0.0, 0.5, 1.0]], "from 0 to 1.*got 0.0 to 0.5 at exit 0"),
        ([[0.0, 1.5, 1.0], [0.0, 0.5, 1.0]], r"non-decreasing.*1.5 > .* = 1.0 at exit 0, m = 1"),
        ([[0.0, NAN, 1.0], [0.0, 0.5, 1.0]], "finite 'edges'"),
        ([[True, True, True], [True, True, True]], "'edges' as real numbers"),
        ([["0", "0.5", "1"]] * 2, "'edges' as a tensor"),
    ],
    ids=[
        "one-exit",
        "too-few",
        "from-0.1",
        "to-0.9",
        "ends-at-0.5",
        "decreasing",
        "nan",
        "bool",
        "strings",
    ],
)
def test_bad_edges_are_refused(edges: object, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        Calibration([[1, 1], [0, 2]], [[1, 1], [0, 1]], 2, edges=edges)  # type: ignore[arg-type]  # deliberately wrong


def test_an_input_in_a_bin_of_zero_width_is_refused() -> None:
    edges = [[0.0, 0.5, 0.5, 1.0]]
    Calibration([[1, 0, 1]], [[1, 0, 0]], 2, edges=edges)  # type: ignore[arg-type]  # a list
    with pytest.raises(CalibrationError, match="no input in a bin of zero width, got 2 in bin 1"):
        Calibration([[0, 2, 0]], [[0, 1, 0]], 2, edges=edges)  # type: ignore[arg-type]  # a list
    # The last bin is closed at 1: from a lower edge of 1 it holds the confidences of exactly 1.
    Calibration([[0, 0, 4]], [[0, 0, 4]], 2, edges=[[0.0, 1.0, 1.0, 1.0]])  # type: ignore[arg-type]  # a list


# ------------------------------------------------------------------------ files and merging


V1_FILE = (
    '{"bins": 3, "confidence_sum": [[0.25, 1.5, 1.875], [0.0, 1.0, 3.75]], "correct": '
    '[[0, 2, 2], [0, 1, 4]], "counts": [[1, 3, 2], [0, 2, 4]], "format": '
    '"adaptix.calibration", "meta": {"model": "tiny"}, "method": "reliability", '
    '"num_classes": 3, "num_exits": 2, "sha256": '
    '"bcd80457a9b77fa6093bb0eb35ef2056ef40bd2dfc8615106c48f9c26d6768dc", "version": 1}'
)


def test_a_version_1_file_loads_as_equal_width_bins(tmp_path: Path) -> None:
    """A file written by adaptix before edges existed (verbatim): equal-width bins."""
    path = tmp_path / "v1.json"
    path.write_text(V1_FILE)
    loaded = Calibration.load(path, num_exits=2, num_classes=3)
    assert loaded.equal_width
    assert loaded.counts.tolist() == [[1, 3, 2], [0, 2, 4]]
    assert loaded.confidence_sum.tolist() == [[0.25, 1.5, 1.875], [0.0, 1.0, 3.75]]
    assert loaded.meta == {"model": "tiny"}
    assert loaded.edges.tolist() == [[0.0, 1 / 3, 2 / 3, 1.0]] * 2
    c = torch.tensor([0.0, 1 / 3, 0.5, 1.0])
    assert torch.equal(loaded.bin_index(c, 1), bin_index(c, 3))
    # Saved again, it is a version-2 file that loads to the same calibration.
    again = Calibration.load(loaded.save(tmp_path / "v2.json"))
    assert again == loaded
    assert json.loads((tmp_path / "v2.json").read_text())["version"] == 3


def test_a_version_1_file_with_edges_added_is_corrupt(tmp_path: Path) -> None:
    """Version 1's checksum covers no edges: edges slipped into such a file break it."""
    document = json.loads(V1_FILE)
    document["edges"] = [[0.0, 0.1, 0.2, 1.0]] * 2
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(document))
    assert Calibration.load(path).equal_width  # ignored: not part of a version-1 file
    document["version"] = 2
    path.write_text(json.dumps(document))
    with pytest.raises(CalibrationError, match="checksum mismatch"):
        Calibration.load(path)


def test_edges_are_saved_exactly_and_equal_width_ones_as_null(tmp_path: Path, plugins) -> None:
    trace = synthetic_trace(300, 3, 4, seed=5)
    quantiles = adaptix.calibrate(trace, "equal_mass", 7, plugins=plugins)
    width = adaptix.calibrate(trace, bins=7, plugins=plugins)
    for calibration in (quantiles, width):
        path = calibration.save(tmp_path / f"{calibration.method}.json")
        loaded = Calibration.load(path)
        assert loaded == calibration
        assert torch.equal(loaded.edges, calibration.edges)
        assert loaded.equal_width == calibration.equal_width
        stored = json.loads(path.read_text())["edges"]
        assert stored == (None if calibration.equal_width else calibration.edges.tolist())
    assert not quantiles.equal_width
    assert (
        quantiles.checksum
        != Calibration(
            quantiles.counts,
            quantiles.correct,
            4,
            confidence_sum=quantiles.confidence_sum,
            method="equal_mass",
            meta=quantiles.meta,
        ).checksum
    )  # the edges are part of the content


def test_a_signed_file_with_bad_edges_is_refused(tmp_path: Path, plugins) -> None:
    calibration = adaptix.calibrate(synthetic_trace(50, 2, 3), "equal_mass", 4, plugins=plugins)
    path = calibration.save(tmp_path / "calibration.json")
    document = json.loads(path.read_text())
    for edges, message in (
        ([[0.0, 0.6, 0.5, 0.7, 1.0]] * 2, "non-decreasing"),
        ([[0.0, 0.5, 1.0]] * 2, r"'edges' of shape \[E, M \+ 1\] = \[2, 5\]"),
        ([["0", 0.2, 0.5, 0.7, 1.0]] * 2, "'edges' in .* rows of numbers, got the entry '0'"),
        ("none", "'edges' in .* as a list of lists of numbers, got str"),
    ):
        payload = {**document, "edges": edges}
        del payload["sha256"], payload["format"], payload["version"]
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        signed = {**document, "edges": edges, "sha256": hashlib.sha256(canonical).hexdigest()}
        path.write_text(json.dumps(signed))
        with pytest.raises(CalibrationError, match=message):
            Calibration.load(path)


def test_calibrations_merge_only_with_identical_edges() -> None:
    counts = [[1, 1], [0, 2]]
    first = Calibration(counts, counts, 2, edges=[[0.0, 0.4, 1.0], [0.0, 0.6, 1.0]])  # type: ignore[arg-type]  # a list
    same = Calibration(counts, counts, 2, edges=first.edges.clone())
    assert (first + same).counts.tolist() == [[2, 2], [0, 4]]
    assert torch.equal((first + same).edges, first.edges)
    other = Calibration(counts, counts, 2, edges=[[0.0, 0.4, 1.0], [0.0, 0.7, 1.0]])  # type: ignore[arg-type]  # a list
    with pytest.raises(CalibrationError, match=r"same bin edges .*exit 1, edge 1: 0.6 and 0.7"):
        first + other
    with pytest.raises(CalibrationError, match="same bin edges"):
        first + Calibration(counts, counts, 2)  # equal width: other edges


# ------------------------------------------------------------------------------- equal_mass


def test_equal_mass_bins_hold_equal_counts(plugins) -> None:
    trace = synthetic_trace(600, 4, 5, seed=3)
    calibration = adaptix.calibrate(trace, "equal_mass", 12, plugins=plugins)
    assert calibration.method == "equal_mass"
    assert calibration.counts.tolist() == [[50] * 12] * 4
    ranked = confidence(trace.logits).sort(dim=0).values.t().double()
    assert torch.equal(calibration.edges[:, 1:-1], ranked[:, 50:600:50])
    # Equal-width bins of the same trace are far from equal.
    assert adaptix.calibrate(trace, bins=12, plugins=plugins).counts.max() > 100


@SETTINGS
@given(data=st.data())
def test_equal_mass_counts_every_input_in_its_quantile_bin(data, traces, plugins) -> None:
    """Any trace (ties and confidences of 1 included): the M bins asked for, edges at the
    confidences ranked ⌊k·N / M⌋, each input counted in the bin the brute-force lookup gives,
    about N / M per bin where no two confidences tie, and nothing in a bin of zero width."""
    trace = data.draw(traces(), label="trace")
    bins = data.draw(st.integers(1, 12), label="bins")
    result = adaptix.calibrate(trace, "equal_mass", bins, plugins=plugins)
    assert result.bins == bins
    assert result.num_inputs == trace.num_inputs
    top = confidence(trace.logits)
    n = trace.num_inputs
    for e in range(trace.num_exits):
        ranked = sorted(top[:, e].tolist())
        edges = result.edges[e].tolist()
        assert edges[1:-1] == [ranked[k * n // bins] for k in range(1, bins)]
        found = _naive_edges(top[:, e].tolist(), edges)
        assert result.counts[e].tolist() == [found.count(m) for m in range(bins)]
        if len(set(ranked)) == n:
            assert max(result.counts[e].tolist()) - min(result.counts[e].tolist()) <= 1


@SETTINGS
@given(data=st.data())
def test_equal_mass_shards_merge_when_counted_with_the_same_edges(data, traces, plugins) -> None:
    """Fit the edges on one shard, count the other with them: the sum is the count of both."""
    first = data.draw(traces(), label="first shard")
    second = data.draw(
        traces(num_exits=first.num_exits, num_classes=first.num_classes), label="second shard"
    )
    bins = data.draw(st.integers(1, 8), label="bins")
    fitted = adaptix.calibrate(first, "equal_mass", bins, plugins=plugins)
    counted = adaptix.calibrate(second, "equal_mass", bins, plugins=plugins, edges=fitted.edges)
    both = adaptix.Trace(
        torch.cat([first.logits.double(), second.logits.double()]),
        torch.cat([first.labels, second.labels]),  # type: ignore[list-item]  # labelled traces
        first.costs,
    )
    whole = count_bins(both, bins, edges=fitted.edges, method="equal_mass")
    merged = fitted + counted
    assert torch.equal(merged.counts, whole.counts)
    assert torch.equal(merged.correct, whole.correct)
    assert torch.equal(merged.edges, fitted.edges)
    assert merged.method == "equal_mass"


@pytest.mark.parametrize("form", ["tensor", "numpy", "lists"])
def test_equal_mass_counts_with_given_edges_in_any_form(form: str, plugins) -> None:
    trace = synthetic_trace(80, 2, 3, seed=1)
    fitted = adaptix.calibrate(trace, "equal_mass", 5, plugins=plugins)
    given_edges = {
        "tensor": fitted.edges,
        "numpy": fitted.edges.numpy(),
        "lists": fitted.edges.tolist(),
    }[form]
    again = adaptix.calibrate(trace, "equal_mass", 5, plugins=plugins, edges=given_edges)
    assert again == fitted


def test_equal_mass_refuses_edges_for_other_bins(plugins) -> None:
    trace = synthetic_trace(80, 2, 3, seed=1)
    fitted = adaptix.calibrate(trace, "equal_mass", 5, plugins=plugins)
    with pytest.raises(CalibrationError, match=r"= \[2, 7\] .*got \[2, 6\]"):
        adaptix.calibrate(trace, "equal_mass", 6, plugins=plugins, edges=fitted.edges)
    with pytest.raises(CalibrationError, match="labelled trace"):
        adaptix.calibrate(synthetic_trace(8, 2, 3, labelled=False), "equal_mass", plugins=plugins)


def test_calibrating_an_undefined_softmax_is_refused(plugins) -> None:
    """float64 logits beyond float32's range: no float32 softmax, no bin to count it in."""
    logits = torch.zeros(3, 2, 2, dtype=torch.float64)
    logits[1, 1, 0] = 1e39
    trace = adaptix.Trace(logits, torch.zeros(3, dtype=torch.long), [1.0, 2.0])
    for method in ("reliability", "equal_mass"):
        with pytest.raises(CalibrationError, match="float32 softmax is defined, got 1 input-exits"):
            adaptix.calibrate(trace, method, 4, plugins=plugins)


# ------------------------------------------------------------- every reader agrees on the bins


CALIBRATION_TRACE = synthetic_trace(2000, 4, 6, seed=11)


@pytest.fixture(scope="module")
def calibrations() -> dict[str, Calibration]:
    """Both built-in binnings of `CALIBRATION_TRACE`."""
    manager = adaptix.get_plugin_manager()
    return {
        "equal_width": adaptix.calibrate(CALIBRATION_TRACE, bins=10, plugins=manager),
        "equal_mass": adaptix.calibrate(CALIBRATION_TRACE, "equal_mass", 10, plugins=manager),
    }


@pytest.mark.parametrize("criterion", ["pcee", "pcee_ws", "pcee_lcb"])
@pytest.mark.parametrize("binning", ["equal_width", "equal_mass"])
def test_nan_confidences_never_exit_through_the_score(
    calibrations: dict[str, Calibration], binning: str, criterion: str
) -> None:
    """A NaN confidence scores NaN, even where bin 0 would let inputs exit at δ = 0."""
    policy = adaptix.policy(criterion, 0.0, calibrations[binning])
    logits = torch.tensor([[NAN, 0.0, 0.0, 0.0, 0.0, 0.0], [9.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    score, _ = policy.score(logits, 0, None)
    assert math.isnan(score[0])
    assert policy.fires(score).tolist() == [False, True]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_criterion_decider_and_reference_decide_alike(
    calibrations: dict[str, Calibration], data: st.DataObject
) -> None:
    """``PCEE.score`` (simulation's path), `ExitDecider` with the calibration's edges (the
    runner's) and the reference (the kernel's spec) exit the same rows: drawn logits, and rows
    of the calibration trace whose confidences are exactly the equal-mass edges."""
    binning = data.draw(st.sampled_from(sorted(calibrations)), label="binning")
    calibration = calibrations[binning]
    name = data.draw(st.sampled_from(["pcee", "pcee_ws", "pcee_lcb"]), label="criterion")
    table_values = adaptix.policy(name, 0.0, calibration).criterion.fused_table(0)
    assert table_values is not None
    defined = sorted({v for v in table_values.tolist() if not math.isnan(v)} | {0.5})
    delta = data.draw(st.sampled_from(defined) | st.floats(0.0, 1.0), label="δ")
    policy = adaptix.policy(name, delta, calibration)
    exit_index = data.draw(st.integers(0, calibration.num_exits - 1), label="exit")
    rows = data.draw(
        st.lists(
            st.lists(st.sampled_from([-1e9, -2.0, 0.0, 0.5, 3.0, 8.0]), min_size=6, max_size=6),
            min_size=1,
            max_size=12,
        ),
        label="logits",
    )
    top = confidence(CALIBRATION_TRACE.logits[:, exit_index])
    on_edges = torch.isin(top.double(), calibrations["equal_mass"].edges[exit_index]).nonzero()
    picked = data.draw(st.lists(st.sampled_from(on_edges.flatten().tolist())), label="on edges")
    logits = torch.cat([torch.tensor(rows), CALIBRATION_TRACE.logits[picked, exit_index].float()])
    score, _ = policy.score(logits, exit_index, None)
    by_score = policy.fires(score)
    table = policy.criterion.fused_table(exit_index)
    edges = None if calibration.equal_width else calibration.edges[exit_index]
    decider = ExitDecider(delta, kind="table", table=table, edges=edges)
    reference = exit_decision_reference(logits, delta, kind="table", table=table, edges=edges)
    assert torch.equal(decider(logits)[0], by_score)
    assert torch.equal(reference.exit_mask, by_score)
    bins = calibration.bin_index(confidence(logits), exit_index)
    by_bins = table.float()[bins]  # the same bins: NaN where a bin is empty
    assert torch.equal(reference.score.nan_to_num(-1.0), by_bins.nan_to_num(-1.0))


# ----------------------------------------------------------------------- runner == simulate


MARGIN = 1e-4  # decisions of the agreement rows stay this far from every float32 boundary


class _Residual(nn.Module):
    """x + tanh(Wx) / 2: each block moves the features a little."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.5 * torch.tanh(self.linear(x))


def _tiny_model(seed: int) -> MultiExitModel:
    """Four residual blocks, each exit the same linear head at a growing scale: the early exits
    approach the last one's prediction, the more so the more confident they are."""
    torch.manual_seed(seed)
    width, classes = 16, 5
    shared = nn.Linear(width, classes)
    heads = nn.ModuleList()
    for scale in (1.0, 1.5, 2.0, 3.0):
        head = nn.Linear(width, classes)
        with torch.no_grad():
            head.weight.copy_(shared.weight * scale)
            head.bias.copy_(shared.bias * scale)
        heads.append(head)
    blocks = nn.ModuleList(_Residual(width) for _ in range(4))
    return MultiExitModel(blocks, heads).eval()


def _clear_rows(trace: adaptix.Trace, calibration: Calibration, count: int) -> Tensor:
    """The first ``count`` inputs whose confidences sit MARGIN away from every edge and whose
    top two probabilities differ by MARGIN, at every exit."""
    probs = torch.softmax(trace.logits.float(), dim=-1)
    top2 = probs.topk(2, dim=-1).values
    gaps = (top2[..., 0].double().unsqueeze(-1) - calibration.edges.unsqueeze(0)).abs()
    clear = (top2[..., 0] - top2[..., 1] > MARGIN) & (gaps.amin(dim=-1) > MARGIN)
    rows = clear.all(dim=1).nonzero().squeeze(1)
    assert rows.numel() >= count
    return rows[:count]


@pytest.mark.parametrize("criterion", ["pcee", "pcee_ws", "pcee_lcb"])
def test_runner_exits_where_simulate_says_with_equal_mass_bins(criterion: str) -> None:
    model = _tiny_model(seed=0)
    generator = torch.Generator().manual_seed(1)
    calibration_inputs = torch.randn(3000, 16, generator=generator) * 2
    inputs = torch.randn(2000, 16, generator=generator) * 2
    with torch.no_grad():  # labels: the final exit's prediction, which early exits approach
        labels = model.trace(calibration_inputs).logits[:, -1].argmax(dim=-1)
    calibration = adaptix.calibrate(model.trace(calibration_inputs, labels), "equal_mass", 8)
    assert not calibration.equal_width
    trace = model.trace(inputs)
    rows = _clear_rows(trace, calibration, 200)
    trace, inputs = trace.subset(rows), inputs[rows]
    params = {"alpha": 0.2} if criterion == "pcee_lcb" else {}
    base = adaptix.policy(criterion, 0.5, calibration, **params)
    spread = None
    for delta in (0.8, 0.7, 0.9, 0.6, 0.95):
        candidate = base.with_threshold(delta)
        exits = set(adaptix.simulate(trace, candidate).exit_index.tolist()) - {3}
        if len(exits) >= 2:
            spread = candidate
            break
    assert spread is not None, "no δ spreads the inputs over two early exits"
    expected = adaptix.simulate(trace, spread)
    for mode in ("compact", "lockstep"):
        for fused in (True, False):
            runner = EarlyExitRunner(model, spread, mode=mode, fused=fused)
            for size in (1, 7, 200):
                count = 20 if size == 1 else 200
                outputs = [runner(inputs[i : i + size]) for i in range(0, count, size)]
                exit_index = torch.cat([out.exit_index for out in outputs])
                predictions = torch.cat([out.predictions for out in outputs])
                where = f"{mode}, fused={fused}, batch {size}"
                assert torch.equal(exit_index, expected.exit_index[:count]), where
                assert torch.equal(predictions, expected.predictions[:count]), where
