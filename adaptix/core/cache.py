"""A cache of trained models: keyed by everything that determines the weights, verified on load.

A corrupt or foreign cache entry is detected (unreadable file, wrong key, checksum mismatch),
reported, and retrained; it is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from adaptix.core.files import atomic_write, tensor_digest

_FORMAT = "adaptix.model-cache"
_VERSION = 1


def cache_key(**parts: Any) -> str:
    """A stable digest of JSON-serialisable ``parts`` (configs, versions)."""
    canonical = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ModelCache:
    """Trained weights under ``directory``, one file per key."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, name: str, key: str) -> Path:
        """The file of model ``name`` with ``key``."""
        return self.directory / f"{name}-{key[:16]}.pt"

    def load(self, name: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(state dict, info) if a valid entry exists; None if absent or corrupt (warns)."""
        path = self.path(name, key)
        if not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            valid = (
                isinstance(payload, dict)
                and payload.get("format") == _FORMAT
                and payload.get("version") == _VERSION
                and payload.get("key") == key
                and tensor_digest(payload["state_dict"]) == payload.get("sha256")
            )
            info = json.loads(payload["info"]) if valid else None
        except Exception as err:  # any unreadable file is a corrupt entry, retrained below
            warnings.warn(f"corrupt model cache entry {path} ({err!r}): retraining.", stacklevel=2)
            return None
        if not valid or not isinstance(info, dict):
            warnings.warn(
                f"invalid model cache entry {path} (checksum, key or info): retraining.",
                stacklevel=2,
            )
            return None
        return payload["state_dict"], info

    def save(
        self, name: str, key: str, state: dict[str, torch.Tensor], info: dict[str, Any]
    ) -> Path:
        """Write an entry atomically (see `atomic_write`); creates the directory if missing.

        Raises:
            ValidationError: the cache directory cannot be created or written; an existing
                entry is then left as it was.
        """
        path = self.path(name, key)
        state = {k: v.detach().cpu() for k, v in state.items()}
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "key": key,
            "state_dict": state,
            "sha256": tensor_digest(state),
            "info": json.dumps(info),
        }
        return atomic_write(path, lambda handle: torch.save(payload, handle), "model cache entry")
