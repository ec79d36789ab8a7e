"""What the main job produces: one model's outcome, the runtime's measurements and the job's
result (`JobResult`), with the guarantee mode's and the survivor rows' points."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adaptix.components import AccuracyReading
    from adaptix.core.calibration import Calibration
    from adaptix.core.flops import FlopProfile
    from adaptix.core.trace import Trace
    from adaptix.experiment.config import AnalysedModel, JobConfig
    from adaptix.experiment.datasets import DataSource
    from adaptix.offline.control import ControlSummary
    from adaptix.offline.frontier import Frontier, FrontierPoint
    from adaptix.offline.policy import ExitPolicy
    from adaptix.offline.survivors import SurvivorCounts
    from adaptix.online.runtime import ExitTimes


@dataclass(frozen=True)
class CertifiedPoint:
    """The guarantee mode at one δ: the certified policy and what it realised on the test split.

    Attributes:
        delta: the target δ.
        policy: what `Certifier.early_accuracy` returned for δ (its certificate included).
        point: its simulation on the test split, labelled `GUARANTEE_ROW`.
    """

    delta: float
    policy: ExitPolicy
    point: FrontierPoint

    @property
    def certified(self) -> bool:
        """False when nothing could be certified for δ: every input goes to the last exit."""
        return self.policy.certificate is not None and self.policy.certificate.certified


@dataclass(frozen=True)
class SurvivorPanel:
    """The criteria with a bin table read on survivor bins, on one panel (natural logits or a
    stress), beside the paper's all-input bins (``PCEE.md``: survivor calibration).

    Each criterion whose threshold is the accuracy target itself and whose score is a table of
    its calibration's bins (`adaptix.offline.survivors.reads_bin_table`: pcee, pcee_ws, pcee_lcb) is
    calibrated on the calibration split with the panel's all-input bin edges, exit e counting
    only the inputs that the rule at δ sends on (one `calibrate_survivors` call for the whole
    δ grid), and read at each δ on its own survivor calibration on the test split.

    Attributes:
        counts: criterion -> its survivor counts over the δ grid.
        frontier: one point per (criterion, δ) on the test split, named by the criterion, at
            threshold δ.
        control: criterion -> its control over the grid, against the same oracle as the
            all-input rows.
        knob: criterion -> distinct policies over the grid on the test split.
    """

    counts: dict[str, SurvivorCounts]
    frontier: Frontier
    control: dict[str, ControlSummary]
    knob: dict[str, int]


@dataclass
class ModelOutcome:
    """Everything the job learned about one model."""

    config: AnalysedModel  # the vision job's ModelConfig, the LM job's ExitsConfig
    profile: FlopProfile
    exit_accuracy: list[float]
    calibration: Calibration
    calibration_path: Path
    frontier: Frontier
    stress: dict[float, Frontier]
    control: dict[str, dict[str, ControlSummary]]  # panel -> criterion -> summary
    trained_seconds: float | None
    cached: bool
    test_trace: Trace
    certified: dict[str, list[CertifiedPoint]]  # panel -> the guarantee mode per δ (or none)
    knob: dict[str, int]  # criterion (and the guarantee mode) -> distinct policies over δ
    trace_paths: tuple[Path, ...]  # the saved calibration and test traces
    # panel -> the criteria with a bin table on survivor bins (empty: sweep.survivors off)
    survivors: dict[str, SurvivorPanel] = field(default_factory=dict)

    @property
    def full_accuracy(self) -> float:
        """Accuracy of the last exit (the model at full depth)."""
        return self.exit_accuracy[-1]


@dataclass
class RuntimePoint:
    """A wall-clock measurement of the runner on the test split, in paired rounds
    (`adaptix.online.paired.time_paired`, as `adaptix.testing.speed` measures).

    Attributes:
        plain_seconds: median seconds of one plain-model pass over the timed inputs.
        runner_seconds: median seconds of one runner pass.
        realised_speedup: median over rounds of time(plain model) / time(runner), the plain
            model's time being the mean of its passes before and after the round.
        passes: passes over the inputs in every round.
        agrees_with_simulation: the runner's exits equal `simulate`'s exactly (an untimed pass).
    """

    model: str
    criterion: str
    threshold: float
    batch_size: int
    inputs: int  # the test inputs timed (the first ones)
    plain_seconds: float
    runner_seconds: float
    realised_speedup: float
    passes: int
    ideal_speedup: float
    time_ideal_speedup: float
    accuracy: float
    agrees_with_simulation: bool


@dataclass
class JobResult:
    """What `run_job` produced."""

    config: JobConfig
    models: dict[str, ModelOutcome]
    runtime: list[RuntimePoint]
    exit_times: ExitTimes | None  # per-block times of the runtime's model (None: not run)
    data: str  # the dataset and its split, in words (from what was loaded)
    hardware: str  # the machine, in words
    training_seconds: float  # wall-clock seconds spent training in this run (0: all cached)
    readings: dict[str, AccuracyReading | None]  # criterion -> its declared accuracy reading
    report: str
    output_dir: Path
    seconds: float
    tracking_uri: str | None = None
    tracking_failures: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    source: DataSource | None = None  # what was loaded: name, location, checksum, rows
