"""Evidence for the guarantees, as a repeatable study (``PCEE.md``: how a guarantee is checked).

`run_study` pools a labelled calibration trace and a labelled test trace of one model, draws
many random calibration/test splits of the pool (seeded: the same arguments give the same
table), and for every logit scale (the overconfidence stress of ``PCEE.md``), target δ and
criterion measures on the test split what the user would get:

- ``confidence``: confidence at τ = δ, the naive reading of the target;
- ``pcee``, ``pcee_ws``, ``pcee_lcb`` (any registered criterion with an accuracy reading): the
  criterion at the threshold that reads as δ, calibrated on the calibration split
  (``adaptix.calibrate(calibration_split, bins=bins)``); a criterion with an ``alpha``
  parameter (``pcee_lcb``) takes the study's α;
- ``guarantee``: ``Certifier(calibration_split, "confidence").early_accuracy(δ, alpha=α)``, the
  marginal guarantee; a split where nothing is certified sends every input to the last exit.

A calibrated criterion is measured in every *mode* asked for (`StudyMode`): with each calibrator
(``calibrators``; by default ``reliability``, the paper's equal-width bins, and ``equal_mass``),
without and with the Bonferroni correction (``bonferroni``, on by default, for a criterion with
that parameter: ``pcee_lcb``), and on two kinds of tables: the paper's,
which count every calibration input at every exit, and, for the criteria in ``survivors``
(``pcee`` and ``pcee_lcb`` by default), survivor tables (``PCEE.md``: survivor calibration),
where exit e counts the calibration inputs that reach e under the rule at δ: one
`adaptix.calibrate_survivors` per split, scale, calibrator and rule serves the whole δ grid, on
the paper's bins of that calibrator.

What is counted, per split (``m`` is the number of test inputs that left before the last exit):

- *violation*: the test split's early accuracy is below δ. No early exit (m = 0) never violates.
- *miss*: a violation beyond the test split's own sampling noise, the check of ``PCEE.md``:
  early accuracy < δ − z·sqrt(δ(1 − δ)/m), z = 1.645 (one-sided 95 %). A policy whose true
  early accuracy is exactly δ is still counted as a miss in about 5 % of splits, and one just
  below δ often is not: the miss frequency reads the guarantee up to that noise.
- *shortfall*: max(δ − early accuracy, 0).
- *cost against the oracle*: relative cost / the hindsight oracle's, the cheapest confidence
  threshold of a dense grid (`adaptix.offline.control.oracle_grid`: linear, plus 1 − 10^-k
  crowding towards 1, plus every candidate threshold of the guarantee) whose early accuracy on
  the test split itself reaches δ (`adaptix.offline.control.hindsight_oracle`, the job's
  oracle too).

Over the splits: violation and miss frequencies, the worst shortfall, the mean relative cost and
the mean cost against the oracle, and for ``guarantee`` the share of splits where nothing was
certified. A guarantee at level α holds when the miss frequency stays ≤ α up to the noise of
the number of splits S: α + z·sqrt(α(1 − α)/S) (`noise_band`).

Everything that does not depend on the split is computed once per scale: predictions, and the
exits of calibration-free criteria (confidence, the oracle's grid) for every threshold, on the
whole pool, counted (`adaptix.offline.statistics.ThresholdCounts`); a split's test counts are
the pool's minus its calibration rows', and their points are `adaptix.sweep`'s on the test
split, bit for bit. Calibrated criteria are swept once per split and scale
over the whole δ grid (`adaptix.sweep`), and one `Certifier` per split and scale serves every δ;
survivor tables are counted for the whole grid at once and their exits looked up for every δ in
one pass (`adaptix.SurvivorCounts.exit_indices`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from adaptix._version import __version__
from adaptix.core.calibration import Calibration
from adaptix.core.files import atomic_write
from adaptix.core.trace import Trace, check_trace, shared_rows
from adaptix.errors import ValidationError
from adaptix.experiment.config import GUARANTEE_ROW
from adaptix.offline.calibrate import calibrate
from adaptix.offline.control import ORACLE_CRITERION, hindsight_oracle, oracle_grid
from adaptix.offline.frontier import FrontierPoint
from adaptix.offline.guarantee import CertificateWarning, Certifier
from adaptix.offline.policy import ExitPolicy, policy
from adaptix.offline.simulate import sweep
from adaptix.offline.statistics import (
    CANDIDATES,
    ThresholdCounts,
    count_exits,
    default_grid,
    exit_indices,
    right_predictions,
)
from adaptix.offline.survivors import calibrate_survivors, reads_bin_table
from adaptix.plugins import AdaptixPluginManager, resolve_manager
from adaptix.scalars import count, flag, integer, real, unit

if TYPE_CHECKING:
    from adaptix.tracking import Tracker

#: The criterion whose thresholds ``guarantee`` certifies.
CERTIFIED_CRITERION = "confidence"
DEFAULT_DELTAS: tuple[float, ...] = tuple(round(0.80 + 0.01 * i, 2) for i in range(20))
DEFAULT_SCALES: tuple[float, ...] = (1.0, 2.0, 3.0)
DEFAULT_CRITERIA: tuple[str, ...] = ("confidence", "pcee", "pcee_ws", "pcee_lcb", GUARANTEE_ROW)
#: The calibrator of the paper's tables (equal-width bins): its modes keep the criterion's name.
PAPER_CALIBRATOR = "reliability"
#: The paper's equal-width bins and equal-mass bins, each a mode of every calibrated criterion.
DEFAULT_CALIBRATORS: tuple[str, ...] = (PAPER_CALIBRATOR, "equal_mass")
#: The criteria measured on survivor tables too, of those studied, unless told otherwise.
DEFAULT_SURVIVORS: tuple[str, ...] = ("pcee", "pcee_lcb")
#: One-sided 95 % quantile of the standard normal: the width of both noise allowances.
NOISE_Z = 1.6448536269514722
_FILES = {"csv": "study.csv", "markdown": "study.md"}


def noise_band(alpha: float, splits: int) -> float:
    """The highest miss frequency over ``splits`` splits still consistent with level α:
    α + z·sqrt(α(1 − α)/splits), z the one-sided 95 % normal quantile."""
    return alpha + NOISE_Z * math.sqrt(alpha * (1 - alpha) / splits)


@dataclass(frozen=True)
class StudyMode:
    """One way a study chooses exits: a criterion, and for a calibrated one its tables.

    Attributes:
        name: what the tables, figures and metrics call it: the criterion, then
            ``/bonferroni`` (the Bonferroni correction), ``/<calibrator>`` (any calibrator but
            the paper's ``reliability``) and ``/survivors`` (survivor tables), e.g. ``pcee``,
            ``pcee_lcb/survivors``, ``pcee_lcb/bonferroni/equal_mass/survivors``.
        criterion: the criterion name, or ``"guarantee"``.
        calibrator: the calibrator whose bins its tables use; None for a mode that reads no
            calibration.
        survivors: whether its tables count survivors (`adaptix.calibrate_survivors`) rather
            than every calibration input (the paper's).
        bonferroni: whether the criterion takes ``bonferroni=True``.
    """

    name: str
    criterion: str
    calibrator: str | None = None
    survivors: bool = False
    bonferroni: bool = False

    @classmethod
    def of(
        cls, criterion: str, calibrator: str | None, *, survivors: bool, bonferroni: bool
    ) -> StudyMode:
        """The mode with its name made from the other fields (see the attributes)."""
        parts = [criterion]
        parts += ["bonferroni"] if bonferroni else []
        parts += [calibrator] if calibrator not in (None, PAPER_CALIBRATOR) else []
        parts += ["survivors"] if survivors else []
        return cls("/".join(parts), criterion, calibrator, survivors, bonferroni)

    @property
    def paper(self) -> str:
        """The name of the same mode on the paper's tables (its own name if it is on them)."""
        return StudyMode.of(
            self.criterion, self.calibrator, survivors=False, bonferroni=self.bonferroni
        ).name

    @property
    def rule(self) -> str:
        """The rule, whatever the tables and bins: the criterion, ``/bonferroni`` if corrected."""
        return StudyMode.of(self.criterion, None, survivors=False, bonferroni=self.bonferroni).name


@dataclass(frozen=True)
class StudyRow:
    """One (scale, mode, δ) of a study, aggregated over the splits.

    Attributes:
        scale: the factor every logit was multiplied by (1: the model as trained).
        criterion: a criterion name, or ``"guarantee"``.
        mode: the `StudyMode`'s name (the criterion's, on the paper's tables).
        calibrator: the calibrator of its tables (None for a mode that reads none).
        survivors: whether its tables count survivors.
        delta: the target δ.
        splits: how many splits were drawn.
        violation_frequency: share of splits whose test early accuracy is below δ.
        miss_frequency: share of splits that miss δ beyond the test split's sampling noise.
        worst_shortfall: the largest δ − early accuracy over the splits (0 if never below).
        mean_early_accuracy: mean over the splits where some input left early (None if none).
        mean_relative_cost: mean relative cost over the splits.
        mean_oracle_cost: mean relative cost of the hindsight oracle at δ.
        mean_cost_vs_oracle: mean over the splits of relative cost / the oracle's.
        no_early_exit_share: share of splits where no test input left early.
        uncertified_share: for ``guarantee``, share of splits where nothing was certified
            (None for the other criteria).
    """

    scale: float
    criterion: str
    mode: str
    calibrator: str | None
    survivors: bool
    delta: float
    splits: int
    violation_frequency: float
    miss_frequency: float
    worst_shortfall: float
    mean_early_accuracy: float | None
    mean_relative_cost: float
    mean_oracle_cost: float
    mean_cost_vs_oracle: float
    no_early_exit_share: float
    uncertified_share: float | None


@dataclass(frozen=True)
class StudyConfig:
    """What a study was run with (the arguments of `run_study`, resolved), and its modes:
    every criterion, and every calibrated one per calibrator, correction and kind of tables."""

    splits: int
    calibration_size: int
    test_size: int
    deltas: tuple[float, ...]
    scales: tuple[float, ...]
    alpha: float
    criteria: tuple[str, ...]
    bins: int
    seed: int
    calibrators: tuple[str, ...] = DEFAULT_CALIBRATORS
    survivors: tuple[str, ...] = ()
    bonferroni: bool = False
    modes: tuple[StudyMode, ...] = ()

    @property
    def mode_names(self) -> tuple[str, ...]:
        """The modes' names, in the study's order."""
        return tuple(mode.name for mode in self.modes)


@dataclass(frozen=True)
class StudyResult:
    """A study's table, one `StudyRow` per (scale, mode, δ), and how it was made.

    Attributes:
        config: the study's settings and modes.
        rows: scales in the given order, then modes (`StudyConfig.modes`), then δ ascending.
        seconds: wall time of `run_study`.
        traces: ``"calibration"`` and ``"test"`` -> the trace's inputs, content checksum
            (sha256 of its tensors) and metadata, as given; the test trace's also holds
            ``shared_rows_dropped``, the rows it shared with the calibration trace (dropped
            before pooling: see `run_study`), and ``groups``, the number of groups the splits
            were drawn by, when they were.
    """

    config: StudyConfig
    rows: list[StudyRow]
    seconds: float
    traces: dict[str, dict[str, str]]

    @property
    def noise_band(self) -> float:
        """The miss frequency up to which the guarantee at level α holds (`noise_band`)."""
        return noise_band(self.config.alpha, self.config.splits)

    def of(self, scale: float, mode: str) -> list[StudyRow]:
        """The rows of one scale and mode (a criterion's name: its paper mode), δ ascending."""
        return [r for r in self.rows if r.scale == scale and r.mode == mode]

    def headline(self, scale: float, mode: str) -> dict[str, float | None]:
        """The numbers of the markdown table for one scale and mode, over the δ grid.

        Keys: ``max_miss_frequency`` (and ``max_miss_delta``, the first δ where it is
        reached; None when nothing missed), ``max_violation_frequency``, ``worst_shortfall``,
        ``mean_cost_vs_oracle``, ``mean_relative_cost``, ``uncertified_share`` (mean over δ;
        None but for guarantee).

        Raises:
            ValidationError: the study has no such scale or mode.
        """
        rows = self.of(scale, mode)
        if not rows:
            raise ValidationError(
                f"expected a scale in {list(self.config.scales)} and a mode in "
                f"{list(self.config.mode_names)}, got scale {scale!r}, mode {mode!r}."
            )
        worst_miss = max(rows, key=lambda r: r.miss_frequency)
        uncertified = [r.uncertified_share for r in rows if r.uncertified_share is not None]
        return {
            "max_miss_frequency": worst_miss.miss_frequency,
            "max_miss_delta": worst_miss.delta if worst_miss.miss_frequency > 0 else None,
            "max_violation_frequency": max(r.violation_frequency for r in rows),
            "worst_shortfall": max(r.worst_shortfall for r in rows),
            "mean_cost_vs_oracle": _mean([r.mean_cost_vs_oracle for r in rows]),
            "mean_relative_cost": _mean([r.mean_relative_cost for r in rows]),
            "uncertified_share": _mean(uncertified) if uncertified else None,
        }

    def summary(self) -> dict[str, float]:
        """The headline numbers, flat: ``"x<scale>.<mode>.<name>"`` -> value (the defined
        values of `headline`; e.g. ``x3.pcee_lcb/survivors.worst_shortfall``), plus
        ``miss_noise_band``, ``splits`` and ``seconds``."""
        numbers_: dict[str, float] = {
            "miss_noise_band": self.noise_band,
            "splits": float(self.config.splits),
            "seconds": self.seconds,
        }
        for scale in self.config.scales:
            for mode in self.config.mode_names:
                for name, value in self.headline(scale, mode).items():
                    if value is not None:
                        numbers_[f"x{scale:g}.{mode}.{name}"] = value
        return numbers_

    def params(self) -> dict[str, str]:
        """The settings and the traces' identities, as strings (MLflow params)."""
        config = self.config
        params = {
            "splits": str(config.splits),
            "calibration_size": str(config.calibration_size),
            "test_size": str(config.test_size),
            "alpha": f"{config.alpha:g}",
            "bins": str(config.bins),
            "seed": str(config.seed),
            "criteria": ",".join(config.criteria),
            "scales": ",".join(f"{s:g}" for s in config.scales),
            "deltas": ",".join(f"{d:g}" for d in config.deltas),
            "noise_z": f"{NOISE_Z:.4f}",
            "calibrators": ",".join(config.calibrators),
            "survivors": ",".join(config.survivors),
            "bonferroni": str(config.bonferroni),
            "split_by": "group" if "groups" in self.traces["test"] else "row",
        }
        for role, info in self.traces.items():
            params[f"{role}_trace.checksum"] = info["checksum"]
            params[f"{role}_trace.inputs"] = info["inputs"]
            params[f"{role}_trace.meta"] = info["meta"]
        params["test_trace.shared_rows_dropped"] = self.traces["test"].get(
            "shared_rows_dropped", "0"
        )
        return params

    def to_dict(self) -> dict[str, Any]:
        """Everything of the study as JSON-ready values (`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyResult:
        """The study `to_dict` gave (e.g. read back from JSON).

        Raises:
            ValidationError: a mapping that is not such a study.
        """
        try:
            raw: dict[str, Any] = dict(data["config"])
            tuples = ("deltas", "scales", "criteria", "calibrators", "survivors")
            fields_: dict[str, Any] = {
                k: tuple(v) if k in tuples else v for k, v in raw.items() if k != "modes"
            }
            fields_["modes"] = tuple(StudyMode(**m) for m in raw["modes"])
            config = StudyConfig(**fields_)
            rows = [StudyRow(**row) for row in data["rows"]]
            return cls(config, rows, float(data["seconds"]), dict(data["traces"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValidationError(
                f"expected a study as StudyResult.to_dict gives it: {err}"
            ) from err

    def to_csv(self, path: str | Path) -> Path:
        """Every row (per δ) as CSV, with the ``miss_noise_band`` column, written atomically.

        Raises:
            ValidationError: ``path`` is a directory or cannot be written.
        """
        names = [f.name for f in fields(StudyRow)] + ["miss_noise_band"]
        band = self.noise_band

        def write(handle: BinaryIO) -> None:
            text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, fieldnames=names)
            writer.writeheader()
            writer.writerows({**asdict(row), "miss_noise_band": band} for row in self.rows)
            text.flush()
            text.detach()  # atomic_write closes the file itself

        return atomic_write(path, write, "study table")

    def to_markdown(self) -> str:
        """A compact table per scale (modes as rows, the `headline` numbers as columns), then
        the paper's tables and survivor tables side by side (`survivor_comparison`)."""
        config = self.config
        deltas = config.deltas
        lines = [
            f"Study: {config.splits} random calibration/test splits "
            f"({config.calibration_size} calibration, {config.test_size} test inputs), "
            f"δ = {deltas[0]:g} … {deltas[-1]:g} ({len(deltas)} values), α = {config.alpha:g}, "
            f"{config.bins} bins, seed {config.seed}; {self.seconds:.0f} s.",
            "",
            f"A miss: test early accuracy < δ − {NOISE_Z:.3f}·sqrt(δ(1 − δ)/m), m the test "
            "inputs that left early. Noise of the number of splits: a miss frequency up to "
            f"α + {NOISE_Z:.3f}·sqrt(α(1 − α)/{config.splits}) = {100 * self.noise_band:.1f} % "
            "is consistent with level α. Frequencies are maxima over δ; cost/oracle and "
            "relative cost are means over δ; uncertified: mean share of splits over δ. A mode "
            "is the criterion, then /bonferroni (the Bonferroni correction), /<calibrator> "
            "(bins other than the paper's equal-width `reliability`), /survivors (survivor "
            "tables: exit e counts the calibration inputs that reach e at δ).",
        ]
        header = (
            "| mode | max miss freq (at δ) | max violation freq | worst shortfall (pt) "
            "| mean cost / oracle | mean relative cost | uncertified |"
        )
        for scale in config.scales:
            lines += ["", f"### {_scale_title(scale)}", "", header, "|---|---|---|---|---|---|---|"]
            for mode in config.mode_names:
                h = self.headline(scale, mode)
                uncertified, at = h["uncertified_share"], h["max_miss_delta"]
                lines.append(
                    f"| {mode} | {_pct(h['max_miss_frequency'])}"
                    f"{'' if at is None else f' ({at:g})'} | {_pct(h['max_violation_frequency'])} "
                    f"| {100 * _defined(h['worst_shortfall']):.2f} "
                    f"| {_defined(h['mean_cost_vs_oracle']):.3f} "
                    f"| {_defined(h['mean_relative_cost']):.3f} "
                    f"| {'—' if uncertified is None else _pct(uncertified)} |"
                )
        return "\n".join(lines + self._comparison_markdown()) + "\n"

    def survivor_modes(self) -> list[StudyMode]:
        """The modes on survivor tables, each measured beside its paper mode (`StudyMode.paper`)."""
        return [mode for mode in self.config.modes if mode.survivors]

    def survivor_comparison(self) -> list[dict[str, Any]]:
        """The paper's tables and survivor tables side by side: one entry per survivor mode
        and scale, with ``mode``, ``paper`` (the paper mode's name), ``rule``, ``scale``,
        ``calibrator``, the paper mode's and the survivor mode's `headline` (``"paper"``,
        ``"survivors"``), and ``guarantee``, the marginal mode's `headline` at that scale
        (None when ``guarantee`` was not studied)."""
        marginal = GUARANTEE_ROW in self.config.criteria
        return [
            {
                "mode": mode.name,
                "paper": mode.paper,
                "rule": mode.rule,
                "scale": scale,
                "calibrator": mode.calibrator,
                "headline": {
                    "paper": self.headline(scale, mode.paper),
                    "survivors": self.headline(scale, mode.name),
                },
                "guarantee": self.headline(scale, GUARANTEE_ROW) if marginal else None,
            }
            for mode in self.survivor_modes()
            for scale in self.config.scales
        ]

    def _comparison_markdown(self) -> list[str]:
        """The side-by-side section of `to_markdown` (nothing without survivor modes)."""
        entries = self.survivor_comparison()
        if not entries:
            return []
        lines = [
            "",
            "### The paper's tables vs survivor tables",
            "",
            "Each rule on the paper's tables (every calibration input counted at every exit) → "
            "on survivor tables (exit e counts the inputs that reach e at δ), same bins; "
            "guarantee: the marginal certified mode's cost / oracle at that scale.",
            "",
            "| rule | bins | logits | max miss freq | worst shortfall (pt) | mean cost / oracle "
            "| guarantee cost / oracle |",
            "|---|---|---|---|---|---|---|",
        ]
        for entry in entries:
            paper, survivors = entry["headline"]["paper"], entry["headline"]["survivors"]
            marginal = (
                "—"
                if entry["guarantee"] is None
                else f"{_defined(entry['guarantee']['mean_cost_vs_oracle']):.3f}"
            )
            lines.append(
                f"| {entry['rule']} | {entry['calibrator']} | × {entry['scale']:g} "
                f"| {_pct(paper['max_miss_frequency'])} → "
                f"{_pct(survivors['max_miss_frequency'])} "
                f"| {100 * _defined(paper['worst_shortfall']):.2f} → "
                f"{100 * _defined(survivors['worst_shortfall']):.2f} "
                f"| {_defined(paper['mean_cost_vs_oracle']):.3f} → "
                f"{_defined(survivors['mean_cost_vs_oracle']):.3f} "
                f"| {marginal} |"
            )
        return lines

    def write(self, directory: str | Path) -> list[Path]:
        """Write ``study.csv`` and ``study.md`` into ``directory``; the paths written. The
        figures are `adaptix.experiment.study_plots.write_plots`.

        Raises:
            ValidationError: a file cannot be written.
        """
        folder = Path(directory)
        markdown = self.to_markdown()
        return [
            self.to_csv(folder / _FILES["csv"]),
            atomic_write(
                folder / _FILES["markdown"],
                lambda handle: handle.write(markdown.encode("utf-8")),
                "study summary",
            ),
        ]


def split_indices(
    num_inputs: int,
    calibration_size: int,
    splits: int,
    seed: int,
    groups: Tensor | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """The study's random splits: (calibration rows, test rows) of a pool of ``num_inputs``.

    Split s is a uniform random permutation drawn from ``torch.Generator().manual_seed(seed)``
    (the s-th draw): its first ``calibration_size`` entries are the calibration split, the rest
    the test split, each sorted. Every scale of a study reads the same splits.

    With ``groups`` (int64 ``[num_inputs]``, a group id per row: the article a token comes
    from), the permutation is of the groups, and whole groups join the calibration split, in
    that order, until it holds at least ``calibration_size`` rows (one group at least, and one
    left for the test split): rows of one group are never on both sides.
    """
    generator = torch.Generator().manual_seed(seed)
    drawn = []
    if groups is None:
        for _ in range(splits):
            order = torch.randperm(num_inputs, generator=generator)
            drawn.append(
                (order[:calibration_size].sort().values, order[calibration_size:].sort().values)
            )
        return drawn
    names, members = torch.unique(groups, return_inverse=True)
    if names.numel() < 2:
        raise ValidationError(f"expected at least 2 groups to split by group, got {names.numel()}.")
    sizes = torch.bincount(members, minlength=names.numel())
    for _ in range(splits):
        order = torch.randperm(names.numel(), generator=generator)
        filled = sizes[order].cumsum(0)
        taken = int((filled < calibration_size).sum()) + 1
        taken = min(max(taken, 1), names.numel() - 1)
        calibration = torch.zeros(names.numel(), dtype=torch.bool)
        calibration[order[:taken]] = True
        side = calibration[members]
        drawn.append((side.nonzero().squeeze(1), (~side).nonzero().squeeze(1)))
    return drawn


def run_study(
    calibration_trace: Trace,
    test_trace: Trace,
    *,
    splits: int = 100,
    calibration_size: int = 5000,
    deltas: Sequence[float] = DEFAULT_DELTAS,
    scales: Sequence[float] = DEFAULT_SCALES,
    alpha: float = 0.05,
    criteria: Sequence[str] = DEFAULT_CRITERIA,
    bins: int = 10,
    seed: int = 0,
    calibrators: Sequence[str] = DEFAULT_CALIBRATORS,
    survivors: Sequence[str] | None = None,
    bonferroni: bool = True,
    groups: tuple[Sequence[int] | Tensor, Sequence[int] | Tensor] | None = None,
    plugins: AdaptixPluginManager | None = None,
    progress: bool = True,
) -> StudyResult:
    """Repeated random calibration/test splits: how often each criterion misses δ, at what cost.

    See the module's docstring for what is measured. Example::

        study = run_study(calibration_trace, test_trace, splits=100, calibration_size=5000)
        print(study.to_markdown())

    The two traces must hold different inputs: a row in both could land in a split's
    calibration and test sides at once, and the study would count calibration rows as test
    evidence (optimistic, silently). Every row is fingerprinted (`Trace.row_digests`), and:

    - the same trace twice (equal checksums), a test trace whose every row is a calibration
      row, or a calibration trace whose every row is a test row: `ValidationError`;
    - a partial overlap: the shared rows are dropped from the test trace, with a
      `CertificateWarning` saying how many, and the statements rest on the remaining test rows
      (and the calibration trace); the count is recorded (``test_trace.shared_rows_dropped``).

    Args:
        calibration_trace: a labelled trace of the model (pooled with ``test_trace``).
        test_trace: a labelled trace of the same model (same exits, classes and costs).
        splits: how many random splits to draw (≥ 100 to read frequencies near α = 0.05).
        calibration_size: inputs in each calibration split; the rest of the pool is the test
            split.
        deltas: the targets δ, each in (0, 1).
        scales: logit factors (1: the model as trained; 2, 3: the overconfidence stress).
        alpha: the level of ``guarantee`` and of criteria with an ``alpha`` parameter.
        criteria: criterion names with an accuracy reading, and/or ``"guarantee"``.
        bins: M, the calibration's number of bins.
        seed: seeds the splits.
        calibrators: registered calibrators whose bins the calibrated criteria are measured
            on, each a mode of its own (default ``reliability``, the paper's equal-width bins,
            and ``equal_mass``, equal-mass bins).
        survivors: criteria of ``criteria`` with a bin table to measure on survivor tables
            too, beside the paper's; None (default): those of ``pcee`` and ``pcee_lcb`` that
            are studied; an empty list: none.
        bonferroni: also measure every criterion with a ``bonferroni`` parameter
            (``pcee_lcb``) with the correction on, beside the uncorrected per-bin mode
            (default True: the corrected mode is the one whose bounds on survivor tables
            together bound the early accuracy, ``PCEE.md``).
        groups: a group id per row of the calibration trace and per row of the test trace
            (ids unique across both): splits are drawn by group (`split_indices`), so rows
            that are not exchangeable (the tokens of one article) never fall on both sides.
            None: rows are split one by one.
        plugins: the plugin manager to resolve criteria and calibrators with.
        progress: show a progress bar over the splits.

    Raises:
        ValidationError: traces that are not labelled traces of the same model, traces of
            the same inputs (see above), or a setting out of range (`adaptix.scalars`: a bool
            is never a number, a string never coerced).
        PluginError: an unknown criterion or calibrator.

    Warns:
        CertificateWarning: the test trace shared some rows with the calibration trace; they
            were dropped.
    """
    start = time.perf_counter()
    manager = resolve_manager(plugins)
    # Every setting first: a bad one is refused before the traces are fingerprinted or pooled.
    checked_splits = count(splits, "splits", low=1)
    checked_deltas, checked_scales = _deltas(deltas), _scales(scales)
    checked_alpha = unit(alpha, "alpha")
    checked_criteria = _criteria(criteria, manager)
    checked_bins = count(bins, "bins", low=1)
    checked_seed = integer(seed, "seed", low=0, high=2**63 - 1)
    checked_calibrators = _calibrators(calibrators, manager)
    checked_survivors = _survivor_criteria(survivors, checked_criteria, manager)
    checked_bonferroni = flag(bonferroni, "bonferroni")
    identities = {
        role: _identity(trace, role)
        for role, trace in (("calibration", calibration_trace), ("test", test_trace))
    }
    given_groups = _groups(groups, calibration_trace, test_trace)
    kept_test, dropped, kept = _without_shared_rows(calibration_trace, test_trace, identities)
    identities["test"]["shared_rows_dropped"] = str(dropped)
    pooled = _pool(calibration_trace, kept_test)
    pooled_groups = None
    if given_groups is not None:
        pooled_groups = torch.cat([given_groups[0], given_groups[1][kept]])
        identities["test"]["groups"] = str(int(torch.unique(pooled_groups).numel()))
    size = integer(calibration_size, "calibration_size", low=1, high=pooled.num_inputs - 1)
    config = StudyConfig(
        splits=checked_splits,
        calibration_size=size,
        test_size=pooled.num_inputs - size,
        deltas=checked_deltas,
        scales=checked_scales,
        alpha=checked_alpha,
        criteria=checked_criteria,
        bins=checked_bins,
        seed=checked_seed,
        calibrators=checked_calibrators,
        survivors=checked_survivors,
        bonferroni=checked_bonferroni,
        modes=_modes(
            checked_criteria, checked_calibrators, checked_survivors, checked_bonferroni, manager
        ),
    )
    drawn = split_indices(
        pooled.num_inputs, config.calibration_size, config.splits, config.seed, pooled_groups
    )
    correct = right_predictions(pooled)
    rows: list[StudyRow] = []
    with tqdm(
        total=config.splits * len(config.scales), desc="study", unit="split", disable=not progress
    ) as bar:
        for scale in config.scales:
            study = _ScaleStudy(pooled.scaled(scale), correct, config, manager)
            for index, (calibration_rows, test_rows) in enumerate(drawn):
                study.measure(index, calibration_rows, test_rows)
                bar.update()
            rows += study.rows(scale)
    return StudyResult(config, rows, time.perf_counter() - start, identities)


def log_study(
    result: StudyResult,
    artifacts: Sequence[str | Path],
    *,
    tracker: Tracker,
    run_name: str = "study",
) -> str | None:
    """Log a study to MLflow as one run: its params, the `StudyResult.summary` as metrics, and
    ``artifacts`` (the files `StudyResult.write` returned).

    A store that fails switches the tracker off (see `adaptix.tracking.Tracker`): the files
    already written stay where they are.

    Returns:
        The run id, or None when tracking is off.
    """
    with tracker.run(
        run_name, params=result.params(), tags={"adaptix.version": __version__}
    ) as run:
        tracker.log_metrics(run, result.summary())
        for path in artifacts:
            tracker.log_artifact(run, path)
    return run


# --------------------------------------------------------------------------- one scale, measured


@dataclass
class _Outcomes:
    """What one criterion did on every test split at every δ: arrays ``[D, S]``."""

    early_accuracy: np.ndarray  # NaN where no input left early
    early_count: np.ndarray
    relative_cost: np.ndarray

    @classmethod
    def empty(cls, deltas: int, splits: int) -> _Outcomes:
        """No input left early anywhere (relative cost 1): what an uncertified split keeps."""
        return cls(
            np.full((deltas, splits), np.nan),
            np.zeros((deltas, splits), dtype=np.int64),
            np.ones((deltas, splits)),
        )

    def record(self, d: int, s: int, point: FrontierPoint, num_test: int) -> None:
        """Store the test split's ``point`` at (δ index d, split s)."""
        if point.early_accuracy is not None:
            self.early_accuracy[d, s] = point.early_accuracy
        self.early_count[d, s] = round(point.early_exit_rate * num_test)
        self.relative_cost[d, s] = point.relative_cost


@dataclass(frozen=True)
class _Pool:
    """A calibration-free criterion counted once on the whole pool, at every threshold.

    Its exits do not depend on the split: a split's test counts are the pool's minus its
    calibration rows' (`ThresholdCounts.__sub__`), and their points are `adaptix.sweep`'s on
    the test split, bit for bit (the same counts, through `ThresholdCounts.points`).
    """

    base: ExitPolicy
    thresholds: list[float]
    exits: Tensor  # int64 [N, T]: the exit of every pooled input at every threshold
    counts: ThresholdCounts

    def test_counts(self, calibration: Trace, rows: Tensor, right: Tensor) -> ThresholdCounts:
        """The counts of every pooled input but ``rows`` (``calibration``, the pool's rows
        ``rows``; ``right``, the pool's right predictions)."""
        held = count_exits(
            calibration, self.base, self.thresholds, self.exits[rows], right=right[rows]
        )
        return self.counts - held


class _ScaleStudy:
    """Every split at one logit scale: the split-independent work once, then `measure`."""

    def __init__(
        self,
        pooled: Trace,
        correct: Tensor,
        config: StudyConfig,
        manager: AdaptixPluginManager,
    ) -> None:
        self.pooled, self.correct = pooled, correct
        self.config, self.manager = config, manager
        self.params = {name: _params(name, config.alpha, manager) for name in config.criteria}
        self.calibrated_modes = [mode for mode in config.modes if mode.calibrator is not None]
        self.readings = {
            name: [_reading(name, manager).threshold(d) for d in config.deltas]
            for name in config.criteria
            if name != GUARANTEE_ROW
        }
        self.calibrated = [
            name for name in self.readings if manager.criteria.get(name).needs_calibration
        ]
        self.candidates = default_grid(CERTIFIED_CRITERION, manager, CANDIDATES)
        self.oracle_pool = self._pool(
            ORACLE_CRITERION, {}, oracle_grid(config.deltas, plugins=manager)
        )
        self.pools = {
            name: self._pool(name, self.params[name], grid)
            for name, grid in self.readings.items()
            if name not in self.calibrated
        }
        shape = (len(config.deltas), config.splits)
        self.oracle = np.ones(shape)
        self.outcomes = {name: _Outcomes.empty(*shape) for name in config.mode_names}
        self.uncertified = np.zeros(shape, dtype=bool)  # guarantee: nothing certified

    def _pool(self, name: str, params: dict[str, Any], grid: list[float]) -> _Pool:
        base = policy(name, grid[0], plugins=self.manager, **params)
        thresholds = [base.with_threshold(t).threshold for t in grid]
        exits = exit_indices(self.pooled, base, thresholds)
        counts = count_exits(self.pooled, base, thresholds, exits, right=self.correct)
        return _Pool(base, thresholds, exits, counts)

    def measure(self, split: int, calibration_rows: Tensor, test_rows: Tensor) -> None:
        """Every mode at every δ on one split: per calibrator, one calibration of the split
        serves its paper modes (one sweep with and one without the correction) and gives the
        bins of its survivor modes."""
        calibration = self.pooled.subset(calibration_rows)
        test = self.pooled.subset(test_rows)
        oracle_counts = self.oracle_pool.test_counts(calibration, calibration_rows, self.correct)
        oracle = hindsight_oracle(oracle_counts, self.config.deltas, plugins=self.manager)
        self.oracle[:, split] = list(oracle.values())
        for name, pool in self.pools.items():
            counts = pool.test_counts(calibration, calibration_rows, self.correct)
            for d, point in enumerate(counts.points()):
                self.outcomes[name].record(d, split, point, test.num_inputs)
        calibrators = self.config.calibrators if self.calibrated_modes else ()
        for calibrator in calibrators:
            tables = calibrate(calibration, calibrator, bins=self.config.bins, plugins=self.manager)
            modes = [m for m in self.calibrated_modes if m.calibrator == calibrator]
            for bonferroni in (False, True):
                self._paper(split, test, tables, [m for m in modes if m.bonferroni == bonferroni])
            for mode in modes:
                if mode.survivors:
                    self._survivors(split, calibration, test, test_rows, tables, mode)
        if GUARANTEE_ROW in self.outcomes:
            by_threshold = {p.threshold: p for p in oracle_counts.points()}
            self._certify(split, calibration, by_threshold, test.num_inputs)

    def _mode_params(self, mode: StudyMode) -> dict[str, Any]:
        """The criterion's parameters in ``mode``: the study's α, the correction if asked."""
        params = self.params[mode.criterion]
        return {**params, "bonferroni": True} if mode.bonferroni else params

    def _paper(
        self, split: int, test: Trace, tables: Calibration, modes: Sequence[StudyMode]
    ) -> None:
        """Modes on the paper's ``tables`` (at most one per criterion), swept together."""
        paper = [mode for mode in modes if not mode.survivors]
        if not paper:
            return
        frontier = sweep(
            test,
            {mode.criterion: self._mode_params(mode) for mode in paper},
            {mode.criterion: self.readings[mode.criterion] for mode in paper},
            tables,
            plugins=self.manager,
        )
        for mode in paper:
            for d, point in enumerate(frontier.of(mode.criterion)):
                self.outcomes[mode.name].record(d, split, point, test.num_inputs)

    def _survivors(
        self,
        split: int,
        calibration: Trace,
        test: Trace,
        test_rows: Tensor,
        tables: Calibration,
        mode: StudyMode,
    ) -> None:
        """``mode`` on survivor tables of the calibration split, counted on the bins of the
        paper's ``tables`` for the whole δ grid at once, its exits looked up in one pass."""
        grid = self.readings[mode.criterion]
        counts = calibrate_survivors(
            calibration,
            grid,
            mode.criterion,
            bins=self.config.bins,
            edges=tables.edges,
            plugins=self.manager,
            **self._mode_params(mode),
        )
        exits = counts.exit_indices(test, plugins=self.manager)  # [N_test, D]
        right = self.correct[test_rows]
        for d, threshold in enumerate(grid):
            # One count per δ: each δ reads its own survivor tables, so the exits of the grid
            # are not one criterion's across thresholds (`ThresholdCounts`).
            pol = counts.policy(threshold, plugins=self.manager)
            column = exits[:, d : d + 1]
            (point,) = count_exits(test, pol, [threshold], column, right=right).points()
            self.outcomes[mode.name].record(d, split, point, test.num_inputs)

    def _certify(
        self,
        split: int,
        calibration: Trace,
        by_threshold: Mapping[float, FrontierPoint],
        num_test: int,
    ) -> None:
        """``guarantee`` at every δ from one `Certifier`; its choices are read off the oracle's
        frontier, whose grid holds every candidate threshold."""
        certifier = Certifier(
            calibration, CERTIFIED_CRITERION, thresholds=self.candidates, plugins=self.manager
        )
        alpha = self.config.alpha
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CertificateWarning)  # counted in uncertified_share
            chosen = [certifier.early_accuracy(d, alpha=alpha) for d in self.config.deltas]
        for d, certified in enumerate(chosen):
            if certified.exits_early:
                point = by_threshold[certified.threshold]
                self.outcomes[GUARANTEE_ROW].record(d, split, point, num_test)
            else:  # every input goes to the last exit: the empty outcome stays
                self.uncertified[d, split] = True

    def rows(self, scale: float) -> list[StudyRow]:
        """The aggregated rows of this scale, modes in the study's order, δ ascending."""
        return [
            _row(
                scale,
                mode,
                delta,
                (self.outcomes[mode.name], d),
                self.oracle[d],
                self.uncertified[d] if mode.criterion == GUARANTEE_ROW else None,
            )
            for mode in self.config.modes
            for d, delta in enumerate(self.config.deltas)
        ]


def _row(
    scale: float,
    mode: StudyMode,
    delta: float,
    at: tuple[_Outcomes, int],
    oracle: np.ndarray,
    uncertified: np.ndarray | None,
) -> StudyRow:
    """Aggregate the splits of one (scale, mode, δ): ``at`` is (outcomes, δ index)."""
    outcomes, d = at
    accuracy, count = outcomes.early_accuracy[d], outcomes.early_count[d]
    cost = outcomes.relative_cost[d]
    early = count > 0
    filled = np.where(early, accuracy, np.inf)  # no early exit: never below δ
    noise = NOISE_Z * np.sqrt(delta * (1 - delta) / np.maximum(count, 1))
    shortfall = np.clip(delta - filled, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(oracle > 0, cost / oracle, np.where(cost > 0, np.inf, 1.0))
    return StudyRow(
        scale=scale,
        criterion=mode.criterion,
        mode=mode.name,
        calibrator=mode.calibrator,
        survivors=mode.survivors,
        delta=delta,
        splits=int(accuracy.size),
        violation_frequency=float(np.mean(filled < delta)),
        miss_frequency=float(np.mean(filled < delta - noise)),
        worst_shortfall=float(shortfall.max()),
        mean_early_accuracy=float(np.mean(accuracy[early])) if early.any() else None,
        mean_relative_cost=float(np.mean(cost)),
        mean_oracle_cost=float(np.mean(oracle)),
        mean_cost_vs_oracle=float(np.mean(ratio)),
        no_early_exit_share=float(np.mean(~early)),
        uncertified_share=None if uncertified is None else float(np.mean(uncertified)),
    )


# ------------------------------------------------------------------------------------ checks


def _check_trace(trace: Trace, role: str) -> Tensor:
    """The labels of a labelled `Trace` (ValidationError for anything else)."""
    check_trace(
        trace,
        f"the {role} trace",
        labelled=True,
        fix="Load one with adaptix.Trace.load(path); the study measures accuracy.",
    )
    assert trace.labels is not None  # checked just above
    return trace.labels


def _pool(calibration: Trace, test: Trace) -> Trace:
    """Both labelled traces as one (`Trace.concat`: refused unless of the same model)."""
    for role, trace in (("calibration", calibration), ("test", test)):
        _check_trace(trace, role)
    return Trace.concat([calibration, test])


def _without_shared_rows(
    calibration: Trace, test: Trace, identities: dict[str, dict[str, str]]
) -> tuple[Trace, int, Tensor]:
    """``test`` without the rows it shares with ``calibration`` (`Trace.row_digests`), how
    many were dropped and which test rows were kept (bool); the rule is `run_study`'s (refuse
    identical or contained traces, drop and warn on a partial overlap)."""
    if identities["calibration"]["checksum"] == identities["test"]["checksum"]:
        raise ValidationError(
            "expected a calibration trace and a test trace of different inputs, got the same "
            f"trace twice (checksum {identities['test']['checksum']}): the study would count "
            "its own calibration rows as test evidence. Pass the model's calibration and test "
            "traces (e.g. trace-<model>-calibration.pt and trace-<model>-test.pt)."
        )
    calibration_digests, test_digests = calibration.row_digests(), test.row_digests()
    shared = shared_rows(test_digests, calibration_digests)
    dropped = int(shared.sum())
    if dropped == 0:
        return test, 0, torch.ones(test.num_inputs, dtype=torch.bool)
    contained = bool(shared_rows(calibration_digests, test_digests).all())
    if dropped == test.num_inputs or contained:
        inside, outside = (
            ("test", "calibration")
            if dropped == test.num_inputs
            else (
                "calibration",
                "test",
            )
        )
        raise ValidationError(
            f"expected a calibration trace and a test trace of different inputs, got a {inside} "
            f"trace whose every row is also in the {outside} trace ({dropped} shared rows): the "
            "study would count calibration rows as test evidence. Pass traces of disjoint "
            "inputs."
        )
    warnings.warn(
        f"{dropped} of the test trace's {test.num_inputs} rows are also calibration rows: they "
        f"were dropped from the test trace, and the study's statements rest on the other "
        f"{test.num_inputs - dropped} test rows (and the calibration trace).",
        CertificateWarning,
        stacklevel=3,
    )
    return test.subset(~shared.to(test.logits.device)), dropped, ~shared.cpu()


def _groups(
    groups: tuple[Sequence[int] | Tensor, Sequence[int] | Tensor] | None,
    calibration: Trace,
    test: Trace,
) -> tuple[Tensor, Tensor] | None:
    """The group ids of both traces' rows, checked: one int per row, none in both traces."""
    if groups is None:
        return None
    if not (isinstance(groups, tuple) and len(groups) == 2):
        raise ValidationError(
            "expected groups as a pair (calibration rows' group ids, test rows' group ids), got "
            f"{type(groups).__name__}."
        )
    checked = []
    for role, ids, trace in (("calibration", groups[0], calibration), ("test", groups[1], test)):
        try:
            values = torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError):
            raise ValidationError(
                f"expected the {role} groups as integers, got {ids!r:.80}."
            ) from None
        if values.dim() != 1 or values.is_floating_point() or values.dtype == torch.bool:
            raise ValidationError(
                f"expected the {role} groups as a 1-D integer sequence, got {values.dtype} of "
                f"shape {tuple(values.shape)}."
            )
        if values.numel() != trace.num_inputs:
            raise ValidationError(
                f"expected one {role} group id per row ({trace.num_inputs}), got {values.numel()}."
            )
        checked.append(values.long().cpu())
    if bool(torch.isin(checked[0], checked[1]).any()):
        raise ValidationError(
            "a group has rows in both the calibration and the test trace: group ids must be "
            "unique across both (one article, one group, one side)."
        )
    return checked[0], checked[1]


def _identity(trace: Trace, role: str) -> dict[str, str]:
    """A trace's size, content checksum and metadata, as strings."""
    _check_trace(trace, role)
    return {
        "inputs": str(trace.num_inputs),
        "checksum": trace.content_digest()[:16],
        "meta": json.dumps(trace.meta, sort_keys=True),
    }


def _criteria(criteria: Sequence[str], manager: AdaptixPluginManager) -> tuple[str, ...]:
    if isinstance(criteria, str) or not isinstance(criteria, Sequence) or not criteria:
        raise ValidationError(
            f"expected a non-empty list of criterion names, got {criteria!r}. Pass e.g. "
            f"{list(DEFAULT_CRITERIA)}."
        )
    names = list(criteria)
    if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise ValidationError(f"expected distinct criterion names (str), got {names!r}.")
    for name in names:
        if name != GUARANTEE_ROW:
            _reading(name, manager)
    return tuple(names)


def _names(values: object, what: str, example: str, *, empty: bool = False) -> tuple[str, ...]:
    """``values`` as a tuple of distinct names (a non-empty one unless ``empty``)."""
    if (
        isinstance(values, str)
        or not isinstance(values, Sequence)
        or not (values or empty)
        or not all(isinstance(v, str) for v in values)
    ):
        raise ValidationError(
            f"expected {what} as a list of names, got {values!r}. Pass e.g. {example}."
        )
    names = tuple(values)
    if len(set(names)) != len(names):
        raise ValidationError(f"expected distinct {what}, got {list(names)!r}.")
    return names


def _calibrators(calibrators: Sequence[str], manager: AdaptixPluginManager) -> tuple[str, ...]:
    """Registered calibrator names (PluginError for an unknown one, listing the others)."""
    names = _names(calibrators, "calibrators", "['reliability', 'equal_mass']")
    for name in names:
        manager.calibrators.entry(name)
    return names


def _survivor_criteria(
    survivors: Sequence[str] | None, criteria: tuple[str, ...], manager: AdaptixPluginManager
) -> tuple[str, ...]:
    """The criteria to measure on survivor tables: studied ones whose score is a bin table."""
    if survivors is None:
        return tuple(name for name in DEFAULT_SURVIVORS if name in criteria)
    names = _names(survivors, "survivor criteria", "['pcee', 'pcee_lcb'] or []", empty=True)
    for name in names:
        if name not in criteria or name == GUARANTEE_ROW:
            raise ValidationError(
                f"expected survivor criteria among the studied criteria {list(criteria)} "
                f"(not '{GUARANTEE_ROW}'), got '{name}'. Add it to the criteria or drop it."
            )
        if not reads_bin_table(name, plugins=manager):
            raise ValidationError(
                f"expected survivor criteria whose score is a table of their calibration's "
                f"bins (pcee, pcee_ws, pcee_lcb), got '{name}': survivor calibration decides "
                "with that table."
            )
    return names


def _modes(
    criteria: tuple[str, ...],
    calibrators: tuple[str, ...],
    survivors: tuple[str, ...],
    bonferroni: bool,
    manager: AdaptixPluginManager,
) -> tuple[StudyMode, ...]:
    """Every mode of the study, in its order: per criterion, per calibrator, without and with
    the correction, on the paper's tables then on survivor tables."""
    modes: list[StudyMode] = []
    for name in criteria:
        if name == GUARANTEE_ROW or not manager.criteria.get(name).needs_calibration:
            modes.append(StudyMode(name, name))
            continue
        corrects = bonferroni and "bonferroni" in manager.criteria.get(name).Params.model_fields
        for calibrator in calibrators:
            for corrected in (False, True) if corrects else (False,):
                for counted in (False, True) if name in survivors else (False,):
                    modes.append(
                        StudyMode.of(name, calibrator, survivors=counted, bonferroni=corrected)
                    )
    return tuple(modes)


def _reading(name: str, manager: AdaptixPluginManager) -> Any:
    """The criterion's accuracy reading (PluginError if unknown, ValidationError if none)."""
    reading = manager.criteria.get(name).accuracy_reading
    if reading is None:
        raise ValidationError(
            f"expected criteria whose threshold reads as an accuracy target (or "
            f"'{GUARANTEE_ROW}'), got '{name}', which declares no accuracy_reading: a study of δ "
            "is undefined for it."
        )
    return reading


def _params(name: str, alpha: float, manager: AdaptixPluginManager) -> dict[str, Any]:
    """A criterion with an ``alpha`` parameter (``pcee_lcb``) takes the study's α."""
    if name == GUARANTEE_ROW:
        return {}
    return {"alpha": alpha} if "alpha" in manager.criteria.get(name).Params.model_fields else {}


def _numbers(values: Sequence[float], name: str, example: str) -> list[Any]:
    """``values`` as a non-empty list of distinct entries (each checked by the caller)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValidationError(
            f"expected {name} as a non-empty list of numbers, got {values!r}. Pass e.g. {example}."
        )
    return list(values)


def _deltas(deltas: Sequence[float]) -> tuple[float, ...]:
    values = [unit(d, "each target δ") for d in _numbers(deltas, "targets δ", "[0.8, 0.9]")]
    if len(set(values)) != len(values):
        raise ValidationError(f"expected distinct targets δ, got {list(deltas)!r}.")
    return tuple(sorted(values))


def _scales(scales: Sequence[float]) -> tuple[float, ...]:
    values = [
        real(v, "each logit scale", low=0.0, open_low=True)
        for v in _numbers(scales, "logit scales", "[1, 2, 3]")
    ]
    if len(set(values)) != len(values):
        raise ValidationError(f"expected distinct logit scales, got {list(scales)!r}.")
    return tuple(values)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


def _defined(value: float | None) -> float:
    return math.nan if value is None else value


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _scale_title(scale: float) -> str:
    return "natural logits" if scale == 1 else f"logits × {scale:g}"


__all__ = [
    "CERTIFIED_CRITERION",
    "DEFAULT_CALIBRATORS",
    "DEFAULT_CRITERIA",
    "DEFAULT_DELTAS",
    "DEFAULT_SCALES",
    "DEFAULT_SURVIVORS",
    "NOISE_Z",
    "PAPER_CALIBRATOR",
    "StudyConfig",
    "StudyMode",
    "StudyResult",
    "StudyRow",
    "log_study",
    "noise_band",
    "run_study",
    "split_indices",
]
