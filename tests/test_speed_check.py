"""`adaptix.testing.speed`: the runner against `simulate` (exactly, or within float noise), the
ideal speed-ups against hand computations from the trace's costs, the paired timing, and every
argument check of `ExitBenchmark`.

The model is a four-exit MLP trained for a second on seeded Gaussian blobs, and the inputs are
only rows whose decisions stay clear of every boundary (as in ``test_runtime.py``): a compacted
batch may move a float32 logit by about 1e-6, and exact agreement is only promised away from
boundaries.
"""

from __future__ import annotations

import copy
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import adaptix
from adaptix import AdaptixError, EarlyExitRunner, ExitPolicy, MultiExitModel, ValidationError
from adaptix.online.model import profile_from_trace
from adaptix.online.runtime import RunnerOutput
from adaptix.testing import speed
from adaptix.testing.speed import (
    SHOWN_ROWS,
    ExitBenchmark,
    agree,
    describe,
    lockstep_mean_cost,
)

FEATURES, CLASSES, WIDTH, EXITS = 16, 4, 32, 4
CRITERIA = ("confidence", "pcee", "patience")
MODES = ("compact", "lockstep")
BINS = 10
EVAL_ROWS = 122  # not a multiple of the batch sizes below: the last batch is short
# Decisions of the evaluation rows stay at least this far from every boundary.
MARGIN = 1e-4
QUANTILES = (0.5, 0.4, 0.6, 0.3, 0.7)
# What `SpeedResult.extra_info` always holds, and what it holds only when timed / labelled.
ALWAYS = {
    "adaptix_version",
    "policy",
    "mode",
    "batch_size",
    "inputs",
    "baseline",
    "exit_histogram",
    "early_exit_rate",
    "ideal_speedup",
    "ideal_speedup_mode",
    "agreement_exact",
    "agreement_within_noise",
}
TIMED = {
    "realised_speedup",
    "realised_over_ideal",
    "baseline_seconds",
    "runner_seconds",
    "rounds",
    "passes_per_round",
}
LABELLED = {"accuracy", "baseline_accuracy"}


@dataclass(frozen=True)
class Setup:
    """A trained model, clear evaluation rows with labels, and a policy per criterion."""

    model: MultiExitModel
    inputs: Tensor
    labels: Tensor
    calibration: adaptix.Calibration
    policies: dict[str, ExitPolicy] = field(default_factory=dict)


def blobs(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` rows of four noisy Gaussian blobs in 16 dimensions, and their labels."""
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(CLASSES, (n,), generator=generator)
    return centres[labels] + 2.0 * torch.randn(n, FEATURES, generator=generator), labels


def mlp(first: int = FEATURES, exits: int = EXITS) -> MultiExitModel:
    """``exits`` ReLU layers of width 32, with a four-class linear exit after each."""
    return MultiExitModel(
        nn.ModuleList(
            nn.Sequential(nn.Linear(first if e == 0 else WIDTH, WIDTH), nn.ReLU())
            for e in range(exits)
        ),
        nn.ModuleList(nn.Linear(WIDTH, CLASSES) for _ in range(exits)),
    )


def clear_rows(trace: adaptix.Trace) -> Tensor:
    """Rows whose prediction and confidence bin are clear at every exit."""
    probs = torch.softmax(trace.logits.float(), dim=-1)
    top2 = probs.topk(2, dim=-1).values
    scaled = top2[..., 0] * BINS
    clear = (top2[..., 0] - top2[..., 1] > MARGIN) & ((scaled - scaled.round()).abs() > MARGIN)
    return clear.all(dim=1).nonzero().squeeze(1)


def spread_policy(base: ExitPolicy, trace: adaptix.Trace) -> ExitPolicy:
    """``base`` at a threshold in a wide gap of the early scores under which inputs leave at
    two or more distinct early exits."""
    last = trace.num_exits - 1
    if base.name == "patience":
        candidates = [1.0, 2.0]
    else:
        scores = base.scores(trace.logits)[:, :last]
        values = scores[torch.isfinite(scores)].flatten().double()
        distinct = values.unique()
        wide = distinct[1:] - distinct[:-1] > 2 * MARGIN
        middles = ((distinct[1:] + distinct[:-1]) / 2)[wide]
        targets = torch.quantile(values, torch.tensor(QUANTILES, dtype=torch.float64))
        candidates = [float(middles[(middles - t).abs().argmin()]) for t in targets]
    for threshold in candidates:
        policy = base.with_threshold(threshold)
        exits = adaptix.simulate(trace, policy).exit_index
        if len(set(exits.tolist()) - {last}) >= 2:
            return policy
    raise AssertionError(f"no threshold of {base.name} spreads inputs over two early exits")


@pytest.fixture(scope="module")
def trained() -> Setup:
    torch.manual_seed(0)
    model = mlp()
    inputs, labels = blobs(2000, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(120):
        rows = torch.randint(len(inputs), (128,), generator=generator)
        loss = sum(nn.functional.cross_entropy(out, labels[rows]) for out in model(inputs[rows]))
        optimiser.zero_grad()
        loss.backward()  # type: ignore[union-attr]  # a sum of tensors is a tensor
        optimiser.step()
    model.eval()
    calibration = adaptix.calibrate(model.trace(*blobs(1000, seed=2)), bins=BINS)
    pool_inputs, pool_labels = blobs(600, seed=3)
    pool = model.trace(pool_inputs, pool_labels)
    rows = clear_rows(pool)[:EVAL_ROWS]
    assert rows.numel() == EVAL_ROWS
    trace = pool.subset(rows)
    bases = {
        name: adaptix.policy(name, 1.0, calibration if name == "pcee" else None)
        for name in CRITERIA
    }
    policies = {name: spread_policy(base, trace) for name, base in bases.items()}
    return Setup(model, pool_inputs[rows], pool_labels[rows], calibration, policies)


def bench(trained: Setup, criterion: str = "confidence", **kwargs: Any) -> ExitBenchmark:
    """A benchmark of the setup's model and policy on its clear rows."""
    kwargs.setdefault("batch_size", 16)
    kwargs.setdefault("rounds", 1)
    kwargs.setdefault("warmup_rounds", 0)
    return ExitBenchmark(trained.model, trained.policies[criterion], trained.inputs, **kwargs)


# ---------------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_the_runner_agrees_exactly_with_simulate(trained: Setup, criterion: str, mode: str) -> None:
    benchmark = bench(trained, criterion, mode=mode, labels=trained.labels)
    agreement, simulated, ran = benchmark.check()
    last = EXITS - 1
    assert len(set(simulated.exit_index.tolist()) - {last}) >= 2  # the runner really compacts
    assert agreement.ok
    assert (agreement.inputs, agreement.exact, agreement.within_noise) == (EVAL_ROWS,) * 2 + (0,)
    assert agreement.disagreeing == ()
    assert torch.equal(ran.exit_index, simulated.exit_index)
    assert torch.equal(ran.predictions, simulated.predictions)
    # simulate ran on the trace of exactly these inputs, as the user would make it
    expected = adaptix.simulate(
        trained.model.trace(trained.inputs, trained.labels), trained.policies[criterion]
    )
    assert torch.equal(simulated.exit_index, expected.exit_index)


def boundary_case() -> tuple[adaptix.Trace, ExitPolicy, adaptix.SimulationResult]:
    """Three rows, two exits, a confidence threshold just (about 2 float32 ulps) above row 0's
    first-exit confidence: row 0 stays to the last exit only by float noise; row 1 (confidence
    0.52) clearly stays; row 2 (confidence 0.998) clearly leaves at exit 0."""
    first = torch.tensor([[0.0, 2.0], [0.0, 0.1], [0.0, 6.0]])
    last = torch.tensor([[3.0, 0.0], [3.0, 0.0], [3.0, 0.0]])
    trace = adaptix.Trace(torch.stack([first, last], dim=1), None, [1.0, 2.0])
    near = float(torch.softmax(first[0], dim=-1).max())
    policy = adaptix.policy("confidence", near + 1e-7)
    simulated = adaptix.simulate(trace, policy)
    assert simulated.exit_index.tolist() == [1, 1, 0]
    assert simulated.predictions.tolist() == [0, 0, 1]
    return trace, policy, simulated


def runner_output(exits: list[int], predictions: list[int]) -> RunnerOutput:
    return RunnerOutput(predictions=torch.tensor(predictions), exit_index=torch.tensor(exits))


def test_agree_forgives_a_decision_within_float_noise_of_the_threshold() -> None:
    trace, policy, simulated = boundary_case()
    ran = runner_output([0, 1, 0], [1, 0, 1])  # row 0 left at exit 0, with exit 0's prediction
    agreement = agree(trace, policy, simulated, ran, tolerance=1e-4)
    assert agreement.ok
    assert (agreement.exact, agreement.within_noise, agreement.disagreeing) == (2, 1, ())
    assert agreement.tolerance == 1e-4


@pytest.mark.parametrize("tolerance", [0.0, 1e-10])
def test_agree_forgives_nothing_beyond_its_tolerance(tolerance: float) -> None:
    trace, policy, simulated = boundary_case()
    ran = runner_output([0, 1, 0], [1, 0, 1])
    agreement = agree(trace, policy, simulated, ran, tolerance=tolerance)
    assert not agreement.ok
    assert (agreement.exact, agreement.within_noise, agreement.disagreeing) == (2, 0, (0,))


@pytest.mark.parametrize(
    ("exits", "predictions", "row"),
    [
        ([1, 1, 1], [0, 0, 0], 2),  # a clear early exit delayed by one
        ([1, 0, 0], [0, 1, 1], 1),  # a clear stay taken early
        ([1, 1, 0], [0, 1, 1], 1),  # the right exit with another prediction
    ],
    ids=["exit-delayed", "exit-advanced", "prediction-only"],
)
def test_agree_does_not_forgive_a_real_disagreement(
    exits: list[int], predictions: list[int], row: int
) -> None:
    trace, policy, simulated = boundary_case()
    # row 0's noise-level difference stays forgiven alongside
    exits, predictions = [0, *exits[1:]], [1, *predictions[1:]]
    agreement = agree(trace, policy, simulated, runner_output(exits, predictions), tolerance=1e-4)
    assert not agreement.ok
    assert agreement.disagreeing == (row,)
    assert (agreement.exact, agreement.within_noise) == (1, 1)


def test_agree_scales_the_perturbation_with_the_largest_logit() -> None:
    """Two rows with the same softmax, 0.05 of a logit short of the threshold: with logits
    near 1000 (perturbations up to 0.1) that is float noise; with logits near 2 (up to 2e-4)
    it is a real disagreement."""
    near = float(torch.softmax(torch.tensor([0.0, 2.0]), dim=-1).max())
    first = torch.tensor([[1000.0, 1001.95], [0.0, 1.95]])
    last = torch.tensor([[3.0, 0.0], [3.0, 0.0]])
    trace = adaptix.Trace(torch.stack([first, last], dim=1), None, [1.0, 2.0])
    policy = adaptix.policy("confidence", near)
    simulated = adaptix.simulate(trace, policy)
    assert simulated.exit_index.tolist() == [1, 1]
    agreement = agree(trace, policy, simulated, runner_output([0, 0], [1, 1]), tolerance=1e-4)
    assert (agreement.within_noise, agreement.disagreeing) == (1, (1,))


def test_check_lists_the_rows_of_a_corrupted_runner(
    trained: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner that sends every batch's first row one exit further than it should (wrapping
    to exit 0) disagrees on exactly those rows, and the failure lists them."""
    original = EarlyExitRunner.__call__

    def shifted(self: EarlyExitRunner, batch: Any) -> RunnerOutput:
        out = original(self, batch)
        exits = out.exit_index.clone()
        exits[0] = (exits[0] + 1) % EXITS
        return RunnerOutput(out.predictions, exits, out.probabilities)

    monkeypatch.setattr(EarlyExitRunner, "__call__", shifted)
    size = 16
    benchmark = bench(trained, "pcee", batch_size=size)
    with pytest.raises(AssertionError) as caught:
        benchmark.check()
    message = str(caught.value)
    rows = list(range(0, EVAL_ROWS, size))
    assert f"disagrees with adaptix.simulate on {len(rows)} of {EVAL_ROWS} inputs" in message
    assert describe(benchmark.policy) in message
    listed = [int(line.split()[0]) for line in message.splitlines()[2:]]
    assert listed == rows
    simulated = adaptix.simulate(benchmark.trace, benchmark.policy)
    for line, row in zip(message.splitlines()[2:], rows, strict=True):
        runner_exit, simulated_exit = (int(v) for v in line.split()[1:3])
        assert simulated_exit == int(simulated.exit_index[row])
        assert runner_exit == (simulated_exit + 1) % EXITS
    # run() checks first: a corrupted runner is never timed
    with pytest.raises(AssertionError, match="disagrees"):
        benchmark.run()


def test_check_shows_the_first_rows_and_counts_the_rest(
    trained: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = EarlyExitRunner.__call__

    def wrong(self: EarlyExitRunner, batch: Any) -> RunnerOutput:
        out = original(self, batch)
        return RunnerOutput((out.predictions + 1) % CLASSES, out.exit_index)

    monkeypatch.setattr(EarlyExitRunner, "__call__", wrong)
    with pytest.raises(AssertionError) as caught:
        bench(trained, "confidence").check()
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"the runner disagrees with adaptix.simulate on {EVAL_ROWS} of")
    assert [int(line.split()[0]) for line in lines[2:-1]] == list(range(SHOWN_ROWS))
    assert lines[-1] == f"... and {EVAL_ROWS - SHOWN_ROWS} more"


def identity_model() -> MultiExitModel:
    """Two exits on two features whose logits at both exits are the inputs themselves."""

    def identity() -> nn.Linear:
        layer = nn.Linear(2, 2)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
        return layer

    return MultiExitModel(
        nn.ModuleList([identity(), identity()]), nn.ModuleList([identity(), identity()])
    ).eval()


@pytest.fixture
def noisy_runner(monkeypatch: pytest.MonkeyPatch) -> ExitBenchmark:
    """The first exit of `boundary_case` run for real (the inputs are the logits at both
    exits); the runner, patched, sends row 0, which simulate keeps to the last exit by 1e-7 of
    confidence, out at exit 0 with the same prediction."""
    first = torch.tensor([[0.0, 2.0], [0.0, 0.1], [0.0, 6.0]])
    policy = adaptix.policy("confidence", float(torch.softmax(first[0], dim=-1).max()) + 1e-7)
    original = EarlyExitRunner.__call__

    def early_row_zero(self: EarlyExitRunner, batch: Any) -> RunnerOutput:
        out = original(self, batch)
        exits = out.exit_index.clone()
        exits[0] = 0
        return RunnerOutput(out.predictions, exits)

    monkeypatch.setattr(EarlyExitRunner, "__call__", early_row_zero)
    return ExitBenchmark(identity_model(), policy, first, batch_size=8, rounds=1, warmup_rounds=0)


def test_check_forgives_a_runner_within_float_noise(noisy_runner: ExitBenchmark) -> None:
    agreement, simulated, ran = noisy_runner.check()
    assert simulated.exit_index.tolist() == [1, 1, 0]
    assert ran.exit_index.tolist() == [0, 1, 0]
    assert (agreement.exact, agreement.within_noise, agreement.disagreeing) == (2, 1, ())
    assert "agreement         2/3 exact, 1 within float noise" in noisy_runner.run().table()


def test_exit_histogram_and_early_exit_rate_describe_the_same_rows(
    noisy_runner: ExitBenchmark,
) -> None:
    """Both describe the rows the runner measured: with a row forgiven as float noise, the
    early-exit rate must still be read off the runner's exits, as the histogram is."""
    result = noisy_runner.run()
    assert result.exit_histogram == (2, 1)
    assert result.early_exit_rate == pytest.approx(2 / 3)


# -------------------------------------------------------------------------------- ideal speed


def plain_flops_by_hand() -> float:
    """FLOPs per input of the plain MLP: every linear block, then the last head (2 per MAC)."""
    return 2.0 * (FEATURES * WIDTH + (EXITS - 1) * WIDTH * WIDTH + WIDTH * CLASSES)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_ideal_speedup_is_plain_flops_over_the_mean_cost_taken(
    trained: Setup, criterion: str
) -> None:
    benchmark = bench(trained, criterion)
    result = benchmark.run()
    trace = benchmark.trace
    assert profile_from_trace(trace).plain_cost == plain_flops_by_hand()
    exits = adaptix.simulate(trace, benchmark.policy).exit_index
    costs = trace.costs.double()
    mean_cost = sum(float(costs[e]) for e in exits.tolist()) / EVAL_ROWS
    assert result.ideal_speedup == pytest.approx(plain_flops_by_hand() / mean_cost, rel=1e-12)
    assert result.ideal_speedup_mode == result.ideal_speedup  # compact: no extra charge
    assert result.ideal_speedup > 1.0  # every policy here lets many rows leave early
    histogram = [exits.tolist().count(e) for e in range(EXITS)]
    assert list(result.exit_histogram) == histogram
    assert result.early_exit_rate == pytest.approx(1 - histogram[-1] / EVAL_ROWS)
    assert result.baseline == "the plain model"
    assert result.policy == describe(benchmark.policy)


@pytest.mark.parametrize("size", [5, 16])
def test_lockstep_ideal_charges_every_row_its_batchs_deepest_exit(
    trained: Setup, size: int
) -> None:
    benchmark = bench(trained, "confidence", mode="lockstep", batch_size=size)
    result = benchmark.run()
    trace = benchmark.trace
    exits = adaptix.simulate(trace, benchmark.policy).exit_index.tolist()
    costs = trace.costs.tolist()
    charged = []
    for start in range(0, EVAL_ROWS, size):
        batch = exits[start : start + size]
        charged += [costs[max(batch)]] * len(batch)
    expected = plain_flops_by_hand() / (sum(charged) / EVAL_ROWS)
    assert result.mode == "lockstep"
    assert result.ideal_speedup_mode == pytest.approx(expected, rel=1e-12)
    assert result.ideal_speedup_mode < result.ideal_speedup
    mean_taken = sum(costs[e] for e in exits) / EVAL_ROWS
    assert result.ideal_speedup == pytest.approx(plain_flops_by_hand() / mean_taken, rel=1e-12)
    assert "ideal (lockstep)" in result.table()


def test_lockstep_mean_cost_by_hand() -> None:
    costs = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    exits = torch.tensor([0, 1, 0, 3, 0, 2])
    assert lockstep_mean_cost(costs, exits, 3) == pytest.approx((2 * 3 + 4 * 3) / 6)
    assert lockstep_mean_cost(costs, exits, 4) == pytest.approx((4 * 4 + 3 * 2) / 6)
    assert lockstep_mean_cost(costs, exits, 1) == pytest.approx(float(costs[exits].mean()))


def test_a_smaller_baseline_has_its_flops_counted(trained: Setup) -> None:
    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(FEATURES, 8), nn.ReLU(), nn.Linear(8, CLASSES)).eval()
    size = 16
    benchmark = bench(trained, "pcee", baseline=small, batch_size=size, labels=trained.labels)
    result = benchmark.run()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        small(trained.inputs[:size])
    counted = counter.get_total_flops() / size
    assert counted == 2 * (FEATURES * 8 + 8 * CLASSES)
    exits = adaptix.simulate(benchmark.trace, benchmark.policy).exit_index
    mean_cost = float(benchmark.trace.costs.double()[exits].mean())
    assert result.ideal_speedup == pytest.approx(counted / mean_cost, rel=1e-12)
    assert result.ideal_speedup < 1.0  # the small model is cheaper than any early exit
    assert result.baseline == "Sequential"
    assert result.accuracy is not None
    assert result.baseline_accuracy is None  # only the plain model's accuracy is known
    assert "baseline_accuracy" not in result.extra_info()


def test_baseline_flops_given_are_used_as_they_are(trained: Setup) -> None:
    def identity(batch: Tensor) -> Tensor:
        return batch

    benchmark = bench(trained, "confidence", baseline=identity, baseline_flops=1e6)
    result = benchmark.run()
    exits = adaptix.simulate(benchmark.trace, benchmark.policy).exit_index
    mean_cost = float(benchmark.trace.costs.double()[exits].mean())
    assert result.ideal_speedup == pytest.approx(1e6 / mean_cost, rel=1e-12)
    assert result.baseline.endswith("identity")


def test_a_baseline_can_be_named(trained: Setup) -> None:
    small = nn.Linear(FEATURES, CLASSES).eval()
    result = bench(trained, "confidence", baseline=small, baseline_name="a linear probe").run()
    assert result.baseline == "a linear probe"
    assert result.extra_info()["baseline"] == "a linear probe"
    assert "(FLOPs, against a linear probe)" in result.table()


def test_a_baseline_without_counted_flops_needs_baseline_flops(trained: Setup) -> None:
    benchmark = bench(trained, "confidence", baseline=lambda batch: batch)
    with pytest.raises(ValidationError, match=r"counted no FLOPs.*baseline_flops="):
        benchmark.run()


# --------------------------------------------------------------------------------- timing


def test_run_times_paired_rounds(trained: Setup) -> None:
    benchmark = bench(trained, "pcee", rounds=3, warmup_rounds=1, labels=trained.labels)
    result = benchmark.run()
    assert result.rounds == 3
    assert result.realised_speedup is not None
    assert result.realised_speedup > 0
    assert result.baseline_seconds is not None
    assert result.baseline_seconds > 0
    assert result.runner_seconds is not None
    assert result.runner_seconds > 0
    assert result.realised_over_ideal == pytest.approx(
        result.realised_speedup / result.ideal_speedup
    )
    info = json.loads(json.dumps(result.extra_info()))
    assert set(info) == ALWAYS | TIMED | LABELLED
    assert info["adaptix_version"] == adaptix.__version__
    assert info["rounds"] == 3
    assert info["inputs"] == EVAL_ROWS
    assert info["batch_size"] == 16
    assert info["mode"] == "compact"
    assert info["exit_histogram"] == list(result.exit_histogram)
    assert info["agreement_exact"] == EVAL_ROWS
    assert info["agreement_within_noise"] == 0
    assert info["realised_speedup"] == result.realised_speedup
    assert "realised speed-up" in result.table()
    assert "median of 3 paired rounds" in result.table()


class FakeClock:
    """A `time` stand-in whose clock only moves when the baseline or the runner runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def scripted(
    benchmark: ExitBenchmark, clock: FakeClock, baseline: list[float], runner: list[float]
) -> None:
    """Make each pass of the baseline and the runner take the next scripted seconds."""
    run_baseline, run_runner = benchmark.run_baseline, benchmark.run_runner

    def timed(fn: Callable[[], Any], seconds: list[float]) -> Callable[[], Any]:
        def call() -> Any:
            out = fn()
            clock.now += seconds.pop(0)
            return out

        return call

    benchmark.run_baseline = timed(run_baseline, baseline)  # type: ignore[method-assign]  # a timed stand-in
    benchmark.run_runner = timed(run_runner, runner)  # type: ignore[method-assign]  # a timed stand-in


def test_realised_speedup_is_the_median_of_bracketed_ratios(
    trained: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round i's ratio is the mean of the baseline passes on either side over the runner's
    time; warm-up passes count for nothing."""
    clock = FakeClock()
    monkeypatch.setattr("adaptix.testing.speed.time", clock)
    benchmark = bench(trained, "confidence", rounds=3, warmup_rounds=1, passes=1)
    # the check's pass, then (baseline, runner) for the warm-up and each round, then a baseline
    baseline = [50.0, 1.0, 1.2, 1.4, 1.6]
    runner = [9.0, 40.0, 0.5, 0.4, 0.8]
    scripted(benchmark, clock, baseline, runner)
    result = benchmark.run()
    assert baseline == runner == []  # every pass was timed by the script
    ratios = [(1.0 + 1.2) / 2 / 0.5, (1.2 + 1.4) / 2 / 0.4, (1.4 + 1.6) / 2 / 0.8]
    assert result.realised_speedup == pytest.approx(statistics.median(ratios))
    assert result.runner_seconds == pytest.approx(0.5)
    assert result.rounds == 3


def test_baseline_seconds_leave_out_the_warmup_pass(
    trained: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`baseline_seconds` is documented as the median of one baseline pass, as
    `runner_seconds` is of the runner's timed rounds: the untimed warm-up's baseline pass (slow
    on a cold machine) must not count."""
    clock = FakeClock()
    monkeypatch.setattr("adaptix.testing.speed.time", clock)
    benchmark = bench(trained, "confidence", rounds=3, warmup_rounds=1, passes=1)
    scripted(benchmark, clock, [50.0, 1.0, 1.2, 1.4, 1.6], [9.0, 40.0, 0.5, 0.4, 0.8])
    result = benchmark.run()
    assert result.baseline_seconds == pytest.approx(statistics.median([1.0, 1.2, 1.4, 1.6]))


def test_a_fast_model_makes_several_passes_a_round(
    trained: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passes of 3 ms (runner) and 4 ms (baseline): the shorter needs 50 / 3 = 16.7 passes to
    last `MIN_ROUND_SECONDS`, rounded up to 32; the times and ratios are per pass."""
    clock = FakeClock()
    monkeypatch.setattr("adaptix.testing.speed.time", clock)
    assert speed.MIN_ROUND_SECONDS == 0.05
    benchmark = bench(trained, "confidence", rounds=2, warmup_rounds=0)
    passes = 32
    # the check's runner pass; the calibration's baseline and runner pass; then two rounds
    # and the closing baseline, 32 passes each
    baseline = [0.004] + [0.004] * passes + [0.006] * passes + [0.004] * passes
    runner = [0.003, 0.003] + [0.003] * passes + [0.002] * passes
    scripted(benchmark, clock, baseline, runner)
    result = benchmark.run()
    assert baseline == runner == []
    assert result.passes == passes
    assert result.extra_info()["passes_per_round"] == passes
    assert result.runner_seconds == pytest.approx(statistics.median([0.003, 0.002]))
    ratios = [(0.004 + 0.006) / 2 / 0.003, (0.006 + 0.004) / 2 / 0.002]
    assert result.realised_speedup == pytest.approx(statistics.median(ratios))


def test_a_slow_model_makes_one_pass_a_round(
    trained: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("adaptix.testing.speed.time", clock)
    benchmark = bench(trained, "confidence", rounds=1, warmup_rounds=0)
    scripted(benchmark, clock, [0.2, 0.2, 0.2], [0.1, 0.1, 0.1])
    assert benchmark.run().passes == 1


def test_a_tiny_baseline_against_a_slow_runner_keeps_rounds_short(
    trained: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 ms baseline would want 64 passes, but 64 passes of a 300 ms runner would make a round
    last 19 s: the passes stop at what keeps the slower within `MAX_ROUND_SECONDS` (2)."""
    clock = FakeClock()
    monkeypatch.setattr("adaptix.testing.speed.time", clock)
    assert speed.MAX_ROUND_SECONDS == 1.0
    benchmark = bench(trained, "confidence", rounds=1, warmup_rounds=0)
    passes = 2
    baseline = [0.001] + [0.001] * passes * 2
    runner = [0.3, 0.3] + [0.3] * passes
    scripted(benchmark, clock, baseline, runner)
    assert benchmark.run().passes == passes
    assert baseline == runner == []


class FakeBenchmark:
    """pytest-benchmark's ``benchmark`` fixture as `ExitBenchmark` uses it."""

    def __init__(self, disabled: bool, runner_times: list[float] | None = None) -> None:
        self.disabled = disabled
        self.extra_info: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []
        self.stats = None if disabled else SimpleNamespace(stats=SimpleNamespace(data=runner_times))

    def pedantic(
        self,
        target: Callable[[], Any],
        setup: Callable[[], None],
        rounds: int,
        warmup_rounds: int,
        iterations: int,
    ) -> Any:
        self.calls.append(
            {"rounds": rounds, "warmup_rounds": warmup_rounds, "iterations": iterations}
        )
        if self.disabled:  # what pytest-benchmark does under --benchmark-disable
            setup()
            return target()
        for _ in range(warmup_rounds + rounds):
            setup()
            target()
        return None


def test_a_disabled_benchmark_measures_no_time(trained: Setup) -> None:
    fake = FakeBenchmark(disabled=True)
    result = bench(trained, "pcee", rounds=4, warmup_rounds=2, labels=trained.labels).run(fake)
    assert fake.calls == [{"rounds": 4, "warmup_rounds": 2, "iterations": 1}]
    assert result.realised_speedup is None
    assert result.realised_over_ideal is None
    assert result.baseline_seconds is None
    assert result.runner_seconds is None
    assert result.rounds == 0
    info = result.extra_info()
    assert set(info) == ALWAYS | LABELLED  # nothing timed, nothing realised
    assert fake.extra_info == info
    json.dumps(info)
    assert "not timed" in result.table()
    assert result.ideal_speedup > 1.0  # the FLOP figures do not need timing


def test_an_enabled_benchmark_supplies_the_runners_rounds(
    trained: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr("adaptix.testing.speed.time", clock)
    fake = FakeBenchmark(disabled=False, runner_times=[0.5, 0.25])
    benchmark = bench(trained, "confidence", rounds=2, warmup_rounds=0, passes=1)
    # pytest-benchmark times the runner itself: only the baseline passes advance the clock
    scripted(benchmark, clock, [1.0, 1.5, 2.0], [0.0] * 3)
    result = benchmark.run(fake)
    ratios = [(1.0 + 1.5) / 2 / 0.5, (1.5 + 2.0) / 2 / 0.25]
    assert result.realised_speedup == pytest.approx(statistics.median(ratios))
    assert result.runner_seconds == pytest.approx(statistics.median([0.5, 0.25]))
    assert result.rounds == 2
    assert fake.extra_info["realised_speedup"] == result.realised_speedup
    assert fake.extra_info["rounds"] == 2


# ------------------------------------------------------------------------------- accuracy


def test_accuracies_are_counted_by_hand(trained: Setup) -> None:
    # patience: on these rows its accuracy differs from the plain model's
    benchmark = bench(trained, "patience", labels=trained.labels)
    result = benchmark.run()
    simulated = adaptix.simulate(benchmark.trace, benchmark.policy)
    right = sum(
        int(p == y)
        for p, y in zip(simulated.predictions.tolist(), trained.labels.tolist(), strict=True)
    )
    assert result.accuracy == pytest.approx(right / EVAL_ROWS)
    with torch.inference_mode():
        plain = trained.model.forward_plain(trained.inputs).argmax(dim=-1)
    assert result.baseline_accuracy == pytest.approx(
        float((plain == trained.labels).double().mean())
    )
    assert result.accuracy != result.baseline_accuracy  # the two are not one figure twice
    assert f"accuracy          {result.accuracy:.4f}, plain" in result.table()


def test_no_labels_no_accuracy(trained: Setup) -> None:
    result = bench(trained, "confidence").run()
    assert result.accuracy is None
    assert result.baseline_accuracy is None
    assert not LABELLED & set(result.extra_info())


def test_a_given_trace_is_used_instead_of_tracing(trained: Setup) -> None:
    trace = trained.model.trace(trained.inputs, trained.labels, batch_size=16)
    benchmark = bench(trained, "pcee", trace=trace)
    assert benchmark.trace is trace
    assert benchmark.check()[0].exact == EVAL_ROWS


# ----------------------------------------------------------------------------- bad arguments


def other_model() -> MultiExitModel:
    torch.manual_seed(1)
    return mlp().eval()


BAD_ARGUMENTS: dict[str, tuple[Callable[[Setup], dict[str, Any]], str]] = {
    "training-mode": (
        lambda s: {"model": copy.deepcopy(s.model).train()},
        "eval mode.*model.eval",
    ),
    "not-a-multi-exit-model": (lambda s: {"model": nn.Linear(FEATURES, CLASSES)}, "MultiExitModel"),
    "policy-is-a-name": (lambda s: {"policy": "confidence"}, "ExitPolicy or an adaptix"),
    "unknown-mode": (lambda s: {"mode": "eager"}, "'compact' or 'lockstep'"),
    "batch-size-zero": (
        lambda s: {"batch_size": 0},
        r"batch_size to be an integer ≥ 1, got 0",
    ),
    "batch-size-float": (lambda s: {"batch_size": 2.5}, "batch_size to be an integer, got 2.5"),
    "batch-size-bool": (lambda s: {"batch_size": True}, "batch_size to be an integer, got True"),
    "rounds-zero": (lambda s: {"rounds": 0}, r"rounds to be an integer ≥ 1"),
    "warmup-negative": (lambda s: {"warmup_rounds": -1}, r"warmup_rounds to be an integer ≥ 0"),
    "tolerance-negative": (lambda s: {"tolerance": -1e-4}, r"tolerance in \[0, 1\)"),
    "tolerance-one": (lambda s: {"tolerance": 1.0}, r"tolerance in \[0, 1\)"),
    "tolerance-nan": (lambda s: {"tolerance": float("nan")}, "tolerance to be a finite real"),
    "tolerance-bool": (lambda s: {"tolerance": True}, "tolerance to be a real number, got True"),
    "labels-short": (lambda s: {"labels": s.labels[:-1]}, rf"labels of shape \[{EVAL_ROWS}\]"),
    "labels-2d": (lambda s: {"labels": s.labels[:, None]}, rf"labels of shape \[{EVAL_ROWS}\]"),
    "labels-list": (lambda s: {"labels": s.labels.tolist()}, "got list"),
    "trace-of-other-size": (
        lambda s: {"trace": s.model.trace(s.inputs[:-1])},
        f"trace of these {EVAL_ROWS} inputs, got {EVAL_ROWS - 1} inputs",
    ),
    "trace-not-a-trace": (lambda s: {"trace": s.inputs}, "got a Tensor"),
    "runner-for-another-model": (
        lambda s: {"policy": EarlyExitRunner(other_model(), s.policies["confidence"])},
        "EarlyExitRunner built for this model",
    ),
    "runner-monitor-audits": (
        lambda s: {
            "policy": EarlyExitRunner(
                s.model,
                s.policies["confidence"],
                monitor=adaptix.ShiftMonitor(
                    s.policies["confidence"], s.model.trace(s.inputs), audit=0.1
                ),
            )
        },
        "audit=0.1",
    ),
    "baseline-not-callable": (lambda s: {"baseline": 3}, "callable baseline, got int"),
    "baseline-flops-zero": (
        lambda s: {"baseline_flops": 0},
        r"baseline_flops in \(0, inf\), got 0",
    ),
    "baseline-flops-negative": (lambda s: {"baseline_flops": -5.0}, r"baseline_flops in \(0"),
    "baseline-flops-inf": (
        lambda s: {"baseline_flops": float("inf")},
        "finite real number, got inf",
    ),
    "baseline-flops-nan": (
        lambda s: {"baseline_flops": float("nan")},
        "finite real number, got nan",
    ),
    "baseline-flops-bool": (lambda s: {"baseline_flops": True}, "real number, got True"),
    "baseline-flops-str": (lambda s: {"baseline_flops": "1e6"}, r"real number, got '1e6' \(str\)"),
    "baseline-name-not-str": (lambda s: {"baseline_name": 3}, "str baseline_name, got 3"),
    "baseline-name-blank": (lambda s: {"baseline_name": " "}, "non-empty baseline_name"),
    "mode-conflicts-with-runner": (
        lambda s: {
            "policy": EarlyExitRunner(s.model, s.policies["confidence"]),
            "mode": "lockstep",
        },
        "runner's own \\('compact'\\), got 'lockstep'",
    ),
    "empty-inputs": (lambda s: {"inputs": s.inputs[:0]}, "at least one input row"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_are_refused(trained: Setup, case: str) -> None:
    make, message = BAD_ARGUMENTS[case]
    arguments: dict[str, Any] = {
        "model": trained.model,
        "policy": trained.policies["confidence"],
        "inputs": trained.inputs,
    }
    arguments.update(make(trained))
    model, policy, inputs = (arguments.pop(k) for k in ("model", "policy", "inputs"))
    with pytest.raises(AdaptixError, match=message) as caught:
        ExitBenchmark(model, policy, inputs, **arguments)
    assert isinstance(caught.value, ValidationError)
    assert not trained.model.training  # the shared model was never touched


def test_a_runner_whose_monitor_audits_nothing_is_measured(trained: Setup) -> None:
    policy = trained.policies["confidence"]
    monitor = adaptix.ShiftMonitor(policy, trained.model.trace(trained.inputs), audit=0.0)
    runner = EarlyExitRunner(trained.model, policy, monitor=monitor, mode="lockstep")
    benchmark = ExitBenchmark(trained.model, runner, trained.inputs, batch_size=16, rounds=1)
    assert benchmark.runner is runner
    result = benchmark.run()
    assert result.mode == "lockstep"  # the runner's own mode
    assert result.agreement.exact == EVAL_ROWS
