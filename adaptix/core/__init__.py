"""The nouns and the pure maths: traces, calibration tables, scores, bounds, files, FLOPs.

Nothing here resolves a plugin or decides anything: `adaptix.offline` and `adaptix.online` build
on these modules, never the reverse. Import from the modules themselves (``adaptix.core.scores``,
``adaptix.core.trace``, ...); this package re-exports nothing.
"""
