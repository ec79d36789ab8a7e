"""Files that adaptix saves: atomic writes, checksummed JSON documents, and the string metadata
that saved objects carry.

Every file adaptix writes (traces, calibrations, the model cache) goes through `atomic_write`,
so a save either replaces the target whole or leaves it as it was, and a failure is a
`ValidationError` that names the path, never a raw ``OSError`` or a stray temporary file.

Calibration and policy files are checksummed JSON documents (`DocumentKind`): one writer
(`write_document`) and one reader (`read_document`), so both kinds refuse the same bad files
(a directory, a missing or unreadable file, bytes that are not UTF-8, corrupt JSON, another
format or version, missing fields, a checksum mismatch) with the same messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from adaptix.errors import ValidationError


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], what: str
) -> Path:
    """Write ``path`` atomically: the old file stays whole until the new one is complete.

    ``write`` fills a uniquely named temporary file in the target's directory; the data is
    flushed and fsynced, then the temporary file is renamed onto ``path`` (``os.replace``, atomic
    on POSIX and Windows). On any failure the temporary file is removed and an existing file at
    ``path`` is left untouched. A missing parent directory is created (with its parents).

    The temporary file is created with mode 0o666 filtered by the umask, like ``open``, so the
    saved file gets the usual permissions (``tempfile.mkstemp`` would make it owner-only).

    Args:
        path: the file to write.
        write: called once with a binary handle open on the temporary file.
        what: what is saved, for messages (e.g. ``"calibration"``).

    Returns:
        ``path`` as a `Path`.

    Raises:
        ValidationError: ``path`` is a directory, its parent cannot be created, or the file
            system refused the write (read-only place, no permission, disk full). Exceptions
            raised by ``write`` other than ``OSError`` propagate unchanged, after the clean-up.
    """
    target = Path(path)
    if target.is_dir():
        raise ValidationError(
            f"expected a file path to save the {what} to, got the directory {target}. "
            "Pass the path of a file (inside that directory, if you like); the directory is "
            "left untouched."
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(what, target, err, "its directory could not be created") from err
    # A shortened name keeps the temporary file within the file system's name limit.
    tmp = target.with_name(f".{target.name[:64]}.{secrets.token_hex(8)}.tmp")
    try:
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
    except OSError as err:
        raise _write_error(what, target, err, "no file can be created there") from err
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _write_error(what, target, err, "the write failed") from err
        raise
    return target


def check_meta(
    meta: object, owner: str, error: type[ValidationError] = ValidationError
) -> dict[str, str]:
    """A copy of ``meta`` as a ``dict[str, str]``; ``error`` unless it is one (None gives {}).

    Metadata travels in saved files (JSON, torch), so it is checked when the object is built,
    not when it is saved.

    Args:
        meta: a mapping from strings to strings, or None.
        owner: what the metadata belongs to, for messages (e.g. ``"Trace"``).
        error: the `ValidationError` subclass to raise.
    """
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise error(
            f"expected {owner} meta as a mapping of strings to strings, got "
            f"{type(meta).__name__}. Pass a dict such as {{'split': 'test'}}."
        )
    bad = [
        (key, value)
        for key, value in meta.items()
        if not (isinstance(key, str) and isinstance(value, str))
    ]
    if bad:
        key, value = bad[0]
        raise error(
            f"expected {owner} meta with string keys and values, got {len(bad)} entries that "
            f"are not (first: {key!r}: {value!r}; key type {type(key).__name__}, value type "
            f"{type(value).__name__}). Convert them with str() or json.dumps()."
        )
    return dict(meta)


def _write_error(what: str, target: Path, err: OSError, stage: str) -> ValidationError:
    reason = err.strerror or str(err)
    return ValidationError(
        f"expected a writable path to save the {what} to, got {target}: {stage} ({reason}). "
        "Choose a directory you can write to, with free space; the previous file, if any, is "
        "unchanged."
    )


# Windows opens files in text mode unless asked; the flag does not exist (and is 0) elsewhere.
_O_BINARY = getattr(os, "O_BINARY", 0)


def json_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``payload``: the checksum that calibration and policy
    files carry."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes): identifies weights in the
    model cache and traces in study records."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class DocumentKind:
    """A kind of checksummed JSON document: ``{"format", "version", **payload, "sha256"}``.

    Attributes:
        what: its name in messages (``"calibration"``).
        format: the ``format`` string it carries (``"adaptix.calibration"``).
        fields: per readable version, the payload's fields (the checksum covers them).
        writer: what writes it, for messages (``"Calibration.save"``).
        error: the `ValidationError` class raised for a bad document.
    """

    what: str
    format: str
    fields: Mapping[int, tuple[str, ...]]
    writer: str
    error: type[ValidationError] = ValidationError

    def document(self, version: int, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The document of ``payload`` at ``version``, with its checksum."""
        return {
            "format": self.format,
            "version": version,
            **payload,
            "sha256": json_digest(payload),
        }

    def check(self, document: object, source: str) -> tuple[int, dict[str, Any]]:
        """The version and payload of a parsed ``document``, after checking its format, version,
        fields and checksum (``source`` names it in messages).

        Raises:
            ValidationError: (``error``) another format or version, a missing field, or a
                checksum that does not match.
        """
        if not isinstance(document, dict) or document.get("format") != self.format:
            raise self.error(
                f"expected an '{self.format}' file at {source}, got something else. Pass the "
                f"file that {self.writer} wrote."
            )
        given = document.get("version")
        # JSON true equals 1 in Python: only a JSON integer names a version.
        version = given if type(given) is int else None
        fields = None if version is None else self.fields.get(version)
        if version is None or fields is None:
            newest, *older = sorted(self.fields, reverse=True)
            also = ""
            if older:
                listed = ", ".join(map(str, older[:-1]))
                also = f" (or {listed} or {older[-1]})" if listed else f" (or {older[0]})"
            raise self.error(
                f"expected {self.what} format version {newest}{also}, got {given!r} in "
                f"{source}. Re-create it with {self.writer} of this adaptix."
            )
        missing = [key for key in (*fields, "sha256") if key not in document]
        if missing:
            raise self.error(
                f"{self.what} file {source} lacks fields {missing}: it is corrupt. Re-create it "
                f"with {self.writer}."
            )
        payload = {key: document[key] for key in fields}
        if json_digest(payload) != document["sha256"]:
            raise self.error(
                f"checksum mismatch in {source}: the {self.what} file was modified or truncated "
                f"after it was saved. Re-create it with {self.writer}."
            )
        return version, payload


def read_json(path: str | os.PathLike[str], kind: DocumentKind) -> Any:
    """The parsed JSON at ``path``, strictly UTF-8 as `write_document` writes it (RFC 8259).

    Raises:
        ValidationError: (``kind.error``) a directory, a missing or unreadable file, bytes
            that are not UTF-8 (UTF-16 included), or JSON that does not parse.
    """
    source = Path(path)
    what, writer, error = kind.what, kind.writer, kind.error
    if source.is_dir():
        raise error(
            f"expected a {what} file at {source}, got a directory. Pass the path of the file "
            f"that {writer} wrote."
        )
    try:
        raw = source.read_bytes()
    except FileNotFoundError as err:
        raise error(
            f"no {what} file at {source}: it could not be read (no such file). Check the path, "
            f"or write it with {writer}."
        ) from err
    except OSError as err:
        raise error(
            f"expected a readable {what} file at {source}, but it could not be read "
            f"({err.strerror or err}). Check its permissions."
        ) from err
    try:
        text = raw.decode("utf-8")  # json.loads(bytes) would also take UTF-16: refused here
    except UnicodeDecodeError as err:
        raise error(
            f"expected a {what} file of UTF-8 JSON at {source}, but it could not be parsed: "
            f"its bytes are not UTF-8 (UnicodeDecodeError: {err.reason} at byte {err.start}; "
            "a UTF-16 file?). "
            f"Re-create it with {writer}, which writes UTF-8."
        ) from err
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise error(
            f"expected a JSON {what} file at {source}, but it could not be parsed "
            f"({type(err).__name__}: {str(err)[:200]}). The file is corrupt: re-create it with "
            f"{writer}."
        ) from err


def read_document(path: str | os.PathLike[str], kind: DocumentKind) -> tuple[int, dict[str, Any]]:
    """The version and payload of the ``kind`` document saved at ``path``: `read_json`, then
    `DocumentKind.check`.

    Raises:
        ValidationError: (``kind.error``) what those two refuse.
    """
    return kind.check(read_json(path, kind), str(Path(path)))


def write_document(
    path: str | os.PathLike[str], kind: DocumentKind, version: int, payload: Mapping[str, Any]
) -> Path:
    """Write the ``kind`` document of ``payload`` at ``version`` to ``path`` (UTF-8 JSON, keys
    sorted, no NaN), atomically (`atomic_write`).

    Raises:
        ValidationError: ``path`` cannot be written (a file already there is kept).
    """
    data = json.dumps(
        kind.document(version, payload), indent=1, sort_keys=True, allow_nan=False
    ).encode()
    return atomic_write(path, lambda handle: handle.write(data), kind.what)
