"""Process-level knobs, read from ``ADAPTIX_*`` environment variables in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError
from pydantic import field_validator

from adaptix._frozen import FrozenModel, describe_problem
from adaptix.errors import ConfigError
from adaptix.scalars import flag_field

# A flag is a bool, never 0/1 or "yes" (`adaptix.scalars`); the environment's words are read by
# `_flag`. mypy reads the type as the bool it validates.
if TYPE_CHECKING:
    Flag = bool
else:
    Flag = flag_field()

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _flag(env: Mapping[str, str], variable: str, default: bool) -> bool:
    """The boolean in ``env[variable]``; unset or empty gives ``default``.

    Raises:
        ConfigError: the value is not one of 1/true/yes/on or 0/false/no/off.
    """
    value = env.get(variable, "").strip().lower()
    if not value:
        return default
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise ConfigError(
        f"{variable} expects one of {sorted(_TRUE)} or {sorted(_FALSE)}, got "
        f"{env[variable]!r}. Set it to 1 or 0, or unset it (default: {int(default)})."
    )


class Settings(FrozenModel):
    """Settings that apply to a whole process.

    Attributes:
        disable_plugins: plugin names to block (``ADAPTIX_DISABLE_PLUGINS``, comma separated).
            Built-in plugins can be blocked too, by the names ``adaptix plugins`` lists.
        autoload_plugins: load third-party plugins from the ``adaptix`` entry-point group
            (``ADAPTIX_AUTOLOAD_PLUGINS``, default on).
        trace_plugins: print every plugin hook call to stderr (``ADAPTIX_TRACE_PLUGINS``).
        strict_plugins: a plugin that fails to load raises instead of warning
            (``ADAPTIX_STRICT_PLUGINS``).

    Raises:
        ConfigError: a value of the wrong type (the message names the field).
    """

    disable_plugins: tuple[str, ...] = ()
    autoload_plugins: Flag = True
    trace_plugins: Flag = False
    strict_plugins: Flag = False

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except PydanticValidationError as err:
            problems = "; ".join(describe_problem("", e) for e in err.errors())
            raise ConfigError(f"invalid adaptix settings: {problems}.") from err

    @field_validator("disable_plugins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``).

        Raises:
            ConfigError: a variable holds a value it cannot mean (the message names it).
        """
        env = os.environ if environ is None else environ
        return cls(
            disable_plugins=env.get("ADAPTIX_DISABLE_PLUGINS", ""),
            autoload_plugins=_flag(env, "ADAPTIX_AUTOLOAD_PLUGINS", True),
            trace_plugins=_flag(env, "ADAPTIX_TRACE_PLUGINS", False),
            strict_plugins=_flag(env, "ADAPTIX_STRICT_PLUGINS", False),
        )
