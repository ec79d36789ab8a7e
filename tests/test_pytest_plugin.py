"""The pytest plugin (``adaptix_pytest``) as a user's CI meets it: pytester projects that train a
tiny early-exit model and guard it with ``exit_benchmark`` and ``control_check``, with saved
runs, gates and the end-of-session summary."""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ("pytester",)

# The user's model, policy and held-out data: an MLP on Gaussian clusters, as code for a
# conftest.py (string.Template: $width, $depth, $spread, $lr, $calibration). Also run once in
# this interpreter (see _interpreter_warmed_up), so it is plain code, without pytest fixtures.
MODEL_TEMPLATE = string.Template("""
import torch
from torch import nn

import adaptix

torch.set_num_threads(1)
CLASSES, FEATURES, WIDTH, DEPTH = 4, 8, $width, $depth


def clusters(n, seed):
    \"\"\"Gaussian clusters, $spread apart.\"\"\"
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0)) * $spread
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(CLASSES, (n,), generator=generator)
    return centres[labels] + torch.randn(n, FEATURES, generator=generator), labels


def build_family():
    \"\"\"(model, pcee 0.9 policy, held-out (inputs, labels)).\"\"\"
    torch.manual_seed(0)
    x, y = clusters(512, seed=1)
    source = nn.Sequential(
        nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.ReLU()),
        *(nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU()) for _ in range(DEPTH - 1)),
    )
    model = adaptix.build_model(
        "sequential", num_classes=CLASSES, source=source, head="linear", example_input=x[:2]
    )
    adaptix.train_exits(
        model, (x, y), mode="joint", epochs=3, lr=$lr, batch_size=64, progress=False
    )
    model.eval()
    calibration = adaptix.calibrate(model.trace(*clusters($calibration, seed=2)))
    return model, adaptix.policy("pcee", 0.9, calibration), clusters(512, seed=3)
""")
# The project's model: noisy enough that some rows need the last exit, and wide enough that a
# pass of the plain model takes milliseconds (with a narrower model the pass is shorter than the
# time slices of a loaded machine, and the realised speed-up swings tenfold).
PROJECT_MODEL = MODEL_TEMPLATE.substitute(width=256, depth=4, spread=1.5, lr=1e-2, calibration=512)

# The project's fixtures. Environment variables (read when the fixtures run, so an in-process
# run sees the test's monkeypatched values) vary the project between runs of the same test ids:
# PLUGIN_TEST_BATCH sets the batch size, PLUGIN_TEST_SLOW_MS makes every runner call that many
# milliseconds slower (a speed regression that leaves the decisions as they were).
PROJECT_FIXTURES = """
import os
import time

import pytest


@pytest.fixture(scope="session")
def family():
    return build_family()


@pytest.fixture(scope="session")
def model(family):
    return family[0]


@pytest.fixture(scope="session")
def policy(family):
    return family[1]


@pytest.fixture(scope="session")
def held_out(family):
    return family[2]


@pytest.fixture
def batch_size():
    return int(os.environ.get("PLUGIN_TEST_BATCH", "64"))


@pytest.fixture(autouse=True)
def _slowed_runner(monkeypatch):
    delay = float(os.environ.get("PLUGIN_TEST_SLOW_MS", "0")) / 1000
    if delay:
        run = adaptix.EarlyExitRunner.__call__

        def slowed(self, inputs):
            output = run(self, inputs)
            time.sleep(delay)
            return output

        monkeypatch.setattr(adaptix.EarlyExitRunner, "__call__", slowed)
"""

SPEED_TEST = """
def test_speed(model, policy, held_out, batch_size, exit_benchmark):
    inputs, labels = held_out
    # passes pinned: the automatic choice would make the slowed runner's rounds long
    result = exit_benchmark(
        model, policy, inputs, labels=labels, batch_size=batch_size, rounds=5, passes=4
    )
    assert result.agreement.ok
"""

CONTROL_TEST = """
def test_control(model, policy, held_out, control_check):
    report = control_check(model.trace(*held_out), policy)
    assert report.holds
"""

SPEED_ID = "test_project_speed.py::test_speed"
#: Milliseconds added to every runner call by PLUGIN_TEST_SLOW_MS. A pass of the runner over
#: 8 batches takes 5 to 25 ms, depending on the machine's load, so this makes it several
#: times slower: a drop in realised speed-up far beyond the timing noise (the realised speed-up
#: of the unchanged runner varies by up to about 2.5x between runs on two loaded cores).
SLOW_MS = "10"

Run = Callable[..., pytest.RunResult]


@pytest.fixture(scope="module", autouse=True)
def _interpreter_warmed_up() -> None:
    """Build the project's model and measure it once in this interpreter first.

    The in-process runs share this interpreter, and pytester forgets every module a run
    imported; torch cannot import some of its lazily loaded modules twice (a second import of
    torch._dynamo aborts the process), so they must be loaded before the first run.
    """
    from adaptix.testing.control_check import check_control
    from adaptix.testing.speed import ExitBenchmark

    namespace: dict[str, Any] = {}
    exec(PROJECT_MODEL, namespace)
    model, policy, (inputs, labels) = namespace["build_family"]()
    ExitBenchmark(model, policy, inputs, labels=labels, rounds=1).run()
    check_control(model.trace(inputs, labels), policy)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """The user's project: the shared conftest, a speed test and a control test."""
    pytester.makeconftest(PROJECT_MODEL + PROJECT_FIXTURES)
    pytester.makepyfile(test_project_speed=SPEED_TEST, test_project_control=CONTROL_TEST)
    return pytester


@pytest.fixture
def storage(pytester: pytest.Pytester) -> Path:
    """Where the project's benchmark runs are saved (outside the repository)."""
    return pytester.path.parent / f"{pytester.path.name}-benchmarks"


@pytest.fixture
def run(project: pytest.Pytester, storage: Path) -> Run:
    """``run(*args)``: pytest in-process in the project, saving runs under ``storage``."""

    def run_pytest(*args: str) -> pytest.RunResult:
        return project.runpytest_inprocess(
            "-p", "no:cacheprovider", f"--benchmark-storage={storage}", *args
        )

    return run_pytest


def saved_runs(storage: Path) -> list[Path]:
    return sorted(storage.rglob("*.json"))


# ------------------------------------------------------------------------------ loading


def test_the_plugin_loads_through_its_entry_point_without_importing_torch(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_nothing_heavy_is_imported(request):
            assert request.config.pluginmanager.has_plugin("adaptix")
            assert "adaptix_pytest" in sys.modules
            assert "torch" not in sys.modules
            assert "adaptix" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_help_lists_the_gates(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["adaptix early-exit gates:", "*--adaptix-ratio-fail=PCT*", "*--adaptix-speedup-fail=PCT*"]
    )


def test_disabling_the_plugin_removes_its_fixtures(project: pytest.Pytester) -> None:
    result = project.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:adaptix")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines_random(
        ["*fixture 'exit_benchmark' not found*", "*fixture 'control_check' not found*"]
    )
    result.stdout.no_fnmatch_line("*adaptix: early-exit speed*")


# --------------------------------------------------------------------------- measuring


def test_exit_benchmark_records_its_figures_and_summarises_them(
    run: Run, pytester: pytest.Pytester
) -> None:
    report = pytester.path / "bench.json"
    result = run(f"--benchmark-json={report}")
    result.assert_outcomes(passed=2)
    (bench,) = json.loads(report.read_text())["benchmarks"]
    assert bench["fullname"] == SPEED_ID
    info = bench["extra_info"]
    assert info["mode"] == "compact"
    assert info["batch_size"] == 64
    assert info["inputs"] == 512
    assert info["rounds"] == 5
    assert len(bench["stats"]["data"]) == 5  # pytest-benchmark timed the runner's rounds
    histogram = info["exit_histogram"]
    assert len(histogram) == 4
    assert sum(histogram) == 512
    assert 0 < histogram[-1] < 512  # some rows exit early, some need the last exit
    assert info["ideal_speedup"] > 1
    assert info["realised_speedup"] > 0
    assert info["realised_over_ideal"] == pytest.approx(
        info["realised_speedup"] / info["ideal_speedup"]
    )
    assert info["agreement_exact"] + info["agreement_within_noise"] == 512
    assert 0.8 < info["accuracy"] <= 1
    result.stdout.fnmatch_lines(
        [
            "*adaptix: early-exit speed*",
            "realised = time(*) / time(runner), median of paired rounds; *",
            "test*batch*mode*early*ideal*realised*real/ideal*agree",
            f"{SPEED_ID}*64 compact*x*x*512/512",
            "*adaptix: control checks*",
            "test_project_control.py::test_control: passed: pcee 0.9, holds*",
        ]
    )


def test_a_saved_run_is_compared_but_not_gated_without_a_gate_option(
    run: Run, storage: Path
) -> None:
    run("--benchmark-autosave").assert_outcomes(passed=2)
    (saved,) = saved_runs(storage)
    result = run("--benchmark-compare")
    result.assert_outcomes(passed=2)
    # pytest-benchmark's table: the saved run and this one (in the order of their times).
    result.stdout.fnmatch_lines_random([f"test_speed ({saved.stem[:4]}*", "test_speed (NOW) *"])
    result.stdout.fnmatch_lines(
        [
            "*adaptix: early-exit speed*",
            f"  realised/ideal * -> * (*%) against {saved.name} (not gated)",
        ]
    )


# ------------------------------------------------------------------------------- gates


@pytest.mark.parametrize(
    ("option", "words"),
    [("--adaptix-ratio-fail", "realised/ideal"), ("--adaptix-speedup-fail", "realised speed-up")],
)
def test_a_gate_fails_a_slowed_runner(
    run: Run, storage: Path, monkeypatch: pytest.MonkeyPatch, option: str, words: str
) -> None:
    run("--benchmark-autosave").assert_outcomes(passed=2)
    (saved,) = saved_runs(storage)
    monkeypatch.setenv("PLUGIN_TEST_SLOW_MS", SLOW_MS)
    report = storage.parent / f"{storage.name}-slowed.json"
    result = run("--benchmark-compare", f"{option}=10%", f"--benchmark-json={report}")
    result.assert_outcomes(passed=1, failed=1)
    # pytest-benchmark timed the runner (8 calls, each slowed), not the plain model.
    (bench,) = json.loads(report.read_text())["benchmarks"]
    assert bench["stats"]["min"] >= 8 * float(SLOW_MS) / 1000
    result.stdout.fnmatch_lines(
        [
            "*_ test_speed _*",
            "adaptix gate: early-exit speed regressed",
            f"  {words} * -> * (-*%) against {saved.name}: beyond the 10% allowed",
            "",
            "policy            pcee 0.9 (compact, batch 64, 512 inputs)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*adaptix: early-exit speed*",
            f"  REGRESSED: {words} * -> * against {saved.name}: beyond the 10% allowed",
            f"FAILED {SPEED_ID} - Failed: adaptix gate: *",
        ]
    )


def test_an_unchanged_runner_passes_a_generous_gate(run: Run, storage: Path) -> None:
    run("--benchmark-autosave").assert_outcomes(passed=2)
    (saved,) = saved_runs(storage)
    # Same runner, same machine: only timing noise, which on a shared two-core machine can be
    # large, but not a tenfold drop of a median of paired rounds.
    result = run("--benchmark-compare", "--adaptix-ratio-fail=90%", "--adaptix-speedup-fail=90%")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"  ok: realised/ideal * -> * against {saved.name}: within the 90% allowed",
            f"  ok: realised speed-up * -> * against {saved.name}: within the 90% allowed",
        ]
    )
    result.stdout.no_fnmatch_line("*REGRESSED*")


def test_a_gate_needs_benchmark_compare(run: Run) -> None:
    result = run("--adaptix-ratio-fail=10%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--adaptix-ratio-fail: a gate compares against a saved run*"])
    assert "--benchmark-compare" in result.stderr.str()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ten", "expected a percentage such as 10%, got 'ten'"),
        ("0.1", "expected a percentage such as 10%, got '0.1'"),
        ("100%", "expected a percentage in [[]0%, 100%), got '100%'"),
    ],
)
def test_a_gate_takes_a_percentage(run: Run, value: str, message: str) -> None:
    result = run("--benchmark-compare", f"--adaptix-ratio-fail={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--adaptix-ratio-fail: {message}*"])


# pytest-benchmark warns that it has nothing to compare with, in this interpreter.
@pytest.mark.filterwarnings("ignore:Can't compare. No benchmark files")
def test_gating_without_a_saved_run_passes_and_says_so(run: Run) -> None:
    result = run("--benchmark-compare", "--adaptix-ratio-fail=10%")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"{SPEED_ID}*", "  no saved run to compare with"])


@pytest.mark.filterwarnings("ignore:Can't compare:pytest_benchmark.logger.PytestBenchmarkWarning")
def test_a_pinned_baseline_that_is_missing_fails_the_gate(run: Run) -> None:
    """A CI cache that was not restored must not switch the gate off in silence."""
    result = run("--benchmark-compare=0042", "--adaptix-ratio-fail=10%")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "adaptix gate: --benchmark-compare=0042 matched no saved run, so the gate has "
            "nothing to compare with*",
            "  --benchmark-compare=0042 matched no saved run",
        ]
    )


MISUSE_TEST = """
def test_twice(model, policy, held_out, exit_benchmark):
    inputs, labels = held_out
    exit_benchmark(model, policy, inputs, rounds=1, passes=1)
    exit_benchmark(model, policy, inputs, rounds=1, passes=1)


def test_bad_labels(model, policy, held_out, exit_benchmark):
    inputs, labels = held_out
    exit_benchmark(model, policy, inputs, labels=labels[:-1])


def test_bad_target(policy, held_out, model, control_check):
    control_check(model.trace(*held_out), policy, early_accuracy=1.5)


def test_lockstep(model, policy, held_out, exit_benchmark):
    exit_benchmark(model, policy, held_out[0], mode="lockstep", rounds=1, passes=1)
"""


def test_misuse_fails_with_adaptix_message_alone(run: Run, project: pytest.Pytester) -> None:
    project.makepyfile(test_misuse=MISUSE_TEST)
    result = run("test_misuse.py")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*_ test_twice _*",
            "exit_benchmark measures once per test *parametrize the test, or split it*",
            "*_ test_bad_labels _*",
            "ValidationError: expected labels of shape [[]512[]], got (511,).",
            "*_ test_bad_target _*",
            "ValidationError: expected early_accuracy in (0, 1], got 1.5.",
        ]
    )
    # the message alone: no traceback into adaptix's checks
    assert "speed.py" not in result.stdout.str()
    assert "control_check.py" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "test_misuse.py::test_lockstep * lockstep *",
            "  ideal in lockstep mode (every row up to its batch's deepest exit): *x",
        ]
    )


def test_a_run_with_another_batch_size_is_not_compared(
    run: Run, storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("--benchmark-autosave").assert_outcomes(passed=2)
    (saved,) = saved_runs(storage)
    # Slowed as well: were the runs compared, the gate would fail.
    monkeypatch.setenv("PLUGIN_TEST_BATCH", "32")
    monkeypatch.setenv("PLUGIN_TEST_SLOW_MS", SLOW_MS)
    result = run("--benchmark-compare", "--adaptix-ratio-fail=10%")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"{SPEED_ID}*32 compact*",
            f"  {saved.name} measured another setup (batch_size): not compared",
        ]
    )


def test_disabled_benchmarks_still_run_but_are_not_timed(run: Run) -> None:
    run("--benchmark-autosave").assert_outcomes(passed=2)
    result = run("--benchmark-disable", "--benchmark-compare", "--adaptix-ratio-fail=10%")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            # realised and realised/ideal: not measured
            f"{SPEED_ID}*64 compact*x        -          -     512/512",
            "  not timed (benchmarks disabled): not compared",
        ]
    )


def test_benchmark_skip_and_only_select_the_tests(run: Run) -> None:
    skipped = run("--benchmark-skip", "-rs")
    skipped.assert_outcomes(passed=1, skipped=1)
    skipped.stdout.fnmatch_lines(["SKIPPED*test_project_speed.py*--benchmark-skip*"])
    skipped.stdout.no_fnmatch_line("*adaptix: early-exit speed*")
    only = run("--benchmark-only", "-rs")
    only.assert_outcomes(passed=1, skipped=1)
    only.stdout.fnmatch_lines(["SKIPPED*test_project_control.py*--benchmark-only*"])
    only.stdout.no_fnmatch_line("*adaptix: control checks*")


# ------------------------------------------------------------------------ failing checks


def test_a_broken_promise_fails_with_the_table(run: Run, project: pytest.Pytester) -> None:
    project.makepyfile(
        test_shifted="""
        def test_after_a_label_shift(model, policy, held_out, control_check):
            inputs, labels = held_out
            control_check(model.trace(inputs, (labels + 1) % 4), policy)
        """
    )
    result = run("test_shifted.py", "test_project_control.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_after_a_label_shift _*",
            "control check FAILED: pcee 0.9 on 512 held-out inputs",
            "  promise    early accuracy ≥ 0.9 (the criterion's δ)",
            "  held-out   0.*, one-sided 0.95 upper bound 0.*, p = *",
            "  verdict    broken: the held-out data reject early accuracy ≥ 0.9 (p = * < α = 0.05)",
            "",
            "  exit  inputs  share accuracy rel. cost",
            "     0 *",
            "     1 *",
            "     2 *",
            "     3 * 1.000",
            "  early *",
            "   all     512 *(last exit alone: *)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*adaptix: control checks*",
            "test_shifted.py::test_after_a_label_shift: FAILED: pcee 0.9, broken: *",
            "test_project_control.py::test_control: passed: pcee 0.9, holds*",
        ]
    )


# Two bugs a runner could really have: bookkeeping that records an early exit one exit too
# late, and exit deciders left over from an earlier policy (a swap that did not install them).
BUGGY_RUNNERS = """
import adaptix
import pytest


class LateBookkeeping(adaptix.EarlyExitRunner):
    def __call__(self, inputs):
        output = super().__call__(inputs)
        last = self.model.num_exits - 1
        return adaptix.RunnerOutput(output.predictions, (output.exit_index + 1).clamp(max=last))


class StaleDeciders(adaptix.EarlyExitRunner):
    def __init__(self, model, policy):
        super().__init__(model, adaptix.policy("confidence", 0.5))
        self.claimed = policy

    @property
    def policy(self):
        return self.claimed


@pytest.mark.parametrize("runner", [LateBookkeeping, StaleDeciders])
def test_buggy_runner(model, policy, held_out, exit_benchmark, runner):
    inputs, labels = held_out
    exit_benchmark(model, runner(model, policy), inputs, labels=labels, rounds=3)
"""


@pytest.mark.parametrize("timing", ["timed", "--benchmark-disable"])
def test_a_runner_that_disagrees_with_simulate_fails(
    run: Run, project: pytest.Pytester, timing: str
) -> None:
    project.makepyfile(test_buggy=BUGGY_RUNNERS)
    result = run("test_buggy.py", *([timing] if timing.startswith("--") else []))
    result.assert_outcomes(failed=2)
    for bug in ("LateBookkeeping", "StaleDeciders"):
        result.stdout.fnmatch_lines(
            [
                f"*_ test_buggy_runner?{bug}? _*",
                "*AssertionError: the runner disagrees with adaptix.simulate on * of 512 inputs "
                "(pcee 0.9; *",
                "*row runner exit simulated runner pred simulated",
            ]
        )
    result.stdout.no_fnmatch_line("*adaptix: early-exit speed*")


# ------------------------------------------------------------------------- the docs' pytest page


DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "testing.md"
DOCS_SECTION = "# Guarding your early-exit model in CI: the pytest plugin"

# The docs' user: a deep MLP on well-separated clusters, where most rows leave at the first
# exit and exiting pays on CPU (realised 1.9x here), as the docs' test asserts.
DOCS_MODEL = MODEL_TEMPLATE.substitute(width=512, depth=8, spread=2, lr=1e-3, calibration=1024)

# What a user supplies around the docs' test: their own fixtures, by the names it uses.
DOCS_FIXTURES = """
@pytest.fixture(scope="session")
def family():
    return build_family()


@pytest.fixture
def model(family):
    return family[0]


@pytest.fixture
def policy(family):
    return family[1]


@pytest.fixture
def test_inputs(family):
    return family[2][0]


@pytest.fixture
def test_labels(family):
    return family[2][1]


@pytest.fixture
def test_trace(family):
    model, _, (inputs, labels) = family
    return model.trace(inputs, labels)
"""


def docs_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of the docs' pytest-plugin section, in order."""
    section = DOCS_PAGE.read_text(encoding="utf-8").split(DOCS_SECTION, 1)[1].split("\n## ")[0]
    fence = f"```{language}\n"
    return [part.split("```", 1)[0] for part in section.split(fence)[1:]]


def test_the_docs_test_passes_as_written(pytester: pytest.Pytester, storage: Path) -> None:
    """The docs' test (docs/testing.md), copied verbatim, with the user's fixtures around it;
    then the page's two commands: a saved run, and a run compared against it under the ratio
    gate."""
    (test_code,) = docs_blocks("python")
    (commands,) = docs_blocks("bash")
    pytester.makeconftest("import pytest\n" + DOCS_MODEL + DOCS_FIXTURES)
    pytester.makepyfile(test_my_model=test_code)
    runs = [line.split("#")[0].split()[1:] for line in commands.strip().splitlines()]
    assert runs == [["--benchmark-autosave"], ["--benchmark-compare", "--adaptix-ratio-fail=10%"]]
    options = ("-p", "no:cacheprovider", f"--benchmark-storage={storage}")
    first = pytester.runpytest_inprocess(*options, *runs[0])
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(["*adaptix: early-exit speed*", "*adaptix: control checks*"])
    assert len(saved_runs(storage)) == 1
    # The docs' 10 % suits a quiet machine; two shared cores need more room.
    second = pytester.runpytest_inprocess(*options, *(a.replace("10%", "60%") for a in runs[1]))
    second.assert_outcomes(passed=2)
    second.stdout.fnmatch_lines(["*ok: realised/ideal * against *within the 60% allowed*"])
