"""Issue 20, classes 2 (the study's half), 7, 9 and 10 in the job, the studies and the command line.

- Class 7, configuration checked late: every setting a run would refuse is refused by
  ``adaptix config``, by `load_config`, by ``adaptix run`` and by `run_job`, before any data
  loads or any model trains (the loaders are replaced by functions that fail the test).
- Class 9, a run misstating its data: the job on other IDX files names them, with their
  checksum, in the report and in every MLflow run (params and dataset inputs).
- Class 2, the study reusing data: the same trace twice, or one contained in the other, is
  refused; a partial overlap is dropped from the test trace with a `CertificateWarning`.
- Class 10: the study's and the shift study's settings follow `adaptix.scalars` (fuzzed).
"""

from __future__ import annotations

import gzip
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptix
from adaptix import CertificateWarning, ConfigError, PluginError, ValidationError
from adaptix.cli import main
from adaptix.core.trace import Trace
from adaptix.experiment import data as idx_data
from adaptix.experiment import datasets, job, load_config, run_job, training
from adaptix.experiment import shift_job as shift_module
from adaptix.experiment import study as study_module
from adaptix.experiment.config import parse_config
from adaptix.experiment.shift_study import StudySettings
from adaptix.experiment.study import run_study
from adaptix.testing import synthetic_trace

TRAIN_ROWS, TEST_ROWS = 700, 300


def write_idx(
    directory: Path, *, seed: int, train: int = TRAIN_ROWS, test: int = TEST_ROWS
) -> Path:
    """Four gzipped IDX files of random 28 × 28 images with labels 0..9 (MNIST's layout, not
    Fashion-MNIST's content)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, rows in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, rows, dtype=np.uint8)
        # Images that depend on the label, so that a tiny model learns something.
        images = rng.integers(0, 60, (rows, 28, 28), dtype=np.uint8)
        images[np.arange(rows), labels * 2 + 4, 4:24] = 250
        for kind, array, code in (("images-idx3", images, 3), ("labels-idx1", labels, 1)):
            header = bytes([0, 0, 0x08, code]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
            with gzip.open(directory / f"{prefix}-{kind}-ubyte.gz", "wb") as handle:
                handle.write(header + array.tobytes())
    return directory


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_idx(tmp_path_factory.mktemp("idx") / "mnist-like", seed=0)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Loading data, training or tracing fails the test (what was attempted is recorded)."""
    attempted: list[str] = []

    def forbidden(what: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            attempted.append(what)
            raise AssertionError(f"{what} was called before the configuration was refused")

        return call

    monkeypatch.setattr(idx_data, "read_idx", forbidden("read_idx"))
    monkeypatch.setattr(datasets, "load_fashion_mnist", forbidden("load_fashion_mnist"))
    monkeypatch.setattr(datasets, "load_job_data", forbidden("load_job_data"))
    monkeypatch.setattr(job, "load_job_data", forbidden("load_job_data"))
    monkeypatch.setattr(shift_module, "load_job_data", forbidden("load_job_data"))
    monkeypatch.setattr(training, "train_exits", forbidden("train_exits"))
    monkeypatch.setattr(adaptix.MultiExitModel, "trace", forbidden("trace"))
    return attempted


# ------------------------------------------------------------------ class 7: checked up front

NAN, INF = math.nan, math.inf
#: (section overrides, the dotted path the refusal names). Each was accepted by the
#: configuration, or refused only after loading the data or training, before issue 20.
BAD_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"sweep": {"stress_scales": [NAN]}}, "sweep.stress_scales.0"),
    ({"sweep": {"stress_scales": [2.0, INF]}}, "sweep.stress_scales.1"),
    ({"sweep": {"stress_scales": [True]}}, "sweep.stress_scales.0"),
    ({"sweep": {"stress_scales": ["2"]}}, "sweep.stress_scales.0"),
    ({"sweep": {"stress_scales": [2.0, 2.0]}}, "sweep.stress_scales"),
    ({"sweep": {"bins": True}}, "sweep.bins"),
    ({"sweep": {"bins": 10.0}}, "sweep.bins"),
    ({"sweep": {"delta_step": NAN}}, "sweep.delta_step"),
    ({"sweep": {"delta_step": 1e-9}}, "sweep"),
    ({"sweep": {"delta_min": "0.5"}}, "sweep.delta_min"),
    ({"train": {"loss_weights": [1.0, 1.0]}}, "train"),
    ({"train": {"loss_weights": []}}, "train.loss_weights"),
    ({"train": {"loss_weights": [1.0, NAN, 1.0, 1.0]}}, "train.loss_weights.1"),
    ({"train": {"lr": NAN}}, "train.lr"),
    ({"train": {"lr": "0.01"}}, "train.lr"),
    ({"train": {"lr": True}}, "train.lr"),
    ({"train": {"epochs": 3.0}}, "train.epochs"),
    ({"train": {"epochs": "3"}}, "train.epochs"),
    ({"train": {"workers": True}}, "train.workers"),
    ({"train": {"augment": 1}}, "train.augment"),
    ({"train": {"augment": "true"}}, "train.augment"),
    ({"train": {"augment": True, "mode": "frozen"}}, "train"),
    ({"train": {"temperature": INF}}, "train.temperature"),
    ({"train": {"seed": -1}}, "train.seed"),
    ({"runtime": {"thresholds": []}}, "runtime.thresholds"),
    ({"runtime": {"thresholds": [NAN]}}, "runtime.thresholds.0"),
    ({"runtime": {"thresholds": ["0.9"]}}, "runtime.thresholds.0"),
    ({"runtime": {"repeats": True}}, "runtime.repeats"),
    ({"runtime": {"enabled": "no"}}, "runtime.enabled"),
    ({"ray": {"workers": True}}, "ray.workers"),
    ({"ray": {"batch_size": 2.5}}, "ray.batch_size"),
    ({"guarantee": {"alpha": NAN}}, "guarantee.alpha"),
    ({"guarantee": {"alpha": True}}, "guarantee.alpha"),
    ({"guarantee": {"enabled": 0}}, "guarantee.enabled"),
    ({"targets": {"final_accuracy": NAN}}, "targets.final_accuracy"),
    ({"tracking": {"enabled": 1}}, "tracking.enabled"),
    ({"threads": True}, "threads"),
    ({"tune_cpu_allocator": "yes"}, "tune_cpu_allocator"),
    ({"seed": 1.5}, "seed"),
    ({"data": {"seed": True}}, "data.seed"),
    ({"data": {"max_length": 64.0}}, "data.max_length"),
    ({"data": {"test_size": TEST_ROWS + 1}}, "data.test_size"),
    ({"data": {"train_size": TRAIN_ROWS}}, "data.train_size"),
    ({"data": {"calibration_size": TRAIN_ROWS}}, "data.calibration_size"),
    ({"data": {"directory": "/nonexistent/adaptix-data"}}, "data.directory"),
]
IDS = [f"{path}-{i}" for i, (_, path) in enumerate(BAD_SETTINGS)]


def _job_file(tmp_path: Path, idx: Path, overrides: dict[str, Any]) -> Path:
    """A YAML job (YAML writes NaN and inf) on the IDX files, with ``overrides`` merged."""
    config: dict[str, Any] = {
        "name": "bad",
        "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
        "data": {"directory": str(idx), "calibration_size": 200, "train_size": 400},
        "tracking": {"enabled": False},
        "train": {"workers": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _names(message: str, path: str) -> bool:
    return re.search(rf"^  {re.escape(path)}: ", message, flags=re.MULTILINE) is not None


@pytest.mark.parametrize(("overrides", "path"), BAD_SETTINGS, ids=IDS)
def test_adaptix_config_and_run_refuse_before_any_work(
    overrides: dict[str, Any],
    path: str,
    idx_dir: Path,
    tmp_path: Path,
    no_work: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = _job_file(tmp_path, idx_dir, overrides)
    with pytest.raises(ConfigError) as refused:
        load_config(file)
    assert _names(str(refused.value), path), str(refused.value)
    for command in (["config", str(file)], ["run", str(file), "--no-tracking"]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert error.startswith("adaptix: error: invalid"), error
        assert _names(error, path), error
    assert no_work == []


@pytest.mark.parametrize(
    ("data", "path", "rows"),
    [
        ({"test_size": TEST_ROWS + 1}, "data.test_size", f"at most {TEST_ROWS}"),
        ({"train_size": 501}, "data.train_size", "at most 500"),
        ({"calibration_size": TRAIN_ROWS}, "data.calibration_size", f"the {TRAIN_ROWS} training"),
    ],
)
def test_run_job_refuses_sizes_beyond_the_data_before_loading_it(
    data: dict[str, Any], path: str, rows: str, idx_dir: Path, tmp_path: Path, no_work: list[str]
) -> None:
    """A configuration built in code (no `load_config`) is checked by the job itself; the
    message says how many rows there are (nothing is clipped)."""
    config = parse_config(
        {
            "data": {"directory": str(idx_dir), "calibration_size": 200, **data},
            "output_dir": str(tmp_path / "out"),
            "tracking": {"enabled": False},
        }
    )
    with pytest.raises(ConfigError, match=re.escape(path)) as refused:
        run_job(config, log=lambda _: None)
    assert rows in str(refused.value)
    assert no_work == []
    assert not (tmp_path / "out").exists()


def test_loss_weights_one_per_exit_of_every_model_are_accepted() -> None:
    models = [{"name": "a", "backbone_params": {"blocks": 3}}, {"name": "b"}]  # small: 3 exits
    config = parse_config({"models": models, "train": {"loss_weights": [1, 2, 3]}})
    assert config.train.loss_weights == (1.0, 2.0, 3.0)
    with pytest.raises(ConfigError, match=r"\{'a': 4, 'b': 3\} exits"):
        parse_config(
            {
                "models": [{"name": "a", "backbone_params": {"blocks": 4}}, {"name": "b"}],
                "train": {"loss_weights": [1, 2, 3]},
            }
        )


def test_the_shipped_presets_pass_every_check() -> None:
    for name in adaptix.experiment.config.preset_names():
        adaptix.experiment.load_job_config(preset=name)


@pytest.mark.parametrize(
    "arguments",
    [
        ["--delta", "2"],
        ["--delta", "nan"],
        ["--alpha", "1"],
        ["--streams", "0"],
        ["--repeats", "0"],
        ["--null-length", "10"],  # shorter than a check of 64 inputs
    ],
)
def test_shift_study_refuses_its_settings_before_any_work(
    arguments: list[str],
    idx_dir: Path,
    tmp_path: Path,
    no_work: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = _job_file(tmp_path, idx_dir, {})
    assert main(["shift-study", str(file), *arguments, "--no-mlflow"]) == 2
    assert capsys.readouterr().err.startswith("adaptix: error: expected")
    assert no_work == []


def test_shift_job_refuses_bad_severities_and_sizes_before_any_work(
    idx_dir: Path, tmp_path: Path, no_work: list[str]
) -> None:
    config = load_config(_job_file(tmp_path, idx_dir, {}))
    with pytest.raises(ValidationError, match="contrast severity"):
        shift_module.shift_job(config, severities={"contrast": (1.5,)}, log=lambda _: None)
    with pytest.raises(ValidationError, match="shift kind"):
        shift_module.shift_job(config, severities={"blur": (1.0,)}, log=lambda _: None)
    with pytest.raises(ValidationError, match="reads a calibration"):
        shift_module.shift_job(config, StudySettings(criterion="confidence"), log=lambda _: None)
    with pytest.raises(PluginError, match="nope"):
        shift_module.shift_job(config, StudySettings(criterion="nope"), log=lambda _: None)
    oversized = config.model_copy(
        update={"data": config.data.model_copy(update={"test_size": 999})}
    )
    with pytest.raises(ConfigError, match=r"data\.test_size"):
        shift_module.shift_job(oversized, log=lambda _: None)
    assert no_work == []


# ------------------------------------------------------- class 10: the studies' settings, fuzzed

#: Values that are no number, count or level anywhere: bools, strings, NaN, ±inf, None, lists.
junk = st.one_of(
    st.booleans(),
    st.text(max_size=5),
    st.sampled_from([math.nan, math.inf, -math.inf, None, [1], np.bool_(True)]),
)
#: A count field given a float (even an integral one) or a number below its minimum.
bad_count = st.one_of(junk, st.floats(allow_nan=False).map(float), st.integers(max_value=0))
bad_level = st.one_of(junk, st.floats(allow_nan=False).filter(lambda x: not 0 < x < 1))

SHIFT_COUNTS = ("streams", "null_length", "delay_length", "check_inputs", "proxy_size", "repeats")


@settings(max_examples=150, deadline=None)
@given(
    field=st.sampled_from([*SHIFT_COUNTS, "delta", "alpha", "concentration", "seed", "feedback"]),
    data=st.data(),
)
def test_shift_study_settings_refuse_what_the_scalars_refuse(field: str, data: Any) -> None:
    if field in SHIFT_COUNTS:
        value = data.draw(bad_count)
    elif field in ("delta", "alpha"):
        value = data.draw(bad_level)
    elif field == "concentration":
        value = data.draw(st.one_of(junk, st.floats(max_value=-1e-9)))
    elif field == "seed":
        value = data.draw(st.one_of(junk, st.integers(max_value=-1), st.floats()))
    else:
        scalar = st.one_of(st.booleans(), st.text(max_size=5), st.sampled_from([None, 1.0]))
        value = data.draw(st.one_of(scalar, st.just(()), st.tuples(bad_count)))
    with pytest.raises(ValidationError):
        StudySettings(**{field: value})


@settings(max_examples=60, deadline=None)
@given(
    streams=st.integers(1, 10**6),
    delta=st.floats(0.01, 0.99),
    alpha=st.floats(0.001, 0.5),
    seed=st.integers(0, 2**63 - 1),
    concentration=st.one_of(st.floats(0, 1e6), st.integers(0, 10**6)),
    numpy_scalars=st.booleans(),
)
def test_shift_study_settings_take_every_valid_value(
    streams: int, delta: float, alpha: float, seed: int, concentration: float, numpy_scalars: bool
) -> None:
    if numpy_scalars:  # numpy scalars are numbers (and come back as Python ones)
        delta, alpha, streams = np.float32(delta), np.float64(alpha), np.int64(streams)  # type: ignore[assignment]
    made = StudySettings(
        streams=streams, delta=delta, alpha=alpha, seed=seed, concentration=concentration
    )
    assert type(made.delta) is float
    assert type(made.streams) is int
    assert made.delta == pytest.approx(float(delta))


@pytest.fixture(scope="module")
def two_traces() -> tuple[Trace, Trace]:
    return synthetic_trace(200, 3, 4, seed=10), synthetic_trace(200, 3, 4, seed=11)


STUDY_FIELDS = ("splits", "calibration_size", "alpha", "bins", "seed", "deltas", "scales")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(STUDY_FIELDS), data=st.data())
def test_study_settings_refuse_what_the_scalars_refuse_before_any_work(
    field: str, data: Any, two_traces: tuple[Trace, Trace], monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the study started working before refusing its settings")

    monkeypatch.setattr(study_module, "_ScaleStudy", forbidden)
    if field in ("splits", "bins"):
        value = data.draw(bad_count)
    elif field == "calibration_size":
        value = data.draw(st.one_of(bad_count, st.integers(min_value=400)))
    elif field == "alpha":
        value = data.draw(bad_level)
    elif field == "seed":
        value = data.draw(st.one_of(junk, st.integers(max_value=-1), st.floats()))
    elif field == "deltas":
        value = data.draw(st.one_of(junk, st.just([]), st.lists(bad_level, min_size=1)))
    else:
        bad_scale = st.one_of(junk, st.floats(max_value=0.0), st.just(math.inf))
        value = data.draw(st.one_of(junk, st.just([]), st.lists(bad_scale, min_size=1)))
    with pytest.raises(ValidationError):
        run_study(*two_traces, **{field: value}, progress=False)


# ------------------------------------------------------------- class 2: the study reusing data

SMALL_STUDY = {"splits": 2, "calibration_size": 150, "deltas": (0.7, 0.9), "scales": (1.0,)}


def _rows(trace: Trace, rows: slice | torch.Tensor) -> Trace:
    return trace.subset(rows)


@pytest.mark.parametrize(
    "case", ["same-object", "same-content", "test-inside-calibration", "calibration-inside-test"]
)
def test_the_study_refuses_traces_of_the_same_inputs(
    case: str, two_traces: tuple[Trace, Trace]
) -> None:
    calibration, other = two_traces
    pairs = {
        "same-object": (calibration, calibration),
        "same-content": (calibration, Trace.load(_saved(calibration))),
        "test-inside-calibration": (calibration, _rows(calibration, slice(50, 150))),
        "calibration-inside-test": (
            _rows(calibration, slice(0, 100)),
            Trace(
                torch.cat([calibration.logits, other.logits]),
                torch.cat([calibration.labels, other.labels]),  # type: ignore[list-item]
                calibration.costs,
            ),
        ),
    }
    with pytest.raises(ValidationError, match="different inputs"):
        run_study(*pairs[case], **SMALL_STUDY, progress=False)


def _saved(trace: Trace) -> Path:
    import tempfile

    folder = Path(tempfile.mkdtemp())
    return trace.save(folder / "copy.pt")


def test_a_partial_overlap_is_dropped_from_the_test_trace_with_a_warning(
    two_traces: tuple[Trace, Trace],
) -> None:
    calibration, other = two_traces
    test = Trace(
        torch.cat([other.logits, calibration.logits[:30]]),
        torch.cat([other.labels, calibration.labels[:30]]),  # type: ignore[list-item]
        calibration.costs,
    )
    with pytest.warns(CertificateWarning, match=r"30 of the test trace's 230 rows.*other 200"):
        study = run_study(calibration, test, **SMALL_STUDY, progress=False)
    assert study.config.test_size == 400 - 150  # the pool: 200 + (230 - 30)
    assert study.params()["test_trace.shared_rows_dropped"] == "30"
    assert study.traces["test"]["inputs"] == "230"  # as given
    with warnings.catch_warnings():
        warnings.simplefilter("error", CertificateWarning)
        disjoint = run_study(calibration, other, **SMALL_STUDY, progress=False)
    assert disjoint.rows == study.rows  # the same pool, the same splits
    assert disjoint.params()["test_trace.shared_rows_dropped"] == "0"


def test_adaptix_study_cal_cal_is_refused(
    two_traces: tuple[Trace, Trace], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(two_traces[0].save(tmp_path / "cal.pt"))
    command = ["study", path, path, "--splits", "2", "--calibration-size", "100"]
    assert main([*command, "--out", str(tmp_path / "out"), "--no-mlflow"]) == 2
    error = capsys.readouterr().err
    assert "the same trace twice" in error
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------ class 9: provenance of the job's data


def test_idx_data_that_is_not_fashion_mnist_is_named_for_what_it_is(
    idx_dir: Path, tmp_path: Path
) -> None:
    config = parse_config({"data": {"directory": str(idx_dir), "calibration_size": 200}})
    loaded = datasets.load_job_data(config.data)
    source = loaded.source
    assert source.name == "IDX files (not Fashion-MNIST)"
    assert "Fashion-MNIST (Debian" not in loaded.description
    assert source.location == str(idx_dir)
    assert source.sha256 in source.params()["data.sha256"]
    assert source.rows == {"train": 500, "calibration": 200, "test": TEST_ROWS}
    assert loaded.class_names == tuple(str(c) for c in range(10))
    other = write_idx(tmp_path / "other", seed=1)
    moved = parse_config({"data": {"directory": str(other), "calibration_size": 200}})
    assert datasets.load_job_data(moved.data).source.sha256 != source.sha256


def test_fashion_mnist_is_recognised_by_its_content() -> None:
    if not (idx_data.DEFAULT_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    config = parse_config({"data": {"train_size": 20, "calibration_size": 20, "test_size": 20}})
    loaded = datasets.load_job_data(config.data)
    assert loaded.source.sha256 == idx_data.FASHION_MNIST_SHA256
    assert loaded.source.name == "Fashion-MNIST (Debian's dataset-fashion-mnist)"


TINY_CNN = {"base_channels": 4, "blocks": 2}


@pytest.fixture(scope="module")
def job_on_idx(idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("mlflow")
    tmp_path = tmp_path_factory.mktemp("provenance")
    config = parse_config(
        {
            "name": "on-idx",
            "data": {
                "directory": str(idx_dir), "train_size": 300, "calibration_size": 200,
                "test_size": 200,
            },
            "train": {"epochs": 1, "batch_size": 64, "workers": 1},
            "models": [{"name": "s", "head": "linear", "backbone_params": TINY_CNN}],
            "sweep": {
                "criteria": ["confidence", "pcee"], "delta_min": 0.6, "delta_max": 0.8,
                "delta_step": 0.1, "stress_scales": [2.0],
            },
            "runtime": {"enabled": False},
            "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache"),
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "idx"},
        }
    )  # fmt: skip
    return run_job(config, log=lambda _: None)


def test_the_report_and_every_mlflow_run_name_the_data_loaded(job_on_idx: Any) -> None:
    import mlflow

    source = job_on_idx.source
    assert source is not None
    assert source.name == "IDX files (not Fashion-MNIST)"
    report = job_on_idx.report
    assert "Fashion-MNIST (Debian" not in report
    assert f"IDX files (not Fashion-MNIST) from {source.location}" in report
    assert source.sha256[:16] in report
    client = mlflow.MlflowClient(tracking_uri=job_on_idx.tracking_uri)
    experiment = client.get_experiment_by_name("idx")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    assert len(runs) > 3  # the parent, the model, its frontier points and certified policies
    for run in runs:
        params = run.data.params
        assert params["data.sha256"] == source.sha256, run.info.run_name
        assert params["data.source"] == source.name
        assert params["data.location"] == source.location
        assert params["data.test_rows"] == "200"
    for run_id in (
        job_on_idx.parent_run_id,
        *[r.info.run_id for r in runs if r.info.run_name == "s"],
    ):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        contexts = {
            tag.value for item in inputs for tag in item.tags if tag.key == "mlflow.data.context"
        }
        assert contexts == {"train", "calibration", "test"}
        assert {item.dataset.digest for item in inputs} == {source.sha256[:36]}
        assert all(str(source.location) in item.dataset.source for item in inputs)
