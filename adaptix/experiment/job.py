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
Ray (`trace_on_ray`, `OnRay`: here, since they import `adaptix.distributed`); everything else,
MLflow included, stays in this process.

Each step is a module of its own: `adaptix.experiment.training` (2), `adaptix.experiment.tracing`
(3), `adaptix.experiment.analysis` and `adaptix.experiment.sweeps` (4),
`adaptix.experiment.figures`, `adaptix.experiment.mlflow_session` and
`adaptix.experiment.model_run` (6); the results are `adaptix.experiment.results`'s types. This
module runs them in order (`run_job`), and holds what imports `adaptix.distributed` or
`adaptix.online.runtime` (Ray, and step 5, `measure_runtime`, timed with
`adaptix.online.paired` as `adaptix.testing.speed` times): a step module importing them would
push the job past the import floors `tests/test_structure.py` allows.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from adaptix._version import __version__
from adaptix.components import AccuracyReading
from adaptix.core.cache import ModelCache
from adaptix.core.calibration import Calibration
from adaptix.core.rows import take_rows
from adaptix.core.trace import Trace
from adaptix.distributed import (
    SavedModel,
    ThresholdSpec,
    collect_trace,
    import_ray,
    reduce_statistics,
    reduce_survivors,
    trace_dataset,
)
from adaptix.errors import ConfigError
from adaptix.experiment.analysis import analyse
from adaptix.experiment.config import (
    JobConfig,
    ModelConfig,
    RayConfig,
)
from adaptix.experiment.datasets import JobData, Split, check_data, load_job_data
from adaptix.experiment.figures import write_family_plot, write_model_plots
from adaptix.experiment.mlflow_session import JobTracking, open_tracking
from adaptix.experiment.report import render_report
from adaptix.experiment.results import JobResult, ModelOutcome, RuntimePoint
from adaptix.experiment.tracing import trace_splits
from adaptix.experiment.training import train_missing, train_or_load
from adaptix.offline.frontier import Frontier
from adaptix.offline.policy import policy
from adaptix.offline.simulate import simulate
from adaptix.offline.survivors import SurvivorCounts
from adaptix.online.allocator import tune_cpu_allocator
from adaptix.online.model import MultiExitModel
from adaptix.online.paired import auto_passes, time_paired
from adaptix.online.runtime import EarlyExitRunner, ExitTimes, RunnerOutput, time_exits
from adaptix.plugins import AdaptixPluginManager, get_plugin_manager

__all__ = ["JobResult", "run_job", "train_or_load"]


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
    trained_here = train_missing(config, data.source, cache, log)
    training_wall = time.perf_counter() - training_started
    tracking = open_tracking(config, data) if config.tracking.enabled else None
    try:
        with ray_session(config.ray):
            result = _analyse_family(
                config, data, cache, manager, readings, trained_here, tracking, log
            )
        result.training_seconds += training_wall
        write_family_plot(result)
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
    tracking: JobTracking | None,
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
            traces = trace_splits(model, data, spec.name, every_core=idle)
        else:
            traces = trace_on_ray(model, spec, data, config, config.ray)
        on_ray = None if config.ray is None else OnRay(config.ray)
        outcome = analyse(spec, *traces, config, manager, readings, on_ray)
        outcome = dataclasses.replace(outcome, trained_seconds=seconds, cached=cached)
        analysed[spec.name] = outcome
        if spec.name == measured:
            if tracking is not None:
                tracking.wait()
            runtime, exit_times = measure_runtime(outcome, model, data.test, config, manager)
        if tracking is None:
            write_model_plots(spec.name, outcome, config.output_dir)
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


def _write_report(result: JobResult) -> Path:
    """Render the report once, keep it in ``result.report`` and write ``report.md``."""
    result.report = render_report(result)
    path = result.output_dir / "report.md"
    path.write_text(result.report)
    return path


def measure_runtime(
    outcome: ModelOutcome,
    model: MultiExitModel,
    test: Split,
    config: JobConfig,
    manager: AdaptixPluginManager,
) -> tuple[list[RuntimePoint], ExitTimes]:
    """The runner against the plain model on the test split at each δ of ``runtime``, with the
    FLOP-based and the time-based ideal speed-ups (per-block times at the same batch size).

    Each δ's runner is timed in paired rounds (`adaptix.online.paired.time_paired`, as
    `adaptix.testing.speed.ExitBenchmark` times it), after one untimed pass whose exits are
    checked against `simulate` exactly (``agrees_with_simulation``)."""
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

        def run_all(run: EarlyExitRunner = runner) -> list[RunnerOutput]:
            with torch.inference_mode():
                return [run(x) for x in batches]

        # The check, apart from the timing: one untimed pass (time_exits warmed the model up).
        exits = torch.cat([out.exit_index for out in run_all()])
        simulated = simulate(trace, pol)
        paired = time_paired(
            plain,
            run_all,
            rounds=config.runtime.repeats,
            warmup_rounds=0,
            passes=auto_passes(plain, run_all),
        )
        assert paired.baseline_seconds is not None
        assert paired.runner_seconds is not None
        assert paired.realised_speedup is not None  # timed: ``rounds`` >= 1
        points.append(
            RuntimePoint(
                model=outcome.config.name,
                criterion=config.runtime.criterion,
                threshold=pol.threshold,
                batch_size=config.runtime.batch_size,
                inputs=count,
                plain_seconds=paired.baseline_seconds,
                runner_seconds=paired.runner_seconds,
                realised_speedup=paired.realised_speedup,
                passes=paired.passes,
                ideal_speedup=outcome.profile.plain_cost / simulated.mean_cost,
                time_ideal_speedup=times.ideal_speedup(simulated.exit_histogram),
                accuracy=simulated.accuracy or 0.0,
                agrees_with_simulation=bool(torch.equal(exits, simulated.exit_index)),
            )
        )
    return points, times


def trace_on_ray(
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
            ray_rows(
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


def sweep_on_ray(
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
        ray_rows(columns, settings.batch_size),
        trace.costs.tolist(),
        thresholds=[ThresholdSpec(name, grid, params[name]) for name, grid in grids.items()],
        calibration=calibration,
        batch_size=settings.batch_size,
    )
    points = [point for name in grids for point in stats.counts[name].points()]
    return Frontier(points, trace.costs.tolist())


def ray_rows(columns: dict[str, np.ndarray], rows_per_block: int) -> Any:
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
def ray_session(settings: RayConfig | None) -> Iterator[None]:
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


@dataclass(frozen=True)
class OnRay:
    """`RayCounting` on the job's Ray session (`ray_session`): the sweeps and survivor counts
    counted by shard on the cluster (`adaptix.distributed`), equal to the single-process ones."""

    settings: RayConfig

    def sweep(
        self,
        trace: Trace,
        grids: dict[str, list[float]],
        params: dict[str, dict[str, Any]],
        calibration: Calibration,
    ) -> Frontier:
        return sweep_on_ray(trace, grids, params, calibration, self.settings)

    def survivors(
        self,
        calib_trace: Trace,
        deltas: list[float],
        name: str,
        calibration: Calibration,
        params: dict[str, Any],
    ) -> SurvivorCounts:
        """`adaptix.distributed.reduce_survivors` of criterion ``name`` (the workers resolve it
        with their default plugin manager)."""
        labels = calib_trace.labels
        columns = {"logits": calib_trace.logits.cpu().numpy()}
        if labels is not None:
            columns["label"] = labels.cpu().numpy()
        return reduce_survivors(
            ray_rows(columns, self.settings.batch_size),
            calib_trace.costs.tolist(),
            deltas,
            name,
            bins=calibration.bins,
            edges=calibration.edges,
            params=params,
            batch_size=self.settings.batch_size,
        )
