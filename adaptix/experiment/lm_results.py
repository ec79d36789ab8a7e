"""What the language-model job produces (`LMJobResult`): the model and data it read, with their
checksums, each exit configuration's analysis per target, the study, the generation timings and
the sample continuations."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from adaptix.experiment.lm_config import LMJobConfig, Target
    from adaptix.experiment.results import ModelOutcome
    from adaptix.experiment.study import StudyResult
    from adaptix.online.sequence import SequenceCertificate


@dataclass
class LMModel:
    """The decoder the job ran, and its provenance.

    Attributes:
        weights_sha256: SHA-256 of every weight exit logits depend on
            (`adaptix.online.lm_adapters.weights_digest`).
        file_sha256: SHA-256 of the file the model was converted from (SmolLM2's GGUF), if any.
        adapters_digest: SHA-256 of the trained exit adapters (None: no adapters).
    """

    description: str
    source: str
    num_layers: int
    vocab_size: int
    weights_sha256: str
    file_sha256: str | None
    adapters_digest: str | None = None


@dataclass
class LMData:
    """BBC News as the job read it: token rows of the calibration and test articles (the first
    ``tokens_per_article`` tokens of each), the adapters' train blocks, the articles per split
    and the SHA-256 of each split's texts and of the whole corpus."""

    calibration: Tensor
    test: Tensor
    train_blocks: Tensor
    articles: dict[str, int]
    sha256: dict[str, str]
    corpus_sha256: str
    location: str
    tokens_per_article: int

    def describe(self) -> str:
        """The data in words."""
        per = self.tokens_per_article - 1
        return (
            f"BBC News ({self.location}), split by article: {self.articles['train']} train "
            f"articles ({self.train_blocks.numel()} tokens for the adapters), "
            f"{self.calibration.shape[0]} calibration and {self.test.shape[0]} test articles "
            f"of at least {self.tokens_per_article} tokens ({per} labelled tokens each: "
            f"{self.calibration.shape[0] * per} and {self.test.shape[0] * per}); corpus sha256 "
            f"{self.corpus_sha256[:12]}"
        )


@dataclass(frozen=True)
class GenerationPoint:
    """One timed generation setting against full depth, on the same prompts, in paired rounds.

    Attributes:
        criterion: the exit rule, ``guarantee`` for the certified mode, or ``lossless`` for
            self-speculative decoding.
        delta: the target δ (None for ``lossless``).
        new_tokens: tokens generated in one pass.
        tokens_per_second: new tokens / the median seconds of one pass.
        full_tokens_per_second: the same for full depth, timed in the same rounds.
        speedup: median over rounds of time(full depth) / time(this), `adaptix.online.paired`.
        layers_per_token: mean layers run by a new token's own step (the first token of a row,
            from the prompt at full depth, left out); None for ``lossless``.
        identical_continuations: share of rows whose continuation equals full depth's.
        mean_agreeing_prefix: mean tokens before a row's first difference from full depth.
        acceptance_rate: drafted tokens the full model accepted (``lossless`` only).
    """

    exits: str
    criterion: str
    delta: float | None
    batch_size: int
    prompts: int
    new_tokens: int
    tokens_per_second: float | None
    full_tokens_per_second: float | None
    speedup: float | None
    layers_per_token: float | None
    identical_continuations: float
    mean_agreeing_prefix: float
    acceptance_rate: float | None
    rounds: int

    @property
    def label(self) -> str:
        """``criterion@δ`` (or ``lossless``)."""
        return self.criterion if self.delta is None else f"{self.criterion}@{self.delta:g}"

    def describe(self) -> str:
        """One line for the log."""
        speed = "n/a" if self.speedup is None else f"{self.speedup:.2f}x full depth"
        rate = "n/a" if self.tokens_per_second is None else f"{self.tokens_per_second:.1f}"
        return f"{self.label}, batch {self.batch_size}: {rate} tokens/s, {speed}"

    def metrics(self) -> dict[str, float]:
        """MLflow metrics, named ``generation.<criterion>[.delta_<δ>].batch_<b>.<metric>``."""
        delta = "" if self.delta is None else f".delta_{self.delta:g}"
        key = f"generation.{self.criterion}{delta}.batch_{self.batch_size}"
        values = {
            "tokens_per_second": self.tokens_per_second,
            "full_tokens_per_second": self.full_tokens_per_second,
            "speedup": self.speedup,
            "layers_per_token": self.layers_per_token,
            "identical_continuations": self.identical_continuations,
            "acceptance_rate": self.acceptance_rate,
        }
        return {f"{key}.{name}": v for name, v in values.items() if v is not None}


@dataclass(frozen=True)
class Sample:
    """One prompt continued at full depth and with early exits (greedy, decoded)."""

    prompt: str
    full: str
    early: str
    criterion: str
    delta: float
    layers_per_token: float
    identical: bool


@dataclass(frozen=True)
class SequenceResult:
    """The sequence-level certificate, and its rule measured on test prompts.

    Attributes:
        certificate: what `adaptix.online.sequence.certify_sequences` established on
            calibration prompts.
        test_loss: the certified rule's mean loss on ``test_prompts`` prompts from test
            articles (None: nothing certified).
        layers_per_token: the mean layers its new tokens ran there (the first left out).
    """

    certificate: SequenceCertificate
    test_loss: float | None
    test_prompts: int
    layers_per_token: float | None


@dataclass
class LMJobResult:
    """What `adaptix.experiment.lm_job.run_lm_job` produced.

    Attributes:
        outcomes: exit configuration -> target -> its analysis (the classification job's
            `ModelOutcome`: calibration, frontiers, control, certified points, knob).
        studies: ``"<target> x<scale>"`` -> the study by article.
    """

    config: LMJobConfig
    model: LMModel
    data: LMData
    outcomes: dict[str, dict[Target, ModelOutcome]]
    studies: dict[str, StudyResult]
    generation: list[GenerationPoint]
    samples: list[Sample]
    sequence: SequenceResult | None
    output_dir: Path
    seconds: float
    report: str
    tracking_uri: str | None = None
    parent_run_id: str | None = None
    tracking_failures: list[str] = field(default_factory=list)


__all__ = ["GenerationPoint", "LMData", "LMJobResult", "LMModel", "Sample", "SequenceResult"]
