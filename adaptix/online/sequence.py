"""A sequence-level certificate for token exits, in CALM's form: the risk of a generated text
against the full model's (`certify_sequences`).

A token-level certificate (`adaptix.guarantee` on a token trace) bounds the share of early
tokens that agree with the full model *given the same prefix*; in free generation one token
that differs changes every later prefix, so it says nothing about a whole continuation. This
module certifies the continuation itself. Each calibration prompt is generated greedily twice,
at full depth and with the exit rule at a threshold, and scored by a loss in [0, 1]:

- ``"mismatch"``: the share of the ``max_new_tokens`` positions where the two continuations
  differ (a row that ends early counts its missing positions as different);
- ``"differs"``: 1 when the continuations differ anywhere, else 0.

Thresholds are tested in the given order, the safest first (Learn-then-Test with fixed-sequence
testing): at each, the Hoeffding–Bentkus p-value of "the mean loss is ≥ ε" (`adaptix.core.
bounds.hoeffding_bentkus_pvalue`); testing stops at the first p > α, and the last threshold
rejected is returned. Then, with probability ≥ 1 − α over the calibration prompts, the expected
loss of a new prompt drawn like them is ≤ ε at that threshold: finite-sample and
distribution-free, provided the prompts are exchangeable with the ones it is used on (distinct
texts, not pieces of one) and generation is run as certified (greedy, the same
``max_new_tokens``, exit rule and KV strategy). Each threshold tested costs one generation pass
over the prompts; testing stops at the first failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from adaptix.core.bounds import hoeffding_bentkus_pvalue
from adaptix.core.calibration import Calibration
from adaptix.errors import ValidationError
from adaptix.offline.policy import ExitPolicy, policy
from adaptix.online.decoder import DecoderModel
from adaptix.online.generate import EarlyExitGenerator
from adaptix.plugins import AdaptixPluginManager, resolve_manager
from adaptix.scalars import count, unit

SequenceLoss = Literal["mismatch", "differs"]
#: Thresholds tested by default, safest first (for criteria whose higher threshold exits less:
#: confidence, pcee, pcee_ws, pcee_lcb).
DEFAULT_THRESHOLDS = (0.99, 0.97, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)


@dataclass(frozen=True)
class SequenceCertificate:
    """What `certify_sequences` established.

    Attributes:
        criterion: the exit rule's criterion.
        threshold: the certified threshold (None: none was, the model runs at full depth).
        risk: ε, the bound on the expected loss.
        alpha: the level: the statement fails with probability ≤ α over the prompts.
        loss: ``"mismatch"`` or ``"differs"`` (module docstring).
        prompts: n, the calibration prompts.
        max_new_tokens: tokens generated per prompt.
        batch_size: rows per generation call.
        tested: (threshold, mean loss, p-value) of every threshold tested, in order.
        prompts_sha256: SHA-256 of the calibration prompts' token ids.
    """

    criterion: str
    threshold: float | None
    risk: float
    alpha: float
    loss: SequenceLoss
    prompts: int
    max_new_tokens: int
    batch_size: int
    tested: tuple[tuple[float, float, float], ...]
    prompts_sha256: str

    @property
    def certified(self) -> bool:
        """Whether a threshold was certified."""
        return self.threshold is not None

    @property
    def calibration_loss(self) -> float | None:
        """The mean loss of the certified threshold on the calibration prompts."""
        for threshold, mean, _ in self.tested:
            if threshold == self.threshold:
                return mean
        return None

    def statement(self) -> str:
        """The certificate in words."""
        what = (
            "the share of new tokens that differ from the full model's continuation"
            if self.loss == "mismatch"
            else "the probability that the continuation differs from the full model's"
        )
        if self.threshold is None:
            return (
                f"nothing certified: no threshold of {self.criterion!r} tested showed {what} "
                f"below {self.risk:g} at α = {self.alpha:g} on {self.prompts} prompts; generate "
                "at full depth."
            )
        return (
            f"with probability ≥ {1 - self.alpha:g} over the {self.prompts} calibration prompts, "
            f"{self.criterion} at threshold {self.threshold:g} keeps {what} ≤ {self.risk:g} in "
            f"expectation over prompts drawn like them (greedy, {self.max_new_tokens} new "
            "tokens; Learn-then-Test, fixed sequence, Hoeffding–Bentkus)."
        )


def sequence_losses(
    early: Sequence[Sequence[int]],
    full: Sequence[Sequence[int]],
    max_new_tokens: int,
    loss: SequenceLoss = "mismatch",
) -> np.ndarray:
    """Per prompt, the loss of an early-exit continuation against the full model's."""
    if len(early) != len(full):
        raise ValidationError(
            f"expected as many early-exit as full continuations, got {len(early)} and {len(full)}."
        )
    values = []
    for a, b in zip(early, full, strict=True):
        if loss == "differs":
            values.append(float(list(a) != list(b)))
            continue
        same = sum(x == y for x, y in zip(a, b, strict=False))
        values.append(1.0 - same / max_new_tokens)
    return np.asarray(values, dtype=np.float64)


def generate_all(
    generator: EarlyExitGenerator,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    eos_token_id: int | Sequence[int] | None = None,
) -> list[list[int]]:
    """Greedy continuations of every prompt, ``batch_size`` prompts per call."""
    tokens: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        out = generator.generate(
            prompts[start : start + batch_size],
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
        )
        tokens += out.tokens
    return tokens


def certify_sequences(
    model: DecoderModel,
    prompts: Sequence[Sequence[int]],
    criterion: str = "confidence",
    *,
    risk: float,
    alpha: float = 0.05,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    loss: SequenceLoss = "mismatch",
    max_new_tokens: int = 16,
    batch_size: int = 8,
    calibration: Calibration | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    kv: str = "deferred",
    plugins: AdaptixPluginManager | None = None,
    progress: bool = True,
    **params: Any,
) -> tuple[ExitPolicy | None, SequenceCertificate]:
    """Certify the exit rule's continuations against full depth's (module docstring).

    Args:
        model: the decoder with its exits.
        prompts: calibration prompts (token ids), one per text, exchangeable with the prompts
            the policy will serve, and disjoint from any data that chose ``thresholds``.
        criterion: the exit rule's criterion; ``params`` its parameters; ``calibration`` its
            calibration over the model's vocabulary when it reads one
            (`adaptix.vocabulary_calibration` turns a compact trace's into one).
        risk: ε in (0, 1), the bound on the expected loss.
        alpha: the level in (0, 1).
        thresholds: tested in this order, the safest first; testing stops at the first that
            cannot be certified.
        loss: ``"mismatch"`` or ``"differs"``.
        max_new_tokens: new tokens per prompt, as generation will run.
        batch_size: prompts per generation call.
        eos_token_id: as `EarlyExitGenerator.generate` (``[]``: no early end).
        kv: the KV strategy generation will use.

    Returns:
        (the certified policy, or None for full depth; the certificate).

    Raises:
        ValidationError: no prompts, risk or alpha outside (0, 1), an unknown loss, no
            thresholds, or what the generator refuses.
    """
    if len(prompts) == 0:
        raise ValidationError("expected at least one calibration prompt, got none.")
    risk = unit(risk, "risk")
    alpha = unit(alpha, "alpha")
    if loss not in ("mismatch", "differs"):
        raise ValidationError(f"expected loss 'mismatch' or 'differs', got {loss!r}.")
    if not thresholds:
        raise ValidationError("expected at least one threshold to test, got none.")
    batch_size = count(batch_size, "batch_size", low=1)
    max_new_tokens = count(max_new_tokens, "max_new_tokens", low=1)
    manager = resolve_manager(plugins)
    full = generate_all(
        EarlyExitGenerator(model, None, kv=kv, plugins=manager),
        prompts,
        max_new_tokens,
        batch_size,
        eos_token_id,
    )
    tested: list[tuple[float, float, float]] = []
    chosen: ExitPolicy | None = None
    bar = tqdm(thresholds, desc="sequence certificate", unit="threshold", disable=not progress)
    for threshold in bar:
        candidate = policy(criterion, threshold, calibration, plugins=manager, **params)
        early = generate_all(
            EarlyExitGenerator(model, candidate, kv=kv, plugins=manager),
            prompts,
            max_new_tokens,
            batch_size,
            eos_token_id,
        )
        mean = float(sequence_losses(early, full, max_new_tokens, loss).mean())
        p = float(hoeffding_bentkus_pvalue(mean, len(prompts), risk))
        tested.append((float(threshold), mean, p))
        bar.set_postfix(threshold=f"{threshold:g}", loss=f"{mean:.3f}", p=f"{p:.3g}")
        if p > alpha:
            break
        chosen = candidate
    certificate = SequenceCertificate(
        criterion=criterion,
        threshold=None if chosen is None else float(chosen.threshold),
        risk=risk,
        alpha=alpha,
        loss=loss,
        prompts=len(prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        tested=tuple(tested),
        prompts_sha256=_prompts_digest(prompts),
    )
    return chosen, certificate


def _prompts_digest(prompts: Sequence[Sequence[int]]) -> str:
    digest = hashlib.sha256()
    for row in prompts:
        digest.update(np.asarray(list(row), dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()


__all__ = [
    "DEFAULT_THRESHOLDS",
    "SequenceCertificate",
    "SequenceLoss",
    "certify_sequences",
    "generate_all",
    "sequence_losses",
]
