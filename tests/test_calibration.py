"""`Calibration` and `calibrate`: tables, merging, the file format and its failure modes."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptix
import adaptix.core.calibration
import adaptix.core.files
from adaptix import AdaptixError, Calibration, CalibrationError, PluginError, ValidationError
from adaptix.components import Calibrator, ParamsModel
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
        (lambda p: _rewrite(p, version=5), r"format version 4 \(or 3, 2 or 1\), got 5"),
        (lambda p: _rewrite(p, version=True), r"format version 4 \(or 3, 2 or 1\), got True"),
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
        "bool-version",
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


def test_a_write_that_dies_halfway_leaves_the_old_file(tmp_path: Path, calibration, plugins):
    path = calibration.save(tmp_path / "calibration.json")
    before = path.read_bytes()
    other = adaptix.calibrate(synthetic_trace(50, 3, 4, seed=9), bins=5, plugins=plugins)
    real_write = adaptix.core.files.atomic_write

    def half_write(target: Path, write: object, what: str) -> Path:
        def write_half(handle: BinaryIO) -> None:
            buffer = io.BytesIO()
            write(buffer)  # type: ignore[operator]  # the save's own writer
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.EIO, "killed halfway")

        return real_write(target, write_half, what)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adaptix.core.files, "atomic_write", half_write)  # write_document's
        with pytest.raises(ValidationError, match=r"the write failed \(killed halfway\)"):
            other.save(path)
    assert path.read_bytes() == before
    assert Calibration.load(path) == calibration
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]


def test_metadata_edited_into_non_strings_is_refused_at_save(tmp_path: Path, calibration):
    calibration.meta["seed"] = 3  # type: ignore[assignment]  # the mistake under test
    with pytest.raises(CalibrationError, match="'seed': 3"):
        calibration.save(tmp_path / "calibration.json")
    assert list(tmp_path.iterdir()) == []


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


COUNTS = [[2, 2], [1, 3]]
CORRECT = [[1, 1], [1, 2]]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (torch.tensor(COUNTS) + 0.5, "'counts' as whole numbers, got 4 entries that are not"),
        (torch.tensor([[2.0, math.nan], [1.0, 3.0]]), r"not \(first: nan\)"),
        (torch.tensor([[2.0, math.inf], [1.0, 3.0]]), r"not \(first: inf\)"),
        (torch.tensor([[2.0**60, 0.0], [2.0**60, 0.0]]), "whole numbers"),
        (torch.tensor(COUNTS).bool(), "got a torch.bool table"),
        (torch.tensor(COUNTS) * 1j, "got a torch.complex64 table"),
        ([["2", "2"], ["1", "3"]], "as a tensor .or nested list. of numbers, got list"),
        ([[2, 2], [1]], "as a tensor .or nested list. of numbers"),
    ],
    ids=["fractional", "nan", "inf", "beyond-2**53", "bool", "complex", "strings", "ragged"],
)
def test_counts_that_are_not_whole_numbers_are_refused(counts, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        Calibration(counts, torch.tensor(CORRECT), 3)
    with pytest.raises(CalibrationError, match=message.replace("counts", "correct")):
        Calibration(torch.tensor(COUNTS), counts, 3)


@pytest.mark.parametrize(
    "counts",
    [
        torch.tensor(COUNTS, dtype=torch.float64),
        torch.tensor(COUNTS, dtype=torch.int32),
        np.array(COUNTS),
        COUNTS,
    ],
    ids=["whole-float64", "int32", "numpy", "list"],
)
def test_whole_valued_counts_of_any_numeric_type_are_stored_as_int64(counts) -> None:
    calibration = Calibration(counts, CORRECT, 3)
    assert calibration.counts.dtype == torch.int64
    assert calibration.counts.tolist() == COUNTS
    assert calibration.correct.dtype == torch.int64


@pytest.mark.parametrize(
    ("confidence_sum", "message"),
    [
        ([[math.nan, 1.0], [0.5, 1.0]], "finite 'confidence_sum', got 1 NaN/inf"),
        ([[math.inf, 1.0], [0.5, 1.0]], "finite 'confidence_sum'"),
        ([[-0.25, 1.0], [0.5, 1.0]], r"got -0.25 for 2 inputs at exit 0, bin 0"),
        ([[1.0, 1.0], [1.5, 1.0]], r"got 1.5 for 1 inputs at exit 1, bin 0"),
        ([[1.0, 1.0], [1.0, 3.5]], r"got 3.5 for 3 inputs at exit 1, bin 1"),
        ([[True, True], [True, True]], "as real numbers"),
    ],
    ids=["nan", "inf", "negative", "above-n", "above-n-last", "bool"],
)
def test_impossible_confidence_sums_are_refused(confidence_sum, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        Calibration(COUNTS, CORRECT, 3, confidence_sum=torch.tensor(confidence_sum))


def test_a_confidence_sum_off_by_float_rounding_is_accepted() -> None:
    sums = torch.tensor([[2.0 + 1e-9, 0.0], [1.0, 3.0 + 1e-9]], dtype=torch.float64)
    calibration = Calibration(COUNTS, CORRECT, 3, confidence_sum=sums)
    assert torch.equal(calibration.confidence_sum, sums)
    assert calibration.confidence_sum.dtype == torch.float64


def test_exits_that_count_different_inputs_are_refused() -> None:
    with pytest.raises(CalibrationError, match=r"the same total at each exit\), got totals"):
        Calibration([[2, 2], [1, 2]], [[1, 1], [1, 1]], 3)


@pytest.mark.parametrize("num_classes", [2.5, "3", True, None, 0, -1])
def test_num_classes_must_be_a_positive_integer(num_classes) -> None:
    with pytest.raises(CalibrationError, match="num_classes to be an integer"):
        Calibration(COUNTS, CORRECT, num_classes)


def test_a_numpy_integer_num_classes_is_stored_as_int() -> None:
    calibration = Calibration(COUNTS, CORRECT, np.int64(3))
    assert type(calibration.num_classes) is int
    assert calibration.num_classes == 3


@pytest.mark.parametrize("method", [None, "", 3])
def test_method_must_be_a_name(method) -> None:
    with pytest.raises(CalibrationError, match="method to be the calibrator's name"):
        Calibration(COUNTS, CORRECT, 3, method=method)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"seed": 3}, "'seed': 3"),
        ({3: "seed"}, "key type int"),
        (["seed"], "mapping of strings to strings, got list"),
    ],
)
def test_metadata_that_is_not_strings_is_refused_at_construction(meta, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        Calibration(COUNTS, CORRECT, 3, meta=meta)


def test_adding_keeps_only_the_metadata_both_share() -> None:
    first = Calibration(COUNTS, CORRECT, 3, meta={"model": "m", "split": "a", "only": "1"})
    second = Calibration(COUNTS, CORRECT, 3, meta={"model": "m", "split": "b"})
    assert (first + second).meta == {"model": "m"}
    assert (second + first).meta == {"model": "m"}
    assert (first + second).counts.tolist() == [[4, 4], [2, 6]]


def test_an_empty_calibration_set_is_refused(plugins) -> None:
    empty = torch.empty(0, 2, 3)
    with pytest.raises(ValidationError, match="at least one input"):
        adaptix.calibrate(adaptix.Trace(empty, torch.empty(0, dtype=torch.long), [1.0, 2.0]))


def test_an_unlabelled_trace_cannot_be_calibrated(plugins) -> None:
    with pytest.raises(CalibrationError, match="labelled trace") as info:
        adaptix.calibrate(synthetic_trace(10, 2, 3, labelled=False), plugins=plugins)
    assert isinstance(info.value, AdaptixError)


@pytest.mark.parametrize("bins", [0, -1, 1.5, True, "10", 2**24 + 1, 10**12, 2**62])
def test_bins_must_be_a_positive_integer(plugins, bins) -> None:
    with pytest.raises(CalibrationError, match=r"bins to be an integer"):
        adaptix.calibrate(synthetic_trace(10, 2, 3), bins=bins, plugins=plugins)


def test_an_unknown_calibrator_lists_the_available_ones(plugins) -> None:
    with pytest.raises(
        PluginError, match=r"unknown calibrator 'isotonic'. Available: .*reliability"
    ):
        adaptix.calibrate(synthetic_trace(10, 2, 3), "isotonic", plugins=plugins)


class MisfitParams(ParamsModel):
    extra: str  # "E", "C" or "M": which size the calibration gets wrong


class Misfit(Calibrator):
    """A third-party calibrator whose calibration is for one more exit, class or bin."""

    name = "misfit"
    Params = MisfitParams
    params: MisfitParams

    def fit(self, trace: adaptix.Trace, bins: int) -> Calibration:
        extra = {key: int(self.params.extra == key) for key in ("E", "C", "M")}
        counts = torch.ones(trace.num_exits + extra["E"], bins + extra["M"], dtype=torch.long)
        return Calibration(counts, counts, trace.num_classes + extra["C"])


@pytest.mark.parametrize("extra", ["E", "C", "M"])
def test_a_calibrator_that_fits_another_model_is_a_plugin_error(manager_with, extra) -> None:
    manager = manager_with(Misfit, name="misfit_plugin")
    with pytest.raises(PluginError, match=r"'misfit' from plugin 'misfit_plugin'") as info:
        adaptix.calibrate(synthetic_trace(10, 2, 3), "misfit", 4, plugins=manager, extra=extra)
    message = str(info.value)
    assert "Misfit.fit" in message
    wrong = {"E": "E=3 exits", "C": "C=4 classes", "M": "M=5 bins"}[extra]
    assert wrong in message
    assert "expected E=2, C=3 (the trace's) and M=4" in message


def test_a_negative_window_is_refused(calibration) -> None:
    with pytest.raises(CalibrationError, match="window to be an integer"):
        calibration.accuracy(-1)


@pytest.mark.parametrize("window", [1.5, True, "1", None])
def test_a_window_that_is_not_an_integer_is_refused(calibration, window) -> None:
    with pytest.raises(CalibrationError, match="window to be an integer"):
        calibration.accuracy(window)


def test_a_numpy_integer_window_is_an_integer(calibration) -> None:
    torch.testing.assert_close(calibration.accuracy(np.int64(1)), calibration.accuracy(1))


def test_expected_calibration_error_of_a_perfectly_calibrated_table() -> None:
    counts = torch.tensor([[4, 4]])
    calibration = Calibration(
        counts, torch.tensor([[1, 3]]), 2, confidence_sum=torch.tensor([[1.0, 3.0]])
    )
    assert calibration.mean_confidence().tolist() == [[0.25, 0.75]]
    assert calibration.expected_calibration_error().tolist() == [0.0]


def _sign(document: dict) -> dict:
    """``document`` with the checksum that Calibration.save would give its payload."""
    payload = {key: value for key, value in document.items() if key not in ("format", "version")}
    payload.pop("sha256", None)
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return {**document, "sha256": hashlib.sha256(canonical.encode()).hexdigest()}


def test_the_checksum_is_the_digest_of_the_canonical_payload(tmp_path: Path, calibration):
    document = json.loads(calibration.save(tmp_path / "calibration.json").read_text())
    assert _sign(document) == document


def _row_of(value: object, bins: int = 5) -> list[list[object]]:
    return [[value] + [0] * (bins - 1)] * 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"counts": _row_of("7")},
            "'counts' in .* as equal-length rows of integers, got the entry '7'",
        ),
        ({"counts": _row_of(1.5)}, "rows of integers, got the entry 1.5"),
        ({"counts": _row_of(True)}, "rows of integers, got the entry True"),
        ({"counts": _row_of(None)}, "rows of integers, got the entry None"),
        ({"counts": [[1, 2], [3]]}, r"got rows of lengths \[2, 1\]"),
        ({"counts": "[[1]]"}, "as a list of lists of integers, got str"),
        ({"counts": [1, 2, 3]}, "as a list of lists of integers, got list"),
        ({"counts": _row_of(2**70)}, "integers that fit in 64 bits"),
        ({"correct": _row_of(-1)}, "non-negative counts"),
        ({"confidence_sum": _row_of(math.nan)}, "finite 'confidence_sum'"),
        ({"confidence_sum": _row_of("0.5")}, "'confidence_sum' .* rows of numbers, got the entry"),
        ({"confidence_sum": _row_of(-1.0)}, r"0 <= confidence_sum\[e, m\] <= counts"),
        ({"meta": {"seed": 3}}, "'seed': 3"),
        ({"meta": ["seed"]}, "mapping of strings to strings, got list"),
        ({"num_classes": "4"}, "num_classes to be an integer"),
        ({"num_classes": 4.0}, "num_classes to be an integer"),
        ({"method": None}, "method to be the calibrator's name"),
        ({"num_exits": 2}, "declares E=2"),
    ],
    ids=[
        "string-count",
        "fractional-count",
        "bool-count",
        "null-count",
        "ragged",
        "table-as-string",
        "flat-table",
        "huge-count",
        "negative-correct",
        "nan-sum",
        "string-sum",
        "negative-sum",
        "meta-value",
        "meta-list",
        "string-classes",
        "float-classes",
        "null-method",
        "declared-exits",
    ],
)
def test_a_signed_file_with_bad_content_is_refused(tmp_path, calibration, changes, message):
    path = calibration.save(tmp_path / "calibration.json")
    document = json.loads(path.read_text())
    path.write_text(json.dumps(_sign({**document, **changes})))
    with pytest.raises(CalibrationError, match=message):
        Calibration.load(path)


@pytest.mark.parametrize("size", ["num_exits", "bins"])
@pytest.mark.parametrize("declared", [True, 1.0])
def test_a_size_declared_as_another_json_type_is_refused(tmp_path, plugins, size, declared):
    # One exit and one bin: JSON true and 1.0 compare equal to the size of the tables.
    calibration = adaptix.calibrate(synthetic_trace(10, 1, 3), bins=1, plugins=plugins)
    path = calibration.save(tmp_path / "calibration.json")
    document = json.loads(path.read_text())
    path.write_text(json.dumps(_sign({**document, size: declared})))
    with pytest.raises(CalibrationError, match=f"={declared!r}.*expected the integers E and M"):
        Calibration.load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "could not be parsed .RecursionError"),
        (b'{"counts": ' + b"9" * 5000 + b"}", "could not be parsed .ValueError"),
        (bytes(range(256)) * 4, "could not be parsed"),
        (b"", "could not be parsed"),
        (
            b"\xff\xfe" + '{"format": "adaptix.calibration"}'.encode("utf-16-le"),
            "UnicodeDecodeError",
        ),
    ],
    ids=["deeply-nested", "huge-integer", "binary", "empty", "utf-16"],
)
def test_a_file_that_is_not_json_is_refused(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "calibration.json"
    path.write_bytes(content)
    with pytest.raises(CalibrationError, match=message):
        Calibration.load(path)


def test_a_directory_is_not_a_calibration_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="got a directory"):
        Calibration.load(tmp_path)


def test_a_torch_file_is_not_a_calibration_file(tmp_path: Path) -> None:
    path = synthetic_trace(10, 2, 3).save(tmp_path / "trace.pt")
    with pytest.raises(CalibrationError, match="could not be parsed"):
        Calibration.load(path)


def test_a_save_creates_the_directory_and_refuses_a_directory(tmp_path, calibration):
    path = calibration.save(tmp_path / "new" / "calibration.json")
    assert Calibration.load(path) == calibration
    with pytest.raises(ValidationError, match="got the directory"):
        calibration.save(tmp_path / "new")
