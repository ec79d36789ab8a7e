"""Every script in ``examples/`` runs to completion (on small settings) and says what it did.

Each runs in a subprocess from a temporary working directory, as a user would run it, so that
nothing it writes (MLflow stores, figures) lands in the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    return run_python(str(EXAMPLES / name), *args, cwd=cwd)


def run_pytest(*args: str, cwd: Path) -> str:
    return run_python("-m", "pytest", "-p", "no:cacheprovider", "-q", *args, cwd=cwd)


def run_python(*args: str, cwd: Path) -> str:
    """``python *args`` as a user runs it; its output, after asserting that it succeeded."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_example_is_tested() -> None:
    tested = {"custom_criterion.py", "log_sweep_to_mlflow.py", "wrap_your_model.py"}
    tested |= {"minilm_bbc_news.py", "measure_recipe.py", "monitor_shift.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested
    suites = {"user_test_suite"}  # example test suites, run by pytest (test_user_test_suite)
    assert {path.name for path in EXAMPLES.iterdir() if path.is_dir()} - {"__pycache__"} == suites


@pytest.mark.slow
def test_user_test_suite(tmp_path: Path) -> None:
    """The user's suite passes as its docstring says to run it: a saved run, then a run compared
    against it with the ratio gate on (a loose tolerance: two busy cores are noisy)."""
    storage = f"--benchmark-storage={tmp_path / 'benchmarks'}"
    suite = str(EXAMPLES / "user_test_suite")
    first = run_pytest(suite, storage, "--benchmark-autosave", cwd=tmp_path)
    assert "5 passed" in first
    assert "adaptix: early-exit speed" in first
    assert "adaptix: control checks" in first
    second = run_pytest(
        suite,
        storage,
        "--benchmark-compare",
        "--adaptix-ratio-fail=90%",
        "-k",
        "test_early_exit_speed",
        cwd=tmp_path,
    )
    assert "1 passed" in second
    assert "ok: realised/ideal" in second  # compared with the saved run, within the gate


def test_custom_criterion(tmp_path: Path) -> None:
    out = run_example("custom_criterion.py", cwd=tmp_path)
    assert "topk_mass" in out


@pytest.mark.slow  # 20-60 s: an SQLite MLflow store per sweep point; `make test-slow`
@pytest.mark.skipif(find_spec("mlflow") is None, reason="needs the mlflow extra")
def test_log_sweep_to_mlflow(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run_example("log_sweep_to_mlflow.py", store, str(tmp_path / "figures"), cwd=tmp_path)
    assert "logged" in out
    assert list((tmp_path / "figures").iterdir())


@pytest.mark.slow
def test_monitor_shift(tmp_path: Path) -> None:
    out = run_example("monitor_shift.py", "--train-size", "3000", "--epochs", "1", cwd=tmp_path)
    assert "clean stream: 5000 inputs" in out
    assert "alarm: False" in out  # nothing moved on clean data
    assert "noisy stream: ALARM after" in out
    assert "re-certified:" in out
    assert "noisy stream, recalibrated pcee: early accuracy" in out


@pytest.mark.slow
def test_wrap_your_model(tmp_path: Path) -> None:
    out = run_example("wrap_your_model.py", "--train-size", "1000", "--epochs", "1", cwd=tmp_path)
    assert "same exits as the simulation" in out


@pytest.mark.slow
def test_minilm_bbc_news(tmp_path: Path) -> None:
    pytest.importorskip("adaptix_transformers")
    pytest.importorskip("transformers")
    args = ["--limit", "160", "--max-length", "32", "--epochs", "5", "--batch-size", "16"]
    out = run_example("minilm_bbc_news.py", *args, cwd=tmp_path)
    assert "runner exits == simulate: True" in out


@pytest.mark.slow
def test_measure_recipe(tmp_path: Path) -> None:
    out = run_example(
        "measure_recipe.py", "ls_1c_w", "--epochs", "1", "--train-size", "300",
        "--out", str(tmp_path / "r.jsonl"), cwd=tmp_path,
    )  # fmt: skip
    assert "validation accuracy per exit" in out
    record = json.loads((tmp_path / "r.jsonl").read_text())
    assert record["train_size"] == 300
    assert len(record["val_accuracy"]) == 3  # the small model's exits
    assert all(0 <= a <= 1 for a in record["val_accuracy"])
