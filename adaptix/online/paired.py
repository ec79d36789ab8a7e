"""Paired, interleaved rounds: how adaptix times a runner against its baseline.

Every timed round of the runner is preceded by a pass of the baseline, and the last round is
followed by one more: round i's realised speed-up is the mean of the baseline passes around it
over the runner's time, which cancels a load that drifts steadily across the round. The realised
speed-up is the median over rounds. A round makes as many passes over the inputs as it takes
for the faster of the two to last `MIN_ROUND_SECONDS` (`auto_passes`).

`adaptix.testing.speed.ExitBenchmark` (the pytest fixture ``exit_benchmark``) and the main job
(`adaptix.experiment.job`) both time with `time_paired`, so that their figures compare.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

#: A round repeats the passes over the inputs until the faster of baseline and runner takes at
#: least this long, so that one pause of the OS scheduler (4–17 ms seen on a loaded machine)
#: cannot swing a round's ratio.
MIN_ROUND_SECONDS = 0.05
#: ... unless the slower of the two would then take longer than this a round.
MAX_ROUND_SECONDS = 1.0
MAX_PASSES = 1024

#: Times ``rounds`` of the runner, each preceded by the baseline: (run_runner, before) -> the
#: seconds of each timed round ([]: not timed). pytest-benchmark's ``pedantic`` goes here.
RoundTimer = Callable[[Callable[[], None], Callable[[], None]], list[float]]


@dataclass(frozen=True)
class PairedTimes:
    """What `time_paired` measured.

    Attributes:
        realised_speedup: median over rounds of time(baseline) / time(runner), the baseline's
            time being the mean of the passes before and after the round (None: not timed).
        baseline_seconds: median seconds of one baseline pass over the inputs (None: not timed).
        runner_seconds: median seconds of one runner pass (None: not timed).
        rounds: timed rounds (0: not timed).
        passes: passes over the inputs in every round.
    """

    realised_speedup: float | None
    baseline_seconds: float | None
    runner_seconds: float | None
    rounds: int
    passes: int


def auto_passes(
    baseline: Callable[[], object],
    runner: Callable[[], object],
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """Passes per round so that a round of the faster of ``baseline`` and ``runner`` (one pass
    each) lasts at least `MIN_ROUND_SECONDS`: a power of two, so that it rarely changes between
    runs, and no more than keeps the slower within `MAX_ROUND_SECONDS`."""
    start = clock()
    baseline()
    middle = clock()
    runner()
    end = clock()
    shortest = min(middle - start, end - middle)
    longest = max(middle - start, end - middle)
    if shortest >= MIN_ROUND_SECONDS:
        return 1
    wanted = 2 ** math.ceil(math.log2(MIN_ROUND_SECONDS / max(shortest, 1e-9)))
    # A tiny baseline against a slow runner must not make the runner's rounds last minutes.
    affordable = 2 ** max(0, math.floor(math.log2(MAX_ROUND_SECONDS / max(longest, 1e-9))))
    return max(1, min(wanted, affordable, MAX_PASSES))


def time_paired(
    baseline: Callable[[], object],
    runner: Callable[[], object],
    *,
    rounds: int,
    warmup_rounds: int = 1,
    passes: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    timer: RoundTimer | None = None,
) -> PairedTimes:
    """Time ``runner`` against ``baseline`` (each one pass over the inputs) in paired rounds of
    ``passes`` passes, after ``warmup_rounds`` untimed ones (see the module docstring).

    Args:
        timer: what times the runner's rounds (default: ``clock`` around each round).
    """
    baseline_times: list[float] = []

    def time_baseline() -> None:
        start = clock()
        for _ in range(passes):
            baseline()
        baseline_times.append((clock() - start) / passes)

    def run_runner() -> None:
        for _ in range(passes):
            runner()

    def own_timer(run: Callable[[], None], before: Callable[[], None]) -> list[float]:
        times = []
        for round_ in range(warmup_rounds + rounds):
            before()
            start = clock()
            run()
            if round_ >= warmup_rounds:
                times.append(clock() - start)
        return times

    runner_times = [t / passes for t in (timer or own_timer)(run_runner, time_baseline)]
    if not runner_times:
        return PairedTimes(None, None, None, 0, passes)
    time_baseline()  # after the last round: every round has a baseline on each side
    timed = baseline_times[warmup_rounds:]
    ratios = [(timed[i] + timed[i + 1]) / 2 / seconds for i, seconds in enumerate(runner_times)]
    return PairedTimes(
        realised_speedup=statistics.median(ratios),
        baseline_seconds=statistics.median(timed),
        runner_seconds=statistics.median(runner_times),
        rounds=len(runner_times),
        passes=passes,
    )
