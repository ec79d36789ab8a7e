"""`FrozenModel`: the one pydantic base of adaptix's configuration models.

Settings, the job configuration and every component's parameters (`adaptix.components.ParamsModel`)
are immutable once validated and refuse keys they do not know, so a typo is an error instead of a
silently ignored setting.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from adaptix.errors import AdaptixError


class FrozenModel(BaseModel):
    """A pydantic model that is frozen (hashable, immutable) and forbids unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def describe_problem(where: str, error: Any) -> str:
    """One error of a pydantic ``ValidationError.errors()`` as ``where.field: what was wrong``:
    adaptix's own message where one of its checks raised (`adaptix.scalars`: it already names
    the value), pydantic's with the value otherwise."""
    location = ".".join(
        [where, *(str(p) for p in error["loc"])] if where else map(str, error["loc"])
    )
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, AdaptixError):
        return f"{location}: {str(cause).rstrip('.')}"
    return f"{location}: {error['msg']} (got {error.get('input')!r})"
