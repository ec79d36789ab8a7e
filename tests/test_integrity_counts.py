"""Issue 20, classes 4, 5 and 10 in counts and the shift monitor: counts refuse what no data set
could produce, reference counts belong to their policy and model, and every scalar argument of
these surfaces follows `adaptix.scalars`.

Class 4 (counts accept what cannot be): `ThresholdCounts` checks every relation that holds
between its fields (an independent witness construction below is the oracle), records the
number of classes, adds only with counts of the same everything, and ``sum`` works.
Class 5 (a monitor can watch the wrong reference): `ReferenceCounts` record the policy and the
model they were counted for; `ShiftMonitor`, its ``reset`` (what ``swap_policy`` calls), the
runner and ``+`` refuse what does not match; a path reference is loaded, never ignored.
Class 10 (one vocabulary): numpy scalars pass, bools, strings and float counts never do.

Every refusal is an `AdaptixError` whose message names the problem; every good input still
works. The fuzz tests at the end follow ``test_fuzz_api``: every call goes through
`fuzz_strategies.outcome` (anything but an `AdaptixError` fails), and an accepted corrupted
value must be consistent by the oracle.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import fields, replace
from functools import reduce
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fuzz_strategies import describe, must_raise, outcome, tiny_inputs, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptix
from adaptix import (
    AdaptixError,
    Certifier,
    EarlyExitRunner,
    ExitPolicy,
    ShiftMonitor,
    ShiftTest,
    ValidationError,
)
from adaptix.offline.statistics import ThresholdCounts, count_thresholds
from adaptix.online.monitor import (
    ReferenceCounts,
    evidence_path,
    reference_counts,
    segment_threshold,
)
from adaptix.testing import synthetic_trace

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=25)

EXITS, CLASSES = 4, 5
#: Unsorted, with a repeat: the grid as a caller gives it.
GRID = (0.9, 0.3, 0.0, 0.6, 0.3, 0.97, 1.0)


def _trace(n: int = 150, seed: int = 4, *, classes: int = CLASSES, labelled: bool = True):
    return synthetic_trace(n, EXITS, classes, seed=seed, labelled=labelled)


def _counts(trace: adaptix.Trace | None = None, name: str = "confidence", grid=GRID, **params):
    return count_thresholds(_trace() if trace is None else trace, name, list(grid), **params)


@pytest.fixture(scope="module")
def calibrated() -> ExitPolicy:
    """pcee_ws (a criterion with a parameter) on a calibration of data disjoint from every
    reference below."""
    calibration = adaptix.calibrate(synthetic_trace(400, EXITS, CLASSES, seed=1), bins=8)
    return adaptix.policy("pcee_ws", 0.6, calibration)


def _reference(n: int = 200, seed: int = 2, classes: int = CLASSES) -> adaptix.Trace:
    return synthetic_trace(n, EXITS, classes, seed=seed, labelled=False)


# ------------------------------------------------------------------------- the oracle of counts


def witness(exits: list[int], correct: list[int], lost: int, final: int, n: int) -> list | None:
    """Inputs (exit, right at the exit taken, right at the last exit) with these counts at one
    threshold, built one by one, or None when no such inputs exist. Independent of adaptix's
    inequalities: it constructs, then recounts."""
    last = len(exits) - 1
    if len(correct) != len(exits) or any(
        not 0 <= c <= x for x, c in zip(exits, correct, strict=True)
    ):
        return None
    inputs = []
    for e, (x, c) in enumerate(zip(exits, correct, strict=True)):
        inputs += [[e, True, e == last] for _ in range(c)]
        inputs += [[e, False, False] for _ in range(x - c)]
    if len(inputs) != n:
        return None
    early_wrong = [i for i in inputs if i[0] < last and not i[1]]
    early_right = [i for i in inputs if i[0] < last and i[1]]
    saved = final - correct[last] - lost  # right early and right at the last exit
    if not (0 <= lost <= len(early_wrong) and 0 <= saved <= len(early_right)):
        return None
    for i in early_wrong[:lost] + early_right[:saved]:
        i[2] = True
    recount = (
        [sum(i[0] == e for i in inputs) for e in range(last + 1)],
        [sum(i[0] == e and i[1] for i in inputs) for e in range(last + 1)],
        sum(i[2] and not i[1] for i in inputs),
        sum(i[2] for i in inputs),
    )
    return inputs if recount == (exits, correct, lost, final) else None


def problems(counts: ThresholdCounts) -> list[str]:
    """What is wrong with accepted counts, by the documented relations (pure Python)."""
    found = []
    n, thresholds = counts.num_inputs, counts.thresholds
    types = {
        "num_inputs": int,
        "num_classes": int,
        "criterion": str,
    }
    for name, kind in types.items():
        if type(getattr(counts, name)) is not kind:
            found.append(f"{name} is {type(getattr(counts, name)).__name__}")
    if not all(type(t) is float and math.isfinite(t) for t in thresholds):
        found.append("a threshold that is not a finite float")
    costs = counts.costs
    if not all(type(c) is float and 0 <= c < math.inf for c in costs) or costs[-1] <= 0:
        found.append("bad costs")
    if any(b < a for a, b in pairwise(costs)):
        found.append("decreasing costs")
    if n < 1 or counts.num_classes < 1:
        found.append("no input or no class")
    exits = counts.exits.tolist()
    if any(sum(row) != n or min(row) < 0 for row in exits):
        found.append("exit rows that do not count N")
    order = sorted(range(len(thresholds)), key=lambda t: thresholds[t])
    cumulative = [[sum(exits[t][: e + 1]) for e in range(len(costs) - 1)] for t in order]
    steps = [b - a for r, s in pairwise(cumulative) for a, b in zip(r, s, strict=True)]
    if any(x > 0 for x in steps) and any(x < 0 for x in steps):
        found.append("exits that move both ways")
    if counts.correct is None:
        return found
    correct, lost = counts.correct.tolist(), counts.lost.tolist()
    final = counts.final_correct
    for t in range(len(thresholds)):
        if witness(exits[t], correct[t], lost[t], final, n) is None:
            found.append(f"no inputs have the counts of threshold {t}")
        if counts.num_classes == 1 and (correct[t] != exits[t] or final != n):
            found.append("a wrong prediction with one class")
    if any(x < 0 for x in steps):
        order = order[::-1]  # every set "leaves at or before exit e" grows along the order

    def through(t: int) -> list[int]:
        return [0, *(sum(exits[t][: e + 1]) for e in range(len(costs) - 1)), n]

    for a, b in pairwise(order):
        grown = [y - x for x, y in zip(through(a), through(b), strict=True)]  # D_-1 .. D_E-1
        if abs(lost[a] - lost[b]) > sum(grown):
            found.append(f"lost moves more than the inputs between {a} and {b}")
        for e in range(len(costs)):
            right = correct[b][e] - correct[a][e]
            wrong = (exits[b][e] - correct[b][e]) - (exits[a][e] - correct[a][e])
            if not all(-grown[e] <= x <= grown[e + 1] for x in (right, wrong)):
                found.append(f"exit {e} changes more than what moves, between {a} and {b}")
        if thresholds[a] == thresholds[b] and any(grown):
            found.append(f"equal thresholds {a} and {b} with different exits")
    return found


def assert_sane(counts: ThresholdCounts) -> None:
    """What readers compute from accepted counts stays meaningful."""
    found = problems(counts)
    assert not found, found
    for point in counts.points():
        assert 0.0 <= point.relative_cost <= 1.0 + 1e-12
        assert math.isclose(sum(point.exit_histogram), 1.0, rel_tol=1e-9)
        if point.accuracy is not None:
            assert 0.0 <= point.accuracy <= 1.0
        if point.early_accuracy is not None:
            assert 0.0 <= point.early_accuracy <= 1.0
    if counts.labelled:
        n, final = counts.num_inputs, counts.final_correct
        drop = (final - counts.correct.sum(dim=1)) / n  # the estimated accuracy drop
        assert bool((drop <= counts.lost / n).all())  # never above the loss that certifies it


# ------------------------------------------------------------------- class 4: counts refused


def _forged(counts: ThresholdCounts) -> dict[str, tuple[str, dict[str, Any]]]:
    """Named forgeries of ``counts``: the message each must raise, and the changed fields."""
    c, lost = counts.correct, counts.lost
    t = counts.thresholds.index(0.6)
    more_lost = lost.clone()
    more_lost[t] = counts.final_correct  # more than the final-right inputs that left early
    none_lost = lost.clone()
    none_lost[t] = 0  # the estimated drop says otherwise
    # Whole rows moved: every threshold's counts stay possible alone, not together.
    swapped = {k: getattr(counts, k)[[0, 5, 2, 3, 4, 1, 6]] for k in ("exits", "correct", "lost")}
    repeat = {k: getattr(counts, k)[[0, 1, 2, 3, 3, 5, 6]] for k in ("exits", "correct", "lost")}
    return {
        "decreasing costs": ("non-decreasing", {"costs": (1.0, 3.0, 2.0, 4.0)}),
        "string threshold": (
            r"thresholds\[1\] to be a real number",
            {"thresholds": (0.9, "0.3", *counts.thresholds[2:])},
        ),
        "nan threshold": (
            r"thresholds\[0\] to be a finite",
            {"thresholds": (math.nan, *counts.thresholds[1:])},
        ),
        "bool threshold": (
            r"thresholds\[2\] to be a real number",
            {"thresholds": (*counts.thresholds[:2], False, *counts.thresholds[3:])},
        ),
        "lost too large": (rf"lost\[{t}\] in \[", {"lost": more_lost}),
        "lost contradicts the estimate": (rf"lost\[{t}\] in \[", {"lost": none_lost}),
        "final below the last exit's right": (
            "final_correct in",
            {"final_correct": int(c[:, -1].max()) - 1},
        ),
        "final above N": (r"final_correct in \[0, 150\]", {"final_correct": 151}),
        "bool final": ("final_correct to be an integer", {"final_correct": True}),
        "float inputs": ("num_inputs to be an integer", {"num_inputs": 150.0}),
        "zero classes": (r"num_classes to be an integer ≥ 1", {"num_classes": 0}),
        "bool classes": ("num_classes to be an integer", {"num_classes": True}),
        "one class, wrong predictions": ("num_classes = 1", {"num_classes": 1}),
        "exits out of order": ("one direction", swapped),
        "equal thresholds, other exits": (
            "equal thresholds to give equal exits",
            repeat,
        ),
        "empty criterion": ("criterion as a registry name", {"criterion": ""}),
        "unsorted params": ("sorted by name", {"params": (("b", 1), ("a", 2))}),
        "repeated params": ("each name once", {"params": (("a", 1), ("a", 2))}),
        "params not pairs": ("pairs", {"params": ("a",)}),
        "calibration not a checksum": ("calibration as a checksum", {"calibration": 7}),
        "negative lost": ("non-negative counts in lost", {"lost": lost - 1000}),
        "float exits": ("exits as an int64 tensor", {"exits": counts.exits.double()}),
    }


def test_every_forgery_of_counts_is_refused_naming_what_is_wrong() -> None:
    counts = _counts()
    assert_sane(counts)
    for what, (message, change) in _forged(counts).items():
        error = outcome(replace, counts, **change)
        assert isinstance(error, ValidationError), (what, describe(error))
        assert re.search(message, str(error)), (what, str(error))


def test_counts_that_certify_a_drop_their_estimate_contradicts_are_refused(plugins) -> None:
    """The issue's example: counts whose ``lost`` lets `Certifier` certify an accuracy drop
    ≤ 0.01 while their own accuracies estimate 0.40."""
    trace = _trace(300, seed=7)
    counts = count_thresholds(trace, "confidence", [0.0, 0.5, 1.0], plugins=plugins)
    drop = (counts.final_correct - counts.correct.sum(dim=1)) / counts.num_inputs
    assert float(drop[0]) > 0.3  # everything leaves at exit 0: a large true drop
    forged = counts.lost.clone()
    forged[0] = 0
    with pytest.raises(ValidationError, match=r"lost\[0\] in \[.*accuracy drop certified"):
        replace(counts, lost=forged)
    honest = Certifier.from_counts(counts, plugins=plugins).accuracy_drop(0.01, alpha=0.1)
    assert not honest.exits_early or honest.threshold != 0.0  # 0.0 is never certified


def test_numpy_scalars_are_accepted_and_stored_as_python_ones() -> None:
    counts = _counts()
    numpy = replace(
        counts,
        thresholds=tuple(np.float32(t) if i == 0 else t for i, t in enumerate(counts.thresholds)),
        costs=tuple(np.float64(c) for c in counts.costs),
        num_inputs=np.int64(counts.num_inputs),
        num_classes=np.int32(CLASSES),
        final_correct=np.int64(counts.final_correct),
    )
    assert type(numpy.num_inputs) is int
    assert type(numpy.num_classes) is int
    assert type(numpy.final_correct) is int
    assert all(type(x) is float for x in (*numpy.thresholds, *numpy.costs))
    assert_sane(numpy)


def _one_class_trace(n: int = 30, exits: int = EXITS) -> adaptix.Trace:
    logits = torch.randn(n, exits, 1, generator=torch.Generator().manual_seed(0))
    return adaptix.Trace(logits, torch.zeros(n, dtype=torch.int64), list(range(1, exits + 1)))


def test_count_thresholds_records_the_number_of_classes() -> None:
    assert _counts(_trace(classes=5)).num_classes == 5
    one = _counts(_one_class_trace())
    assert one.num_classes == 1
    assert_sane(one)  # one class: every prediction right, and accepted


# ------------------------------------------------------------------ class 4: adding counts


def test_counts_of_different_models_or_fields_do_not_add_naming_the_field() -> None:
    five, six = _trace(classes=5), _trace(classes=6)
    assert torch.equal(five.costs, six.costs)  # nothing else tells the two models apart
    with pytest.raises(ValidationError, match="same num_classes to add, got 5 and 6"):
        _counts(five) + _counts(six)
    with pytest.raises(ValidationError, match="same num_classes"):
        sum([_counts(five), _counts(six)])


@pytest.mark.parametrize("other", [1, 0.0, False, "counts", None, [], np.int64(0)], ids=repr)
def test_anything_else_added_is_a_validation_error_never_a_type_error(other: object) -> None:
    counts = _counts()
    with pytest.raises(ValidationError, match="expected ThresholdCounts to add"):
        counts + other  # type: ignore[operator]  # refused, as tested
    if not isinstance(other, np.generic):  # numpy scalars take the addition themselves
        with pytest.raises(ValidationError, match="expected ThresholdCounts to add"):
            other + counts  # type: ignore[operator]  # refused, as tested
    with pytest.raises(ValidationError, match="expected ThresholdCounts to add"):
        counts + reference_counts(_reference(), adaptix.policy("confidence", 0.5))  # type: ignore[operator]


def test_sum_and_plus_of_shards_equal_the_whole() -> None:
    trace = _trace(151)
    shards = [trace.subset(slice(a, b)) for a, b in ((0, 1), (1, 70), (70, 151))]
    parts = [_counts(shard) for shard in shards]
    whole = _counts(trace)
    for total in (sum(parts), reduce(operator.add, parts), parts[0] + parts[1] + parts[2]):
        for field in fields(ThresholdCounts):
            mine, theirs = getattr(total, field.name), getattr(whole, field.name)
            assert (
                torch.equal(mine, theirs) if isinstance(mine, torch.Tensor) else mine == theirs
            ), field.name
    assert sum(parts[:1]) is parts[0]  # 0 + counts is the counts


# ----------------------------------------------------------- class 5: the reference's policy


def test_reference_counts_record_their_policy_and_model(calibrated: ExitPolicy) -> None:
    counts = reference_counts(_reference(), calibrated)
    assert (counts.criterion, counts.threshold, counts.exits_early) == ("pcee_ws", 0.6, True)
    assert counts.params == tuple(sorted(calibrated.criterion.params.model_dump().items()))
    assert counts.calibration == calibrated.calibration.checksum
    assert (counts.num_classes, counts.num_exits, counts.num_inputs) == (CLASSES, EXITS, 200)
    plain = reference_counts(_reference(), adaptix.policy("confidence", 0.8))
    assert plain.calibration is None


def _other_policies(calibrated: ExitPolicy) -> dict[str, ExitPolicy]:
    other_calibration = adaptix.calibrate(synthetic_trace(300, EXITS, CLASSES, seed=9), bins=8)
    return {
        "criterion": adaptix.policy("pcee", 0.6, calibrated.calibration),
        "params": adaptix.policy("pcee_ws", 0.6, calibrated.calibration, window=2),
        "threshold": calibrated.with_threshold(0.7),
        "calibration": adaptix.policy("pcee_ws", 0.6, other_calibration),
    }


def test_a_monitor_refuses_reference_counts_of_another_policy(calibrated: ExitPolicy) -> None:
    reference = _reference()
    for field, other in _other_policies(calibrated).items():
        counts = reference_counts(reference, other)
        with pytest.raises(ValidationError, match=f"counts of another {field}"):
            ShiftMonitor(calibrated, counts)
        monitor = ShiftMonitor(calibrated, reference_counts(reference, calibrated))
        with pytest.raises(ValidationError, match=f"counts of another {field}"):
            monitor.reset(reference=counts)  # the same policy, another's counts
        assert monitor.policy is calibrated  # a refused reset changes nothing
        monitor.reset(policy=other, reference=counts)  # their own policy: accepted
        assert monitor.policy is other


def test_reference_counts_of_a_policy_that_never_exits_early_are_its_own(
    calibrated: ExitPolicy,
) -> None:
    certificate = adaptix.guarantee(
        synthetic_trace(60, EXITS, CLASSES, seed=11), "confidence", early_accuracy=0.999
    )
    assert not certificate.exits_early
    counts = reference_counts(_reference(), certificate)
    assert counts.exits_early is False
    assert counts.exits[:-1].sum() == 0
    with pytest.raises(ValidationError, match="another exits_early"):
        ShiftMonitor(adaptix.policy("confidence", certificate.threshold), counts)
    with pytest.raises(ValidationError, match="every input at the last exit"):
        replace(
            reference_counts(_reference(), adaptix.policy("confidence", 0.1)), exits_early=False
        )


def test_reference_counts_of_two_policies_or_models_do_not_add(calibrated: ExitPolicy) -> None:
    reference = _reference()
    mine = reference_counts(reference, calibrated)
    for field, other in _other_policies(calibrated).items():
        with pytest.raises(
            ValidationError, match=f"one policy, model and binning to add, got another {field}"
        ):
            mine + reference_counts(reference, other)
    confidence = adaptix.policy("confidence", 0.5)
    seven = reference_counts(_reference(classes=7), confidence)
    with pytest.raises(ValidationError, match="another num_classes: 5 and 7"):
        reference_counts(reference, confidence) + seven
    with pytest.raises(ValidationError, match="another bins: 10 and 4"):
        reference_counts(reference, confidence) + reference_counts(reference, confidence, bins=4)
    for junk in (1, 0.0, "counts", None, _counts()):
        with pytest.raises(ValidationError, match="expected ReferenceCounts to add"):
            mine + junk  # type: ignore[operator]  # refused, as tested
    shards = [reference.subset(slice(a, b)) for a, b in ((0, 1), (1, 90), (90, 200))]
    total = sum(reference_counts(shard, calibrated) for shard in shards)
    assert torch.equal(total.reach, mine.reach)
    assert torch.equal(total.exits, mine.exits)
    assert (
        ShiftMonitor(calibrated, total).tests[0].reference.tolist()
        == ShiftMonitor(calibrated, reference).tests[0].reference.tolist()
    )


def test_reference_counts_of_no_input_or_that_contradict_themselves_are_refused(
    calibrated: ExitPolicy,
) -> None:
    counts = reference_counts(_reference(), calibrated)
    empty = {"reach": torch.zeros_like(counts.reach), "exits": torch.zeros_like(counts.exits)}
    with pytest.raises(ValidationError, match=r"at least one input.*never alarm"):
        replace(counts, **empty)
    shifted = counts.exits.clone()
    shifted[0] += 1
    shifted[-1] -= 1
    cases = {
        r"reach\[1\] to count": {"exits": shifted},
        "non-negative counts in reach": {"reach": counts.reach - 10**6},
        "reach as an int64 tensor": {"reach": counts.reach.double()},
        r"exits as an int64 tensor \[4\]": {"exits": counts.exits[:3]},
        "num_classes to be an integer": {"num_classes": 5.0},
        "threshold to be a finite": {"threshold": math.nan},
        "exits_early to be True or False": {"exits_early": 1},
        r"4 costs": {"costs": (1.0, 2.0)},
        "criterion as a registry name": {"criterion": None},
    }
    for message, change in cases.items():
        with pytest.raises(ValidationError, match=message):
            replace(counts, **change)


# ------------------------------------------------------------- class 5: the model's classes


def test_a_runner_refuses_a_monitor_whose_reference_has_other_classes() -> None:
    model = tiny_model(EXITS, 6, CLASSES, seed=0)
    inputs = tiny_inputs(64, 6, seed=1)
    policy = adaptix.policy("confidence", 0.6)
    wrong = ShiftMonitor(policy, _reference(classes=CLASSES + 2), check_every=1)
    runner = EarlyExitRunner(model, policy, monitor=wrong)
    with pytest.raises(ValidationError, match=r"reference's 7 classes, got 5"):
        runner(inputs)
    right = ShiftMonitor(policy, model.trace(inputs), check_every=1)
    out = EarlyExitRunner(model, policy, monitor=right)(inputs)
    assert torch.equal(out.exit_index, adaptix.simulate(model.trace(inputs), policy).exit_index)
    assert right.history
    assert not right.alarmed


def test_a_reset_to_another_model_is_refused_and_changes_nothing() -> None:
    policy = adaptix.policy("confidence", 0.6)
    monitor = ShiftMonitor(policy, _reference())
    with pytest.raises(ValidationError, match=r"monitor's model \(4 exits, 5 classes\)"):
        monitor.reset(reference=_reference(classes=3))
    assert monitor.num_classes == CLASSES
    with pytest.raises(ValidationError, match="classes"):
        monitor.observe(synthetic_trace(20, EXITS, 3, seed=0))


# ------------------------------------------------------------- class 5: swap_policy references


def test_swap_policy_loads_a_reference_path_and_refuses_anything_else(tmp_path: Path) -> None:
    model = tiny_model(EXITS, 6, CLASSES, seed=0)
    inputs = tiny_inputs(80, 6, seed=1)
    served, new = adaptix.policy("confidence", 0.6), adaptix.policy("confidence", 0.4)
    trace = model.trace(inputs)
    monitor = ShiftMonitor(served, trace, check_every=1)
    runner = EarlyExitRunner(model, served, monitor=monitor)
    runner(inputs[:40])
    path = trace.save(tmp_path / "calibration.pt")
    (tmp_path / "notes.txt").write_text("not a trace")
    junk = {
        "no trace file": tmp_path / "missing.pt",
        "an adaptix trace file": tmp_path / "notes.txt",
        "the path of a trace saved": 3,
        "saved with Trace.save": adaptix.calibrate(synthetic_trace(100, EXITS, CLASSES)),
        "or ReferenceCounts": [trace],
    }
    for message, reference in junk.items():
        with pytest.raises(ValidationError, match=message):
            runner.swap_policy(new, reference=reference)
        assert runner.policy is served
        assert monitor.policy is served
        assert [i for i, _ in monitor.history] == [40]  # not reset
    runner.swap_policy(new, reference=str(path))
    assert monitor.policy is new
    assert monitor.history == []
    assert torch.equal(monitor.reference.logits, trace.logits)  # loaded, not ignored
    expected = reference_counts(trace, new)
    assert torch.equal(monitor.tests[1].reference, expected.exits)
    runner(inputs)
    assert not monitor.alarmed
    runner.swap_policy(served, reference=path)  # a pathlib.Path too
    assert monitor.policy is served
    assert ShiftMonitor(served, path).reference is not None  # and in the constructor


def test_counts_of_the_old_policy_are_refused_after_a_swap(calibrated: ExitPolicy) -> None:
    reference = _reference()
    monitor = ShiftMonitor(calibrated, reference_counts(reference, calibrated))
    other = calibrated.with_threshold(0.8)
    with pytest.raises(ValidationError, match="reference counts for the new policy"):
        monitor.reset(policy=other)
    with pytest.raises(ValidationError, match=r"counts of another threshold: 0\.6 and 0\.8"):
        monitor.reset(policy=other, reference=reference_counts(reference, calibrated))
    with pytest.raises(ValidationError, match="ExitPolicy"):
        monitor.reset(policy="pcee")  # type: ignore[arg-type]  # refused, as tested
    assert monitor.policy is calibrated


# ------------------------------------------------------------------ class 5: ShiftTest counts


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (torch.tensor([3, -1, 2]), "non-negative"),
        (torch.tensor([3.0, math.nan]), "integer reference counts"),
        (torch.tensor([3.5, 1.0]), "integer reference counts"),
        (torch.tensor([0, 0, 0]), "at least one input"),
        (torch.tensor([True, False]), "integer reference counts"),
        ([3, 1], "1-d tensor"),
    ],
    ids=str,
)
def test_shift_test_refuses_counts_that_are_not_counts(reference: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ShiftTest(reference)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (torch.tensor([3, -1, 2, 0]), "non-negative stream counts"),
        (torch.tensor([3.0, math.nan, 0.0, 1.0]), "integer stream counts"),
        (torch.tensor([[1, 2, 3, 4], [1, -2, 3, 4]]), "non-negative"),
        ([1, 2, 3, 4], r"stream counts \[\.\.\., 4\]"),
    ],
    ids=str,
)
def test_shift_test_refuses_stream_counts_that_are_not_counts(stream: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ShiftTest(torch.tensor([3, 1, 0, 2])).log_evalue(stream)


@pytest.mark.parametrize("concentration", ["100", True, None, math.nan, -1.0, math.inf])
def test_shift_test_refuses_a_concentration_that_is_not_a_real(concentration: Any) -> None:
    with pytest.raises(ValidationError, match="concentration"):
        ShiftTest(torch.tensor([3, 1]), concentration)


def test_evidence_path_and_segment_threshold_check_their_arguments() -> None:
    tests = (ShiftTest(torch.tensor([3, 1, 2])), ShiftTest(torch.tensor([4, 2])))
    bins = torch.tensor([[1, 0, 0], [1, 1, 0]])
    exits = torch.tensor([[1, 0], [1, 1]])
    log_e, line = evidence_path(
        tests, bins, exits, alpha=np.float32(0.1), check_inputs=1, restart_every=None
    )
    assert log_e.shape == line.shape == (2,)
    bad = {
        "alpha": {"alpha": "0.1"},
        "check_inputs": {"check_inputs": 1.0},
        "restart_every": {"restart_every": 0},
    }
    for name, change in bad.items():
        arguments = {"alpha": 0.1, "check_inputs": 1, "restart_every": None, **change}
        with pytest.raises(ValidationError, match=name):
            evidence_path(tests, bins, exits, **arguments)
    with pytest.raises(ValidationError, match="two ShiftTests"):
        evidence_path(tests[:1], bins, exits, alpha=0.1, check_inputs=1, restart_every=None)
    with pytest.raises(ValidationError, match=r"exit_counts as a \[T, 2\]"):
        evidence_path(tests, bins, bins, alpha=0.1, check_inputs=1, restart_every=None)
    assert segment_threshold(np.float64(0.05), np.int64(2)) == pytest.approx(
        math.log(math.pi**2 * 4 / 0.3)
    )
    for alpha, segment in ((True, 1), (0.05, 0), (0.05, 1.0), (1.0, 1)):
        with pytest.raises(ValidationError):
            segment_threshold(alpha, segment)


# ----------------------------------------------------- class 5 and 10: the monitor's arguments

#: Refused up front (before the reference is even loaded), and the word the message names.
BAD_ARGUMENTS = [
    ({"tracker": "mlflow"}, "tracker to be an adaptix.tracking.Tracker"),
    ({"tracker": object()}, "tracker"),
    ({"concentration": "100"}, "concentration to be a real number"),
    ({"concentration": True}, "concentration"),
    ({"seed": 1.5}, "seed to be an integer"),
    ({"seed": 2.0}, "seed to be an integer"),
    ({"seed": True}, "seed"),
    ({"seed": "0"}, "seed"),
    ({"seed": 2**64}, "seed to be an integer in"),
    ({"alpha": "0.05"}, "alpha to be a real number"),
    ({"alpha": np.bool_(True)}, "alpha"),
    ({"alpha": 0.0}, r"alpha in \(0, 1\)"),
    ({"check_every": np.float64(2.0)}, "check_every to be an integer"),
    ({"window": "10"}, "window"),
    ({"bins": True}, "bins"),
    ({"restart_every": 0}, "restart_every"),
    ({"decay": "0.9"}, "decay"),
    ({"audit": math.nan}, "audit"),
    ({"audit": "0.1"}, "audit"),
    ({"run_id": 3}, "run_id to be a str"),
    ({"on_alarm": "print"}, "on_alarm to be callable"),
]


@pytest.mark.parametrize(("arguments", "message"), BAD_ARGUMENTS, ids=str)
def test_bad_monitor_arguments_are_refused_before_any_work(
    arguments: dict[str, Any], message: str, tmp_path: Path
) -> None:
    policy = adaptix.policy("confidence", 0.6)
    with pytest.raises(ValidationError, match=message):
        ShiftMonitor(policy, tmp_path / "never-read.pt", **arguments)  # the path is not read


def test_numpy_scalars_pass_the_monitor(calibrated: ExitPolicy) -> None:
    monitor = ShiftMonitor(
        calibrated,
        _reference(),
        alpha=np.float32(0.05),
        check_every=np.int64(2),
        window=np.int32(50),
        decay=np.float64(0.99),
        audit=np.float32(0.25),
        concentration=np.float64(10.0),
        restart_every=np.int64(500),
        bins=np.int64(8),
        seed=np.int64(-3),
    )
    assert monitor.alpha == pytest.approx(0.05)
    assert type(monitor.alpha) is float
    assert type(monitor.check_every) is int
    assert type(monitor.concentration) is float
    stream = _reference(60, seed=5)
    for e in range(EXITS):
        monitor.count_exit(e, stream.logits[:, e])
    monitor.end_batch(adaptix.simulate(stream, calibrated).exit_index)
    monitor.end_batch(torch.empty(0, dtype=torch.int64))
    assert len(monitor.history) == 1
    assert str(monitor.report())


def test_monitor_methods_check_their_scalars(calibrated: ExitPolicy) -> None:
    monitor = ShiftMonitor(calibrated, _reference())
    with pytest.raises(ValidationError, match="proxy to be True or False"):
        monitor.observe(synthetic_trace(20, EXITS, CLASSES, seed=3), proxy=1)  # type: ignore[arg-type]
    for method in (monitor.feedback_trace, monitor.calibration, monitor.recalibrated_policy):
        with pytest.raises(ValidationError, match="source to be one of"):
            method("label")  # type: ignore[arg-type]  # refused, as tested
    with pytest.raises(ValidationError, match="criterion as a registry name"):
        monitor.recertify(early_accuracy=0.8, criterion=3)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="z"):
        monitor.report().moved("3")  # type: ignore[arg-type]  # refused, as tested


# -------------------------------------------------------------------------------- properties


def _corruptions(counts: ThresholdCounts) -> st.SearchStrategy[tuple[str, Any]]:
    """One field of ``counts`` and a corrupted value for it."""
    junk = st.sampled_from(
        [None, True, False, "3", 2.5, math.nan, math.inf, -1, np.int64(2), (), []]
    )

    def table(name: str) -> st.SearchStrategy[tuple[str, Any]]:
        original = getattr(counts, name)

        @st.composite
        def poke(draw: st.DrawFn) -> tuple[str, Any]:
            value = original.clone()
            flat = value.view(-1)
            for _ in range(draw(st.integers(1, 3))):
                cell = draw(st.integers(0, flat.numel() - 1))
                flat[cell] += draw(st.integers(-3, 3))
            if value.dim() == 2 and draw(st.booleans()):
                a, b = (
                    draw(st.integers(0, value.shape[0] - 1)),
                    draw(st.integers(0, value.shape[0] - 1)),
                )
                value[[a, b]] = value[[b, a]]
            return name, value

        return poke() | junk.map(lambda v: (name, v))

    def scalar(name: str) -> st.SearchStrategy[tuple[str, Any]]:
        original = getattr(counts, name)
        return st.integers(-3, 3).map(lambda d: (name, original + d)) | junk.map(
            lambda v: (name, v)
        )

    thresholds = st.permutations(counts.thresholds).map(lambda p: ("thresholds", tuple(p)))
    threshold_junk = st.tuples(st.integers(0, len(counts.thresholds) - 1), junk | st.floats()).map(
        lambda c: (
            "thresholds",
            tuple(c[1] if i == c[0] else t for i, t in enumerate(counts.thresholds)),
        )
    )
    costs = st.permutations(counts.costs).map(lambda p: ("costs", tuple(p))) | st.lists(
        st.floats(-1, 5) | junk, min_size=len(counts.costs), max_size=len(counts.costs)
    ).map(lambda c: ("costs", tuple(c)))
    return st.one_of(
        table("exits"),
        table("correct"),
        table("lost"),
        scalar("final_correct"),
        scalar("num_inputs"),
        scalar("num_classes"),
        thresholds,
        threshold_junk,
        costs,
        st.sampled_from(["", 3, None, "pcee"]).map(lambda v: ("criterion", v)),
        st.sampled_from([(("b", 1), ("a", 2)), "x", (("a", 1), ("a", 2)), (("a", 1),)]).map(
            lambda v: ("params", v)
        ),
        st.sampled_from(["", 5, "0" * 64]).map(lambda v: ("calibration", v)),
    )


@pytest.fixture(scope="module")
def honest_counts() -> list[ThresholdCounts]:
    """Counts of several criteria and sizes, and of a sum of shards."""
    trace = _trace(40, seed=3)
    halves = [trace.subset(slice(0, 17)), trace.subset(slice(17, 40))]
    return [
        _counts(trace),
        _counts(trace, "entropy", (0.2, 0.9, 0.5, 0.5)),
        _counts(trace, "patience", (1, 3, 2)),
        _counts(halves[0]) + _counts(halves[1]),
        _counts(synthetic_trace(12, 2, 3, seed=5), "confidence", (0.4, 0.8)),
        _counts(synthetic_trace(9, 1, 2, seed=5), "confidence", (0.4, 0.8)),
        _counts(_one_class_trace(9, 3), "confidence", (0.4, 0.8)),
    ]


@FUZZ
@given(data=st.data())
def test_randomly_corrupted_counts_are_refused_or_still_consistent(
    data: st.DataObject, honest_counts: list[ThresholdCounts]
) -> None:
    counts = data.draw(st.sampled_from(honest_counts), label="counts")
    name, value = data.draw(_corruptions(counts), label="corruption")
    result = outcome(replace, counts, **{name: value})
    if isinstance(result, AdaptixError):
        assert isinstance(result, ValidationError), result
        assert str(result).startswith("expected"), result
        return
    assert_sane(result)
    assert_sane(result + result)  # what adds stays consistent
    assert_sane(sum([result, result]))


@FEW
@given(data=st.data())
def test_counts_of_any_trace_are_consistent(data: st.DataObject, traces) -> None:
    """The checks never refuse real counts: any trace, any criterion, any grid."""
    trace = data.draw(traces(labelled=None, max_inputs=25), label="trace")
    name = data.draw(st.sampled_from(["confidence", "entropy", "patience"]), label="criterion")
    if name == "patience":
        grid: list[Any] = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=6))
    else:
        grid = data.draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))
    counts = count_thresholds(trace, name, grid)
    assert counts.num_classes == trace.num_classes
    assert_sane(counts)


# ------------------------------------------------------------------------------------ fuzz


def _reference_corruptions(counts: ReferenceCounts) -> st.SearchStrategy[tuple[str, Any]]:
    junk = st.sampled_from([None, True, "3", 2.5, math.nan, -1, 0, np.int64(3), ()])
    pokes = st.tuples(
        st.sampled_from(["reach", "exits"]), st.integers(0, 40), st.integers(-3, 3)
    ).map(lambda c: (c[0], _poked(getattr(counts, c[0]), c[1], c[2])))
    others = st.tuples(
        st.sampled_from(
            [
                "num_classes",
                "costs",
                "criterion",
                "params",
                "threshold",
                "exits_early",
                "calibration",
            ]
        ),
        junk,
    )
    return pokes | others


def _poked(table: torch.Tensor, cell: int, delta: int) -> torch.Tensor:
    value = table.clone()
    value.view(-1)[cell % value.numel()] += delta
    return value


@FUZZ
@given(data=st.data())
def test_fuzz_reference_counts_and_the_monitor_built_on_them(
    data: st.DataObject, calibrated: ExitPolicy
) -> None:
    """Corrupted reference counts are refused, or consistent and accepted by the monitor of
    their policy; any monitor argument drawn from good and bad values is judged up front."""
    counts = reference_counts(_reference(60, seed=data.draw(st.integers(0, 3))), calibrated)
    name, value = data.draw(_reference_corruptions(counts), label="corruption")
    result = outcome(replace, counts, **{name: value})
    if isinstance(result, AdaptixError):
        must_raise(result, ValidationError, f"{name}={describe(value)}")
        return
    reach, exits = result.reach, result.exits
    reached = [int(exits[e:].sum()) for e in range(result.num_exits)]
    assert reach.sum(dim=1).tolist() == reached
    assert sum(reached[:1]) >= 1
    assert bool((reach >= 0).all())
    assert bool((exits >= 0).all())
    monitor = outcome(ShiftMonitor, calibrated, result)
    if any(
        getattr(result, key) != getattr(counts, key)
        for key in ("threshold", "params", "criterion", "calibration", "exits_early")
    ):
        must_raise(monitor, ValidationError, "counts of another policy")
    elif not isinstance(monitor, AdaptixError):
        assert monitor.check() == 0.0


_SCALARS = {
    "alpha": ([0.05, np.float32(0.01), 0.5], [0.0, 1.0, "0.05", True, math.nan, None]),
    "check_every": ([1, np.int64(3)], [0, 2.0, "2", False]),
    "window": ([1, 500], [0, 1.5, None]),
    "concentration": ([0.0, np.float64(5.0), 100], ["100", math.inf, -1.0, True]),
    "seed": ([0, -1, np.int32(7), 2**64 - 1], [1.5, "0", 2**64, None, np.bool_(False)]),
    "restart_every": ([None, 10], [0, 10.0]),
    "decay": ([None, 0.5, np.float32(0.9)], [1.0, 0.0, "0.5"]),
    "audit": ([0.0, 0.5, np.float16(0.25)], [1.0, -0.1, math.nan, "0"]),
    "bins": ([1, 12], [0, 3.0]),
    "tracker": ([None], ["mlflow", 1, object()]),
    "run_id": ([None, "run"], [3, b"run"]),
}


@FUZZ
@given(data=st.data())
def test_fuzz_monitor_arguments(data: st.DataObject) -> None:
    policy = adaptix.policy("confidence", 0.7)
    arguments, bad = {}, []
    for name, (good, wrong) in _SCALARS.items():
        if data.draw(st.booleans(), label=f"{name}?"):
            use_bad = data.draw(st.booleans(), label=f"bad {name}?")
            arguments[name] = data.draw(st.sampled_from(wrong if use_bad else good), label=name)
            if use_bad:
                bad.append(name)
    result = outcome(ShiftMonitor, policy, _reference(40, seed=1), **arguments)
    if bad:
        error = must_raise(result, ValidationError, f"bad {bad}")
        assert any(name in str(error) for name in bad), (bad, str(error))
    else:
        assert isinstance(result, ShiftMonitor), describe(result)


def test_swap_policy_refuses_a_reference_without_a_monitor() -> None:
    """A reference is read by the monitor alone: given to a runner without one, it would be
    ignored, so it is refused and the runner keeps its policy."""
    model = adaptix.build_model(
        "sequential",
        3,
        source=[torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)],
        example_input=torch.randn(2, 4),
    )
    runner = adaptix.EarlyExitRunner(model, adaptix.policy("confidence", 0.9))
    trace = synthetic_trace(20, model.num_exits, 3)
    with pytest.raises(adaptix.ValidationError, match="no monitor"):
        runner.swap_policy(adaptix.policy("confidence", 0.5), reference=trace)
    assert runner.policy.threshold == 0.9
