"""The main job end to end on a tiny configuration, its configuration, cache and failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import adaptix
from adaptix.experiment import load_config, run_job
from adaptix.experiment.cache import ModelCache
from adaptix.experiment.config import JobConfig, parse_config

mlflow = pytest.importorskip("mlflow")

TINY = {
    "name": "tiny",
    "data": {"train_size": 400, "calibration_size": 300, "test_size": 300},
    "train": {"epochs": 1, "batch_size": 64},
    "models": [
        {"name": "s", "backbone_params": {"base_channels": 4, "blocks": 2}, "head": "linear"},
        {"name": "l", "backbone_params": {"base_channels": 4, "blocks": 4}, "head": "linear"},
    ],
    "sweep": {"delta_min": 0.6, "delta_max": 0.9, "delta_step": 0.1, "stress_scales": [2.0]},
    "runtime": {"thresholds": [0.8], "batch_size": 128, "repeats": 1},
}


def _config(tmp_path: Path, **updates: object) -> JobConfig:
    data = {
        **TINY,
        "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tiny"},
    }
    data.update(updates)
    return parse_config(data)


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory: pytest.TempPathFactory) -> adaptix.experiment.JobResult:
    tmp_path = tmp_path_factory.mktemp("job")
    return run_job(_config(tmp_path), log=lambda _: None)


def test_job_writes_report_tables_and_plots(tiny_job: adaptix.experiment.JobResult) -> None:
    out = tiny_job.output_dir
    for name in [
        "report.md", "frontier-s.csv", "frontier-l.csv", "frontier-l-logits-x2.csv",
        "calibration-s.json", "calibration-l.json", "accuracy-vs-flops.png",
        "control-l.png", "reliability-l.png",
    ]:  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    for section in ("(a) Control", "(b) Scale", "realised/ideal"):
        assert section in report
    calibration = adaptix.Calibration.load(out / "calibration-l.json", num_exits=4)
    assert calibration.num_inputs == 300
    assert not tiny_job.tracking_failures
    assert all(p.agrees_with_simulation for p in tiny_job.runtime)


def test_mlflow_holds_every_frontier_point(tiny_job: adaptix.experiment.JobResult) -> None:
    client = mlflow.MlflowClient(tracking_uri=tiny_job.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    by_id = {run.info.run_id: run for run in runs}
    parent = by_id[tiny_job.parent_run_id]
    assert parent.data.params["test_size"] == "300"
    for name, outcome in tiny_job.models.items():
        model_runs = [
            r for r in runs
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
            and r.info.run_name == name
        ]  # fmt: skip
        assert len(model_runs) == 1, name
        model_run = model_runs[0]
        points = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == model_run.info.run_id]
        assert len(points) == len(outcome.frontier)
        logged = {
            (r.data.params["criterion"], float(r.data.params["threshold"])): r for r in points
        }
        for point in outcome.frontier:
            run = logged[(point.criterion, point.threshold)]
            assert run.data.params["model"] == name
            assert run.data.params["calibration_checksum"] == outcome.calibration.checksum
            assert run.data.params["bins"] == "10"
            assert run.data.params["seed"] == "0"
            assert run.data.params["adaptix_version"] == adaptix.__version__
            assert run.data.metrics["relative_cost"] == pytest.approx(point.relative_cost)
            assert run.data.metrics["flops"] == pytest.approx(point.mean_cost)
            if point.accuracy is not None:
                assert run.data.metrics["accuracy"] == pytest.approx(point.accuracy)
            if point.criterion == "pcee" and point.early_accuracy is not None:
                assert run.data.metrics["shortfall"] == pytest.approx(
                    point.threshold - point.early_accuracy
                )
    measured = [
        r for r in runs
        if "speedup_measured" in r.data.metrics and r.data.params.get("criterion") == "pcee"
    ]  # fmt: skip
    assert len(measured) == len(tiny_job.runtime)


def test_second_run_uses_the_cache_and_a_corrupt_entry_is_retrained(tmp_path: Path) -> None:
    config = _config(tmp_path, models=TINY["models"][:1], tracking={"enabled": False},
                     runtime={"enabled": False}, sweep={"stress_scales": []})  # fmt: skip
    first = run_job(config, log=lambda _: None)
    assert not first.models["s"].cached
    second = run_job(config, log=lambda _: None)
    assert second.models["s"].cached
    assert second.models["s"].exit_accuracy == first.models["s"].exit_accuracy
    (entry,) = (tmp_path / "cache").glob("s-*.pt")
    entry.write_bytes(entry.read_bytes()[:-100])
    with pytest.warns(UserWarning, match="corrupt model cache entry"):
        third = run_job(config, log=lambda _: None)
    assert not third.models["s"].cached
    assert ModelCache(tmp_path / "cache").load("s", "0" * 64) is None


def test_unreachable_tracking_store_still_writes_everything(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    config = _config(
        tmp_path,
        models=TINY["models"][:1],
        runtime={"enabled": False},
        sweep={"stress_scales": []},
        tracking={"uri": f"sqlite:///{blocker}/mlflow.db"},
    )
    with pytest.warns(UserWarning, match="could not"):
        result = run_job(config, log=lambda _: None)
    assert result.tracking_failures
    assert (result.output_dir / "frontier-s.csv").stat().st_size > 0
    assert (result.output_dir / "accuracy-vs-flops.png").stat().st_size > 0
    assert "could not record" in (result.output_dir / "report.md").read_text()


def test_config_errors_name_the_dotted_path(tmp_path: Path) -> None:
    with pytest.raises(adaptix.ConfigError, match=r"train\.epochs"):
        parse_config({"train": {"epochs": 0}})
    with pytest.raises(adaptix.ConfigError, match=r"sweep\.bogus"):
        parse_config({"sweep": {"bogus": 1}})
    with pytest.raises(adaptix.ConfigError, match=r"models\.0\.name"):
        parse_config({"models": [{"name": ""}]})
    path = tmp_path / "job.toml"
    path.write_text("[data]\ntrain_size = 100\n[tracking]\nenabled = false\n")
    config = load_config(path)
    assert config.data.train_size == 100
    assert not config.tracking.enabled
    yaml_path = tmp_path / "job.yaml"
    yaml_path.write_text("train:\n  lr: -1\n")
    with pytest.raises(adaptix.ConfigError, match=r"train\.lr"):
        load_config(yaml_path)
    (tmp_path / "bad.toml").write_text("[data\n")
    with pytest.raises(adaptix.ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(adaptix.ConfigError, match=r"expected a \.toml"):
        load_config(tmp_path / "job.json")


def test_default_config_needs_no_arguments() -> None:
    config = load_config(None)
    assert [m.name for m in config.models] == ["small", "medium", "large"]
    assert config.sweep.deltas()[0] == 0.5
    assert config.sweep.deltas()[-1] == 0.99
    assert len(config.sweep.deltas()) == 50
    json.loads(config.model_dump_json())


def test_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    config = _config(tmp_path, data={"directory": str(tmp_path / "nowhere")})
    with pytest.raises(adaptix.ValidationError, match="apt-get install dataset-fashion-mnist"):
        run_job(config, log=lambda _: None)
