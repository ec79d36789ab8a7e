"""The batched early-exit runtime against the plain model: ideal and realised speed-ups.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_runtime.py -q`` (the first run trains
the models and caches them under ``.benchmarks/models/``).

- Baseline: the plain model a user would otherwise deploy, ``model.forward_plain`` (every block,
  then the final head only).
- Ideal speed-up at a threshold: plain FLOPs / mean FLOPs of the exits taken, intermediate heads
  included (``plain_cost / (relative_cost · costs[-1])`` from the trace and `adaptix.simulate`).
  For lockstep mode, ``ideal(mode)`` charges every row of a batch up to the batch's deepest exit.
- Realised speed-up: time(plain) / time(runner) on the same inputs in the same run (medians).
- No-exit case: a policy under which nothing exits, against every block and every head run
  without any decision (the runtime's overhead; the target is 5 % or less).

The CNN is ``resnet`` size medium trained briefly on Fashion-MNIST, at batch sizes 1, 64 and
512 and three δ of ``pcee`` (about 30, 60 and 85 % early exits on the test data), in both modes.
MiniLM on BBC News (through the plugin ``adaptix-transformers``; skipped when it is missing) runs
at batch sizes 1 and 64 in compact mode. Every benchmark checks its first call: the runner's
exits and predictions against `adaptix.simulate` on the same inputs. Speed targets are reported
(``extra_info`` and the table at the end of the session), never asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from runtime_models import (
    CnnConfig,
    MiniLMConfig,
    Row,
    Summary,
    Timing,
    Trained,
    batches,
    load_cnn,
    load_minilm,
    lockstep_mean_cost,
    pcee_deltas,
    unambiguous_rows,
)

import adaptix
from adaptix.errors import AdaptixError
from adaptix.model import profile_from_trace

CNN = CnnConfig()
MINILM = MiniLMConfig()
TARGETS = (0.30, 0.60, 0.85)  # early-exit rates on the test data
MODES = ("compact", "lockstep")
#: Rows timed per round at each batch size (batch size 1 costs a call per row: fewer rows).
CNN_ROWS = {1: 128, 64: 256, 512: 512}
MINILM_ROWS = {1: 16, 64: 64}
ROUNDS = {"resnet": 5, "minilm": 3}


@dataclass(frozen=True)
class Case:
    """A family's benchmark inputs at one batch size, with their trace and the chosen δ."""

    family: str
    model: adaptix.MultiExitModel
    batch: int
    batches: list[Any]
    trace: adaptix.Trace
    calibration: adaptix.Calibration
    deltas: dict[float, float]

    @property
    def rounds(self) -> int:
        return ROUNDS[self.family.split("-")[0]]


@pytest.fixture(scope="session")
def summary(request: pytest.FixtureRequest) -> Summary:
    """The session's results; the table is printed at the end of the session."""
    collector = Summary()
    request.config.pluginmanager.register(collector, "adaptix-runtime-summary")
    return collector


def make_cases(trained: Trained, rows_per_batch: dict[int, int]) -> dict[int, Case]:
    rows = unambiguous_rows(trained.trace, max(rows_per_batch.values()))
    deltas = pcee_deltas(trained.trace, trained.calibration, TARGETS)
    return {
        batch: Case(
            trained.family,
            trained.model,
            batch,
            batches(trained.inputs, rows[:count], batch),
            trained.trace.subset(rows[:count]),
            trained.calibration,
            deltas,
        )
        for batch, count in rows_per_batch.items()
    }


@pytest.fixture(scope="session")
def cnn() -> dict[int, Case]:
    """The CNN's cases by batch size."""
    return make_cases(load_cnn(CNN), CNN_ROWS)


@pytest.fixture(scope="session")
def minilm() -> dict[int, Case]:
    """MiniLM's cases by batch size (skipped without the plugin or its offline assets)."""
    plugin = pytest.importorskip("adaptix_transformers")
    pytest.importorskip("transformers")
    try:
        plugin.minilm_path()
        plugin.bbc_news_dir()
    except AdaptixError as err:
        pytest.skip(str(err))
    return make_cases(load_minilm(MINILM), MINILM_ROWS)


def measure(benchmark: BenchmarkFixture, fn: Callable[[], object], rounds: int) -> Timing | None:
    """Median and fastest seconds of ``fn`` (None when benchmarking is disabled)."""
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    if benchmark.disabled:
        return None
    stats = benchmark.stats.stats
    return Timing(float(stats.median), float(stats.min))


def skip_repeated_delta(case: Case, target: float) -> float:
    """The δ for ``target``; skips when a smaller target already measured the same δ."""
    delta = case.deltas[target]
    same = [t for t in TARGETS if t < target and case.deltas[t] == delta]
    if same:
        pytest.skip(f"δ={delta:.4f} is also the closest δ for {same[0]:.0%} early exits")
    return delta


def plain_predictions(case: Case) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([case.model.forward_plain(b).argmax(dim=-1) for b in case.batches])


def bench_plain(benchmark: BenchmarkFixture, summary: Summary, case: Case) -> None:
    expected = case.trace.logits[:, -1].argmax(dim=-1)
    assert torch.equal(plain_predictions(case), expected)
    timing = measure(benchmark, lambda: plain_predictions(case), case.rounds)
    plain_cost = profile_from_trace(case.trace).plain_cost
    benchmark.extra_info.update(family=case.family, batch=case.batch, plain_flops=plain_cost)
    if timing is not None:
        summary.baselines[(case.family, case.batch, "plain")] = timing


def all_exit_logits(case: Case) -> torch.Tensor:
    """Every block and every head, no decisions: logits ``[N, E, C]``."""
    with torch.inference_mode():
        return torch.cat([torch.stack(list(case.model.iter_exits(b)), 1) for b in case.batches])


def bench_all_heads(benchmark: BenchmarkFixture, summary: Summary, case: Case) -> None:
    first = all_exit_logits(case)
    assert torch.equal(first.argmax(dim=-1), case.trace.logits.argmax(dim=-1))
    timing = measure(benchmark, lambda: all_exit_logits(case), case.rounds)
    benchmark.extra_info.update(family=case.family, batch=case.batch)
    if timing is not None:
        summary.baselines[(case.family, case.batch, "all heads")] = timing


def bench_runner(
    benchmark: BenchmarkFixture,
    summary: Summary,
    case: Case,
    policy: adaptix.ExitPolicy,
    label: str,
    mode: str,
) -> adaptix.SimulationResult:
    """Check the runner's first call against simulate, time it, record its speed-ups."""
    runner = adaptix.EarlyExitRunner(case.model, policy, mode=mode)

    def run() -> list[adaptix.RunnerOutput]:
        return [runner(b) for b in case.batches]

    expected = adaptix.simulate(case.trace, policy)
    outputs = run()
    assert torch.equal(torch.cat([o.exit_index for o in outputs]), expected.exit_index)
    assert torch.equal(torch.cat([o.predictions for o in outputs]), expected.predictions)
    timing = measure(benchmark, run, case.rounds)

    costs = case.trace.costs
    plain_cost = profile_from_trace(case.trace).plain_cost
    ideal = plain_cost / (expected.relative_cost * float(costs[-1]))
    ideal_mode = ideal
    if mode == "lockstep":
        ideal_mode = plain_cost / lockstep_mean_cost(costs, expected.exit_index, case.batch)
    info: dict[str, Any] = {
        "family": case.family,
        "mode": mode,
        "policy": label,
        "batch": case.batch,
        "early_exit_rate": expected.early_exit_rate,
        "ideal": ideal,
        "ideal_mode": ideal_mode,
    }
    if timing is not None:
        row = Row(
            case.family,
            mode,
            label,
            case.batch,
            expected.early_exit_rate,
            ideal,
            ideal_mode,
            timing,
            len(case.batches),
        )
        summary.rows.append(row)
        realised = summary.realised(row)
        if realised is not None:
            info.update(realised=realised, realised_over_ideal=realised / ideal)
    benchmark.extra_info.update(info)
    return expected


# ------------------------------------------------------------------------------------- CNN


@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_plain(
    benchmark: BenchmarkFixture, summary: Summary, cnn: dict[int, Case], batch: int
) -> None:
    bench_plain(benchmark, summary, cnn[batch])


@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_all_heads(
    benchmark: BenchmarkFixture, summary: Summary, cnn: dict[int, Case], batch: int
) -> None:
    bench_all_heads(benchmark, summary, cnn[batch])


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"early{round(100 * t)}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_pcee(
    benchmark: BenchmarkFixture,
    summary: Summary,
    cnn: dict[int, Case],
    batch: int,
    mode: str,
    target: float,
) -> None:
    case = cnn[batch]
    delta = skip_repeated_delta(case, target)
    policy = adaptix.policy("pcee", delta, case.calibration)
    bench_runner(benchmark, summary, case, policy, f"pcee δ={delta:.3f}", mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_nothing_exits(
    benchmark: BenchmarkFixture, summary: Summary, cnn: dict[int, Case], batch: int, mode: str
) -> None:
    case = cnn[batch]
    num_exits = case.model.num_exits
    # PABEE's streak k_e is at most e <= E - 2 at the early exits: t = E never fires.
    policy = adaptix.policy("patience", num_exits)
    expected = bench_runner(benchmark, summary, case, policy, f"patience t={num_exits}", mode)
    assert expected.early_exit_rate == 0.0


# ----------------------------------------------------------------------------------- MiniLM


@pytest.mark.parametrize("batch", MINILM_ROWS)
def test_minilm_plain(
    benchmark: BenchmarkFixture, summary: Summary, minilm: dict[int, Case], batch: int
) -> None:
    bench_plain(benchmark, summary, minilm[batch])


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"early{round(100 * t)}")
@pytest.mark.parametrize("batch", MINILM_ROWS)
def test_minilm_pcee(
    benchmark: BenchmarkFixture,
    summary: Summary,
    minilm: dict[int, Case],
    batch: int,
    target: float,
) -> None:
    case = minilm[batch]
    delta = skip_repeated_delta(case, target)
    policy = adaptix.policy("pcee", delta, case.calibration)
    bench_runner(benchmark, summary, case, policy, f"pcee δ={delta:.3f}", "compact")
