"""Per-threshold counts that add: shards summed with ``+`` give exactly the single-process
`sweep`, `simulate` and `Certifier`, floats included; mismatched counts never add."""

from __future__ import annotations

import operator
import pickle
import warnings
from dataclasses import replace
from functools import reduce
from itertools import pairwise
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptix
from adaptix import CalibrationError, CertificateWarning, Certifier, ValidationError
from adaptix.offline.statistics import ThresholdCounts, count_thresholds, exit_accuracy
from adaptix.testing import synthetic_trace

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Uneven shards of the 301 inputs of `_trace`, one of a single row.
SIZES = (1, 137, 44, 119)
#: Grids as a caller gives them: unsorted, with a repeat (None: the criterion's default grid).
GRIDS: dict[str, Any] = {
    "confidence": [0.9, 0.3, 0.0, 0.6, 0.3, 0.97, 1.0],
    "entropy": None,
    "patience": [3, 1, 2, 5, 4],
    "pcee": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
}


def _trace(labelled: bool = True) -> adaptix.Trace:
    return synthetic_trace(sum(SIZES), 5, 6, seed=4, labelled=labelled)


def _calibration(plugins) -> adaptix.Calibration:
    """Built on inputs disjoint from `_trace`'s."""
    return adaptix.calibrate(synthetic_trace(400, 5, 6, seed=9), bins=8, plugins=plugins)


def _shards(trace: adaptix.Trace, sizes=SIZES) -> list[adaptix.Trace]:
    bounds = torch.tensor((0, *sizes)).cumsum(0).tolist()
    assert bounds[-1] == trace.num_inputs
    return [trace.subset(slice(lo, hi)) for lo, hi in pairwise(bounds)]


def _count(trace: adaptix.Trace, name: str, plugins, calibration=None, grid=None, **params):
    grid = GRIDS[name] if grid is None else grid
    return count_thresholds(trace, name, grid, calibration, plugins=plugins, **params)


def test_counts_without_fingerprints_certify_without_rows(plugins) -> None:
    total = _count(_trace(), "confidence", plugins)
    assert total.rows is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificateWarning)
        pol = Certifier.from_counts(total, plugins=plugins).early_accuracy(0.7)
    assert pol.certificate.rows is None


def test_counts_of_calibration_rows_are_refused(plugins) -> None:
    trace = _trace()
    calibration = adaptix.calibrate(trace.subset(slice(0, 100)), plugins=plugins)
    counts = _count(trace, "pcee", plugins, calibration, fingerprints=True)
    with pytest.raises(adaptix.ValidationError, match="disjoint from the criterion's calib"):
        Certifier.from_counts(counts, calibration=calibration, plugins=plugins)


def test_fingerprinted_counts_add_their_rows(plugins) -> None:
    trace = _trace()
    shards = [_count(s, "confidence", plugins, fingerprints=True) for s in _shards(trace)]
    assert torch.equal(sum(shards).rows, torch.unique(trace.row_digests()))
    assert (shards[0] + _count(trace, "confidence", plugins)).rows is None


def _assert_same_counts(got: ThresholdCounts, expected: ThresholdCounts) -> None:
    for key in ("criterion", "params", "thresholds", "costs", "calibration", "num_inputs"):
        assert getattr(got, key) == getattr(expected, key), key
    assert got.final_correct == expected.final_correct
    for key in ("exits", "correct", "lost"):
        mine, theirs = getattr(got, key), getattr(expected, key)
        assert (mine is None) == (theirs is None), key
        if mine is not None:
            assert mine.dtype == torch.int64
            assert torch.equal(mine, theirs), key


# ------------------------------------------------------------------- shards add up to the whole


@pytest.mark.parametrize("name", list(GRIDS))
def test_shards_add_up_to_the_counts_and_the_sweep_of_the_whole(name: str, plugins) -> None:
    trace, calibration = _trace(), _calibration(plugins)
    whole = _count(trace, name, plugins, calibration)
    parts = [_count(shard, name, plugins, calibration) for shard in _shards(trace)]
    total = reduce(operator.add, parts)
    _assert_same_counts(total, whole)
    assert [p.num_inputs for p in parts] == list(SIZES)
    frontier = adaptix.sweep(trace, name, GRIDS[name], calibration, plugins=plugins)
    # Dataclass equality: every field, the floats bit for bit.
    assert total.points() == whole.points() == list(frontier)
    if GRIDS[name] is not None:
        assert [p.threshold for p in frontier] == [float(t) for t in GRIDS[name]]
    assert len({p.relative_cost for p in frontier}) > 2  # the grid spans distinct policies


def test_unlabelled_shards_add_up_too(plugins) -> None:
    trace = _trace(labelled=False)
    total = reduce(operator.add, [_count(s, "confidence", plugins) for s in _shards(trace)])
    _assert_same_counts(total, _count(trace, "confidence", plugins))
    assert (total.correct, total.lost, total.final_correct) == (None, None, None)
    assert not total.labelled
    assert all(p.accuracy is None and p.early_accuracy is None for p in total.points())
    labelled = _count(_trace(), "confidence", plugins)
    assert torch.equal(total.exits, labelled.exits)  # labels change no exit


def test_counts_are_what_simulate_does_at_each_threshold(plugins) -> None:
    """An independent oracle: every count recomputed from `simulate`'s per-input exits."""
    trace, calibration = _trace(), _calibration(plugins)
    counts = _count(trace, "pcee", plugins, calibration)
    predictions = adaptix.core.scores.prediction(trace.logits)
    right_all = predictions == trace.labels.unsqueeze(1)
    final = right_all[:, -1]
    assert counts.final_correct == int(final.sum())
    for t, threshold in enumerate(counts.thresholds):
        result = adaptix.simulate(trace, adaptix.policy("pcee", threshold, calibration))
        right = right_all.gather(1, result.exit_index.unsqueeze(1)).squeeze(1)
        expected = torch.zeros(trace.num_exits, dtype=torch.int64)
        hits = torch.zeros(trace.num_exits, dtype=torch.int64)
        for exit_index, ok in zip(result.exit_index.tolist(), right.tolist(), strict=True):
            expected[exit_index] += 1
            hits[exit_index] += int(ok)
        assert torch.equal(counts.exits[t], expected)
        assert torch.equal(counts.correct[t], hits)
        assert int(counts.lost[t]) == int((final & ~right).sum())
        point = counts.points()[t]
        # simulate measures from the same counts: equal to the sweep's point, bit for bit.
        assert result.relative_cost == point.relative_cost
        assert result.mean_cost == point.mean_cost
        assert result.accuracy == point.accuracy
        assert result.early_accuracy == point.early_accuracy


def test_mean_cost_is_the_stated_sum_over_exits_in_order(plugins) -> None:
    """Σ_e exits[t, e] · costs[e] from e = 0 up, then / N (tenths: the order shows in the
    last bits)."""
    costs = (0.1, 0.2, 0.3, 0.4, 1.0)
    trace = _trace()
    counts = _count(adaptix.Trace(trace.logits, trace.labels, costs), "confidence", plugins)
    backwards_differs = False
    for t, point in enumerate(counts.points()):
        terms = [c * cost for c, cost in zip(counts.exits[t].tolist(), costs, strict=True)]
        total = 0.0
        for term in terms:
            total += term
        assert point.mean_cost == total / trace.num_inputs
        assert point.relative_cost == total / trace.num_inputs / costs[-1]
        assert point.exit_histogram == tuple(c / trace.num_inputs for c in counts.exits[t].tolist())
        backwards = 0.0
        for term in reversed(terms):
            backwards += term
        backwards_differs |= backwards != total
    assert backwards_differs  # the check above pins the order


def test_counts_pickle_and_still_add(plugins) -> None:
    """Workers ship counts to the driver by pickling them."""
    shards = [_count(s, "patience", plugins) for s in _shards(_trace())]
    shipped = [pickle.loads(pickle.dumps(part)) for part in shards]
    _assert_same_counts(reduce(operator.add, shipped), _count(_trace(), "patience", plugins))


# ----------------------------------------------------------------------- certifier from counts


def _certify(certifier: Certifier) -> list[adaptix.ExitPolicy]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificateWarning)
        return [
            *(certifier.early_accuracy(d, alpha=0.1) for d in (0.5, 0.7, 0.8, 0.9, 0.99)),
            certifier.early_accuracy(0.7, alpha=0.05, method="hoeffding_bentkus"),
            *(certifier.accuracy_drop(e, alpha=0.1) for e in (0.02, 0.1, 0.3)),
            certifier.accuracy_drop(0.1, method="hoeffding_bentkus"),
            *(certifier.budget(b, alpha=0.1) for b in (0.4, 0.6, 0.9)),
        ]


@pytest.mark.parametrize("name", list(GRIDS))
def test_a_certifier_from_summed_counts_is_the_certifier_of_the_whole(name: str, plugins) -> None:
    trace, calibration = _trace(), _calibration(plugins)
    # Certifier's own default grid has 200 thresholds: count shards on the same one.
    grid = plugins.criteria.get(name).default_thresholds(200)
    grid = GRIDS[name] or grid
    whole = Certifier(trace, name, calibration=calibration, thresholds=grid, plugins=plugins)
    total = reduce(
        operator.add,
        [_count(s, name, plugins, calibration, grid, fingerprints=True) for s in _shards(trace)],
    )
    sharded = Certifier.from_counts(total, calibration=calibration, plugins=plugins)
    assert sharded.thresholds == whole.thresholds
    assert len(set(sharded.thresholds)) == len(sharded.thresholds)  # repeats merged
    assert (sharded.n, sharded.base.name, sharded.base.threshold) == (
        whole.n,
        whole.base.name,
        whole.base.threshold,
    )
    expected, got = _certify(whole), _certify(sharded)
    assert [p.certificate for p in got] == [p.certificate for p in expected]  # rows included
    assert all(p.certificate.rows is not None for p in got)
    assert [(p.threshold, p.exits_early) for p in got] == [
        (p.threshold, p.exits_early) for p in expected
    ]
    certified = [p for p in got if p.certificate.certified]
    assert {"early_accuracy", "accuracy_drop", "relative_cost"} <= {
        p.certificate.target for p in certified
    }
    # An independent check of what the counts say: the estimates are what simulate measures.
    final = float(
        (adaptix.core.scores.prediction(trace.logits)[:, -1] == trace.labels).double().mean()
    )
    for pol in certified:
        result, certificate = adaptix.simulate(trace, pol), pol.certificate
        assert certificate.early_exit_rate == pytest.approx(result.early_exit_rate, abs=1e-12)
        if certificate.target == "early_accuracy":
            assert certificate.estimate == result.early_accuracy
        elif certificate.target == "accuracy_drop":
            assert certificate.estimate == pytest.approx(final - result.accuracy, abs=1e-12)
        else:
            assert certificate.estimate == result.relative_cost


def test_guarantee_and_budget_read_the_same_counts(plugins) -> None:
    trace = _trace()
    grid = plugins.criteria.get("confidence").default_thresholds(200)
    total = reduce(
        operator.add,
        [_count(s, "confidence", plugins, grid=grid, fingerprints=True) for s in _shards(trace)],
    )
    sharded = Certifier.from_counts(total, plugins=plugins)
    pol = adaptix.guarantee(trace, "confidence", early_accuracy=0.8, alpha=0.1)
    assert sharded.early_accuracy(0.8, alpha=0.1).certificate == pol.certificate
    cheap = adaptix.budget(trace, "confidence", relative_cost=0.6, alpha=0.1)
    assert sharded.budget(0.6, alpha=0.1).certificate == cheap.certificate
    # The estimate is the sweep's relative cost at that threshold, bit for bit.
    (point,) = adaptix.sweep(trace, "confidence", [cheap.threshold], plugins=plugins)
    assert cheap.certificate.estimate == point.relative_cost


def test_a_certifier_refuses_counts_it_cannot_certify_with(plugins) -> None:
    calibration = _calibration(plugins)
    with pytest.raises(ValidationError, match="expected labelled counts"):
        Certifier.from_counts(_count(_trace(labelled=False), "confidence", plugins))
    with pytest.raises(ValidationError, match="at least 2 exits"):
        Certifier.from_counts(_count(synthetic_trace(30, 1, 3), "confidence", plugins))
    with pytest.raises(ValidationError, match="ThresholdCounts"):
        Certifier.from_counts(_trace())  # type: ignore[arg-type]
    counts = _count(_trace(), "pcee", plugins, calibration)
    with pytest.raises(CalibrationError, match="needs a calibration"):
        Certifier.from_counts(counts, plugins=plugins)
    other = adaptix.calibrate(synthetic_trace(400, 5, 6, seed=10), bins=8, plugins=plugins)
    with pytest.raises(CalibrationError, match="the calibration the counts were made with"):
        Certifier.from_counts(counts, calibration=other, plugins=plugins)


def test_a_calibration_that_the_criterion_does_not_read_is_not_part_of_its_counts(plugins):
    """sweep hands its calibration to every criterion: confidence's counts must not depend on
    it, or a sweep's shards would not add to counts made without one."""
    calibration = _calibration(plugins)
    first, second = _shards(_trace(), (150, 151))
    handed = _count(first, "confidence", plugins, calibration)
    assert handed.calibration is None
    total = handed + _count(second, "confidence", plugins)
    _assert_same_counts(total, _count(_trace(), "confidence", plugins))
    certifier = Certifier.from_counts(total, calibration=calibration, plugins=plugins)
    assert certifier.base.calibration is calibration  # kept, as Certifier(trace, ...) keeps it
    pcee = _count(first, "pcee", plugins, calibration)
    assert pcee.calibration == calibration.checksum


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_a_pool_minus_a_split_is_the_other_rows_counted(name: str, plugins) -> None:
    """What the study does: pool counts minus a split's are the counts, and the sweep, of the
    rest, bit for bit; subtraction undoes addition."""
    trace = _trace()
    calibration = _calibration(plugins) if name == "pcee" else None
    rows = torch.randperm(trace.num_inputs, generator=torch.Generator().manual_seed(3))
    held, rest = trace.subset(rows[:120].sort().values), trace.subset(rows[120:].sort().values)
    pool = _count(trace, name, plugins, calibration)
    difference = pool - _count(held, name, plugins, calibration)
    counted = _count(rest, name, plugins, calibration)
    for field in ("num_inputs", "final_correct", "thresholds"):
        assert getattr(difference, field) == getattr(counted, field)
    for field in ("exits", "correct", "lost"):
        assert torch.equal(getattr(difference, field), getattr(counted, field))
    assert difference.points() == counted.points()
    swept = adaptix.sweep(rest, name, GRIDS[name], calibration, plugins=plugins)
    assert difference.points() == list(swept)
    again = (difference + _count(held, name, plugins, calibration)) - counted
    assert torch.equal(again.exits, _count(held, name, plugins, calibration).exits)


def test_exit_accuracy_is_each_exit_s_share_of_right_predictions() -> None:
    trace = _trace()
    expected = [
        float((trace.logits[:, e].argmax(dim=-1) == trace.labels).double().mean())
        for e in range(trace.num_exits)
    ]
    assert exit_accuracy(trace) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValidationError, match="expected a labelled trace"):
        exit_accuracy(_trace(labelled=False))


def test_only_counts_of_a_subset_subtract(plugins) -> None:
    trace = _trace()
    first, second = _shards(trace, (150, 151))
    pool = _count(trace, "confidence", plugins)
    with pytest.raises(ValidationError, match="expected counts of fewer inputs to subtract"):
        pool - pool
    with pytest.raises(ValidationError, match="expected counts with the same thresholds to sub"):
        pool - _count(first, "confidence", plugins, grid=[0.5])
    with pytest.raises(ValidationError, match=r"ThresholdCounts to subtract from .* \(int\)"):
        pool - 1  # type: ignore[operator]
    unlabelled = adaptix.Trace(first.logits, None, first.costs)
    with pytest.raises(ValidationError, match="both labelled or both unlabelled to subtract"):
        pool - _count(unlabelled, "confidence", plugins)
    other = synthetic_trace(150, 5, 6, seed=11)  # not rows of the pool: no inputs give this
    with pytest.raises(ValidationError, match="expected the counts of a subset of the inputs"):
        _count(second, "confidence", plugins) - _count(
            other.subset(slice(0, 100)), "confidence", plugins
        )
    assert (pool - _count(first, "confidence", plugins)).rows is None


# ------------------------------------------------------------------------ what does not add


def test_counts_that_differ_in_any_field_do_not_add(plugins) -> None:
    trace, calibration = _trace(), _calibration(plugins)
    first, second = _shards(trace, (150, 151))
    base = _count(first, "pcee_ws", plugins, calibration, [0.5, 0.9], window=1)

    def other(shard=second, name="pcee_ws", cal=calibration, grid=(0.5, 0.9), window=1):
        params = {} if window is None else {"window": window}
        return _count(shard, name, plugins, cal, list(grid), **params)

    base + other()  # the same everything: adds
    recosted = adaptix.Trace(second.logits, second.labels, second.costs * 2)
    refit = adaptix.calibrate(synthetic_trace(400, 5, 6, seed=10), bins=8, plugins=plugins)
    cases = {
        "criterion": other(name="pcee", window=None),
        "params": other(window=2),
        "thresholds": other(grid=(0.5, 0.91)),
        "costs": other(shard=recosted),
        "calibration": other(cal=refit),
    }
    for field, counts in cases.items():
        with pytest.raises(ValidationError, match=f"expected counts with the same {field} to add"):
            base + counts
    with pytest.raises(ValidationError, match=r"differ first at index 1: 0.9 and 0.91"):
        base + cases["thresholds"]
    with pytest.raises(ValidationError, match="2 and 3 values"):
        base + other(grid=(0.5, 0.9, 0.95))
    unlabelled = adaptix.Trace(second.logits, None, second.costs)
    with pytest.raises(ValidationError, match="both labelled or both unlabelled"):
        base + other(shard=unlabelled)
    with pytest.raises(ValidationError, match="both labelled or both unlabelled"):
        other(shard=unlabelled) + base
    with pytest.raises(ValidationError, match=r"expected ThresholdCounts to add .* got 1 \(int\)"):
        base + 1  # type: ignore[operator]


def test_counts_that_contradict_themselves_are_refused(plugins) -> None:
    counts = _count(_trace(), "confidence", plugins)
    bumped = counts.exits.clone()
    bumped[0, 0] += 1
    more_right = counts.correct.clone()
    more_right[1] = counts.exits[1] + 1
    cases = {
        "row sums": {"exits": bumped},
        "all given .* or all None": {"lost": None},
        "correct <= exits": {"correct": more_right},
        "int64 tensor": {"exits": counts.exits.double()},
        "non-negative counts": {"lost": counts.lost - 10**6},
        "num_inputs to be an integer": {"num_inputs": 0},
        "final_correct to be an integer": {"final_correct": -1},
        "non-empty tuple": {"thresholds": ()},
        r"costs\[4\] to be a finite real number": {"costs": (1.0, 2.0, 3.0, 4.0, float("nan"))},
    }
    for message, change in cases.items():
        with pytest.raises(ValidationError, match=message):
            replace(counts, **change)


# ------------------------------------------------------------------------- algebra of addition


@SETTINGS
@given(data=st.data())
def test_addition_is_associative_and_commutative_and_shard_independent(
    data, traces, plugins
) -> None:
    trace = data.draw(traces(labelled=None, max_inputs=30), label="trace")
    name = data.draw(st.sampled_from(["confidence", "entropy", "patience"]), label="criterion")
    if name == "patience":
        grid: list[float] = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    else:
        grid = data.draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5))
    n = trace.num_inputs
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=3)) if n > 1 else set())
    sizes = [hi - lo for lo, hi in zip([0, *cuts], [*cuts, n], strict=True)]
    parts = [count_thresholds(s, name, grid, plugins=plugins) for s in _shards(trace, sizes)]
    whole = count_thresholds(trace, name, grid, plugins=plugins)
    order = data.draw(st.permutations(range(len(parts))), label="order")
    shuffled = reduce(operator.add, [parts[i] for i in order])
    _assert_same_counts(reduce(operator.add, parts), whole)
    _assert_same_counts(shuffled, whole)
    assert shuffled.points() == whole.points()
    if len(parts) >= 3:
        a, b, c = parts[0], parts[1], reduce(operator.add, parts[2:])
        _assert_same_counts((a + b) + c, a + (b + c))
        _assert_same_counts(a + b, b + a)
