"""The main job end to end on a tiny configuration, its configuration, cache and failures."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import adaptix
from adaptix.components import AccuracyReading, ExitCriterion
from adaptix.core.cache import ModelCache
from adaptix.core.scores import probabilities
from adaptix.experiment import analysis, job, load_config, model_run, run_job
from adaptix.experiment.config import JobConfig, ModelConfig, parse_config
from adaptix.experiment.report import render_report
from adaptix.settings import Settings
from adaptix.testing import synthetic_trace

mlflow = pytest.importorskip("mlflow")

TINY = {
    "name": "tiny",
    "data": {"train_size": 400, "calibration_size": 300, "test_size": 300},
    "train": {"epochs": 1, "batch_size": 64, "workers": 1},
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


def markdown_tables(text: str) -> list[list[str]]:
    """The tables of a Markdown text: each a run of consecutive lines that start with '|'."""
    tables: list[list[str]] = []
    previous = False
    for line in text.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous:
            tables.append([])
        if is_row:
            tables[-1].append(line)
        previous = is_row
    return tables


def check_table(lines: list[str]) -> None:
    """A well-formed table: header, separator, and rows with the header's number of cells."""

    def cells(line: str) -> list[str]:
        assert line.startswith("|"), line
        assert line.endswith("|"), line
        return line[1:-1].split("|")

    header, separator, *rows = lines
    width = len(cells(header))
    assert all(cell.strip() for cell in cells(header)), f"empty header cell: {header}"
    rule = [c.strip() for c in cells(separator)]
    assert len(rule) == width, separator
    assert all(re.fullmatch(r"-+:?", c) for c in rule), separator
    # Aligned: every line of the table is as long as its header.
    assert {len(line) for line in lines} == {len(header)}, lines
    for row in rows:
        assert len(cells(row)) == width, f"{len(cells(row))} cells, header has {width}: {row}"


def _normalised(row: str) -> str:
    return "|" + "|".join(f" {cell.strip()} " for cell in row.strip("|").split("|")) + "|"


def test_the_table_checker_catches_a_cell_without_header() -> None:
    check_table(["| a   |   b |", "| --- | --: |", "| 1   |   2 |"])
    with pytest.raises(AssertionError, match="3 cells, header has 2"):
        check_table(["| a   |   b |", "| --- | --: |", "| 1 | 2 | 3 |"])
    with pytest.raises(AssertionError, match=r"\{9, 13\} == \{13\}"):
        check_table(["| a   |   b |", "| --- | --: |", "| 1 | 2 |"])
    assert markdown_tables("x\n| a |\n|---|\n\n| b |\n|---|\n| 1 |\n") == [
        ["| a |", "|---|"],
        ["| b |", "|---|", "| 1 |"],
    ]


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
    for section in ("## Summary", "(a) Control", "(b) Scale", "realised / ideal (time)"):
        assert section in report
    calibration = adaptix.Calibration.load(out / "calibration-l.json", num_exits=4)
    assert calibration.num_inputs == 300
    assert not tiny_job.tracking_failures
    assert all(p.agrees_with_simulation for p in tiny_job.runtime)


def test_every_table_of_the_report_is_well_formed(tiny_job: adaptix.experiment.JobResult) -> None:
    report = (tiny_job.output_dir / "report.md").read_text()
    assert report == tiny_job.report
    tables = markdown_tables(report)
    assert len(tables) == 7  # targets; models; control on l, then on s; knob; scale; runtime
    for table in tables:
        check_table(table)
    tables = [[_normalised(row) for row in table] for table in tables[1:]]
    assert tables[1][0].startswith(
        "| logits | criterion | violation rate (%) | worst shortfall (pt) | early exits"
    )
    for control in tables[1:3]:  # the guarantee and pcee_lcb are rows of every panel
        rows = [row.split("|")[1:3] for row in control[2:]]
        for panel in ("natural", "logits ×2"):
            for criterion in ("pcee_lcb", "guarantee"):
                assert [f" {panel} ", f" {criterion} "] in rows, (panel, criterion)
    assert "The guarantee row certifies, for each δ, the cheapest threshold of confidence" in report
    assert "δ left uncertified (every input then goes to the last exit), of 4: natural " in report
    knob = tables[3]
    assert knob[0] == "| criterion | s: distinct policies | l: distinct policies |"
    assert [row.split("|")[1].strip() for row in knob[2:]] == [
        "confidence", "entropy", "pcee", "pcee_ws", "pcee_lcb", "guarantee", "hindsight_oracle",
        "pcee (survivor bins)", "pcee_ws (survivor bins)", "pcee_lcb (survivor bins)",
    ]  # fmt: skip
    for name, outcome in tiny_job.models.items():
        assert set(outcome.knob) == {"confidence", "entropy", "pcee", "pcee_ws", "pcee_lcb",
                                     "guarantee", "hindsight_oracle"}  # fmt: skip
        assert all(1 <= count <= 4 for count in outcome.knob.values()), name


def test_the_job_saves_the_traces_it_analysed(tiny_job: adaptix.experiment.JobResult) -> None:
    out = tiny_job.output_dir
    for name, outcome in tiny_job.models.items():
        calibration_path = out / f"trace-{name}-calibration.pt"
        test_path = out / f"trace-{name}-test.pt"
        assert outcome.trace_paths == (calibration_path, test_path)
        calibration, test = adaptix.Trace.load(calibration_path), adaptix.Trace.load(test_path)
        assert torch.equal(test.logits, outcome.test_trace.logits)
        assert torch.equal(test.costs, outcome.test_trace.costs)
        assert calibration.num_inputs == 300
        assert calibration.labels is not None
        # The split it calibrated, with the job's calibrator.
        assert adaptix.calibrate(calibration, "equal_mass", 50) == outcome.calibration
    assert "trace-*-calibration.pt, trace-*-test.pt" in tiny_job.report


def test_mlflow_holds_the_report_as_written(
    tiny_job: adaptix.experiment.JobResult, tmp_path: Path
) -> None:
    client = mlflow.MlflowClient(tracking_uri=tiny_job.tracking_uri)
    logged = client.download_artifacts(tiny_job.parent_run_id, "report.md", str(tmp_path))
    assert Path(logged).read_text() == tiny_job.report  # rendered once, job time included
    assert re.search(r"Job time \d+ s", tiny_job.report)


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
        points = [
            r for r in runs
            if r.data.tags.get("mlflow.parentRunId") == model_run.info.run_id
            and "mode" not in r.data.params
        ]  # fmt: skip
        assert len(points) == len(outcome.frontier)
        logged = {
            (r.data.params["criterion"], float(r.data.params["threshold"])): r for r in points
        }
        for point in outcome.frontier:
            run = logged[(point.criterion, point.threshold)]
            assert run.data.params["model"] == name
            assert run.data.params["calibration_checksum"] == outcome.calibration.checksum
            assert run.data.params["bins"] == "50"
            assert run.data.params["calibration_method"] == "equal_mass"
            assert run.data.params["seed"] == "0"
            assert run.data.params["adaptix_version"] == adaptix.__version__
            assert run.data.metrics["relative_cost"] == pytest.approx(point.relative_cost)
            assert run.data.metrics["flops"] == pytest.approx(point.mean_cost)
            if point.accuracy is not None:
                assert run.data.metrics["accuracy"] == pytest.approx(point.accuracy)
            if point.criterion == "pcee_lcb":
                assert run.data.params["criterion.alpha"] == "0.05"
                # The job's default for pcee_lcb (JOB_CRITERION_PARAMS): the correction.
                assert run.data.params["criterion.bonferroni"] == "True"
            if point.criterion == "pcee" and point.early_accuracy is not None:
                assert run.data.metrics["shortfall"] == pytest.approx(
                    point.threshold - point.early_accuracy
                )
    measured = [
        r for r in runs
        if "speedup_measured" in r.data.metrics and r.data.params.get("criterion") == "pcee"
    ]  # fmt: skip
    assert len(measured) == len(tiny_job.runtime)


def test_mlflow_holds_the_guarantee_runs_with_their_certificates(
    tiny_job: adaptix.experiment.JobResult,
) -> None:
    client = mlflow.MlflowClient(tracking_uri=tiny_job.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    deltas = tiny_job.config.sweep.deltas()
    for name, outcome in tiny_job.models.items():
        (model_run,) = [r for r in runs if r.info.run_name == name]
        metrics = model_run.data.metrics
        uncertified = sum(not c.certified for c in outcome.certified["natural"])
        assert metrics["natural.guarantee.uncertified"] == uncertified
        assert metrics["x2.guarantee.worst_shortfall"] == pytest.approx(
            outcome.control["logits ×2"]["guarantee"].worst_shortfall
        )
        assert metrics["knob.pcee_lcb.distinct_policies"] == outcome.knob["pcee_lcb"]
        assert metrics["knob.guarantee.distinct_policies"] == outcome.knob["guarantee"]
        certified = {
            float(r.data.params["level"]): r
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == model_run.info.run_id
            and r.data.params.get("mode") == "guarantee"
        }
        assert sorted(certified) == deltas
        for point in outcome.certified["natural"]:
            certificate = point.policy.certificate
            assert certificate is not None
            run = certified[point.delta]
            params = run.data.params
            assert (params["criterion"], params["alpha"], params["n"]) == ("confidence", "0.05",
                                                                           "300")  # fmt: skip
            assert params["certified"] == str(certificate.certified)
            for field in ("threshold", "estimate", "bound"):
                assert params[field] == str(getattr(certificate, field)), field
            assert (params["model"], params["seed"]) == (name, "0")
            assert run.data.tags["adaptix.certificate"] == certificate.statement()
            assert run.data.metrics["relative_cost"] == pytest.approx(point.point.relative_cost)
            assert run.data.metrics["target"] == pytest.approx(point.delta)


SURVIVOR_CRITERIA = ["pcee", "pcee_ws", "pcee_lcb"]  # the swept criteria with a bin table


def test_survivor_rows_sit_beside_the_all_input_rows(
    tiny_job: adaptix.experiment.JobResult,
) -> None:
    """Every panel of every model has its criteria with a bin table on survivor bins, in the
    control table, the knob table, the control figure's data and a frontier CSV each."""
    out, report = tiny_job.output_dir, tiny_job.report
    tables = [[_normalised(row) for row in table] for table in markdown_tables(report)]
    for control in tables[2:4]:  # control on l, then on s
        rows = [row.split("|")[1:3] for row in control[2:]]
        for panel in ("natural", "logits ×2"):
            for criterion in ("pcee", "pcee_lcb"):
                assert [f" {panel} ", f" {criterion} (survivor bins) "] in rows, panel
                assert [f" {panel} ", f" {criterion} "] in rows, panel
    assert "Rows '… (survivor bins)' read, at each δ, the criterion's survivor calibration" in (
        report
    )
    deltas = tiny_job.config.sweep.deltas()
    for name, outcome in tiny_job.models.items():
        assert list(outcome.survivors) == ["natural", "logits ×2"]
        for panel, survivors in outcome.survivors.items():
            assert list(survivors.counts) == SURVIVOR_CRITERIA
            assert dict(survivors.counts["pcee_lcb"].params)["bonferroni"] is True
            assert list(survivors.control) == SURVIVOR_CRITERIA
            for criterion in SURVIVOR_CRITERIA:
                assert list(survivors.control[criterion].per_delta) == deltas
                assert [p.threshold for p in survivors.frontier.of(criterion)] == deltas
                assert 1 <= survivors.knob[criterion] <= len(deltas)
            suffix = "" if panel == "natural" else "-logits-x2"
            csv = (out / f"frontier-{name}{suffix}-survivors.csv").read_text()
            assert len(csv.splitlines()) == 1 + len(SURVIVOR_CRITERIA) * len(deltas)


def test_mlflow_holds_a_run_per_survivor_point_with_its_own_calibration(
    tiny_job: adaptix.experiment.JobResult,
) -> None:
    client = mlflow.MlflowClient(tracking_uri=tiny_job.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    for name, outcome in tiny_job.models.items():
        (model_run,) = [r for r in runs if r.info.run_name == name]
        survivors = outcome.survivors["natural"]
        metrics = model_run.data.metrics
        for criterion in SURVIVOR_CRITERIA:
            summary = survivors.control[criterion]
            assert metrics[f"natural.{criterion}.survivors.worst_shortfall"] == pytest.approx(
                summary.worst_shortfall
            )
            assert metrics[f"x2.{criterion}.survivors.violation_rate"] == pytest.approx(
                outcome.survivors["logits ×2"].control[criterion].violation_rate
            )
            assert (
                metrics[f"knob.{criterion}.survivors.distinct_policies"]
                == (survivors.knob[criterion])
            )
        logged = {
            (r.data.params["criterion"], float(r.data.params["threshold"])): r
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == model_run.info.run_id
            and r.data.params.get("mode") == "survivors"
        }
        assert len(logged) == len(survivors.frontier)
        for point in survivors.frontier:
            run = logged[(point.criterion, point.threshold)]
            params = run.data.params
            calibration = survivors.counts[point.criterion].calibration(point.threshold)
            assert run.info.run_name == f"survivors:{point.criterion}@{point.threshold:g}"
            assert params["calibration_checksum"] == calibration.checksum
            assert params["calibration_method"] == "survivors"
            assert params["bins"] == "50"
            assert json.loads(params["calibration_inputs"]) == calibration.counts.sum(1).tolist()
            assert params["edges_checksum"] == outcome.calibration.checksum
            assert (params["model"], params["seed"]) == (name, "0")
            assert run.data.metrics["relative_cost"] == pytest.approx(point.relative_cost)
            assert run.data.metrics["target"] == pytest.approx(point.threshold)
            if point.early_accuracy is not None:
                assert run.data.metrics["shortfall"] == pytest.approx(
                    point.threshold - point.early_accuracy
                )


def test_survivor_rows_are_each_delta_s_survivor_policy_simulated_on_the_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One `calibrate_survivors` call per criterion and panel for the whole δ grid, with the
    panel's all-input bins; each δ's row is `simulate` of that δ's survivor policy."""
    calls: list[tuple[str, int]] = []
    real = analysis.calibrate_survivors

    def counted(trace: adaptix.Trace, deltas: list[float], criterion: str, **kw: Any) -> Any:
        calls.append((criterion, len(deltas)))
        return real(trace, deltas, criterion, **kw)

    monkeypatch.setattr(analysis, "calibrate_survivors", counted)
    config = _config(tmp_path, sweep={**TINY["sweep"], "stress_scales": [3.0]})
    deltas = config.sweep.deltas()
    calibration_trace, test_trace = _traced(4, 0).scaled(2.0), _traced(4, 1).scaled(2.0)
    criteria = ["confidence", "patience", "pcee", "pcee_lcb"]
    plugins = adaptix.get_plugin_manager()
    readings = {name: plugins.criteria.get(name).accuracy_reading for name in criteria}
    outcome = analysis.analyse(
        ModelConfig(name="m"), calibration_trace, test_trace, config, plugins, readings
    )
    assert calls == [(c, len(deltas)) for _ in ("natural", "x3") for c in ("pcee", "pcee_lcb")]
    oracle = outcome.control["natural"]["pcee"].per_delta
    for panel, scale in (("natural", 1.0), ("logits ×3", 3.0)):
        calib, test = calibration_trace.scaled(scale), test_trace.scaled(scale)
        all_inputs = adaptix.calibrate(calib, "equal_mass", 50)
        survivors = outcome.survivors[panel]
        for criterion in ("pcee", "pcee_lcb"):
            params = config.sweep.params_of(criterion)  # pcee_lcb: bonferroni=True
            expected = adaptix.calibrate_survivors(
                calib, deltas, criterion, bins=50, edges=all_inputs.edges, **params
            )
            assert torch.equal(survivors.counts[criterion].counts, expected.counts)
            row = survivors.control[criterion].per_delta
            exits = []
            for delta, point in zip(deltas, survivors.frontier.of(criterion), strict=True):
                result = adaptix.simulate(test, expected.policy(delta))
                assert (point.early_accuracy, point.relative_cost) == (
                    result.early_accuracy,
                    result.relative_cost,
                )
                assert point.exit_histogram == tuple(result.exit_histogram.tolist())
                assert row[delta][:2] == (result.early_accuracy, result.relative_cost)
                exits.append(tuple(result.exit_index.tolist()))
            assert survivors.knob[criterion] == len(set(exits))
    # The same oracle as the all-input rows: regret / cost is the same hindsight cost.
    row = outcome.survivors["natural"].control["pcee"].per_delta
    for delta in deltas:
        if oracle[delta][1] > 0 and row[delta][1] > 0:
            assert oracle[delta][1] / oracle[delta][2] == pytest.approx(
                row[delta][1] / row[delta][2]
            )


def test_log_survivors_refuses_what_is_not_a_survivor_policy_and_its_point() -> None:
    from adaptix.tracking import log_survivors

    trace = synthetic_trace(200, 3, 4, seed=5)
    counts = adaptix.calibrate_survivors(trace, [0.8], "pcee")
    survivor, paper = counts.policy(0.8), adaptix.policy("pcee", 0.8, adaptix.calibrate(trace))
    (point,) = adaptix.sweep(trace, "pcee", [0.8], survivor.calibration)
    with pytest.raises(adaptix.ValidationError, match="survivor calibrations"):
        log_survivors([paper], [point])
    with pytest.raises(adaptix.ValidationError, match="one point per survivor policy"):
        log_survivors([survivor], [])
    with pytest.raises(adaptix.ValidationError, match="FrontierPoints"):
        log_survivors([survivor], [0.5])  # type: ignore[list-item]  # the refusal under test
    with pytest.raises(adaptix.ValidationError, match="calibration_checksum"):
        log_survivors([survivor], [point], params={"calibration_checksum": "x"})


def test_survivor_bins_can_be_turned_off_and_the_switch_is_a_flag(tmp_path: Path) -> None:
    config = _config(tmp_path, sweep={**TINY["sweep"], "stress_scales": [], "survivors": False})
    plugins = adaptix.get_plugin_manager()
    readings = {"pcee": plugins.criteria.get("pcee").accuracy_reading}
    outcome = analysis.analyse(
        ModelConfig(name="m"), _traced(3, 0), _traced(3, 1), config, plugins, readings
    )
    assert outcome.survivors == {}
    assert not list(tmp_path.glob("out/*survivors*"))
    assert parse_config({}).sweep.survivors is True
    for value in (1, "true", None):
        with pytest.raises(adaptix.ConfigError, match=r"sweep\.survivors"):
            parse_config({"sweep": {"survivors": value}})


def test_the_guarantee_row_is_the_certified_policy_of_each_delta_on_the_test_split(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, sweep={**TINY["sweep"], "delta_max": 0.8})
    calibration_trace, test_trace = _traced(4, 0), _traced(4, 1)
    readings = {"confidence": AccuracyReading(), "pcee": AccuracyReading(is_target=True)}
    plugins = adaptix.get_plugin_manager()
    outcome = analysis.analyse(
        ModelConfig(name="m"), calibration_trace, test_trace, config, plugins, readings
    )
    certifier = adaptix.Certifier(calibration_trace, "confidence")
    row = outcome.control["natural"]["guarantee"]
    exits = []
    for delta, certified in zip(config.sweep.deltas(), outcome.certified["natural"], strict=True):
        expected = certifier.early_accuracy(delta, alpha=0.05)
        result = adaptix.simulate(test_trace, expected)
        assert certified.delta == delta
        assert certified.policy.certificate == expected.certificate
        assert row.per_delta[delta][:2] == (result.early_accuracy, result.relative_cost)
        exits.append(result.exit_index)
    assert outcome.certified["natural"][0].certified  # δ = 0.6 is certified on this data
    assert outcome.knob["guarantee"] == len({tuple(e.tolist()) for e in exits})
    pcee_exits = {
        tuple(adaptix.simulate(test_trace, adaptix.policy("pcee", d, outcome.calibration))
              .exit_index.tolist())
        for d in config.sweep.deltas()
    }  # fmt: skip
    assert outcome.knob["pcee"] == len(pcee_exits)
    dense = adaptix.sweep(test_trace, "confidence", [i / 1000 for i in range(1001)])
    oracle_exits = set()
    for delta in config.sweep.deltas():
        feasible = [p for p in dense if p.early_accuracy is None or p.early_accuracy >= delta]
        cheapest = min(feasible, key=lambda p: p.relative_cost)  # the first of equal costs
        simulated = adaptix.simulate(test_trace, adaptix.policy("confidence", cheapest.threshold))
        oracle_exits.add(tuple(simulated.exit_index.tolist()))
    assert outcome.knob["hindsight_oracle"] == len(oracle_exits)


def test_a_guaranteed_criterion_that_reads_a_calibration_is_certified_on_another_half(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, guarantee={"criterion": "pcee", "alpha": 0.1})
    certified = analysis.certify(_traced(4, 0), _traced(4, 1), config, adaptix.get_plugin_manager())
    assert [c.delta for c in certified] == config.sweep.deltas()
    for point in certified:
        certificate = point.policy.certificate
        assert certificate is not None
        assert (certificate.n, certificate.alpha) == (200, 0.1)  # 400 inputs: 200 calibrate
        assert point.policy.calibration is not None
        assert point.policy.calibration.num_inputs == 200


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


def test_unreachable_tracking_store_still_writes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    config = _config(
        tmp_path,
        models=TINY["models"][:1],
        runtime={"enabled": False},
        sweep={"stress_scales": []},
        tracking={"uri": f"sqlite:///{blocker}/mlflow.db"},
    )
    renders: list[str] = []

    def counted(result: adaptix.experiment.JobResult) -> str:
        renders.append(render_report(result))
        return renders[-1]

    monkeypatch.setattr(job, "render_report", counted)
    with pytest.warns(UserWarning, match="could not"):
        result = run_job(config, log=lambda _: None)
    assert renders == [result.report]  # rendered once, after tracking
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


# --------------------------------------------- a third-party criterion joins by declaring it


class TopTwoMargin(ExitCriterion):
    """A test-local criterion: top-1 minus top-2 probability, read naively as τ = δ."""

    name = "test_margin"
    accuracy_reading = AccuracyReading()

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        top = probabilities(logits).topk(2, dim=-1).values
        return top[..., 0] - top[..., 1], state


class TopTwoMarginTarget(TopTwoMargin):
    """The same score, declared as a threshold that is the accuracy target itself."""

    name = "test_margin_target"
    accuracy_reading = AccuracyReading(is_target=True)


class TopTwoMarginUnread(TopTwoMargin):
    """The same score, without an accuracy reading."""

    name = "test_margin_unread"
    accuracy_reading = None


MARGINS = (TopTwoMargin, TopTwoMarginTarget, TopTwoMarginUnread)


class RegistersMargins:
    @adaptix.hookimpl
    def adaptix_register_criteria(self, registry: Any) -> None:
        for criterion in MARGINS:
            registry.add(criterion)


def _traced(num_exits: int, seed: int) -> adaptix.Trace:
    """A synthetic trace with the FLOP metadata that `MultiExitModel.trace` records."""
    logits_trace = synthetic_trace(400, num_exits=num_exits, num_classes=5, seed=seed)
    blocks, heads = [1e6] * num_exits, [1e5] * num_exits
    costs = torch.tensor(blocks).cumsum(0) + torch.tensor(heads).cumsum(0)
    meta = {"block_flops": json.dumps(blocks), "head_flops": json.dumps(heads)}
    return adaptix.Trace(logits_trace.logits, logits_trace.labels, costs, meta=meta)


def test_a_third_party_criterion_joins_control_frontier_logging_and_report(
    tmp_path: Path,
) -> None:
    plugins = adaptix.get_plugin_manager(settings=Settings(autoload_plugins=False))
    plugins.register(RegistersMargins(), name="test_margins")
    criteria = ["confidence", "pcee", "patience", *(c.name for c in MARGINS)]
    readings = {name: plugins.criteria.get(name).accuracy_reading for name in criteria}
    config = _config(tmp_path, sweep={**TINY["sweep"], "stress_scales": [2.0]})
    deltas = config.sweep.deltas()
    outcomes = {
        name: analysis.analyse(
            ModelConfig(name=name), _traced(exits, seed), _traced(exits, seed + 1), config,
            plugins, readings,
        )
        for name, exits, seed in (("s", 2, 0), ("l", 4, 10))
    }  # fmt: skip

    for outcome in outcomes.values():  # the job's sweep and control table
        for panel in ("natural", "logits ×2"):
            assert list(outcome.control[panel]) == [
                "confidence", "pcee", "test_margin", "test_margin_target", "guarantee"
            ]  # fmt: skip
            assert list(outcome.control[panel]["test_margin"].per_delta) == deltas
            assert list(outcome.control[panel]["guarantee"].per_delta) == deltas
        assert set(outcome.knob) == {
            "confidence", "pcee", "test_margin", "test_margin_target", "guarantee",
            "hindsight_oracle",
        }  # fmt: skip
        assert [p.threshold for p in outcome.frontier.of("test_margin")] == deltas
        assert outcome.frontier.of("test_margin_unread")  # swept on its default grid

    result = job.JobResult(
        config=config, models=outcomes, runtime=[], exit_times=None, data="synthetic",
        hardware="test machine", training_seconds=0.0, readings=readings, report="",
        output_dir=tmp_path, seconds=0.0,
    )  # fmt: skip
    report = render_report(result)  # the report
    for table in markdown_tables(report):
        check_table(table)
    lines = [_normalised(line) if line.startswith("|") else line for line in report.splitlines()]
    control_rows = [line for line in lines if line.startswith("| natural |")]
    assert any("| test_margin |" in row for row in control_rows)
    assert not any("| test_margin_unread |" in row for row in control_rows)
    assert "test_margin τ = 0.6 … 0.9 (naive reading)" in report
    assert "test_margin_target τ = 0.6 … 0.9 (the target itself)" in report
    assert any("| l + test_margin_unread |" in line for line in lines)  # every criterion
    verdicts = [line for line in report.splitlines() if line.startswith("- vs s at its cost")]
    assert [v.split(": l + ")[1].split(" ")[0] for v in verdicts] == ["pcee", "test_margin_target"]

    from adaptix.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # frontier logging, as the job does it
    tracker = Tracker("readings", uri, artifact_location=str(tmp_path / "artifacts"))
    tracking = model_run.ModelRunLogger(tracker, None, {"seed": 0}, plugins, tmp_path)
    tracking.log_model("l", outcomes["l"], [])
    assert tracker.failures == []
    runs = mlflow.MlflowClient(uri).search_runs([tracker.experiment_id], max_results=1000)
    metrics = {
        (r.data.params["criterion"], r.data.params["threshold"]): r.data.metrics
        for r in runs
        if "criterion" in r.data.params
    }
    for point in outcomes["l"].frontier:
        logged = metrics[(point.criterion, f"{point.threshold:.6g}")]
        has_reading = readings[point.criterion] is not None
        assert ("target" in logged) == has_reading, point
        if has_reading and point.early_accuracy is not None:
            assert logged["shortfall"] == pytest.approx(point.threshold - point.early_accuracy)
