"""`Tracker`: an MLflow client for one experiment that a failing tracking store cannot kill.

MLflow is imported when a `Tracker` is built, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from adaptix.errors import AdaptixError, ValidationError

INSTALL_HINT = "pip install 'adaptix[mlflow]'"
PARENT_TAG = "mlflow.parentRunId"
UNDEFINED_METRICS_TAG = "adaptix.undefined_metrics"
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow's limits (mlflow.utils.validation), used when that module does not expose them.
_PARAM_LIMIT = 6000
_TAG_LIMIT = 8000
_FAILURE_TEXT_LIMIT = 500
_DIGEST_LIMIT = 36  # MLflow's column for a dataset's digest

T = TypeVar("T")


class TrackingWarning(UserWarning):
    """The tracking store failed (tracking is now off) or a value was truncated to fit MLflow."""


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db`` (a file in the working dir)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def import_mlflow() -> ModuleType:
    """Import MLflow, or raise `AdaptixError` saying how to install it."""
    try:
        import mlflow
    except ImportError as err:
        raise AdaptixError(
            f"expected MLflow to be importable for experiment tracking, got {err}. "
            f"Install it with: {INSTALL_HINT}"
        ) from err
    return mlflow


class Tracker:
    """Logs runs of one MLflow experiment; a store failure switches tracking off, once.

    The first exception raised by MLflow (unreachable server, read-only or corrupt database,
    deleted experiment, rejected key) is recorded in `failures` as a sentence, a `TrackingWarning`
    is emitted, and every later call is a no-op that returns None, so that a long job is never
    lost to its bookkeeping. With ``strict=True`` the exception is raised as an `AdaptixError`
    instead (chained to the original) and the tracker stays usable. Mistakes in the call itself
    (a metric that is not a number, an unknown run status, a missing artifact file) always raise
    `ValidationError`.

    Values are prepared for MLflow here: params and tags become strings, and one longer than
    MLflow's limit is cut to fit, ending in a note that says so (with a `TrackingWarning`).
    Metrics whose value is None (undefined, e.g. the early accuracy when no input left early)
    are skipped rather than logged as NaN; `log_point` lists them in the run's
    ``adaptix.undefined_metrics`` tag. A NaN the caller passes explicitly is logged as NaN.

    Args:
        experiment: the experiment name; created if missing.
        tracking_uri: where MLflow stores runs (default: `default_tracking_uri`).
        strict: raise on store failures instead of switching tracking off.
        artifact_location: where a newly created experiment stores artifacts (MLflow's default,
            ``./mlruns`` under the working directory for database stores, when None).

    Raises:
        AdaptixError: MLflow is not installed (whatever ``strict`` says), or, with
            ``strict=True``, the store cannot be reached.

    A remote (HTTP) server that does not answer is retried by MLflow with backoff before the
    first failure is reported; set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
    ``MLFLOW_HTTP_REQUEST_TIMEOUT`` to fail fast. Only that first call waits: the tracker connects
    when built, so an unreachable store is detected before any run is attempted.
    """

    def __init__(
        self,
        experiment: str = "adaptix",
        tracking_uri: str | None = None,
        strict: bool = False,
        *,
        artifact_location: str | None = None,
    ) -> None:
        mlflow = import_mlflow()
        from mlflow.entities import Metric, Param, RunTag

        self._entities = (Metric, Param, RunTag)
        self._param_limit, self._tag_limit = _limits()
        self.experiment = experiment
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.strict = strict
        self.failures: list[str] = []
        self.skipped = 0
        self.experiment_id: str | None = None
        self._client: Any = None
        self._guard("connect", self._connect, mlflow, artifact_location)

    @property
    def enabled(self) -> bool:
        """False once a store failure switched tracking off (calls are then no-ops)."""
        return not self.failures

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else f"disabled after: {self.failures[0]}"
        return f"Tracker(experiment={self.experiment!r}, uri={self.tracking_uri!r}, {state})"

    def start_run(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent: str | None = None,
    ) -> str | None:
        """Create a run (a child of ``parent`` when given) and log its params.

        Returns:
            The run id, or None when tracking is off.
        """
        run_tags = self._tags(tags, parent)
        run_params = self._params(params)
        return self._guard(f"start run {name!r}", self._create_and_fill, name, run_tags, run_params)

    def log_metrics(
        self, run_id: str | None, metrics: Mapping[str, float | None], step: int | None = None
    ) -> None:
        """Log metrics at ``step`` (default 0); None values are skipped.

        NaN is logged as NaN; MLflow's database stores keep ±inf as ±1.8e308 (the largest
        float). A None ``run_id`` (what a disabled tracker returns) makes this a no-op.

        Raises:
            ValidationError: a value is not a number (text, a tensor of several elements, an
                integer too large for a float), or ``step`` is not an integer.
        """
        if step is not None and (isinstance(step, bool) or not isinstance(step, numbers.Integral)):
            raise ValidationError(f"expected an integer step or None, got {step!r}.")
        prepared = self._metrics(metrics, step)[0]
        if run_id is None or not prepared:
            return
        self._guard(f"log metrics to run {run_id}", self._log_batch, run_id, prepared, [], [])

    def log_params(self, run_id: str | None, params: Mapping[str, Any]) -> None:
        """Log params (as strings, truncated to MLflow's limit). No-op for a None ``run_id``."""
        prepared = self._params(params)
        if run_id is None or not prepared:
            return
        self._guard(f"log params to run {run_id}", self._log_batch, run_id, [], prepared, [])

    def log_artifact(
        self, run_id: str | None, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Copy a local file or directory into the run's artifacts (under ``artifact_path``).

        Raises:
            ValidationError: ``path`` does not exist.
        """
        local = Path(path)
        if not local.exists():
            raise ValidationError(
                f"expected an existing file or directory to log as an artifact, got {local}, "
                "which does not exist. Write it before logging it."
            )
        if run_id is None:
            return
        self._guard(
            f"log artifact {local.name} to run {run_id}",
            self._call,
            "log_artifact",
            run_id,
            str(local),
            artifact_path,
        )

    def log_dataset(
        self,
        run_id: str | None,
        *,
        name: str,
        location: str,
        digest: str,
        context: str,
    ) -> None:
        """Record a dataset the run read, as MLflow's dataset tracking does (``log_input``): a
        metadata-only dataset (no rows are copied) named ``name``, whose source is the local
        ``location`` and whose digest is ``digest`` (cut to MLflow's 36 characters), tagged
        with ``context`` (``"train"``, ``"calibration"``, ``"test"``, ...). Two runs on
        different data then show different digests in the MLflow UI. No-op for a None
        ``run_id``."""
        if run_id is None:
            return
        self._guard(
            f"log dataset {name!r} to run {run_id}",
            self._log_dataset,
            run_id,
            name,
            location,
            digest[:_DIGEST_LIMIT],
            context,
        )

    def _log_dataset(
        self, run_id: str, name: str, location: str, digest: str, context: str
    ) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():
            # A local path reads as a local artifact source in two equivalent ways; MLflow warns.
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(location)
        # MetaDataset is concrete (its profile is None); MLflow's annotations call it abstract.
        meta = MetaDataset(source, name=name, digest=digest)  # type: ignore[abstract]
        dataset = meta._to_mlflow_entity()
        tags = [InputTag("mlflow.data.context", context)]
        self._client.log_inputs(run_id, [DatasetInput(dataset, tags)])

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        """Mark the run terminated with ``status`` (FINISHED, FAILED or KILLED)."""
        if status not in RUN_STATUSES:
            raise ValidationError(
                f"expected a run status in {RUN_STATUSES}, got {status!r}. Use one of those."
            )
        if run_id is None:
            return
        self._guard(f"end run {run_id}", self._call, "set_terminated", run_id, status)

    @contextmanager
    def run(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent: str | None = None,
    ) -> Iterator[str | None]:
        """`start_run` as a context manager: ends FINISHED, FAILED on an exception, KILLED on ^C.

        Yields:
            The run id, or None when tracking is off.
        """
        run_id = self.start_run(name, params=params, tags=tags, parent=parent)
        try:
            yield run_id
        except KeyboardInterrupt:
            self.end_run(run_id, "KILLED")
            raise
        except BaseException:
            self.end_run(run_id, "FAILED")
            raise
        self.end_run(run_id, "FINISHED")

    def log_point(
        self,
        parent: str | None,
        name: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float | None],
        *,
        tags: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Create a finished run with params, metrics and tags: three store calls in all.

        The run is created (a child of ``parent`` when given), filled with ONE ``log_batch``
        call and terminated. Metrics that are None are skipped and named in the
        ``adaptix.undefined_metrics`` tag.

        Returns:
            The run id, or None when tracking is off.
        """
        run_tags = self._tags(tags, parent)
        run_params = self._params(params)
        run_metrics, undefined = self._metrics(metrics, None)
        RunTag = self._entities[2]
        extra_tags = [RunTag(UNDEFINED_METRICS_TAG, ",".join(undefined))] if undefined else []
        return self._guard(
            f"log run {name!r}",
            self._create_fill_end,
            name,
            run_tags,
            run_params,
            run_metrics,
            extra_tags,
        )

    def _connect(self, mlflow: ModuleType, artifact_location: str | None) -> None:
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment)
        _write_ahead_log(self.tracking_uri)
        if experiment is None:
            try:
                client.create_experiment(self.experiment, artifact_location=artifact_location)
            except mlflow.exceptions.MlflowException:
                # Another process may have created it since we looked; if not, re-raise.
                if client.get_experiment_by_name(self.experiment) is None:
                    raise
            experiment = client.get_experiment_by_name(self.experiment)
        if experiment.lifecycle_stage != "active":
            raise AdaptixError(
                f"expected an active experiment {self.experiment!r}, got a deleted one. Restore "
                f"it (mlflow experiments restore --experiment-id {experiment.experiment_id}) or "
                "choose another experiment name."
            )
        self.experiment_id = experiment.experiment_id
        self._client = client

    def _guard(self, what: str, action: Callable[..., T], *args: Any) -> T | None:
        """Run ``action`` unless tracking is off; turn its first failure into a record."""
        if not self.enabled:
            self.skipped += 1
            return None
        try:
            return action(*args)
        except Exception as err:
            reason = " ".join(str(err).split()) or "no message"
            if len(reason) > _FAILURE_TEXT_LIMIT:
                reason = reason[:_FAILURE_TEXT_LIMIT] + "..."
            message = (
                f"could not {what} (MLflow experiment {self.experiment!r} at "
                f"{self.tracking_uri}): {type(err).__name__}: {reason}"
            )
            if self.strict:
                if isinstance(err, AdaptixError):
                    raise
                raise AdaptixError(
                    f"{message}. Check that the tracking store is reachable and writable, or "
                    "use strict=False to go on without tracking."
                ) from err
            self.failures.append(message)
            self._client = None
            warnings.warn(
                f"{message}. Tracking is off for this Tracker: later calls are skipped (see "
                "tracker.failures).",
                TrackingWarning,
                stacklevel=3,
            )
            return None

    def _call(self, method: str, *args: Any) -> None:
        getattr(self._client, method)(*args)

    def _log_batch(
        self, run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]
    ) -> None:
        self._client.log_batch(run_id, metrics=metrics, params=params, tags=tags)

    def _create_and_fill(self, name: str, tags: dict[str, str], params: list[Any]) -> str:
        run = self._client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id: str = run.info.run_id
        if params:
            self._fill_or_abandon(run_id, [], params, [])
        return run_id

    def _create_fill_end(
        self,
        name: str,
        tags: dict[str, str],
        params: list[Any],
        metrics: list[Any],
        extra_tags: list[Any],
    ) -> str:
        run = self._client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id: str = run.info.run_id
        self._fill_or_abandon(run_id, metrics, params, extra_tags)
        self._client.set_terminated(run_id, "FINISHED")
        return run_id

    def _fill_or_abandon(
        self, run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]
    ) -> None:
        try:
            self._client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        except Exception:
            # Do not leave a half-logged run shown as RUNNING forever. The store is failing, so
            # this may fail too; the log_batch error is the one worth reporting.
            with contextlib.suppress(Exception):
                self._client.set_terminated(run_id, "FAILED")
            raise

    def _tags(self, tags: Mapping[str, Any] | None, parent: str | None) -> dict[str, str]:
        prepared = {}
        for key, value in (tags or {}).items():
            prepared[str(key)] = _fit(str(key), value, self._tag_limit, "tag")
        if parent is not None:
            prepared[PARENT_TAG] = str(parent)
        return prepared

    def _params(self, params: Mapping[str, Any] | None) -> list[Any]:
        Param = self._entities[1]
        prepared = []
        for key, value in (params or {}).items():
            prepared.append(Param(str(key), _fit(str(key), value, self._param_limit, "param")))
        return prepared

    def _metrics(
        self, metrics: Mapping[str, float | None], step: int | None
    ) -> tuple[list[Any], list[str]]:
        """MLflow metrics of the defined values, and the names of the undefined (None) ones."""
        Metric = self._entities[0]
        timestamp = int(time.time() * 1000)
        prepared, undefined = [], []
        for key, value in metrics.items():
            if value is None:
                undefined.append(str(key))
                continue
            prepared.append(Metric(str(key), _number(str(key), value), timestamp, int(step or 0)))
        return prepared, undefined


def _write_ahead_log(uri: str) -> None:
    """Switch a SQLite store to write-ahead logging (persistent, standard SQLite; MLflow and
    ``mlflow ui`` read it as before): every run the job logs is a few transactions, and each
    commit then costs one append instead of a rewritten journal (measured: 54 to 41 ms a
    frontier-point run). Best effort: a store that refuses keeps its mode."""
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    try:
        with sqlite3.connect(path, timeout=10) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass


def _number(key: str, value: object) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise ValidationError(
            f"expected metric {key!r} to be a number or None, got {value!r}. Log text as a "
            "param or tag instead."
        )
    try:
        number = float(value)  # type: ignore[arg-type]  # numpy and torch scalars convert too
    except (TypeError, ValueError, OverflowError) as err:
        raise ValidationError(
            f"expected metric {key!r} to be a number or None, got {type(value).__name__} "
            f"({err}). Log one float per metric, and text as a param or tag."
        ) from err
    return number


def _fit(key: str, value: object, limit: int, kind: str) -> str:
    """``str(value)``, cut to ``limit`` characters with a note saying so."""
    text = str(value)
    if len(text) <= limit:
        return text
    note = f"... [truncated by adaptix from {len(text)} characters]"
    warnings.warn(
        f"{kind} {key!r} is {len(text)} characters long, over MLflow's limit of {limit}: "
        "logged truncated. Log long values as an artifact instead.",
        TrackingWarning,
        stacklevel=4,
    )
    return text[: limit - len(note)] + note


def _limits() -> tuple[int, int]:
    """MLflow's length limits for param and tag values."""
    from mlflow.utils import validation

    return (
        int(getattr(validation, "MAX_PARAM_VAL_LENGTH", _PARAM_LIMIT)),
        int(getattr(validation, "MAX_TAG_VAL_LENGTH", _TAG_LIMIT)),
    )
