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
from typing import Annotated, Any, Literal

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
from adaptix.components import build_params
from adaptix.errors import AdaptixError, ConfigError
from adaptix.plugins import AdaptixPluginManager, Registry, call_plugin, resolve_manager

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


CriterionName = Annotated[str, AfterValidator(_registered(lambda m: m.criteria))]
BackboneName = Annotated[str, AfterValidator(_registered(lambda m: m.backbones))]
CalibratorName = Annotated[str, AfterValidator(_registered(lambda m: m.calibrators))]
HeadName = Annotated[str, AfterValidator(_registered(lambda m: m.exit_heads))]


class DataConfig(FrozenModel):
    """Fashion-MNIST location and deterministic splits."""

    directory: Path | None = Field(
        default=None, description="IDX directory (default: ADAPTIX_DATA_DIR or Debian's path)"
    )
    calibration_size: int = Field(default=10_000, ge=10, description="held out of the 60k")
    train_size: int | None = Field(
        default=30_000,
        ge=10,
        description="training images drawn from the 50k left after calibration (None: all); "
        "30k keeps the default job within its 15-minute budget on two cores",
    )
    test_size: int | None = Field(default=None, ge=10, description="None: all 10,000")
    seed: int = 0


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
    {"name": size, "backbone_params": {"size": size}, "head_params": {"hidden": 128}}
    for size in ("small", "medium", "large")
)


class TrainConfig(FrozenModel):
    """How each model is trained (see `adaptix.train_exits`)."""

    mode: Literal["frozen", "joint"] = "joint"
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    distillation: float = Field(default=0.0, ge=0, lt=1)
    temperature: float = Field(default=2.0, gt=0)
    seed: int = 0


class SweepConfig(FrozenModel):
    """Criteria, the δ grid and the overconfidence stress."""

    criteria: Annotated[tuple[CriterionName, ...], AfterValidator(_not_empty)] = Field(
        default=("confidence", "entropy", "patience", "pcee", "pcee_ws", "pcee_lcb"),
        validate_default=True,
    )
    # Quantile bins, 50 of them: measured on the large model (10,000 calibration inputs), pcee
    # then gives 50 distinct policies over the 50 δ (23 with 10 equal-width bins) and no
    # violation under logits × 2 and × 3 (worst shortfall 1.8 and 2.0 pt with 10 equal-width).
    calibrator: CalibratorName = Field(default="equal_mass", validate_default=True)
    bins: int = Field(default=50, ge=1)
    delta_min: float = Field(default=0.5, ge=0, le=1)
    delta_max: float = Field(default=0.99, ge=0, le=1)
    delta_step: float = Field(default=0.01, gt=0, le=1)
    stress_scales: tuple[float, ...] = (2.0, 3.0)

    @model_validator(mode="after")
    def _ordered(self) -> SweepConfig:
        if self.delta_min > self.delta_max:
            raise ValueError("delta_min must not exceed delta_max")
        return self

    @field_validator("criteria")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"each criterion once, got {repeated} more than once")
        return value

    @field_validator("stress_scales")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(v <= 0 for v in value):
            raise ValueError("logit scales must be > 0")
        return value

    def deltas(self) -> list[float]:
        """The δ grid, rounded to avoid float drift (0.5, 0.51, ..., 0.99)."""
        count = round((self.delta_max - self.delta_min) / self.delta_step) + 1
        return [round(self.delta_min + i * self.delta_step, 10) for i in range(count)]


#: The label of the guarantee's row in the control tables, the plots and the knob table.
GUARANTEE_ROW = "guarantee"


class GuaranteeConfig(FrozenModel):
    """The certified mode (`adaptix.Certifier`): for every δ of the grid, the cheapest threshold
    of ``criterion`` whose early accuracy ≥ δ is certified at level ``alpha`` on the calibration
    split, then simulated on the test split like every swept criterion."""

    enabled: bool = True
    criterion: CriterionName = Field(default="confidence", validate_default=True)
    alpha: float = Field(default=0.05, gt=0, lt=1)


class RuntimeConfig(FrozenModel):
    """Wall-clock measurement of the batched runtime."""

    enabled: bool = True
    model: str | None = Field(default=None, description="default: the last (largest) model")
    criterion: CriterionName = Field(default="pcee", validate_default=True)
    thresholds: tuple[float, ...] = Field(default=(0.9, 0.95, 0.98), validate_default=True)
    batch_size: int = Field(default=256, ge=1)
    repeats: int = Field(default=2, ge=1)

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

    enabled: bool = True
    uri: str | None = None
    experiment: str = "adaptix"


class JobConfig(FrozenModel):
    """Everything ``adaptix run`` does."""

    name: str = "fashion-mnist-pcee"
    seed: int = 0
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
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: Path = Path("adaptix-out")
    threads: int | None = Field(
        default=1,
        ge=1,
        description="torch intra-op threads during the job (None: torch's default). One is the "
        "default: these small convolutions ran 3x faster per step on one thread than on two "
        "on the 2-core reference machine",
    )
    tune_cpu_allocator: bool = Field(
        default=True,
        description="keep large freed CPU buffers for reuse (adaptix.tune_cpu_allocator): "
        "activations of big batches then stop page-faulting on every forward pass",
    )
    cache_dir: Path | None = Field(
        default=None, description="trained models (default: ADAPTIX_CACHE_DIR or .adaptix-cache)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
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

    def resolved_cache_dir(self) -> Path:
        """Where trained models are cached."""
        return self.cache_dir or Path(os.environ.get("ADAPTIX_CACHE_DIR", ".adaptix-cache"))


def _dotted(err: ValidationError) -> str:
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
        raise ConfigError(f"invalid {source}:\n{_dotted(err)}") from err


def load_config(
    path: str | os.PathLike[str] | None = None, *, plugins: AdaptixPluginManager | None = None
) -> JobConfig:
    """Load a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file; None gives the defaults.

    Component names resolve with ``plugins`` (see `parse_config`).
    """
    if path is None:
        return parse_config({}, "default configuration", plugins=plugins)
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
    return parse_config(data, str(source), plugins=plugins)
