"""The job's step 4 for one model (`analyse`): calibrate, sweep, read the criteria on survivor
bins, certify the guarantee mode, under the natural logits and every overconfidence stress."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from adaptix.components import AccuracyReading
from adaptix.core.calibration import Calibration
from adaptix.core.trace import Trace
from adaptix.errors import ValidationError
from adaptix.experiment.config import GUARANTEE_ROW, AnalysedModel, AnalysisSettings
from adaptix.experiment.results import CertifiedPoint, ModelOutcome, SurvivorPanel
from adaptix.experiment.sweeps import (
    RayCounting,
    control_rows,
    hindsight_oracle,
    knob_counts,
    sweep_all,
)
from adaptix.offline.calibrate import calibrate
from adaptix.offline.control import ControlSummary, distinct_policies, summarise_control
from adaptix.offline.frontier import Frontier, FrontierPoint
from adaptix.offline.guarantee import CertificateWarning, Certifier
from adaptix.offline.simulate import SimulationResult, simulate
from adaptix.offline.statistics import count_exits, exit_accuracy
from adaptix.offline.survivors import SurvivorCounts, calibrate_survivors, reads_bin_table
from adaptix.online.model import profile_from_trace
from adaptix.plugins import AdaptixPluginManager


def analyse(
    spec: AnalysedModel,
    calib_trace: Trace,
    test_trace: Trace,
    config: AnalysisSettings,
    manager: AdaptixPluginManager,
    readings: dict[str, AccuracyReading | None],
    on_ray: RayCounting | None = None,
    stressed: Mapping[float, tuple[Trace, Trace]] | None = None,
) -> ModelOutcome:
    """Save the traces and calibrate; sweep every criterion of ``readings``, read those with
    a bin table on survivor bins (``sweep.survivors``) and certify the guarantee mode, on the
    test logits as they are and under each overconfidence stress; write the calibration and
    the frontiers; count the knob's distinct policies. With ``on_ray``, the sweeps and
    survivor counts are counted on Ray.

    The stress of scale s reads ``stressed[s]`` (its calibration and test traces) when given,
    else the traces' logits × s (`Trace.scaled`). Traces that are not plain logits, such as
    compact token traces (`adaptix.compact_token_traces`, where a scale changes which classes
    are kept), are built at each scale and passed here.

    Raises:
        ValidationError: ``stressed`` lacks a scale of ``config.sweep.stress_scales``.
    """
    if stressed is not None:
        missing = [s for s in config.sweep.stress_scales if s not in stressed]
        if missing:
            raise ValidationError(
                f"expected stressed traces for every stress scale, missing {missing}."
            )
    out = config.output_dir
    trace_paths = tuple(
        trace.save(out / f"trace-{spec.name}-{split}.pt")
        for split, trace in (("calibration", calib_trace), ("test", test_trace))
    )
    calibration = calibrate(
        calib_trace, config.sweep.calibrator, config.sweep.bins, plugins=manager
    )
    calibration_path = calibration.save(out / f"calibration-{spec.name}.json")
    frontier = sweep_all(test_trace, calibration, config, manager, readings, on_ray)
    frontier.to_csv(out / f"frontier-{spec.name}.csv")
    panels = {"natural": ("", calib_trace, test_trace, calibration, frontier)}
    stress: dict[float, Frontier] = {}
    for scale in config.sweep.stress_scales:
        stressed_calib, stressed_test = (
            stressed[scale]
            if stressed is not None
            else (calib_trace.scaled(scale), test_trace.scaled(scale))
        )
        stressed_cal = calibrate(
            stressed_calib, config.sweep.calibrator, config.sweep.bins, plugins=manager
        )
        stress[scale] = sweep_all(stressed_test, stressed_cal, config, manager, readings, on_ray)
        stress[scale].to_csv(out / f"frontier-{spec.name}-logits-x{scale:g}.csv")
        panels[f"logits ×{scale:g}"] = (
            f"-logits-x{scale:g}",
            stressed_calib,
            stressed_test,
            stressed_cal,
            stress[scale],
        )
    control, certified, survivors = {}, {}, {}
    for panel, (suffix, calib, test, cal, swept) in panels.items():
        # A model with one exit has nothing to certify: every input runs all of it.
        if config.guarantee.enabled and calib.num_exits > 1:
            certified[panel] = certify(calib, test, config, manager)
        oracle = hindsight_oracle(test, config, manager)
        control[panel] = control_rows(
            swept, oracle, config, manager, readings, certified.get(panel, [])
        )
        if config.sweep.survivors:
            survivors[panel] = _survivor_panel(
                calib, test, cal, swept.of("confidence"), oracle, config, manager, readings, on_ray
            )
            survivors[panel].frontier.to_csv(out / f"frontier-{spec.name}{suffix}-survivors.csv")
    knob = knob_counts(
        test_trace, calibration, config, manager, readings, certified.get("natural", [])
    )
    return ModelOutcome(
        config=spec,
        profile=profile_from_trace(test_trace),
        exit_accuracy=exit_accuracy(test_trace),
        calibration=calibration,
        calibration_path=calibration_path,
        frontier=frontier,
        stress=stress,
        control=control,
        trained_seconds=None,
        cached=False,
        test_trace=test_trace,
        certified=certified,
        knob=knob,
        trace_paths=trace_paths,
        survivors=survivors,
    )


def _survivor_panel(
    calib_trace: Trace,
    test_trace: Trace,
    calibration: Calibration,
    confidence: list[FrontierPoint],
    oracle: dict[float, float],
    config: AnalysisSettings,
    manager: AdaptixPluginManager,
    readings: dict[str, AccuracyReading | None],
    on_ray: RayCounting | None,
) -> SurvivorPanel:
    """`SurvivorPanel` of one panel: its calibration split and all-input ``calibration`` (whose
    bins the survivor tables keep), its test split, the all-input sweep's ``confidence``
    points and the test split's ``oracle`` (for the same control metrics as the other rows).

    Each δ's exits come from `SurvivorCounts.exit_indices` (one softmax of the test split for
    the whole grid; what `simulate` gives, measured 25–35× faster on 10 exits and 50 δ) and
    its metrics from `count_exits` with that δ's policy, as a sweep point's are.
    """
    deltas = config.sweep.deltas()
    counts: dict[str, SurvivorCounts] = {}
    control: dict[str, ControlSummary] = {}
    knob: dict[str, int] = {}
    points: list[FrontierPoint] = []
    for name, reading in readings.items():
        if reading is None or not reading.is_target or not reads_bin_table(name, plugins=manager):
            continue
        counted = count_survivors(calib_trace, deltas, name, calibration, config, manager, on_ray)
        exits = counted.exit_indices(test_trace, plugins=manager)
        by_delta = {}
        for column, delta in enumerate(deltas):
            pol = counted.policy(delta, plugins=manager)
            decided = exits[:, column : column + 1]
            (by_delta[delta],) = count_exits(test_trace, pol, [pol.threshold], decided).points()
        counts[name] = counted
        points += by_delta.values()
        control[name] = summarise_control(name, by_delta, oracle, confidence)
        knob[name] = distinct_policies(exits)
    return SurvivorPanel(counts, Frontier(points, test_trace.costs.tolist()), control, knob)


def count_survivors(
    calib_trace: Trace,
    deltas: list[float],
    name: str,
    calibration: Calibration,
    config: AnalysisSettings,
    manager: AdaptixPluginManager,
    on_ray: RayCounting | None = None,
) -> SurvivorCounts:
    """Criterion ``name``'s survivor counts over the δ grid on ``calibration``'s bins: in this
    process (`calibrate_survivors`), or with ``on_ray`` counted by shard on the cluster
    (`adaptix.distributed.reduce_survivors`: the counts equal the single-process ones exactly;
    the workers resolve the criterion with their default plugin manager)."""
    params = config.sweep.params_of(name)
    if on_ray is not None:
        return on_ray.survivors(calib_trace, deltas, name, calibration, params)
    return calibrate_survivors(
        calib_trace,
        deltas,
        name,
        bins=calibration.bins,
        edges=calibration.edges,
        plugins=manager,
        **params,
    )


def certify(
    calib_trace: Trace, test_trace: Trace, config: AnalysisSettings, manager: AdaptixPluginManager
) -> list[CertifiedPoint]:
    """The guarantee mode at every δ of the grid: certified on ``calib_trace`` (one
    `Certifier`, reused over δ) and simulated on ``test_trace``.

    A criterion that reads a calibration gets one built on the first half of the calibration
    split and is certified on the second half: a test on the inputs that built the calibration
    would not hold its level.
    """
    settings = config.guarantee
    calibration, certify_on = None, calib_trace
    if manager.criteria.get(settings.criterion).needs_calibration:
        half = calib_trace.num_inputs // 2
        first, second = calib_trace.subset(slice(0, half)), calib_trace.subset(slice(half, None))
        calibration = calibrate(first, config.sweep.calibrator, config.sweep.bins, plugins=manager)
        certify_on = second
    certifier = Certifier(certify_on, settings.criterion, calibration=calibration, plugins=manager)
    points = []
    with warnings.catch_warnings():
        # The report counts the δ that could not be certified; a warning per δ would repeat it.
        warnings.simplefilter("ignore", CertificateWarning)
        simulated: dict[tuple[float, bool], SimulationResult] = {}
        for delta in config.sweep.deltas():
            certified = certifier.early_accuracy(delta, alpha=settings.alpha)
            # Many δ certify the same threshold: simulate each policy once.
            key = (certified.threshold, certified.exits_early)
            if key not in simulated:
                simulated[key] = simulate(test_trace, certified)
            point = _as_point(simulated[key], certified.threshold)
            points.append(CertifiedPoint(delta, certified, point))
    return points


def _as_point(result: SimulationResult, threshold: float) -> FrontierPoint:
    """A simulation of the guarantee mode as a frontier point labelled `GUARANTEE_ROW`."""
    return FrontierPoint(
        criterion=GUARANTEE_ROW,
        threshold=threshold,
        accuracy=result.accuracy,
        early_accuracy=result.early_accuracy,
        relative_cost=result.relative_cost,
        mean_cost=result.mean_cost,
        exit_histogram=tuple(result.exit_histogram.tolist()),
    )
