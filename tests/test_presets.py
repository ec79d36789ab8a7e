"""The shipped job configurations (``--preset``), and each of them run end to end on tiny
settings; training in worker processes gives the weights training in the job's process does."""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from adaptix import ConfigError
from adaptix.cli import main
from adaptix.core.cache import ModelCache
from adaptix.experiment import JobResult, load_config, run_job, training
from adaptix.experiment.config import (
    PRESETS_DIR,
    JobConfig,
    parse_config,
    preset_names,
    preset_path,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # the backport, a dependency on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_the_presets_are_the_toml_files_shipped_with_the_package() -> None:
    assert preset_names() == ["bbc-minilm", "fashion-mnist", "smollm2-bbc"]
    for name in preset_names():
        path = preset_path(name)
        assert path == PRESETS_DIR / f"{name}.toml"
        assert path.is_file()
    # Installed copies carry them: every preset matches the package data of pyproject.toml.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["adaptix"]
    for name in preset_names():
        relative = preset_path(name).relative_to(ROOT / "adaptix").as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


def test_the_fashion_mnist_preset_is_the_default_job() -> None:
    assert load_config(preset="fashion-mnist") == load_config() == JobConfig()


def test_the_bbc_preset_is_minilm_truncated_on_bbc_news() -> None:
    config = load_config(preset="bbc-minilm")
    assert config.data.dataset == "bbc-news"
    assert [m.backbone for m in config.models] == ["transformers"] * 3
    assert [m.backbone_params["num_layers"] for m in config.models] == [2, 4, 6]
    assert {m.backbone_params["model"] for m in config.models} == {"all-MiniLM-L6-v2"}
    assert config.train.mode == "frozen"
    assert not config.train.augment


def test_an_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(
        ConfigError, match=r"no preset named 'mnist'.*'bbc-minilm', 'fashion-mnist', 'smollm2"
    ):
        load_config(preset="mnist")
    with pytest.raises(ConfigError, match="no preset named"):
        preset_path("../presets/fashion-mnist")


def test_a_file_and_a_preset_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text('name = "mine"\n')
    assert load_config(path).name == "mine"
    with pytest.raises(ConfigError, match="not both"):
        load_config(path, preset="fashion-mnist")


def test_cli_config_prints_a_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--preset", "bbc-minilm"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["data"]["dataset"] == "bbc-news"
    assert shown["name"] == load_config(preset="bbc-minilm").name
    assert [m["backbone_params"]["num_layers"] for m in shown["models"]] == [2, 4, 6]


@pytest.mark.parametrize("command", ["config", "run"])
def test_cli_refuses_an_unknown_preset_with_the_names(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--preset", "nope"]) == 2
    captured = capsys.readouterr()
    assert "adaptix: error: no preset named 'nope'" in captured.err
    assert "bbc-minilm" in captured.err
    assert "fashion-mnist" in captured.err
    assert captured.out == ""


def test_cli_refuses_a_file_with_a_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.toml"
    path.write_text('name = "mine"\n')
    assert main(["config", str(path), "--preset", "bbc-minilm"]) == 2
    assert "not both" in capsys.readouterr().err


# ------------------------------------------------------------------- presets on tiny settings


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, table by table."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merged(base[key], value) if nested else value
    return out


def tiny(preset: str, tmp_path: Path, **override: Any) -> JobConfig:
    """The preset's file with small splits, one epoch, a short δ grid, no MLflow."""
    raw = tomllib.loads(preset_path(preset).read_text())
    small = {
        "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
        "tracking": {"enabled": False},
        "threads": 1,
        # Worker processes have a test of their own; in this process the data loads once.
        "train": {"epochs": 1, "workers": 1},
        "sweep": {"delta_min": 0.6, "delta_max": 0.9, "delta_step": 0.1, "stress_scales": [2.0]},
        "runtime": {"thresholds": [0.8], "repeats": 1, "batch_size": 64},
    }
    return parse_config(merged(merged(raw, small), override), f"tiny {preset}")


def check_report(result: JobResult) -> str:
    """The report on disk has the summary with both claims and a verdict per target, and the
    runtime agrees with the simulation."""
    report = (result.output_dir / "report.md").read_text()
    assert report == result.report
    summary = report.split("## Summary\n", 1)[1].split("\n## ", 1)[0]
    names = list(result.models)
    smallest, largest = names[0], names[-1]
    assert summary.startswith(f"- **Control.** On {largest}, ")
    assert f"- **Scale.** At {smallest}'s cost" in summary
    table = [line for line in summary.splitlines() if line.startswith("|")]
    assert [cell.strip() for cell in table[0].strip("|").split("|")] == [
        "target",
        "measured",
        "verdict",
    ]
    verdicts = table[2:]
    assert len(verdicts) == 5
    assert all(line.rstrip(" |").endswith(("met", "**missed**")) for line in verdicts)
    assert result.runtime
    assert all(point.agrees_with_simulation for point in result.runtime)
    assert result.exit_times is not None
    assert len(result.exit_times.block) == len(result.models[largest].exit_accuracy)
    assert "| NO " not in report
    return report


@pytest.mark.slow
def test_the_fashion_mnist_preset_runs_on_tiny_settings(tmp_path: Path) -> None:
    config = tiny(
        "fashion-mnist",
        tmp_path,
        data={"train_size": 300, "calibration_size": 200, "test_size": 200},
    )
    result = run_job(config, log=lambda _: None)
    check_report(result)
    assert list(result.models) == ["small", "medium", "large"]
    assert [len(o.exit_accuracy) for o in result.models.values()] == [3, 6, 10]
    assert all(o.test_trace.num_inputs == 200 for o in result.models.values())


@pytest.mark.slow
def test_the_bbc_preset_runs_on_tiny_settings(tmp_path: Path) -> None:
    raw = tomllib.loads(preset_path("bbc-minilm").read_text())
    first = raw["models"][0]
    models = [
        {**first, "name": name, "backbone_params": {**first["backbone_params"], "num_layers": n}}
        for name, n in (("two", 2), ("three", 3))
    ]
    config = tiny(
        "bbc-minilm",
        tmp_path,
        data={"calibration_size": 60, "test_size": 40, "train_size": 60, "max_length": 32},
        models=models,
    )
    assert config.data.dataset == "bbc-news"
    result = run_job(config, log=lambda _: None)
    report = check_report(result)
    assert "BBC News" in report
    outcomes = result.models
    assert {name: len(o.exit_accuracy) for name, o in outcomes.items()} == {"two": 2, "three": 3}
    assert {name: o.test_trace.num_exits for name, o in outcomes.items()} == {"two": 2, "three": 3}
    # Truncations of one encoder: the first exits cost the same, each layer adds as much.
    two, three = outcomes["two"].profile.exit_costs, outcomes["three"].profile.exit_costs
    assert two[:2] == pytest.approx(three[:2])
    assert three[2] - three[1] == pytest.approx(two[1] - two[0], rel=1e-3)
    assert all(o.test_trace.num_inputs == 40 for o in outcomes.values())


TINY_FAMILY = [
    {"name": "s", "backbone_params": {"base_channels": 4, "blocks": 2}, "head": "linear"},
    {"name": "l", "backbone_params": {"base_channels": 4, "blocks": 3}, "head": "linear"},
]


def tiny_fashion(tmp_path: Path, **override: Any) -> JobConfig:
    return tiny(
        "fashion-mnist",
        tmp_path,
        **{
            "data": {"train_size": 200, "calibration_size": 100, "test_size": 100},
            "models": TINY_FAMILY,
            **override,
        },
    )


@pytest.mark.slow
def test_workers_train_in_processes_and_give_the_weights_of_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = run_job(
        tiny_fashion(tmp_path / "one", train={"epochs": 1, "workers": 1}), log=lambda _: None
    )

    def no_training_here(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trained in the job's process")

    # Spawned workers import the job afresh: only this process loses train_exits.
    monkeypatch.setattr(training, "train_exits", no_training_here)
    lines: list[str] = []
    config = tiny_fashion(tmp_path / "two", train={"epochs": 1, "workers": 2})
    two = run_job(config, log=lines.append)
    assert any(line.startswith("training l, s in 2 processes") for line in lines), lines
    for name in ("s", "l"):
        assert one.models[name].exit_accuracy == two.models[name].exit_accuracy
        assert not two.models[name].cached
        assert two.models[name].trained_seconds is not None
        spec = next(m for m in config.models if m.name == name)
        key = training.model_cache_key(spec, config, two.source)
        first = ModelCache(tmp_path / "one" / "cache").load(name, key)
        second = ModelCache(tmp_path / "two" / "cache").load(name, key)
        assert first is not None
        assert second is not None
        assert first[0].keys() == second[0].keys()
        assert all(torch.equal(first[0][k], second[0][k]) for k in first[0])
    check_report(two)


@pytest.mark.slow
def test_a_family_with_a_one_exit_model_runs_or_is_refused_before_training(
    tmp_path: Path,
) -> None:
    family = [
        {**TINY_FAMILY[0], "backbone_params": {"base_channels": 4, "blocks": 1}},
        TINY_FAMILY[1],
    ]
    try:
        config = tiny_fashion(tmp_path, models=family, train={"epochs": 1, "workers": 1})
    except ConfigError:
        return  # refused up front: also fine
    result = run_job(config, log=lambda _: None)
    assert len(result.models["s"].exit_accuracy) == 1
    assert result.models["s"].certified == {}  # nothing to certify: no early exit exists
    assert result.models["l"].certified  # the others still are
    check_report(result)
