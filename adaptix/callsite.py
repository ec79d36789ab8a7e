"""Warnings that point at the user's line, wherever inside adaptix they are raised.

A fixed ``stacklevel`` is right for one call path only: the same warning reached through
``adaptix.policy(...)`` or through ``get_plugin_manager(...)`` sits at different depths. `warn`
counts the frames instead, so the warning's ``filename`` and ``lineno`` are those of the first
caller outside the adaptix package (Python 3.12's ``skip_file_prefixes``, for every version).
"""

from __future__ import annotations

import os
import sys
import warnings

#: Frames in files under this folder belong to adaptix, not to its caller.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Decorator frames between a caller and adaptix (``torch.no_grad`` on the runner's
#: ``__call__``, ``contextlib``'s wrappers): skipped too, so the warning lands on the caller.
_WRAPPERS = ("torch/utils/_contextlib.py", "/contextlib.py", "/functools.py")


def _inside(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(PACKAGE_DIR) or path.replace(os.sep, "/").endswith(_WRAPPERS)


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a `warnings.warn` called by this function's caller point at
    the first frame outside the adaptix package (1 would be the caller itself)."""
    level = 1
    frame = sys._getframe(1)  # the function about to warn
    while _inside(frame.f_code.co_filename):
        if frame.f_back is None:  # adaptix all the way up (its CLI): its outermost frame
            break
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning]) -> None:
    """`warnings.warn` attributed to the first caller outside adaptix.

    Args:
        message: the warning's text.
        category: its class (an adaptix warning, e.g. `adaptix.plugins.AdaptixPluginWarning`).
    """
    warnings.warn(message, category, stacklevel=caller_stacklevel())


__all__ = ["PACKAGE_DIR", "caller_stacklevel", "warn"]
