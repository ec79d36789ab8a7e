"""`adaptix.online.paired`: the paired rounds that `ExitBenchmark` and the main job time with."""

from __future__ import annotations

import statistics

import pytest

from adaptix.online.paired import MIN_ROUND_SECONDS, auto_passes, time_paired


class Clock:
    """A clock that only moves when a target runs: baseline 2 s a pass, runner 1 s a pass,
    except that the baseline slows by 1 s every pass (a drifting load)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.baseline_passes = 0

    def __call__(self) -> float:
        return self.now

    def baseline(self) -> None:
        self.now += 2.0 + self.baseline_passes
        self.baseline_passes += 1

    def runner(self) -> None:
        self.now += 1.0


def test_each_round_is_bracketed_by_the_baseline() -> None:
    clock = Clock()
    times = time_paired(clock.baseline, clock.runner, rounds=3, warmup_rounds=1, clock=clock)
    # Baseline passes: 2, 3 (warm-up round), 4, 5, 6 after it; each timed round sits between two.
    assert times.rounds == 3
    assert times.passes == 1
    assert times.runner_seconds == 1.0
    assert times.baseline_seconds == statistics.median([3.0, 4.0, 5.0, 6.0])
    assert times.realised_speedup == pytest.approx(statistics.median([3.5, 4.5, 5.5]))


def test_no_timed_round_means_no_figures() -> None:
    clock = Clock()
    times = time_paired(clock.baseline, clock.runner, rounds=2, clock=clock, timer=lambda r, b: [])
    assert times.realised_speedup is None
    assert times.baseline_seconds is None
    assert times.runner_seconds is None
    assert times.rounds == 0


def test_passes_make_the_faster_target_last_a_minimum_round() -> None:
    now = [0.0]

    def fast() -> None:
        now[0] += MIN_ROUND_SECONDS / 10

    def slow() -> None:
        now[0] += MIN_ROUND_SECONDS / 2

    assert auto_passes(fast, slow, clock=lambda: now[0]) == 16  # 2 ** ceil(log2(10))
    assert auto_passes(slow, slow, clock=lambda: now[0]) == 2
