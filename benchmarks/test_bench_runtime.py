"""The batched early-exit runtime against the plain model: ideal and realised speed-ups.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_runtime.py -q`` (the first run trains
the models and caches them under ``.benchmarks/models/``).

Every runner benchmark times through the ``exit_benchmark`` fixture of adaptix's pytest plugin
(`adaptix.testing.speed.ExitBenchmark`), as a user's CI would, so its figures, saved runs and
``--adaptix-ratio-fail`` gates are the same:

- Baseline: the plain model a user would otherwise deploy, ``model.forward_plain`` (every block,
  then the final head only).
- Ideal speed-up at a threshold: baseline FLOPs / mean FLOPs of the exits taken, intermediate
  heads included (from the trace). For lockstep mode, ``ideal(mode)`` charges every row of a
  batch up to the batch's deepest exit.
- Realised speed-up: time(baseline) / time(runner) on the same inputs in the same run. On a
  shared machine the load drifts within minutes, so the baseline runs right before every timed
  round of the runner and once more after the last; each round's ratio takes the mean of the two
  baseline runs around it, and the realised speed-up is the median over rounds. The plain model
  and every head also have benchmarks of their own.
- No-exit case: a policy under which nothing exits, against every block and every head run
  without any decision (ideal 1), for the runtime's overhead ``1 / realised - 1``; the target
  is 5 % or less.
- Finite check: the runner with its default ``check_finite=True`` against the same runner with
  ``check_finite=False`` as the baseline (ideal 1; cost ``1 / realised - 1``, the price of
  refusing NaN or infinite logits); the target is no measurable change at batch 64 and above.
- Shift monitor: the runner with an `adaptix.ShiftMonitor` attached (``check_every=8``, no
  audit) against the same runner without one, measured as the finite check is; the target is
  2 % or less at batch 64 and above (issue 12).

The CNN is ``resnet`` size medium trained briefly on Fashion-MNIST, at batch sizes 1, 64 and
512 and three δ of ``pcee`` (about 30, 60 and 85 % early exits on the test data), in both modes.
The finite check runs on the CNN in compact mode at the middle δ, at every batch size; the shift
monitor on the same runner at batch sizes 64 and 256, 512 rows a round (at batch 64, eight calls:
every round reads the counts back once; at 256, one round in four does, and a read-back costs
under a millisecond against a round's seconds).
MiniLM on BBC News (through the plugin ``adaptix-transformers``; skipped when it is missing) runs
at the same batch sizes and δ targets in compact mode, plus its no-exit case. Every benchmark
checks its first call: the runner's exits and predictions against `adaptix.simulate` on the same
inputs, every row exactly (the rows are chosen clear of every decision boundary). Speed targets
are reported (``extra_info`` and the tables at the end of the session), never asserted.

The session starts with `adaptix.tune_cpu_allocator` (pass ``--default-allocator`` to keep
glibc's defaults): big activations then stop page-faulting on every forward pass, for the plain
model and the runner alike. The table's footer says which allocator ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from runtime_models import (
    CheckCost,
    CnnConfig,
    MiniLMConfig,
    Row,
    Summary,
    Trained,
    batches,
    load_cnn,
    load_minilm,
    pcee_deltas,
    unambiguous_rows,
)

import adaptix
from adaptix.core.rows import batch_size, take_rows
from adaptix.errors import AdaptixError
from adaptix.online.model import profile_from_trace
from adaptix.testing.speed import Agreement, ExitBenchmark, Mode, SpeedResult

CNN = CnnConfig()
MINILM = MiniLMConfig()
TARGETS = (0.30, 0.60, 0.85)  # early-exit rates on the test data
MODES: tuple[Mode, ...] = ("compact", "lockstep")
#: Rows timed per round at each batch size (batch size 1 costs a call per row: fewer rows).
CNN_ROWS = {1: 128, 64: 256, 512: 512}
MINILM_ROWS = {1: 16, 64: 128, 512: 512}
#: Timed rounds at each batch size (after one warm-up round); a round at batch size 512 already
#: averages over 512 inputs.
ROUNDS = {1: 5, 64: 5, 512: 3}
WARMUP_ROUNDS = 1
#: Timed rounds of the finite check: its cost is far below the machine's noise, so more rounds.
FINITE_CHECK_ROUNDS = {1: 9, 64: 11, 512: 7}
#: The shift monitor's benchmark: rows timed per round and timed rounds at each batch size.
MONITOR_ROWS = {64: 512, 256: 512}
MONITOR_ROUNDS = {64: 7, 256: 7}
MONITOR_CHECK_EVERY = 8
#: The ``exit_benchmark`` fixture of adaptix's pytest plugin: `ExitBenchmark(...).run(benchmark)`.
ExitBenchmarkFixture = Callable[..., SpeedResult]


@dataclass(frozen=True)
class Case:
    """A family's benchmark inputs at one batch size, with their trace and the chosen δ.

    Attributes:
        inputs: the benchmark's rows (unambiguous: see `unambiguous_rows`), in order.
        batches: the same rows in consecutive batches of ``batch``, as `ExitBenchmark` runs them.
        trace: the trace of ``inputs``.
        rounds: timed rounds of the case's benchmarks.
    """

    family: str
    model: adaptix.MultiExitModel
    batch: int
    inputs: Any
    batches: list[Any]
    trace: adaptix.Trace
    calibration: adaptix.Calibration
    deltas: dict[float, float]
    rounds: int

    def options(self, rounds: int | None = None) -> dict[str, Any]:
        """`ExitBenchmark`'s keyword arguments for this case: its batch size, trace (no second
        trace), labels and rounds."""
        return {
            "labels": self.trace.labels,
            "batch_size": self.batch,
            "trace": self.trace,
            "rounds": self.rounds if rounds is None else rounds,
            "warmup_rounds": WARMUP_ROUNDS,
        }

    def plain(self) -> torch.Tensor:
        """Predictions of the plain model (every block, the final head only)."""
        with torch.inference_mode():
            return torch.cat([self.model.forward_plain(b).argmax(dim=-1) for b in self.batches])

    def every_head(self, batch: Any) -> torch.Tensor:
        """Every block and every head on one batch, no decisions: logits ``[B, E, C]``."""
        return torch.stack(list(self.model.iter_exits(batch)), 1)

    def all_exits(self) -> torch.Tensor:
        """`every_head` over every batch: logits ``[N, E, C]``."""
        with torch.inference_mode():
            return torch.cat([self.every_head(b) for b in self.batches])


@pytest.fixture(scope="session")
def summary(request: pytest.FixtureRequest) -> Summary:
    """The session's results; the table is printed at the end of the session."""
    collector = Summary()
    request.config.pluginmanager.register(collector, "adaptix-runtime-summary")
    return collector


def make_cases(
    trained: Trained, rows_per_batch: dict[int, int], rounds: dict[int, int]
) -> dict[int, Case]:
    rows = unambiguous_rows(trained.trace, max(rows_per_batch.values()))
    deltas = pcee_deltas(trained.trace, trained.calibration, TARGETS)
    cases = {}
    for batch, count in rows_per_batch.items():
        inputs = take_rows(trained.inputs, rows[:count])
        cases[batch] = Case(
            trained.family,
            trained.model,
            batch,
            inputs,
            batches(inputs, batch),
            trained.trace.subset(rows[:count]),
            trained.calibration,
            deltas,
            rounds[batch],
        )
    return cases


@dataclass
class MonitorCosts:
    """The shift monitor's measured costs; printed at the end of the session (a pytest plugin,
    registered by its session fixture, like `Summary`)."""

    costs: list[CheckCost] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)  # the monitor's own work / runner time

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print the table (pytest hook)."""
        if not self.costs:
            return
        terminalreporter.write_sep("-", "the shift monitor: runner with it vs without it")
        terminalreporter.write_line(
            f"cost = time(with) / time(without) - 1 (check_every={MONITOR_CHECK_EVERY}, no "
            "audit), median over rounds, the runner without it timed right before and after "
            "each round"
        )
        terminalreporter.write_line(
            "own work = the monitor's hooks replayed on the same batches / time(without): an "
            "upper bound that the machine's noise does not blur"
        )
        terminalreporter.write_line(
            f"{'family':<14} {'batch':>5} {'early':>6} {'cost':>7} {'own work':>9} {'rounds':>6}"
        )
        rows = sorted(zip(self.costs, self.shares, strict=True), key=lambda r: r[0].batch)
        for cost, share in rows:
            terminalreporter.write_line(
                f"{cost.family:<14} {cost.batch:>5} {cost.early:>6.1%} {cost.cost:>+7.2%} "
                f"{share:>9.2%} {cost.rounds:>6}"
            )


@pytest.fixture(scope="session")
def monitor_costs(request: pytest.FixtureRequest) -> MonitorCosts:
    """The session's shift-monitor costs; the table is printed at the end of the session."""
    collector = MonitorCosts()
    request.config.pluginmanager.register(collector, "adaptix-monitor-costs")
    return collector


@pytest.fixture(scope="session")
def cnn_trained() -> Trained:
    """The trained CNN, its test inputs, trace and calibration."""
    return load_cnn(CNN)


@pytest.fixture(scope="session")
def cnn(cnn_trained: Trained) -> dict[int, Case]:
    """The CNN's cases by batch size."""
    return make_cases(cnn_trained, CNN_ROWS, ROUNDS)


@pytest.fixture(scope="session")
def cnn_monitored(cnn_trained: Trained) -> dict[int, Case]:
    """The CNN's cases of the shift-monitor benchmark, by batch size."""
    return make_cases(cnn_trained, MONITOR_ROWS, MONITOR_ROUNDS)


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
    return make_cases(load_minilm(MINILM), MINILM_ROWS, ROUNDS)


def skip_repeated_delta(case: Case, target: float) -> float:
    """The δ for ``target``; skips when a smaller target already measured the same δ."""
    delta = case.deltas[target]
    same = [t for t in TARGETS if t < target and case.deltas[t] == delta]
    if same:
        pytest.skip(f"δ={delta:.4f} is also the closest δ for {same[0]:.0%} early exits")
    return delta


def time_alone(benchmark: BenchmarkFixture, fn: Callable[[], object], rounds: int) -> None:
    """Time ``fn`` by itself (the plain model's and every head's own benchmarks, unpaired)."""
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=WARMUP_ROUNDS)


def bench_plain(benchmark: BenchmarkFixture, case: Case) -> None:
    assert torch.equal(case.plain(), case.trace.logits[:, -1].argmax(dim=-1))
    time_alone(benchmark, case.plain, case.rounds)
    plain_cost = profile_from_trace(case.trace).plain_cost
    benchmark.extra_info.update(family=case.family, batch=case.batch, plain_flops=plain_cost)


def bench_all_heads(benchmark: BenchmarkFixture, case: Case) -> None:
    assert torch.equal(case.all_exits().argmax(dim=-1), case.trace.logits.argmax(dim=-1))
    time_alone(benchmark, case.all_exits, case.rounds)
    benchmark.extra_info.update(family=case.family, batch=case.batch)


def assert_exact(agreement: Agreement) -> None:
    """Every row agreed with simulate exactly: the benchmark's rows are unambiguous, so even the
    float noise `ExitBenchmark` forgives would be a bug here."""
    assert agreement.exact == agreement.inputs, (
        f"{agreement.within_noise} of {agreement.inputs} unambiguous rows agree only within "
        "float noise"
    )


def bench_runner(
    exit_benchmark: ExitBenchmarkFixture,
    benchmark: BenchmarkFixture,
    summary: Summary,
    case: Case,
    policy: adaptix.ExitPolicy,
    label: str,
    mode: Mode,
) -> None:
    """Time the runner against the plain model through the ``exit_benchmark`` fixture (which
    first checks its decisions against simulate) and record the figures.

    When nothing leaves early, the baseline is every block and every head run without decisions
    (FLOPs ``costs[-1]`` per input, so ideal = 1): ``1 / realised - 1`` is the runtime's overhead.
    """
    nothing_exits = adaptix.simulate(case.trace, policy).early_exit_rate == 0.0
    baseline: dict[str, Any] = {}
    if nothing_exits:
        baseline = {"baseline": case.every_head, "baseline_flops": float(case.trace.costs[-1])}
    result = exit_benchmark(
        case.model, policy, case.inputs, mode=mode, **case.options(), **baseline
    )
    assert_exact(result.agreement)
    realised = result.realised_speedup
    overhead = 1 / realised - 1 if nothing_exits and realised is not None else None
    benchmark.extra_info.update(family=case.family, label=label)
    if overhead is not None:
        benchmark.extra_info.update(overhead_vs_all_heads=overhead)
    if realised is not None:
        summary.rows.append(Row(case.family, label, result, overhead))


def bench_feature(
    exit_benchmark: ExitBenchmarkFixture,
    case: Case,
    on: adaptix.EarlyExitRunner,
    off: adaptix.EarlyExitRunner,
    rounds: int,
) -> tuple[SpeedResult, float | None]:
    """The runner ``on`` against the same runner with a feature ``off``, both checked against
    simulate, timed through ``exit_benchmark`` with ``off`` as the baseline (run right before and
    after every timed round of ``on``; ideal = 1).

    Returns:
        The result and the feature's cost, time(on) / time(off) - 1 (None: not timed).
    """
    assert_exact(ExitBenchmark(case.model, off, case.inputs, **case.options()).check()[0])
    taken = adaptix.simulate(case.trace, off.policy).exit_index
    flops = float(case.trace.costs.double()[taken].mean())
    result = exit_benchmark(
        case.model, on, case.inputs, baseline=off, baseline_flops=flops, **case.options(rounds)
    )
    assert_exact(result.agreement)
    realised = result.realised_speedup
    return result, None if realised is None else 1 / realised - 1


# ------------------------------------------------------------------------------------- CNN


@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_plain(benchmark: BenchmarkFixture, cnn: dict[int, Case], batch: int) -> None:
    bench_plain(benchmark, cnn[batch])


@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_all_heads(benchmark: BenchmarkFixture, cnn: dict[int, Case], batch: int) -> None:
    bench_all_heads(benchmark, cnn[batch])


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"early{round(100 * t)}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_pcee(
    exit_benchmark: ExitBenchmarkFixture,
    benchmark: BenchmarkFixture,
    summary: Summary,
    cnn: dict[int, Case],
    batch: int,
    mode: Mode,
    target: float,
) -> None:
    case = cnn[batch]
    delta = skip_repeated_delta(case, target)
    policy = adaptix.policy("pcee", delta, case.calibration)
    bench_runner(exit_benchmark, benchmark, summary, case, policy, f"pcee δ={delta:.3f}", mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_nothing_exits(
    exit_benchmark: ExitBenchmarkFixture,
    benchmark: BenchmarkFixture,
    summary: Summary,
    cnn: dict[int, Case],
    batch: int,
    mode: Mode,
) -> None:
    case = cnn[batch]
    num_exits = case.model.num_exits
    # PABEE's streak k_e is at most e <= E - 2 at the early exits: t = E never fires.
    policy = adaptix.policy("patience", num_exits)
    assert adaptix.simulate(case.trace, policy).early_exit_rate == 0.0
    bench_runner(exit_benchmark, benchmark, summary, case, policy, f"patience t={num_exits}", mode)


@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_finite_check(
    exit_benchmark: ExitBenchmarkFixture,
    benchmark: BenchmarkFixture,
    summary: Summary,
    cnn: dict[int, Case],
    batch: int,
) -> None:
    """The runner with the finite check against the same runner without it (`bench_feature`)."""
    case = cnn[batch]
    policy = adaptix.policy("pcee", case.deltas[0.60], case.calibration)
    checked = adaptix.EarlyExitRunner(case.model, policy)
    unchecked = adaptix.EarlyExitRunner(case.model, policy, check_finite=False)
    result, cost = bench_feature(
        exit_benchmark, case, checked, unchecked, FINITE_CHECK_ROUNDS[batch]
    )
    benchmark.extra_info.update(family=case.family)
    if cost is not None:
        benchmark.extra_info.update(finite_check_cost=cost)
        summary.check_costs.append(
            CheckCost(case.family, case.batch, result.early_exit_rate, cost, result.rounds)
        )


@pytest.mark.parametrize("batch", MONITOR_ROWS)
def test_cnn_shift_monitor(
    exit_benchmark: ExitBenchmarkFixture,
    benchmark: BenchmarkFixture,
    monitor_costs: MonitorCosts,
    cnn_monitored: dict[int, Case],
    batch: int,
) -> None:
    """The runner with a `ShiftMonitor` (``check_every=8``, no audit) against the same runner
    without one (`bench_feature`)."""
    case = cnn_monitored[batch]
    policy = adaptix.policy("pcee", case.deltas[0.60], case.calibration)
    # The reference is the test trace itself: the stream is a part of it, so nothing alarms.
    monitor = adaptix.ShiftMonitor(policy, case.trace, check_every=MONITOR_CHECK_EVERY)
    monitored = adaptix.EarlyExitRunner(case.model, policy, monitor=monitor)
    plain = adaptix.EarlyExitRunner(case.model, policy)

    # The monitor's first pass counts exactly the exits simulate takes; then a fresh test.
    checker = ExitBenchmark(case.model, monitored, case.inputs, **case.options())
    _, simulated, _ = checker.check()
    monitor.check()
    assert monitor._host is not None
    histogram = torch.bincount(simulated.exit_index, minlength=case.model.num_exits)
    assert torch.equal(monitor._host[1], histogram)
    assert not monitor.alarmed
    monitor.reset()

    result, cost = bench_feature(exit_benchmark, case, monitored, plain, case.rounds)
    assert not monitor.alarmed
    benchmark.extra_info.update(family=case.family, check_every=MONITOR_CHECK_EVERY)
    if cost is not None:
        without = ExitBenchmark(case.model, plain, case.inputs, **case.options()).run_runner
        share = monitor_share(case, policy, simulated, without)
        benchmark.extra_info.update(monitor_cost=cost, monitor_share=share)
        monitor_costs.costs.append(
            CheckCost(case.family, case.batch, result.early_exit_rate, cost, result.rounds)
        )
        monitor_costs.shares.append(share)


def monitor_share(
    case: Case,
    policy: adaptix.ExitPolicy,
    expected: adaptix.SimulationResult,
    plain: Callable[[], object],
    repeats: int = 5,
) -> float:
    """The monitor's own work over the same batches (every exit's bin counts, the exit
    histogram, a check every ``check_every`` batches), replayed on the trace's logits, as a
    share of the runner's time without it (best of ``repeats`` each). Counting every row at
    every exit, where the runner counts only the rows that reach it, makes it an upper bound;
    unlike the paired ratio it does not drown in the noise of a shared machine."""
    replay = adaptix.ShiftMonitor(policy, case.trace, check_every=MONITOR_CHECK_EVERY)
    sizes = [batch_size(b) for b in case.batches]
    logits = case.trace.logits.split(sizes)
    exits = expected.exit_index.split(sizes)

    def hooks() -> None:
        for chunk, chunk_exits in zip(logits, exits, strict=True):
            for e in range(chunk.shape[1]):
                replay.count_exit(e, chunk[:, e])
            replay.end_batch(chunk_exits)

    def best(work: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return min(times)

    return best(hooks) / best(plain)


# ----------------------------------------------------------------------------------- MiniLM


@pytest.mark.parametrize("batch", MINILM_ROWS)
def test_minilm_plain(benchmark: BenchmarkFixture, minilm: dict[int, Case], batch: int) -> None:
    bench_plain(benchmark, minilm[batch])


@pytest.mark.parametrize("batch", MINILM_ROWS)
def test_minilm_all_heads(benchmark: BenchmarkFixture, minilm: dict[int, Case], batch: int) -> None:
    bench_all_heads(benchmark, minilm[batch])


@pytest.mark.parametrize("batch", MINILM_ROWS)
def test_minilm_nothing_exits(
    exit_benchmark: ExitBenchmarkFixture,
    benchmark: BenchmarkFixture,
    summary: Summary,
    minilm: dict[int, Case],
    batch: int,
) -> None:
    case = minilm[batch]
    num_exits = case.model.num_exits
    policy = adaptix.policy("patience", num_exits)
    assert adaptix.simulate(case.trace, policy).early_exit_rate == 0.0
    label = f"patience t={num_exits}"
    bench_runner(exit_benchmark, benchmark, summary, case, policy, label, "compact")


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"early{round(100 * t)}")
@pytest.mark.parametrize("batch", MINILM_ROWS)
def test_minilm_pcee(
    exit_benchmark: ExitBenchmarkFixture,
    benchmark: BenchmarkFixture,
    summary: Summary,
    minilm: dict[int, Case],
    batch: int,
    target: float,
) -> None:
    case = minilm[batch]
    delta = skip_repeated_delta(case, target)
    policy = adaptix.policy("pcee", delta, case.calibration)
    label = f"pcee δ={delta:.3f}"
    bench_runner(exit_benchmark, benchmark, summary, case, policy, label, "compact")
