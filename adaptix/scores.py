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
    """Max softmax probability (float32) and argmax (int64, first index on ties)."""
    p = probabilities(logits)
    # torch.max's index is not documented to pick the first of tied maxima; argmax is.
    return p.amax(dim=-1), torch.argmax(p, dim=-1)


def normalized_entropy(logits: Tensor) -> Tensor:
    """Entropy of the softmax divided by log C, in [0, 1] (0 log 0 = 0; 0 when C = 1)."""
    num_classes = logits.shape[-1]
    p = probabilities(logits)
    if num_classes == 1:
        return torch.zeros(p.shape[:-1], dtype=torch.float32, device=p.device)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    return (entropy / math.log(num_classes)).clamp_(0.0, 1.0)


def bin_index(confidence: Tensor, bins: int) -> Tensor:
    """bin(c) = min(floor(c · M), M - 1), computed in float32, as int64."""
    scaled = confidence.float() * float(bins)
    return torch.floor(scaled).long().clamp_(0, bins - 1)
