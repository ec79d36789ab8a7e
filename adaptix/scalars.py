"""One vocabulary for scalar arguments: the same rule at every public entry point.

Every number, count, flag or name a user passes to adaptix (a level α, a target δ, a count of
streams, a seed, a concentration, a configuration value) is checked by one of these functions,
or, inside a pydantic model, by the `Annotated` types built from them (`real_field` and friends),
so a value refused in one place is refused everywhere, with the same message.

The rule:

- **Numbers** are Python ``int``/``float`` or numpy scalars (``np.float32(0.05)``,
  ``np.int64(3)``), or 0-d numpy arrays and 0-d real torch tensors (read with ``.item()``).
- **A bool is never a number** (``True`` is not 1), and numpy's ``np.bool_`` neither.
- **A string is never silently coerced**: ``"0.05"`` is refused where a number is expected.
- **Integers** are integral types only: ``3.0`` is refused where a count or a seed is expected
  (a float count is almost always a bug: a share passed where a size was meant).
- **Reals** are finite unless a bound says otherwise (NaN is always refused).

Each function returns the plain Python value (``float``, ``int``, ``bool`` or ``str``) and raises
`adaptix.ValidationError` (a ``ValueError``) naming the argument, what was expected and what came.
"""

from __future__ import annotations

import math
import numbers
import operator
import reprlib
from collections.abc import Iterable
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BeforeValidator, ValidationInfo

from adaptix.errors import ValidationError

__all__ = [
    "choice",
    "count",
    "count_field",
    "flag",
    "flag_field",
    "integer",
    "integer_field",
    "real",
    "real_field",
    "unit",
    "unit_field",
]


def _scalar(value: Any) -> Any:
    """A 0-d numpy array or torch tensor as its Python item; anything else unchanged."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_complex():
        return value.item()
    return value


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _show(value: Any) -> str:
    return f"{reprlib.repr(value)} ({type(value).__name__})"


def real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    finite: bool = True,
    error: type[ValidationError] = ValidationError,
) -> float:
    """``value`` as a float, checked against optional bounds.

    Args:
        value: the argument.
        name: its name in messages (e.g. ``"alpha"`` or ``"sweep.delta_min"``).
        low: the lower bound (None: none).
        high: the upper bound (None: none).
        open_low: exclude ``low`` itself.
        open_high: exclude ``high`` itself.
        finite: refuse ±inf (NaN is refused always).
        error: the `ValidationError` subclass to raise (e.g. `CalibrationError`).

    Raises:
        ValidationError: a bool, a string or another non-number, NaN, ±inf where ``finite``, or
            a value outside the bounds.
    """
    item = _scalar(value)
    if _is_bool(item) or not isinstance(item, numbers.Real):
        raise error(f"expected {name} to be a real number, got {_show(value)}.")
    try:
        x = float(item)
    except OverflowError:  # an int beyond the float range
        x = math.inf if operator.index(item) > 0 else -math.inf  # type: ignore[arg-type]  # an int
    if math.isnan(x) or (finite and math.isinf(x)):
        raise error(f"expected {name} to be a finite real number, got {value!r}.")
    too_low = low is not None and (x <= low if open_low else x < low)
    too_high = high is not None and (x >= high if open_high else x > high)
    if too_low or too_high:
        raise error(
            f"expected {name} in {_interval(low, high, open_low, open_high)}, got {value!r}."
        )
    return x


def unit(
    value: Any,
    name: str,
    *,
    open_low: bool = True,
    open_high: bool = True,
    error: type[ValidationError] = ValidationError,
) -> float:
    """``value`` as a float in the unit interval, open at both ends by default (levels α, δ).

    Raises:
        ValidationError: as `real`, or outside the interval.
    """
    return real(value, name, low=0.0, high=1.0, open_low=open_low, open_high=open_high, error=error)


def integer(
    value: Any,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    error: type[ValidationError] = ValidationError,
) -> int:
    """``value`` as an int (an integral type: Python or numpy), within ``[low, high]``.

    Raises:
        ValidationError: a bool, a float (even ``3.0``), a string, or a value out of range.
    """
    item = _scalar(value)
    if _is_bool(item) or not isinstance(item, numbers.Integral):
        raise error(f"expected {name} to be an integer, got {_show(value)}.")
    x = int(item)
    if (low is not None and x < low) or (high is not None and x > high):
        wanted = f"≥ {low}" if high is None else f"in {_interval(low, high, False, False)}"
        raise error(f"expected {name} to be an integer {wanted}, got {value!r}.")
    return x


def count(
    value: Any, name: str, *, low: int = 0, error: type[ValidationError] = ValidationError
) -> int:
    """``value`` as a count: an integer ≥ ``low`` (0 by default; 1 for "at least one").

    Raises:
        ValidationError: as `integer`.
    """
    return integer(value, name, low=low, error=error)


def flag(value: Any, name: str) -> bool:
    """``value`` as a bool (Python or numpy): never 0/1, never ``"true"``.

    Raises:
        ValidationError: anything but a bool.
    """
    item = _scalar(value)
    if not _is_bool(item):
        raise ValidationError(f"expected {name} to be True or False, got {_show(value)}.")
    return bool(item)


def choice(value: Any, name: str, options: Iterable[str]) -> str:
    """``value`` as one of ``options`` (exact strings).

    Raises:
        ValidationError: anything else, listing the options.
    """
    allowed = tuple(options)
    if not isinstance(value, str) or value not in allowed:
        raise ValidationError(f"expected {name} to be one of {list(allowed)}, got {value!r}.")
    return value


def _number(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _interval(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    left = "(-inf" if low is None else ("(" if open_low else "[") + _number(low)
    right = "inf)" if high is None else _number(high) + (")" if open_high else "]")
    return f"{left}, {right}"


# ------------------------------------------------------------------------- pydantic field types


def _field_name(info: ValidationInfo) -> str:
    return info.field_name or "value"


def real_field(
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    finite: bool = True,
) -> Any:
    """A pydantic type (``Annotated[float, ...]``) checked by `real` with these bounds."""

    def check(value: Any, info: ValidationInfo) -> float:
        return real(
            value,
            _field_name(info),
            low=low,
            high=high,
            open_low=open_low,
            open_high=open_high,
            finite=finite,
        )

    return Annotated[float, BeforeValidator(check)]


def unit_field(*, open_low: bool = True, open_high: bool = True) -> Any:
    """A pydantic type checked by `unit`."""
    return real_field(low=0.0, high=1.0, open_low=open_low, open_high=open_high)


def integer_field(*, low: int | None = None, high: int | None = None) -> Any:
    """A pydantic type (``Annotated[int, ...]``) checked by `integer`."""

    def check(value: Any, info: ValidationInfo) -> int:
        return integer(value, _field_name(info), low=low, high=high)

    return Annotated[int, BeforeValidator(check)]


def count_field(*, low: int = 0) -> Any:
    """A pydantic type checked by `count`."""
    return integer_field(low=low)


def flag_field() -> Any:
    """A pydantic type (``Annotated[bool, ...]``) checked by `flag`."""

    def check(value: Any, info: ValidationInfo) -> bool:
        return flag(value, _field_name(info))

    return Annotated[bool, BeforeValidator(check)]
