"""`describe_value`: how an error message shows a value that came where another was expected."""

from __future__ import annotations

import reprlib

from torch import Tensor


def describe_value(value: object) -> str:
    """A short description of ``value`` for an error message: a tensor's shape and dtype, a
    scalar's or string's (abridged) repr and type, or else its type."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    if isinstance(value, str | bytes | int | float):
        return f"{reprlib.repr(value)} (a {type(value).__name__})"
    return f"a {type(value).__name__}"
