"""`adaptix.core.files`: atomic saves (for traces, calibrations and the model cache), metadata."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import adaptix
from adaptix import Calibration, CalibrationError, Trace, ValidationError
from adaptix.core.cache import ModelCache
from adaptix.core.files import atomic_write, check_meta
from adaptix.testing import synthetic_trace

KEY = "ab" * 32

# Every saver: (the file it writes inside a directory, save into that directory).
Saver = tuple[Callable[[Path], Path], Callable[[Path], Path]]


def _calibration() -> Calibration:
    return adaptix.calibrate(synthetic_trace(40, 2, 3), bins=4)


def _trace() -> Trace:
    return synthetic_trace(10, 2, 3)


SAVERS: dict[str, Saver] = {
    "calibration": (
        lambda directory: directory / "calibration.json",
        lambda directory: _calibration().save(directory / "calibration.json"),
    ),
    "trace": (
        lambda directory: directory / "trace.pt",
        lambda directory: _trace().save(directory / "trace.pt"),
    ),
    "model-cache": (
        lambda directory: ModelCache(directory).path("m", KEY),
        lambda directory: ModelCache(directory).save("m", KEY, {"w": torch.ones(2)}, {"s": 1}),
    ),
}


@pytest.fixture(params=list(SAVERS), ids=list(SAVERS))
def saver(request: pytest.FixtureRequest) -> Saver:
    return SAVERS[request.param]


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_a_save_creates_missing_directories(tmp_path: Path, saver: Saver) -> None:
    target, save = saver
    directory = tmp_path / "new" / "nested"
    assert save(directory) == target(directory)
    assert _names(directory) == [target(directory).name]


def test_a_save_onto_a_directory_is_refused_and_leaves_it_alone(
    tmp_path: Path, saver: Saver
) -> None:
    target, save = saver
    in_the_way = target(tmp_path)
    in_the_way.mkdir()
    (in_the_way / "kept.txt").write_text("kept")
    with pytest.raises(ValidationError, match="got the directory"):
        save(tmp_path)
    assert _names(in_the_way) == ["kept.txt"]
    assert _names(tmp_path) == [in_the_way.name]


def test_a_save_under_a_file_is_a_validation_error(tmp_path: Path, saver: Saver) -> None:
    _, save = saver
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(ValidationError, match="its directory could not be created"):
        save(blocker / "sub")
    assert _names(tmp_path) == ["blocker"]


def test_a_save_into_a_read_only_place_is_a_validation_error(
    tmp_path: Path, saver: Saver, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, save = saver
    real_open = os.open

    def read_only(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]  # passed on

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(ValidationError, match=r"no file can be created there \(Permission denied"):
        save(tmp_path)
    monkeypatch.undo()
    assert _names(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_a_save_into_a_read_only_directory_is_a_validation_error(
    tmp_path: Path, saver: Saver
) -> None:
    _, save = saver
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ValidationError, match="writable path"):
            save(tmp_path)
    finally:
        tmp_path.chmod(0o755)
    assert _names(tmp_path) == []


def test_a_failed_save_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, saver: Saver, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, save = saver
    path = save(tmp_path)
    before = path.read_bytes()

    def disk_full(descriptor: int) -> None:  # the data is written, not yet on disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(ValidationError, match=r"the write failed \(No space left on device\)"):
        save(tmp_path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _names(tmp_path) == [target(tmp_path).name]


def test_a_failed_rename_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def refused(source: object, destination: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(ValidationError, match="the write failed"):
        atomic_write(path, lambda handle: handle.write(b"new"), "file")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["file.bin"]


@pytest.mark.parametrize("error", [TypeError("not serialisable"), KeyboardInterrupt()])
def test_another_error_while_writing_propagates_after_the_clean_up(
    tmp_path: Path, error: BaseException
) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def write(handle: object) -> None:
        handle.write(b"half")  # type: ignore[attr-defined]  # a binary file handle
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, write, "file")
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["file.bin"]


def test_a_name_at_the_file_system_limit_can_be_saved(tmp_path: Path) -> None:
    path = tmp_path / ("n" * 250 + ".pt")
    assert atomic_write(path, lambda handle: handle.write(b"x"), "file").read_bytes() == b"x"
    assert _names(tmp_path) == [path.name]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_saved_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "file.bin", lambda handle: handle.write(b"x"), "file")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's owner-only 0o600


def test_check_meta_returns_a_copy_of_string_metadata() -> None:
    meta = {"split": "test"}
    checked = check_meta(meta, "Trace")
    assert checked == meta
    assert checked is not meta
    assert check_meta(None, "Trace") == {}


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"size": 3}, "string keys and values, got 1 entries that are not .first: 'size': 3"),
        ({3: "size"}, "key type int"),
        ({"a": "b", "c": None}, "value type NoneType"),
        (["split", "test"], "as a mapping of strings to strings, got list"),
    ],
    ids=["int-value", "int-key", "none-value", "a-list"],
)
def test_check_meta_refuses_anything_but_strings(meta: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_meta(meta, "Trace")
    with pytest.raises(CalibrationError, match=message):
        check_meta(meta, "Calibration", CalibrationError)


# -- checksummed JSON documents: one reader for calibration and policy files ---------------------


def _save_policy(path: Path) -> Path:
    calibration = _calibration()
    return adaptix.policy("pcee", 0.5, calibration).save(path)


#: Every checksummed document kind: (save one to a path, load a path).
DOCUMENTS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], object]]] = {
    "calibration": (lambda path: _calibration().save(path), Calibration.load),
    "policy": (_save_policy, adaptix.ExitPolicy.load),
}


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _utf16(path: Path) -> None:
    path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))


def _edit(old: str, new: str) -> Callable[[Path], None]:
    """Replace the last ``old`` (the outer document's: a policy embeds its calibration's first)."""

    def edit(path: Path) -> None:
        head, found, tail = path.read_text().rpartition(old)
        assert found
        path.write_text(head + new + tail)

    return edit


#: Bad file -> what the message must say (for every kind).
BAD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "directory": (_directory, "got a directory"),
    "missing": (lambda path: path.unlink(), "could not be read"),
    "utf-16": (_utf16, "not UTF-8"),
    "corrupt json": (lambda path: path.write_text(path.read_text()[:50]), "could not be parsed"),
    "not an object": (lambda path: path.write_text("[]"), "got something else"),
    "format": (_edit('"format": "adaptix.', '"format": "other.'), "got something else"),
    "version": (_edit('"version": ', '"version": 99, "was": '), "format version"),
    "missing field": (_edit('"sha256": ', '"sha256_": '), r"lacks fields \['sha256'\]"),
    "checksum": (_edit('"sha256": "', '"sha256": "0'), "checksum mismatch"),
}


@pytest.mark.parametrize("bad", sorted(BAD_FILES))
@pytest.mark.parametrize("kind", sorted(DOCUMENTS))
def test_every_document_kind_refuses_a_bad_file_alike(tmp_path: Path, kind: str, bad: str) -> None:
    """One reader (`adaptix.core.files.read_document`): the same refusal for every kind."""
    save, load = DOCUMENTS[kind]
    spoil, says = BAD_FILES[bad]
    path = save(tmp_path / f"{kind}.json")
    spoil(path)
    with pytest.raises(ValidationError, match=says) as caught:
        load(path)
    assert str(path) in str(caught.value)
    if kind == "calibration":
        assert isinstance(caught.value, CalibrationError)
