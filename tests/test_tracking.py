"""`adaptix.tracking`: runs read back from a real sqlite store, failure tolerance, lazy import."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import adaptix
from adaptix import AdaptixError, PluginError, ValidationError
from adaptix.components import AccuracyReading
from adaptix.settings import Settings
from adaptix.testing import synthetic_trace
from adaptix.tracking import (
    CERTIFICATE_TAG,
    INSTALL_HINT,
    PARENT_TAG,
    UNDEFINED_METRICS_TAG,
    Tracker,
    TrackingWarning,
    default_tracking_uri,
    log_certified,
    log_frontier,
)

mlflow = pytest.importorskip("mlflow")

#: A URI no process can write to (root included): its directory cannot be created under /proc.
UNREACHABLE = "sqlite:////proc/adaptix-nonexistent/mlflow.db"


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One sqlite store for the module (creating its tables takes seconds); artifacts beside it.

    Each test uses an experiment of its own.
    """
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


def _tracker(store: tuple[str, Path], experiment: str, **kwargs: Any) -> Tracker:
    uri, artifacts = store
    return Tracker(experiment, uri, artifact_location=str(artifacts / experiment), **kwargs)


def _runs(tracker: Tracker) -> list[Any]:
    client = mlflow.MlflowClient(tracker.tracking_uri)
    return list(client.search_runs([tracker.experiment_id], max_results=1000))


@pytest.fixture(scope="module")
def swept() -> tuple[adaptix.Frontier, adaptix.Calibration]:
    calibration = adaptix.calibrate(synthetic_trace(300, seed=1))
    frontier = adaptix.sweep(
        synthetic_trace(300, seed=2),
        ["confidence", "pcee", "pcee_ws", "entropy"],
        {"confidence": [0.6, 0.9, 1.0], "pcee": [0.6, 0.9], "pcee_ws": [0.8], "entropy": [0.5]},
        calibration=calibration,
    )
    return frontier, calibration


def test_log_frontier_logs_every_point_as_a_child_run(store, swept) -> None:
    frontier, calibration = swept
    tracker = _tracker(store, "frontier")
    parent = tracker.start_run("sweep", params={"seed": 7})
    run_ids = log_frontier(
        frontier,
        tracker=tracker,
        parent=parent,
        model="synthetic",
        params={"seed": 7, "test_size": 300},
        calibration=calibration,
        extra_metrics={("pcee", 0.9): {"speedup": 1.5}},
    )
    tracker.end_run(parent)
    assert tracker.failures == []
    assert len(run_ids) == len(frontier) == 7

    runs = {run.info.run_id: run for run in _runs(tracker)}
    assert set(runs) == {parent, *run_ids}
    assert runs[parent].info.status == "FINISHED"
    children = [runs[run_id] for run_id in run_ids]
    for point, run in zip(frontier, children, strict=True):
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        assert run.info.status == "FINISHED"
        assert tags[PARENT_TAG] == parent
        assert run.info.run_name == f"{point.criterion}@{point.threshold:.6g}"
        own = {"criterion.window": "1"} if point.criterion == "pcee_ws" else {}
        assert params == {
            "criterion": point.criterion,
            "threshold": f"{point.threshold:.6g}",
            **own,  # the criterion's own parameters, defaults included
            "num_exits": "4",
            "adaptix_version": adaptix.__version__,
            "model": "synthetic",
            "bins": "10",
            "calibration_method": "reliability",
            "calibration_checksum": calibration.checksum,
            "seed": "7",
            "test_size": "300",
        }
        assert metrics["accuracy"] == pytest.approx(point.accuracy)
        assert metrics["relative_cost"] == pytest.approx(point.relative_cost)
        assert metrics["flops"] == pytest.approx(point.mean_cost)
        assert metrics["early_exit_rate"] == pytest.approx(point.early_exit_rate)
        assert metrics["threshold"] == pytest.approx(point.threshold)
        for e, share in enumerate(point.exit_histogram):
            assert metrics[f"exit_share_{e}"] == pytest.approx(share)
        if point.early_accuracy is None:
            assert "early_accuracy" not in metrics
            assert "shortfall" not in metrics
            assert metrics["target"] == pytest.approx(point.threshold)
            assert tags[UNDEFINED_METRICS_TAG] == "early_accuracy,shortfall"
        else:
            assert metrics["early_accuracy"] == pytest.approx(point.early_accuracy)
            assert UNDEFINED_METRICS_TAG not in tags
            # Every criterion here declares an accuracy reading; entropy's target is 1 - τ.
            target = 1 - point.threshold if point.criterion == "entropy" else point.threshold
            assert metrics["target"] == pytest.approx(target)
            assert metrics["shortfall"] == pytest.approx(target - point.early_accuracy)
        assert ("speedup" in metrics) == ((point.criterion, point.threshold) == ("pcee", 0.9))
    # Nobody is that sure at τ = 1.0: the undefined case above was exercised.
    assert frontier.of("confidence")[-1].early_accuracy is None

    client = mlflow.MlflowClient(tracker.tracking_uri)
    files = {f.path for f in client.list_artifacts(parent)}
    assert files == {"frontier.csv", "calibration.json"}
    saved = Path(client.download_artifacts(parent, "calibration.json", str(store[1] / "dl")))
    assert adaptix.Calibration.load(saved) == calibration


def test_each_run_holds_the_parameters_its_criterion_was_swept_with(store) -> None:
    calibration = adaptix.calibrate(synthetic_trace(300, seed=1))
    criteria: dict[str, dict[str, Any]] = {
        "pcee_lcb": {"alpha": 0.1},
        "pcee_ws": {},
        "confidence": {},
    }
    frontier = adaptix.sweep(synthetic_trace(300, seed=2), criteria, [0.8], calibration)
    tracker = _tracker(store, "criterion-params")
    log_frontier(
        frontier, tracker=tracker, calibration=calibration,
        criterion_params={"pcee_lcb": {"alpha": 0.1}},
    )  # fmt: skip
    params = {run.data.params["criterion"]: run.data.params for run in _runs(tracker)}
    assert params["pcee_lcb"]["criterion.alpha"] == "0.1"
    assert params["pcee_lcb"]["criterion.bonferroni"] == "False"
    assert params["pcee_ws"]["criterion.window"] == "1"  # not given: the default
    assert not [k for k in params["confidence"] if k.startswith("criterion.")]
    for bad, message in [
        ({"pcee": {"alpha": 0.1}}, r"criteria of the frontier .* got \['pcee'\]"),
        ({"pcee_lcb": {"alpha": 2}}, r"criterion 'pcee_lcb'\.alpha"),
        ({"pcee_lcb": {"alpha": 0.1, "nope": 1}}, "nope"),
    ]:
        with pytest.raises(ValidationError, match=message):
            log_frontier(frontier, tracker=tracker, criterion_params=bad)
    with pytest.raises(ValidationError, match=r"does not set itself, got \['criterion.alpha'\]"):
        log_frontier(frontier, tracker=tracker, params={"criterion.alpha": 1})
    assert len(_runs(tracker)) == len(frontier)  # the refused calls logged nothing


def _certified(
    delta: float, calibration_trace: adaptix.Trace, test_trace: adaptix.Trace
) -> tuple[adaptix.ExitPolicy, adaptix.FrontierPoint]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", adaptix.CertificateWarning)
        certified = adaptix.guarantee(calibration_trace, "confidence", early_accuracy=delta)
    result = adaptix.simulate(test_trace, certified)
    point = adaptix.FrontierPoint(
        "guarantee", certified.threshold, result.accuracy, result.early_accuracy,
        result.relative_cost, result.mean_cost, tuple(result.exit_histogram.tolist()),
    )  # fmt: skip
    return certified, point


def test_log_certified_logs_the_certificate_and_the_realised_point(store) -> None:
    calibration_trace, test_trace = synthetic_trace(2000, seed=1), synthetic_trace(500, seed=2)
    pairs = [_certified(d, calibration_trace, test_trace) for d in (0.6, 0.999999)]
    policies, points = [p for p, _ in pairs], [q for _, q in pairs]
    certificates = [p.certificate for p in policies]
    assert [c.certified for c in certificates if c is not None] == [True, False]
    tracker = _tracker(store, "certified")
    with tracker.run("job") as parent:
        run_ids = log_certified(
            policies, points, tracker=tracker, parent=parent, model="m", params={"seed": 3}
        )
    runs = {run.info.run_id: run for run in _runs(tracker)}
    for run_id, certified, point in zip(run_ids, policies, points, strict=True):
        certificate = certified.certificate
        assert certificate is not None
        run = runs[run_id]
        params, metrics = run.data.params, run.data.metrics
        assert run.info.run_name == f"guarantee:confidence@{certificate.level:g}"
        assert run.data.tags[PARENT_TAG] == parent
        assert run.data.tags[CERTIFICATE_TAG] == certificate.statement()
        assert params == {
            "mode": "guarantee",
            "criterion": "confidence",
            "target": "early_accuracy",
            "level": str(certificate.level),
            "alpha": "0.05",
            "n": "2000",
            "method": "binomial",
            "certified": str(certificate.certified),
            "threshold": str(certificate.threshold),
            "estimate": str(certificate.estimate),
            "bound": str(certificate.bound),
            "calibration_early_exit_rate": str(certificate.early_exit_rate),
            "tested": str(certificate.tested),
            "calibration": "None",
            "exits": json.dumps(list(certificate.exits)),
            "correct": json.dumps(list(certificate.correct)),
            "final_correct": str(certificate.final_correct),
            "lost": str(certificate.lost),
            "costs": "None",
            "rows": certificate.rows,
            "num_exits": "4",
            "adaptix_version": adaptix.__version__,
            "model": "m",
            "seed": "3",
        }
        assert metrics["relative_cost"] == pytest.approx(point.relative_cost)
        assert metrics["target"] == pytest.approx(certificate.level)
        if point.early_accuracy is None:
            assert "shortfall" not in metrics
        else:
            assert metrics["shortfall"] == pytest.approx(certificate.level - point.early_accuracy)
    assert runs[run_ids[1]].data.metrics["early_exit_rate"] == 0.0  # uncertified: no exit


def test_log_certified_refuses_what_it_cannot_log(store) -> None:
    certified, point = _certified(0.6, synthetic_trace(500, seed=1), synthetic_trace(200, seed=2))
    plain = adaptix.policy("confidence", 0.6)
    tracker = _tracker(store, "certified-refused")
    cases: list[tuple[Any, Any, dict[str, Any], str]] = [
        ([plain], [point], {}, "carries no certificate"),
        ([certified], [(0.5, 0.9)], {}, "got a tuple"),
        ([certified], [], {}, "got 1 policies and 0 points"),
        ([certified], [point], {"params": {"alpha": 0.1}}, r"got \['alpha'\]"),
    ]
    for policies, points, options, message in cases:
        with pytest.raises(ValidationError, match=message):
            log_certified(policies, points, tracker=tracker, **options)
    assert _runs(tracker) == []


class _Unread(adaptix.components.ExitCriterion):
    """Confidence under another name, without an accuracy reading."""

    name = "test_unread"

    def score(self, logits: Any, exit_index: int, state: Any) -> tuple[Any, Any]:
        return logits.float().softmax(-1).amax(-1), state


class _ReadAsComplement(_Unread):
    """A third-party criterion that declares the reading τ = 1 - δ."""

    name = "test_complement"
    accuracy_reading = AccuracyReading(complement=True)


class _RegistersReadings:
    @adaptix.hookimpl
    def adaptix_register_criteria(self, registry: Any) -> None:
        registry.add(_Unread)
        registry.add(_ReadAsComplement)


def test_shortfall_follows_each_criterion_s_declared_reading(store) -> None:
    plugins = adaptix.get_plugin_manager(settings=Settings(autoload_plugins=False))
    plugins.register(_RegistersReadings(), name="test_readings")
    names = ["test_unread", "test_complement", "patience"]
    grids = {"test_unread": [0.5], "test_complement": [0.3], "patience": [1]}
    frontier = adaptix.sweep(synthetic_trace(300, seed=2), names, grids, plugins=plugins)
    tracker = _tracker(store, "readings")
    with tracker.run("sweep") as parent:
        log_frontier(frontier, tracker=tracker, parent=parent, plugins=plugins, artifact_path="x")
    runs = {
        run.data.params["criterion"]: run.data.metrics for run in _runs(tracker) if run.data.params
    }
    (complement,) = frontier.of("test_complement")
    assert complement.early_accuracy is not None
    assert runs["test_complement"]["target"] == pytest.approx(0.7)
    assert runs["test_complement"]["shortfall"] == pytest.approx(0.7 - complement.early_accuracy)
    for name in ("test_unread", "patience"):  # no reading: no target, no shortfall
        assert not {"target", "shortfall"} & set(runs[name]), name
    files = {f.path for f in mlflow.MlflowClient(tracker.tracking_uri).list_artifacts(parent)}
    assert files == {"x"}


def test_a_criterion_the_plugins_do_not_know_fails_before_logging(store) -> None:
    plugins = adaptix.get_plugin_manager(settings=Settings(autoload_plugins=False))
    plugins.register(_RegistersReadings(), name="test_readings")
    frontier = adaptix.sweep(synthetic_trace(50), "test_unread", [0.5], plugins=plugins)
    tracker = _tracker(store, "unknown-criterion")
    with pytest.raises(PluginError, match="unknown criterion 'test_unread'"):
        log_frontier(frontier, tracker=tracker)  # a default manager: no test_unread
    assert _runs(tracker) == []


def test_tracker_runs_params_metrics_and_statuses(store) -> None:
    tracker = _tracker(store, "tracker")
    parent = tracker.start_run("job", params={"lr": 0.1}, tags={"stage": "test"})
    child = tracker.start_run("step", parent=parent)
    tracker.log_metrics(child, {"loss": 0.5, "undefined": None}, step=3)
    tracker.log_params(child, {"width": 64})
    tracker.end_run(child, "KILLED")
    with pytest.raises(RuntimeError, match="boom"), tracker.run("broken", parent=parent):
        raise RuntimeError("boom")
    tracker.end_run(parent)

    client = mlflow.MlflowClient(tracker.tracking_uri)
    runs = {run.info.run_name: run for run in _runs(tracker)}
    assert runs["job"].data.params == {"lr": "0.1"}
    assert runs["job"].data.tags["stage"] == "test"
    assert PARENT_TAG not in runs["job"].data.tags
    assert runs["step"].data.tags[PARENT_TAG] == parent
    assert runs["step"].data.metrics == {"loss": 0.5}  # None skipped, never NaN
    assert [m.step for m in client.get_metric_history(child, "loss")] == [3]
    assert runs["step"].data.params == {"width": "64"}
    assert runs["step"].info.status == "KILLED"
    assert runs["broken"].info.status == "FAILED"
    assert runs["job"].info.status == "FINISHED"


def test_long_params_are_truncated_with_a_note(store) -> None:
    tracker = _tracker(store, "truncation")
    limit = mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
    with pytest.warns(TrackingWarning, match="'config' is 7000 characters long"):
        run_id = tracker.log_point(None, "long", {"config": "x" * 7000}, {"m": 1.0})
    value = _runs(tracker)[0].data.params["config"]
    assert run_id is not None
    assert len(value) == limit
    assert value.endswith("[truncated by adaptix from 7000 characters]")


def test_mistakes_in_the_call_raise_whatever_strict_says(store, swept) -> None:
    frontier, _ = swept
    tracker = _tracker(store, "mistakes")
    with pytest.raises(ValidationError, match="'loss' to be a number"):
        tracker.log_point(None, "bad", {}, {"loss": "low"})
    with pytest.raises(ValidationError, match="run status"):
        tracker.end_run("anything", "DONE")
    with pytest.raises(ValidationError, match="does not exist"):
        tracker.log_artifact("anything", store[1] / "missing.txt")
    with pytest.raises(ValidationError, match=r"'pcee' at thresholds \['0.6', '0.9'\]"):
        log_frontier(frontier, tracker=tracker, extra_metrics={("pcee", 0.75): {"speedup": 2.0}})
    with pytest.raises(ValidationError, match=r"\['accuracy'\]"):
        log_frontier(frontier, tracker=tracker, extra_metrics={("pcee", 0.9): {"accuracy": 1.0}})
    with pytest.raises(ValidationError, match=r"\['threshold'\]"):
        log_frontier(frontier, tracker=tracker, params={"threshold": 3})
    with pytest.raises(ValidationError, match=r"adaptix\.Frontier"):
        log_frontier(list(frontier), tracker=tracker)  # type: ignore[arg-type]
    for extra in ({"pcee": {"speedup": 2.0}}, {("pcee", "0.9"): {"speedup": 2.0}},
                  {("pcee", 0.9): 2.0}):  # fmt: skip
        with pytest.raises(ValidationError, match=r"\{\(criterion, threshold\)"):
            log_frontier(frontier, tracker=tracker, extra_metrics=extra)  # type: ignore[arg-type]
    for metric in (10**400, torch.ones(2), "low"):
        with pytest.raises(ValidationError, match="'loss' to be a number"):
            tracker.log_metrics("anything", {"loss": metric})
    with pytest.raises(ValidationError, match="integer step"):
        tracker.log_metrics("anything", {"loss": 1.0}, step=1.5)  # type: ignore[arg-type]
    assert tracker.failures == []
    assert _runs(tracker) == []  # validated before anything was logged


def test_an_unreachable_store_switches_tracking_off_once(swept) -> None:
    frontier, calibration = swept
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count every warning, repeated or not
        tracker = Tracker("adaptix", UNREACHABLE)
        parent = tracker.start_run("job")
        run_ids = log_frontier(frontier, tracker=tracker, parent=parent, calibration=calibration)
        tracker.log_metrics(parent, {"x": 1.0})
        tracker.end_run(parent)
    assert [str(w.message) for w in caught if w.category is TrackingWarning] == [
        f"{tracker.failures[0]}. Tracking is off for this Tracker: later calls are skipped (see "
        "tracker.failures)."
    ]
    assert not tracker.enabled
    assert parent is None
    assert run_ids == []
    assert len(tracker.failures) == 1
    assert "could not connect" in tracker.failures[0]
    assert UNREACHABLE in tracker.failures[0]
    assert tracker.skipped == 1  # start_run; log_frontier stops at once, None ids are no-ops


def test_strict_raises_an_adaptix_error(swept) -> None:
    with pytest.raises(AdaptixError, match="could not connect") as raised:
        Tracker("adaptix", UNREACHABLE, strict=True)
    assert raised.value.__cause__ is not None


def test_a_store_failing_mid_job_is_recorded_and_later_calls_are_skipped(store) -> None:
    tracker = _tracker(store, "mid-job")
    first = tracker.log_point(None, "ok", {"a": 1}, {"m": 1.0})

    def broken(*args: Any, **kwargs: Any) -> None:
        raise mlflow.exceptions.MlflowException("attempt to write a readonly database")

    tracker._client.log_batch = broken
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = tracker.log_point(None, "fails", {"a": 2}, {"m": 2.0})
        third = tracker.log_point(None, "skipped", {"a": 3}, {"m": 3.0})
    assert first is not None
    assert (second, third) == (None, None)
    assert [w.category for w in caught] == [TrackingWarning]
    assert tracker.failures == [
        f"could not log run 'fails' (MLflow experiment 'mid-job' at {tracker.tracking_uri}): "
        "MlflowException: attempt to write a readonly database"
    ]
    assert tracker.skipped == 1
    statuses = {run.info.run_name: run.info.status for run in _runs(tracker)}
    assert statuses == {"ok": "FINISHED", "fails": "FAILED"}  # not left RUNNING


def test_strict_raises_on_a_failure_mid_job_and_stays_usable(store) -> None:
    tracker = _tracker(store, "mid-job-strict", strict=True)
    working = tracker._client.log_batch

    def broken(*args: Any, **kwargs: Any) -> None:
        raise mlflow.exceptions.MlflowException("disk I/O error")

    tracker._client.log_batch = broken
    with pytest.raises(AdaptixError, match="disk I/O error") as raised:
        tracker.log_point(None, "fails", {}, {"m": 1.0})
    assert isinstance(raised.value.__cause__, mlflow.exceptions.MlflowException)
    tracker._client.log_batch = working
    assert tracker.log_point(None, "works", {}, {"m": 1.0}) is not None
    assert tracker.failures == []


def test_default_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert default_tracking_uri() == "http://tracking.example:5000"


def test_adaptix_works_without_mlflow() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["mlflow"] = None  # as if mlflow were not installed
        import adaptix
        import adaptix.experiment.plots
        import adaptix.tracking
        from adaptix.testing import synthetic_trace
        assert "matplotlib" not in sys.modules, "experiment.plots imported matplotlib eagerly"
        frontier = adaptix.sweep(synthetic_trace(50), "confidence", [0.5, 0.9])
        assert len(frontier) == 2
        for attempt in (
            lambda: adaptix.tracking.Tracker(),
            lambda: adaptix.tracking.log_frontier(frontier),
        ):
            try:
                attempt()
            except adaptix.AdaptixError as err:
                print(err)
            else:
                raise SystemExit("expected an AdaptixError")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all(INSTALL_HINT in line for line in lines)


def test_explicit_nan_is_logged_as_given(store) -> None:
    tracker = _tracker(store, "nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        tracker.log_point(None, "nan", {}, {"gap": math.nan})
    assert math.isnan(_runs(tracker)[0].data.metrics["gap"])


def test_infinities_are_kept_as_the_largest_floats(store) -> None:
    tracker = _tracker(store, "inf")
    tracker.log_point(None, "inf", {}, {"high": math.inf, "low": -math.inf})
    assert tracker.failures == []
    assert _runs(tracker)[0].data.metrics == {
        "high": sys.float_info.max,
        "low": -sys.float_info.max,
    }
