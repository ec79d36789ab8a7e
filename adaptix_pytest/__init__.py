"""adaptix's pytest plugin: guard an early-exit model's speed and control in CI.

Installed with adaptix and loaded by pytest through the ``pytest11`` entry point (disable it with
``-p no:adaptix``). Importing it costs pytest nothing: adaptix and torch are imported only when
a test asks for a fixture. Fixtures:

- ``exit_benchmark(model, policy, inputs, labels=None, batch_size=64, ...)``: checks that the
  runner decides as `adaptix.simulate` does, times the plain model and the runner in paired,
  interleaved rounds through pytest-benchmark's ``benchmark`` (so ``--benchmark-autosave``,
  ``--benchmark-compare`` and ``--benchmark-compare-fail`` work on the runner's times), records
  the realised and ideal speed-ups, their ratio, the exit histogram and accuracy in the
  benchmark's ``extra_info``, and returns a `adaptix.testing.speed.SpeedResult`. Keyword
  arguments are those of `adaptix.testing.speed.ExitBenchmark`. Needs pytest-benchmark.
- ``control_check(trace, policy, ...)``: fails the test, showing the table, when the held-out
  trace breaks the policy's promise (`adaptix.testing.control_check.check_control`); returns
  the `ControlReport`.

Regression gates on ratios, against the run that ``--benchmark-compare`` loads (pytest-benchmark
compares seconds; these compare the figures in ``extra_info``):

- ``--adaptix-ratio-fail=10%``: fail an ``exit_benchmark`` test whose realised / ideal ratio
  fell by more than 10 % of the saved run's;
- ``--adaptix-speedup-fail=10%``: the same for the realised speed-up.

A test is gated only against a saved run of the same test (pytest node id), mode, batch size,
number of inputs and baseline; anything else is listed as not compared. A gate with
``--benchmark-compare=NUM`` that matches no saved run fails the test (a pinned baseline went
missing); with a bare ``--benchmark-compare`` and no saved run yet, nothing is compared. The
end of the session prints a table of every measurement and check.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from adaptix.testing.control_check import ControlReport
    from adaptix.testing.speed import SpeedResult

#: The gated figures: option, extra_info key, words.
GATES = (
    ("adaptix_ratio_fail", "realised_over_ideal", "realised/ideal"),
    ("adaptix_speedup_fail", "realised_speedup", "realised speed-up"),
)
#: Saved and current runs must agree on these to be compared.
SAME_SETUP = ("mode", "batch_size", "inputs", "baseline")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("adaptix", "adaptix early-exit gates")
    group.addoption(
        "--adaptix-ratio-fail",
        metavar="PCT",
        default=None,
        type=_percentage,
        help="fail an exit_benchmark test whose realised/ideal speed-up ratio dropped by more "
        "than PCT (e.g. 10%%) against the run loaded by --benchmark-compare",
    )
    group.addoption(
        "--adaptix-speedup-fail",
        metavar="PCT",
        default=None,
        type=_percentage,
        help="fail an exit_benchmark test whose realised speed-up dropped by more than PCT "
        "(e.g. 10%%) against the run loaded by --benchmark-compare",
    )


def pytest_configure(config: pytest.Config) -> None:
    gated = [name for name, _, _ in GATES if config.getoption(name, default=None) is not None]
    if gated and not config.getoption("benchmark_compare", default=None):
        flags = ", ".join("--" + name.replace("_", "-") for name in gated)
        raise pytest.UsageError(
            f"{flags}: a gate compares against a saved run: add --benchmark-compare (the latest "
            "saved run) or --benchmark-compare=NUM, and save runs with --benchmark-autosave."
        )
    config.pluginmanager.register(Collector(config), "adaptix-collector")


@dataclass
class Comparison:
    """One gated figure of a test against one saved run."""

    figure: str
    source: str
    saved: float
    now: float
    allowed: float

    @property
    def change(self) -> float:
        return self.now / self.saved - 1 if self.saved else 0.0

    @property
    def regressed(self) -> bool:
        return self.change < -self.allowed

    def line(self) -> str:
        verdict = "beyond" if self.regressed else "within"
        return (
            f"{self.figure} {self.saved:.3f} -> {self.now:.3f} ({self.change:+.1%}) against "
            f"{self.source}: {verdict} the {self.allowed:.0%} allowed"
        )


@dataclass
class Measured:
    """A test's exit_benchmark result and its comparisons."""

    nodeid: str
    result: SpeedResult
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Collector:
    """The session's measurements and checks; prints them at the end (a pytest plugin)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.measured: list[Measured] = []
        self.checks: list[tuple[str, ControlReport]] = []
        self.missing_baseline: str | None = None

    def saved_runs(self) -> dict[str, dict[str, Any]]:
        """Saved benchmarks by source file, each {node id: saved benchmark}, as loaded by
        pytest-benchmark for ``--benchmark-compare``."""
        session = getattr(self.config, "_benchmarksession", None)
        mapping = getattr(session, "compared_mapping", None) or {}
        return {_short(path): benches for path, benches in mapping.items()}

    def gate(self, nodeid: str, result: SpeedResult) -> Measured:
        """Compare the result with every saved run of the same test and setup."""
        measured = Measured(nodeid, result)
        self.measured.append(measured)
        gates = [
            (key, words, self.config.getoption(name, default=None)) for name, key, words in GATES
        ]
        gates = [(key, words, allowed) for key, words, allowed in gates if allowed is not None]
        wanted = self.config.getoption("benchmark_compare", default=None)  # True: the latest
        if not wanted:
            return measured
        info = result.extra_info()
        runs = self.saved_runs()
        if not runs and gates and wanted is not True:
            measured.notes.append(f"--benchmark-compare={wanted} matched no saved run")
            self.missing_baseline = str(wanted)
        elif not runs:
            measured.notes.append("no saved run to compare with")
        for source, benches in runs.items():
            saved = benches.get(nodeid)
            extra = (saved or {}).get("extra_info") or {}
            if saved is None or "realised_over_ideal" not in extra:
                measured.notes.append(
                    f"{source} holds no timed exit_benchmark figures for this test"
                )
                continue
            differs = [k for k in SAME_SETUP if extra.get(k) != info.get(k)]
            if differs:
                measured.notes.append(
                    f"{source} measured another setup ({', '.join(differs)}): not compared"
                )
                continue
            if result.realised_speedup is None:
                measured.notes.append("not timed (benchmarks disabled): not compared")
                continue
            for key, words, allowed in gates or [
                ("realised_over_ideal", "realised/ideal", None),
            ]:
                comparison = Comparison(
                    words, source, float(extra[key]), float(info[key]), allowed or 0.0
                )
                if allowed is None:
                    measured.notes.append(
                        f"{words} {comparison.saved:.3f} -> {comparison.now:.3f} "
                        f"({comparison.change:+.1%}) against {source} (not gated)"
                    )
                else:
                    measured.comparisons.append(comparison)
        return measured

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print the session's measurements and checks (pytest hook)."""
        write = terminalreporter.write_line
        if self.measured:
            from adaptix.testing.speed import PLAIN_MODEL  # adaptix is imported by now

            terminalreporter.write_sep("-", "adaptix: early-exit speed")
            write(
                "realised = time(baseline) / time(runner), median of paired rounds; ideal = "
                "baseline FLOPs / FLOPs of the exits taken; the baseline is the plain model "
                "unless listed"
            )
            width = max(len(m.nodeid) for m in self.measured)
            write(
                f"{'test':<{width}} {'batch':>5} {'mode':<8} {'early':>6} {'ideal':>6} "
                f"{'realised':>8} {'real/ideal':>10} {'agree':>11}"
            )
            for m in self.measured:
                r = m.result
                realised = "-" if r.realised_speedup is None else f"{r.realised_speedup:.2f}x"
                ratio = "-" if r.realised_over_ideal is None else f"{r.realised_over_ideal:.2f}"
                agree = f"{r.agreement.exact + r.agreement.within_noise}/{r.agreement.inputs}"
                write(
                    f"{m.nodeid:<{width}} {r.batch_size:>5} {r.mode:<8} "
                    f"{r.early_exit_rate:>6.1%} {r.ideal_speedup:>5.2f}x {realised:>8} "
                    f"{ratio:>10} {agree:>11}"
                )
                if r.baseline != PLAIN_MODEL:
                    write(f"  baseline: {r.baseline}")
                if r.mode == "lockstep":
                    write(
                        f"  ideal in lockstep mode (every row up to its batch's deepest exit): "
                        f"{r.ideal_speedup_mode:.2f}x"
                    )
                for comparison in m.comparisons:
                    flag = "REGRESSED" if comparison.regressed else "ok"
                    write(f"  {flag}: {comparison.line()}")
                for note in m.notes:
                    write(f"  {note}")
        if self.checks:
            terminalreporter.write_sep("-", "adaptix: control checks")
            for nodeid, report in self.checks:
                verdict = "passed" if report.holds else "FAILED"
                write(f"{nodeid}: {verdict}: {report.policy}, {report.reason}")


@pytest.fixture
def control_check(request: pytest.FixtureRequest) -> Callable[..., ControlReport]:
    """``control_check(trace, policy, *, early_accuracy=None, accuracy_drop=None,
    relative_cost=None, alpha=0.05, strict=False, min_early_exit_rate=0.0,
    require_certified=True)``: fail the test, with the table, when the held-out ``trace``
    breaks ``policy``'s promise (`adaptix.testing.control_check.check_control`); returns the
    `ControlReport`. Bad arguments fail the test with adaptix's message."""
    from adaptix.testing.control_check import check_control

    collector = _collector(request.config)

    def check(trace: Any, policy: Any, **options: Any) -> ControlReport:
        with _input_errors_fail():
            report = check_control(trace, policy, **options)
        collector.checks.append((request.node.nodeid, report))
        if not report.holds:
            pytest.fail(report.table(), pytrace=False)
        return report

    return check


if importlib.util.find_spec("pytest_benchmark") is not None:

    @pytest.fixture
    def exit_benchmark(
        benchmark: Any, request: pytest.FixtureRequest
    ) -> Callable[..., SpeedResult]:
        """``exit_benchmark(model, policy, inputs, *, labels=None, batch_size=64,
        mode=None, baseline=None, baseline_flops=None, baseline_name=None, trace=None,
        rounds=5, warmup_rounds=1, passes=None, tolerance=1e-4)``: the runner against the plain
        model, timed through pytest-benchmark (`adaptix.testing.speed.ExitBenchmark`); returns
        the `SpeedResult` (``realised_speedup`` is None under ``--benchmark-disable``). Once per
        test, as pytest-benchmark's fixture. Bad arguments fail the test with adaptix's
        message."""
        from adaptix.testing.speed import ExitBenchmark

        collector = _collector(request.config)
        calls: list[bool] = []

        def measure(model: Any, policy: Any, inputs: Any, **options: Any) -> SpeedResult:
            if calls:
                pytest.fail(
                    "exit_benchmark measures once per test (pytest-benchmark keeps one timing "
                    "per test): parametrize the test, or split it, to measure more.",
                    pytrace=False,
                )
            calls.append(True)
            with _input_errors_fail():
                result = ExitBenchmark(model, policy, inputs, **options).run(benchmark)
            measured = collector.gate(request.node.nodeid, result)
            regressions = [c for c in measured.comparisons if c.regressed]
            if collector.missing_baseline is not None:
                pytest.fail(
                    f"adaptix gate: --benchmark-compare={collector.missing_baseline} matched no "
                    "saved run, so the gate has nothing to compare with (a pinned baseline that "
                    "is missing, e.g. a CI cache not restored). Check --benchmark-storage.",
                    pytrace=False,
                )
            if regressions:
                pytest.fail(
                    "adaptix gate: early-exit speed regressed\n"
                    + "\n".join(f"  {c.line()}" for c in regressions)
                    + "\n\n"
                    + result.table(),
                    pytrace=False,
                )
            return result

        return measure

else:

    @pytest.fixture
    def exit_benchmark() -> Callable[..., SpeedResult]:
        """Unavailable: pytest-benchmark is not installed."""
        pytest.fail(
            "exit_benchmark times through pytest-benchmark, which is not installed: "
            "pip install pytest-benchmark",
            pytrace=False,
        )


@contextmanager
def _input_errors_fail() -> Iterator[None]:
    """Bad input (adaptix's ValidationError and CalibrationError) fails the test with the
    message alone: the traceback into adaptix's checks would only hide it. A plugin's own
    error (PluginError) keeps its traceback."""
    from adaptix.errors import CalibrationError, ValidationError

    try:
        yield
    except (ValidationError, CalibrationError) as err:
        pytest.fail(f"{type(err).__name__}: {err}", pytrace=False)


def _collector(config: pytest.Config) -> Collector:
    collector = config.pluginmanager.get_plugin("adaptix-collector")
    assert isinstance(collector, Collector)  # registered by pytest_configure above
    return collector


def _percentage(text: str) -> float:
    """``"10%"`` -> 0.1 (argparse type of the gate options)."""
    value = text.strip()
    try:
        if not value.endswith("%"):
            raise ValueError
        fraction = float(value[:-1]) / 100
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a percentage such as 10%, got {text!r}"
        ) from None
    if not 0 <= fraction < 1:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0%, 100%), got {text!r}")
    return fraction


def _short(path: Any) -> str:
    return Path(str(path)).name
