"""The main job's configuration: a frozen pydantic model loaded from TOML or YAML.

Unknown keys are errors, and every error names its dotted path (``train.epochs``). The defaults
are the job the README runs: Fashion-MNIST, three MSDNet-style models, every criterion.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adaptix.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Frozen):
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


class ModelConfig(_Frozen):
    """One model of the family."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    backbone: str = "msdnet"
    backbone_params: dict[str, Any] = Field(default_factory=dict)
    head: str = "mlp"
    head_params: dict[str, Any] = Field(default_factory=dict)


def _default_models() -> tuple[ModelConfig, ...]:
    return tuple(
        ModelConfig(name=size, backbone_params={"size": size}, head_params={"hidden": 128})
        for size in ("small", "medium", "large")
    )


class TrainConfig(_Frozen):
    """How each model is trained (see `adaptix.train_exits`)."""

    mode: Literal["frozen", "joint"] = "joint"
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    distillation: float = Field(default=0.0, ge=0, lt=1)
    temperature: float = Field(default=2.0, gt=0)
    seed: int = 0


class SweepConfig(_Frozen):
    """Criteria, the δ grid and the overconfidence stress."""

    criteria: tuple[str, ...] = ("confidence", "entropy", "patience", "pcee", "pcee_ws")
    bins: int = Field(default=10, ge=1)
    delta_min: float = Field(default=0.5, ge=0, le=1)
    delta_max: float = Field(default=0.99, ge=0, le=1)
    delta_step: float = Field(default=0.01, gt=0, le=1)
    stress_scales: tuple[float, ...] = (2.0, 3.0)

    @model_validator(mode="after")
    def _ordered(self) -> SweepConfig:
        if self.delta_min > self.delta_max:
            raise ValueError("delta_min must not exceed delta_max")
        return self

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


class RuntimeConfig(_Frozen):
    """Wall-clock measurement of the batched runtime."""

    enabled: bool = True
    model: str | None = Field(default=None, description="default: the last (largest) model")
    criterion: str = "pcee"
    thresholds: tuple[float, ...] = (0.9, 0.95, 0.98)
    batch_size: int = Field(default=256, ge=1)
    repeats: int = Field(default=2, ge=1)


class TrackingConfig(_Frozen):
    """MLflow tracking (default store: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."""

    enabled: bool = True
    uri: str | None = None
    experiment: str = "adaptix"


class JobConfig(_Frozen):
    """Everything ``adaptix run`` does."""

    name: str = "fashion-mnist-pcee"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    models: tuple[ModelConfig, ...] = Field(default_factory=_default_models, min_length=1)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
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
    def _unique_models(self) -> JobConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if self.runtime.model is not None and self.runtime.model not in names:
            raise ValueError(f"runtime.model {self.runtime.model!r} is not one of {names}")
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


def parse_config(data: dict[str, Any], source: str = "configuration") -> JobConfig:
    """Validate a mapping into a `JobConfig`; `ConfigError` lists every problem by dotted path."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid {source}:\n{_dotted(err)}") from err


def load_config(path: str | os.PathLike[str] | None = None) -> JobConfig:
    """Load a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file; None gives the defaults."""
    if path is None:
        return JobConfig()
    source = Path(path)
    if source.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"expected a .toml, .yaml or .yml configuration, got {source.name}.")
    try:
        text = source.read_text()
    except OSError as err:
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
    return parse_config(data, str(source))
