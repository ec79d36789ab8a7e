"""The job's step 4, sweeps: every criterion over the δ grid, the hindsight oracle, the control
table of every criterion against it, and how many distinct policies each knob gives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch

from adaptix.components import AccuracyReading
from adaptix.core.calibration import Calibration
from adaptix.core.trace import Trace
from adaptix.experiment.config import GUARANTEE_ROW, AnalysisSettings
from adaptix.experiment.results import CertifiedPoint
from adaptix.offline import control
from adaptix.offline.control import (
    ControlSummary,
    control_summary,
    distinct_policies,
    oracle_points,
    summarise_control,
)
from adaptix.offline.frontier import Frontier
from adaptix.offline.policy import policy
from adaptix.offline.simulate import simulate, sweep
from adaptix.offline.statistics import exit_indices
from adaptix.plugins import AdaptixPluginManager

if TYPE_CHECKING:
    from adaptix.offline.survivors import SurvivorCounts


#: The hindsight oracle's row of the knob table: the finest knob a rule that picks the
#: cheapest policy meeting δ can have (every δ the first exit meets is one policy).
ORACLE_ROW = "hindsight_oracle"


class RayCounting(Protocol):
    """The job's sweeps and survivor counts counted by shard on Ray (``[ray]``): the counts add
    exactly, so they equal the single-process ones. The job gives one (`adaptix.experiment.job`
    holds what touches `adaptix.distributed`); None counts in this process."""

    def sweep(
        self,
        trace: Trace,
        grids: dict[str, list[float]],
        params: dict[str, dict[str, Any]],
        calibration: Calibration,
    ) -> Frontier:
        """`adaptix.sweep` of ``trace`` over ``grids`` (criterion -> thresholds)."""
        ...

    def survivors(
        self,
        calib_trace: Trace,
        deltas: list[float],
        name: str,
        calibration: Calibration,
        params: dict[str, Any],
    ) -> SurvivorCounts:
        """`calibrate_survivors` of criterion ``name`` on ``calibration``'s bins."""
        ...


def sweep_all(
    trace: Trace,
    calibration: Calibration,
    config: AnalysisSettings,
    manager: AdaptixPluginManager,
    readings: dict[str, AccuracyReading | None],
    on_ray: RayCounting | None = None,
) -> Frontier:
    """Sweep every criterion at the thresholds its accuracy reading gives for the δ grid, or at
    its default thresholds when it has no reading (patience); counted on Ray with ``on_ray``."""
    deltas = config.sweep.deltas()
    grids = {
        name: list(manager.criteria.get(name).default_thresholds())
        if reading is None
        else sorted({reading.threshold(d) for d in deltas})
        for name, reading in readings.items()
    }
    params = {name: config.sweep.params_of(name) for name in readings}
    if on_ray is None:
        frontier = sweep(trace, params, grids, calibration, plugins=manager)
    else:
        frontier = on_ray.sweep(trace, grids, params, calibration)
    return _one_plain_point_each(frontier, readings)


def _one_plain_point_each(
    frontier: Frontier, readings: dict[str, AccuracyReading | None]
) -> Frontier:
    """Keep one point per default grid where nothing leaves early.

    Past some threshold of a default grid every point is the plain model's (patience's grid
    1..50 on a model of 4 exits: every t >= 3), so one of them is enough. Grids read from δ keep
    every point: the control table looks each δ up.
    """
    kept, plain = [], set()
    for point in frontier:
        if readings[point.criterion] is None and point.early_exit_rate == 0:
            if point.criterion in plain:
                continue
            plain.add(point.criterion)
        kept.append(point)
    return Frontier(kept, frontier.costs)


def hindsight_oracle(
    trace: Trace, config: AnalysisSettings, manager: AdaptixPluginManager
) -> dict[float, float]:
    """The hindsight oracle's cost at every δ of the grid on ``trace``: the one oracle of
    adaptix (`adaptix.offline.control.hindsight_oracle`), the study's too."""
    return control.hindsight_oracle(trace, config.sweep.deltas(), plugins=manager)


def control_rows(
    frontier: Frontier,
    oracle: dict[float, float],
    config: AnalysisSettings,
    manager: AdaptixPluginManager,
    readings: dict[str, AccuracyReading | None],
    certified: list[CertifiedPoint],
) -> dict[str, ControlSummary]:
    """Control metrics of every criterion that declares an accuracy reading, then of the
    guarantee mode (when ``certified`` holds its points), against one oracle."""
    deltas = config.sweep.deltas()
    summaries = {
        name: control_summary(frontier, name, deltas, oracle, plugins=manager)
        for name, reading in readings.items()
        if reading is not None
    }
    if certified:
        points = {c.delta: c.point for c in certified}
        summaries[GUARANTEE_ROW] = summarise_control(
            GUARANTEE_ROW, points, oracle, frontier.of("confidence")
        )
    return summaries


def knob_counts(
    test_trace: Trace,
    calibration: Calibration,
    config: AnalysisSettings,
    manager: AdaptixPluginManager,
    readings: dict[str, AccuracyReading | None],
    certified: list[CertifiedPoint],
) -> dict[str, int]:
    """How fine δ is as a knob: the distinct policies (exit-index vectors on ``test_trace``)
    that the δ grid gives, per criterion with an accuracy reading, for the guarantee mode, and
    for the hindsight oracle (`ORACLE_ROW`)."""
    deltas = config.sweep.deltas()
    counts = {}
    for name, reading in readings.items():
        if reading is not None:
            grid = [reading.threshold(d) for d in deltas]
            own = config.sweep.params_of(name)
            base = policy(name, grid[0], calibration, plugins=manager, **own)
            counts[name] = distinct_policies(exit_indices(test_trace, base, grid))
    if certified:
        exits = [simulate(test_trace, c.policy).exit_index for c in certified]
        counts[GUARANTEE_ROW] = distinct_policies(torch.stack(exits, dim=1))
    dense = control.oracle_counts(test_trace, deltas, plugins=manager).points()
    confidence = policy(control.ORACLE_CRITERION, 0.5, plugins=manager)
    nothing_early = torch.full(
        (test_trace.num_inputs,), test_trace.num_exits - 1, device=test_trace.logits.device
    )
    exits = [
        nothing_early
        if point is None
        else exit_indices(test_trace, confidence, [point.threshold])[:, 0]
        for point in oracle_points(dense, deltas).values()
    ]
    counts[ORACLE_ROW] = distinct_policies(torch.stack(exits, dim=1))
    return counts
