"""`calibrate`: fit a `Calibration` to a labelled trace with a registered calibrator, and check
what the calibrator returned."""

from __future__ import annotations

from typing import Any

from adaptix import scalars
from adaptix.components import build_params
from adaptix.core.calibration import MAX_BINS, Calibration
from adaptix.core.trace import Trace
from adaptix.errors import CalibrationError, PluginError
from adaptix.plugins import AdaptixPluginManager, call_plugin, resolve_manager


def calibrate(
    trace: Trace,
    method: str = "reliability",
    bins: int = 10,
    *,
    plugins: AdaptixPluginManager | None = None,
    **params: Any,
) -> Calibration:
    """Calibrate every exit of ``trace`` (held-out, labelled data) with a registered calibrator.

    Args:
        trace: a labelled trace of data that was not used for training.
        method: a registered calibrator name (default ``"reliability"``).
        bins: M, the number of confidence bins, 1 to 2**24 (default 10).
        plugins: the plugin manager to resolve ``method`` with (default: the shared one).
        **params: the calibrator's own parameters.

    Raises:
        CalibrationError: the trace is unlabelled, or ``bins`` is not a positive integer.
        PluginError: unknown method, or the calibrator raised or returned something other than
            a `Calibration` of the trace's exits and classes with ``bins`` bins.
    """
    # bin(c) is computed in float32, which cannot tell more than 2**24 bins apart.
    bins = scalars.integer(bins, "bins", low=1, high=MAX_BINS, error=CalibrationError)
    manager = resolve_manager(plugins)
    entry = manager.calibrators.entry(method)
    calibrator = entry.component(build_params(entry.component.Params, params, method))
    result = call_plugin(entry, "fit", calibrator.fit, trace, bins)
    fit = f"{entry.component.__qualname__}.fit ({entry.distribution} {entry.version})"
    if not isinstance(result, Calibration):
        raise PluginError(
            f"calibrator '{method}' from plugin '{entry.plugin}' returned "
            f"{type(result).__name__} from {fit}, expected an adaptix.Calibration."
        )
    shape = (result.num_exits, result.num_classes, result.bins)
    if shape != (trace.num_exits, trace.num_classes, bins):
        raise PluginError(
            f"calibrator '{method}' from plugin '{entry.plugin}' returned a calibration for "
            f"E={shape[0]} exits, C={shape[1]} classes and M={shape[2]} bins from {fit}, "
            f"expected E={trace.num_exits}, C={trace.num_classes} (the trace's) and M={bins} "
            "(the bins asked for). Fix the calibrator's fit."
        )
    return result
