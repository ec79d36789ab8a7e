"""Fuzzing the public API: every call returns a valid result or raises an `AdaptixError`.

Hypothesis draws shapes, dtypes, NaN/±inf, empty inputs, out-of-range parameters, corrupt files
and broken plugin components, and every call goes through `fuzz_strategies.outcome`, which fails
the test on any exception that is not an `AdaptixError`. Where the input was valid the result is
checked against an oracle that does not share adaptix's code path: the naive per-input reference
of ``PCEE.md`` (``naive``), a brute-force decision per row, `simulate` for the runner, a second
save and load for files. A strategy that plants a problem says whether it must be refused (hard)
or may be either refused or handled correctly (soft), so an accepted bad input is a failure too.

The profile is deterministic (``derandomize=True``, no example database) and sized to run in
well under a minute on two cores.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from fuzz_strategies import (
    BOOLS,
    BUILTIN_CRITERIA,
    CALIBRATOR_BEHAVIOURS,
    CRITERION_BEHAVIOURS,
    FIELD_JUNK,
    INF,
    NAN,
    NOT_NUMBERS,
    PLUGIN_NAME,
    Verdict,
    calibration_arguments,
    calibration_digest,
    combine,
    convertible_number,
    count_verdict,
    counts,
    describe,
    exit_logits,
    exit_rules,
    expected_scores,
    finite_real,
    flip_field,
    fuzz_calibrator_classes,
    fuzz_criterion_classes,
    is_real,
    judge,
    model_parts,
    must_raise,
    must_succeed,
    non_finite,
    outcome,
    strict_equal,
    subsets,
    sweep_arguments,
    thresholds,
    tiny_inputs,
    tiny_model,
    trace_arguments,
    unit_verdict,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import adaptix
from adaptix import (
    AdaptixError,
    Calibration,
    CalibrationError,
    EarlyExitRunner,
    PluginError,
    Trace,
    ValidationError,
)
from adaptix.kernels import ExitDecider, exit_decision
from adaptix.offline import control
from adaptix.plugins import AdaptixPluginManager
from adaptix.settings import Settings
from adaptix.testing import synthetic_trace

FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=30)
#: For tests parametrised over a list of cases (hypothesis draws the rest for each case).
EACH = settings(FUZZ, max_examples=20)

#: Built-in components only, for calls whose plugins are not under test.
_BUILTINS = adaptix.get_plugin_manager(settings=Settings(autoload_plugins=False))

#: Entropy is computed in float32 by adaptix and in float64 by the reference: decisions are
#: compared only where the reference's entropy is farther than this from the threshold.
ENTROPY_TOLERANCE = 1e-5
CONFIDENCE_TOLERANCE = 1e-6


@pytest.fixture(scope="session")
def fuzz_plugins(manager_with: Callable[..., AdaptixPluginManager]) -> AdaptixPluginManager:
    """Built-ins plus one test-local plugin holding every broken criterion and calibrator."""
    classes = (*fuzz_criterion_classes().values(), *fuzz_calibrator_classes().values())
    return manager_with(*classes, name=PLUGIN_NAME)


def _names_the_plugin(error: AdaptixError, component: str, what: str) -> None:
    text = str(error)
    assert isinstance(error, PluginError), (
        f"{what}: a broken plugin component must give a PluginError, got "
        f"{type(error).__name__}: {error}"
    )
    missing = [name for name in (PLUGIN_NAME, component) if name not in text]
    assert not missing, (
        f"{what}: the PluginError must name the plugin '{PLUGIN_NAME}' and the component "
        f"'{component}', got: {error}"
    )


def _threshold_for(name: str, data: st.DataObject, exact: list[float]) -> Any:
    """A valid threshold for a built-in or fuzz criterion, often one a score hits exactly."""
    if name == "patience":
        return data.draw(st.integers(1, 5), label="threshold")
    options = st.floats(0.0, 1.0)
    if exact:
        options = st.sampled_from(exact) | options
    return data.draw(options, label="threshold")


# ====================================================================================== Trace


def _same_trace(a: Trace, b: Trace) -> bool:
    labels_equal = (a.labels is None and b.labels is None) or (
        a.labels is not None and b.labels is not None and torch.equal(a.labels, b.labels)
    )
    return (
        a.logits.dtype == b.logits.dtype
        and torch.equal(a.logits, b.logits)
        and labels_equal
        and torch.equal(a.costs, b.costs)
        and a.meta == b.meta
    )


@FUZZ
@given(arguments=trace_arguments())
def test_trace_accepts_exactly_what_its_contract_allows(arguments: tuple[Any, ...]) -> None:
    logits, labels, costs, meta, problems = arguments
    result = outcome(Trace, logits, labels, costs, meta)
    if not judge(result, combine(problems), ValidationError, f"Trace with {problems}"):
        return
    trace: Trace = result
    assert torch.equal(trace.logits, logits)
    assert trace.logits.dtype == logits.dtype
    assert (trace.num_inputs, trace.num_exits, trace.num_classes) == tuple(logits.shape)
    assert (labels is None) == (trace.labels is None)
    if labels is not None:
        assert torch.equal(trace.labels, labels)
    assert trace.costs.dtype == torch.float64
    assert trace.costs.tolist() == [float(c) for c in torch.as_tensor(costs).tolist()]
    assert trace.meta == dict(meta or {})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.pt"
        must_succeed(outcome(trace.save, path), "Trace.save of a valid trace")
        loaded = must_succeed(outcome(Trace.load, path), "Trace.load of a saved trace")
        assert _same_trace(trace, loaded), "a saved-then-loaded trace differs from the original"


@FUZZ
@given(data=st.data())
def test_trace_subset_and_scaled(data: st.DataObject, traces: Any) -> None:
    trace: Trace = data.draw(traces(labelled=None, max_inputs=8), label="trace")
    index, verdict = data.draw(subsets(trace.num_inputs), label="index")
    result = outcome(trace.subset, index)
    if judge(result, verdict, ValidationError, f"Trace.subset({describe(index)})"):
        assert torch.equal(result.logits, trace.logits[index])
        if trace.labels is not None:
            assert torch.equal(result.labels, trace.labels[index])

    factor = data.draw(thresholds() | st.sampled_from([2.0, 3, 1e5, 1e300]), label="factor")
    held = float(factor) if is_real(factor) else convertible_number(factor)
    verdict: Verdict = "invalid"
    if held is not None and math.isfinite(held) and held > 0:
        verdict = "valid" if isinstance(factor, (float, int)) else "either"
        if non_finite(trace.logits * held):
            verdict = "invalid"
    result = outcome(trace.scaled, factor)
    if judge(result, verdict, ValidationError, f"Trace.scaled({describe(factor)})"):
        assert held is not None
        assert torch.equal(result.logits, trace.logits * held)
        if trace.labels is not None:
            assert torch.equal(result.labels, trace.labels)


# ============================================================================== Calibration


def _same_calibration(a: Calibration, b: Calibration) -> bool:
    return (
        torch.equal(a.counts, b.counts)
        and torch.equal(a.correct, b.correct)
        and torch.equal(a.confidence_sum, b.confidence_sum)
        and (a.num_classes, a.method, a.meta) == (b.num_classes, b.method, b.meta)
    )


@FUZZ
@given(arguments=calibration_arguments(), window=counts([0, 0, 1, 2]))
def test_calibration_accepts_exactly_consistent_tables(
    arguments: tuple[Any, ...], window: Any, naive: Any
) -> None:
    counts_arg, correct_arg, num_classes, keywords, problems = arguments
    result = outcome(Calibration, counts_arg, correct_arg, num_classes, **keywords)
    if not judge(result, combine(problems), CalibrationError, f"Calibration with {problems}"):
        return
    calibration: Calibration = result
    given_counts = torch.as_tensor(counts_arg, dtype=torch.float64)
    assert calibration.counts.dtype == torch.int64
    assert torch.equal(calibration.counts.double(), given_counts), "counts changed on the way in"
    assert torch.equal(calibration.correct.double(), torch.as_tensor(correct_arg).double())
    assert calibration.num_classes == num_classes
    assert calibration.num_inputs == int(given_counts[0].sum())
    window_verdict = count_verdict(window, minimum=0)
    accuracy = outcome(calibration.accuracy, window)
    if judge(accuracy, window_verdict, ValidationError, f"accuracy(window={window!r})"):
        expected = naive.accuracy(
            calibration.counts.tolist(), calibration.correct.tolist(), window=int(window)
        )
        got = [[None if math.isnan(a) else a for a in row] for row in accuracy.tolist()]
        assert got == expected, f"accuracy(window={window}) is not k / n pooled over the window"
    merged = must_succeed(outcome(lambda: calibration + calibration), "merging a calibration")
    assert torch.equal(merged.counts, calibration.counts * 2)
    assert torch.equal(merged.correct, calibration.correct * 2)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "calibration.json"
        must_succeed(outcome(calibration.save, path), "Calibration.save of a valid calibration")
        loaded = must_succeed(outcome(Calibration.load, path), "Calibration.load of a saved file")
        assert _same_calibration(calibration, loaded)
        assert loaded == calibration
        assert loaded.checksum == calibration.checksum


# ==================================================================================== files


CALIBRATION_FILE_CORRUPTIONS = (
    "bytes",
    "truncated",
    "nested",
    "directory",
    "missing",
    "not_utf8",
    "list",
    "version",
    "dropped",
    "kept_checksum",
    "new_checksum",
)
TRACE_FILE_CORRUPTIONS = (
    "bytes",
    "truncated",
    "directory",
    "missing",
    "json",
    "pickle",
    "format",
    "version",
    "no_logits",
    "no_labels",
    "no_costs",
    "logits_text",
    "meta_number",
    "meta_values",
    "not_a_dict",
)


@pytest.mark.parametrize("corruption", CALIBRATION_FILE_CORRUPTIONS)
@EACH
@given(data=st.data())
def test_calibration_files_load_faithfully_or_not_at_all(
    corruption: str, data: st.DataObject, traces: Any, plugins: AdaptixPluginManager
) -> None:
    trace = data.draw(traces(max_inputs=10), label="trace")
    calibration = adaptix.calibrate(trace, bins=data.draw(st.integers(1, 4)), plugins=plugins)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "calibration.json"
        calibration.save(path)
        text = path.read_text()
        document = json.loads(text)
        recomputed = False
        if corruption == "bytes":
            path.write_bytes(data.draw(st.binary(max_size=64), label="bytes"))
        elif corruption == "truncated":
            path.write_text(text[: data.draw(st.integers(0, len(text) - 1), label="cut")])
        elif corruption == "nested":
            path.write_text("[" * 100_000 + "]" * 100_000)
        elif corruption == "directory":
            path.unlink()
            path.mkdir()
        elif corruption == "missing":
            path.unlink()
        elif corruption == "not_utf8":
            raw = text.encode()
            cut = data.draw(st.integers(0, len(raw)), label="where")
            path.write_bytes(raw[:cut] + b"\xff\xc0" + raw[cut:])
        elif corruption == "list":
            path.write_text(json.dumps([document]))
        elif corruption == "version":
            path.write_text(json.dumps({**document, "version": 99}))
        elif corruption == "dropped":
            field = data.draw(st.sampled_from(sorted(document)), label="field")
            path.write_text(json.dumps({k: v for k, v in document.items() if k != field}))
        else:
            field = data.draw(st.sampled_from(sorted(FIELD_JUNK)), label="field")
            value = data.draw(st.sampled_from(FIELD_JUNK[field]), label="value")
            flipped = flip_field(document, field, value, data.draw(st.integers(0, 50)))
            if corruption == "new_checksum":
                payload = {k: v for k, v in flipped.items() if k not in ("format", "version")}
                payload.pop("sha256")
                flipped["sha256"] = calibration_digest(payload)
                recomputed = True
            path.write_text(json.dumps(flipped))
        result = outcome(Calibration.load, path)
        if not recomputed:
            must_raise(result, CalibrationError, f"Calibration.load of a file with {corruption}")
            return
        if isinstance(result, AdaptixError):
            must_raise(result, CalibrationError, "Calibration.load of a flipped field")
            return
        # Accepted: the loaded calibration must be exactly what the file says.
        again = Path(folder) / "again.json"
        must_succeed(outcome(result.save, again), "saving a loaded calibration")
        saved = json.loads(again.read_text())
        written = json.loads(path.read_text())
        assert strict_equal(saved, written), (
            f"Calibration.load accepted {field}={value!r} (with a valid checksum) but the "
            f"calibration it returned says {field}={saved.get(field)!r}: a silent conversion"
        )


@pytest.mark.parametrize("corruption", TRACE_FILE_CORRUPTIONS)
@settings(EACH, max_examples=5)
@given(data=st.data())
def test_trace_files_load_faithfully_or_not_at_all(
    corruption: str, data: st.DataObject, traces: Any
) -> None:
    trace = data.draw(traces(labelled=None, max_inputs=6), label="trace")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.pt"
        trace.save(path)
        payload = torch.load(path, weights_only=True)
        replaced: dict[str, Any] = {
            "format": {**payload, "format": "something.else"},
            "version": {**payload, "version": 99},
            "no_logits": {k: v for k, v in payload.items() if k != "logits"},
            "no_labels": {k: v for k, v in payload.items() if k != "labels"},
            "no_costs": {k: v for k, v in payload.items() if k != "costs"},
            "logits_text": {**payload, "logits": "logits"},
            "meta_number": {**payload, "meta": 5},
            "meta_values": {**payload, "meta": {"model": 1}},
            "not_a_dict": [payload],
        }
        if corruption == "bytes":
            path.write_bytes(data.draw(st.binary(max_size=64), label="bytes"))
        elif corruption == "truncated":
            raw = path.read_bytes()
            path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")])
        elif corruption == "directory":
            path.unlink()
            path.mkdir()
        elif corruption == "missing":
            path.unlink()
        elif corruption == "json":
            path.write_text('{"format": "adaptix.trace"}')
        elif corruption == "pickle":
            torch.save(SimpleNamespace(logits=1), path)
        else:
            torch.save(replaced[corruption], path)
        must_raise(outcome(Trace.load, path), ValidationError, f"Trace.load with {corruption}")


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _savers(plugins: AdaptixPluginManager) -> dict[str, tuple[Any, Callable[[Path], Any]]]:
    """What can be saved: (the object, how to read a saved file back into an equal object)."""
    trace = synthetic_trace(20, 3, 4, seed=1)
    frontier = adaptix.sweep(trace, "confidence", [0.5], plugins=plugins)

    def read_csv(path: Path) -> Any:
        with path.open() as handle:
            return list(csv.DictReader(handle))

    return {
        "trace": (trace, Trace.load),
        "calibration": (adaptix.calibrate(trace, plugins=plugins), Calibration.load),
        "frontier": (frontier, read_csv),
    }


@pytest.mark.parametrize("what", ["trace", "calibration", "frontier"])
@pytest.mark.parametrize(
    "where", ["directory", "parent_is_a_file", "missing_parent", "rename_fails"]
)
def test_a_save_writes_the_whole_file_or_fails_cleanly(
    what: str, where: str, plugins: AdaptixPluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save that cannot be done is a ValidationError that leaves the old file and no temporary
    file; one that succeeds writes a file that reads back whole."""
    saved, read = _savers(plugins)[what]
    save = saved.to_csv if what == "frontier" else saved.save
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        target = folder / "out.file"
        old = b"the previous version"
        if where == "directory":
            target.mkdir()
        elif where == "parent_is_a_file":
            (folder / "plain").write_bytes(old)
            target = folder / "plain" / "out.file"
        elif where == "missing_parent":
            target = folder / "missing" / "out.file"
        else:
            target.write_bytes(old)

            def refuse(*args: Any, **kwargs: Any) -> None:
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(os, "replace", refuse)
            monkeypatch.setattr(os, "rename", refuse)
        before = _listing(folder)
        result = outcome(save, target)
        monkeypatch.undo()
        if where in ("directory", "parent_is_a_file"):
            must_raise(result, ValidationError, f"{what} saved onto {where}")
        if isinstance(result, AdaptixError):
            must_raise(result, ValidationError, f"{what} saved onto {where}")
            assert _listing(folder) == before, f"a failed {what} save left files behind"
            if where == "rename_fails":
                assert target.read_bytes() == old, f"a failed {what} save changed the old file"
            return
        back = must_succeed(outcome(read, target), f"reading back a saved {what}")
        if what == "frontier":
            assert len(back) == len(saved)
        else:
            assert (
                back == saved if what == "calibration" else torch.equal(back.logits, saved.logits)
            )
        leftovers = set(_listing(folder)) - set(before) - {str(target.relative_to(folder))}
        assert not leftovers - {"missing"}, f"a {what} save left {leftovers}"


@pytest.mark.parametrize("what", ["trace", "calibration"])
def test_meta_that_cannot_be_saved_is_refused_when_given(
    what: str, plugins: AdaptixPluginManager
) -> None:
    trace = synthetic_trace(10, 2, 3, seed=2)
    meta = {"model": object()}
    if what == "trace":
        result = outcome(Trace, trace.logits, trace.labels, trace.costs, meta)
    else:
        tables = adaptix.calibrate(trace, plugins=plugins)
        result = outcome(Calibration, tables.counts, tables.correct, 3, meta=meta)
    must_raise(result, ValidationError, f"{what} with unsaveable meta")


# ============================================================================ calibrate


@FUZZ
@given(data=st.data())
def test_calibrate_counts_every_exit_and_bin(
    data: st.DataObject, traces: Any, naive: Any, fuzz_plugins: AdaptixPluginManager
) -> None:
    trace = data.draw(traces(labelled=None, max_inputs=10), label="trace")
    bins = data.draw(counts([1, 2, 3, 10]), label="bins")
    method = data.draw(
        st.sampled_from(["reliability"] * 4 + ["nope", "", "RELIABILITY"])
        | st.sampled_from([None, 3]),
        label="method",
    )
    params = data.draw(st.sampled_from([{}, {}, {}, {"nope": 1}]), label="params")
    plugins = data.draw(st.sampled_from([fuzz_plugins] * 5 + [{}, "plugins"]), label="plugins")
    subject: Any = data.draw(st.sampled_from(["trace"] * 6 + ["none", "logits"]), label="subject")
    subject = {"trace": trace, "none": None, "logits": trace.logits}[subject]
    problems = []
    if subject is not trace:
        problems.append(("not a trace", True))
    elif trace.labels is None:
        problems.append(("an unlabelled trace", True))
    verdict = count_verdict(bins)
    if verdict != "valid":
        problems.append((f"bins={bins!r}", verdict == "invalid"))
    if method != "reliability":
        problems.append((f"method={method!r}", True))
    if params:
        problems.append(("an unknown parameter", True))
    if plugins is not fuzz_plugins:
        problems.append(("plugins that are not a plugin manager", True))
    result = outcome(adaptix.calibrate, subject, method, bins, plugins=plugins, **params)
    if not judge(result, combine(problems), AdaptixError, f"calibrate with {problems}"):
        return
    n, k = naive.tables(trace, int(bins))
    assert isinstance(result, Calibration)
    assert (result.counts.tolist(), result.correct.tolist()) == (n, k)
    assert (result.num_exits, result.num_classes, result.bins) == (
        trace.num_exits,
        trace.num_classes,
        int(bins),
    )


@pytest.mark.parametrize("behaviour", sorted(CALIBRATOR_BEHAVIOURS))
def test_a_broken_calibrator_is_a_plugin_error_naming_it(
    behaviour: str, fuzz_plugins: AdaptixPluginManager, plugins: AdaptixPluginManager
) -> None:
    trace = synthetic_trace(30, 3, 4, seed=3)
    name = f"fuzz_{behaviour}"
    result = outcome(adaptix.calibrate, trace, name, 5, plugins=fuzz_plugins)
    if CALIBRATOR_BEHAVIOURS[behaviour]:
        honest = adaptix.calibrate(trace, bins=5, plugins=plugins)
        assert torch.equal(must_succeed(result, name).counts, honest.counts)
        return
    _names_the_plugin(must_raise(result, AdaptixError, f"calibrate with {name}"), name, name)


# ====================================================================== policy and simulate


@FUZZ
@given(data=st.data())
def test_policy_validates_every_threshold_and_parameter(
    data: st.DataObject, plugins: AdaptixPluginManager
) -> None:
    name = data.draw(
        st.sampled_from([*BUILTIN_CRITERIA, "margin"] * 3)
        | st.sampled_from(["nope", "", "Confidence", None, 3, b"confidence"]),
        label="name",
    )
    threshold = data.draw(thresholds([2, 3, 3.0]), label="threshold")
    calibration_kind = data.draw(st.sampled_from(["good", "none", "trace", "dict"]))
    trace = synthetic_trace(20, 3, 4, seed=4)
    calibration = {
        "good": adaptix.calibrate(trace, plugins=plugins),
        "none": None,
        "trace": trace,
        "dict": {"counts": [[1]]},
    }[calibration_kind]
    params = data.draw(
        st.sampled_from([{}, {}, {}, {"window": 2}, {"window": 0}, {"nope": 1}])
        | st.sampled_from([{"window": -1}, {"window": 1.5}, {"window": None}, {"window": "x"}]),
        label="params",
    )
    problems: list[tuple[str, bool]] = []
    if name not in (*BUILTIN_CRITERIA, "margin"):
        problems.append((f"criterion {name!r}", True))
    verdict = count_verdict(threshold) if name == "patience" else unit_verdict(threshold)
    if verdict != "valid":
        problems.append((f"threshold {describe(threshold)}", verdict == "invalid"))
    if (name in ("pcee", "pcee_ws") and calibration_kind != "good") or calibration_kind in (
        "trace",
        "dict",
    ):
        problems.append((f"calibration: {calibration_kind}", True))
    if params and not (name == "pcee_ws" and params.get("window") in (0, 2)):
        problems.append((f"params {params}", True))
    result = outcome(adaptix.policy, name, threshold, calibration, plugins=plugins, **params)
    if not judge(result, combine(problems), AdaptixError, f"policy with {problems}"):
        return
    assert isinstance(result, adaptix.ExitPolicy)
    assert result.name == name
    assert isinstance(result.threshold, float)
    assert result.threshold == float(threshold)
    other = data.draw(thresholds([2, 3]), label="other threshold")
    verdict = count_verdict(other) if name == "patience" else unit_verdict(other)
    sibling = outcome(result.with_threshold, other)
    if judge(sibling, verdict, ValidationError, f"with_threshold({describe(other)})"):
        assert sibling.threshold == float(other)
        assert sibling.criterion is result.criterion


def _rule(
    name: str, threshold: float, table: list[list[float | None]] | None, bins: int, naive: Any
) -> Callable[[int, int, list[Any]], bool]:
    """The rule of ``PCEE.md`` for one criterion, on the naive quantities of one input."""
    if name == "confidence":
        return lambda i, e, row: row[e].confidence >= threshold
    if name == "margin":
        return lambda i, e, row: row[e].margin >= threshold
    if name == "patience":
        return lambda i, e, row: naive.streaks(row)[e] >= threshold
    assert table is not None

    def calibrated(i: int, e: int, row: list[Any]) -> bool:
        accuracy = table[e][naive.bin_of(row[e].confidence, bins)]
        return accuracy is not None and accuracy >= threshold

    return calibrated


@FUZZ
@given(data=st.data())
def test_simulate_takes_the_first_exit_whose_rule_fires(
    data: st.DataObject, traces: Any, naive: Any, plugins: AdaptixPluginManager
) -> None:
    trace: Trace = data.draw(traces(labelled=None, max_inputs=12), label="trace")
    name = data.draw(st.sampled_from([*BUILTIN_CRITERIA, "margin"]), label="criterion")
    quantities = naive.quantities(trace)
    calibration, table, bins, params, mismatch = None, None, 10, {}, False
    if name in ("pcee", "pcee_ws"):
        mismatch = data.draw(st.integers(0, 5), label="mismatch") == 0
        shape = {"num_exits": trace.num_exits, "num_classes": trace.num_classes}
        if mismatch:
            shape["num_classes"] += 1
        held_out = data.draw(traces(max_inputs=12, **shape), label="held out")
        bins = data.draw(st.integers(1, 6), label="bins")
        window = data.draw(st.integers(0, 3), label="window") if name == "pcee_ws" else 0
        params = {"window": window} if name == "pcee_ws" else {}
        calibration = adaptix.calibrate(held_out, bins=bins, plugins=plugins)
        table = naive.accuracy(*naive.tables(held_out, bins), window=window)
        exact = [a for row in table for a in row if a is not None]
    elif name == "confidence":
        exact = [q.confidence for row in quantities for q in row]
    elif name == "margin":
        exact = [q.margin for row in quantities for q in row]
    else:
        exact = [q.entropy for row in quantities for q in row]
    threshold = _threshold_for(name, data, exact)
    pol = must_succeed(
        outcome(adaptix.policy, name, threshold, calibration, plugins=plugins, **params), "policy"
    )
    result = outcome(adaptix.simulate, trace, pol)
    if mismatch:
        must_raise(result, CalibrationError, "simulate with a calibration of other classes")
        return
    result = must_succeed(result, f"simulate({trace!r}, {pol!r})")
    exits = result.exit_index.tolist()
    if name == "entropy":
        # Exits where the rule surely fires (entropy below τ - tol) and where it may fire.
        latest = naive.exits(
            quantities, lambda i, e, row: row[e].entropy <= threshold - ENTROPY_TOLERANCE
        )
        earliest = naive.exits(
            quantities, lambda i, e, row: row[e].entropy <= threshold + ENTROPY_TOLERANCE
        )
        for i, (lo, x, hi) in enumerate(zip(earliest, exits, latest, strict=True)):
            assert lo <= x <= hi, f"input {i}: entropy rule at τ={threshold} exits at {x}"
    else:
        expected = naive.exits(quantities, _rule(name, threshold, table, bins, naive))
        assert exits == expected, f"{pol!r}: exit_index {exits}, the rule gives {expected}"
    assert result.exit_index.dtype == torch.int64
    assert result.exit_index.shape == (len(trace),)
    assert result.predictions.dtype == torch.int64
    predictions = [quantities[i][x].prediction for i, x in enumerate(exits)]
    assert result.predictions.tolist() == predictions
    metrics = naive.metrics(trace, quantities, exits)
    assert result.exit_histogram.tolist() == metrics["exit_histogram"]
    assert (result.accuracy, result.early_accuracy) == (
        metrics["accuracy"],
        metrics["early_accuracy"],
    )
    assert math.isclose(result.relative_cost, metrics["relative_cost"], rel_tol=1e-12)
    assert math.isclose(result.mean_cost, metrics["mean_cost"], rel_tol=1e-12)


@FUZZ
@given(data=st.data())
def test_simulate_refuses_what_is_not_a_trace_or_a_policy(
    data: st.DataObject, plugins: AdaptixPluginManager
) -> None:
    trace = synthetic_trace(10, 3, 4, seed=5)
    pol = adaptix.policy("confidence", 0.5, plugins=plugins)
    junk = data.draw(
        st.sampled_from([None, "trace", 3, trace.logits, {"logits": trace.logits}, [trace]])
    )
    which = data.draw(st.sampled_from(["trace", "policy"]))
    args = (junk, pol) if which == "trace" else (trace, junk)
    must_raise(outcome(adaptix.simulate, *args), ValidationError, f"simulate with junk {which}")


@FUZZ
@given(data=st.data())
def test_sweep_is_simulate_at_every_threshold(
    data: st.DataObject, traces: Any, plugins: AdaptixPluginManager
) -> None:
    trace: Trace = data.draw(traces(max_inputs=10), label="trace")
    criteria, grids, problems = data.draw(sweep_arguments(), label="arguments")
    names = [criteria] if isinstance(criteria, str) else list(criteria)
    calibration = None
    if data.draw(st.booleans(), label="calibrated"):
        calibration = adaptix.calibrate(trace, bins=4, plugins=plugins)
    elif {"pcee", "pcee_ws"} & set(names):
        problems.append(("pcee without a calibration", True))
    result = outcome(adaptix.sweep, trace, criteria, grids, calibration, plugins=plugins)
    if not judge(result, combine(problems), AdaptixError, f"sweep with {problems}"):
        return
    frontier: adaptix.Frontier = result
    assert frontier.criteria() == list(dict.fromkeys(names))
    for name in frontier.criteria():
        params = criteria[name] if isinstance(criteria, Mapping) else {}
        points = frontier.of(name)
        grid = grids.get(name) if isinstance(grids, Mapping) else grids
        if grid is None:
            expected = plugins.criteria.get(name).default_thresholds()
        else:
            expected = [float(t) for t in (grid.tolist() if isinstance(grid, Tensor) else grid)]
        assert [p.threshold for p in points] == expected, f"{name}: thresholds out of order"
        for point in points:
            pol = adaptix.policy(name, point.threshold, calibration, plugins=plugins, **params)
            single = adaptix.simulate(trace, pol)
            assert point.exit_histogram == tuple(single.exit_histogram.tolist()), pol
            assert (point.accuracy, point.early_accuracy) == (
                single.accuracy,
                single.early_accuracy,
            )
            assert math.isclose(point.relative_cost, single.relative_cost, rel_tol=1e-12)
    with tempfile.TemporaryDirectory() as folder:
        path = frontier.to_csv(Path(folder) / "frontier.csv")
        with path.open() as handle:
            assert len(list(csv.DictReader(handle))) == len(frontier)


# ================================================================================= control


def _deltas_problems(deltas: list[Any]) -> list[tuple[str, bool]]:
    verdicts = [(d, unit_verdict(d)) for d in deltas]
    return [(f"δ={describe(d)}", v == "invalid") for d, v in verdicts if v != "valid"]


@pytest.mark.parametrize("name", ["patience", "nope"])
def test_control_summary_of_a_criterion_without_an_accuracy_reading_is_refused(name: str) -> None:
    trace = synthetic_trace(30, 3, 4, seed=6)
    frontier = adaptix.sweep(trace, {"patience": {}}, {"patience": [1, 2]}, plugins=_BUILTINS)
    result = outcome(control.control_summary, frontier, name, [0.9], {0.9: 1.0}, plugins=_BUILTINS)
    must_raise(result, AdaptixError, f"control_summary for {name!r}")


@st.composite
def control_cases(draw: st.DrawFn, traces: Any) -> tuple[adaptix.Frontier, str, list[Any]]:
    """(frontier of confidence and a criterion at the naive thresholds of a grid, the
    criterion, δ values: from the grid, random, or junk)."""
    trace: Trace = draw(traces(max_inputs=10, min_exits=2), label="trace")
    name = draw(st.sampled_from(["confidence", "entropy", "pcee", "pcee_ws"]), label="name")
    calibration = adaptix.calibrate(trace, bins=4, plugins=_BUILTINS)
    grid = draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5, unique=True))
    naive_grid = [round(1.0 - t, 12) for t in grid] if name == "entropy" else grid
    frontier = adaptix.sweep(
        trace,
        list(dict.fromkeys(["confidence", name])),
        {"confidence": grid, name: naive_grid},
        calibration,
        plugins=_BUILTINS,
    )
    deltas = draw(
        st.lists(st.sampled_from(grid) | thresholds(), max_size=4, unique_by=repr), label="deltas"
    )
    return frontier, name, deltas


@FUZZ
@given(data=st.data())
def test_oracle_costs_is_the_cheapest_feasible_confidence_point(
    data: st.DataObject, traces: Any
) -> None:
    frontier, _, deltas = data.draw(control_cases(traces), label="case")
    points = frontier.of("confidence")
    problems = _deltas_problems(deltas)
    result = outcome(control.oracle_costs, points, deltas)
    if not judge(result, combine(problems), AdaptixError, f"oracle_costs with {problems}"):
        return
    for delta in deltas:
        feasible = [
            p.relative_cost
            for p in points
            if p.early_accuracy is None or p.early_accuracy >= float(delta)
        ]
        assert result[delta] == (min(feasible) if feasible else 1.0)


@FUZZ
@given(data=st.data())
def test_control_summary_counts_violations_or_refuses(data: st.DataObject, traces: Any) -> None:
    frontier, name, deltas = data.draw(control_cases(traces), label="case")
    problems = _deltas_problems(deltas)
    if not deltas:
        problems.append(("no δ", True))
    swept = {round(p.threshold, 9) for p in frontier.of(name)}

    def naive_key(delta: Any) -> float:
        return round(round(1.0 - float(delta) if name == "entropy" else float(delta), 12), 9)

    for delta in deltas:
        if unit_verdict(delta) == "valid" and naive_key(delta) not in swept:
            problems.append((f"δ={delta!r} not in the sweep", True))
    oracle = {d: 1.0 for d in deltas if unit_verdict(d) != "invalid"}
    result = outcome(control.control_summary, frontier, name, deltas, oracle, plugins=_BUILTINS)
    if not judge(result, combine(problems), AdaptixError, f"control_summary {problems}"):
        return
    by_threshold = {round(p.threshold, 9): p for p in frontier.of(name)}
    violations = 0
    for delta in deltas:
        early = by_threshold[naive_key(delta)].early_accuracy
        violations += early is not None and early < float(delta)
    assert result.violation_rate == violations / len(deltas)


@FUZZ
@given(
    points=st.lists(st.tuples(st.floats(0, 2), st.floats(0, 1)), max_size=5),
    budget=thresholds([0.5, 1.0, 2.0]),
)
def test_budget_helpers_against_brute_force(points: list[tuple[float, float]], budget: Any) -> None:
    verdict: Verdict = "valid" if finite_real(budget) else "invalid"
    infinite = isinstance(budget, float) and math.isinf(budget)
    if infinite or (verdict == "valid" and not isinstance(budget, (float, int))):
        verdict = "either"
    result = outcome(control.best_accuracy_within, points, budget)
    if judge(result, verdict, AdaptixError, f"best_accuracy_within(budget={budget!r})"):
        feasible = [a for c, a in points if c <= float(budget) * (1 + 1e-9)]
        assert result == (max(feasible) if feasible else None)
    result = outcome(control.cheapest_reaching, points, budget)
    if judge(result, verdict, AdaptixError, f"cheapest_reaching(accuracy={budget!r})"):
        feasible = [c for c, a in points if a >= float(budget)]
        assert result == (min(feasible) if feasible else None)


# ================================================================================= kernels


def _check_decision(
    logits: Tensor, threshold: float, kind: str, table: Tensor | None, decision: Any, naive: Any
) -> None:
    """An exit decision against the rule, row by row (``PCEE.md`` and the reference's doc)."""
    n = logits.shape[0]
    assert decision.prediction.dtype == torch.int64
    assert decision.prediction.shape == (n,)
    assert decision.exit_mask.dtype == torch.bool
    assert decision.exit_mask.shape == (n,)
    assert decision.confidence.shape == (n,)
    assert decision.score.shape == (n,)
    rows = logits.float()
    for i in range(n):
        row = rows[i]
        undefined = bool(row.isnan().any() or (row == INF).any() or (row == -INF).all())
        confidence = float(decision.confidence[i])
        score = float(decision.score[i])
        if undefined:
            assert not bool(decision.exit_mask[i]), f"row {i}: undefined softmax exits"
            assert math.isnan(confidence), f"row {i}: undefined softmax, defined confidence"
            assert math.isnan(score), f"row {i}: undefined softmax, defined score"
            continue
        values = row.tolist()
        top = max(values)
        assert int(decision.prediction[i]) == values.index(top), f"row {i}: prediction"
        q = naive.quantities(SimpleNamespace(num_inputs=1, num_exits=1, logits=row.view(1, 1, -1)))
        reference = q[0][0]
        assert abs(confidence - reference.confidence) <= CONFIDENCE_TOLERANCE, f"row {i}"
        exits = bool(decision.exit_mask[i])
        if kind == "confidence":
            assert score == confidence, f"row {i}: the score is not the confidence"
            assert exits == (confidence >= threshold), f"row {i}: confidence rule"
        elif kind == "entropy":
            assert abs(score - reference.entropy) <= ENTROPY_TOLERANCE, f"row {i}: entropy"
            assert exits == (score <= threshold), f"row {i}: entropy rule"
        else:
            assert table is not None
            accuracy = float(table.double()[naive.bin_of(confidence, table.shape[0])])
            defined = not math.isnan(accuracy)
            assert exits == (defined and accuracy >= threshold), f"row {i}: table rule"


@FUZZ
@given(logits_and_problems=exit_logits(), rule=exit_rules())
def test_exit_decision_and_decider_follow_the_rule_row_by_row(
    logits_and_problems: tuple[Tensor, list[tuple[str, bool]]],
    rule: tuple[Any, ...],
    naive: Any,
) -> None:
    logits, logit_problems = logits_and_problems
    threshold, kind, table, backend, rule_problems = rule
    problems = logit_problems + rule_problems
    what = f"exit_decision({describe(logits)}, {describe(threshold)}, {kind!r}) with {problems}"
    result = outcome(exit_decision, logits, threshold, kind=kind, table=table, backend=backend)
    if judge(result, combine(problems), AdaptixError, what):
        _check_decision(logits, float(threshold), kind, table, result, naive)

    decider = outcome(ExitDecider, threshold, kind=kind, table=table, backend=backend)
    if isinstance(decider, AdaptixError):
        judge(decider, combine(rule_problems), AdaptixError, f"ExitDecider with {rule_problems}")
        return
    if combine(rule_problems) == "invalid" and backend != "triton":
        raise AssertionError(f"ExitDecider accepted {rule_problems}")
    decided = outcome(decider, logits)
    runtime = outcome(decider.decide, logits)
    if not judge(decided, combine(problems), AdaptixError, f"ExitDecider(...)({what})"):
        must_raise(runtime, AdaptixError, f"ExitDecider.decide with {problems}")
        return
    exit_mask, prediction = decided
    reference = exit_decision(logits, float(threshold), kind=kind, table=table, backend="torch")
    assert torch.equal(exit_mask, reference.exit_mask), "ExitDecider's mask is not the rule's"
    assert torch.equal(prediction, reference.prediction)
    stays, predicted = must_succeed(runtime, "ExitDecider.decide")
    assert torch.equal(stays, ~reference.exit_mask), "ExitDecider.decide: wrong rows stay"
    assert predicted is None or torch.equal(predicted, reference.prediction)


# ========================================================================== plugin manager


@FUZZ
@given(
    disable=st.sampled_from(
        [None, "adaptix.criteria", ["adaptix.criteria"], ("adaptix.calibrators",), []]
    )
    | st.sampled_from([["no_such_plugin"], "no_such_plugin", 3, [3], [None], {"a": 1}]),
    autoload=st.sampled_from([None, True, False, 0, 1, "no", "yes"]),
    strict=st.sampled_from([None, False, "no"]),
)
def test_get_plugin_manager_blocks_what_it_is_told(
    disable: Any, autoload: Any, strict: Any
) -> None:
    problems: list[tuple[str, bool]] = []
    if isinstance(disable, str):
        problems.append(("disable as a string", False))
    elif disable is not None and not (
        isinstance(disable, (list, tuple)) and all(isinstance(d, str) for d in disable)
    ):
        problems.append((f"disable={disable!r}", True))
    if disable in ("no_such_plugin", ["no_such_plugin"]):
        problems.append(("an unknown plugin name (a warning or an error)", False))
    for option, value in (("autoload", autoload), ("strict", strict)):
        if isinstance(value, str):
            problems.append((f"{option}={value!r}", True))
        elif value in (0, 1) and not isinstance(value, bool):
            problems.append((f"{option}={value!r}", False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = outcome(
            adaptix.get_plugin_manager,
            autoload=autoload,
            disable=disable,
            strict=strict,
            settings=Settings(),
        )
        if not judge(result, combine(problems), AdaptixError, f"get_plugin_manager {problems}"):
            return
        blocked = [disable] if isinstance(disable, str) else list(disable or [])
        criteria = result.criteria.names()
    assert ("confidence" in criteria) != ("adaptix.criteria" in blocked), (
        f"disable={disable!r}: 'confidence' is "
        f"{'registered' if 'confidence' in criteria else 'missing'}"
    )
    assert ("reliability" in result.calibrators) != ("adaptix.calibrators" in blocked)
    if autoload is not None:
        assert ("margin" in criteria) == bool(autoload)


def test_an_unknown_name_in_adaptix_disable_plugins_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTIX_DISABLE_PLUGINS", "no_such_plugin")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = must_succeed(outcome(adaptix.get_plugin_manager), "get_plugin_manager")
        manager.criteria.names()
    assert any("no_such_plugin" in str(w.message) for w in caught), (
        "ADAPTIX_DISABLE_PLUGINS=no_such_plugin blocked nothing and said nothing"
    )


# ================================================================== models, traces, training


@FUZZ
@given(parts=model_parts(), data=st.data())
def test_multi_exit_model_and_its_trace(parts: tuple[Any, ...], data: st.DataObject) -> None:
    blocks, heads, keywords, problems, d = parts
    model = outcome(adaptix.MultiExitModel, blocks, heads, **keywords)
    if not judge(model, combine(problems), ValidationError, f"MultiExitModel with {problems}"):
        return
    n = data.draw(st.integers(1, 6), label="rows")
    inputs: Any = tiny_inputs(n, d, data.draw(st.integers(0, 100)))
    labels: Any = torch.randint(int(model.heads[0].out_features), (n,))
    trace_problems: list[tuple[str, bool]] = []
    input_kind = data.draw(
        st.sampled_from(["good"] * 5 + ["unbatched", "empty", "list", "int", "extra_dim", "nan"])
    )
    if input_kind == "unbatched":
        inputs = inputs[0]
    elif input_kind == "empty":
        inputs, labels = inputs[:0], labels[:0]
    elif input_kind == "list":
        inputs = inputs.tolist()
    elif input_kind == "int":
        inputs = inputs.long()
    elif input_kind == "extra_dim":
        inputs = inputs.unsqueeze(1)
    elif input_kind == "nan":
        inputs[0, 0] = NAN
    if input_kind != "good":
        trace_problems.append((f"inputs: {input_kind}", True))
    label_kind = data.draw(st.sampled_from(["good", "good", "none", "short", "float"]))
    labels = {"good": labels, "none": None, "short": labels[:-1], "float": labels.float()}[
        label_kind
    ]
    if label_kind in ("short", "float") and input_kind != "empty":
        trace_problems.append((f"labels: {label_kind}", True))
    batch_size = data.draw(counts([1, 2, 256]), label="batch_size")
    verdict = count_verdict(batch_size)
    if verdict != "valid":
        trace_problems.append((f"batch_size={batch_size!r}", verdict == "invalid"))
    result = outcome(model.trace, inputs, labels, batch_size)
    if not judge(result, combine(trace_problems), ValidationError, f"trace {trace_problems}"):
        return
    logits = torch.stack(model(inputs), dim=1)
    assert torch.equal(result.logits, logits), "the trace's logits are not the model's"
    assert result.costs.shape == (model.num_exits,)
    assert bool((result.costs > 0).all())


#: Per argument of `build_model`: values that must be refused, or ("soft") may be.
BUILD_MODEL_JUNK: dict[str, tuple[Any, ...]] = {
    "backbone": ("nope", "", None, 3),
    "source": (None, "stack", nn.Linear(2, 2), [1, 2]),
    "num_classes": (0, -1, 2.5, True, "3", None, NAN),
    "head": ("nope", None, 3),
    "backbone_params": ({"nope": 1}, "params", [1], {"boundaries": (0,)}, {"feature": "x"}),
    "head_params": ({"hidden": 0}, {"nope": 1}, "params", [1]),
    "example_input": (None, "example", torch.zeros(2, 3), torch.zeros(2)),
    "plugins": ({}, "plugins"),
}


@pytest.mark.parametrize("corrupt", ["none", *BUILD_MODEL_JUNK])
@settings(EACH, max_examples=8)
@given(data=st.data())
def test_build_model_assembles_or_refuses(
    corrupt: str, data: st.DataObject, plugins: AdaptixPluginManager
) -> None:
    """One argument at a time is corrupted; the rest build a valid sequential model."""
    k = data.draw(st.integers(1, 3), label="blocks")
    head = data.draw(st.sampled_from(["linear", "mlp"]), label="head")
    arguments: dict[str, Any] = {
        "backbone": "sequential",
        "source": nn.Sequential(*(nn.Linear(2, 2) for _ in range(k))),
        "num_classes": data.draw(st.integers(1, 4), label="classes"),
        "head": head,
        "backbone_params": data.draw(st.sampled_from([None, {}]), label="backbone_params"),
        "head_params": {"hidden": 3} if head == "mlp" else None,
        "example_input": torch.zeros(2, 2),
        "plugins": plugins,
    }
    if corrupt != "none":
        arguments[corrupt] = data.draw(st.sampled_from(BUILD_MODEL_JUNK[corrupt]), label="junk")
    positional = (arguments.pop("backbone"), arguments.pop("num_classes"))
    result = outcome(adaptix.build_model, *positional, **arguments)
    verdict: Verdict = "valid" if corrupt == "none" else "invalid"
    if not judge(result, verdict, AdaptixError, f"build_model with junk {corrupt}"):
        return
    assert isinstance(result, adaptix.MultiExitModel)
    assert result.num_exits == k
    for logits in result(torch.zeros(3, 2)):
        assert logits.shape == (3, positional[1])


def _train_junk(inputs: Tensor, labels: Tensor, classes: int) -> dict[str, tuple[Any, ...]]:
    """Per argument of `train_exits`: values that must be refused."""
    nan_inputs = torch.full_like(inputs, NAN)
    return {
        "train": (
            (inputs, labels.float()),
            (inputs, labels + classes),
            (inputs, labels - classes),
            (inputs, labels[:-1]),
            (nan_inputs, labels),
            (inputs[:0], labels[:0]),
            (inputs,),
            [inputs.tolist(), labels.tolist()],
        ),
        "mode": ("nope", None),
        "epochs": (0, 2.5, NAN, "2", None, True),
        "lr": (0.0, -1.0, NAN, INF, "0.1", None, True),
        "batch_size": (0, 1.5, "4", None, True),
        "distillation": (1.0, -0.1, NAN, "0"),
        "loss_weights": ("short", "negative", "nan", "text"),
    }


@pytest.mark.parametrize(
    "corrupt",
    ["none", "train", "mode", "epochs", "lr", "batch_size", "distillation", "loss_weights"],
)
@settings(EACH, max_examples=8)
@given(data=st.data())
def test_train_exits_trains_or_refuses(corrupt: str, data: st.DataObject) -> None:
    """One argument at a time is corrupted; the rest train a tiny model for real."""
    e, classes = data.draw(st.integers(1, 3), label="exits"), data.draw(st.integers(2, 3))
    model = tiny_model(e, 2, classes, data.draw(st.integers(0, 1000), label="seed"))
    n = data.draw(st.integers(2, 6), label="rows")
    inputs, labels = tiny_inputs(n, 2, 7), torch.arange(n) % classes
    arguments: dict[str, Any] = {
        "train": (inputs, labels),
        "mode": data.draw(st.sampled_from(["frozen", "joint"]), label="mode"),
        "epochs": data.draw(st.integers(1, 2), label="epochs"),
        "lr": data.draw(st.sampled_from([1e-2, 1e-3]), label="lr"),
        "batch_size": data.draw(st.sampled_from([2, 4]), label="batch_size"),
        "distillation": data.draw(st.sampled_from([0.0, 0.5]), label="distillation"),
        "loss_weights": data.draw(st.sampled_from([None, [1.0] * e]), label="weights"),
    }
    if corrupt != "none":
        junk = data.draw(st.sampled_from(_train_junk(inputs, labels, classes)[corrupt]))
        if corrupt == "loss_weights":
            junk = {"short": [1.0] * (e + 1), "negative": [-1.0] * e, "nan": [NAN] * e}.get(
                junk, junk
            )
        arguments[corrupt] = junk
    train = arguments.pop("train")
    result = outcome(adaptix.train_exits, model, train, progress=False, **arguments)
    verdict: Verdict = "valid" if corrupt == "none" else "invalid"
    if not judge(result, verdict, ValidationError, f"train_exits with junk {corrupt}"):
        return
    assert isinstance(result, adaptix.TrainResult)
    assert len(result.history) == arguments["epochs"]
    assert result.val_accuracy is None
    assert all(math.isfinite(record["loss"]) for record in result.history)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize(
    "threshold_bytes", [*BOOLS, *NOT_NUMBERS, NAN, 2.0**30, -1, 0, 1 << 19, 1 << 31, "1 GiB"]
)
def test_tune_cpu_allocator_refuses_bad_sizes(threshold_bytes: Any) -> None:
    must_raise(
        outcome(adaptix.tune_cpu_allocator, threshold_bytes),
        ValidationError,
        f"tune_cpu_allocator({threshold_bytes!r})",
    )


def test_version_and_hook_marker() -> None:
    assert isinstance(adaptix.__version__, str)
    assert adaptix.__version__
    assert callable(adaptix.hookimpl)
    assert sorted(adaptix.__all__) == sorted(set(adaptix.__all__))


# ================================================================================== runner

RUNNER_CRITERIA = (*BUILTIN_CRITERIA, *(f"fuzz_{b}" for b in CRITERION_BEHAVIOURS))
INPUT_KINDS = ("clean",) * 8 + ("nan_row", "inf_row", "huge_row", "unbatched", "extra_dim")
INPUT_KINDS_BAD = ("empty", "float64", "int", "list")


@pytest.mark.parametrize("name", RUNNER_CRITERIA)
@EACH
@given(data=st.data())
def test_runner_agrees_with_simulate_or_refuses(
    name: str, data: st.DataObject, fuzz_plugins: AdaptixPluginManager
) -> None:
    e, d, c = (
        data.draw(st.integers(1, 4)),
        data.draw(st.integers(1, 4)),
        data.draw(st.integers(1, 4)),
    )
    model = tiny_model(e, d, c, data.draw(st.integers(0, 2**31 - 1), label="model seed"))
    n = data.draw(st.integers(1, 10), label="rows")
    clean = tiny_inputs(n, d, data.draw(st.integers(0, 2**31 - 1), label="input seed"))
    calibration = None
    if name in ("pcee", "pcee_ws"):
        held_out = tiny_inputs(20, d, data.draw(st.integers(0, 1000)))
        calibration = adaptix.calibrate(
            model.trace(held_out, torch.randint(c, (20,))),
            bins=data.draw(st.integers(1, 5), label="bins"),
            plugins=fuzz_plugins,
        )
    trace = model.trace(clean)
    confidence = torch.softmax(trace.logits.float(), dim=-1).amax(dim=-1)
    exact = confidence[:, :-1].flatten().tolist() if name != "entropy" else []
    if calibration is not None:
        table = calibration.accuracy(1 if name == "pcee_ws" else 0)
        exact = table[~table.isnan()].tolist()
    threshold = _threshold_for(name, data, exact)
    pol = outcome(adaptix.policy, name, threshold, calibration, plugins=fuzz_plugins)
    behaviour = name.removeprefix("fuzz_") if name.startswith("fuzz_") else None
    if isinstance(pol, AdaptixError):
        assert behaviour == "threshold_junk", f"policy({name!r}, {threshold}) refused: {pol}"
        _names_the_plugin(pol, name, "policy with a junk threshold")
        return

    input_kind = data.draw(st.sampled_from(INPUT_KINDS + INPUT_KINDS_BAD), label="inputs")
    inputs: Any = clean.clone()
    if input_kind in ("nan_row", "inf_row", "huge_row"):
        row = data.draw(st.integers(0, n - 1), label="bad row")
        inputs[row] = {"nan_row": NAN, "inf_row": INF, "huge_row": 3e38}[input_kind]
    elif input_kind == "unbatched":
        inputs = clean[0]
    elif input_kind == "extra_dim":
        inputs = clean.unsqueeze(1)
    elif input_kind == "empty":
        inputs = clean[:0]
    elif input_kind == "float64":
        inputs = clean.double()
    elif input_kind == "int":
        inputs = clean.long()
    elif input_kind == "list":
        inputs = clean.tolist()

    options = {
        "mode": data.draw(st.sampled_from(["compact", "lockstep"]), label="mode"),
        "fused": data.draw(st.booleans(), label="fused"),
        "return_probabilities": data.draw(st.booleans(), label="probabilities"),
        "backend": data.draw(st.sampled_from(["auto", "torch"]), label="backend"),
    }
    what = f"runner({name}, τ={threshold}, {options}) on {input_kind} inputs {describe(inputs)}"
    runner = outcome(EarlyExitRunner, model, pol, **options)
    if isinstance(runner, AdaptixError) and behaviour is not None:
        assert not CRITERION_BEHAVIOURS[behaviour], f"{what}: refused when built: {runner}"
        _names_the_plugin(runner, name, f"EarlyExitRunner with {name}")
        return
    runner = must_succeed(runner, f"EarlyExitRunner({name}, {options})")
    result = outcome(runner, inputs)

    broken = behaviour is not None and not CRITERION_BEHAVIOURS[behaviour]
    if broken and isinstance(result, PluginError) and input_kind != "clean":
        _names_the_plugin(result, name, what)  # the criterion broke first: also an answer
        return
    if input_kind in ("unbatched", "extra_dim", *INPUT_KINDS_BAD):
        must_raise(result, ValidationError, what)
        return
    exit_logits = [logits.float() for logits in model(inputs)]
    if not bool(torch.isfinite(exit_logits[0]).all()):
        must_raise(result, ValidationError, f"{what}: non-finite logits at exit 0")
        return
    if input_kind != "clean":
        if isinstance(result, AdaptixError):
            must_raise(result, ValidationError, what)
            return
        for i, x in enumerate(result.exit_index.tolist()):
            for seen in range(x + 1):
                assert bool(torch.isfinite(exit_logits[seen][i]).all()), (
                    f"{what}: row {i} left at exit {x} after non-finite logits at exit {seen}"
                )
        return

    expected = outcome(adaptix.simulate, trace, pol)
    if behaviour is not None:
        valid = CRITERION_BEHAVIOURS[behaviour] or (behaviour == "score_shape_one" and n == 1)
        if not valid and behaviour != "select_state_raises" and e > 1:
            _names_the_plugin(must_raise(result, AdaptixError, what), name, what)
            _names_the_plugin(must_raise(expected, AdaptixError, "simulate"), name, "simulate")
            return
        if isinstance(result, AdaptixError):
            assert not valid, f"{what}: a valid criterion was refused: {result}"
            _names_the_plugin(result, name, what)
            return
        if isinstance(expected, AdaptixError):
            assert not valid, f"simulate refused a valid criterion: {expected}"
            _names_the_plugin(expected, name, "simulate")
            expected = adaptix.simulate(trace, adaptix.policy("confidence", 1.0))
            assert e == 1  # one exit: nothing to decide
    result = must_succeed(result, what)
    expected = must_succeed(expected, "simulate on the runner's inputs")
    assert result.exit_index.dtype == torch.int64
    assert result.exit_index.shape == (n,)
    assert result.predictions.dtype == torch.int64
    assert result.predictions.shape == (n,)
    assert result.exit_index.tolist() == expected.exit_index.tolist(), f"{what}: exits"
    assert result.predictions.tolist() == expected.predictions.tolist(), f"{what}: predictions"
    if behaviour in ("score_nan", "score_integers"):
        scores = expected_scores(behaviour, confidence)
        fires = scores[:, :-1] >= pol.threshold
        first = torch.cat([fires, torch.ones(n, 1, dtype=torch.bool)], 1).int().argmax(1)
        assert result.exit_index.tolist() == first.tolist(), f"{what}: not the score's rule"
    if options["return_probabilities"]:
        taken = trace.logits[torch.arange(n), result.exit_index]
        assert result.probabilities is not None
        assert result.probabilities.shape == (n, c)
        assert torch.allclose(result.probabilities, torch.softmax(taken.float(), -1), atol=1e-6)
    else:
        assert result.probabilities is None


@pytest.mark.parametrize("behaviour", sorted(CRITERION_BEHAVIOURS))
@EACH
@given(data=st.data())
def test_broken_criteria_in_simulate_are_plugin_errors(
    behaviour: str, data: st.DataObject, traces: Any, fuzz_plugins: AdaptixPluginManager
) -> None:
    trace: Trace = data.draw(traces(labelled=None, max_inputs=8), label="trace")
    name = f"fuzz_{behaviour}"
    threshold = data.draw(st.floats(0.0, 1.0), label="threshold")
    pol = outcome(adaptix.policy, name, threshold, plugins=fuzz_plugins)
    if isinstance(pol, AdaptixError):
        assert behaviour == "threshold_junk", f"policy({name!r}) refused: {pol}"
        _names_the_plugin(pol, name, "policy")
        return
    result = outcome(adaptix.simulate, trace, pol)
    valid = CRITERION_BEHAVIOURS[behaviour] or behaviour == "select_state_raises"
    valid = valid or (behaviour == "score_shape_one" and len(trace) == 1)
    if not valid:
        if trace.num_exits == 1 and not isinstance(result, AdaptixError):
            # One exit: nothing to decide, so the criterion need not be asked.
            assert result.exit_index.tolist() == [0] * len(trace)
            return
        _names_the_plugin(must_raise(result, AdaptixError, f"simulate with {name}"), name, name)
        return
    result = must_succeed(result, f"simulate with {name}")
    confidence = torch.softmax(trace.logits.float(), -1).amax(-1)
    scores = expected_scores(behaviour, confidence)
    fires = scores[:, :-1] >= threshold
    first = torch.cat([fires, torch.ones(len(trace), 1, dtype=torch.bool)], 1).int().argmax(1)
    assert result.exit_index.tolist() == first.tolist()
    frontier = outcome(adaptix.sweep, trace, name, [threshold], plugins=fuzz_plugins)
    assert must_succeed(frontier, f"sweep with {name}")[0].exit_histogram == tuple(
        result.exit_histogram.tolist()
    )


@pytest.mark.parametrize("junk", [None, "model", nn.Linear(2, 2), 3])
def test_runner_refuses_what_is_not_a_model_or_a_policy(
    junk: Any, plugins: AdaptixPluginManager
) -> None:
    model = tiny_model(2, 2, 3, seed=0)
    pol = adaptix.policy("confidence", 0.5, plugins=plugins)
    must_raise(outcome(EarlyExitRunner, junk, pol), ValidationError, "runner with a junk model")
    result = outcome(EarlyExitRunner, model, junk)
    if not isinstance(result, AdaptixError):
        result = outcome(result, tiny_inputs(3, 2, 0))
    must_raise(result, ValidationError, "runner with a junk policy")


@pytest.mark.parametrize(
    "option", [{"mode": "fast"}, {"mode": None}, {"backend": "cuda"}, {"backend": None}]
)
def test_runner_refuses_unknown_options(
    option: dict[str, Any], plugins: AdaptixPluginManager
) -> None:
    model = tiny_model(2, 2, 3, seed=0)
    pol = adaptix.policy("confidence", 0.5, plugins=plugins)
    result = outcome(EarlyExitRunner, model, pol, **option)
    if not isinstance(result, AdaptixError):
        result = outcome(result, tiny_inputs(3, 2, 0))
    must_raise(result, ValidationError, f"EarlyExitRunner with {option}")


def test_runner_with_backend_triton_on_cpu_tensors_is_an_error(
    plugins: AdaptixPluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = tiny_model(2, 2, 3, seed=0)
    pol = adaptix.policy("confidence", 0.5, plugins=plugins)
    result = outcome(EarlyExitRunner, model, pol, backend="triton")
    if not isinstance(result, AdaptixError):
        result = outcome(result, tiny_inputs(3, 2, 0))
    must_raise(result, AdaptixError, "backend='triton' on a CPU")
