"""The shift-monitor study (``adaptix shift-study``): evidence that the control holds when the
data moves, or that the monitor says it does not.

On the job's runtime model it traces the calibration split, the test split and the test split
under synthetic shifts (`adaptix.experiment.shifts`: Gaussian noise, contrast and rotation at
several severities, on images; a class-prior shift by resampling, on any data), serves the
deployed policy (the job's criterion at δ, calibrated on the calibration split) and measures:

1. **False alarms.** Streams where nothing shifts: the reference and the stream are both i.i.d.
   draws (with replacement) from the clean test split, the null of `adaptix.ShiftTest` exactly;
   the reference has as many inputs as the calibration split. The share of streams on which the
   monitor ever alarms, checked every ``check_inputs`` inputs, must stay ≤ α.
2. **Detection delay.** Streams drawn from each shifted split against the real reference (the
   calibration split, what `ShiftMonitor(policy, calibration_trace)` uses): inputs until the
   alarm, median over the streams (streams with no alarm within ``delay_length`` count as
   longer than it).
3. **Early accuracy under shift**, on held-out rows of the shifted split (repeated
   ``repeats`` times): the deployed policy as it is; recalibrated from ``n`` labelled shifted
   inputs (`ShiftMonitor.observe` + `ShiftMonitor.recalibrated_policy`, same criterion and δ);
   re-certified from them (`ShiftMonitor.recertify` with the confidence criterion at level α:
   the guarantee); and recalibrated label-free from ``proxy_size`` audited inputs, proxy-labelled
   by the last exit (`ShiftMonitor.observe(..., proxy=True)`). A *miss* is early accuracy below
   δ by more than the evaluation rows' own sampling noise (as `adaptix.experiment.study`).

Every stream statistic is the monitor's own (`ShiftTest` and `combine` on the counts the runner
would produce: the tests check that runner and simulation count the same).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from adaptix.core.trace import Trace
from adaptix.errors import ValidationError
from adaptix.experiment.report import markdown_table
from adaptix.offline.calibrate import calibrate
from adaptix.offline.certificate import CertificateWarning
from adaptix.offline.policy import ExitPolicy, policy
from adaptix.offline.simulate import simulate
from adaptix.online.monitor import ShiftMonitor, ShiftTest, confidence_bins, evidence_path
from adaptix.plugins import AdaptixPluginManager, resolve_manager
from adaptix.scalars import count, integer, real, unit

if TYPE_CHECKING:
    from adaptix.tracking import Tracker

#: one-sided 95 % normal quantile: the sampling-noise allowance of a miss and of α's band
_Z = 1.645


@dataclass(frozen=True)
class ShiftedSplit:
    """The test split under one shift: its trace, and sampling weights per row for a label
    shift (None: uniform)."""

    kind: str
    severity: float
    trace: Trace
    weights: Tensor | None = None


@dataclass(frozen=True)
class StudySettings:
    """What the study runs (defaults: the issue's).

    Attributes:
        criterion: the deployed policy's criterion (it must read a calibration).
        delta: its target δ.
        alpha: the monitor's false-alarm level and the guarantee's level.
        streams: streams per null and per shifted split.
        null_length: inputs per unshifted stream.
        delay_length: inputs per shifted stream (the longest delay measured).
        check_inputs: inputs between two checks of the monitor (a batch of 64, checked after
            every batch: the most checks, the hardest case for false alarms).
        feedback: labelled recalibration sizes.
        proxy_size: audited inputs for the label-free recalibration.
        repeats: draws of feedback and evaluation rows per shifted split.
        concentration: the monitor's κ.
        restart_every: the monitor's test segments, in inputs (None: one segment).
        seed: everything random derives from it.
    """

    criterion: str = "pcee"
    delta: float = 0.9
    alpha: float = 0.05
    streams: int = 200
    null_length: int = 50_000
    delay_length: int = 20_000
    check_inputs: int = 64
    feedback: tuple[int, ...] = (250, 500, 1000)
    proxy_size: int = 1000
    repeats: int = 100
    concentration: float = 100.0
    restart_every: int | None = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        """Check every setting (`adaptix.scalars`: no bool as a number, no string coerced,
        nothing non-finite) when the settings are made, before any data is loaded."""
        checked: dict[str, Any] = {
            "criterion": self.criterion,
            "delta": unit(self.delta, "delta"),
            "alpha": unit(self.alpha, "alpha"),
            "concentration": real(self.concentration, "concentration", low=0.0),
            "seed": integer(self.seed, "seed", low=0, high=2**63 - 1),
        }
        if not isinstance(self.criterion, str) or not self.criterion:
            raise ValidationError(f"expected criterion as a name, got {self.criterion!r}.")
        for key in ("streams", "null_length", "delay_length", "check_inputs", "proxy_size"):
            checked[key] = count(getattr(self, key), key, low=1)
        checked["repeats"] = count(self.repeats, "repeats", low=1)
        checked["restart_every"] = (
            None
            if self.restart_every is None
            else count(self.restart_every, "restart_every", low=1)
        )
        feedback = self.feedback
        if isinstance(feedback, (str, bytes)) or not isinstance(feedback, (tuple, list)):
            raise ValidationError(
                f"expected feedback as a tuple of sizes, got {type(feedback).__name__}."
            )
        if not feedback:
            raise ValidationError("expected feedback as at least one size >= 1, got none.")
        checked["feedback"] = tuple(count(size, "feedback", low=1) for size in feedback)
        shortest = min(checked["null_length"], checked["delay_length"])
        if shortest < checked["check_inputs"]:
            raise ValidationError(
                f"expected null_length and delay_length >= check_inputs = "
                f"{checked['check_inputs']} (got {self.null_length}, {self.delay_length})."
            )
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    def check_criterion(self, plugins: AdaptixPluginManager | None = None) -> None:
        """Refuse a criterion that is unknown, reads no calibration (the study recalibrates
        it), or does not take δ as its threshold: before any data loads.

        Raises:
            PluginError: an unknown criterion.
            ValidationError: a criterion the study cannot deploy.
        """
        entry = resolve_manager(plugins).criteria.get(self.criterion)
        if not entry.needs_calibration:
            raise ValidationError(
                f"expected a criterion that reads a calibration (the study recalibrates it "
                f"under shift), got {self.criterion!r}. Use e.g. 'pcee'."
            )
        entry.validate_threshold(self.delta)


@dataclass(frozen=True)
class Recalibrated:
    """Early accuracy of one way of serving a shifted split, over the repeats."""

    mode: str
    mean_early_accuracy: float
    miss_rate: float
    mean_early_exit_rate: float


@dataclass(frozen=True)
class ShiftCell:
    """One shift at one severity."""

    kind: str
    severity: float
    early_accuracy: float  # the deployed policy on the whole shifted split
    early_exit_rate: float
    median_delay: float  # inputs; inf when most streams never alarmed
    detected: float  # share of streams that alarmed within delay_length
    modes: tuple[Recalibrated, ...]

    def mode(self, name: str) -> Recalibrated:
        """The `Recalibrated` row called ``name``."""
        return next(m for m in self.modes if m.mode == name)


@dataclass
class ShiftStudyResult:
    """What `run_shift_study` measured."""

    settings: StudySettings
    clean_early_accuracy: float
    false_alarms: int
    null_peak_margin: list[float]  # per unshifted stream: max of log E − alarm line
    cells: list[ShiftCell]
    paths: dict[str, list[list[float]]] = field(default_factory=dict)  # plotted trajectories

    @property
    def false_alarm_rate(self) -> float:
        """Share of unshifted streams that ever alarmed."""
        return self.false_alarms / self.settings.streams

    @property
    def alarm_band(self) -> float:
        """α plus the noise of the number of streams (one-sided 95 %)."""
        a, s = self.settings.alpha, self.settings.streams
        return a + _Z * math.sqrt(a * (1 - a) / s)

    def targets(self) -> list[tuple[str, str, bool]]:
        """The issue's targets: (target, measured, met)."""
        st = self.settings
        rows = [
            (
                f"false alarms ≤ α = {st.alpha} over {st.streams} unshifted streams of "
                f"{st.null_length:,} inputs",
                f"{self.false_alarms}/{st.streams} = {self.false_alarm_rate:.3f}",
                self.false_alarm_rate <= st.alpha,
            )
        ]
        harmful = [c for c in self.cells if c.early_accuracy <= st.delta - 0.02]
        slow = [c for c in harmful if not c.median_delay <= 2000]
        rows.append(
            (
                "a shift pushing early accuracy ≥ 2 points below δ is detected within 2,000 "
                "inputs (median)",
                f"{len(harmful) - len(slow)}/{len(harmful)} such shifts; slowest median "
                f"{max((c.median_delay for c in harmful), default=0):.0f} inputs",
                not slow,
            )
        )
        big = max(st.feedback)
        name = f"guarantee n={big}"
        worst = max((c.mode(name).miss_rate for c in self.cells), default=0.0)
        band = st.alpha + _Z * math.sqrt(st.alpha * (1 - st.alpha) / st.repeats)
        rows.append(
            (
                f"after labelled recalibration with {big:,} inputs, misses of δ within the "
                f"guarantee's level α = {st.alpha} (up to {st.repeats} repeats' noise: "
                f"{band:.3f})",
                f"worst miss rate over the shifts {worst:.3f}",
                worst <= band,
            )
        )
        return rows

    def to_markdown(self) -> str:
        """The study's tables."""
        st = self.settings
        lines = [
            f"# Shift-monitor study: {st.criterion} at δ = {st.delta}, α = {st.alpha}",
            "",
            f"Clean test split: early accuracy {self.clean_early_accuracy:.4f}. Monitor checked "
            f"every {st.check_inputs} inputs; κ = {st.concentration}.",
            "",
            "## Targets",
            "",
            markdown_table(
                ["target", "measured", "met"],
                [[t, m, "yes" if ok else "NO"] for t, m, ok in self.targets()],
            ),
        ]
        quantiles = torch.tensor(self.null_peak_margin).quantile(
            torch.tensor([0.5, 0.95, 1.0], dtype=torch.float64).float()
        )
        lines += [
            "",
            "## False alarms (nothing shifts)",
            "",
            f"{self.false_alarms} of {st.streams} streams of {st.null_length:,} inputs alarmed "
            f"(rate {self.false_alarm_rate:.3f}; α = {st.alpha}, α + noise of {st.streams} "
            f"streams = {self.alarm_band:.3f}). The closest each stream came to an alarm "
            f"(log E minus the alarm line, an alarm at ≥ 0): median {quantiles[0]:.1f}, 95th "
            f"percentile {quantiles[1]:.1f}, max {quantiles[2]:.1f}. The test restarts every "
            f"{st.restart_every or 'never'} inputs; segment j alarms at log(π² j² / (6α)).",
            "",
            "## Detection and early accuracy under shift",
            "",
            "Early accuracy: mean over repeats on held-out shifted rows (miss rate in brackets: "
            f"early accuracy below δ beyond sampling noise). Delay: median inputs to the alarm "
            f"over {st.streams} streams (> {st.delay_length:,}: most never alarmed).",
            "",
        ]
        names = [m.mode for m in self.cells[0].modes] if self.cells else []
        header = ["shift", "severity", "early acc (pop.)", "delay", "detected", *names]
        rows = []
        for c in self.cells:
            delay = (
                f"{c.median_delay:,.0f}"
                if math.isfinite(c.median_delay)
                else f"> {st.delay_length:,}"
            )
            rows.append(
                [
                    c.kind,
                    f"{c.severity:g}",
                    f"{c.early_accuracy:.4f}",
                    delay,
                    f"{c.detected:.2f}",
                    *(_mode_cell(m) for m in c.modes),
                ]
            )
        lines.append(markdown_table(header, rows))
        lines += [
            "",
            "Modes: *none* serves the deployed policy; *recal n* recalibrates it on n labelled "
            "shifted inputs (same criterion and δ); *guarantee n* re-certifies the confidence "
            f"criterion at level α on them; *proxy* recalibrates on {st.proxy_size:,} audited "
            "inputs labelled by the last exit (it estimates agreement with the last exit, "
            "not accuracy).",
        ]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "settings": asdict(self.settings),
            "clean_early_accuracy": self.clean_early_accuracy,
            "false_alarms": self.false_alarms,
            "false_alarm_rate": self.false_alarm_rate,
            "null_peak_margin": self.null_peak_margin,
            "cells": [
                {**asdict(c), "median_delay": _finite_or_none(c.median_delay)} for c in self.cells
            ],
            "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in self.targets()],
        }

    def write(self, out: str | Path) -> list[Path]:
        """Write the tables (markdown, JSON) into ``out``; the paths written. The figures are
        `adaptix.experiment.shift_plots.write_plots`."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        markdown = folder / "shift-study.md"
        markdown.write_text(self.to_markdown())
        document = folder / "shift-study.json"
        document.write_text(json.dumps(_json_ready(self.to_dict()), indent=1, allow_nan=False))
        return [markdown, document]


def _mode_cell(mode: Recalibrated) -> str:
    """Mean early accuracy (miss rate); "no early exit" when no repeat let any input leave."""
    if not math.isfinite(mode.mean_early_accuracy):
        return f"no early exit ({mode.miss_rate:.2f})"
    return f"{mode.mean_early_accuracy:.4f} ({mode.miss_rate:.2f})"


def _json_ready(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return value


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _stream_evidence(
    tests: tuple[ShiftTest, ShiftTest],
    bins: Tensor,
    exits: Tensor,
    st: StudySettings,
    num_bins: int,
    num_exits: int,
) -> Tensor:
    """log E minus the alarm line after every ``check_inputs`` inputs of a stream whose inputs
    have exit-0 bins ``bins`` and exits ``exits`` (``[L]`` each), as the monitor computes it
    (`adaptix.core.evalues.evidence_path`): an alarm where it is ≥ 0."""
    at = slice(st.check_inputs - 1, None, st.check_inputs)
    bin_counts = torch.nn.functional.one_hot(bins, num_bins).cumsum(0)[at]
    exit_counts = torch.nn.functional.one_hot(exits, num_exits).cumsum(0)[at]
    log_e, line = evidence_path(
        tests,
        bin_counts,
        exit_counts,
        alpha=st.alpha,
        check_inputs=st.check_inputs,
        restart_every=st.restart_every,
    )
    return log_e - line


def _first_alarm(margin: Tensor, check: int) -> float:
    hits = (margin >= 0).nonzero(as_tuple=True)[0]
    return float((int(hits[0]) + 1) * check) if hits.numel() else math.inf


def _weighted_early(
    result_exits: Tensor, correct: Tensor, rows: Tensor, weights: Tensor | None, last: int
) -> tuple[float, float, int]:
    """Early accuracy, early-exit rate and the count of early rows among ``rows``."""
    early = result_exits[rows] < last
    w = torch.ones(rows.numel(), dtype=torch.float64) if weights is None else weights[rows]
    early_weight = float((w * early).sum())
    rate = early_weight / float(w.sum())
    if early_weight == 0:
        return math.nan, rate, 0
    accuracy = float((w * early * correct[rows]).sum()) / early_weight
    return accuracy, rate, int(early.sum())


def run_shift_study(
    calibration: Trace,
    test: Trace,
    shifted: list[ShiftedSplit],
    settings: StudySettings | None = None,
    *,
    progress: bool = True,
) -> ShiftStudyResult:
    """Run the study (module docstring) on labelled traces of one model.

    Raises:
        ValidationError: unlabelled traces, traces of different models, or settings out of
            range.
    """
    st = settings or StudySettings()
    for trace in (calibration, test, *(s.trace for s in shifted)):
        if trace.labels is None:
            raise ValidationError("expected labelled traces for the shift study, got unlabelled.")
        if (trace.num_exits, trace.num_classes) != (calibration.num_exits, calibration.num_classes):
            raise ValidationError(
                "expected traces of one model (same exits and classes) for the shift study."
            )
    st.check_criterion()
    largest = max(*st.feedback, st.proxy_size)
    for name, size, weights in (
        ("the test split", test.num_inputs, None),
        *((f"{x.kind} {x.severity:g}", x.trace.num_inputs, x.weights) for x in shifted),
    ):
        if size < 2 * largest:
            raise ValidationError(
                f"expected {name} to have at least {2 * largest} rows (half of them a pool for "
                f"feedback of up to {largest} inputs, half to evaluate on), got {size}. Lower "
                "feedback / proxy_size."
            )
        if weights is not None and not (
            isinstance(weights, Tensor)
            and weights.shape == (size,)
            and bool(weights.isfinite().all())
            and bool((weights >= 0).all())
            and float(weights.sum()) > 0
        ):
            raise ValidationError(
                f"expected the weights of {name} as {size} finite non-negative numbers with a "
                "positive sum (adaptix.experiment.shifts.class_prior_weights)."
            )
    generator = torch.Generator().manual_seed(st.seed)
    deployed = policy(st.criterion, st.delta, calibrate(calibration))
    monitor = ShiftMonitor(
        deployed,
        calibration,
        alpha=st.alpha,
        concentration=st.concentration,
        restart_every=st.restart_every,
    )
    bins = monitor.bins
    last = calibration.num_exits - 1
    columns = bins + 1  # the monitor's extra column for undefined confidences

    def codes(trace: Trace) -> tuple[Tensor, Tensor]:
        exits = simulate(trace, deployed).exit_index.cpu()
        return confidence_bins(trace.logits, deployed.calibration, bins)[:, 0], exits

    test_bins, test_exits = codes(test)
    clean = simulate(test, deployed)
    null_max: list[float] = []
    alarms = 0
    paths: dict[str, list[list[float]]] = {"null": []}
    bar = tqdm(
        total=st.streams + len(shifted), desc="shift study", disable=not progress, unit="stream"
    )
    for s in range(st.streams):
        ref = torch.randint(test.num_inputs, (calibration.num_inputs,), generator=generator)
        tests = (
            ShiftTest(torch.bincount(test_bins[ref], minlength=columns)[:bins], st.concentration),
            ShiftTest(torch.bincount(test_exits[ref], minlength=last + 1), st.concentration),
        )
        rows = torch.randint(test.num_inputs, (st.null_length,), generator=generator)
        margin = _stream_evidence(
            tests, test_bins[rows].clamp(max=bins - 1), test_exits[rows], st, bins, last + 1
        )
        peak = float(margin.max())
        null_max.append(peak)
        alarms += peak >= 0
        if s < 20:
            paths["null"].append(margin[: st.delay_length // st.check_inputs].tolist())
        bar.update(1)
    cells = []
    for split in shifted:
        cells.append(_cell(split, deployed, calibration, monitor, st, generator, codes, paths))
        bar.update(1)
    bar.close()
    return ShiftStudyResult(
        settings=st,
        clean_early_accuracy=math.nan if clean.early_accuracy is None else clean.early_accuracy,
        false_alarms=int(alarms),
        null_peak_margin=null_max,
        cells=cells,
        paths=paths,
    )


def _cell(
    split: ShiftedSplit,
    deployed: ExitPolicy,
    calibration: Trace,
    monitor: ShiftMonitor,
    st: StudySettings,
    generator: torch.Generator,
    codes: Any,
    paths: dict[str, list[list[float]]],
) -> ShiftCell:
    trace = split.trace
    n = trace.num_inputs
    last = trace.num_exits - 1
    bins = monitor.bins
    weights = split.weights
    shifted_bins, shifted_exits = codes(trace)
    delays = []
    key = f"{split.kind} {split.severity:g}"
    for s in range(st.streams):
        rows = _draw(n, st.delay_length, weights, generator, replacement=True)
        margin = _stream_evidence(
            monitor.tests,
            shifted_bins[rows].clamp(max=bins - 1),
            shifted_exits[rows],
            st,
            bins,
            last + 1,
        )
        delays.append(_first_alarm(margin, st.check_inputs))
        if s < 5:
            paths.setdefault(key, []).append(margin.tolist())
    delay_tensor = torch.tensor(delays)
    median = float(delay_tensor.median())  # the lower median: inf when half never alarmed
    served = simulate(trace, deployed)
    labels = trace.labels
    assert labels is not None  # run_shift_study checked
    everything = torch.arange(n)
    population, rate, _ = _weighted_early(
        served.exit_index.cpu(), (served.predictions == labels).cpu(), everything, weights, last
    )
    largest = max(*st.feedback, st.proxy_size)
    # One monitor per feedback size, its feedback dropped between repeats (building one
    # bins the whole reference).
    monitors = {
        size: ShiftMonitor(deployed, calibration, window=size, concentration=st.concentration)
        for size in {*st.feedback, st.proxy_size}
    }
    outcomes: dict[str, list[tuple[float, float, bool]]] = {}
    for _ in range(st.repeats):
        # Rows split uniformly into a feedback pool and an evaluation pool; the shift's weights
        # apply within each, so both stay draws of the shifted population.
        order = torch.randperm(n, generator=generator)
        pool, evaluation = order[: n // 2], order[n // 2 :]
        pool_weights = None if weights is None else weights[pool]
        drawn = pool[_draw(pool.numel(), largest, pool_weights, generator, replacement=False)]
        served_modes: list[tuple[str, ExitPolicy]] = [("none", deployed)]
        for size in st.feedback:
            fresh = monitors[size]
            fresh.forget_feedback()
            fresh.observe(trace.subset(drawn[:size]))
            served_modes.append((f"recal n={size}", fresh.recalibrated_policy()))
            served_modes.append(
                (f"guarantee n={size}", _quiet_recertify(fresh, st.delta, st.alpha))
            )
        proxy = monitors[st.proxy_size]
        proxy.forget_feedback()
        proxy.observe(trace.subset(drawn[: st.proxy_size]), proxy=True)
        served_modes.append(("proxy", proxy.recalibrated_policy(source="proxy")))
        for name, chosen in served_modes:
            result = served if chosen is deployed else simulate(trace, chosen)
            accuracy, early_rate, count = _weighted_early(
                result.exit_index.cpu(),
                (result.predictions == labels).cpu(),
                evaluation,
                weights,
                last,
            )
            noise = _Z * math.sqrt(st.delta * (1 - st.delta) / count) if count else 0.0
            missed = count > 0 and accuracy < st.delta - noise
            outcomes.setdefault(name, []).append((accuracy, early_rate, missed))
    modes = tuple(
        Recalibrated(
            mode=name,
            mean_early_accuracy=_nanmean([o[0] for o in rows]),
            miss_rate=sum(o[2] for o in rows) / len(rows),
            mean_early_exit_rate=sum(o[1] for o in rows) / len(rows),
        )
        for name, rows in outcomes.items()
    )
    return ShiftCell(
        kind=split.kind,
        severity=split.severity,
        early_accuracy=population,
        early_exit_rate=rate,
        median_delay=median,
        detected=float(delay_tensor.isfinite().float().mean()),
        modes=modes,
    )


def _quiet_recertify(monitor: ShiftMonitor, delta: float, alpha: float) -> ExitPolicy:
    """`ShiftMonitor.recertify` with the confidence criterion; an uncertified result (it sends
    every input to the last exit) is a legitimate outcome here, so its warning is silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificateWarning)
        return monitor.recertify(criterion="confidence", early_accuracy=delta, alpha=alpha)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _draw(
    n: int, count: int, weights: Tensor | None, generator: torch.Generator, *, replacement: bool
) -> Tensor:
    if weights is None:
        if replacement:
            return torch.randint(n, (count,), generator=generator)
        return torch.randperm(n, generator=generator)[:count]
    return torch.multinomial(weights.float(), count, replacement=replacement, generator=generator)


def log_shift_study(result: ShiftStudyResult, written: list[Path], tracker: Tracker) -> str | None:
    """One MLflow run for the study (settings, headline metrics, tables and plots) and a child
    run per shift and severity; returns the parent run's id (None when tracking is off)."""
    st = result.settings
    parent = tracker.start_run(
        "shift-study", params=asdict(st), tags={"adaptix.kind": "shift-study"}
    )
    tracker.log_metrics(
        parent,
        {
            "false_alarm_rate": result.false_alarm_rate,
            "false_alarms": float(result.false_alarms),
            "clean_early_accuracy": _finite_or_none(result.clean_early_accuracy),
            **{f"target_{i}_met": float(ok) for i, (_, _, ok) in enumerate(result.targets())},
        },
    )
    for path in written:
        tracker.log_artifact(parent, path)
    for cell in result.cells:
        child = tracker.start_run(
            f"{cell.kind}-{cell.severity:g}",
            params={"shift": cell.kind, "severity": cell.severity},
            parent=parent,
        )
        metrics: dict[str, float | None] = {
            "early_accuracy": _finite_or_none(cell.early_accuracy),
            "early_exit_rate": cell.early_exit_rate,
            "median_delay": _finite_or_none(cell.median_delay),
            "detected": cell.detected,
        }
        for mode in cell.modes:
            slug = mode.mode.replace(" ", "_").replace("=", "")
            metrics[f"{slug}_early_accuracy"] = _finite_or_none(mode.mean_early_accuracy)
            metrics[f"{slug}_miss_rate"] = mode.miss_rate
        tracker.log_metrics(child, metrics)
        tracker.end_run(child)
    tracker.end_run(parent)
    return parent
