"""The one error family of adaptix.

Every error that adaptix raises for bad input, bad configuration or a misbehaving plugin is an
`AdaptixError`, so callers can catch one type. Messages say what was expected, what came, and how
to fix it.
"""

from __future__ import annotations


class AdaptixError(Exception):
    """Base class of every error adaptix raises on purpose."""


class ValidationError(AdaptixError, ValueError):
    """An input (tensor, threshold, parameter, file) does not meet its contract."""


class CalibrationError(ValidationError):
    """A calibration is empty, corrupt, or was made for a different model."""


class PluginError(AdaptixError):
    """A plugin is unknown, duplicated, broken, or raised while adaptix called it."""


class ConfigError(ValidationError):
    """A configuration file or value is invalid; the message gives the dotted path."""


def expect(condition: bool, what: str, got: object, fix: str) -> None:
    """Raise a `ValidationError` in the house format unless ``condition`` holds.

    Args:
        condition: what must be true.
        what: what was expected, e.g. ``"logits of shape [N, E, C]"``.
        got: what came instead (its ``str`` goes into the message).
        fix: how to fix it.
    """
    if not condition:
        raise ValidationError(f"expected {what}, got {got}. {fix}")
