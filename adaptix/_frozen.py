"""`FrozenModel`: the one pydantic base of adaptix's configuration models.

Settings, the job configuration and every component's parameters (`adaptix.components.ParamsModel`)
are immutable once validated and refuse keys they do not know, so a typo is an error instead of a
silently ignored setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """A pydantic model that is frozen (hashable, immutable) and forbids unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")
