"""The per-exit quantities of ``PCEE.md``: probabilities, confidence, prediction, entropy, bins.

One copy of each definition: criteria, calibrators, the kernel reference and the tests all call
these, so the offline simulator, the runtime and the fused kernel cannot drift apart.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def probabilities(logits: Tensor) -> Tensor:
    """Softmax over the last dimension, computed in float32 (``PCEE.md``: p_e)."""
    return torch.softmax(logits.float(), dim=-1)


def confidence_and_prediction(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Max softmax probability (float32) and prediction (int64).

    The prediction is the argmax of the float32 logits, first index on ties: the argmax of p
    without the ties that rounding the probabilities to float32 can create between different
    logits (the fused kernel decides the same way).
    """
    return torch.softmax(logits.float(), dim=-1).amax(dim=-1), prediction(logits)


def prediction(logits: Tensor) -> Tensor:
    """The prediction alone (see `confidence_and_prediction`), without computing the softmax."""
    return torch.argmax(logits.float(), dim=-1)


def normalized_entropy(logits: Tensor) -> Tensor:
    """Softmax entropy over log C, in [0, 1] up to rounding (0 log 0 = 0; 0 when C = 1)."""
    num_classes = logits.shape[-1]
    z = logits.float()
    if num_classes == 1:
        return torch.zeros(z.shape[:-1], dtype=torch.float32, device=z.device)
    p = torch.softmax(z, dim=-1)
    # 0 log 0 = 0: where p underflows to 0, log p is -inf and the product would be NaN.
    plogp = torch.where(p > 0, p * torch.log_softmax(z, dim=-1), 0.0)
    return -plogp.sum(dim=-1) / math.log(num_classes)


def bin_index(confidence: Tensor, bins: int) -> Tensor:
    """bin(c) = min(floor(c · M), M - 1), computed in float32, as int64."""
    scaled = confidence.float() * float(bins)
    return torch.floor(scaled).long().clamp_(0, bins - 1)
