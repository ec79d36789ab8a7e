"""Shared data of the benchmarks: a large synthetic trace, its calibration, and a record of the
timings measured in this session (for ratios between benchmarks of the same run)."""

from __future__ import annotations

import pytest

import adaptix
from adaptix.online.allocator import cpu_allocator_tuned
from adaptix.plugins import AdaptixPluginManager
from adaptix.settings import Settings
from adaptix.testing import synthetic_trace


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--default-allocator",
        action="store_true",
        help="leave glibc's allocator as it is (by default the benchmarks call "
        "adaptix.tune_cpu_allocator() first, as a CPU deployment would)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Tune the CPU allocator before anything allocates, for every benchmark alike."""
    if not config.getoption("--default-allocator", default=False):
        adaptix.tune_cpu_allocator()


#: Mean seconds per benchmark, filled as benchmarks run; read by `pytest_terminal_summary`.
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def timings() -> dict[str, float]:
    """Where a benchmark records its mean time, for ratios against another benchmark."""
    return TIMINGS


@pytest.fixture(scope="session")
def plugins() -> AdaptixPluginManager:
    """A default plugin manager, independent of the caller's ``ADAPTIX_*`` variables."""
    return adaptix.get_plugin_manager(settings=Settings())


@pytest.fixture(scope="session")
def trace() -> adaptix.Trace:
    """10,000 inputs, 8 exits, 10 classes; later exits more accurate (seeded)."""
    return synthetic_trace(10_000, 8, 10, seed=0)


@pytest.fixture(scope="session")
def calibration(plugins: AdaptixPluginManager) -> adaptix.Calibration:
    """The reliability tables of a held-out trace from the same synthetic model."""
    return adaptix.calibrate(synthetic_trace(10_000, 8, 10, seed=1), plugins=plugins)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the allocator setting, and the sweep's speed-up over the per-threshold loop when
    both ran in this session."""
    tuned = cpu_allocator_tuned()
    terminalreporter.write_line(
        "CPU allocator: "
        + (f"tuned (tune_cpu_allocator, {tuned >> 20} MiB)" if tuned else "glibc default")
    )
    if {"simulate_loop", "sweep"} <= TIMINGS.keys():
        ratio = TIMINGS["simulate_loop"] / TIMINGS["sweep"]
        terminalreporter.write_sep("-", "sweep against the per-threshold simulate loop")
        terminalreporter.write_line(
            f"loop {TIMINGS['simulate_loop']:.3f} s, sweep {TIMINGS['sweep']:.4f} s: "
            f"speed-up {ratio:.1f}x"
        )
