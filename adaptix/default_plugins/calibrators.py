"""Built-in calibrator ``reliability``: per-exit, per-bin counts n and correct k."""

from __future__ import annotations

import torch

from adaptix.calibration import Calibration
from adaptix.components import Calibrator
from adaptix.errors import CalibrationError
from adaptix.hookspecs import hookimpl
from adaptix.plugins import Registrar
from adaptix.scores import bin_index, confidence_and_prediction
from adaptix.trace import Trace


class Reliability(Calibrator):
    """The reliability diagram of every exit: M equal-width confidence bins over [0, 1]."""

    name = "reliability"
    description = "per-exit, per-bin counts n and correct k (reliability diagram)"

    def fit(self, trace: Trace, bins: int) -> Calibration:
        if trace.labels is None:
            raise CalibrationError(
                "expected a labelled trace to calibrate, got labels=None. Trace a held-out "
                "labelled set (not the training data)."
            )
        num_exits = trace.num_exits
        confidence, prediction = confidence_and_prediction(trace.logits)  # [N, E] each
        correct = prediction == trace.labels.unsqueeze(1)
        # One flat bincount over (exit, bin) cells: no loop over inputs or exits.
        cell = (torch.arange(num_exits, device=confidence.device) * bins).unsqueeze(0)
        cell = (cell + bin_index(confidence, bins)).flatten()
        size = num_exits * bins
        counts = torch.bincount(cell, minlength=size)
        hits = torch.bincount(cell, weights=correct.flatten().double(), minlength=size)
        conf_sum = torch.bincount(cell, weights=confidence.flatten().double(), minlength=size)
        return Calibration(
            counts.view(num_exits, bins).cpu(),
            hits.round().long().view(num_exits, bins).cpu(),
            trace.num_classes,
            confidence_sum=conf_sum.view(num_exits, bins).cpu(),
            method=self.name,
            meta=trace.meta,
        )


@hookimpl
def adaptix_register_calibrators(registry: Registrar[Calibrator]) -> None:
    """Register the built-in calibrators."""
    registry.add(Reliability)
