"""The steps of the main job, from data to report.

1. Load Fashion-MNIST (train / calibration / test, deterministic).
2. Train every model of the family, or load it from the cache.
3. Trace the calibration and test splits (logits of every exit, measured FLOPs) and save them.
4. Calibrate every model; sweep every criterion over the δ grid on the test split, on the
   natural heads and under the overconfidence stress (logits × 2, × 3); read the criteria
   with a bin table on survivor bins too (`SurvivorPanel`: one `calibrate_survivors` call per
   criterion and panel for the whole grid); certify the guarantee mode for every δ on the
   calibration split and simulate it on the test split; count how many distinct policies
   each knob gives over the grid.
5. Run the batched runtime on the largest model at a few δ and measure wall-clock speed-ups.
6. Record every trade-off in MLflow, write tables and plots, print the report.

With a ``[ray]`` section (`RayConfig`), step 3 and step 4's sweeps and survivor counts run on
Ray (`_trace_on_ray`, `_sweep_on_ray`, `_count_survivors`); everything else, MLflow included,
stays in this process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from adaptix._version import __version__
from adaptix.components import AccuracyReading
from adaptix.core.calibration import Calibration
from adaptix.core.flops import FlopProfile
from adaptix.core.rows import take_rows
from adaptix.core.scores import prediction
from adaptix.core.trace import Trace
from adaptix.distributed import (
    SavedModel,
    ThresholdSpec,
    collect_trace,
    import_ray,
    reduce_statistics,
    trace_dataset,
)
from adaptix.errors import ConfigError
from adaptix.experiment.cache import ModelCache, cache_key
from adaptix.experiment.config import (
    GUARANTEE_ROW,
    JobConfig,
    ModelConfig,
    RayConfig,
    survivor_row,
)
from adaptix.experiment.datasets import DataSource, JobData, Split, check_data, load_job_data
from adaptix.experiment.plots import plot_accuracy_vs_flops, plot_control_panels, plot_reliability
from adaptix.experiment.report import render_report
from adaptix.offline.calibrate import calibrate
from adaptix.offline.control import (
    ControlSummary,
    control_summary,
    distinct_policies,
    oracle_costs,
    oracle_points,
    summarise_control,
)
from adaptix.offline.frontier import Frontier, FrontierPoint
from adaptix.offline.guarantee import CertificateWarning, Certifier
from adaptix.offline.policy import ExitPolicy, policy
from adaptix.offline.simulate import SimulationResult, simulate, sweep
from adaptix.offline.statistics import count_exits, exit_indices
from adaptix.offline.survivors import SurvivorCounts, calibrate_survivors, reads_bin_table
from adaptix.online.allocator import tune_cpu_allocator
from adaptix.online.model import MultiExitModel, build_model, profile_from_trace
from adaptix.online.runtime import EarlyExitRunner, ExitTimes, RunnerOutput, time_exits
from adaptix.online.training import RandomCropFlip, train_exits
from adaptix.plugins import AdaptixPluginManager, get_plugin_manager
from adaptix.tracking import (
    Tracker,
    default_tracking_uri,
    log_certified,
    log_frontier,
    log_survivors,
)
from adaptix.tracking.tracker import import_mlflow

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future


# Dense confidence grid for the hindsight oracle (the cheapest threshold reaching δ).
_ORACLE_GRID = [i / 1000 for i in range(1001)]
#: The hindsight oracle's row of the knob table: the finest knob a rule that picks the
#: cheapest policy meeting δ can have (every δ the first exit meets is one policy).
ORACLE_ROW = "hindsight_oracle"


@dataclass(frozen=True)
class CertifiedPoint:
    """The guarantee mode at one δ: the certified policy and what it realised on the test split.

    Attributes:
        delta: the target δ.
        policy: what `Certifier.early_accuracy` returned for δ (its certificate included).
        point: its simulation on the test split, labelled `GUARANTEE_ROW`.
    """

    delta: float
    policy: ExitPolicy
    point: FrontierPoint

    @property
    def certified(self) -> bool:
        """False when nothing could be certified for δ: every input goes to the last exit."""
        return self.policy.certificate is not None and self.policy.certificate.certified


@dataclass(frozen=True)
class SurvivorPanel:
    """The criteria with a bin table read on survivor bins, on one panel (natural logits or a
    stress), beside the paper's all-input bins (``PCEE.md``: survivor calibration).

    Each criterion whose threshold is the accuracy target itself and whose score is a table of
    its calibration's bins (`adaptix.offline.survivors.reads_bin_table`: pcee, pcee_ws, pcee_lcb) is
    calibrated on the calibration split with the panel's all-input bin edges, exit e counting
    only the inputs that the rule at δ sends on (one `calibrate_survivors` call for the whole
    δ grid), and read at each δ on its own survivor calibration on the test split.

    Attributes:
        counts: criterion -> its survivor counts over the δ grid.
        frontier: one point per (criterion, δ) on the test split, named by the criterion, at
            threshold δ.
        control: criterion -> its control over the grid, against the same oracle as the
            all-input rows.
        knob: criterion -> distinct policies over the grid on the test split.
    """

    counts: dict[str, SurvivorCounts]
    frontier: Frontier
    control: dict[str, ControlSummary]
    knob: dict[str, int]


@dataclass
class ModelOutcome:
    """Everything the job learned about one model."""

    config: ModelConfig
    profile: FlopProfile
    exit_accuracy: list[float]
    calibration: Calibration
    calibration_path: Path
    frontier: Frontier
    stress: dict[float, Frontier]
    control: dict[str, dict[str, ControlSummary]]  # panel -> criterion -> summary
    trained_seconds: float | None
    cached: bool
    test_trace: Trace
    certified: dict[str, list[CertifiedPoint]]  # panel -> the guarantee mode per δ (or none)
    knob: dict[str, int]  # criterion (and the guarantee mode) -> distinct policies over δ
    trace_paths: tuple[Path, ...]  # the saved calibration and test traces
    # panel -> the criteria with a bin table on survivor bins (empty: sweep.survivors off)
    survivors: dict[str, SurvivorPanel] = field(default_factory=dict)

    @property
    def full_accuracy(self) -> float:
        """Accuracy of the last exit (the model at full depth)."""
        return self.exit_accuracy[-1]


@dataclass
class RuntimePoint:
    """A wall-clock measurement of the runner on the test split."""

    model: str
    criterion: str
    threshold: float
    batch_size: int
    inputs: int  # the test inputs timed (the first ones)
    plain_seconds: float
    runner_seconds: float
    ideal_speedup: float
    time_ideal_speedup: float
    accuracy: float
    agrees_with_simulation: bool

    @property
    def realised_speedup(self) -> float:
        """time(plain model) / time(runner)."""
        return self.plain_seconds / self.runner_seconds


@dataclass
class JobResult:
    """What `run_job` produced."""

    config: JobConfig
    models: dict[str, ModelOutcome]
    runtime: list[RuntimePoint]
    exit_times: ExitTimes | None  # per-block times of the runtime's model (None: not run)
    data: str  # the dataset and its split, in words (from what was loaded)
    hardware: str  # the machine, in words
    training_seconds: float  # wall-clock seconds spent training in this run (0: all cached)
    readings: dict[str, AccuracyReading | None]  # criterion -> its declared accuracy reading
    report: str
    output_dir: Path
    seconds: float
    tracking_uri: str | None = None
    tracking_failures: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    source: DataSource | None = None  # what was loaded: name, location, checksum, rows


def _build(
    spec: ModelConfig, num_classes: int, seed: int, manager: AdaptixPluginManager
) -> MultiExitModel:
    """The untrained model of ``spec`` (initial weights seeded by ``seed``)."""
    torch.manual_seed(seed)
    return build_model(
        spec.backbone,
        num_classes,
        head=spec.head,
        backbone_params=spec.backbone_params,
        head_params=spec.head_params,
        plugins=manager,
    )


def _training_threads(config: JobConfig) -> int | None:
    """The torch threads a model trains on: one with worker processes (each worker has one
    core, in this process too, so that a model trains the same wherever it trains), else the
    job's ``threads`` (None: torch's default). Floating-point sums depend on it, so it is part
    of the cache key."""
    return 1 if config.train.workers > 1 else config.threads


def _cache_key(spec: ModelConfig, config: JobConfig, source: DataSource) -> str:
    """Everything that decides a model's trained weights (not how many trained at once): the
    data's checksum too, so that other files behind the same path never reuse a model."""
    data = config.data.model_dump(mode="json", exclude={"test_size"})
    return cache_key(
        model=spec.model_dump(mode="json"),
        train=config.train.model_dump(mode="json", exclude={"workers"}),
        data=data,
        data_sha256=source.sha256,
        threads=_training_threads(config) or torch.get_num_threads(),
        torch=torch.__version__.split("+")[0],
        cache_format=1,
    )


def _train(
    model: MultiExitModel,
    config: JobConfig,
    data: JobData,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> float:
    """Train ``model`` on the training split with the configured recipe; the seconds it took."""
    recipe = config.train
    start = time.perf_counter()
    train_exits(
        model,
        data.train.pair(),
        None,
        mode=recipe.mode,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        schedule=recipe.schedule,
        label_smoothing=recipe.label_smoothing,
        augment=RandomCropFlip(recipe.crop_pad, recipe.flip) if recipe.augment else None,
        loss_weights=recipe.loss_weights,
        distillation=recipe.distillation,
        temperature=recipe.temperature,
        seed=recipe.seed,
        progress=progress,
        on_epoch=on_epoch,
    )
    return time.perf_counter() - start


def _train_in_worker(spec: ModelConfig, config: JobConfig) -> float:
    """A worker process's task: train one model on one thread, save it in the cache; the
    seconds training took. The worker loads the data and builds the plugins itself."""
    torch.set_num_threads(1)
    if config.tune_cpu_allocator:
        tune_cpu_allocator()
    manager = get_plugin_manager()
    data = load_job_data(config.data)
    model = _build(spec, data.num_classes, config.train.seed, manager)
    start = time.perf_counter()

    def report(record: dict[str, Any]) -> None:
        # One line per epoch: bars of two processes would overwrite each other.
        print(
            f"{spec.name}: epoch {record['epoch'] + 1}/{config.train.epochs}, loss "
            f"{record['loss']:.3f}, {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    seconds = _train(model, config, data, progress=False, on_epoch=report)
    ModelCache(config.resolved_cache_dir()).save(
        spec.name, _cache_key(spec, config, data.source), model.state_dict(), {"seconds": seconds}
    )
    return seconds


def _train_missing(
    config: JobConfig, source: DataSource, cache: ModelCache, log: Callable[[str], None]
) -> dict[str, float]:
    """With ``train.workers`` > 1, train the models missing from the cache in that many
    processes at once (each on one thread), largest first, and cache them; the seconds each
    took. With one worker, or one model to train, nothing happens here: `train_or_load`
    trains in this process."""
    if config.train.workers < 2:
        return {}
    # Existence only: reading and verifying every entry here would double the cached job's
    # loading. An entry that turns out corrupt is retrained in this process by train_or_load.
    missing = [
        spec
        for spec in config.models
        if not cache.path(spec.name, _cache_key(spec, config, source)).is_file()
    ]
    workers = min(config.train.workers, len(missing))
    if workers < 2:
        return {}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # The family is listed smallest first: the largest starts first, so that the others fill
    # the remaining workers around it.
    order = list(reversed(missing))
    log(
        f"training {', '.join(s.name for s in order)} in {workers} processes "
        f"({config.train.epochs} epochs, {config.train.mode})"
    )
    seconds: dict[str, float] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(_train_in_worker, spec, config): spec.name for spec in order}
        # The workers print a line per epoch (the progress); a bar here would break them up.
        for future in as_completed(futures):
            name = futures[future]
            seconds[name] = future.result()
            log(f"{name}: trained in {seconds[name]:.0f} s")
    return seconds


def train_or_load(
    spec: ModelConfig,
    config: JobConfig,
    data: JobData,
    cache: ModelCache,
    manager: AdaptixPluginManager,
    log: Callable[[str], None],
    trained_here: dict[str, float],
) -> tuple[MultiExitModel, float | None, bool]:
    """The trained model of ``spec``, its training seconds and whether it came from an earlier
    run's cache (models that worker processes trained in this run, ``trained_here``, count as
    trained)."""
    model = _build(spec, data.num_classes, config.train.seed, manager)
    key = _cache_key(spec, config, data.source)
    cached = cache.load(spec.name, key)
    if cached is not None:
        state, info = cached
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            log(f"cache entry for {spec.name} does not fit the model ({err}); retraining")
        else:
            if spec.name in trained_here:
                return model.eval(), trained_here[spec.name], False
            log(f"{spec.name}: loaded from cache {cache.path(spec.name, key)}")
            return model.eval(), info.get("seconds"), True
    log(f"{spec.name}: training ({config.train.epochs} epochs, {config.train.mode})")
    threads = torch.get_num_threads()
    torch.set_num_threads(_training_threads(config) or threads)
    try:
        seconds = _train(model, config, data, progress=True)
    finally:
        torch.set_num_threads(threads)
    cache.save(spec.name, key, model.state_dict(), {"seconds": seconds})
    return model.eval(), seconds, False


def _sweep_all(
    trace: Trace,
    calibration: Calibration,
    config: JobConfig,
    manager: AdaptixPluginManager,
    readings: dict[str, AccuracyReading | None],
) -> Frontier:
    """Sweep every criterion at the thresholds its accuracy reading gives for the δ grid, or at
    its default thresholds when it has no reading (patience)."""
    deltas = config.sweep.deltas()
    grids = {
        name: list(manager.criteria.get(name).default_thresholds())
        if reading is None
        else sorted({reading.threshold(d) for d in deltas})
        for name, reading in readings.items()
    }
    params = {name: config.sweep.params_of(name) for name in readings}
    if config.ray is None:
        frontier = sweep(trace, params, grids, calibration, plugins=manager)
    else:
        frontier = _sweep_on_ray(trace, grids, params, calibration, config.ray)
    return _one_plain_point_each(frontier, readings)


def _sweep_on_ray(
    trace: Trace,
    grids: dict[str, list[float]],
    params: dict[str, dict[str, Any]],
    calibration: Calibration,
    settings: RayConfig,
) -> Frontier:
    """`adaptix.sweep` of ``trace`` over ``grids`` counted on Ray, shard by shard
    (`adaptix.distributed.reduce_statistics`): the counts add exactly, so the points equal the
    single-process sweep's, bit for bit. The criteria resolve on the workers with their
    default plugin manager (a third-party criterion must be installed there)."""
    labels = trace.labels
    columns = {"logits": trace.logits.cpu().numpy()}
    if labels is not None:
        columns["label"] = labels.cpu().numpy()
    stats = reduce_statistics(
        _ray_rows(columns, settings.batch_size),
        trace.costs.tolist(),
        thresholds=[ThresholdSpec(name, grid, params[name]) for name, grid in grids.items()],
        calibration=calibration,
        batch_size=settings.batch_size,
    )
    points = [point for name in grids for point in stats.counts[name].points()]
    return Frontier(points, trace.costs.tolist())


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


def _oracle(trace: Trace, config: JobConfig, manager: AdaptixPluginManager) -> dict[float, float]:
    """The hindsight oracle's cost at every δ of the grid on ``trace`` (`oracle_costs`)."""
    dense = sweep(trace, "confidence", _ORACLE_GRID, plugins=manager)
    return oracle_costs(list(dense), config.sweep.deltas())


def _control(
    frontier: Frontier,
    oracle: dict[float, float],
    config: JobConfig,
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


def _survivor_panel(
    calib_trace: Trace,
    test_trace: Trace,
    calibration: Calibration,
    confidence: list[FrontierPoint],
    oracle: dict[float, float],
    config: JobConfig,
    manager: AdaptixPluginManager,
    readings: dict[str, AccuracyReading | None],
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
        counted = _count_survivors(calib_trace, deltas, name, calibration, config, manager)
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


def _count_survivors(
    calib_trace: Trace,
    deltas: list[float],
    name: str,
    calibration: Calibration,
    config: JobConfig,
    manager: AdaptixPluginManager,
) -> SurvivorCounts:
    """Criterion ``name``'s survivor counts over the δ grid on ``calibration``'s bins: in this
    process (`calibrate_survivors`), or with ``[ray]`` counted by shard on the cluster
    (`adaptix.distributed.reduce_survivors`: the counts equal the single-process ones exactly;
    the workers resolve the criterion with their default plugin manager)."""
    params = config.sweep.params_of(name)
    if config.ray is None:
        return calibrate_survivors(
            calib_trace,
            deltas,
            name,
            bins=calibration.bins,
            edges=calibration.edges,
            plugins=manager,
            **params,
        )
    from adaptix.distributed import reduce_survivors

    labels = calib_trace.labels
    columns = {"logits": calib_trace.logits.cpu().numpy()}
    if labels is not None:
        columns["label"] = labels.cpu().numpy()
    return reduce_survivors(
        _ray_rows(columns, config.ray.batch_size),
        calib_trace.costs.tolist(),
        deltas,
        name,
        bins=calibration.bins,
        edges=calibration.edges,
        params=params,
        batch_size=config.ray.batch_size,
    )


def _certify(
    calib_trace: Trace, test_trace: Trace, config: JobConfig, manager: AdaptixPluginManager
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


def _knob(
    test_trace: Trace,
    calibration: Calibration,
    config: JobConfig,
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
    dense = sweep(test_trace, "confidence", _ORACLE_GRID, plugins=manager)
    confidence = policy("confidence", 0.5, plugins=manager)
    nothing_early = torch.full(
        (test_trace.num_inputs,), test_trace.num_exits - 1, device=test_trace.logits.device
    )
    exits = [
        nothing_early
        if point is None
        else exit_indices(test_trace, confidence, [point.threshold])[:, 0]
        for point in oracle_points(list(dense), deltas).values()
    ]
    counts[ORACLE_ROW] = distinct_policies(torch.stack(exits, dim=1))
    return counts


def _time_pair(
    reference: Callable[[], Any], fn: Callable[[], Any], repeats: int, warm: bool = True
) -> tuple[float, float]:
    """Median wall-clock seconds of ``reference`` and ``fn`` over ``repeats`` rounds (after one
    warm-up of each unless ``warm`` is False); every round times both back to back, so that the
    load of a shared machine weighs on both alike."""
    if warm:
        reference()
        fn()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for target, samples_of in ((reference, samples[0]), (fn, samples[1])):
            start = time.perf_counter()
            target()
            samples_of.append(time.perf_counter() - start)
    return statistics.median(samples[0]), statistics.median(samples[1])


def _measure_runtime(
    outcome: ModelOutcome,
    model: MultiExitModel,
    test: Split,
    config: JobConfig,
    manager: AdaptixPluginManager,
) -> tuple[list[RuntimePoint], ExitTimes]:
    """The runner against the plain model on the test split at each δ of ``runtime``, with the
    FLOP-based and the time-based ideal speed-ups (per-block times at the same batch size)."""
    count = min(len(test), config.runtime.inputs or len(test))
    timed = Split(take_rows(test.inputs, slice(0, count)), test.labels[:count])
    trace = outcome.test_trace.subset(slice(0, count))
    batches = timed.batches(config.runtime.batch_size)
    times = time_exits(model, batches, repeats=config.runtime.repeats)

    def plain() -> None:
        with torch.inference_mode():
            for x in batches:
                model.forward_plain(x)

    points = []
    for threshold in tqdm(config.runtime.thresholds, desc="runtime", unit="δ"):
        pol = policy(
            config.runtime.criterion,
            threshold,
            outcome.calibration,
            plugins=manager,
            **config.sweep.params_of(config.runtime.criterion),
        )
        runner = EarlyExitRunner(model, pol)
        outputs: list[RunnerOutput] = []

        def run_all(run: EarlyExitRunner = runner, kept: list[RunnerOutput] = outputs) -> None:
            kept.clear()  # the last timed pass's outputs are the ones checked below
            kept.extend(run(x) for x in batches)

        # time_exits warmed the model up; each δ's runner still gets one untimed pass.
        run_all()
        plain_seconds, runner_seconds = _time_pair(
            plain, run_all, config.runtime.repeats, warm=False
        )
        exits = torch.cat([out.exit_index for out in outputs])
        simulated = simulate(trace, pol)
        points.append(
            RuntimePoint(
                model=outcome.config.name,
                criterion=config.runtime.criterion,
                threshold=pol.threshold,
                batch_size=config.runtime.batch_size,
                inputs=count,
                plain_seconds=plain_seconds,
                runner_seconds=runner_seconds,
                ideal_speedup=outcome.profile.plain_cost / simulated.mean_cost,
                time_ideal_speedup=times.ideal_speedup(simulated.exit_histogram),
                accuracy=simulated.accuracy or 0.0,
                agrees_with_simulation=bool(torch.equal(exits, simulated.exit_index)),
            )
        )
    return points, times


def run_job(
    config: JobConfig | None = None,
    *,
    log: Callable[[str], None] = print,
) -> JobResult:
    """Run the main job (see the module docstring) and return its results.

    With ``train.workers`` > 1 (the default) models missing from the cache train in worker
    processes started with ``spawn``: a script that calls this must guard its entry point with
    ``if __name__ == "__main__":`` (as every multiprocessing program must), or set
    ``train.workers = 1``.
    """
    config = config or JobConfig()
    if config.tune_cpu_allocator:
        tune_cpu_allocator()
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, log)
    finally:
        torch.set_num_threads(threads)


def _run(config: JobConfig, log: Callable[[str], None]) -> JobResult:
    started = time.perf_counter()
    check_data(config.data)  # sizes the data cannot hold fail here, before anything loads
    out = config.output_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"expected output_dir to be a writable directory, got {str(out)!r} ({err}). "
            "Choose another output_dir."
        ) from err
    if config.ray is not None:  # fail before training, not after it
        import_ray()
    manager = get_plugin_manager()
    # What each criterion's threshold means, read once from its declaration.
    readings = {name: manager.criteria.get(name).accuracy_reading for name in config.sweep.criteria}
    log(f"adaptix {__version__}: job '{config.name}' → {out.resolve()}")
    data = _load_data(config, log)
    cache = ModelCache(config.resolved_cache_dir())
    training_started = time.perf_counter()
    trained_here = _train_missing(config, data.source, cache, log)
    training_wall = time.perf_counter() - training_started
    tracking = _open_tracking(config, data, manager) if config.tracking.enabled else None
    try:
        with _ray_session(config.ray):
            result = _analyse_family(
                config, data, cache, manager, readings, trained_here, tracking, log
            )
        result.training_seconds += training_wall
        _write_family_plot(result)
        if tracking is not None:
            tracking.log_family(result)
    except BaseException:
        if tracking is not None:
            tracking.abandon()
        raise
    result.seconds = time.perf_counter() - started
    report_path = _write_report(result)
    if tracking is not None:
        tracking.finish(result, report_path)
    log(result.report)
    return result


def _analyse_family(
    config: JobConfig,
    data: JobData,
    cache: ModelCache,
    manager: AdaptixPluginManager,
    readings: dict[str, AccuracyReading | None],
    trained_here: dict[str, float],
    tracking: _Tracking | None,
    log: Callable[[str], None],
) -> JobResult:
    """Train (what is still missing) or load every model, trace, analyse and plot it, and
    hand its MLflow run to the logging worker.

    The runtime's model goes first and is timed before any logging starts (a busy worker
    would share the cores with the clock); the other models are traced and analysed while the
    worker logs the ones before them. Tracing uses every core while no logging runs, the
    job's ``threads`` otherwise.
    """
    measured = (config.runtime.model or config.models[-1].name) if config.runtime.enabled else None
    order = sorted(config.models, key=lambda spec: spec.name != measured)
    training_seconds = 0.0
    analysed: dict[str, ModelOutcome] = {}
    runtime: list[RuntimePoint] = []
    exit_times = None
    for spec in order:
        model, seconds, cached = train_or_load(
            spec, config, data, cache, manager, log, trained_here
        )
        if not cached and spec.name not in trained_here:
            training_seconds += seconds or 0.0
        if config.ray is None:
            idle = tracking is None or not tracking.pending
            traces = _trace_splits(model, data, spec.name, every_core=idle)
        else:
            traces = _trace_on_ray(model, spec, data, config, config.ray)
        outcome = _analyse(spec, *traces, config, manager, readings)
        outcome = dataclasses.replace(outcome, trained_seconds=seconds, cached=cached)
        analysed[spec.name] = outcome
        if spec.name == measured:
            if tracking is not None:
                tracking.wait()
            runtime, exit_times = _measure_runtime(outcome, model, data.test, config, manager)
        if tracking is None:
            _write_model_plots(spec.name, outcome, config.output_dir)
        else:  # its plots too, in the worker
            tracking.submit(spec.name, outcome, runtime if spec.name == measured else [])
    outcomes = {spec.name: analysed[spec.name] for spec in config.models}  # the family's order
    return JobResult(
        config=config,
        models=outcomes,
        runtime=runtime,
        exit_times=exit_times,
        data=data.description,
        source=data.source,
        hardware=_hardware(),
        training_seconds=training_seconds,
        readings=readings,
        report="",
        output_dir=config.output_dir,
        seconds=0.0,
    )


def _hardware() -> str:
    """The CPU (or GPU), its cores and torch's threads, in words."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} on "
        f"{torch.get_num_threads()} thread(s)"
    )


def _load_data(config: JobConfig, log: Callable[[str], None]) -> JobData:
    data = load_job_data(config.data)
    log(
        f"data: {data.dataset}, train {len(data.train)}, calibration {len(data.calibration)}, "
        f"test {len(data.test)}"
    )
    return data


def _trace_splits(
    model: MultiExitModel, data: JobData, name: str, every_core: bool = False
) -> tuple[Trace, Trace]:
    """The calibration and test traces: every exit's logits, and the measured FLOPs (on one
    batch: every input of a split has the same shape). On every core when ``every_core``
    (measured: the large CNN traced 10,000 images in 8 s on two threads, 15 s on one), on the
    job's ``threads`` otherwise."""
    threads = torch.get_num_threads()
    if every_core:
        torch.set_num_threads(os.cpu_count() or threads)
    try:
        return _trace_both(model, data, name)
    finally:
        torch.set_num_threads(threads)


def _trace_both(model: MultiExitModel, data: JobData, name: str) -> tuple[Trace, Trace]:
    calibration, test = (
        model.trace(
            split.inputs,
            split.labels,
            data.batch_size,
            flop_batches=1,  # every input of a split has one shape: one batch counts them all
            progress=True,
            meta={"model": name, "split": split_name},
        )
        for split_name, split in (("calibration", data.calibration), ("test", data.test))
    )
    return calibration, test


def _trace_on_ray(
    model: MultiExitModel, spec: ModelConfig, data: JobData, config: JobConfig, settings: RayConfig
) -> tuple[Trace, Trace]:
    """The calibration and test traces, traced on Ray's actor pool
    (`adaptix.distributed.trace_dataset`) from the model's weights saved in the output
    directory, and collected here; the FLOPs are counted here, on the first batch, as
    `_trace_both` counts them.

    Raises:
        ConfigError: inputs that are not one tensor (a tokenizer's dict of tensors).
    """
    weights = (config.output_dir / "ray" / f"model-{spec.name}.pt").resolve()
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    factory = SavedModel(
        str(weights),
        spec.backbone,
        data.num_classes,
        head=spec.head,
        backbone_params=spec.backbone_params,
        head_params=spec.head_params,
    )
    traces = []
    for split_name, split in (("calibration", data.calibration), ("test", data.test)):
        if not isinstance(split.inputs, torch.Tensor):
            raise ConfigError(
                f"expected the {split_name} inputs of {data.dataset} to be one tensor to trace "
                f"on Ray, got {type(split.inputs).__name__}: remove the ray section to trace "
                "text datasets in this process."
            )
        first = take_rows(split.inputs, slice(0, data.batch_size))
        counted = model.trace(first, None, data.batch_size, flop_batches=1)
        logits = trace_dataset(
            _ray_rows(
                {"inputs": split.inputs.cpu().numpy(), "label": split.labels.numpy()},
                settings.batch_size,
            ),
            factory,
            batch_size=settings.batch_size,
            workers=settings.workers,
        )
        meta = {**counted.meta, "model": spec.name, "split": split_name}
        traces.append(collect_trace(logits, counted.costs.tolist(), meta))
    calibration, test = traces
    return calibration, test


def _ray_rows(columns: dict[str, np.ndarray], rows_per_block: int) -> Any:
    """A Ray Dataset of one row per index of ``columns`` (arrays of equal length; the rows of
    a multi-dimensional array become tensor cells), backed by the arrays, in blocks of
    ``rows_per_block`` rows (one block would keep every actor but one idle)."""
    import pandas as pd  # Ray Data depends on pandas

    rows = len(next(iter(columns.values())))
    blocks = [
        pd.DataFrame(
            {
                name: list(a[start : start + rows_per_block])
                if a.ndim > 1
                else a[start : start + rows_per_block]
                for name, a in columns.items()
            }
        )
        for start in range(0, rows, rows_per_block)
    ]
    return import_ray().data.from_pandas(blocks)


@contextmanager
def _ray_session(settings: RayConfig | None) -> Iterator[None]:
    """Ray for the job's tracing and sweeps (nothing without ``settings``): started or joined
    once for the job, and shut down at the end only when the job started it. Ray Data keeps
    the rows' order meanwhile, so that the collected traces line up with the splits.

    Raises:
        ConfigError: no Ray cluster could be joined at ``settings.address``.
    """
    if settings is None:
        yield
        return
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            if settings.address == "local":
                ray.init(num_cpus=settings.workers, include_dashboard=False)
            else:
                ray.init(address=settings.address)
        except (ConnectionError, RuntimeError, ValueError) as err:  # ValueError: no ray[client]
            raise ConfigError(
                f"expected a Ray cluster at ray.address {settings.address!r}, but Ray could not "
                f"join it ({err}). Start one (ray start --head), fix the address, or set "
                'address = "local".'
            ) from err
    options = ray.data.DataContext.get_current().execution_options
    kept = options.preserve_order
    options.preserve_order = True
    try:
        yield
    finally:
        options.preserve_order = kept
        if started:
            ray.shutdown()


def _analyse(
    spec: ModelConfig,
    calib_trace: Trace,
    test_trace: Trace,
    config: JobConfig,
    manager: AdaptixPluginManager,
    readings: dict[str, AccuracyReading | None],
) -> ModelOutcome:
    """Save the traces and calibrate; sweep every criterion of ``readings``, read those with
    a bin table on survivor bins (``sweep.survivors``) and certify the guarantee mode, on the
    test logits as they are and under each overconfidence stress; write the calibration and
    the frontiers; count the knob's distinct policies."""
    out = config.output_dir
    trace_paths = tuple(
        trace.save(out / f"trace-{spec.name}-{split}.pt")
        for split, trace in (("calibration", calib_trace), ("test", test_trace))
    )
    calibration = calibrate(
        calib_trace, config.sweep.calibrator, config.sweep.bins, plugins=manager
    )
    calibration_path = calibration.save(out / f"calibration-{spec.name}.json")
    frontier = _sweep_all(test_trace, calibration, config, manager, readings)
    frontier.to_csv(out / f"frontier-{spec.name}.csv")
    panels = {"natural": ("", calib_trace, test_trace, calibration, frontier)}
    stress: dict[float, Frontier] = {}
    for scale in config.sweep.stress_scales:
        stressed_calib, stressed_test = calib_trace.scaled(scale), test_trace.scaled(scale)
        stressed_cal = calibrate(
            stressed_calib, config.sweep.calibrator, config.sweep.bins, plugins=manager
        )
        stress[scale] = _sweep_all(stressed_test, stressed_cal, config, manager, readings)
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
            certified[panel] = _certify(calib, test, config, manager)
        oracle = _oracle(test, config, manager)
        control[panel] = _control(
            swept, oracle, config, manager, readings, certified.get(panel, [])
        )
        if config.sweep.survivors:
            survivors[panel] = _survivor_panel(
                calib, test, cal, swept.of("confidence"), oracle, config, manager, readings
            )
            survivors[panel].frontier.to_csv(out / f"frontier-{spec.name}{suffix}-survivors.csv")
    knob = _knob(test_trace, calibration, config, manager, readings, certified.get("natural", []))
    return ModelOutcome(
        config=spec,
        profile=profile_from_trace(test_trace),
        exit_accuracy=_exit_accuracy(test_trace),
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


def _exit_accuracy(trace: Trace) -> list[float]:
    """Accuracy of every exit on a labelled trace."""
    correct = prediction(trace.logits) == trace.labels.unsqueeze(1)  # type: ignore[union-attr]  # traced with labels
    return correct.double().mean(0).tolist()


def _write_report(result: JobResult) -> Path:
    """Render the report once, keep it in ``result.report`` and write ``report.md``."""
    result.report = render_report(result)
    path = result.output_dir / "report.md"
    path.write_text(result.report)
    return path


def _write_model_plots(name: str, outcome: ModelOutcome, out: Path) -> None:
    """One model's control and reliability plots (written as soon as it is analysed, so that
    its MLflow run can carry them)."""
    panels: dict[str, dict[str, list[tuple[float, float | None]]]] = {}
    for panel, summaries in outcome.control.items():
        rows = {**summaries}
        if panel in outcome.survivors:
            rows.update(
                {
                    survivor_row(criterion): summary
                    for criterion, summary in outcome.survivors[panel].control.items()
                }
            )
        panels[panel] = {
            row: [(d, v[0]) for d, v in summary.per_delta.items()] for row, summary in rows.items()
        }
    plot_control_panels(
        panels,
        out / f"control-{name}.png",
        title=f"{name}: realised early accuracy against the target δ (test split)",
    )
    plot_reliability(
        outcome.calibration,
        out / f"reliability-{name}.png",
        title=f"{name}: reliability per exit (calibration split)",
    )


def _write_family_plot(result: JobResult) -> None:
    """Accuracy against FLOPs: every model, its truncations and the largest one's frontiers."""
    out = result.output_dir
    largest = list(result.models)[-1]
    big = result.models[largest]
    frontiers = {}
    for criterion in big.frontier.criteria():
        points = sorted(
            (p.mean_cost, p.accuracy) for p in big.frontier.of(criterion) if p.accuracy is not None
        )
        frontiers[f"{largest} + {criterion}"] = points
    truncated = {
        name: list(zip(o.profile.static_costs(), o.exit_accuracy, strict=True))
        for name, o in result.models.items()
    }
    plot_accuracy_vs_flops(
        out / "accuracy-vs-flops.png",
        models={n: (o.profile.plain_cost, o.full_accuracy) for n, o in result.models.items()},
        truncated={f"{n} truncated at exit e": pts for n, pts in truncated.items()},
        frontiers=frontiers,
        title="Accuracy against compute per input (test split)",
    )


def _open_tracking(config: JobConfig, data: JobData, manager: AdaptixPluginManager) -> _Tracking:
    """Open the job's MLflow session: its parent run, which stays open until the report is
    logged (`_Tracking.finish`). Model runs are logged in a background thread
    (`_Tracking.submit`) while the job goes on with the next model."""
    from concurrent.futures import ProcessPoolExecutor

    uri = config.tracking.uri or default_tracking_uri()
    tracker = Tracker(
        experiment=config.tracking.experiment,
        tracking_uri=uri,
        artifact_location=str((config.output_dir / "mlartifacts").resolve()),
    )
    # Every run of the job (parent, models, frontier points, certified policies) carries these:
    # the splits' sizes and the provenance of what was loaded.
    splits = {
        "train_size": len(data.train),
        "calibration_size": len(data.calibration),
        "test_size": len(data.test),
        "seed": config.seed,
        **data.source.params(),
    }
    parent = tracker.start_run(
        config.name,
        params={"config": config.model_dump_json(), **splits},
        tags={"adaptix.version": __version__},
    )
    _log_datasets(tracker, parent, splits)
    import multiprocessing

    # One process logs the model runs (and draws their plots): MLflow's and matplotlib's
    # Python work then runs on the other core instead of taking turns for the GIL with the
    # job's torch work.
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    pool.submit(_start_worker)  # starts the process and its imports while the job loads
    return _Tracking(tracker, parent, splits, manager, config.output_dir, uri, pool, config)


def _log_datasets(tracker: Tracker, run: str | None, splits: dict[str, Any]) -> None:
    """The splits a run read, as MLflow dataset inputs (`Tracker.log_dataset`), from the
    provenance params in ``splits`` (`DataSource.params`; none there: nothing to record)."""
    if "data.sha256" not in splits:
        return
    for split in ("train", "calibration", "test"):
        tracker.log_dataset(
            run,
            name=f"{splits['data.source']} / {split} ({splits[f'data.{split}_rows']} rows)",
            location=splits["data.location"],
            digest=splits["data.sha256"],
            context=split,
        )


@dataclass
class _Tracking:
    """The job's MLflow session: the parent run, what every model's runs share, and the one
    worker process that logs the model runs while the job goes on (`submit`)."""

    tracker: Tracker
    parent: str | None
    splits: dict[str, Any]
    manager: AdaptixPluginManager
    output_dir: Path
    uri: str
    pool: Executor | None = None
    config: JobConfig | None = None
    pending: list[Future[list[str]]] = field(default_factory=list)
    worker_failures: list[str] = field(default_factory=list)

    def submit(self, name: str, outcome: ModelOutcome, runtime: list[RuntimePoint]) -> None:
        """Draw a model's plots and log its run (`log_model`) in the worker process."""
        if self.pool is None or self.config is None:  # a worker's own session never submits
            raise RuntimeError("this tracking session has no logging worker")
        self.pending.append(
            self.pool.submit(
                _log_in_worker, self.config, self.parent, self.splits, name, outcome, runtime
            )
        )

    def wait(self) -> None:
        """Block until every submitted model is logged (before timing anything: the worker
        would share the cores with the clock), collecting what could not be logged."""
        pending, self.pending = self.pending, []
        for future in pending:
            self.worker_failures += future.result()

    def log_family(self, result: JobResult) -> None:
        """Wait for the model runs, then log the family plot and the CSVs to the parent."""
        self.wait()
        result.tracking_uri, result.parent_run_id = self.uri, self.parent
        for path in [
            result.output_dir / "accuracy-vs-flops.png",
            *sorted(result.output_dir.glob("*.csv")),
        ]:
            if path.exists():
                self.tracker.log_artifact(self.parent, path)
        result.tracking_failures = [*self.worker_failures, *self.tracker.failures]

    def abandon(self) -> None:
        """The job failed: stop the worker and end the parent run as FAILED."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.tracker.end_run(self.parent, "FAILED")

    def log_model(self, name: str, outcome: ModelOutcome, runtime: list[RuntimePoint]) -> None:
        """One model's run: its params, per-exit, control and knob metrics, its frontier points
        (with the speed-ups measured in ``runtime``), the guarantee mode's certified policies and
        the survivor-bin points of the natural panel, and its plots."""
        tracker = self.tracker
        run = tracker.start_run(
            name,
            parent=self.parent,
            params={
                "backbone": outcome.config.backbone,
                "backbone_params": json.dumps(outcome.config.backbone_params),
                "head": outcome.config.head,
                "calibration_checksum": outcome.calibration.checksum,
                **self.splits,
            },
        )
        _log_datasets(tracker, run, self.splits)
        metrics = {f"exit_accuracy_{e}": a for e, a in enumerate(outcome.exit_accuracy)}
        metrics.update({f"exit_flops_{e}": c for e, c in enumerate(outcome.profile.exit_costs)})
        metrics["plain_flops"] = outcome.profile.plain_cost
        for panel, summaries in outcome.control.items():
            tag = panel.replace("logits ×", "x").replace(" ", "_")
            for criterion, s in summaries.items():
                metrics[f"{tag}.{criterion}.violation_rate"] = s.violation_rate
                metrics[f"{tag}.{criterion}.worst_shortfall"] = s.worst_shortfall
                metrics[f"{tag}.{criterion}.mean_regret"] = s.mean_regret
        for panel, points in outcome.certified.items():
            tag = panel.replace("logits ×", "x").replace(" ", "_")
            metrics[f"{tag}.{GUARANTEE_ROW}.uncertified"] = sum(not c.certified for c in points)
        for panel, survivors in outcome.survivors.items():
            tag = panel.replace("logits ×", "x").replace(" ", "_")
            for criterion, s in survivors.control.items():
                metrics[f"{tag}.{criterion}.survivors.violation_rate"] = s.violation_rate
                metrics[f"{tag}.{criterion}.survivors.worst_shortfall"] = s.worst_shortfall
                metrics[f"{tag}.{criterion}.survivors.mean_regret"] = s.mean_regret
        for criterion, count in outcome.knob.items():
            metrics[f"knob.{criterion}.distinct_policies"] = count
        natural_survivors = outcome.survivors.get("natural")
        if natural_survivors is not None:
            for criterion, count in natural_survivors.knob.items():
                metrics[f"knob.{criterion}.survivors.distinct_policies"] = count
        tracker.log_metrics(run, metrics)
        speedups: dict[tuple[str, float], dict[str, float | None]] = {
            (p.criterion, p.threshold): {
                "speedup_measured": p.realised_speedup,
                "speedup_ideal": p.ideal_speedup,
            }
            for p in runtime
        }
        log_frontier(
            outcome.frontier,
            tracker=tracker,
            parent=run,
            model=name,
            params=self.splits,
            calibration=outcome.calibration,
            extra_metrics=speedups,
            criterion_params=None
            if self.config is None
            else {c: self.config.sweep.params_of(c) for c in outcome.frontier.criteria()},
            plugins=self.manager,
        )
        natural = outcome.certified.get("natural", [])
        log_certified(
            [c.policy for c in natural],
            [c.point for c in natural],
            tracker=tracker,
            parent=run,
            model=name,
            params=self.splits,
        )
        if natural_survivors is not None:
            survivor_points = list(natural_survivors.frontier)
            log_survivors(
                [
                    natural_survivors.counts[p.criterion].policy(p.threshold, plugins=self.manager)
                    for p in survivor_points
                ],
                survivor_points,
                tracker=tracker,
                parent=run,
                model=name,
                # The bins' provenance: the all-input calibration whose edges they keep.
                params={**self.splits, "edges_checksum": outcome.calibration.checksum},
                plugins=self.manager,
            )
        for path in sorted(self.output_dir.glob(f"*-{name}.png")):
            tracker.log_artifact(run, path, "plots")
        tracker.end_run(run)

    def finish(self, result: JobResult, report_path: Path) -> None:
        """Log the report to the parent run and close it; a failure here reaches
        ``result.tracking_failures`` and a warning, not the report already written."""
        self.tracker.log_artifact(self.parent, report_path)
        self.tracker.end_run(self.parent)
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        result.tracking_failures = [*self.worker_failures, *self.tracker.failures]


def _start_worker() -> None:
    """The logging worker's first task: import what logging and plotting need."""
    import matplotlib  # noqa: F401

    import_mlflow()


#: The logging worker's own session (one per worker process, built by its first task).
_WORKER_SESSION: _Tracking | None = None


def _log_in_worker(
    config: JobConfig,
    parent: str | None,
    splits: dict[str, Any],
    name: str,
    outcome: ModelOutcome,
    runtime: list[RuntimePoint],
) -> list[str]:
    """The logging worker's task: draw a model's plots and log its run under ``parent``; what
    could not be logged, as the tracker words it."""
    global _WORKER_SESSION
    torch.set_num_threads(1)
    if _WORKER_SESSION is None:
        uri = config.tracking.uri or default_tracking_uri()
        tracker = Tracker(
            experiment=config.tracking.experiment,
            tracking_uri=uri,
            artifact_location=str((config.output_dir / "mlartifacts").resolve()),
        )
        _WORKER_SESSION = _Tracking(
            tracker, parent, splits, get_plugin_manager(), config.output_dir, uri, config=config
        )
    session = _WORKER_SESSION
    before = len(session.tracker.failures)
    _write_model_plots(name, outcome, config.output_dir)
    session.log_model(name, outcome, runtime)
    return session.tracker.failures[before:]
