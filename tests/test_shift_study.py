"""`adaptix shift-study` (`adaptix.experiment.shift_study`): the study's numbers on synthetic
labelled traces, its targets, its files, its MLflow runs, its validation and its command line.

The traces are built here from random logits (four exits, five classes): later exits are more
confident and more accurate, and class c's signal grows with c, so class 0 is the hardest and a
class-prior shift towards it lowers early accuracy. A Gaussian-noise shift adds noise to every
logit of the clean test trace, which pushes early accuracy well below δ and moves the exit-0
confidences (what the monitor watches). The study itself is the library's; nothing is trained.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from test_experiment import check_table, markdown_tables

import adaptix
from adaptix import Trace, ValidationError
from adaptix.cli import _cmd_shift_study, build_parser, main
from adaptix.core.scores import prediction
from adaptix.experiment import shift_job as shift_job_module
from adaptix.experiment.shift_plots import write_plots
from adaptix.experiment.shift_study import (
    Recalibrated,
    ShiftCell,
    ShiftedSplit,
    ShiftStudyResult,
    StudySettings,
    log_shift_study,
    run_shift_study,
)
from adaptix.experiment.shifts import DEFAULT_SEVERITIES, class_prior_weights, hardest_classes

EXITS = 4
CLASSES = 5
ROWS = 3000
DELTA = 0.85
NOISE = 2.0
BOOST = 8.0
#: Small enough for seconds, large enough that the noise shift is detected on every stream.
SMALL = StudySettings(
    delta=DELTA,
    streams=30,
    null_length=3000,
    delay_length=3000,
    check_inputs=50,
    feedback=(100, 200),
    proxy_size=200,
    repeats=5,
)
MODES = ["none", "recal n=100", "guarantee n=100", "recal n=200", "guarantee n=200", "proxy"]
PNGS = ["shift-detection.png", "shift-early-accuracy.png", "shift-evidence.png"]


def labelled_trace(rows: int, seed: int, *, exits: int = EXITS, classes: int = CLASSES) -> Trace:
    """Logits from a shared and a per-exit Gaussian plus a push towards the true class that grows
    with the exit and with the class index (class 0 is the hardest); costs 1, 2, ..."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (rows,), generator=generator)
    ease = (0.5 + 0.25 * labels.unsqueeze(1)) * (1.5 - torch.rand(rows, 1, generator=generator))
    depth = torch.linspace(1.5, 6.0, exits).unsqueeze(0)
    shared = torch.randn(rows, 1, classes, generator=generator)
    own = torch.randn(rows, exits, classes, generator=generator)
    truth = torch.nn.functional.one_hot(labels, classes).unsqueeze(1).float()
    logits = 1.2 * shared + 1.2 * own + (ease * depth).unsqueeze(2) * truth
    return adaptix.Trace(logits, labels, torch.arange(1, exits + 1, dtype=torch.float64))


def noisy(trace: Trace, scale: float, seed: int = 3) -> Trace:
    """``trace`` with Gaussian noise of std ``scale`` added to every logit."""
    generator = torch.Generator().manual_seed(seed)
    noise = scale * torch.randn(trace.logits.shape, generator=generator)
    return adaptix.Trace(trace.logits + noise, trace.labels, trace.costs)


@pytest.fixture(scope="module")
def traces() -> tuple[Trace, Trace]:
    """(calibration, test): two draws of the same distribution."""
    return labelled_trace(ROWS, seed=1), labelled_trace(ROWS, seed=2)


@pytest.fixture(scope="module")
def splits(traces: tuple[Trace, Trace]) -> list[ShiftedSplit]:
    """A harmful noise shift, a "shift" that is the clean test split itself, and a class-prior
    shift boosting the class hardest at exit 0 on the calibration split (as `shift_job` picks)."""
    calibration, test = traces
    assert calibration.labels is not None
    assert test.labels is not None
    right = prediction(calibration.logits[:, 0]) == calibration.labels
    hardest = hardest_classes(calibration.labels, right, 1)
    assert hardest == [0]  # the generator makes class 0 the hardest
    return [
        ShiftedSplit("gaussian_noise", NOISE, noisy(test, NOISE)),
        ShiftedSplit("identical", 0.0, test),
        ShiftedSplit("class_prior", BOOST, test, class_prior_weights(test.labels, BOOST, hardest)),
    ]


@pytest.fixture(scope="module")
def study(traces: tuple[Trace, Trace], splits: list[ShiftedSplit]) -> ShiftStudyResult:
    calibration, test = traces
    return run_shift_study(calibration, test, splits, SMALL, progress=False)


def cell_of(result: ShiftStudyResult, kind: str) -> ShiftCell:
    return next(c for c in result.cells if c.kind == kind)


# ----------------------------------------------------------------------------- the measurements


def test_unshifted_streams_alarm_no_more_often_than_alpha_allows(
    study: ShiftStudyResult,
) -> None:
    st = study.settings
    assert len(study.null_peak_margin) == st.streams
    assert study.false_alarms == sum(peak >= 0 for peak in study.null_peak_margin)
    assert study.false_alarm_rate == study.false_alarms / st.streams
    # α plus the one-sided 95 % noise of 30 streams: at most 3 of them.
    assert study.alarm_band == pytest.approx(0.05 + 1.645 * math.sqrt(0.05 * 0.95 / 30))
    assert study.false_alarms <= math.floor(study.alarm_band * st.streams) == 3
    # The plotted null trajectories: the first 20 streams, over the shifted streams' length.
    null_paths = study.paths["null"]
    assert len(null_paths) == 20
    assert {len(path) for path in null_paths} == {st.delay_length // st.check_inputs}
    assert all(max(path) <= max(study.null_peak_margin) for path in null_paths)


def test_a_harmful_shift_is_detected_and_the_clean_split_is_not(study: ShiftStudyResult) -> None:
    st = study.settings
    shifted = cell_of(study, "gaussian_noise")
    assert shifted.early_accuracy < DELTA - 0.02  # harmful: the second target counts it
    assert math.isfinite(shifted.median_delay)
    assert st.check_inputs <= shifted.median_delay <= 2000
    assert shifted.median_delay % st.check_inputs == 0  # the monitor is checked every 50 inputs
    assert shifted.detected >= 0.9
    same = cell_of(study, "identical")
    assert same.detected <= 0.1
    assert same.median_delay == math.inf
    assert study.targets()[1][1].startswith("1/1 such shifts")
    assert set(study.paths) == {"null", "gaussian_noise 2", "identical 0", "class_prior 8"}
    assert len(study.paths["gaussian_noise 2"]) == 5
    assert max(max(path) for path in study.paths["gaussian_noise 2"]) >= math.log(1 / st.alpha)


def test_recalibration_modes_and_the_deployed_policy_on_the_clean_split(
    traces: tuple[Trace, Trace], study: ShiftStudyResult
) -> None:
    calibration, test = traces
    for cell in study.cells:
        assert [m.mode for m in cell.modes] == MODES
        for mode in cell.modes:
            assert mode.miss_rate * SMALL.repeats == pytest.approx(round(mode.miss_rate * 5))
            assert 0 <= mode.mean_early_exit_rate <= 1
    served = adaptix.simulate(test, adaptix.policy("pcee", DELTA, adaptix.calibrate(calibration)))
    assert served.early_accuracy is not None
    assert study.clean_early_accuracy == pytest.approx(served.early_accuracy, abs=1e-12)
    same = cell_of(study, "identical")
    assert same.early_accuracy == pytest.approx(served.early_accuracy, abs=1e-12)
    assert same.early_exit_rate == pytest.approx(served.early_exit_rate, abs=1e-12)
    # Held-out rows of the clean split: close to the whole split's early accuracy.
    assert same.mode("none").mean_early_accuracy == pytest.approx(served.early_accuracy, abs=0.01)
    # Under the harmful shift the deployed policy misses δ on every repeat; re-certifying on
    # 200 labelled shifted inputs brings it back above δ.
    shifted = cell_of(study, "gaussian_noise")
    assert shifted.mode("none").miss_rate == 1.0
    assert shifted.mode("none").mean_early_accuracy == pytest.approx(
        shifted.early_accuracy, abs=0.01
    )
    certified = shifted.mode("guarantee n=200")
    assert certified.mean_early_accuracy > DELTA
    assert certified.miss_rate == 0.0


def test_the_same_seed_gives_the_same_study_and_another_seed_another(
    traces: tuple[Trace, Trace], splits: list[ShiftedSplit], study: ShiftStudyResult
) -> None:
    calibration, test = traces
    again = run_shift_study(calibration, test, splits, SMALL, progress=False)
    # Through JSON: NaN != NaN would make equal dictionaries compare unequal.
    assert json.dumps(again.to_dict()) == json.dumps(study.to_dict())
    assert again.paths == study.paths
    other = run_shift_study(calibration, test, splits, replace(SMALL, seed=1), progress=False)
    assert other.null_peak_margin != study.null_peak_margin
    assert other.to_dict()["cells"] != study.to_dict()["cells"]


def test_a_class_prior_cell_weighs_the_population_by_the_shift(
    traces: tuple[Trace, Trace], splits: list[ShiftedSplit], study: ShiftStudyResult
) -> None:
    calibration, test = traces
    weights = splits[2].weights
    assert weights is not None
    served = adaptix.simulate(test, adaptix.policy("pcee", DELTA, adaptix.calibrate(calibration)))
    early = (served.exit_index < EXITS - 1).double()
    assert test.labels is not None
    right = served.predictions.eq(test.labels).double()
    expected = float((weights * early * right).sum() / (weights * early).sum())
    cell = cell_of(study, "class_prior")
    assert cell.early_accuracy == pytest.approx(expected, rel=1e-12)
    assert cell.early_exit_rate == pytest.approx(float((weights * early).sum()), rel=1e-12)
    assert served.early_accuracy is not None
    assert served.early_accuracy - expected > 0.05  # boosting the hardest class hurts
    assert cell.detected >= 0.9  # and moves the exit-0 confidences enough to alarm


def test_class_prior_early_accuracy_is_measured_on_the_shifted_population(
    traces: tuple[Trace, Trace], splits: list[ShiftedSplit]
) -> None:
    calibration, test = traces
    settings = replace(
        SMALL, streams=2, null_length=500, delay_length=500, feedback=(1000,), proxy_size=1000
    )
    result = run_shift_study(calibration, test, [splits[2]], settings, progress=False)
    cell = result.cells[0]
    # The deployed policy does not change between repeats: held-out rows of the shifted
    # population must give its early accuracy up to sampling noise (measured: 0.936 against
    # 0.875 on the population).
    assert cell.mode("none").mean_early_accuracy == pytest.approx(cell.early_accuracy, abs=0.02)


# ------------------------------------------------------------------------------------ targets


def made_cell(
    kind: str,
    early_accuracy: float,
    median_delay: float,
    *,
    feedback: tuple[int, ...] = (250, 500, 1000),
    miss: dict[str, float] | None = None,
    accuracy: dict[str, float] | None = None,
) -> ShiftCell:
    """A cell built by hand: every mode at early accuracy 0.9 and miss rate 0 unless ``miss`` or
    ``accuracy`` say otherwise."""
    names = ["none", *(f"{w} n={n}" for n in feedback for w in ("recal", "guarantee")), "proxy"]
    miss, accuracy = miss or {}, accuracy or {}
    modes = tuple(
        Recalibrated(name, accuracy.get(name, 0.9), miss.get(name, 0.0), 0.5) for name in names
    )
    return ShiftCell(kind, 2.0, early_accuracy, 0.5, median_delay, 1.0, modes)


def made_result(
    cells: list[ShiftCell], false_alarms: int = 10, settings: StudySettings | None = None
) -> ShiftStudyResult:
    st = settings or StudySettings()
    return ShiftStudyResult(st, 0.95, false_alarms, [-10.0, -5.0, 1.0], cells)


def test_targets_follow_the_numbers() -> None:
    """Defaults: α = 0.05 over 200 streams, δ = 0.9, 100 repeats (band 0.0859), feedback up to
    1,000. Each target flips on its own number and on nothing else."""
    harmful = made_cell(
        "contrast",
        0.85,
        1500.0,
        miss={"guarantee n=1000": 0.08, "guarantee n=250": 0.5, "none": 1.0},
    )
    harmless = made_cell("rotation", 0.95, math.inf)  # slow, but it does not push below δ
    met = made_result([harmful, harmless]).targets()
    assert len(met) == 3
    assert [ok for _, _, ok in met] == [True, True, True]
    assert met[0][1] == "10/200 = 0.050"
    assert met[1][1] == "1/1 such shifts; slowest median 1500 inputs"
    assert met[2][1] == "worst miss rate over the shifts 0.080"
    assert "1,000 inputs" in met[2][0]
    assert "0.086" in met[2][0]

    def flags(result: ShiftStudyResult) -> list[bool]:
        return [ok for _, _, ok in result.targets()]

    assert flags(made_result([harmful, harmless], false_alarms=11)) == [False, True, True]
    for delay in (2064.0, math.inf):
        slow = replace(harmful, median_delay=delay)
        assert flags(made_result([slow, harmless])) == [True, False, True]
    never = made_result([replace(harmful, median_delay=math.inf), harmless]).targets()[1][1]
    assert never.startswith("0/1 such shifts")
    missing = made_cell("contrast", 0.85, 1500.0, miss={"guarantee n=1000": 0.1})
    assert flags(made_result([missing, harmless])) == [True, True, False]
    # A miss rate just inside the band of 100 repeats still meets the third target.
    inside = made_cell("contrast", 0.85, 1500.0, miss={"guarantee n=1000": 0.085})
    assert flags(made_result([inside, harmless])) == [True, True, True]
    failing = made_result([harmful, harmless], false_alarms=11).to_markdown()
    assert re.search(r"\| NO +\|", failing)
    assert not re.search(r"\| NO +\|", made_result([harmful, harmless]).to_markdown())


# ----------------------------------------------------------------------------------- the files


def written_result() -> ShiftStudyResult:
    """Two cells: one detected; one never detected, whose recalibrated policy never exits
    early (NaN early accuracy). Settings small so the plots have something to draw."""
    st = replace(SMALL, delta=0.9)
    detected = made_cell("gaussian_noise", 0.8, 450.0, feedback=st.feedback)
    undetected = made_cell(
        "contrast", 0.88, math.inf, feedback=st.feedback, accuracy={"recal n=100": math.nan}
    )
    result = made_result([detected, undetected], false_alarms=1, settings=st)
    result.paths = {
        "null": [[-1.0, -2.0, -3.0]],
        "gaussian_noise 2": [[0.5, 2.0, 4.0]],
        "contrast 2": [[-0.5, -1.0, -1.5]],
    }
    return result


def test_write_puts_the_tables_the_json_and_three_plots(tmp_path: Path) -> None:
    result = written_result()
    folder = tmp_path / "out"
    written = [*result.write(folder), *write_plots(result, folder)]
    assert written == [folder / "shift-study.md", folder / "shift-study.json"] + [
        folder / name for name in PNGS
    ]
    for name in PNGS:
        data = (folder / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), name
        assert len(data) > 1000, name

    def no_constants(name: str) -> Any:
        raise AssertionError(f"{name} in the JSON")

    document = json.loads((folder / "shift-study.json").read_text(), parse_constant=no_constants)
    assert document["false_alarms"] == 1
    assert document["settings"]["feedback"] == [100, 200]
    detected, undetected = document["cells"]
    assert detected["median_delay"] == 450.0
    assert undetected["median_delay"] is None
    modes = {m["mode"]: m for m in undetected["modes"]}
    assert list(modes) == MODES
    assert modes["recal n=100"]["mean_early_accuracy"] is None
    assert modes["none"]["mean_early_accuracy"] == 0.9
    assert [t["met"] for t in document["targets"]] == [ok for _, _, ok in result.targets()]

    markdown = (folder / "shift-study.md").read_text()
    assert markdown == result.to_markdown()
    assert "> 3,000" in markdown  # the undetected cell's delay
    assert "no early exit (0.00)" in markdown  # the NaN mode, as the table prints it
    tables = markdown_tables(markdown)
    assert [len(t[0].split("|")) - 2 for t in tables] == [3, 5 + len(MODES)]
    assert [len(t) - 2 for t in tables] == [3, 2]
    for table in tables:
        check_table(table)


def test_the_study_s_own_markdown_tables_are_well_formed(study: ShiftStudyResult) -> None:
    tables = markdown_tables(study.to_markdown())
    assert len(tables) == 2
    assert len(tables[1]) == 2 + len(study.cells)
    for table in tables:
        check_table(table)


# ---------------------------------------------------------------------------------- validation


def relabelled(trace: Trace, labels: torch.Tensor | None) -> Trace:
    return adaptix.Trace(trace.logits, labels, trace.costs)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unlabelled calibration", "expected labelled traces"),
        ("unlabelled test", "expected labelled traces"),
        ("unlabelled shifted split", "expected labelled traces"),
        ("shifted split of other exits", "same exits and classes"),
        ("test split of other classes", "same exits and classes"),
        ("feedback larger than the test split", "to have at least"),
        ("proxy larger than the test split", "to have at least"),
    ],
)
def test_what_cannot_make_a_study_is_a_validation_error(case: str, message: str) -> None:
    calibration, test = labelled_trace(400, seed=1), labelled_trace(400, seed=2)
    shifted = noisy(test, 1.0)
    settings = replace(SMALL, streams=2, null_length=200, delay_length=200, feedback=(100,))
    settings = replace(settings, proxy_size=100, repeats=1)
    if case == "unlabelled calibration":
        calibration = relabelled(calibration, None)
    elif case == "unlabelled test":
        test = relabelled(test, None)
    elif case == "unlabelled shifted split":
        shifted = relabelled(shifted, None)
    elif case == "shifted split of other exits":
        shifted = labelled_trace(400, seed=3, exits=EXITS - 1)
    elif case == "test split of other classes":
        test = labelled_trace(400, seed=3, classes=CLASSES + 1)
    elif case == "feedback larger than the test split":
        settings = replace(settings, feedback=(100, 301))
    else:
        settings = replace(settings, proxy_size=301)
    with pytest.raises(ValidationError, match=message):
        run_shift_study(
            calibration, test, [ShiftedSplit("noise", 1.0, shifted)], settings, progress=False
        )


def _small_shifted(test: Trace) -> list[ShiftedSplit]:
    return [ShiftedSplit("noise", 1.0, labelled_trace(100, seed=3))]


def _long_weights(test: Trace) -> list[ShiftedSplit]:
    weights = torch.full((2 * test.num_inputs,), 1 / (2 * test.num_inputs), dtype=torch.float64)
    return [ShiftedSplit("class_prior", 2.0, test, weights)]


def _clean(test: Trace) -> list[ShiftedSplit]:
    return [ShiftedSplit("identical", 0.0, test)]


@pytest.mark.parametrize(
    ("splits_of", "overrides"),
    [
        pytest.param(
            _small_shifted,
            {},
            id="shifted-split-smaller-than-the-feedback",
        ),
        pytest.param(
            _long_weights,
            {},
            id="weights-of-another-length",
        ),
        pytest.param(_clean, {"streams": 0}, id="no-streams"),
        pytest.param(_clean, {"repeats": 0}, id="no-repeats"),
        pytest.param(
            _clean,
            {"check_inputs": 600},
            id="checks-longer-than-the-stream",
        ),
        pytest.param(_clean, {"feedback": ()}, id="no-feedback"),
    ],
)
def test_settings_and_splits_out_of_range_are_validation_errors(
    splits_of: Callable[[Trace], list[ShiftedSplit]], overrides: dict[str, Any]
) -> None:
    """The docstring promises a ValidationError for settings out of range."""
    calibration, test = labelled_trace(1000, seed=1), labelled_trace(1000, seed=2)
    settings = replace(
        SMALL,
        streams=2,
        null_length=500,
        delay_length=500,
        feedback=(100,),
        proxy_size=100,
        repeats=2,
    )
    # Settings out of range are refused when made (before any data loads); splits that do not
    # fit them, when the study starts.
    try:
        settings = replace(settings, **overrides)
    except ValidationError:
        return
    with pytest.raises(ValidationError):  # the markdown too: what the command does next
        run_shift_study(calibration, test, splits_of(test), settings, progress=False).to_markdown()


def test_an_early_accuracy_of_zero_is_reported_as_zero() -> None:
    """Every served prediction wrong (labels = prediction + 1): the clean split's early
    accuracy is 0, as its cell (the same split, measured by the study's other path) says."""
    calibration = labelled_trace(1000, seed=1)
    logits = labelled_trace(1000, seed=2).logits
    deployed = adaptix.policy("pcee", DELTA, adaptix.calibrate(calibration))
    served = adaptix.simulate(adaptix.Trace(logits, None, calibration.costs), deployed)
    assert served.early_exit_rate > 0.3
    wrong = adaptix.Trace(logits, (served.predictions + 1) % CLASSES, calibration.costs)
    settings = replace(SMALL, streams=2, null_length=500, delay_length=500, repeats=1)
    result = run_shift_study(
        calibration, wrong, [ShiftedSplit("identical", 0.0, wrong)], settings, progress=False
    )
    assert result.cells[0].early_accuracy == 0.0
    assert result.clean_early_accuracy == 0.0


# ------------------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One sqlite store for the module (creating its tables takes seconds), artifacts beside."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


def logged(store: tuple[str, Path], experiment: str, result: ShiftStudyResult, out: Path) -> Any:
    """Write ``result`` into ``out``, log it to ``experiment``; (client, parent id, runs)."""
    mlflow = pytest.importorskip("mlflow")
    from adaptix.tracking import Tracker

    uri, artifacts = store
    tracker = Tracker(experiment, uri, artifact_location=str(artifacts / experiment))
    parent = log_shift_study(result, [*result.write(out), *write_plots(result, out)], tracker)
    assert tracker.failures == []
    client = mlflow.MlflowClient(uri)
    runs = list(client.search_runs([tracker.experiment_id], max_results=100))
    return client, parent, runs


def test_log_shift_study_logs_a_parent_and_a_child_per_cell(
    store: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaptix.tracking import PARENT_TAG

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    result = written_result()
    client, parent, runs = logged(store, "shift-study", result, tmp_path / "out")
    assert parent is not None
    (top,) = [r for r in runs if r.info.run_id == parent]
    assert top.info.run_name == "shift-study"
    assert top.info.status == "FINISHED"
    assert top.data.tags["adaptix.kind"] == "shift-study"
    assert top.data.params["streams"] == "30"
    assert top.data.params["feedback"] == "(100, 200)"
    assert top.data.metrics["false_alarm_rate"] == pytest.approx(1 / 30)
    assert top.data.metrics["false_alarms"] == 1.0
    met = [float(ok) for _, _, ok in result.targets()]
    assert [top.data.metrics[f"target_{i}_met"] for i in range(3)] == met
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert artifacts == {"shift-study.md", "shift-study.json", *PNGS}

    children = {r.info.run_name: r for r in runs if r.data.tags.get(PARENT_TAG) == parent}
    assert set(children) == {"gaussian_noise-2", "contrast-2"}
    assert len(runs) == 3
    detected, undetected = children["gaussian_noise-2"], children["contrast-2"]
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert detected.data.params == {"shift": "gaussian_noise", "severity": "2.0"}
    assert detected.data.metrics["median_delay"] == 450.0
    assert detected.data.metrics["early_accuracy"] == 0.8
    assert detected.data.metrics["recal_n100_early_accuracy"] == 0.9
    assert detected.data.metrics["guarantee_n200_miss_rate"] == 0.0
    # Undefined numbers are left out, not logged as NaN (or as MLflow's stand-in for inf).
    assert "median_delay" not in undetected.data.metrics
    assert "recal_n100_early_accuracy" not in undetected.data.metrics
    assert undetected.data.metrics["recal_n100_miss_rate"] == 0.0
    assert not any(math.isnan(v) for r in runs for v in r.data.metrics.values())


def test_an_undefined_early_accuracy_is_not_logged_as_nan(
    store: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    result = written_result()
    result.cells[1] = replace(result.cells[1], early_accuracy=math.nan, early_exit_rate=0.0)
    _, _, runs = logged(store, "shift-study-nan", result, tmp_path / "out")
    assert not any(math.isnan(v) for r in runs for v in r.data.metrics.values())


# ------------------------------------------------------------------------------- command line


def test_the_command_line_parses_a_quick_run_without_mlflow() -> None:
    args = build_parser().parse_args(["shift-study", "--quick", "--no-mlflow"])
    assert args.func is _cmd_shift_study
    assert args.quick is True
    assert args.no_mlflow is True
    assert args.config is None
    assert args.preset is None
    assert args.output_dir is None
    # Every default is the study's own.
    defaults = StudySettings()
    # Sizes left out stay None: the study's defaults (or --quick's) fill them.
    assert (args.streams, args.null_length, args.delay_length, args.repeats) == (None,) * 4
    assert (args.delta, args.alpha, args.seed) == (defaults.delta, defaults.alpha, defaults.seed)
    plain = build_parser().parse_args(
        ["shift-study", "job.toml", "--streams", "7", "--delta", "0.8", "--output-dir", "x"]
    )
    assert (plain.quick, plain.no_mlflow, plain.config) == (False, False, "job.toml")
    assert (plain.streams, plain.delta, plain.output_dir) == (7, 0.8, Path("x"))


def test_quick_runs_the_small_study_on_two_severities_per_shift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's wiring, with the job (which trains a model) replaced by a stub."""
    seen: dict[str, Any] = {}

    def shift_job(
        config: Any, settings: StudySettings, *, severities: dict[str, tuple[float, ...]]
    ) -> tuple[ShiftStudyResult, list[Path]]:
        seen.update(config=config, settings=settings, severities=severities)
        result = made_result([made_cell("contrast", 0.85, 1500.0)])
        markdown = tmp_path / "shift-study.md"
        markdown.write_text(result.to_markdown())
        return result, [markdown]

    monkeypatch.setattr(shift_job_module, "shift_job", shift_job)
    code = main(["shift-study", "--quick", "--no-mlflow", "--output-dir", str(tmp_path)])
    assert code == 0
    assert seen["settings"] == StudySettings(
        streams=20, null_length=5_000, delay_length=5_000, repeats=10
    )
    assert seen["severities"] == {k: v[1::2] for k, v in DEFAULT_SEVERITIES.items()}
    assert {len(levels) for levels in seen["severities"].values()} == {2}
    assert Path(seen["config"].output_dir) == tmp_path
    out = capsys.readouterr().out
    assert out.startswith("# Shift-monitor study: pcee at δ = 0.9, α = 0.05")
    assert f"wrote {tmp_path / 'shift-study.md'}" in out
    assert "MLflow run" not in out
