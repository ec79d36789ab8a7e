"""Built-in calibrators: ``reliability`` (equal-width bins) and ``equal_mass`` (quantile bins).

Both count n and k per exit and confidence bin with `adaptix.core.calibration.count_bins`; they
differ only in where the bin edges lie.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import field_validator
from torch import Tensor

from adaptix.components import Calibrator, ParamsModel
from adaptix.core.calibration import Calibration, count_bins
from adaptix.core.scores import confidence
from adaptix.core.trace import Trace
from adaptix.hookspecs import hookimpl
from adaptix.plugins import Registrar


class Reliability(Calibrator):
    """The reliability diagram of every exit: M equal-width confidence bins over [0, 1]."""

    name = "reliability"
    description = "per-exit, per-bin counts n and correct k (reliability diagram)"

    def fit(self, trace: Trace, bins: int) -> Calibration:
        return count_bins(trace, bins, method=self.name)


class EqualMassParams(ParamsModel):
    """``edges``: count with these bin edges (``[E][M + 1]``, e.g. ``first.edges`` of another
    shard's calibration) instead of fitting them; None (the default) fits them to the trace."""

    edges: tuple[tuple[float, ...], ...] | None = None

    @field_validator("edges", mode="before")
    @classmethod
    def _tensor_as_lists(cls, value: Any) -> Any:
        """Accept a tensor or numpy array (``calibration.edges``) as nested lists."""
        return value.tolist() if hasattr(value, "tolist") else value


class EqualMass(Calibrator):
    """M bins per exit holding about equal numbers of calibration inputs (quantile edges).

    Equal-width bins put most inputs of confident late exits in the top bin, so most δ give the
    same policy; equal-mass bins spread them. Interior edge k (k = 1 … M - 1) of exit e is the
    confidence ranked ⌊k·N / M⌋ (from 0) among the N calibration confidences of that exit, so
    bin k - 1 holds ranks ⌊(k-1)·N / M⌋ … ⌊k·N / M⌋ - 1: N / M inputs, rounded, when no two
    confidences tie. Tied confidences cannot be split: several edges then fall on one value,
    and the bins between them have zero width and stay empty (an empty bin never lets anything
    exit). The calibration always has the M bins asked for; fewer of them hold inputs when the
    confidences take few distinct values (confidences of exactly 1 all share the last bin,
    which is closed at 1).

    Merging shards: the edges depend on the data, so the calibrations of two shards, fitted
    separately, have different edges and do not add (``+`` raises `CalibrationError`). Fit the
    edges once, on one shard or on a sample, then count every other shard with them and add::

        first = adaptix.calibrate(shard_0, "equal_mass", 20)
        total = first
        for shard in other_shards:
            total = total + adaptix.calibrate(shard, "equal_mass", 20, edges=first.edges)

    The sum counts every shard exactly; its bins are equal-mass on the first shard only.
    """

    name = "equal_mass"
    description = "per-exit quantile bins holding equal numbers of inputs (equal-mass diagram)"
    Params = EqualMassParams
    params: EqualMassParams

    def fit(self, trace: Trace, bins: int) -> Calibration:
        fixed = self.params.edges
        edges = equal_mass_edges(confidence(trace.logits), bins) if fixed is None else fixed
        return count_bins(trace, bins, edges=edges, method=self.name)


def equal_mass_edges(confidences: Tensor, bins: int) -> Tensor:
    """Quantile edges of every exit: float64 ``[E, M + 1]`` from confidences ``[N, E]``.

    Edge 0 is 0, edge M is 1, and edge k (k = 1 … M - 1) is the confidence ranked ⌊k·N / M⌋
    among the N of its exit (see `EqualMass`). NaN confidences sort last (and make
    `count_bins` refuse the trace).
    """
    count, exits = confidences.shape
    ranked = confidences.sort(dim=0).values
    ranks = torch.arange(1, bins, device=ranked.device) * count // bins
    interior = ranked[ranks].t().double().clamp(0.0, 1.0).cpu()
    zeros = torch.zeros(exits, 1, dtype=torch.float64)
    return torch.cat([zeros, interior, torch.ones(exits, 1, dtype=torch.float64)], dim=1)


@hookimpl
def adaptix_register_calibrators(registry: Registrar[Calibrator]) -> None:
    """Register the built-in calibrators."""
    registry.add(Reliability)
    registry.add(EqualMass)
