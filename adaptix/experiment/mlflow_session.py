"""The job's MLflow session (step 6)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adaptix._version import __version__
from adaptix.experiment.config import GUARANTEE_ROW, JobConfig
from adaptix.experiment.datasets import JobData
from adaptix.experiment.figures import write_model_plots
from adaptix.experiment.results import JobResult, ModelOutcome, RuntimePoint
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


def open_tracking(config: JobConfig, data: JobData, manager: AdaptixPluginManager) -> Tracking:
    """Open the job's MLflow session: its parent run, which stays open until the report is
    logged (`Tracking.finish`). Model runs are logged in a background thread
    (`Tracking.submit`) while the job goes on with the next model."""
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
    log_datasets(tracker, parent, splits)
    import multiprocessing

    # One process logs the model runs (and draws their plots): MLflow's and matplotlib's
    # Python work then runs on the other core instead of taking turns for the GIL with the
    # job's torch work.
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    pool.submit(_start_worker)  # starts the process and its imports while the job loads
    return Tracking(tracker, parent, splits, manager, config.output_dir, uri, pool, config)


def log_datasets(tracker: Tracker, run: str | None, splits: dict[str, Any]) -> None:
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
class Tracking:
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
        log_datasets(tracker, run, self.splits)
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
_WORKER_SESSION: Tracking | None = None


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
        _WORKER_SESSION = Tracking(
            tracker, parent, splits, get_plugin_manager(), config.output_dir, uri, config=config
        )
    session = _WORKER_SESSION
    before = len(session.tracker.failures)
    write_model_plots(name, outcome, config.output_dir)
    session.log_model(name, outcome, runtime)
    return session.tracker.failures[before:]
