"""The main job's configuration: a frozen pydantic model loaded from TOML or YAML.

Unknown keys are errors, and every error names its dotted path (``train.epochs``). Component
names (criteria, backbones, heads) are resolved, and their parameters validated, here, so that a
misspelt name fails before any training, listing the names that exist. The defaults are the job
the README runs: Fashion-MNIST, three MSDNet-style models, every criterion and the guarantee.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeAlias

import yaml
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from adaptix._frozen import FrozenModel
from adaptix.components import BackboneParts, build_params
from adaptix.errors import AdaptixError, ConfigError
from adaptix.experiment.datasets import check_data as check_data_sizes
from adaptix.plugins import AdaptixPluginManager, Registry, call_plugin, resolve_manager
from adaptix.scalars import (
    count_field,
    flag_field,
    integer_field,
    real_field,
    unit_field,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def _plugins(info: ValidationInfo) -> AdaptixPluginManager:
    """The manager names resolve with: the validation context's ``plugins``, else the default."""
    context = info.context if isinstance(info.context, dict) else {}
    return resolve_manager(context.get("plugins"))


def _refused(err: AdaptixError) -> PydanticCustomError:
    """An adaptix error as a pydantic line error, so that it carries its dotted path."""
    return PydanticCustomError("adaptix", "{message}", {"message": str(err)})


def _registered(
    registry: Callable[[AdaptixPluginManager], Registry[Any]],
) -> Callable[[str, ValidationInfo], str]:
    def check(name: str, info: ValidationInfo) -> str:
        try:
            registry(_plugins(info)).entry(name)
        except AdaptixError as err:
            raise _refused(err) from err
        return name

    return check


def _check_params(
    registry: Registry[Any], kind: str, name: str | None, params: dict[str, Any]
) -> dict[str, Any]:
    """``params`` checked against the Params model of the component ``name`` (None: the name
    itself failed, which is reported on its own)."""
    if name is None:
        return params
    try:
        entry = registry.entry(name)
        owner = f"{kind} '{name}'"
        call_plugin(entry, "Params", build_params, entry.component.Params, params, owner)
    except AdaptixError as err:
        raise _refused(err) from err
    return params


def _not_empty(value: tuple[Any, ...], info: ValidationInfo) -> tuple[Any, ...]:
    # A validator rather than min_length: pydantic's length check also fires, with a misleading
    # "0 items", when an item fails.
    if not value:
        raise ValueError(f"{info.field_name} needs at least one entry")
    return value


# Every number and flag of the configuration has one of these types, built from the one
# vocabulary of `adaptix.scalars`: a bool is never a number, a string is never coerced, a float
# is never a count, NaN and ±inf are refused. mypy reads them as the plain types they validate.
if TYPE_CHECKING:
    Seed: TypeAlias = int
    Count: TypeAlias = int
    AtLeastOne: TypeAlias = int
    AtLeastTen: TypeAlias = int
    Tokens: TypeAlias = int
    Real: TypeAlias = float
    Positive: TypeAlias = float
    NonNegative: TypeAlias = float
    Share: TypeAlias = float
    Level: TypeAlias = float
    OpenShare: TypeAlias = float
    PositiveShare: TypeAlias = float
    LearningRate: TypeAlias = float
    Flag: TypeAlias = bool
else:
    Seed = integer_field(low=0, high=2**63 - 1)
    Count = count_field()
    AtLeastOne = count_field(low=1)
    AtLeastTen = count_field(low=10)
    Tokens = integer_field(low=8, high=512)
    Real = real_field()
    Positive = real_field(low=0.0, open_low=True)
    NonNegative = real_field(low=0.0)
    Share = unit_field(open_low=False, open_high=False)  # [0, 1]
    Level = unit_field()  # (0, 1)
    OpenShare = unit_field(open_low=False)  # [0, 1)
    PositiveShare = unit_field(open_high=False)  # (0, 1]
    LearningRate = real_field(low=0.0, high=10.0, open_low=True)
    Flag = flag_field()
#: The job's parameters for criteria that ``sweep.params`` does not name. pcee_lcb with the
#: Bonferroni correction over the early exits' (E − 1) · M bins: adaptix's choice for the
#: per-bin mode, the one whose bounds on survivor bins together bound the early accuracy
#: (``PCEE.md``: survivor calibration; on the large model, worst shortfall 0 under logits × 2
#: and × 3 where the uncorrected per-bin bound fell 0.69 pt short).
JOB_CRITERION_PARAMS: dict[str, dict[str, Any]] = {"pcee_lcb": {"bonferroni": True}}
#: The longest δ grid a sweep takes: a tiny ``delta_step`` would otherwise hang the job.
MAX_DELTAS = 10_000


CriterionName = Annotated[str, AfterValidator(_registered(lambda m: m.criteria))]
BackboneName = Annotated[str, AfterValidator(_registered(lambda m: m.backbones))]
CalibratorName = Annotated[str, AfterValidator(_registered(lambda m: m.calibrators))]
HeadName = Annotated[str, AfterValidator(_registered(lambda m: m.exit_heads))]
KVStrategyName = Annotated[str, AfterValidator(_registered(lambda m: m.kv_strategies))]


class DataConfig(FrozenModel):
    """The dataset and its deterministic splits (see `adaptix.experiment.datasets`)."""

    dataset: Literal["fashion-mnist", "bbc-news"] = "fashion-mnist"
    directory: Path | None = Field(
        default=None,
        description="fashion-mnist: IDX directory (default: ADAPTIX_DATA_DIR or Debian's path)",
    )
    calibration_size: AtLeastTen = Field(
        default=10_000, description="fashion-mnist: held out of the 60k training images"
    )
    train_size: AtLeastTen | None = Field(
        default=None,
        description="training examples kept of those left after calibration (None: all); "
        "more than the data holds is an error",
    )
    test_size: AtLeastTen | None = Field(
        default=None,
        description="None: the whole test split of IDX data; a quarter of bbc-news; more than "
        "the data holds is an error",
    )
    tokenizer: str = Field(
        default="all-MiniLM-L6-v2",
        min_length=1,
        description="text datasets: the tokenizer's model directory, or all-MiniLM-L6-v2",
    )
    max_length: Tokens = Field(default=128, description="text: tokens per input (8 to 512)")
    seed: Seed = 0


class ModelConfig(FrozenModel):
    """One model of the family."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    backbone: BackboneName = Field(default="msdnet", validate_default=True)
    backbone_params: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    head: HeadName = Field(default="mlp", validate_default=True)
    head_params: dict[str, Any] = Field(default_factory=dict, validate_default=True)

    @field_validator("backbone_params")
    @classmethod
    def _backbone_accepts(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        backbones = _plugins(info).backbones
        return _check_params(backbones, "backbone", info.data.get("backbone"), value)

    @field_validator("head_params")
    @classmethod
    def _head_accepts(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        heads = _plugins(info).exit_heads
        return _check_params(heads, "exit head", info.data.get("head"), value)


#: The default family, validated with the rest of the configuration (so errors carry its path).
_DEFAULT_MODELS = tuple(
    {"name": size, "backbone_params": {"size": size, "pool": 3}, "head_params": {"hidden": 128}}
    for size in ("small", "medium", "large")
)


class TrainConfig(FrozenModel):
    """How each model is trained (see `adaptix.train_exits`); the defaults are the recipe
    measured for the Fashion-MNIST family (README, "The training recipe")."""

    mode: Literal["frozen", "joint"] = "joint"
    epochs: AtLeastOne = 6
    batch_size: AtLeastOne = 128
    lr: LearningRate = 1e-2
    weight_decay: NonNegative = 1e-4
    schedule: Literal["cosine", "onecycle"] = "onecycle"
    label_smoothing: OpenShare = 0.1
    augment: Flag = Field(
        default=False,
        description="random shifts of up to crop_pad pixels and horizontal flips (images only, "
        "mode joint)",
    )
    crop_pad: Count = 2
    flip: Share = 0.5
    loss_weights: tuple[NonNegative, ...] | None = Field(
        default=None,
        description="per-exit loss weights (None: all 1); one per exit of every model",
    )
    distillation: OpenShare = 0.0
    temperature: Positive = 2.0
    workers: AtLeastOne = Field(
        default=2,
        description="models trained at once, each in its own process on one thread",
    )
    seed: Seed = 0

    @field_validator("loss_weights")
    @classmethod
    def _weights(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and not value:
            raise ValueError("loss weights need one entry per exit, got none (None: all 1)")
        return value

    @model_validator(mode="after")
    def _augment_fits_mode(self) -> TrainConfig:
        if self.augment and self.mode == "frozen":
            raise ValueError(
                "augment needs mode 'joint': in the frozen mode the backbone's features are "
                "computed once, so an augmentation would never reach them"
            )
        return self


class SweepConfig(FrozenModel):
    """Criteria, the δ grid, the overconfidence stress and the survivor bins."""

    criteria: Annotated[tuple[CriterionName, ...], AfterValidator(_not_empty)] = Field(
        default=("confidence", "entropy", "patience", "pcee", "pcee_ws", "pcee_lcb"),
        validate_default=True,
    )
    # Quantile bins, 50 of them: measured on the large model (10,000 calibration inputs), pcee
    # then gives 50 distinct policies over the 50 δ (23 with 10 equal-width bins) and no
    # violation under logits × 2 and × 3 (worst shortfall 1.8 and 2.0 pt with 10 equal-width).
    calibrator: CalibratorName = Field(default="equal_mass", validate_default=True)
    bins: AtLeastOne = 50
    delta_min: Share = 0.5
    delta_max: Share = 0.99
    delta_step: PositiveShare = 0.01
    stress_scales: tuple[Positive, ...] = (2.0, 3.0)
    params: dict[CriterionName, dict[str, Any]] = Field(
        default_factory=dict,
        description="parameters per swept criterion (name -> its parameters), replacing the "
        "job's defaults for it (JOB_CRITERION_PARAMS: pcee_lcb with bonferroni=True); "
        "{'pcee_lcb': {}} sweeps the contract's uncorrected per-bin pcee_lcb",
    )
    survivors: Flag = Field(
        default=True,
        description="also read every swept criterion whose score is a table of its "
        "calibration's bins (pcee, pcee_ws, pcee_lcb) on survivor bins "
        "(adaptix.calibrate_survivors: the same bins, exit e counting only the calibration "
        "inputs that the rule at δ sends on), side by side with the paper's all-input bins",
    )

    @model_validator(mode="after")
    def _ordered(self) -> SweepConfig:
        if self.delta_min > self.delta_max:
            raise ValueError("delta_min must not exceed delta_max")
        count = round((self.delta_max - self.delta_min) / self.delta_step) + 1
        if count > MAX_DELTAS:
            raise ValueError(
                f"the δ grid from delta_min to delta_max by delta_step has {count} targets, "
                f"more than {MAX_DELTAS}: raise delta_step"
            )
        return self

    @field_validator("criteria")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"each criterion once, got {repeated} more than once")
        return value

    @field_validator("params")
    @classmethod
    def _params_accepted(
        cls, value: dict[str, dict[str, Any]], info: ValidationInfo
    ) -> dict[str, dict[str, Any]]:
        swept = info.data.get("criteria")
        criteria = _plugins(info).criteria
        for name, params in value.items():
            if swept is not None and name not in swept:
                raise ValueError(
                    f"params names criterion {name!r}, which sweep.criteria {list(swept)} does "
                    "not sweep"
                )
            _check_params(criteria, "criterion", name, params)
        return value

    def params_of(self, name: str) -> dict[str, Any]:
        """The parameters the job gives criterion ``name``: ``params[name]`` if given, else
        `JOB_CRITERION_PARAMS`' entry, else none (the criterion's own defaults)."""
        return dict(self.params.get(name, JOB_CRITERION_PARAMS.get(name, {})))

    @field_validator("stress_scales")
    @classmethod
    def _distinct_scales(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:
            raise ValueError(f"each logit scale once, got {repeated} more than once")
        return value

    def deltas(self) -> list[float]:
        """The δ grid, rounded to avoid float drift (0.5, 0.51, ..., 0.99)."""
        count = round((self.delta_max - self.delta_min) / self.delta_step) + 1
        return [round(self.delta_min + i * self.delta_step, 10) for i in range(count)]


#: The label of the guarantee's row in the control tables, the plots and the knob table.
GUARANTEE_ROW = "guarantee"


def survivor_row(criterion: str) -> str:
    """The label of ``criterion`` read on survivor bins (``sweep.survivors``) in the control
    tables, the plots and the knob table (MLflow metrics name it ``<criterion>.survivors``)."""
    return f"{criterion} (survivor bins)"


class GuaranteeConfig(FrozenModel):
    """The certified mode (`adaptix.Certifier`): for every δ of the grid, the cheapest threshold
    of ``criterion`` whose early accuracy ≥ δ is certified at level ``alpha`` on the calibration
    split, then simulated on the test split like every swept criterion."""

    enabled: Flag = True
    criterion: CriterionName = Field(default="confidence", validate_default=True)
    alpha: Level = 0.05


class TargetsConfig(FrozenModel):
    """The bar the report's summary checks the family against, each line met or missed.

    The largest model is "large", the smallest "small"; "with early exits" is ``criterion``'s
    frontier on the test split (None: ``pcee`` when it is swept, else the first swept
    criterion).
    """

    criterion: CriterionName | None = None
    final_accuracy: Share = Field(
        default=0.92, description="large at full depth reaches at least this"
    )
    gap_over_smallest: Share = Field(
        default=0.02, description="large beats small at full depth by at least this"
    )
    gain_at_smallest_cost: Share = Field(
        default=0.015,
        description="at small's cost, large with early exits beats small (and large "
        "truncated) by at least this",
    )
    full_accuracy_tolerance: Share = Field(
        default=0.002,
        description="large with early exits counts as reaching its full-depth accuracy within this",
    )
    full_accuracy_cost: PositiveShare = Field(
        default=0.6, description="... at no more than this share of its cost"
    )


class AnalysisSettings(Protocol):
    """What the analysis steps (`adaptix.experiment.analysis`, `adaptix.experiment.sweeps`)
    read of a job's configuration: both jobs (`JobConfig`, the language-model job's
    `adaptix.experiment.lm_config.LMJobConfig`) have these."""

    @property
    def output_dir(self) -> Path: ...

    @property
    def sweep(self) -> SweepConfig: ...

    @property
    def guarantee(self) -> GuaranteeConfig: ...


class AnalysedModel(Protocol):
    """What the analysis reads of the model it analyses: its name (files, runs, tables)."""

    @property
    def name(self) -> str: ...


class RuntimeConfig(FrozenModel):
    """Wall-clock measurement of the batched runtime."""

    enabled: Flag = True
    model: str | None = Field(default=None, description="default: the last (largest) model")
    criterion: CriterionName = Field(default="pcee", validate_default=True)
    thresholds: Annotated[tuple[Real, ...], AfterValidator(_not_empty)] = Field(
        default=(0.9, 0.95, 0.98), validate_default=True
    )
    batch_size: AtLeastOne = 256
    repeats: AtLeastOne = 2
    inputs: AtLeastOne | None = Field(
        default=2048,
        description="time at most this many test inputs, the first ones (None: the whole "
        "test split; a smaller split is timed whole, and the report says how many were "
        "timed); enough batches for a stable median, and the cached job stays fast",
    )

    @field_validator("thresholds")
    @classmethod
    def _criterion_accepts(
        cls, value: tuple[float, ...], info: ValidationInfo
    ) -> tuple[float, ...]:
        name = info.data.get("criterion")
        if name is None:
            return value
        try:
            entry = _plugins(info).criteria.entry(name)
            for threshold in value:
                call_plugin(
                    entry, "validate_threshold", entry.component.validate_threshold, threshold
                )
        except AdaptixError as err:
            raise _refused(err) from err
        return value


class TrackingConfig(FrozenModel):
    """MLflow tracking (default store: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."""

    enabled: Flag = True
    uri: str | None = Field(default=None, min_length=1)
    experiment: str = Field(default="adaptix", min_length=1)


class RayConfig(FrozenModel):
    """Tracing and sweeps on a Ray cluster (`adaptix.distributed`, ``pip install
    'adaptix[ray]'``): every model's calibration and test splits are traced on an actor pool of
    ``workers`` actors, and the sweeps are counted by shard and added on the driver. MLflow is
    written from the driver only. Image datasets only: text inputs (dicts of tensors) do not
    travel as one tensor column. The actors load each model's weights from
    ``output_dir/ray/model-<name>.pt``: on a cluster of several machines, ``output_dir`` must be
    on a file system every node reads.
    """

    address: str = Field(
        default="local",
        description='"local" starts a cluster of `workers` CPUs on this machine; "auto" joins '
        'the cluster this machine belongs to; "ray://host:port" connects to a remote '
        "cluster's client server (needs ray[client])",
    )
    workers: AtLeastOne = Field(default=2, description="actors that trace, one CPU each")
    batch_size: AtLeastOne = Field(default=256, description="rows per forward pass on an actor")

    @field_validator("address")
    @classmethod
    def _address_form(cls, value: str) -> str:
        if value in ("local", "auto") or (value.startswith("ray://") and len(value) > 6):
            return value
        raise ValueError('expected "local", "auto" or "ray://host:port" (a Ray client address)')


class JobConfig(FrozenModel):
    """Everything ``adaptix run`` does."""

    name: str = Field(default="fashion-mnist-pcee", min_length=1)
    seed: Seed = 0
    data: DataConfig = Field(default_factory=DataConfig)
    # Sections that name components default to raw values validated in place, so that a default
    # naming a blocked plugin is reported at its dotted path.
    models: Annotated[tuple[ModelConfig, ...], AfterValidator(_not_empty)] = Field(
        default=_DEFAULT_MODELS, validate_default=True
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: SweepConfig = Field(default={}, validate_default=True)
    guarantee: GuaranteeConfig = Field(default={}, validate_default=True)
    runtime: RuntimeConfig = Field(default={}, validate_default=True)
    targets: TargetsConfig = Field(default={}, validate_default=True)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig | None = Field(
        default=None, description="run tracing and sweeps on Ray (None: in this process)"
    )
    output_dir: Path = Path("adaptix-out")
    threads: AtLeastOne | None = Field(
        default=1,
        description="torch intra-op threads for the analysis and the timed runtime (None: "
        "torch's default). Training with workers uses one thread per model; tracing uses every "
        "core while no logging runs",
    )
    tune_cpu_allocator: Flag = Field(
        default=True,
        description="keep large freed CPU buffers for reuse (adaptix.tune_cpu_allocator): "
        "activations of big batches then stop page-faulting on every forward pass",
    )
    cache_dir: Path | None = Field(
        default=None, description="trained models (default: ADAPTIX_CACHE_DIR or .adaptix-cache)"
    )

    @field_validator("train")
    @classmethod
    def _weights_per_exit(cls, value: TrainConfig, info: ValidationInfo) -> TrainConfig:
        models = info.data.get("models")  # validated before train; absent if it failed
        if value.loss_weights is not None and models:
            _weights_fit(value.loss_weights, models, _plugins(info))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if self.train.augment and self.data.dataset != "fashion-mnist":
            raise ValueError(
                f"train.augment shifts and flips images; data.dataset {self.data.dataset!r} "
                "is not images: turn train.augment off"
            )
        if self.ray is not None and self.data.dataset != "fashion-mnist":
            raise ValueError(
                f"ray traces inputs that are one tensor per row (images); data.dataset "
                f"{self.data.dataset!r} gives dicts of token tensors: remove the ray section "
                "to run it in this process"
            )
        if self.targets.criterion not in (None, *self.sweep.criteria):
            raise ValueError(
                f"targets.criterion {self.targets.criterion!r} is not swept: add it to "
                f"sweep.criteria {list(self.sweep.criteria)}"
            )
        if self.runtime.model is not None and self.runtime.model not in names:
            raise ValueError(f"runtime.model {self.runtime.model!r} is not one of {names}")
        if self.guarantee.enabled and GUARANTEE_ROW in self.sweep.criteria:
            raise ValueError(
                f"sweep.criteria holds a criterion named {GUARANTEE_ROW!r}, the label of the "
                "guarantee's row: turn guarantee.enabled off or leave that criterion out"
            )
        sweep = self.sweep
        if self.guarantee.enabled and not 0 < sweep.delta_min <= sweep.delta_max < 1:
            raise ValueError(
                f"the guarantee certifies targets δ in (0, 1), got the grid {sweep.delta_min:g} "
                f"to {sweep.delta_max:g}: keep sweep.delta_min above 0 and sweep.delta_max "
                "below 1, or turn guarantee.enabled off"
            )
        return self

    def target_criterion(self) -> str:
        """The criterion the summary's targets read (see `TargetsConfig.criterion`)."""
        if self.targets.criterion is not None:
            return self.targets.criterion
        return "pcee" if "pcee" in self.sweep.criteria else self.sweep.criteria[0]

    def resolved_cache_dir(self) -> Path:
        """Where trained models are cached."""
        return self.cache_dir or Path(os.environ.get("ADAPTIX_CACHE_DIR", ".adaptix-cache"))


def exit_count(spec: ModelConfig, plugins: AdaptixPluginManager | None = None) -> int:
    """How many exits the model of ``spec`` has: one per block of its backbone, built (without
    weights or data) to count them.

    Raises:
        AdaptixError: the backbone cannot be built from its parameters.
    """
    entry = resolve_manager(plugins).backbones.entry(spec.backbone)
    params = build_params(
        entry.component.Params, spec.backbone_params, f"backbone '{spec.backbone}'"
    )
    parts = call_plugin(entry, "build", entry.component(params).build, None)
    if not isinstance(parts, BackboneParts):
        raise ConfigError(
            f"backbone '{spec.backbone}' returned {type(parts).__name__}, expected "
            "adaptix.components.BackboneParts."
        )
    return len(parts.blocks)


def _weights_fit(
    weights: tuple[float, ...], models: tuple[ModelConfig, ...], plugins: AdaptixPluginManager
) -> None:
    """ValueError unless ``weights`` has one entry per exit of every model (the training would
    refuse it after loading the data)."""
    counts = {}
    for spec in models:
        try:
            counts[spec.name] = exit_count(spec, plugins)
        except AdaptixError as err:
            raise ValueError(f"cannot count the exits of model {spec.name!r}: {err}") from err
    wrong = {name: n for name, n in counts.items() if n != len(weights)}
    if wrong:
        raise ValueError(
            f"loss_weights has {len(weights)} entries, but every model trains with one "
            f"weight per exit and the models have {counts} exits: give as many weights as "
            "exits (the same number for every model), or leave loss_weights out"
        )


def dotted_errors(err: ValidationError) -> str:
    """A pydantic error as lines ``  dotted.path: message (got value)``."""
    lines = []
    for error in err.errors():
        path = ".".join(str(part) for part in error["loc"]) or "(top level)"
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {path}: {error['msg']}{shown}")
    return "\n".join(lines)


def parse_config(
    data: dict[str, Any],
    source: str = "configuration",
    *,
    plugins: AdaptixPluginManager | None = None,
) -> JobConfig:
    """Validate a mapping into a `JobConfig`; `ConfigError` lists every problem by dotted path.

    Args:
        data: the configuration, as read from a file.
        source: what to call it in errors (the file's path).
        plugins: the manager that component names resolve with (default:
            `adaptix.plugins.default_plugin_manager`).
    """
    try:
        return JobConfig.model_validate(data, context={"plugins": plugins})
    except ValidationError as err:
        raise ConfigError(f"invalid {source}:\n{dotted_errors(err)}") from err


#: The shipped job configurations, one TOML file each: ``adaptix run --preset NAME``.
PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    """The names ``--preset`` takes (``fashion-mnist`` is the default job)."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    """The file of the shipped configuration ``name``.

    Raises:
        ConfigError: no preset of that name (the message lists them).
    """
    path = PRESETS_DIR / f"{name}.toml"
    if name not in preset_names():
        raise ConfigError(f"no preset named {name!r}; the presets are {preset_names()}.")
    return path


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    preset: str | None = None,
    plugins: AdaptixPluginManager | None = None,
    check_data: bool = True,
) -> JobConfig:
    """Load a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file, or the shipped ``preset``;
    neither gives the defaults (the ``fashion-mnist`` job).

    Component names resolve with ``plugins`` (see `parse_config`). With ``check_data`` the
    split sizes are then checked against the dataset's size, read without loading it
    (`adaptix.experiment.datasets.check_data`): everything the job would refuse is refused
    here, before any data loads or any model trains.

    Raises:
        ConfigError: both a path and a preset, an unknown preset, an invalid file, or (with
            ``check_data``) sizes the data cannot hold or data that is not there.
    """
    config = _read_config(path, preset, plugins)
    if check_data:
        check_data_sizes(config.data, str(path or f"preset {preset or 'fashion-mnist'}"))
    return config


def _read_config(
    path: str | os.PathLike[str] | None,
    preset: str | None,
    plugins: AdaptixPluginManager | None,
) -> JobConfig:
    data, source = read_mapping(path, preset)
    if data.get("kind") == "lm":
        raise ConfigError(
            f"{source} is a language-model job (kind = 'lm'): load it with "
            "adaptix.experiment.load_job_config, which reads either job."
        )
    if data.get("kind") == "classify":
        data = {k: v for k, v in data.items() if k != "kind"}
    return parse_config(data, source, plugins=plugins)


def read_mapping(
    path: str | os.PathLike[str] | None, preset: str | None
) -> tuple[dict[str, Any], str]:
    """The mapping at the top of a TOML or YAML file, or of the shipped ``preset`` (neither:
    an empty mapping, the defaults), and what to call it in errors.

    Raises:
        ConfigError: both a path and a preset, an unknown preset, a file that cannot be read
            or parsed, or one whose top is not a mapping.
    """
    if path is not None and preset is not None:
        raise ConfigError("pass a configuration file or a preset, not both.")
    if preset is not None:
        path = preset_path(preset)
    if path is None:
        return {}, "default configuration"
    source = Path(path)
    if source.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"expected a .toml, .yaml or .yml configuration, got {source.name}.")
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read configuration {source}: {err}") from err
    try:
        if source.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot parse configuration {source}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top of {source}, got {type(data).__name__}.")
    return data, str(source)
