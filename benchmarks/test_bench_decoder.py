"""Token-level early exit in a decoder LM against the same loop at full depth, at small scale.

Run: ``python -m pytest benchmarks/test_bench_decoder.py -q`` (about two minutes on two cores;
``benchmarks/decoder_speed.py`` is the full comparison: three targets, transformers' generate).

The model is a random ``tiny_llama(layers=12, hidden=256, heads=8, kv_heads=4, vocab=2000)``
with exits after layers 2, 5 and 8, on random prompts of ragged lengths; the policy is the
script's ``medium`` target (``confidence`` at the first-exit confidence that about 30 % of the
full model's traced tokens reach). At batch 1, 8 and 32:

- ``test_full_depth``: the full-depth loop (``EarlyExitGenerator(model, None)``) by itself; its
  first call must equal transformers' greedy ``generate`` token for token.
- ``test_early_exit[deferred|copy]``: the early-exit generator, timed through
  `adaptix.online.paired.time_paired` with pytest-benchmark's own rounds (``pedantic``), the
  full-depth loop run right before every round and once after the last, as the
  ``exit_benchmark`` fixture times a classifier: ``realised_speedup`` is the median over rounds
  of time(full depth) / time(early exit). Its first call must decide as `adaptix.simulate` does
  on a teacher-forced trace of its own sequences (``deferred``: every step; ``copy``: up to each
  row's first early exit, after which its cache differs from the full model's by design).

``extra_info`` holds the figures (ideal speed-up in layer passes and in FLOPs, realised,
realised/ideal, exit histogram, agreement with the full model's tokens); the session ends with
their table. Speed is reported, never asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from decoder_speed import (
    FullDepth,
    Result,
    Setup,
    build_setup,
    full_depth,
    hf_batched_tokens,
    in_batches,
    markdown,
    measure_early_exit,
    simulation_mismatches,
)
from pytest_benchmark.fixture import BenchmarkFixture

from adaptix.online.generate import EarlyExitGenerator

pytest.importorskip("transformers")
pytest.importorskip("adaptix_transformers")

#: Prompts per pass at each batch size.
ROWS = {1: 2, 8: 8, 32: 32}
NEW_TOKENS = 8
ROUNDS = 3
WARMUP_ROUNDS = 1
TARGET = "medium"


@dataclass
class DecoderSummary:
    """The session's results, printed as a table at the end (a pytest plugin)."""

    results: list[Result] = field(default_factory=list)
    num_layers: int = 0

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print the table (pytest hook)."""
        if not self.results:
            return
        terminalreporter.write_sep("-", "decoder early exit against the full-depth loop")
        rows = sorted(self.results, key=lambda r: (r.batch, r.kv))
        for line in markdown(rows, self.num_layers).splitlines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def decoder_summary(request: pytest.FixtureRequest) -> DecoderSummary:
    collector = DecoderSummary()
    request.config.pluginmanager.register(collector, "adaptix-decoder-summary")
    return collector


@pytest.fixture(scope="session")
def setup() -> Setup:
    """The random tiny Llama with its exits, the prompts and the targets' policies (seeded)."""
    return build_setup(max(ROWS.values()))


@pytest.fixture(scope="session")
def full(setup: Setup) -> dict[int, FullDepth]:
    """The full-depth loop at each batch size, with its tokens and FLOPs."""
    return {
        batch: full_depth(setup, batch, rows, NEW_TOKENS, "cpu") for batch, rows in ROWS.items()
    }


def pedantic_timer(benchmark: BenchmarkFixture) -> Callable[..., list[float]]:
    """A `adaptix.online.paired.RoundTimer` whose rounds are pytest-benchmark's (``pedantic``),
    each preceded by the baseline: what `adaptix.testing.speed.ExitBenchmark` does."""

    def rounds(run: Callable[[], None], before: Callable[[], None]) -> list[float]:
        benchmark.pedantic(
            run, setup=before, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1
        )
        stats = getattr(benchmark, "stats", None)
        if getattr(benchmark, "disabled", False) or stats is None:
            return []
        return [float(t) for t in stats.stats.data]

    return rounds


@pytest.mark.parametrize("batch", ROWS)
def test_full_depth(
    benchmark: BenchmarkFixture, setup: Setup, full: dict[int, FullDepth], batch: int
) -> None:
    reference = full[batch]
    prompts = setup.prompts[: ROWS[batch]]
    stopping = EarlyExitGenerator(setup.model, None)
    stopped = [
        row
        for start in range(0, len(prompts), batch)
        for row in stopping.generate(
            prompts[start : start + batch], max_new_tokens=NEW_TOKENS
        ).tokens
    ]
    assert stopped == hf_batched_tokens(setup.hf, prompts, batch, NEW_TOKENS, "cpu")
    benchmark.pedantic(reference.run, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    benchmark.extra_info.update(batch=batch, rows=ROWS[batch], new_tokens=NEW_TOKENS)


@pytest.mark.parametrize("kv", ["deferred", "copy"])
@pytest.mark.parametrize("batch", ROWS)
def test_early_exit(
    benchmark: BenchmarkFixture,
    decoder_summary: DecoderSummary,
    setup: Setup,
    full: dict[int, FullDepth],
    batch: int,
    kv: str,
) -> None:
    policy = setup.policies[TARGET]
    generator = EarlyExitGenerator(setup.model, policy, kv=kv)
    outputs: list[Any] = in_batches(generator, setup.prompts[: ROWS[batch]], batch, NEW_TOKENS)()
    assert sum(sum(out.exit_histogram()[:-1]) for out in outputs) > 0, "nothing exited early"
    for out in outputs:
        wrong = simulation_mismatches(setup.model, policy, out, exact=kv == "deferred")
        assert not wrong, f"(row, step) deciding unlike simulate: {wrong[:10]}"
    result = measure_early_exit(
        setup,
        full[batch],
        batch,
        ROWS[batch],
        NEW_TOKENS,
        TARGET,
        kv,
        ROUNDS,
        "cpu",
        timer=pedantic_timer(benchmark),
    )
    benchmark.extra_info.update(result.extra_info())
    decoder_summary.num_layers = setup.model.num_layers
    if result.realised_speedup is not None:
        decoder_summary.results.append(result)


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Any:
    """One torch thread: on two shared cores, two threads spin against the other load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
