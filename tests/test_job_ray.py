"""The main job's ``[ray]`` section: tracing on an actor pool and sweeps counted by shard on a
local 2-CPU Ray cluster give the traces and frontiers of the same job run in this process."""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_experiment import TINY, _config

import adaptix
from adaptix.errors import ConfigError
from adaptix.experiment import job, run_job, training
from adaptix.experiment.config import RayConfig, parse_config
from adaptix.experiment.datasets import DataSource, JobData, Split

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="needs Ray Data: pip install 'adaptix[ray]'",
)


def test_the_ray_section_is_optional_and_checked() -> None:
    assert parse_config(TINY).ray is None
    settings = parse_config({**TINY, "ray": {}}).ray
    assert settings is not None
    assert (settings.address, settings.workers, settings.batch_size) == ("local", 2, 256)
    for address in ("auto", "ray://head.example:10001"):
        ray_section = parse_config({**TINY, "ray": {"address": address}}).ray
        assert ray_section is not None
        assert ray_section.address == address
    for bad in ("localhost:6379", "ray://", "http://head:8265"):
        with pytest.raises(ConfigError, match=r"ray\.address: .*\"ray://host:port\""):
            parse_config({**TINY, "ray": {"address": bad}})
    with pytest.raises(ConfigError, match=r"ray\.workers"):
        parse_config({**TINY, "ray": {"workers": 0}})
    with pytest.raises(ConfigError, match=r"ray\.batch_size"):
        parse_config({**TINY, "ray": {"batch_size": 0}})
    with pytest.raises(ConfigError, match=r"ray\.port"):
        parse_config({**TINY, "ray": {"port": 1}})


def test_text_datasets_are_refused_on_ray() -> None:
    with pytest.raises(ConfigError, match="dicts of token tensors: remove the ray section"):
        parse_config({**TINY, "data": {"dataset": "bbc-news"}, "ray": {}})


@pytest.fixture(scope="module")
def loopback() -> Iterator[None]:
    """Ray started by the job binds 127.0.0.1 only, and sends no usage statistics."""
    saved = {name: os.environ.get(name) for name in _RAY_ENV}
    os.environ.update(_RAY_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _same_point(got: dict[str, str], expected: dict[str, str]) -> bool:
    """Equal strings, or floats within 1e-12 (the counts are exact; a calibration's float sums
    can differ by summation order)."""
    if got.keys() != expected.keys():
        return False
    for key, value in expected.items():
        if got[key] == value:
            continue
        try:
            if abs(float(got[key]) - float(value)) > 1e-12:
                return False
        except ValueError:
            return False
    return True


@needs_ray
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_job_on_ray_gives_the_traces_and_frontiers_of_the_job_in_process(
    tmp_path: Path, loopback: None
) -> None:
    import ray

    settings = {
        "tracking": {"enabled": False},
        "runtime": {"enabled": False},
        "cache_dir": str(tmp_path / "cache"),  # the second job loads the first one's models
    }
    local = run_job(_config(tmp_path / "local", **settings), log=lambda _: None)
    on_ray = run_job(
        _config(
            tmp_path / "ray",
            **settings,
            ray={"address": "local", "workers": 2, "batch_size": 128},
        ),
        log=lambda _: None,
    )
    assert not ray.is_initialized()  # the job started Ray, so it shut it down
    weights = sorted(p.name for p in (on_ray.output_dir / "ray").iterdir())
    assert weights == ["model-l.pt", "model-s.pt"]  # what the actors loaded
    assert not (local.output_dir / "ray").exists()
    assert list(on_ray.models) == list(local.models)
    for name, outcome in on_ray.models.items():
        assert outcome.cached
        for path, expected_path in zip(
            outcome.trace_paths, local.models[name].trace_paths, strict=True
        ):
            got, expected = adaptix.Trace.load(path), adaptix.Trace.load(expected_path)
            assert got.num_inputs == expected.num_inputs == 300
            # float32 rounding differs in another process; another model's would differ by O(1).
            assert torch.allclose(got.logits, expected.logits, atol=1e-4, rtol=1e-4), path.name
            assert got.labels is not None
            assert expected.labels is not None
            assert torch.equal(got.labels, expected.labels)
            assert torch.equal(got.costs, expected.costs)
            assert got.meta == expected.meta
    frontiers = sorted(p.name for p in local.output_dir.glob("frontier-*.csv"))
    assert frontiers == sorted(p.name for p in on_ray.output_dir.glob("frontier-*.csv"))
    # Two models, natural and logits × 2, on the paper's bins and on survivor bins.
    assert len(frontiers) == 8
    for file in frontiers:
        got_rows, expected_rows = _rows(on_ray.output_dir / file), _rows(local.output_dir / file)
        assert len(got_rows) == len(expected_rows) > 0, file
        for got_row, expected_row in zip(got_rows, expected_rows, strict=True):
            assert _same_point(got_row, expected_row), (file, got_row, expected_row)


@needs_ray
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_unreachable_cluster_is_a_config_error(loopback: None) -> None:
    import ray

    unreachable = RayConfig(address="ray://127.0.0.1:1")
    with (
        pytest.raises(ConfigError, match=r"ray\.address 'ray://127\.0\.0\.1:1'"),
        job.ray_session(unreachable),
    ):
        pass
    assert not ray.is_initialized()


@needs_ray
def test_inputs_that_are_not_one_tensor_are_refused_before_ray_runs(tmp_path: Path) -> None:
    """A tokenizer's dict of tensors cannot travel as one tensor column: a clear error, raised
    before any dataset is built (no cluster is started here)."""
    config = _config(tmp_path, ray={})
    spec = config.models[0]
    model = training.build_untrained(spec, 10, 0, adaptix.get_plugin_manager())
    tokens = {"input_ids": torch.zeros(12, 8, dtype=torch.long)}
    split = Split(tokens, torch.zeros(12, dtype=torch.long))
    source = DataSource("tokens", "memory", "0" * 64, {"train": 12, "calibration": 12, "test": 12})
    data = JobData("bbc-news", "", tuple("abcdefghij"), split, split, split, source)
    assert config.ray is not None
    with pytest.raises(ConfigError, match="got dict: remove the ray section"):
        job.trace_on_ray(model, spec, data, config, config.ray)
