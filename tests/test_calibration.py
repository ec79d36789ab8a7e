"""`Calibration` and `calibrate`: tables, merging, the file format and its failure modes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptix
from adaptix import AdaptixError, Calibration, CalibrationError, PluginError, ValidationError
from adaptix.testing import synthetic_trace

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _concat(first: adaptix.Trace, second: adaptix.Trace) -> adaptix.Trace:
    """Both traces as one; float64 holds the logits of every dtype exactly."""
    assert first.labels is not None
    assert second.labels is not None
    return adaptix.Trace(
        torch.cat([first.logits.double(), second.logits.double()]),
        torch.cat([first.labels, second.labels]),
        first.costs,
    )


@pytest.fixture
def calibration(plugins) -> Calibration:
    return adaptix.calibrate(synthetic_trace(200, 3, 4), bins=5, plugins=plugins)


@SETTINGS
@given(data=st.data())
def test_tables_count_every_input_in_its_confidence_bin(data, traces, naive, plugins) -> None:
    trace = data.draw(traces(), label="trace")
    bins = data.draw(st.integers(1, 12), label="bins")
    window = data.draw(st.integers(0, 3), label="window")
    result = adaptix.calibrate(trace, bins=bins, plugins=plugins)
    counts, correct = naive.tables(trace, bins)
    assert result.counts.tolist() == counts
    assert result.correct.tolist() == correct
    assert (result.num_exits, result.num_classes, result.bins) == (
        trace.num_exits,
        trace.num_classes,
        bins,
    )
    assert result.num_inputs == trace.num_inputs
    expected = naive.accuracy(counts, correct, window)
    got = result.accuracy(window).tolist()
    assert [[None if math.isnan(a) else a for a in row] for row in got] == expected


@SETTINGS
@given(data=st.data())
def test_calibrations_merge_by_addition(data, traces, plugins) -> None:
    first = data.draw(traces(), label="first shard")
    second = data.draw(
        traces(num_exits=first.num_exits, num_classes=first.num_classes), label="second shard"
    )
    bins = data.draw(st.integers(1, 12), label="bins")

    def fit(trace: adaptix.Trace) -> Calibration:
        return adaptix.calibrate(trace, bins=bins, plugins=plugins)

    merged = fit(first) + fit(second)
    whole = fit(_concat(first, second))
    assert torch.equal(merged.counts, whole.counts)
    assert torch.equal(merged.correct, whole.correct)
    torch.testing.assert_close(merged.confidence_sum, whole.confidence_sum, rtol=1e-12, atol=0)


def test_save_and_load_round_trip(tmp_path: Path, calibration: Calibration) -> None:
    path = calibration.save(tmp_path / "calibration.json")
    loaded = Calibration.load(path, num_exits=3, num_classes=4)
    assert loaded == calibration
    assert loaded.checksum == calibration.checksum
    assert torch.equal(loaded.confidence_sum, calibration.confidence_sum)  # exact floats
    assert loaded.meta == calibration.meta


def _rewrite(path: Path, **changes: object) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: p.write_text(p.read_text()[: len(p.read_text()) // 2]), "could not be parsed"),
        (lambda p: p.write_text("not json at all"), "could not be parsed"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "could not be parsed"),
        (lambda p: p.write_text("[1, 2, 3]"), "'adaptix.calibration' file"),
        (lambda p: _rewrite(p, format="adaptix.trace"), "'adaptix.calibration' file"),
        (lambda p: _rewrite(p, version=2), "format version 1, got 2"),
        (lambda p: _rewrite(p, sha256="0" * 64), "checksum mismatch"),
        (lambda p: p.unlink(), "no calibration file"),
    ],
    ids=[
        "truncated",
        "not-json",
        "binary",
        "a-list",
        "wrong-header",
        "wrong-version",
        "sha",
        "gone",
    ],
)
def test_a_corrupt_file_is_refused(tmp_path: Path, calibration: Calibration, corrupt, message):
    path = calibration.save(tmp_path / "calibration.json")
    corrupt(path)
    with pytest.raises(CalibrationError, match=message):
        Calibration.load(path)


def test_an_edited_number_breaks_the_checksum(tmp_path: Path, calibration: Calibration) -> None:
    path = calibration.save(tmp_path / "calibration.json")
    document = json.loads(path.read_text())
    document["correct"][0][document["correct"][0].index(max(document["correct"][0]))] -= 1
    path.write_text(json.dumps(document, indent=1, sort_keys=True))
    with pytest.raises(CalibrationError, match="checksum mismatch"):
        Calibration.load(path)


def test_a_missing_field_is_refused(tmp_path: Path, calibration: Calibration) -> None:
    path = calibration.save(tmp_path / "calibration.json")
    document = json.loads(path.read_text())
    del document["counts"]
    path.write_text(json.dumps(document))
    with pytest.raises(CalibrationError, match=r"lacks fields \['counts'\]"):
        Calibration.load(path)


@pytest.mark.parametrize(("exits", "classes"), [(4, None), (None, 5), (2, 4)])
def test_a_file_for_another_model_is_refused(tmp_path: Path, calibration, exits, classes):
    path = calibration.save(tmp_path / "calibration.json")
    with pytest.raises(CalibrationError, match="got one for 3 exits and 4 classes"):
        Calibration.load(path, num_exits=exits, num_classes=classes)


def test_saving_over_a_file_is_atomic(tmp_path: Path, calibration, plugins, monkeypatch):
    path = calibration.save(tmp_path / "calibration.json")
    before = path.read_bytes()
    other = adaptix.calibrate(synthetic_trace(50, 3, 4, seed=9), bins=5, plugins=plugins)
    real_dumps = json.dumps

    def failing_dumps(obj: object, **kwargs: object) -> str:
        if "indent" in kwargs:  # the document itself, after the checksum was computed
            raise OSError("disk full")
        return real_dumps(obj, **kwargs)

    monkeypatch.setattr(json, "dumps", failing_dumps)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert Calibration.load(path) == calibration


def test_a_write_that_dies_halfway_leaves_the_old_file(tmp_path: Path, calibration, monkeypatch):
    path = calibration.save(tmp_path / "calibration.json")
    before = path.read_bytes()

    def half_write(self: Path, text: str, *args: object, **kwargs: object) -> int:
        with open(self, "w") as handle:
            handle.write(text[: len(text) // 2])
        raise OSError("killed")

    monkeypatch.setattr(Path, "write_text", half_write)
    with pytest.raises(OSError, match="killed"):
        calibration.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before


def test_adding_incompatible_calibrations_is_refused(calibration, plugins) -> None:
    others = {
        "bins": adaptix.calibrate(synthetic_trace(20, 3, 4), bins=6, plugins=plugins),
        "exits": adaptix.calibrate(synthetic_trace(20, 2, 4), bins=5, plugins=plugins),
        "classes": adaptix.calibrate(synthetic_trace(20, 3, 5), bins=5, plugins=plugins),
    }
    for other in others.values():
        with pytest.raises(CalibrationError, match="to merge"):
            calibration + other
    with pytest.raises(TypeError):
        calibration + 1


@pytest.mark.parametrize(
    ("counts", "correct", "message"),
    [
        ([[0, 0], [0, 0]], [[0, 0], [0, 0]], "at least one input"),
        ([[1, 0]], [[2, 0]], "more correct predictions than inputs"),
        ([[1, -1]], [[0, 0]], "non-negative"),
        ([1, 2], [0, 1], r"shape \[E, M\]"),
        ([[1, 2]], [[0, 1, 0]], "'correct' of shape"),
    ],
)
def test_inconsistent_tables_are_refused(counts, correct, message) -> None:
    with pytest.raises(CalibrationError, match=message):
        Calibration(torch.tensor(counts), torch.tensor(correct), 2)


def test_an_empty_calibration_set_is_refused(plugins) -> None:
    empty = torch.empty(0, 2, 3)
    with pytest.raises(ValidationError, match="at least one input"):
        adaptix.calibrate(adaptix.Trace(empty, torch.empty(0, dtype=torch.long), [1.0, 2.0]))


def test_an_unlabelled_trace_cannot_be_calibrated(plugins) -> None:
    with pytest.raises(CalibrationError, match="labelled trace") as info:
        adaptix.calibrate(synthetic_trace(10, 2, 3, labelled=False), plugins=plugins)
    assert isinstance(info.value, AdaptixError)


@pytest.mark.parametrize("bins", [0, -1, 1.5, True, "10"])
def test_bins_must_be_a_positive_integer(plugins, bins) -> None:
    with pytest.raises(CalibrationError, match="bins"):
        adaptix.calibrate(synthetic_trace(10, 2, 3), bins=bins, plugins=plugins)


def test_an_unknown_calibrator_lists_the_available_ones(plugins) -> None:
    with pytest.raises(
        PluginError, match=r"unknown calibrator 'isotonic'. Available: .*reliability"
    ):
        adaptix.calibrate(synthetic_trace(10, 2, 3), "isotonic", plugins=plugins)


def test_a_negative_window_is_refused(calibration) -> None:
    with pytest.raises(CalibrationError, match="window >= 0"):
        calibration.accuracy(-1)


def test_expected_calibration_error_of_a_perfectly_calibrated_table() -> None:
    counts = torch.tensor([[4, 4]])
    calibration = Calibration(
        counts, torch.tensor([[1, 3]]), 2, confidence_sum=torch.tensor([[1.0, 3.0]])
    )
    assert calibration.mean_confidence().tolist() == [[0.25, 0.75]]
    assert calibration.expected_calibration_error().tolist() == [0.0]
