"""The job's MLflow session (step 6): the parent run, opened in the job's process
(`JobTracking`), and the one worker process that logs every model's run there
(`adaptix.experiment.model_run.ModelRunLogger`) while the job goes on with the next model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adaptix._version import __version__
from adaptix.experiment.config import JobConfig
from adaptix.experiment.datasets import JobData
from adaptix.experiment.figures import write_model_plots
from adaptix.experiment.model_run import ModelRunLogger, log_datasets
from adaptix.experiment.results import JobResult, ModelOutcome, RuntimePoint
from adaptix.plugins import get_plugin_manager
from adaptix.tracking import (
    Tracker,
    default_tracking_uri,
)
from adaptix.tracking.tracker import import_mlflow

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future


def open_tracking(config: JobConfig, data: JobData) -> JobTracking:
    """Open the job's MLflow session: its parent run, which stays open until the report is
    logged (`JobTracking.finish`). Model runs are logged in one worker process
    (`JobTracking.submit`) while the job goes on with the next model."""
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
    return JobTracking(tracker, parent, splits, uri, pool, config)


@dataclass
class JobTracking:
    """The job's MLflow session, in the job's process: the parent run, what every model's runs
    share, and the one worker process that logs the model runs (`ModelRunLogger`, built there
    by `_log_in_worker`) while the job goes on (`submit`)."""

    tracker: Tracker
    parent: str | None  # None: the tracker is disabled
    splits: dict[str, Any]
    uri: str
    pool: Executor
    config: JobConfig
    pending: list[Future[list[str]]] = field(default_factory=list)
    worker_failures: list[str] = field(default_factory=list)

    def submit(self, name: str, outcome: ModelOutcome, runtime: list[RuntimePoint]) -> None:
        """Draw a model's plots and log its run (`log_model`) in the worker process."""
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
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.tracker.end_run(self.parent, "FAILED")

    def finish(self, result: JobResult, report_path: Path) -> None:
        """Log the report to the parent run and close it; a failure here reaches
        ``result.tracking_failures`` and a warning, not the report already written."""
        self.tracker.log_artifact(self.parent, report_path)
        self.tracker.end_run(self.parent)
        self.pool.shutdown(wait=True)
        result.tracking_failures = [*self.worker_failures, *self.tracker.failures]


def _start_worker() -> None:
    """The logging worker's first task: import what logging and plotting need."""
    import matplotlib  # noqa: F401

    import_mlflow()


#: The logging worker's logger (one per worker process, built by its first task).
_WORKER_LOGGER: ModelRunLogger | None = None


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
    global _WORKER_LOGGER
    torch.set_num_threads(1)
    if _WORKER_LOGGER is None:
        uri = config.tracking.uri or default_tracking_uri()
        tracker = Tracker(
            experiment=config.tracking.experiment,
            tracking_uri=uri,
            artifact_location=str((config.output_dir / "mlartifacts").resolve()),
        )
        _WORKER_LOGGER = ModelRunLogger(
            tracker, parent, splits, get_plugin_manager(), config.output_dir, config.sweep
        )
    session = _WORKER_LOGGER
    before = len(session.tracker.failures)
    write_model_plots(name, outcome, config.output_dir)
    session.log_model(name, outcome, runtime)
    return session.tracker.failures[before:]
