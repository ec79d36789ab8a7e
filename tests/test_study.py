"""`adaptix.experiment.study` and ``adaptix study``: the repeated-splits evidence for the
guarantees."""

from __future__ import annotations

import csv
import math
import re
import warnings
from pathlib import Path

import pytest
import torch

import adaptix
from adaptix import PluginError, ValidationError
from adaptix.cli import main
from adaptix.core.trace import Trace
from adaptix.experiment.study import (
    NOISE_Z,
    StudyResult,
    StudyRow,
    noise_band,
    run_study,
    split_indices,
)
from adaptix.experiment.study_plots import write_plots
from adaptix.offline.control import hindsight_oracle
from adaptix.offline.guarantee import CertificateWarning
from adaptix.testing import synthetic_trace

DELTAS = (0.6, 0.7, 0.8, 0.9)
#: Small, quick settings: 2 × 300 pooled inputs of a 4-exit model.
SETTINGS = {"splits": 3, "calibration_size": 200, "deltas": DELTAS, "scales": (1.0, 3.0)}


@pytest.fixture(scope="module")
def traces() -> tuple[Trace, Trace]:
    return synthetic_trace(300, 4, 5, seed=0), synthetic_trace(300, 4, 5, seed=1)


@pytest.fixture(scope="module")
def study(traces: tuple[Trace, Trace]) -> StudyResult:
    return run_study(*traces, **SETTINGS, progress=False)


def test_the_same_seed_gives_the_same_table(traces, study) -> None:
    again = run_study(*traces, **SETTINGS, progress=False)
    assert again.rows == study.rows
    other = run_study(*traces, **SETTINGS, seed=1, progress=False)
    assert other.rows != study.rows


def test_splits_are_disjoint_complete_and_seeded() -> None:
    drawn = split_indices(50, 20, 3, seed=7)
    for calibration, test in drawn:
        assert (len(calibration), len(test)) == (20, 30)
        assert sorted(torch.cat([calibration, test]).tolist()) == list(range(50))
    assert all(
        torch.equal(a, b) for (a, _), (b, _) in zip(drawn, split_indices(50, 20, 3, 7), strict=True)
    )
    assert not torch.equal(drawn[0][0], drawn[1][0])


def _by_hand(test: Trace, pol: adaptix.ExitPolicy, delta: float) -> tuple[bool, bool, float]:
    """(violated, missed, relative cost) of ``pol`` on ``test``, from `adaptix.simulate`."""
    result = adaptix.simulate(test, pol)
    early = result.exit_index < test.num_exits - 1
    m = int(early.sum())
    if m == 0:
        return False, False, result.relative_cost
    accuracy = result.early_accuracy
    assert accuracy is not None
    margin = NOISE_Z * math.sqrt(delta * (1 - delta) / m)
    return accuracy < delta, accuracy < delta - margin, result.relative_cost


def test_one_split_matches_a_hand_check(traces) -> None:
    """With one split every frequency is 0 or 1: recompute it from the public API."""
    deltas = (*(round(0.5 + 0.04 * i, 2) for i in range(12)), 0.99)
    settings = {"splits": 1, "calibration_size": 150, "deltas": deltas, "alpha": 0.3}
    study = run_study(*traces, **settings, scales=(3.0,), progress=False)
    pooled = Trace.concat(traces).scaled(3.0)
    ((calibration_rows, test_rows),) = split_indices(600, 150, 1, seed=0)
    calibration, test = pooled.subset(calibration_rows), pooled.subset(test_rows)
    certifier = adaptix.Certifier(calibration, "confidence")
    oracle = hindsight_oracle(test, deltas)
    seen = {"certified": 0, "uncertified": 0, "missed": 0}
    for delta in deltas:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CertificateWarning)
            certified = certifier.early_accuracy(delta, alpha=0.3)
        naive = adaptix.policy("confidence", delta)
        for name, pol in (("guarantee", certified), ("confidence", naive)):
            violated, missed, cost = _by_hand(test, pol, delta)
            row = next(r for r in study.of(3.0, name) if r.delta == delta)
            assert row.violation_frequency == float(violated), (name, delta)
            assert row.miss_frequency == float(missed), (name, delta)
            assert row.mean_relative_cost == pytest.approx(cost, abs=1e-12)
            assert row.mean_oracle_cost == oracle[delta]  # the same counts: the same bits
            assert row.mean_cost_vs_oracle == pytest.approx(cost / oracle[delta], abs=1e-9)
            seen["missed"] += missed
        row = next(r for r in study.of(3.0, "guarantee") if r.delta == delta)
        assert row.uncertified_share == float(not certified.exits_early)
        seen["certified" if certified.exits_early else "uncertified"] += 1
    assert all(seen.values()), seen  # the check went through every branch


def test_one_split_of_a_calibration_free_criterion_is_the_sweep_bit_for_bit(traces) -> None:
    """The study counts the pool once and takes a split's calibration rows away; its early
    accuracy and relative cost are `adaptix.sweep`'s on the test split, to the last bit."""
    deltas = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    study = run_study(
        *traces,
        splits=1,
        calibration_size=250,
        deltas=deltas,
        scales=(2.0,),
        criteria=("confidence", "guarantee"),
        progress=False,
    )
    pooled = Trace.concat(traces).scaled(2.0)
    ((_, test_rows),) = split_indices(600, 250, 1, seed=0)
    test = pooled.subset(test_rows)
    swept = list(adaptix.sweep(test, "confidence", deltas))
    oracle = hindsight_oracle(test, deltas)
    for row, point in zip(study.of(2.0, "confidence"), swept, strict=True):
        assert row.mean_early_accuracy == point.early_accuracy
        assert row.mean_relative_cost == point.relative_cost
        assert row.mean_oracle_cost == oracle[row.delta]


def test_one_split_of_every_mode_matches_a_hand_check(traces) -> None:
    """Both calibrators, with and without Bonferroni, paper's and survivor tables: each mode
    on one split is `adaptix.simulate` of the policy the public API builds for it."""
    deltas = (0.5, 0.6, 0.7, 0.8, 0.9)
    study = run_study(
        *traces,
        splits=1,
        calibration_size=300,
        deltas=deltas,
        scales=(2.0,),
        alpha=0.1,
        criteria=("pcee", "pcee_lcb"),
        calibrators=("reliability", "equal_mass"),
        bonferroni=True,
        progress=False,
    )
    assert len(study.config.modes) == 2 * (2 + 4)  # per calibrator: pcee ×2, pcee_lcb ×4
    pooled = Trace.concat(traces).scaled(2.0)
    ((calibration_rows, test_rows),) = split_indices(600, 300, 1, seed=0)
    calibration, test = pooled.subset(calibration_rows), pooled.subset(test_rows)
    early_exits = 0
    for mode in study.config.modes:
        params = {"alpha": 0.1} if mode.criterion == "pcee_lcb" else {}
        params |= {"bonferroni": True} if mode.bonferroni else {}
        tables = adaptix.calibrate(calibration, mode.calibrator)
        counts = adaptix.calibrate_survivors(
            calibration, deltas, mode.criterion, edges=tables.edges, **params
        )
        for row in study.of(2.0, mode.name):
            if mode.survivors:
                pol = counts.policy(row.delta)
            else:
                pol = adaptix.policy(mode.criterion, row.delta, tables, **params)
            violated, missed, cost = _by_hand(test, pol, row.delta)
            assert row.violation_frequency == float(violated), (mode, row.delta)
            assert row.miss_frequency == float(missed), (mode, row.delta)
            assert row.mean_relative_cost == pytest.approx(cost, abs=1e-12), (mode, row.delta)
            early_exits += row.no_early_exit_share == 0
    assert early_exits > len(study.rows) // 2  # the check saw inputs leave early


def test_survivor_tables_miss_no_more_than_the_paper_s_on_overconfident_logits() -> None:
    """Logits × 3 of a synthetic 8-exit, 10-class model, 12 splits of 1,500 / 1,500: on the
    paper's tables pcee and pcee_lcb fall short of δ; on survivor tables no more often and no
    further. Adding survivor modes leaves the other rows' numbers as they were."""
    traces = [synthetic_trace(1500, 8, 10, seed=s).scaled(3.0) for s in (0, 1)]
    settings = {
        "splits": 12,
        "calibration_size": 1500,
        "deltas": (0.6, 0.7, 0.8, 0.9),
        "scales": (1.0,),
        "criteria": ("pcee", "pcee_lcb", "guarantee"),
        "calibrators": ("reliability",),
        "progress": False,
    }
    study = run_study(*traces, **settings)
    for rule in ("pcee", "pcee_lcb"):
        paper = study.headline(1.0, rule)
        survivors = study.headline(1.0, f"{rule}/survivors")
        for key in ("max_miss_frequency", "max_violation_frequency", "worst_shortfall"):
            assert survivors[key] <= paper[key], (rule, key, survivors, paper)
    assert study.headline(1.0, "pcee")["max_violation_frequency"] > 0  # the stress bites
    assert study.headline(1.0, "pcee_lcb/survivors")["worst_shortfall"] == 0
    plain = run_study(*traces, **settings, survivors=[])
    assert plain.config.mode_names == ("pcee", "pcee_lcb", "pcee_lcb/bonferroni", "guarantee")
    assert plain.rows == [row for row in study.rows if not row.survivors]


def test_miss_frequency_stays_within_its_band_where_the_contract_says(study) -> None:
    band = noise_band(0.05, 3)
    assert study.noise_band == pytest.approx(band)
    assert band == pytest.approx(0.05 + NOISE_Z * math.sqrt(0.05 * 0.95 / 3))
    for row in study.rows:
        assert 0 <= row.miss_frequency <= row.violation_frequency <= 1
        assert (row.uncertified_share is None) == (row.criterion != "guarantee")


#: The modes of a default study: the paper's tables of every criterion, and survivor tables
#: for pcee and pcee_lcb, each beside its paper mode; pcee_lcb per bin and corrected; each
#: calibrated criterion on equal-width (the paper's) and equal-mass bins.
MODES = (
    "confidence",
    "pcee",
    "pcee/survivors",
    "pcee/equal_mass",
    "pcee/equal_mass/survivors",
    "pcee_ws",
    "pcee_ws/equal_mass",
    "pcee_lcb",
    "pcee_lcb/survivors",
    "pcee_lcb/bonferroni",
    "pcee_lcb/bonferroni/survivors",
    "pcee_lcb/equal_mass",
    "pcee_lcb/equal_mass/survivors",
    "pcee_lcb/bonferroni/equal_mass",
    "pcee_lcb/bonferroni/equal_mass/survivors",
    "guarantee",
)


def test_csv_holds_every_row_and_markdown_one_table_per_scale(study, tmp_path: Path) -> None:
    assert study.config.mode_names == MODES
    path = study.to_csv(tmp_path / "study.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(study.rows) == 2 * len(MODES) * len(DELTAS)
    assert list(rows[0]) == [*StudyRow.__dataclass_fields__, "miss_noise_band"]
    assert {(float(r["scale"]), r["mode"], float(r["delta"])) for r in rows} == {
        (s, m, d) for s in (1.0, 3.0) for m in MODES for d in DELTAS
    }
    assert {r["uncertified_share"] for r in rows if r["criterion"] != "guarantee"} == {""}
    assert {(r["mode"], r["criterion"], r["calibrator"], r["survivors"]) for r in rows} >= {
        ("pcee_lcb/survivors", "pcee_lcb", "reliability", "True"),
        ("pcee_lcb", "pcee_lcb", "reliability", "False"),
        ("confidence", "confidence", "", "False"),
    }
    markdown = study.to_markdown()
    assert markdown.count("| mode |") == 2
    assert "### natural logits" in markdown
    assert "### logits × 3" in markdown
    per_scale, side = markdown.split("### The paper's tables vs survivor tables")
    for mode in MODES:
        assert per_scale.count(f"| {mode} |") == 2
    # The side-by-side section: one line per survivor rule and scale, guarantee's cost beside.
    assert side.count("| reliability | × ") == 6  # pcee, pcee_lcb, pcee_lcb/bonferroni
    assert side.count("| equal_mass | × ") == 6
    guarantee = study.headline(3.0, "guarantee")["mean_cost_vs_oracle"]
    assert "| pcee_lcb | reliability | × 3 |" in side
    assert side.rstrip().endswith(f"| {guarantee:.3f} |")
    assert f"{100 * study.noise_band:.1f} %" in markdown
    summary = study.summary()
    assert summary["x3.guarantee.max_miss_frequency"] == max(
        r.miss_frequency for r in study.of(3.0, "guarantee")
    )
    assert summary["x3.pcee_lcb/survivors.worst_shortfall"] == max(
        r.worst_shortfall for r in study.of(3.0, "pcee_lcb/survivors")
    )


def test_write_saves_tables_and_plots(study, tmp_path: Path) -> None:
    written = [*study.write(tmp_path / "out"), *write_plots(study, tmp_path / "out")]
    assert [p.name for p in written] == [
        "study.csv",
        "study.md",
        "study-miss-frequency.png",
        "study-cost-vs-oracle.png",
        "study-survivors.png",
    ]
    for path in written[2:]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
    assert written[1].read_text(encoding="utf-8") == study.to_markdown()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"calibration_size": 600}, "calibration_size to be an integer in [1, 599]"),
        ({"splits": 0}, "splits to be an integer ≥ 1"),
        ({"splits": True}, "splits to be an integer, got True"),
        ({"deltas": (0.5, 1.0)}, "each target δ in (0, 1)"),
        ({"deltas": ()}, "targets δ as a non-empty list of numbers"),
        ({"scales": (1.0, -2.0)}, "each logit scale in (0, inf)"),
        ({"scales": (1.0, math.inf)}, "each logit scale to be a finite real number"),
        ({"alpha": 1.5}, "alpha in (0, 1)"),
        ({"alpha": "0.05"}, "alpha to be a real number, got '0.05'"),
        ({"criteria": ("patience",)}, "declares no accuracy_reading"),
        ({"calibrators": "equal_mass"}, "calibrators as a list of names, got 'equal_mass'"),
        ({"calibrators": ()}, "calibrators as a list of names, got ()"),
        ({"calibrators": ("equal_mass", "equal_mass")}, "distinct calibrators"),
        ({"survivors": ("pcee", "entropy")}, "survivor criteria among the studied criteria"),
        ({"survivors": ("guarantee",)}, "survivor criteria among the studied criteria"),
        ({"survivors": "pcee"}, "survivor criteria as a list of names"),
        (
            {"survivors": ("confidence",), "criteria": ("confidence", "pcee")},
            "whose score is a table of their calibration's bins",
        ),
        ({"bonferroni": 1}, "bonferroni to be True or False, got 1"),
        ({"bonferroni": "yes"}, "bonferroni to be True or False"),
    ],
)
def test_bad_settings_are_validation_errors(traces, change, message) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        run_study(*traces, **{**SETTINGS, **change}, progress=False)


def test_unknown_criterion_and_mismatched_traces_are_refused(traces) -> None:
    with pytest.raises(PluginError, match="nope"):
        run_study(*traces, **SETTINGS, criteria=("nope",), progress=False)
    with pytest.raises(PluginError, match=r"isotonic.*equal_mass"):
        run_study(*traces, **SETTINGS, calibrators=("isotonic",), progress=False)
    other = synthetic_trace(100, 3, 5, seed=2)
    with pytest.raises(ValidationError, match="same model"):
        run_study(traces[0], other, progress=False)
    costs = Trace(traces[1].logits, traces[1].labels, traces[1].costs * 2)
    with pytest.raises(ValidationError, match="different costs"):
        run_study(traces[0], costs, progress=False)
    unlabelled = synthetic_trace(300, 4, 5, seed=1, labelled=False)
    with pytest.raises(
        ValidationError, match=r"labelled adaptix\.Trace, got a Trace without labels"
    ):
        run_study(traces[0], unlabelled, progress=False)


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def trace_files(traces, tmp_path: Path) -> list[str]:
    return [str(t.save(tmp_path / f"{name}.pt")) for name, t in zip("ab", traces, strict=True)]


CLI = ["--splits", "2", "--calibration-size", "200", "--deltas", "0.6:0.9:0.1", "--scales", "1,3"]


def test_cli_writes_the_files_and_prints_the_table(trace_files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["study", *trace_files, *CLI, "--out", str(out), "--no-mlflow"]) == 0
    printed = capsys.readouterr().out
    assert "### logits × 3" in printed
    assert "| guarantee |" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "study-cost-vs-oracle.png",
        "study-miss-frequency.png",
        "study-survivors.png",
        "study.csv",
        "study.md",
    ]
    with (out / "study.csv").open(encoding="utf-8") as handle:
        deltas = {float(r["delta"]) for r in csv.DictReader(handle)}
    assert deltas == {0.6, 0.7, 0.8, 0.9}


def test_cli_compares_both_calibrators_with_bonferroni_by_default(
    trace_files, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    options = ["--calibrators", "reliability,equal_mass", "--survivors", "pcee_lcb"]
    command = ["study", *trace_files, *CLI, *options, "--out", str(out)]
    assert main([*command, "--no-mlflow"]) == 0
    printed = capsys.readouterr().out
    assert "| pcee_lcb/bonferroni/equal_mass/survivors |" in printed
    assert "| pcee_lcb/bonferroni | equal_mass | × 3 |" in printed
    assert "| pcee/survivors |" not in printed
    plain = ["study", *trace_files, *CLI, "--survivors", "", "--no-bonferroni"]
    plain += ["--out", str(tmp_path / "plain")]
    assert main([*plain, "--no-mlflow"]) == 0
    printed = capsys.readouterr().out
    assert "/survivors |" not in printed
    assert "pcee_lcb/bonferroni" not in printed
    assert "### The paper's tables vs survivor tables" not in printed
    assert not (tmp_path / "plain" / "study-survivors.png").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--deltas", "0.9:0.8:0.01"], "START:STOP:STEP"),
        (["--deltas", "0.8:0.9:nan"], "START:STOP:STEP"),
        (["--scales", "1,x"], "--scales as numbers"),
        (["--calibration-size", "5000"], "calibration_size to be an integer in [1, 599]"),
    ],
)
def test_cli_bad_input_is_rc_2(trace_files, tmp_path, capsys, arguments, message) -> None:
    command = ["study", *trace_files, *CLI, *arguments, "--out", str(tmp_path), "--no-mlflow"]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert error.startswith("adaptix: error: expected")
    assert message in error


def test_cli_missing_trace_is_rc_2(trace_files, tmp_path, capsys) -> None:
    assert main(["study", trace_files[0], str(tmp_path / "missing.pt"), "--no-mlflow"]) == 2
    assert "no trace file at" in capsys.readouterr().err


def test_cli_logs_the_study_to_mlflow(trace_files, tmp_path, monkeypatch, capsys) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "out"
    assert main(["study", *trace_files, *CLI, "--out", str(out)]) == 0
    assert f"at {uri}" in capsys.readouterr().out
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("adaptix")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["splits"], params["scales"], params["alpha"]) == ("2", "1,3", "0.05")
    assert len(params["calibration_trace.checksum"]) == 16
    assert params["calibration_trace.checksum"] != params["test_trace.checksum"]
    metrics = run.data.metrics
    assert metrics["miss_noise_band"] == pytest.approx(noise_band(0.05, 2))
    assert "x3.guarantee.max_miss_frequency" in metrics
    assert "x1.pcee.mean_cost_vs_oracle" in metrics
    assert "x3.pcee_lcb/survivors.worst_shortfall" in metrics
    assert params["calibrators"] == "reliability,equal_mass"
    assert params["survivors"] == "pcee,pcee_lcb"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {p.name for p in out.iterdir() if p.is_file()}


def test_cli_keeps_its_files_when_the_store_fails(trace_files, tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/adaptix-nonexistent/mlflow.db")
    out = tmp_path / "out"
    with pytest.warns(adaptix.tracking.TrackingWarning):
        assert main(["study", *trace_files, *CLI, "--out", str(out)]) == 0
    assert "adaptix: warning: could not connect" in capsys.readouterr().err
    assert (out / "study.csv").is_file()
    assert (out / "study.md").is_file()


def test_group_splits_keep_every_group_on_one_side() -> None:
    groups = torch.arange(60).repeat_interleave(
        torch.randint(1, 9, (60,), generator=torch.Generator().manual_seed(0))
    )
    drawn = split_indices(groups.numel(), 100, 20, seed=3, groups=groups)
    for calibration, test in drawn:
        assert sorted(torch.cat([calibration, test]).tolist()) == list(range(groups.numel()))
        assert not set(groups[calibration].tolist()) & set(groups[test].tolist())
        assert 100 <= len(calibration) < 100 + 8  # whole groups until the size is reached
    assert not torch.equal(drawn[0][0], drawn[1][0])
    again = split_indices(groups.numel(), 100, 20, seed=3, groups=groups)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(drawn, again, strict=True))


def test_a_study_by_group_runs_and_records_its_groups(traces: tuple[Trace, Trace]) -> None:
    calibration, test = traces
    groups = (
        torch.arange(calibration.num_inputs) // 10,
        10_000 + torch.arange(test.num_inputs) // 10,
    )
    study = run_study(*traces, **SETTINGS, groups=groups, progress=False)
    assert study.params()["split_by"] == "group"
    assert study.traces["test"]["groups"] == str(
        len(set(groups[0].tolist())) + len(set(groups[1].tolist()))
    )
    assert study.rows


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ("abc", "pair"),
        (([0], [1]), "one calibration group id per row"),
        (([0.5], [1.5]), "integer"),
    ],
)
def test_bad_groups_are_validation_errors(
    traces: tuple[Trace, Trace], groups: object, match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        run_study(*traces, **SETTINGS, groups=groups, progress=False)  # type: ignore[arg-type]


def test_a_group_on_both_sides_is_refused(traces: tuple[Trace, Trace]) -> None:
    calibration, test = traces
    groups = (
        torch.zeros(calibration.num_inputs, dtype=torch.long),
        torch.zeros(test.num_inputs, dtype=torch.long),
    )
    with pytest.raises(ValidationError, match="unique across both"):
        run_study(*traces, **SETTINGS, groups=groups, progress=False)


def test_a_study_round_trips_through_its_dict_and_json() -> None:
    import json as _json

    from adaptix.experiment.study import StudyResult

    study = run_study(
        synthetic_trace(600, num_exits=3, num_classes=5, seed=0),
        synthetic_trace(600, num_exits=3, num_classes=5, seed=1),
        splits=3,
        calibration_size=300,
        deltas=(0.6, 0.8),
        scales=(1.0, 2.0),
        progress=False,
    )
    again = StudyResult.from_dict(_json.loads(_json.dumps(study.to_dict())))
    assert again == study
    assert again.to_markdown() == study.to_markdown()
    with pytest.raises(ValidationError, match=r"StudyResult\.to_dict"):
        StudyResult.from_dict({"rows": []})
