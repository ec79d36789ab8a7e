"""Files that adaptix saves: atomic writes, and the string metadata that saved objects carry.

Every file adaptix writes (traces, calibrations, the model cache) goes through `atomic_write`,
so a save either replaces the target whole or leaves it as it was, and a failure is a
`ValidationError` that names the path, never a raw ``OSError`` or a stray temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Mapping
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
