"""Process-level knobs, read from ``ADAPTIX_*`` environment variables in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, field_validator


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


class Settings(BaseModel):
    """Settings that apply to a whole process.

    Attributes:
        disable_plugins: plugin names to block (``ADAPTIX_DISABLE_PLUGINS``, comma separated).
            Built-in plugins can be blocked too, by the names ``adaptix plugins`` lists.
        autoload_plugins: load third-party plugins from the ``adaptix`` entry-point group
            (``ADAPTIX_AUTOLOAD_PLUGINS``, default on).
        trace_plugins: print every plugin hook call to stderr (``ADAPTIX_TRACE_PLUGINS``).
        strict_plugins: a plugin that fails to load raises instead of warning
            (``ADAPTIX_STRICT_PLUGINS``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    disable_plugins: tuple[str, ...] = ()
    autoload_plugins: bool = True
    trace_plugins: bool = False
    strict_plugins: bool = False

    @field_validator("disable_plugins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        return cls(
            disable_plugins=env.get("ADAPTIX_DISABLE_PLUGINS", ""),
            autoload_plugins=_flag(env.get("ADAPTIX_AUTOLOAD_PLUGINS", "1")),
            trace_plugins=_flag(env.get("ADAPTIX_TRACE_PLUGINS", "0")),
            strict_plugins=_flag(env.get("ADAPTIX_STRICT_PLUGINS", "0")),
        )
