"""The batched early-exit runtime against the plain model: ideal and realised speed-ups.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_runtime.py -q`` (the first run trains
the models and caches them under ``.benchmarks/models/``).

- Baseline: the plain model a user would otherwise deploy, ``model.forward_plain`` (every block,
  then the final head only).
- Ideal speed-up at a threshold: plain FLOPs / mean FLOPs of the exits taken, intermediate heads
  included (``plain_cost / (relative_cost · costs[-1])`` from the trace and `adaptix.simulate`).
  For lockstep mode, ``ideal(mode)`` charges every row of a batch up to the batch's deepest exit.
- Realised speed-up: time(plain) / time(runner) on the same inputs in the same run. On a shared
  machine the load drifts within minutes, so every round of a runner benchmark is paired with a
  run of the plain model in the round's untimed setup, right before it; the realised speed-up is
  the median of the per-round ratios. The plain model also has benchmarks of its own.
- No-exit case: a policy under which nothing exits, against every block and every head run
  without any decision (the runtime's overhead; the target is 5 % or less), paired the same way.
- Finite check: the runner with its default ``check_finite=True`` against the same runner with
  ``check_finite=False`` (the cost of refusing NaN or infinite logits), timed as on, off, off,
  on in every round; the target is no measurable change at batch 64 and above.
- Shift monitor: the runner with an `adaptix.ShiftMonitor` attached (``check_every=8``, no
  audit) against the same runner without one, timed as with, without, without, with in every
  round; the target is 2 % or less at batch 64 and above (issue 12).

The CNN is ``resnet`` size medium trained briefly on Fashion-MNIST, at batch sizes 1, 64 and
512 and three δ of ``pcee`` (about 30, 60 and 85 % early exits on the test data), in both modes.
The finite check runs on the CNN in compact mode at the middle δ, at every batch size; the shift
monitor on the same runner at batch sizes 64 and 256, 512 rows a round (at batch 64, eight calls:
every round reads the counts back once; at 256, one round in four does, and a read-back costs
under a millisecond against a round's seconds).
MiniLM on BBC News (through the plugin ``adaptix-transformers``; skipped when it is missing) runs
at the same batch sizes and δ targets in compact mode, plus its no-exit case. Every benchmark
checks its first call: the runner's exits and predictions against `adaptix.simulate` on the same
inputs. Speed targets are reported (``extra_info`` and the table at the end of the session),
never asserted.

The session starts with `adaptix.tune_cpu_allocator` (pass ``--default-allocator`` to keep
glibc's defaults): big activations then stop page-faulting on every forward pass, for the plain
model and the runner alike. The table's footer says which allocator ran.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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
    lockstep_mean_cost,
    pcee_deltas,
    unambiguous_rows,
)

import adaptix
from adaptix.errors import AdaptixError
from adaptix.model import profile_from_trace
from adaptix.rows import batch_size

CNN = CnnConfig()
MINILM = MiniLMConfig()
TARGETS = (0.30, 0.60, 0.85)  # early-exit rates on the test data
Mode = Literal["compact", "lockstep"]
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
        return ROUNDS[self.batch]

    def plain(self) -> torch.Tensor:
        """Predictions of the plain model (every block, the final head only)."""
        with torch.inference_mode():
            return torch.cat([self.model.forward_plain(b).argmax(dim=-1) for b in self.batches])

    def all_exits(self) -> torch.Tensor:
        """Every block and every head, no decisions: logits ``[N, E, C]``."""
        with torch.inference_mode():
            return torch.cat([torch.stack(list(self.model.iter_exits(b)), 1) for b in self.batches])


class Paired:
    """Times reference functions in a benchmark's untimed setup, right before every round, so
    that each round of the benchmarked function has references measured under the same load."""

    def __init__(self, **references: Callable[[], object]) -> None:
        self.references = references
        self.seconds: dict[str, list[float]] = {name: [] for name in references}

    def __call__(self) -> None:
        for name, reference in self.references.items():
            start = time.perf_counter()
            reference()
            self.seconds[name].append(time.perf_counter() - start)

    def ratio(self, name: str, rounds: list[float]) -> float:
        """Median over rounds of time(reference) / time(round)."""
        paired = self.seconds[name][WARMUP_ROUNDS : WARMUP_ROUNDS + len(rounds)]
        return statistics.median(r / t for r, t in zip(paired, rounds, strict=True))

    def on_off_cost(self, rounds: list[float]) -> float:
        """time(on) / time(off) - 1, the median over rounds of on, off, off, on quadruples: the
        references ``on``, ``off`` and ``off_again`` timed in the setup, then the round (on).

        The ratio of each quadruple cancels a load that drifts steadily over it, which on a
        shared machine moves a plain pair by more than a small feature costs (the second of two
        identical runs came out up to 13 % slower at batch 1).
        """
        setups = {
            name: seconds[WARMUP_ROUNDS : WARMUP_ROUNDS + len(rounds)]
            for name, seconds in self.seconds.items()
        }
        quadruples = zip(setups["on"], setups["off"], setups["off_again"], rounds, strict=True)
        ratios = [(on + again) / (off + off_again) for on, off, off_again, again in quadruples]
        return statistics.median(ratios) - 1


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
            "audit), median over rounds of four runs each (with, without, without, with)"
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
    return make_cases(cnn_trained, CNN_ROWS)


@pytest.fixture(scope="session")
def cnn_monitored(cnn_trained: Trained) -> dict[int, Case]:
    """The CNN's cases of the shift-monitor benchmark, by batch size."""
    return make_cases(cnn_trained, MONITOR_ROWS)


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


def measure(
    benchmark: BenchmarkFixture,
    fn: Callable[[], object],
    rounds: int,
    setup: Callable[[], None] | None = None,
) -> list[float] | None:
    """Seconds of each timed round of ``fn`` (None when benchmarking is disabled)."""
    benchmark.pedantic(fn, setup=setup, rounds=rounds, warmup_rounds=WARMUP_ROUNDS)
    stats = benchmark.stats
    return None if benchmark.disabled or stats is None else list(stats.stats.data)


def skip_repeated_delta(case: Case, target: float) -> float:
    """The δ for ``target``; skips when a smaller target already measured the same δ."""
    delta = case.deltas[target]
    same = [t for t in TARGETS if t < target and case.deltas[t] == delta]
    if same:
        pytest.skip(f"δ={delta:.4f} is also the closest δ for {same[0]:.0%} early exits")
    return delta


def bench_plain(benchmark: BenchmarkFixture, case: Case) -> None:
    assert torch.equal(case.plain(), case.trace.logits[:, -1].argmax(dim=-1))
    measure(benchmark, case.plain, case.rounds)
    plain_cost = profile_from_trace(case.trace).plain_cost
    benchmark.extra_info.update(family=case.family, batch=case.batch, plain_flops=plain_cost)


def bench_all_heads(benchmark: BenchmarkFixture, case: Case) -> None:
    assert torch.equal(case.all_exits().argmax(dim=-1), case.trace.logits.argmax(dim=-1))
    measure(benchmark, case.all_exits, case.rounds)
    benchmark.extra_info.update(family=case.family, batch=case.batch)


def assert_simulated(
    outputs: list[adaptix.RunnerOutput], expected: adaptix.SimulationResult
) -> None:
    """The runner's exits and predictions over a case's batches are what simulate says."""
    assert torch.equal(torch.cat([o.exit_index for o in outputs]), expected.exit_index)
    assert torch.equal(torch.cat([o.predictions for o in outputs]), expected.predictions)


def bench_runner(
    benchmark: BenchmarkFixture,
    summary: Summary,
    case: Case,
    policy: adaptix.ExitPolicy,
    label: str,
    mode: Mode,
) -> None:
    """Check the runner's first call against simulate, time it, record its speed-ups.

    Nothing leaving early, the round is also paired with every block and head run without
    decisions, for the runtime's overhead.
    """
    runner = adaptix.EarlyExitRunner(case.model, policy, mode=mode)

    def run() -> list[adaptix.RunnerOutput]:
        return [runner(b) for b in case.batches]

    expected = adaptix.simulate(case.trace, policy)
    outputs = run()
    assert_simulated(outputs, expected)
    nothing_exits = expected.early_exit_rate == 0.0
    paired = Paired(plain=case.plain, **({"all heads": case.all_exits} if nothing_exits else {}))
    rounds = measure(benchmark, run, case.rounds, setup=paired)

    costs = case.trace.costs
    plain_cost = profile_from_trace(case.trace).plain_cost
    ideal = plain_cost / (expected.relative_cost * float(costs[-1]))
    ideal_mode = ideal
    if mode == "lockstep":
        ideal_mode = plain_cost / lockstep_mean_cost(costs, expected.exit_index, case.batch)
    benchmark.extra_info.update(
        family=case.family,
        mode=mode,
        policy=label,
        batch=case.batch,
        early_exit_rate=expected.early_exit_rate,
        ideal=ideal,
        ideal_mode=ideal_mode,
    )
    if rounds is not None:
        realised = paired.ratio("plain", rounds)
        overhead = 1 / paired.ratio("all heads", rounds) - 1 if nothing_exits else None
        benchmark.extra_info.update(realised=realised, realised_over_ideal=realised / ideal)
        if overhead is not None:
            benchmark.extra_info.update(overhead_vs_all_heads=overhead)
        summary.rows.append(
            Row(
                case.family,
                mode,
                label,
                case.batch,
                expected.early_exit_rate,
                ideal,
                ideal_mode,
                statistics.median(rounds),
                len(case.batches),
                realised,
                overhead,
            )
        )


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
    bench_runner(benchmark, summary, case, policy, f"pcee δ={delta:.3f}", mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_nothing_exits(
    benchmark: BenchmarkFixture, summary: Summary, cnn: dict[int, Case], batch: int, mode: Mode
) -> None:
    case = cnn[batch]
    num_exits = case.model.num_exits
    # PABEE's streak k_e is at most e <= E - 2 at the early exits: t = E never fires.
    policy = adaptix.policy("patience", num_exits)
    assert adaptix.simulate(case.trace, policy).early_exit_rate == 0.0
    bench_runner(benchmark, summary, case, policy, f"patience t={num_exits}", mode)


@pytest.mark.parametrize("batch", CNN_ROWS)
def test_cnn_finite_check(
    benchmark: BenchmarkFixture, summary: Summary, cnn: dict[int, Case], batch: int
) -> None:
    """The runner with the finite check against the same runner without it.

    Each timed round (check on) follows, in its setup, one more run with the check and two
    without: on, off, off, on (`Paired.on_off_cost`).
    """
    case = cnn[batch]
    policy = adaptix.policy("pcee", case.deltas[0.60], case.calibration)
    checked = adaptix.EarlyExitRunner(case.model, policy)
    unchecked = adaptix.EarlyExitRunner(case.model, policy, check_finite=False)

    def run(runner: adaptix.EarlyExitRunner) -> list[adaptix.RunnerOutput]:
        return [runner(b) for b in case.batches]

    expected = adaptix.simulate(case.trace, policy)
    for runner in (checked, unchecked):
        outputs = run(runner)
        assert_simulated(outputs, expected)
    paired = Paired(
        on=lambda: run(checked), off=lambda: run(unchecked), off_again=lambda: run(unchecked)
    )
    rounds = measure(benchmark, lambda: run(checked), FINITE_CHECK_ROUNDS[batch], setup=paired)
    benchmark.extra_info.update(
        family=case.family, batch=case.batch, early_exit_rate=expected.early_exit_rate
    )
    if rounds is not None:
        cost = paired.on_off_cost(rounds)
        benchmark.extra_info.update(finite_check_cost=cost)
        summary.check_costs.append(
            CheckCost(case.family, case.batch, expected.early_exit_rate, cost, len(rounds))
        )


@pytest.mark.parametrize("batch", MONITOR_ROWS)
def test_cnn_shift_monitor(
    benchmark: BenchmarkFixture,
    monitor_costs: MonitorCosts,
    cnn_monitored: dict[int, Case],
    batch: int,
) -> None:
    """The runner with a `ShiftMonitor` (``check_every=8``, no audit) against the same runner
    without one, paired as the finite check is (with, without, without, with)."""
    case = cnn_monitored[batch]
    policy = adaptix.policy("pcee", case.deltas[0.60], case.calibration)
    # The reference is the test trace itself: the stream is a part of it, so nothing alarms.
    monitor = adaptix.ShiftMonitor(policy, case.trace, check_every=MONITOR_CHECK_EVERY)
    monitored = adaptix.EarlyExitRunner(case.model, policy, monitor=monitor)
    plain = adaptix.EarlyExitRunner(case.model, policy)

    def run(runner: adaptix.EarlyExitRunner) -> list[adaptix.RunnerOutput]:
        return [runner(b) for b in case.batches]

    expected = adaptix.simulate(case.trace, policy)
    with_monitor, without = run(monitored), run(plain)
    for outputs in (with_monitor, without):
        assert_simulated(outputs, expected)
    monitor.check()
    assert monitor._host is not None
    histogram = torch.bincount(expected.exit_index, minlength=case.model.num_exits)
    assert torch.equal(monitor._host[1], histogram)
    assert not monitor.alarmed
    paired = Paired(on=lambda: run(monitored), off=lambda: run(plain), off_again=lambda: run(plain))
    rounds = measure(benchmark, lambda: run(monitored), MONITOR_ROUNDS[batch], setup=paired)
    benchmark.extra_info.update(
        family=case.family,
        batch=case.batch,
        early_exit_rate=expected.early_exit_rate,
        check_every=MONITOR_CHECK_EVERY,
    )
    if rounds is not None:
        cost = paired.on_off_cost(rounds)
        share = monitor_share(case, policy, expected, lambda: run(plain))
        benchmark.extra_info.update(monitor_cost=cost, monitor_share=share)
        monitor_costs.costs.append(
            CheckCost(case.family, case.batch, expected.early_exit_rate, cost, len(rounds))
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
    benchmark: BenchmarkFixture, summary: Summary, minilm: dict[int, Case], batch: int
) -> None:
    case = minilm[batch]
    num_exits = case.model.num_exits
    policy = adaptix.policy("patience", num_exits)
    assert adaptix.simulate(case.trace, policy).early_exit_rate == 0.0
    bench_runner(benchmark, summary, case, policy, f"patience t={num_exits}", "compact")


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
