"""The types shared by every exit-decision backend."""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import Tensor

ExitKind = Literal["confidence", "entropy", "table"]
"""How a head's logits become a score: see `adaptix.kernels.exit_decision_reference`."""

Backend = Literal["auto", "torch", "triton"]
"""Which implementation computes the decision: see `adaptix.kernels.exit_decision`."""


class ExitDecision(NamedTuple):
    """What one exit decided for each of N rows.

    Attributes:
        prediction: int64 [N], argmax of the logits (first index on ties, as `torch.argmax`).
        confidence: float32 [N], the largest softmax probability.
        score: float32 [N], the value compared with the threshold (depends on the kind).
        exit_mask: bool [N], True where the row leaves at this exit.
    """

    prediction: Tensor
    confidence: Tensor
    score: Tensor
    exit_mask: Tensor
