"""Measure a user's early-exit model against the plain model: paired timing, the ideal speed-up
from FLOPs, and the check that the runner decides as `adaptix.simulate` does.

`ExitBenchmark` is what the pytest fixture ``exit_benchmark`` runs (``adaptix_pytest``), and
what adaptix's own benchmarks run; it also works in a plain script::

    bench = ExitBenchmark(model, policy, inputs, labels=labels, batch_size=64)
    result = bench.run()            # or bench.run(benchmark) inside a pytest-benchmark test
    print(result.table())

How it measures (the same for every caller, so that figures compare):

- **Agreement first.** The model is traced on the inputs (`MultiExitModel.trace`, batched as
  the runner is), `simulate` applies the policy to the trace, and the runner's exit and
  prediction for every row must equal the simulated ones. The runner computes later exits on
  compacted batches, and a different batch composition can move a float32 logit by about 1e-6,
  so a row that differs passes only when the simulation reproduces the runner's exit and
  prediction under a perturbation of the row's logits of at most ``tolerance`` times its
  largest logit (seeded draws): a decision that close to a boundary is float noise. Any other
  difference is an `AssertionError` listing the rows.
- **Paired, interleaved rounds** (`adaptix.online.paired`, which the main job times with
  too). Every timed round of the runner is preceded by a run of the
  baseline (the plain model: every block, then the final head) over the same batches, and the
  last round is followed by one more: round i's realised speed-up is the mean of the baseline
  runs around it over the runner's time, which cancels a load that drifts steadily across the
  round (a shared machine drifts within minutes). The realised speed-up is the median over
  rounds. A round makes as many passes over the inputs as it takes for the faster of the two to
  last 50 ms (a power of two, measured once), so that one pause of the OS scheduler cannot swing
  a small model's ratio. Under pytest-benchmark the runner's rounds are the benchmark's own
  (``pedantic``), so ``--benchmark-autosave``, ``--benchmark-compare`` and
  ``--benchmark-compare-fail`` see the runner's times (a round's: pin ``passes`` to compare
  seconds across runs).
- **Ideal speed-up.** Baseline FLOPs / mean FLOPs of the exits the rows took, intermediate heads
  included (the trace's costs). In lockstep mode ``ideal_speedup_mode`` charges every row up to
  its batch's deepest exit. ``realised_over_ideal`` = realised / ideal: how much of the compute
  saved shows up in wall-clock time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor

from adaptix._version import __version__
from adaptix.core.flops import FlopMeter
from adaptix.core.rows import batch_device, batch_size, take_rows
from adaptix.core.trace import Trace, check_trace
from adaptix.errors import ValidationError
from adaptix.offline.policy import ExitPolicy
from adaptix.offline.simulate import SimulationResult, simulate
from adaptix.online.model import MultiExitModel, profile_from_trace
from adaptix.online.paired import (
    MAX_PASSES,  # noqa: F401  (the round limits, read here as before)
    MAX_ROUND_SECONDS,  # noqa: F401
    MIN_ROUND_SECONDS,  # noqa: F401
    PairedTimes,
    auto_passes,
    time_paired,
)
from adaptix.online.runtime import EarlyExitRunner, RunnerOutput
from adaptix.scalars import count, real

Mode = Literal["compact", "lockstep"]
#: Seeded perturbations tried on a row that disagrees before calling it a real disagreement.
NOISE_DRAWS = 32
#: Disagreeing rows listed in a failure message.
SHOWN_ROWS = 10
#: The default baseline's name.
PLAIN_MODEL = "the plain model"
#: A given trace's logits of the first batch must match the model's own to this share of the
#: row's largest logit (at least 1): far above float noise, far below another model's logits.
TRACE_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Agreement:
    """The runner's decisions against `simulate` on the same inputs.

    Attributes:
        inputs: rows compared.
        exact: rows whose exit and prediction equal the simulated ones.
        within_noise: rows that differ, but whose decision the simulation reproduces with the
            row's logits moved by at most ``tolerance`` × its largest logit.
        disagreeing: indices of the other rows (empty when the runner agrees).
        tolerance: the relative perturbation allowed.
    """

    inputs: int
    exact: int
    within_noise: int
    disagreeing: tuple[int, ...]
    tolerance: float

    @property
    def ok(self) -> bool:
        """True when every row agrees, exactly or within float noise."""
        return not self.disagreeing


@dataclass(frozen=True)
class SpeedResult:
    """What `ExitBenchmark.run` measured.

    Attributes:
        policy: the policy, in words.
        mode: the runner's mode.
        batch_size: rows per call.
        inputs: rows timed per round.
        exit_histogram: rows that left at each exit.
        early_exit_rate: share of rows that left before the last exit.
        ideal_speedup: baseline FLOPs / mean FLOPs of the exits taken.
        ideal_speedup_mode: the same with the mode's cost (lockstep: every row up to its batch's
            deepest exit); equals ``ideal_speedup`` in compact mode.
        realised_speedup: median over rounds of time(baseline) / time(runner); None when timing
            is disabled (``--benchmark-disable``).
        realised_over_ideal: realised / ideal; None with ``realised_speedup``.
        baseline_seconds: median seconds of one baseline pass over the inputs (None: not timed).
        runner_seconds: median seconds of one runner pass over them (None: not timed).
        rounds: timed rounds (0: not timed).
        passes: passes over the inputs in every round (pytest-benchmark's times are per round).
        accuracy: the runner's accuracy, if labels were given.
        baseline_accuracy: the plain model's (last exit's) accuracy, if labels were given and
            the baseline is the plain model.
        agreement: the runner against `simulate`.
        baseline: what the speed-up is measured against.
    """

    policy: str
    mode: Mode
    batch_size: int
    inputs: int
    exit_histogram: tuple[int, ...]
    early_exit_rate: float
    ideal_speedup: float
    ideal_speedup_mode: float
    realised_speedup: float | None
    realised_over_ideal: float | None
    baseline_seconds: float | None
    runner_seconds: float | None
    rounds: int
    passes: int
    accuracy: float | None
    baseline_accuracy: float | None
    agreement: Agreement
    baseline: str

    def extra_info(self) -> dict[str, Any]:
        """JSON-ready figures for pytest-benchmark's ``extra_info`` (saved with every run, read
        back by the ratio gate)."""
        info: dict[str, Any] = {
            "adaptix_version": __version__,
            "policy": self.policy,
            "mode": self.mode,
            "batch_size": self.batch_size,
            "inputs": self.inputs,
            "baseline": self.baseline,
            "exit_histogram": list(self.exit_histogram),
            "early_exit_rate": self.early_exit_rate,
            "ideal_speedup": self.ideal_speedup,
            "ideal_speedup_mode": self.ideal_speedup_mode,
            "agreement_exact": self.agreement.exact,
            "agreement_within_noise": self.agreement.within_noise,
        }
        optional = {
            "realised_speedup": self.realised_speedup,
            "realised_over_ideal": self.realised_over_ideal,
            "baseline_seconds": self.baseline_seconds,
            "runner_seconds": self.runner_seconds,
            "accuracy": self.accuracy,
            "baseline_accuracy": self.baseline_accuracy,
        }
        info.update({key: value for key, value in optional.items() if value is not None})
        if self.rounds:
            info["rounds"] = self.rounds
            info["passes_per_round"] = self.passes
        return info

    def table(self) -> str:
        """The figures, one per line."""
        shares = ", ".join(
            f"{count / self.inputs:.1%}" if self.inputs else "0" for count in self.exit_histogram
        )
        lines = [
            f"policy            {self.policy} ({self.mode}, batch {self.batch_size}, "
            f"{self.inputs} inputs)",
            f"exits             {shares} (early {self.early_exit_rate:.1%})",
            f"ideal speed-up    {self.ideal_speedup:.2f}x (FLOPs, against {self.baseline})",
        ]
        if self.mode == "lockstep":
            lines.append(f"ideal (lockstep)  {self.ideal_speedup_mode:.2f}x")
        if self.realised_speedup is not None and self.realised_over_ideal is not None:
            lines.append(
                f"realised speed-up {self.realised_speedup:.2f}x (median of {self.rounds} "
                f"paired rounds; realised/ideal {self.realised_over_ideal:.2f})"
            )
        else:
            lines.append("realised speed-up not timed (benchmarks disabled)")
        if self.accuracy is not None:
            plain = self.baseline_accuracy
            plain_text = "" if plain is None else f", plain {plain:.4f}"
            lines.append(f"accuracy          {self.accuracy:.4f}{plain_text}")
        noise = self.agreement.within_noise
        lines.append(
            f"agreement         {self.agreement.exact}/{self.agreement.inputs} exact"
            + (f", {noise} within float noise" if noise else "")
        )
        return "\n".join(lines)


class ExitBenchmark:
    """The runner against the plain model on one set of inputs (see the module docstring).

    Args:
        model: the multi-exit model, in eval mode.
        policy: an `ExitPolicy`, or an `EarlyExitRunner` already built for ``model`` (to
            measure a runner with a monitor, another backend or ``check_finite=False``).
        inputs: ``N`` rows: a tensor or a dict/tuple of tensors, on the model's device.
        labels: int64 ``[N]``, for accuracy (optional).
        batch_size: rows per call, for the runner and the baseline alike.
        mode: the runner's mode when ``policy`` is a policy (default ``"compact"``); a runner
            keeps its own.
        baseline: what the speed-up is measured against: a callable taking a batch (default:
            ``model.forward_plain``, every block then the final head). A smaller model to
            compare against goes here.
        baseline_flops: FLOPs per input of ``baseline`` (default: the plain model's, from the
            trace; for another baseline, counted on its first batch).
        baseline_name: the baseline in words, for tables and ``extra_info`` (default: "the
            plain model", or the callable's name).
        trace: the trace of exactly these inputs at this batch size, if you already have one
            (default: ``model.trace(inputs, labels, batch_size)``).
        rounds: timed rounds.
        warmup_rounds: untimed rounds first.
        passes: passes over the inputs in every round (default: the power of two that makes a
            round of the faster of baseline and runner last at least `MIN_ROUND_SECONDS`,
            measured once, as long as the slower stays within `MAX_ROUND_SECONDS`; 1 for any
            model slower than that). pytest-benchmark saves the time
            of a round, so pin ``passes`` when you compare seconds across runs
            (``--benchmark-compare-fail``); the speed-ups are per pass either way.
        tolerance: the relative logit perturbation under which a differing decision still
            counts as agreement (raise it for TF32 or half precision).

    Raises:
        ValidationError: a model that is not a `MultiExitModel` or is in training mode, empty
            or ragged inputs, labels of the wrong shape, a runner built for another model, or
            a bad batch size, rounds or tolerance.
    """

    def __init__(
        self,
        model: MultiExitModel,
        policy: ExitPolicy | EarlyExitRunner,
        inputs: Any,
        *,
        labels: Tensor | None = None,
        batch_size: int = 64,
        mode: Mode | None = None,
        baseline: Callable[[Any], object] | None = None,
        baseline_flops: float | None = None,
        baseline_name: str | None = None,
        trace: Trace | None = None,
        rounds: int = 5,
        warmup_rounds: int = 1,
        passes: int | None = None,
        tolerance: float = 1e-4,
    ) -> None:
        if not isinstance(model, MultiExitModel):
            raise ValidationError(
                f"expected an adaptix.MultiExitModel, got {type(model).__name__}."
            )
        if model.training:
            raise ValidationError(
                "expected the model in eval mode, got it in training mode (dropout and batch "
                "norm would make every pass differ). Call model.eval() first."
            )
        batch_size = count(batch_size, "batch_size", low=1)
        rounds = count(rounds, "rounds", low=1)
        warmup_rounds = count(warmup_rounds, "warmup_rounds")
        if passes is not None:
            passes = count(passes, "passes", low=1)
        tolerance = real(tolerance, "tolerance", low=0.0, high=1.0, open_high=True)
        if isinstance(policy, EarlyExitRunner):
            if policy.model is not model:
                raise ValidationError(
                    "expected an EarlyExitRunner built for this model, got one for another model."
                )
            monitor = policy.monitor
            if monitor is not None and monitor.audit > 0:
                raise ValidationError(
                    "expected a runner whose monitor audits no rows (audit=0), got audit="
                    f"{monitor.audit:g}: audited rows go to the last exit by design, so its exits "
                    "cannot equal simulate's. Benchmark the audit's cost separately."
                )
            if mode is not None and mode != policy.mode:
                raise ValidationError(
                    f"expected no mode, or the runner's own ({policy.mode!r}), got {mode!r}: a "
                    "runner keeps the mode it was built with."
                )
            self.runner = policy
        elif isinstance(policy, ExitPolicy):
            self.runner = EarlyExitRunner(model, policy, mode=mode or "compact")
        else:
            raise ValidationError(
                "expected an adaptix.ExitPolicy or an adaptix.EarlyExitRunner, got "
                f"{type(policy).__name__}."
            )
        if baseline is not None and not callable(baseline):
            raise ValidationError(f"expected a callable baseline, got {type(baseline).__name__}.")
        if baseline_flops is not None:
            baseline_flops = real(baseline_flops, "baseline_flops", low=0.0, open_low=True)
        n = batch_size_of(inputs)
        if labels is not None and (
            not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != n
        ):
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValidationError(f"expected labels of shape [{n}], got {shape}.")
        self.model = model
        self.inputs = inputs
        self.labels = labels
        self.batch_size = batch_size
        self.batches = [
            take_rows(inputs, slice(start, start + batch_size)) for start in range(0, n, batch_size)
        ]
        if trace is not None:
            _check_given_trace(trace, model, self.batches[0], n, labels)
        self.baseline = baseline if baseline is not None else model.forward_plain
        if baseline_name is not None and not isinstance(baseline_name, str):
            raise ValidationError(f"expected a str baseline_name, got {baseline_name!r}.")
        if baseline_name is None:
            baseline_name = PLAIN_MODEL if baseline is None else _name(baseline)
        if not baseline_name.strip():
            raise ValidationError("expected a non-empty baseline_name.")
        self.baseline_name = baseline_name
        self._baseline_flops = baseline_flops
        self._trace = trace
        self.rounds = rounds
        self.warmup_rounds = warmup_rounds
        self.passes = passes
        self.tolerance = tolerance
        self._device = batch_device(inputs)

    @property
    def policy(self) -> ExitPolicy:
        """The runner's policy."""
        return self.runner.policy

    @property
    def trace(self) -> Trace:
        """The trace of the inputs (made on first use)."""
        if self._trace is None:
            self._trace = self.model.trace(self.inputs, self.labels, batch_size=self.batch_size)
        return self._trace

    # ------------------------------------------------------------------------------ agreement

    def run_runner(self) -> list[RunnerOutput]:
        """One pass of the runner over the batches (synchronised on CUDA)."""
        with torch.inference_mode():
            outputs = [self.runner(b) for b in self.batches]
        _synchronize(self._device)
        return outputs

    def run_baseline(self) -> list[object]:
        """One pass of the baseline over the batches (synchronised on CUDA)."""
        with torch.inference_mode():
            outputs = [self.baseline(b) for b in self.batches]
        _synchronize(self._device)
        return outputs

    def check(self) -> tuple[Agreement, SimulationResult, RunnerOutput]:
        """Run the runner once and compare its decisions with `simulate` on the trace.

        Returns:
            The agreement, the simulation and the runner's outputs concatenated.

        Raises:
            AssertionError: rows whose decision differs beyond float noise (listed).
        """
        simulated = simulate(self.trace, self.policy)
        outputs = self.run_runner()
        ran = RunnerOutput(
            predictions=torch.cat([o.predictions for o in outputs]),
            exit_index=torch.cat([o.exit_index for o in outputs]),
        )
        agreement = agree(self.trace, self.policy, simulated, ran, self.tolerance)
        if not agreement.ok:
            raise AssertionError(_disagreement_message(agreement, simulated, ran, self.policy))
        return agreement, simulated, ran

    # --------------------------------------------------------------------------------- timing

    def run(self, benchmark: Any = None) -> SpeedResult:
        """Check agreement, then time paired rounds and return the figures.

        Args:
            benchmark: pytest-benchmark's ``benchmark`` fixture: the runner's rounds are then
                its rounds (saved, compared and gated by pytest-benchmark), and the figures go
                to its ``extra_info``. None times with `time.perf_counter`.
        """
        agreement, _, ran = self.check()
        self._baseline_flops_per_input()  # fails before timing when they cannot be counted
        disabled = benchmark is not None and bool(getattr(benchmark, "disabled", False))
        passes = 1 if disabled else self.passes or self._auto_passes()
        times = time_paired(
            self.run_baseline,
            self.run_runner,
            rounds=self.rounds,
            warmup_rounds=self.warmup_rounds,
            passes=passes,
            clock=_clock,
            timer=None if benchmark is None else partial(self._benchmark_rounds, benchmark),
        )
        result = self._result(agreement, ran, times)
        if benchmark is not None:
            benchmark.extra_info.update(result.extra_info())
        return result

    def _auto_passes(self) -> int:
        """Passes per round (`adaptix.online.paired.auto_passes`)."""
        return auto_passes(self.run_baseline, self.run_runner, clock=_clock)

    def _benchmark_rounds(
        self, benchmark: Any, run_runner: Callable[[], None], before: Callable[[], None]
    ) -> list[float]:
        """Seconds of each timed round of ``run_runner`` as pytest-benchmark's own rounds
        (``pedantic``), each preceded by ``before``; [] when benchmarking is disabled."""
        benchmark.pedantic(
            run_runner,
            setup=before,
            rounds=self.rounds,
            warmup_rounds=self.warmup_rounds,
            iterations=1,
        )
        stats = getattr(benchmark, "stats", None)
        if getattr(benchmark, "disabled", False) or stats is None:
            return []
        return [float(t) for t in stats.stats.data]

    def _result(
        self,
        agreement: Agreement,
        ran: RunnerOutput,
        times: PairedTimes,
    ) -> SpeedResult:
        trace = self.trace
        costs = trace.costs.double().cpu()
        exits = ran.exit_index.cpu()
        flops = self._baseline_flops_per_input()
        ideal = flops / float(costs[exits].mean())
        ideal_mode = ideal
        if self.runner.mode == "lockstep":
            ideal_mode = flops / lockstep_mean_cost(costs, exits, self.batch_size)
        accuracy = baseline_accuracy = None
        if self.labels is not None:
            labels = self.labels.to(ran.predictions.device)
            accuracy = float((ran.predictions == labels).double().mean())
            if self.baseline == self.model.forward_plain:
                last = trace.logits[:, -1].argmax(dim=-1)
                baseline_accuracy = float((last == labels.to(last.device)).double().mean())
        histogram = torch.bincount(exits, minlength=trace.num_exits)
        return SpeedResult(
            policy=describe(self.policy),
            mode=self.runner.mode,
            batch_size=self.batch_size,
            inputs=trace.num_inputs,
            exit_histogram=tuple(int(c) for c in histogram),
            early_exit_rate=1 - int(histogram[-1]) / trace.num_inputs,
            ideal_speedup=ideal,
            ideal_speedup_mode=ideal_mode,
            realised_speedup=times.realised_speedup,
            realised_over_ideal=(
                None if times.realised_speedup is None else times.realised_speedup / ideal
            ),
            baseline_seconds=times.baseline_seconds,
            runner_seconds=times.runner_seconds,
            rounds=times.rounds,
            passes=times.passes,
            accuracy=accuracy,
            baseline_accuracy=baseline_accuracy,
            agreement=agreement,
            baseline=self.baseline_name,
        )

    def _baseline_flops_per_input(self) -> float:
        if self._baseline_flops is not None:
            return float(self._baseline_flops)
        if self.baseline == self.model.forward_plain:
            return profile_from_trace(self.trace).plain_cost
        first = self.batches[0]
        meter = FlopMeter()
        with torch.inference_mode(), meter:
            self.baseline(first)
        if meter.total <= 0:
            raise ValidationError(
                f"counted no FLOPs in the baseline {self.baseline_name}; pass baseline_flops= "
                "(FLOPs per input) to compare against it."
            )
        self._baseline_flops = meter.total / batch_size(first)
        return self._baseline_flops


# ------------------------------------------------------------------------------------ helpers


def agree(
    trace: Trace,
    policy: ExitPolicy,
    simulated: SimulationResult,
    ran: RunnerOutput,
    tolerance: float,
    draws: int = NOISE_DRAWS,
) -> Agreement:
    """Compare the runner's decisions with the simulated ones, forgiving float noise (see the
    module docstring)."""
    exits, predictions = ran.exit_index.to(simulated.exit_index.device), ran.predictions
    predictions = predictions.to(simulated.predictions.device)
    same = (exits == simulated.exit_index) & (predictions == simulated.predictions)
    differing = (~same).nonzero().squeeze(1)
    explained = torch.zeros(differing.numel(), dtype=torch.bool, device=differing.device)
    if differing.numel() and tolerance > 0:
        logits = trace.logits[differing].double()
        scale = logits.abs().amax(dim=-1, keepdim=True).clamp_min(1.0) * tolerance
        generator = torch.Generator(device=logits.device).manual_seed(0)
        for _ in range(draws):
            noise = torch.rand(logits.shape, generator=generator, device=logits.device) * 2 - 1
            moved = Trace((logits + noise * scale).to(trace.logits.dtype), None, trace.costs)
            again = simulate(moved, policy)
            explained |= (again.exit_index == exits[differing]) & (
                again.predictions == predictions[differing]
            )
            if bool(explained.all()):
                break
    return Agreement(
        inputs=trace.num_inputs,
        exact=int(same.sum()),
        within_noise=int(explained.sum()),
        disagreeing=tuple(int(i) for i in differing[~explained].tolist()),
        tolerance=tolerance,
    )


def lockstep_mean_cost(costs: Tensor, exit_index: Tensor, batch: int) -> float:
    """Mean cost per input in lockstep mode, where a batch of ``batch`` consecutive inputs runs
    every block and head up to its deepest exit for all its rows."""
    deepest = torch.cat([chunk.max().expand(len(chunk)) for chunk in exit_index.split(batch)])
    return float(costs[deepest].double().mean())


def describe(policy: ExitPolicy) -> str:
    """A policy in words: criterion and threshold (and certification)."""
    if not policy.exits_early:
        text = f"{policy.name} (no early exit)"
    else:
        text = f"{policy.name} {policy.threshold:g}"
    certificate = policy.certificate
    if certificate is not None:
        text += " (certified)" if certificate.certified else " (uncertified)"
    return text


def batch_size_of(inputs: Any) -> int:
    """The number of rows of ``inputs``, which must be at least one."""
    n = batch_size(inputs)
    if n < 1:
        raise ValidationError("expected at least one input row, got an empty batch.")
    return n


def _disagreement_message(
    agreement: Agreement, simulated: SimulationResult, ran: RunnerOutput, policy: ExitPolicy
) -> str:
    rows = agreement.disagreeing
    lines = [
        f"the runner disagrees with adaptix.simulate on {len(rows)} of {agreement.inputs} inputs "
        f"({describe(policy)}; differences within {agreement.tolerance:g} of a row's largest "
        "logit are forgiven as float noise):",
        f"{'row':>7} {'runner exit':>11} {'simulated':>9} {'runner pred':>11} {'simulated':>9}",
    ]
    for row in rows[:SHOWN_ROWS]:
        lines.append(
            f"{row:>7} {int(ran.exit_index[row]):>11} {int(simulated.exit_index[row]):>9} "
            f"{int(ran.predictions[row]):>11} {int(simulated.predictions[row]):>9}"
        )
    if len(rows) > SHOWN_ROWS:
        lines.append(f"... and {len(rows) - SHOWN_ROWS} more")
    return "\n".join(lines)


def _check_given_trace(
    trace: object, model: MultiExitModel, first: Any, n: int, labels: Tensor | None
) -> None:
    """Refuse a ``trace=`` that is not the trace of these inputs through this model, naming
    what differs: its rows, exits, classes, labels, or the logits of the first batch (run once
    here, so that the benchmark never compares the runner with another model's decisions)."""
    fix = (
        "Pass the trace of these very inputs through this model "
        "(model.trace(inputs, labels, batch_size=batch_size)), or leave trace= out."
    )
    trace = check_trace(trace, "trace=")
    if trace.num_inputs != n:
        raise ValidationError(
            f"expected the trace of these {n} inputs, got {trace.num_inputs} inputs. {fix}"
        )
    if trace.num_exits != model.num_exits:
        raise ValidationError(
            f"expected the trace of this model's {model.num_exits} exits, got a trace of "
            f"{trace.num_exits} exits (a trace of another model). {fix}"
        )
    if labels is not None:
        if trace.labels is None:
            raise ValidationError(
                f"expected a trace with the labels given (labels=), got an unlabelled trace. {fix}"
            )
        differ = (trace.labels.cpu() != labels.cpu()).nonzero().flatten().tolist()
        if differ:
            raise ValidationError(
                f"expected a trace with the labels given (labels=), got one whose labels differ "
                f"at {len(differ)} rows (first {differ[:SHOWN_ROWS]}). {fix}"
            )
    with torch.inference_mode():
        logits = torch.stack(model(first), dim=1).float().cpu()
    classes = int(logits.shape[-1])
    if trace.num_classes != classes:
        raise ValidationError(
            f"expected the trace of this model's {classes} classes, got a trace of "
            f"{trace.num_classes} classes (a trace of another model). {fix}"
        )
    given = trace.logits[: logits.shape[0]].float().cpu()
    scale = given.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
    far = ((logits - given).abs() > TRACE_TOLERANCE * scale).any(dim=-1).any(dim=-1)
    rows = far.nonzero().flatten().tolist()
    if rows:
        raise ValidationError(
            f"expected the trace of these inputs through this model, got one whose logits "
            f"differ from the model's at {len(rows)} of the first {len(far)} rows (first "
            f"{rows[:SHOWN_ROWS]}), beyond float noise: a trace of another model, of other "
            f"inputs, or of this model before it changed. {fix}"
        )


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock() -> float:
    """`time.perf_counter`, read through this module's ``time`` at each call."""
    return time.perf_counter()


__all__: Sequence[str] = [
    "Agreement",
    "ExitBenchmark",
    "SpeedResult",
    "agree",
    "describe",
    "lockstep_mean_cost",
]
