"""`adaptix.online.monitor`: the shift test's maths and validity, and the monitor on a real runner.

The e-process is checked three ways: against its definition written out (the sequential
Krichevsky–Trofimov product), exactly (by enumerating every reference and stream of a small
categorical: E_t lies under a variable of mean exactly one), and by simulation (the share of
unshifted streams that ever alarm stays within α, checked every 50 inputs). The monitor is then
attached to the small trained MLP of ``test_runtime`` (five exits, inputs far from every decision
boundary), whose counts must be what `adaptix.simulate` says of the same inputs' trace.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
import test_runtime
import torch
from test_runtime import Family, run_batches
from torch import Tensor

import adaptix
from adaptix import (
    CalibrationError,
    Certificate,
    EarlyExitRunner,
    ExitPolicy,
    ShiftAlarm,
    ShiftMonitor,
    ShiftReport,
    ShiftTest,
    ShiftWarning,
    ValidationError,
)
from adaptix.core.calibration import count_bins
from adaptix.core.evalues import combine, log_sequence_probability
from adaptix.core.scores import bin_index, confidence
from adaptix.testing import synthetic_trace

# The fixtures reused: the trained MLP of test_runtime and the data it is built from.
fashion = test_runtime.fashion
mlp_family = test_runtime.mlp_family

KT = 0.5  # the Krichevsky–Trofimov (Jeffreys) weight per category of the reference's mixture
BINS = 10  # the bins of the family's calibration, and the monitor's default without one
MONITORED = ("confidence", "pcee", "patience")  # no calibration, a calibration, a state
Mode = Literal["compact", "lockstep"]
MODES: tuple[Mode, ...] = ("compact", "lockstep")
NEVER = 10**9  # check_every that keeps the runner from testing during a test of counts


# ----------------------------------------------------------------------------------- helpers


def kt_log_probability(sequence: list[int], prior: list[float]) -> float:
    """log of the Dirichlet(prior) mixture's probability of ``sequence``, predicted one draw at a
    time: the product of (earlier count of x_t + a[x_t]) / (t + Σa)."""
    seen = [0] * len(prior)
    total = sum(prior)
    log_p = 0.0
    for t, x in enumerate(sequence):
        log_p += math.log((seen[x] + prior[x]) / (t + total))
        seen[x] += 1
    return log_p


def max_log_likelihood(counts: list[int]) -> float:
    """Σ x_k log(x_k / n), 0 log 0 = 0."""
    n = sum(counts)
    return sum(x * math.log(x / n) for x in counts if x > 0)


def as_sequence(counts: list[int]) -> list[int]:
    return [k for k, x in enumerate(counts) for _ in range(x)]


def compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every tuple of ``parts`` non-negative integers summing to ``total``."""
    for cuts in itertools.combinations(range(total + parts - 1), parts - 1):
        bounds = (-1, *cuts, total + parts - 1)
        yield tuple(b - a - 1 for a, b in itertools.pairwise(bounds))


def log_multinomial(counts: Tensor) -> Tensor:
    """log of the multinomial coefficient n! / Π x_k! over the last dimension."""
    x = counts.double()
    return torch.lgamma(x.sum(-1) + 1) - torch.lgamma(x + 1).sum(-1)


def max_log_evalues(
    log_evalue: Callable[[Tensor, Tensor], Tensor],
    reference_p: Tensor,
    stream_p: Tensor,
    *,
    streams: int,
    reference_size: int,
    length: int,
    every: int,
    seed: int,
) -> Tensor:
    """Per simulated stream: its reference's counts drawn from ``reference_p``, its inputs from
    ``stream_p``; ``log_evalue(reference, cumulative stream counts [checks, K])`` read every
    ``every`` inputs. Returns the log E of every check, ``[streams, checks]``."""
    generator = torch.Generator().manual_seed(seed)
    k = reference_p.numel()
    rows = []
    for _ in range(streams):
        reference = torch.multinomial(reference_p, reference_size, True, generator=generator)
        stream = torch.multinomial(stream_p, length, True, generator=generator)
        cumulative = torch.bincount(
            (torch.arange(length) // every) * k + stream, minlength=(length // every) * k
        )
        checks = cumulative.view(length // every, k).cumsum(0)
        rows.append(log_evalue(torch.bincount(reference, minlength=k), checks))
    return torch.stack(rows)


def bins_at(policy: ExitPolicy, logits: Tensor, e: int) -> Tensor:
    """The monitor's bins of exit ``e``'s logits: the policy's calibration's, else equal-width."""
    conf = confidence(logits)
    if policy.calibration is not None:
        return policy.calibration.bin_index(conf, e)
    return bin_index(conf, BINS)


def expected_reach(trace: adaptix.Trace, policy: ExitPolicy, exits: Tensor) -> Tensor:
    """``[E, M + 1]``: per exit e, the bins of the inputs whose exit is at or after e."""
    rows = []
    for e in range(trace.num_exits):
        reached = trace.logits[exits >= e, e]
        rows.append(torch.bincount(bins_at(policy, reached, e), minlength=BINS + 1))
    return torch.stack(rows)


def host_counts(monitor: ShiftMonitor) -> tuple[Tensor, Tensor]:
    """The monitor's counts, read now: per-exit reached bins ``[E, M + 1]`` and exits ``[E]``."""
    monitor.check()
    assert monitor._host is not None
    return monitor._host


def far_batches(count: int, size: int = 64, seed: int = 0) -> list[Tensor]:
    """Fashion-MNIST-shaped pure noise: nothing like the garments the model was trained on."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(size, 1, 28, 28, generator=generator) * 4 - 2 for _ in range(count)]


def run_stream(runner: EarlyExitRunner, batches: list[Tensor]) -> int | None:
    """Run every batch; returns how many had run when the monitor first alarmed (None: never)."""
    assert runner.monitor is not None
    first = None
    for count, batch in enumerate(batches, start=1):
        runner(batch)
        if first is None and runner.monitor.alarmed:
            first = count
    return first


# ------------------------------------------------------------------------- the test's maths


@pytest.mark.parametrize("prior", [[KT] * 4, [0.3, 1.7, 2.0, 0.1]])
def test_log_sequence_probability_is_the_sequential_mixture(prior: list[float]) -> None:
    sequence = [0, 2, 2, 1, 0, 0, 3, 2, 2, 2, 0]
    counts = torch.bincount(torch.tensor(sequence), minlength=4)
    got = log_sequence_probability(counts, torch.tensor(prior, dtype=torch.float64))
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(kt_log_probability(sequence, prior), abs=1e-12)
    # No draw at all: probability one.
    assert float(log_sequence_probability(torch.zeros(4), torch.tensor(prior))) == 0.0


@pytest.mark.parametrize("concentration", [0.0, 3.0, 100.0])
def test_log_evalue_is_the_universal_inference_ratio(concentration: float) -> None:
    reference = [40, 0, 13, 7, 1]
    stream = [3, 5, 0, 9, 2]
    test = ShiftTest(torch.tensor(reference), concentration)
    smoothed = [r + KT for r in reference]
    beta = [KT + concentration * x / sum(smoothed) for x in smoothed]
    expected = (
        kt_log_probability(as_sequence(reference), [KT] * 5)
        + kt_log_probability(as_sequence(stream), beta)
        - max_log_likelihood([r + s for r, s in zip(reference, stream, strict=True)])
    )
    assert float(test.log_evalue(torch.tensor(stream))) == pytest.approx(expected, abs=1e-10)
    torch.testing.assert_close(test.stream_prior(), torch.tensor(beta, dtype=torch.float64))


@pytest.mark.parametrize("reference", [[40, 0, 13, 7, 1], [5, 5], [0, 0, 3], [1]])
@pytest.mark.parametrize("concentration", [0.0, 100.0])
def test_before_the_stream_log_e_is_the_reference_mixture_against_its_best_fit(
    reference: list[int], concentration: float
) -> None:
    """With s = 0: log E = log DM(r; J) − max_p log p^r, which is ≤ 0 (a mixture never beats
    the best member)."""
    test = ShiftTest(torch.tensor(reference), concentration)
    got = float(test.log_evalue(torch.zeros(len(reference), dtype=torch.int64)))
    prior = [KT] * len(reference)
    expected = kt_log_probability(as_sequence(reference), prior) - max_log_likelihood(reference)
    assert got == pytest.approx(expected, abs=1e-10)
    assert got <= 0.0
    if sum(reference) > 0 and len(reference) > 1:
        assert got < 0.0


def test_log_evalue_is_vectorised_over_leading_dimensions() -> None:
    test = ShiftTest(torch.tensor([30, 2, 11, 0]), 5.0)
    streams = torch.randint(0, 20, (3, 4, 4), generator=torch.Generator().manual_seed(0))
    together = test.log_evalue(streams)
    assert together.shape == (3, 4)
    assert together.dtype == torch.float64
    for i, j in itertools.product(range(3), range(4)):
        assert float(together[i, j]) == float(test.log_evalue(streams[i, j]))


def test_combine_is_the_log_of_the_average() -> None:
    a, b = torch.tensor([-3.0, 2.0]), torch.tensor([1.0, -50.0])
    torch.testing.assert_close(
        combine([a, b]), torch.log((a.double().exp() + b.double().exp()) / 2)
    )


@pytest.mark.parametrize(
    ("reference", "concentration"),
    [
        (torch.tensor([1.0, 2.0]), 0.0),  # float counts
        (torch.tensor([True, False]), 0.0),
        (torch.tensor([3, -1, 2]), 0.0),
        (torch.tensor([[3, 1], [2, 2]]), 0.0),  # 2-d
        (torch.tensor(3), 0.0),
        (torch.tensor([], dtype=torch.int64), 0.0),
        ([3, 1, 2], 0.0),  # not a tensor
        (torch.tensor([3, 1]), -1.0),
        (torch.tensor([3, 1]), math.nan),
        (torch.tensor([3, 1]), math.inf),
    ],
)
def test_bad_references_are_refused(reference: object, concentration: float) -> None:
    with pytest.raises(ValidationError):
        ShiftTest(reference, concentration)  # type: ignore[arg-type]  # refused, as tested


@pytest.mark.parametrize("shape", [(3,), (2, 5), (5, 1)])
def test_stream_counts_of_another_k_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValidationError, match=r"\[\.\.\., 4\]"):
        ShiftTest(torch.tensor([3, 1, 0, 2])).log_evalue(torch.zeros(shape))


# ------------------------------------------------------------------------------------ validity


@pytest.mark.parametrize("concentration", [0.0, 2.0, 100.0])
@pytest.mark.parametrize("t", [0, 1, 4, 9])
def test_the_evalue_lies_under_a_variable_of_mean_exactly_one(concentration: float, t: int) -> None:
    """Exactly, over every reference of n = 6 draws and every stream of t draws from K = 3
    categories: Z = DM(r; J) · DM(s; β(r)) / p*^(r + s) has mean 1 under any p*, and
    E_t ≤ Z pointwise, so E[E_t] ≤ 1 (Z is the martingale Ville's inequality is applied to)."""
    references = torch.tensor(list(compositions(6, 3)))
    streams = torch.tensor(list(compositions(t, 3)))
    jeffreys = torch.full((3,), KT, dtype=torch.float64)
    for p in ([0.2, 0.5, 0.3], [0.9, 0.05, 0.05], [1 / 3] * 3):
        log_p = torch.tensor(p, dtype=torch.float64).log()
        mean_z = mean_e = 0.0
        for r in references:
            test = ShiftTest(r, concentration)
            log_e = test.log_evalue(streams)
            log_z = (
                log_sequence_probability(r, jeffreys)
                + log_sequence_probability(streams, test.stream_prior())
                - ((r + streams).double() * log_p).sum(-1)
            )
            assert bool((log_e <= log_z + 1e-9).all())
            # P(r, s) = multinomial(r) p^r · multinomial(s) p^s
            log_mass = (
                log_multinomial(r)
                + log_multinomial(streams)
                + ((r + streams).double() * log_p).sum(-1)
            )
            mean_z += float((log_mass + log_z).exp().sum())
            mean_e += float((log_mass + log_e).exp().sum())
        assert mean_z == pytest.approx(1.0, abs=1e-9), p
        assert mean_e <= 1.0 + 1e-12


@pytest.mark.parametrize("concentration", [0.0, 100.0])
def test_the_shift_test_is_exact_over_200_unshifted_streams(concentration: float) -> None:
    """Reference and stream drawn from the same categorical (K = 10, n = 2,000; streams of
    20,000 inputs tested every 50): the share of streams whose log E ever reaches log(1/α)
    stays within α plus three standard errors, at α = 0.05 and at α = 0.5, with the Jeffreys
    prior and with the monitor's default concentration."""
    streams = 200
    p = torch.tensor([0.3, 0.2, 0.12, 0.1, 0.08, 0.07, 0.05, 0.04, 0.03, 0.01])
    peaks = max_log_evalues(
        lambda r, s: ShiftTest(r, concentration).log_evalue(s),
        p,
        p,
        streams=streams,
        reference_size=2000,
        length=20_000,
        every=50,
        seed=0,
    ).amax(dim=1)
    for alpha in (0.05, 0.5):
        share = float((peaks >= math.log(1 / alpha)).double().mean())
        assert share <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / streams), alpha


def test_the_simulation_catches_a_test_that_takes_the_reference_for_the_truth() -> None:
    """The harness above can fail: the naive one-sample e-process, DM(s; J) / q^s with q the
    reference's smoothed shares, alarms on most long unshifted streams (the reference's own
    sampling error is a real difference from q, which 20,000 inputs detect)."""
    p = torch.tensor([0.3, 0.2, 0.12, 0.1, 0.08, 0.07, 0.05, 0.04, 0.03, 0.01])
    jeffreys = torch.full((10,), KT, dtype=torch.float64)

    def naive(reference: Tensor, stream: Tensor) -> Tensor:
        shares = (reference.double() + KT) / (reference.double() + KT).sum()
        return log_sequence_probability(stream, jeffreys) - (stream * shares.log()).sum(-1)

    peaks = max_log_evalues(
        naive, p, p, streams=50, reference_size=2000, length=20_000, every=50, seed=0
    ).amax(dim=1)
    assert float((peaks >= math.log(1 / 0.05)).double().mean()) > 0.3


def test_a_clear_shift_is_detected_within_2000_inputs() -> None:
    """Exit-0 bin shares moved by a total variation of 0.1: median inputs to alarm < 2,000."""
    p = torch.full((10,), 0.1)
    moved = p + torch.tensor([0.05, 0.05, 0, 0, 0, 0, 0, 0, -0.05, -0.05])
    log_e = max_log_evalues(
        lambda r, s: ShiftTest(r, 100.0).log_evalue(s),
        p,
        moved,
        streams=40,
        reference_size=2000,
        length=5000,
        every=50,
        seed=1,
    )
    crossed = log_e >= math.log(1 / 0.05)
    delays = [50 * (int(row.nonzero()[0]) + 1) if bool(row.any()) else math.inf for row in crossed]
    assert statistics.median(delays) < 2000


# --------------------------------------------------------------------- counting in the runner


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("criterion", MONITORED)
def test_the_monitor_counts_what_simulate_says(
    mlp_family: Family, criterion: str, mode: Mode
) -> None:
    family = mlp_family
    policy = family.policies[criterion]
    expected = adaptix.simulate(family.trace, policy)
    assert len(set(expected.exit_index.tolist())) >= 3  # inputs leave at several exits
    monitor = ShiftMonitor(policy, family.trace, check_every=NEVER)
    runner = EarlyExitRunner(family.model, policy, mode=mode, monitor=monitor)
    plain = EarlyExitRunner(family.model, policy, mode=mode)
    single = 16  # batch size 1 costs a call per row
    rows = len(family.inputs)
    for size in (7, 64, 1):
        count = single if size == 1 else rows
        out = run_batches(runner, family.inputs[:count], size)
        unmonitored = run_batches(plain, family.inputs[:count], size)
        assert torch.equal(out.exit_index, unmonitored.exit_index)
        assert torch.equal(out.predictions, unmonitored.predictions)
        assert torch.equal(out.exit_index, expected.exit_index[:count])

    reach, exits = host_counts(monitor)
    histogram = torch.bincount(expected.exit_index, minlength=family.model.num_exits)
    head = torch.bincount(expected.exit_index[:single], minlength=family.model.num_exits)
    assert torch.equal(exits, 2 * histogram + head)
    reached = expected_reach(family.trace, policy, expected.exit_index)
    first = expected_reach(
        family.trace.subset(slice(0, single)), policy, expected.exit_index[:single]
    )
    assert torch.equal(reach, 2 * reached + first)

    report = monitor.report()
    assert isinstance(report, ShiftReport)
    assert report.inputs == 2 * rows + single
    total = float(exits.sum())
    assert [m.live_share for m in report.exits] == pytest.approx((exits / total).tolist())
    reference_bins = torch.bincount(bins_at(policy, family.trace.logits[:, 0], 0), minlength=BINS)
    assert [m.reference_share for m in report.bins] == pytest.approx(
        (reference_bins / rows).tolist()
    )
    assert [m.live_share for m in report.bins] == pytest.approx(
        (reach[0, :BINS] / reach[0, :BINS].sum()).tolist()
    )


# -------------------------------------------------------------------------------------- audit


def run_audited(
    family: Family,
    policy: ExitPolicy,
    monkeypatch: pytest.MonkeyPatch,
    *,
    audit: float,
    rows: int,
    size: int,
) -> tuple[adaptix.RunnerOutput, Tensor, ShiftMonitor]:
    """The first ``rows`` inputs in batches of ``size`` through a runner whose monitor audits
    ``audit`` of them; returns the outputs, the audited rows and the monitor. Checks on the way
    that the share is met batch after batch: ⌊audit · rows seen⌋ audited (the credit carries)."""
    monitor = ShiftMonitor(policy, family.trace, audit=audit, check_every=NEVER, seed=3)
    picked: list[Tensor | None] = []
    choose = monitor.audit_rows

    def audit_rows(n: int) -> Tensor | None:  # the rows the monitor picks, batch by batch
        positions = choose(n)
        picked.append(positions)
        return positions

    monkeypatch.setattr(monitor, "audit_rows", audit_rows)
    runner = EarlyExitRunner(family.model, policy, monitor=monitor)
    out = run_batches(runner, family.inputs[:rows], size)
    audited: list[Tensor] = []
    for batch, positions in enumerate(picked):
        if positions is not None:
            assert bool((positions[1:] > positions[:-1]).all())  # sorted, distinct
            audited.append(positions + batch * size)
        seen = min((batch + 1) * size, rows)
        assert sum(len(a) for a in audited) == math.floor(audit * seen)
    return out, torch.cat(audited), monitor


@pytest.mark.parametrize("criterion", ["pcee", "patience"])  # a fused decision; a state
def test_audited_rows_go_on_to_the_last_exit_and_feed_the_proxy(
    mlp_family: Family, monkeypatch: pytest.MonkeyPatch, criterion: str
) -> None:
    family = mlp_family
    policy = family.policies[criterion]
    last = family.model.num_exits - 1
    expected = adaptix.simulate(family.trace, policy)
    rows = len(family.inputs)
    # 0.25 · 7 is not whole: the credit carries over from batch to batch.
    out, audited, monitor = run_audited(family, policy, monkeypatch, audit=0.25, rows=rows, size=7)
    assert len(audited) == rows // 4

    others = torch.ones(rows, dtype=torch.bool)
    others[audited] = False
    assert bool((out.exit_index[audited] == last).all())
    last_predictions = family.trace.logits[:, last].argmax(dim=-1)
    assert torch.equal(out.predictions[audited], last_predictions[audited])
    assert torch.equal(out.exit_index[others], expected.exit_index[others])
    assert torch.equal(out.predictions[others], expected.predictions[others])
    # Some audited rows would have left early: the audit did change their exit.
    assert bool((expected.exit_index[audited] < last).any())

    # Counted at the exit they would have taken.
    reach, exits = host_counts(monitor)
    assert torch.equal(exits, torch.bincount(expected.exit_index, minlength=last + 1))
    assert torch.equal(reach, expected_reach(family.trace, policy, expected.exit_index))

    proxy = monitor.feedback_trace("proxy")
    assert monitor.proxy_inputs == proxy.num_inputs == len(audited)
    torch.testing.assert_close(proxy.logits, family.trace.logits[audited], rtol=0, atol=1e-5)
    assert proxy.labels is not None
    assert torch.equal(proxy.labels, last_predictions[audited])


def test_a_batch_of_one_row_can_be_audited(
    mlp_family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    family = mlp_family
    policy = family.policies["confidence"]
    last = family.model.num_exits - 1
    rows = 16
    expected = adaptix.simulate(family.trace.subset(slice(0, rows)), policy)
    out, audited, monitor = run_audited(family, policy, monkeypatch, audit=0.5, rows=rows, size=1)
    assert audited.tolist() == list(range(1, rows, 2))  # every other row, as the credit says
    assert bool((out.exit_index[audited] == last).all())
    unaudited = torch.arange(0, rows, 2)
    assert torch.equal(out.exit_index[unaudited], expected.exit_index[unaudited])
    assert bool((expected.exit_index[audited] < last).any())
    _, exits = host_counts(monitor)
    assert torch.equal(exits, torch.bincount(expected.exit_index, minlength=last + 1))
    assert monitor.proxy_inputs == len(audited)


def test_auditing_needs_compact_mode(mlp_family: Family) -> None:
    policy = mlp_family.policies["pcee"]
    monitor = ShiftMonitor(policy, mlp_family.trace, audit=0.1)
    with pytest.raises(ValidationError, match="compact"):
        EarlyExitRunner(mlp_family.model, policy, mode="lockstep", monitor=monitor)


# -------------------------------------------------------------------------------------- alarms


def test_a_far_stream_alarms_once_and_says_what_moved(mlp_family: Family) -> None:
    family = mlp_family
    policy = family.policies["pcee"]
    alarms: list[ShiftAlarm] = []
    monitor = ShiftMonitor(policy, family.trace, alpha=0.05, check_every=1, on_alarm=alarms.append)
    runner = EarlyExitRunner(family.model, policy, monitor=monitor)
    batches = far_batches(12)
    with pytest.warns(ShiftWarning, match="shifted") as warned:
        ran = run_stream(runner, batches)
    assert ran is not None
    assert ran < len(batches)  # later batches raise no second alarm
    assert len(warned) == 1
    assert warned[0].filename == __file__  # the caller's line, not adaptix's
    assert len(alarms) == 1
    alarm = alarms[0]
    assert isinstance(alarm, ShiftAlarm)
    assert monitor.alarmed
    assert monitor.alarm is alarm
    assert alarm.inputs == 64 * ran
    assert alarm.batches == ran
    assert alarm.log_evalue >= math.log(1 / 0.05)
    assert alarm.log_evalue == monitor.history[ran - 1][1]
    assert all(log_e < math.log(1 / 0.05) for _, log_e in monitor.history[: ran - 1])
    assert alarm.report.alarmed
    assert alarm.report.alarm_inputs == alarm.inputs

    report = monitor.report()
    assert report.alarmed
    assert report.alarm_inputs == alarm.inputs
    assert report.inputs == 64 * len(batches)
    moved = report.moved()
    assert moved
    assert all(abs(m.z) >= 3 for m in moved)
    assert [abs(m.z) for m in moved] == sorted((abs(m.z) for m in moved), reverse=True)
    # The exit-0 bin that gained the most share is named, in the report and in the alarm.
    gained = max(report.bins, key=lambda m: m.live_share - m.reference_share)
    assert gained.live_share - gained.reference_share > 0.2
    assert gained in moved
    assert gained.what.startswith("exit 0 bin")
    assert all(m.what in alarm.message() for m in alarm.report.moved()[:4])
    assert "ALARM" in str(report)

    monitor.reset()
    assert not monitor.alarmed
    assert monitor.alarm is None
    assert monitor.history == []
    assert monitor.log_evalue == 0.0
    assert monitor.report().inputs == 0
    assert not monitor.report().alarmed
    with pytest.warns(ShiftWarning):
        assert run_stream(runner, batches) == ran
    assert len(alarms) == 2  # once more after the reset


def test_an_unshifted_stream_does_not_alarm(mlp_family: Family) -> None:
    family = mlp_family
    policy = family.policies["pcee"]
    monitor = ShiftMonitor(policy, family.trace, alpha=0.5, check_every=1)
    runner = EarlyExitRunner(family.model, policy, monitor=monitor)
    run_batches(runner, family.inputs, 20)
    assert len(monitor.history) == 10
    assert not monitor.alarmed
    assert all(log_e < 0 for _, log_e in monitor.history)  # the stream is the reference


def test_an_exception_in_the_alarm_callback_propagates(mlp_family: Family) -> None:
    policy = mlp_family.policies["pcee"]

    def stop(alarm: ShiftAlarm) -> None:
        raise RuntimeError(f"stop after {alarm.inputs} inputs")

    monitor = ShiftMonitor(policy, mlp_family.trace, check_every=1, on_alarm=stop)
    runner = EarlyExitRunner(mlp_family.model, policy, monitor=monitor)
    with pytest.raises(RuntimeError, match="stop after"), pytest.warns(ShiftWarning):
        run_stream(runner, far_batches(12))
    assert monitor.alarmed


def test_an_alarm_is_logged_to_mlflow(
    mlp_family: Family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    from adaptix.tracking import Tracker

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    tracker = Tracker(
        "shift", f"sqlite:///{tmp_path}/mlflow.db", artifact_location=f"{tmp_path}/artifacts"
    )
    policy = mlp_family.policies["pcee"]
    alarms: list[ShiftAlarm] = []
    monitor = ShiftMonitor(
        policy, mlp_family.trace, check_every=1, tracker=tracker, on_alarm=alarms.append
    )
    runner = EarlyExitRunner(mlp_family.model, policy, monitor=monitor)
    with pytest.warns(ShiftWarning):
        assert run_stream(runner, far_batches(12)) is not None
    assert tracker.failures == []
    assert monitor.run_id is not None
    client = mlflow.MlflowClient(tracker.tracking_uri)
    run = client.get_run(monitor.run_id)
    assert run.info.run_name == "shift-monitor"
    assert run.data.metrics["shift_alarm"] == 1.0
    assert run.data.metrics["shift_alarm_inputs"] == alarms[0].inputs
    assert run.data.metrics["shift_log_evalue"] == pytest.approx(alarms[0].log_evalue)
    assert [f.path for f in client.list_artifacts(monitor.run_id)] == ["shift-report.json"]
    local = client.download_artifacts(monitor.run_id, "shift-report.json", str(tmp_path))
    with open(local) as handle:
        logged = json.load(handle)
    assert logged == json.loads(json.dumps(alarms[0].report.to_dict()))
    assert logged["alarmed"]
    assert logged["alarm_inputs"] == alarms[0].inputs


# -------------------------------------------------------------------------------- check_every


def test_counts_are_read_back_every_k_batches_only(mlp_family: Family) -> None:
    policy = mlp_family.policies["pcee"]
    monitor = ShiftMonitor(policy, mlp_family.trace, check_every=3)
    runner = EarlyExitRunner(mlp_family.model, policy, monitor=monitor)
    batches = mlp_family.inputs[:50].split(10)
    for batch in batches[:2]:
        runner(batch)
    assert monitor.history == []
    assert monitor._host is None
    runner(batches[2])
    assert [inputs for inputs, _ in monitor.history] == [30]
    assert monitor._host is not None
    assert int(monitor._host[1].sum()) == 30
    for batch in batches[3:]:
        runner(batch)
    assert [inputs for inputs, _ in monitor.history] == [30]  # 5 batches: the 6th reads


# ------------------------------------------------------------------------------ recalibration

FEEDBACK_EXITS, FEEDBACK_CLASSES = 4, 10


@pytest.fixture(scope="module")
def equal_mass_policy() -> ExitPolicy:
    """pcee on a calibration with equal-mass (not equal-width) bins."""
    calibration = adaptix.calibrate(
        synthetic_trace(600, FEEDBACK_EXITS, FEEDBACK_CLASSES, seed=1), "equal_mass", BINS
    )
    assert not calibration.equal_width
    return adaptix.policy("pcee", 0.6, calibration)


def feedback(n: int, seed: int, scale: float = 1.0) -> adaptix.Trace:
    trace = synthetic_trace(n, FEEDBACK_EXITS, FEEDBACK_CLASSES, seed=seed)
    return trace if scale == 1.0 else trace.scaled(scale)


def monitor_for(policy: ExitPolicy, **kwargs: object) -> ShiftMonitor:
    reference = synthetic_trace(300, FEEDBACK_EXITS, FEEDBACK_CLASSES, seed=2, labelled=False)
    return ShiftMonitor(policy, reference, **kwargs)  # type: ignore[arg-type]  # keywords


def assert_same_tables(got: adaptix.Calibration, expected: adaptix.Calibration) -> None:
    assert torch.equal(got.counts, expected.counts)
    assert torch.equal(got.correct, expected.correct)
    torch.testing.assert_close(got.confidence_sum, expected.confidence_sum)
    assert torch.equal(got.edges, expected.edges)


def test_a_window_keeps_the_latest_inputs(equal_mass_policy: ExitPolicy) -> None:
    monitor = monitor_for(equal_mass_policy, window=100)
    parts = [feedback(60, 3), feedback(70, 4), feedback(30, 5)]
    monitor.observe(parts[0])
    assert monitor.feedback_inputs == 60
    for part in parts[1:]:
        monitor.observe(part)
    assert monitor.feedback_inputs == 100
    every = torch.cat([p.logits for p in parts])
    labels = torch.cat([p.labels for p in parts if p.labels is not None])
    latest = adaptix.Trace(every[-100:], labels[-100:], parts[0].costs)
    window = monitor.feedback_trace()
    assert torch.equal(window.logits, latest.logits)
    assert window.labels is not None
    assert torch.equal(window.labels, labels[-100:])
    calibration = equal_mass_policy.calibration
    assert calibration is not None
    expected = count_bins(latest, BINS, edges=calibration.edges, method=calibration.method)
    assert_same_tables(monitor.calibration(), expected)


def test_decay_weighs_older_feedback_down(equal_mass_policy: ExitPolicy) -> None:
    """decay 0.5 and a second trace of two inputs: the first one's counts weigh 0.25. The first
    trace repeats every input four times, so that the weighted counts are whole numbers."""
    monitor = monitor_for(equal_mass_policy, decay=0.5)
    base = feedback(25, 6)
    assert base.labels is not None
    first = adaptix.Trace(base.logits.repeat(4, 1, 1), base.labels.repeat(4), base.costs)
    second = feedback(2, 7)
    monitor.observe(first)
    monitor.observe(second)
    calibration = equal_mass_policy.calibration
    assert calibration is not None
    old, new = (count_bins(t, BINS, edges=calibration.edges) for t in (first, second))
    got = monitor.calibration()
    assert torch.equal(got.counts, old.counts // 4 + new.counts)
    assert torch.equal(got.correct, old.correct // 4 + new.correct)
    torch.testing.assert_close(got.confidence_sum, old.confidence_sum * 0.25 + new.confidence_sum)
    assert torch.equal(got.edges, calibration.edges)


def test_decay_gives_a_calibration_whatever_the_weights(equal_mass_policy: ExitPolicy) -> None:
    calibration = equal_mass_policy.calibration
    assert calibration is not None
    for seeds in [(3, 4), *((a, a + 1) for a in range(10, 30, 2))]:
        monitor = monitor_for(equal_mass_policy, decay=0.99)
        first, second = feedback(100, seeds[0]), feedback(37, seeds[1])
        monitor.observe(first)
        monitor.observe(second)
        old, new = (count_bins(t, BINS, edges=calibration.edges) for t in (first, second))
        decayed = old.counts * 0.99**37 + new.counts
        hits = old.correct * 0.99**37 + new.correct
        got = monitor.calibration()
        assert bool(((got.counts - decayed).abs() < 1).all()), seeds
        # Every exit counts the same inputs: one total, the decayed one rounded.
        assert set(got.counts.sum(dim=1).tolist()) == {round(float(decayed[0].sum()))}
        # Per bin the accuracy is the decayed one, up to rounding k to a whole number.
        filled = got.counts > 0
        accuracy = hits[filled] / decayed[filled]
        assert bool(
            ((got.correct[filled] - accuracy * got.counts[filled]).abs() <= 0.5 + 1e-9).all()
        )


def test_the_recalibrated_policy_reads_the_feedback(equal_mass_policy: ExitPolicy) -> None:
    monitor = monitor_for(equal_mass_policy, window=1000)
    monitor.observe(feedback(1000, 8, scale=3.0))  # overconfident heads: another calibration
    recalibrated = monitor.recalibrated_policy()
    assert recalibrated.name == equal_mass_policy.name == "pcee"
    assert recalibrated.threshold == equal_mass_policy.threshold
    assert recalibrated.criterion.params == equal_mass_policy.criterion.params
    assert recalibrated.calibration is not None
    assert_same_tables(recalibrated.calibration, monitor.calibration())
    test = feedback(500, 9, scale=3.0)
    rebuilt = adaptix.policy("pcee", equal_mass_policy.threshold, monitor.calibration())
    new_exits = adaptix.simulate(test, recalibrated).exit_index
    assert torch.equal(new_exits, adaptix.simulate(test, rebuilt).exit_index)
    assert not torch.equal(new_exits, adaptix.simulate(test, equal_mass_policy).exit_index)


def test_proxy_feedback_is_labelled_by_the_last_exit(equal_mass_policy: ExitPolicy) -> None:
    monitor = monitor_for(equal_mass_policy)
    trace = feedback(80, 10)
    monitor.observe(adaptix.Trace(trace.logits, None, trace.costs), proxy=True)
    assert monitor.proxy_inputs == 80
    assert monitor.feedback_inputs == 0
    proxy = monitor.feedback_trace("proxy")
    assert proxy.labels is not None
    assert torch.equal(proxy.labels, trace.logits[:, -1].argmax(dim=-1))
    with pytest.raises(CalibrationError):
        monitor.calibration("labels")
    assert monitor.recalibrated_policy("proxy").calibration is not None


def test_a_criterion_without_calibration_cannot_be_recalibrated() -> None:
    monitor = monitor_for(adaptix.policy("confidence", 0.7))
    monitor.observe(feedback(200, 11))
    with pytest.raises(ValidationError, match="recertify"):
        monitor.recalibrated_policy()


@pytest.mark.parametrize("name", ["confidence", "pcee"])
def test_recertify_certifies_on_the_window(name: str, equal_mass_policy: ExitPolicy) -> None:
    served = equal_mass_policy if name == "pcee" else adaptix.policy("confidence", 0.9)
    monitor = monitor_for(served, window=1200)
    monitor.observe(feedback(1500, 12))
    window = monitor.feedback_trace()
    certified = monitor.recertify(early_accuracy=0.75, alpha=0.1)
    certificate = certified.certificate
    assert isinstance(certificate, Certificate)
    assert certified.name == name
    assert certificate.certified
    assert certificate.level == 0.75
    assert certificate.alpha == 0.1
    if name == "confidence":
        assert certificate.n == 1200
        expected = adaptix.guarantee(window, name, early_accuracy=0.75, alpha=0.1)
    else:  # calibrated on the window's first half, certified on its second
        calibration = equal_mass_policy.calibration
        assert calibration is not None
        assert certified.calibration is not None
        first = count_bins(window.subset(slice(0, 600)), BINS, edges=calibration.edges)
        assert_same_tables(certified.calibration, first)
        assert certificate.n == 600
        expected = adaptix.guarantee(
            window.subset(slice(600, None)),
            name,
            early_accuracy=0.75,
            alpha=0.1,
            calibration=first,
        )
    assert certified.threshold == expected.threshold


def test_bad_feedback_is_refused(equal_mass_policy: ExitPolicy) -> None:
    monitor = monitor_for(equal_mass_policy)
    with pytest.raises(CalibrationError, match="feedback"):
        monitor.calibration()
    with pytest.raises(CalibrationError):
        monitor.recalibrated_policy()
    with pytest.raises(CalibrationError):
        monitor.recertify(early_accuracy=0.8)
    with pytest.raises(CalibrationError):
        monitor.feedback_trace("proxy")
    labelled = feedback(20, 13)
    with pytest.raises(ValidationError, match="labelled"):
        monitor.observe(adaptix.Trace(labelled.logits, None, labelled.costs))
    with pytest.raises(ValidationError, match="exits"):
        monitor.observe(synthetic_trace(20, FEEDBACK_EXITS + 1, FEEDBACK_CLASSES, seed=14))
    with pytest.raises(ValidationError, match="classes"):
        monitor.observe(synthetic_trace(20, FEEDBACK_EXITS, FEEDBACK_CLASSES - 1, seed=15))
    with pytest.raises(ValidationError):
        monitor.observe(labelled.logits)  # type: ignore[arg-type]  # refused, as tested
    with pytest.raises(ValidationError, match="source"):
        monitor.feedback_trace("bogus")  # type: ignore[arg-type]  # refused, as tested
    assert monitor.feedback_inputs == 0


@pytest.mark.parametrize(
    "arguments",
    [
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"alpha": True},
        {"check_every": 0},
        {"check_every": 2.0},
        {"window": 0},
        {"bins": 0},
        {"decay": 1.0},
        {"audit": 1.0},
        {"audit": -0.1},
        {"on_alarm": "print"},
        {"concentration": -1.0},
        {"concentration": math.nan},
    ],
    ids=str,
)
def test_bad_monitor_arguments_are_refused(
    equal_mass_policy: ExitPolicy, arguments: dict[str, object]
) -> None:
    with pytest.raises(ValidationError):
        monitor_for(equal_mass_policy, **arguments)


def test_a_reference_of_another_model_is_refused(equal_mass_policy: ExitPolicy) -> None:
    with pytest.raises(CalibrationError):  # the policy's calibration is for four exits
        ShiftMonitor(equal_mass_policy, synthetic_trace(50, FEEDBACK_EXITS + 1, 10, seed=0))
    with pytest.raises(ValidationError):
        ShiftMonitor(equal_mass_policy, synthetic_trace(50, 4, 10, seed=0).logits)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- swap_policy


def test_swap_policy_takes_effect_at_the_next_batch(mlp_family: Family) -> None:
    family = mlp_family
    served, swapped = family.policies["pcee"], family.policies["confidence"]
    monitor = ShiftMonitor(served, family.trace, check_every=2)
    runner = EarlyExitRunner(family.model, served, monitor=monitor)
    run_batches(runner, family.inputs[:100], 25)
    assert len(monitor.history) == 2
    reference = family.trace.subset(slice(0, 150))
    runner.swap_policy(swapped, reference=reference)
    assert monitor.reference is reference
    assert runner.policy is swapped
    assert monitor.policy is swapped
    assert monitor.history == []
    assert monitor.report().inputs == 0
    assert runner.fused_kind == swapped.criterion.fused_kind
    out = run_batches(runner, family.inputs, 50)
    expected = adaptix.simulate(family.trace, swapped)
    assert not torch.equal(expected.exit_index, adaptix.simulate(family.trace, served).exit_index)
    assert torch.equal(out.exit_index, expected.exit_index)
    assert torch.equal(out.predictions, expected.predictions)
    # The monitor counts for the new policy only, from its first batch.
    reach, exits = host_counts(monitor)
    assert torch.equal(exits, torch.bincount(expected.exit_index, minlength=exits.numel()))
    assert torch.equal(reach, expected_reach(family.trace, swapped, expected.exit_index))
    assert [inputs for inputs, _ in monitor.history] == [100, 200, 200]


def test_an_invalid_swap_leaves_the_served_policy(mlp_family: Family) -> None:
    family = mlp_family
    served = family.policies["pcee"]
    monitor = ShiftMonitor(served, family.trace, check_every=1)
    runner = EarlyExitRunner(family.model, served, monitor=monitor)
    run_batches(runner, family.inputs[:40], 20)
    four_exits = adaptix.calibrate(synthetic_trace(100, 4, 10, seed=0))
    with pytest.raises(CalibrationError, match="exits"):
        runner.swap_policy(adaptix.policy("pcee", 0.5, four_exits))
    other_classes = adaptix.calibrate(synthetic_trace(100, family.model.num_exits, 3, seed=0))
    with pytest.raises(CalibrationError):
        runner.swap_policy(adaptix.policy("pcee", 0.5, other_classes))
    with pytest.raises(ValidationError):
        runner.swap_policy("pcee")  # type: ignore[arg-type]  # refused, as tested
    assert runner.policy is served
    assert monitor.policy is served
    assert [inputs for inputs, _ in monitor.history] == [20, 40]  # not reset
    out = run_batches(runner, family.inputs, 50)
    assert torch.equal(out.exit_index, adaptix.simulate(family.trace, served).exit_index)


def test_a_monitor_for_another_policy_is_refused(mlp_family: Family) -> None:
    served = mlp_family.policies["pcee"]
    twin = served.with_threshold(served.threshold)  # equal, but another object
    with pytest.raises(ValidationError, match="same ExitPolicy"):
        EarlyExitRunner(mlp_family.model, served, monitor=ShiftMonitor(twin, mlp_family.trace))
    confidence = adaptix.policy("confidence", 0.9)
    four_exits = ShiftMonitor(confidence, synthetic_trace(50, 4, 10, seed=0))
    with pytest.raises(ValidationError, match="exits"):
        EarlyExitRunner(mlp_family.model, confidence, monitor=four_exits)
    with pytest.raises(ValidationError, match="ShiftMonitor"):
        EarlyExitRunner(mlp_family.model, served, monitor=object())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ NaN logits


@pytest.mark.parametrize(("mode", "audit"), [("compact", 0.0), ("lockstep", 0.0), ("compact", 0.5)])
def test_nan_logits_are_counted_apart(mlp_family: Family, mode: Mode, audit: float) -> None:
    """With check_finite=False a row with NaN logits never exits early; the monitor counts it
    in the extra column of every exit and leaves it out of the exit-0 test."""
    family = mlp_family
    policy = family.policies["confidence"]
    last = family.model.num_exits - 1
    rows, bad = 40, torch.tensor([2, 5, 11, 30])
    inputs = family.inputs[:rows].clone()
    inputs[bad] = math.nan
    good = torch.ones(rows, dtype=torch.bool)
    good[bad] = False
    monitor = ShiftMonitor(policy, family.trace, audit=audit, check_every=NEVER)
    runner = EarlyExitRunner(family.model, policy, mode=mode, check_finite=False, monitor=monitor)
    out = run_batches(runner, inputs, 20)
    assert bool((out.exit_index[bad] == last).all())
    served = family.trace.subset(slice(0, rows))
    expected = adaptix.simulate(served, policy).exit_index
    reach, exits = host_counts(monitor)
    assert reach[:, BINS].tolist() == [len(bad)] * (last + 1)
    clean = expected_reach(served.subset(good), policy, expected[good])
    assert torch.equal(reach[:, :BINS], clean[:, :BINS])
    histogram = torch.bincount(expected[good], minlength=last + 1)
    histogram[last] += len(bad)
    assert torch.equal(exits, histogram)
    assert math.isfinite(monitor.log_evalue)


def test_proxy_rows_without_finite_logits_are_left_out(equal_mass_policy: ExitPolicy) -> None:
    """A runner with check_finite=False audits NaN rows too; they have no confidence to
    calibrate, so the proxy trace leaves them out instead of refusing the whole window."""
    monitor = monitor_for(equal_mass_policy)
    trace = feedback(40, 11)
    logits = trace.logits.clone()
    logits[[3, 17], 1, 0] = float("nan")
    monitor.end_batch(
        torch.zeros(0, dtype=torch.long),
        torch.full((40,), FEEDBACK_EXITS - 1, dtype=torch.long),
        logits,
    )
    proxy = monitor.feedback_trace("proxy")
    assert proxy.num_inputs == 38
    kept = [i for i in range(40) if i not in (3, 17)]
    assert torch.equal(proxy.logits, logits[kept])
    monitor.forget_feedback()
    monitor.end_batch(
        torch.zeros(0, dtype=torch.long),
        torch.full((1,), FEEDBACK_EXITS - 1, dtype=torch.long),
        torch.full((1, FEEDBACK_EXITS, FEEDBACK_CLASSES), float("nan")),
    )
    with pytest.raises(CalibrationError, match="expected proxy feedback"):
        monitor.feedback_trace("proxy")


def test_the_audited_share_is_exact_over_single_rows(equal_mass_policy: ExitPolicy) -> None:
    """audit = 0.1 audits the 10th, 20th, ... row, not the 11th (0.1 added ten times is
    0.999... in floating point)."""
    monitor = monitor_for(equal_mass_policy, audit=0.1)
    audited = [i for i in range(1, 41) if monitor.audit_rows(1) is not None]
    assert audited == [10, 20, 30, 40]


@pytest.mark.filterwarnings("ignore::adaptix.ShiftWarning")
def test_segments_restart_the_test_and_spend_alpha_as_evidence_path_says(
    equal_mass_policy: ExitPolicy,
) -> None:
    """The monitor's incremental segments equal `evidence_path` on the same counts, and the
    alarm lines are log(π² j² / (6α)): α_j adds up to α over all segments."""
    from adaptix.core.evalues import evidence_path, segment_threshold

    alpha = 0.05
    monitor = monitor_for(equal_mass_policy, alpha=alpha, check_every=1, restart_every=50)
    stream = feedback(400, 21, scale=1.5)  # a mild shift: log E moves, segments restart
    calibration = equal_mass_policy.calibration
    assert calibration is not None
    lines = []
    for start in range(0, 400, 20):
        rows = stream.logits[start : start + 20]
        for e in range(FEEDBACK_EXITS):
            monitor.count_exit(e, rows[:, e])  # every row reaches every exit: exits all last
        monitor.end_batch(torch.full((20,), FEEDBACK_EXITS - 1, dtype=torch.long))
        lines.append(monitor.threshold)
    bins0 = calibration.bin_index(adaptix.core.scores.confidence(stream.logits[:, 0]), 0)
    bin_counts = torch.nn.functional.one_hot(bins0, BINS).cumsum(0)[19::20]
    exits = torch.full((400,), FEEDBACK_EXITS - 1, dtype=torch.long)
    exit_counts = torch.nn.functional.one_hot(exits, FEEDBACK_EXITS).cumsum(0)[19::20]
    log_e, line = evidence_path(
        monitor.tests, bin_counts, exit_counts, alpha=alpha, check_inputs=20, restart_every=50
    )
    assert [v for _, v in monitor.history] == pytest.approx(log_e.tolist(), abs=1e-9)
    # 50 inputs per segment: three checks of 20 each, then a new segment.
    segments = [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7]
    assert line.tolist() == pytest.approx([segment_threshold(alpha, j) for j in segments])
    assert lines[:-1] == pytest.approx(line.tolist()[1:])  # the monitor's line for the next check
    assert sum(6 * alpha / (math.pi**2 * j**2) for j in range(1, 100_000)) < alpha
    # The report describes the segment checked last: the 7th, its 40 inputs so far.
    report = monitor.report()
    assert (report.segment, report.inputs) == (7, 40)
    assert sum(m.live_share for m in report.exits) == pytest.approx(1.0)


def test_reference_counts_add_over_shards_and_stand_for_the_trace(
    equal_mass_policy: ExitPolicy,
) -> None:
    """A reference counted in shards and added equals the whole trace's counts; a monitor
    built from counts tests exactly as one built from the trace, and refuses a new policy
    without a new reference (its counts are the old policy's exits)."""
    from adaptix.online.monitor import ReferenceCounts, reference_counts

    reference = synthetic_trace(300, FEEDBACK_EXITS, FEEDBACK_CLASSES, seed=2, labelled=False)
    whole = reference_counts(reference, equal_mass_policy)
    shards = [
        adaptix.Trace(reference.logits[a:b], None, reference.costs)
        for a, b in ((0, 1), (1, 120), (120, 300))
    ]
    total = sum(
        (reference_counts(shard, equal_mass_policy) for shard in shards[1:]),
        reference_counts(shards[0], equal_mass_policy),
    )
    assert isinstance(total, ReferenceCounts)
    assert torch.equal(total.reach, whole.reach)
    assert torch.equal(total.exits, whole.exits)
    from_counts = ShiftMonitor(equal_mass_policy, total, check_every=1)
    from_trace = ShiftMonitor(equal_mass_policy, reference, check_every=1)
    stream = feedback(60, 23, scale=1.5)
    for monitor in (from_counts, from_trace):
        for e in range(FEEDBACK_EXITS):
            monitor.count_exit(e, stream.logits[:, e])
        monitor.end_batch(adaptix.simulate(stream, equal_mass_policy).exit_index)
    assert from_counts.history == from_trace.history
    assert from_counts.reference is None
    other = equal_mass_policy.with_threshold(0.5)
    with pytest.raises(ValidationError, match="reference counts for the new policy"):
        from_counts.reset(policy=other)
    from_counts.reset(policy=other, reference=reference_counts(reference, other))
    assert from_counts.policy is other
    with pytest.raises(ValidationError, match=r"one policy, model and binning.*criterion"):
        _ = whole + reference_counts(
            synthetic_trace(10, FEEDBACK_EXITS, FEEDBACK_CLASSES + 1, seed=3),
            adaptix.policy("confidence", 0.5),
        )
    assert torch.equal(
        sum(reference_counts(shard, equal_mass_policy) for shard in shards).exits, whole.exits
    )
