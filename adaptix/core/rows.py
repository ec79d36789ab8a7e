"""Batches as nested tensors: what travels with a row through the backbone.

A backbone's hidden state may be a tensor or a nest (dict, tuple, list) of tensors whose first
dimension is the batch, e.g. ``{"hidden": h, "attention_mask": m}``. These helpers count, index
and move such nests, so that compaction moves everything that belongs to a row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from adaptix.errors import ValidationError


def leaves(batch: Any) -> list[Tensor]:
    """The tensors of a nested batch (tensors, mappings, tuples and lists of them), in order."""
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [leaf for value in batch.values() for leaf in leaves(value)]
    if isinstance(batch, (tuple, list)):
        return [leaf for value in batch for leaf in leaves(value)]
    return []


def batch_size(batch: Any) -> int:
    """The shared first dimension of every tensor in ``batch``.

    Raises:
        ValidationError: no tensor in the batch, or tensors disagree on the batch size.
    """
    sizes = {int(leaf.shape[0]) if leaf.dim() else -1 for leaf in leaves(batch)}
    if not sizes:
        raise ValidationError(
            f"expected a tensor or a dict/tuple of tensors as a batch, got {type(batch).__name__}."
        )
    if len(sizes) != 1 or -1 in sizes:
        raise ValidationError(
            f"expected every tensor of the batch to share its first (batch) dimension, got sizes "
            f"{sorted(sizes)}. Stack inputs along dimension 0."
        )
    return sizes.pop()


def batch_device(batch: Any) -> torch.device:
    """The device of the batch's first tensor."""
    found = leaves(batch)
    if not found:
        raise ValidationError("expected at least one tensor in the batch.")
    return found[0].device


def take_rows(batch: Any, index: Tensor | slice) -> Any:
    """The rows ``index`` (index tensor or slice) of every tensor in the nest.

    A 1-D integer index goes through ``index_select``, which on CPU copies rows several times
    faster than advanced indexing (10x for a [64, 32, 28, 28] activation): the runtime compacts
    every active row's state at each exit where rows leave.
    """
    if isinstance(batch, Tensor):
        if (
            isinstance(index, Tensor)
            and index.dtype in (torch.int64, torch.int32)
            and index.dim() == 1
            and batch.dim() > 0
        ):
            return batch.index_select(0, index)
        return batch[index]
    if isinstance(batch, Mapping):
        return type(batch)({key: take_rows(value, index) for key, value in batch.items()})  # type: ignore[call-arg]  # Mapping subclasses take a dict
    if isinstance(batch, (tuple, list)):
        return type(batch)(take_rows(value, index) for value in batch)
    return batch


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor of the nest to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return type(batch)({key: to_device(value, device) for key, value in batch.items()})  # type: ignore[call-arg]  # Mapping subclasses take a dict
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch
