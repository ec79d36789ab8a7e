"""The per-exit quantities of ``PCEE.md``: probabilities, confidence, prediction, entropy, bins.

One copy of each definition: criteria, calibrators, the kernel reference and the tests all call
these, so the offline simulator, the runtime and the fused kernel cannot drift apart.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def probabilities(logits: Tensor) -> Tensor:
    """Softmax over the last dimension, computed in float32 (``PCEE.md``: p_e)."""
    return torch.softmax(logits.float(), dim=-1)


def confidence(logits: Tensor) -> Tensor:
    """The largest softmax probability (``PCEE.md``: c_e), float32; NaN where the softmax is
    undefined (a NaN or +inf logit, or every logit -inf)."""
    return probabilities(logits).amax(dim=-1)


def confidence_and_prediction(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Max softmax probability (float32) and prediction (int64).

    The prediction is the argmax of the float32 logits, first index on ties: the argmax of p
    without the ties that rounding the probabilities to float32 can create between different
    logits (the fused kernel decides the same way).
    """
    return confidence(logits), prediction(logits)


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


def bin_index(confidence: Tensor, bins: int, lookup: Tensor | None = None) -> Tensor:
    """The confidence bin of each entry, int64, on the confidence's device.

    Equal-width bins (``lookup`` None): bin(c) = min(floor(c · M), M - 1), computed in float32
    (``PCEE.md``). Bins with edges (``lookup``: the float32 ``[M]`` lookup of their edges, from
    `float32_edges`): bin m holds the c with edges[m] <= c < edges[m + 1], the last bin closed
    at 1, which is the number of lookup entries at or below c. A NaN confidence (an undefined
    softmax) gets M, a bin that no table has: readers never let it exit.

    `adaptix.Calibration.bin_index` picks the bins of a calibration; read bins through it.
    """
    if lookup is not None:
        return torch.bucketize(confidence.float(), lookup, right=True)
    scaled = confidence.float() * float(bins)
    # clamp keeps NaN, which then becomes M; float32 holds every bin number (M <= 2**24) exactly.
    index = torch.floor(scaled).clamp_(0.0, bins - 1.0)
    return index.nan_to_num_(nan=float(bins)).long()


def bin_edges(bins: int) -> Tensor:
    """The float32 lookup of M equal-width bins: ``bin_index(c, M, bin_edges(M))`` equals
    ``bin_index(c, M)`` for every float32 c in [0, 1] and NaN.

    Entry k - 1 (k = 1 … M - 1) is the smallest float32 c with float32(c · M) >= k; a final +inf
    entry sends NaN (which compares False with every entry) to bin M.
    """
    scale = np.float32(bins)
    k = np.arange(1, bins, dtype=np.float32)  # exact: bins <= 2**24
    edges = (np.arange(1, bins, dtype=np.float64) / bins).astype(np.float32)
    # Step down while the float32 product (the very rounding `bin_index` does) still reaches k,
    # then up until it does: a few ulp at most, done for every edge at once.
    for toward, reaches in ((np.float32(-1.0), True), (np.float32(2.0), False)):
        moving = (edges * scale >= k) == reaches
        while moving.any():
            edges = np.where(moving, np.nextafter(edges, toward), edges)
            moving = (edges * scale >= k) == reaches
    return torch.from_numpy(np.append(edges, np.float32(np.inf)).astype(np.float32))


def float32_edges(edges: Tensor) -> Tensor:
    """The float32 lookup of bins given by their edges: float32 ``[..., M]`` from ``[..., M + 1]``.

    The M - 1 interior edges, each rounded *up* to float32, then +inf. For every float32 c,
    ``c >= lookup[k]`` exactly when ``float64(c) >= edges[k + 1]``, so `bin_index` against the
    lookup places c exactly as the float64 edges do; +inf sends NaN to bin M.
    """
    interior = edges[..., 1:-1].double()
    lookup = interior.float()
    above = torch.nextafter(lookup, torch.full_like(lookup, math.inf))
    lookup = torch.where(lookup.double() < interior, above, lookup)
    tail = torch.full((*lookup.shape[:-1], 1), math.inf, device=lookup.device)
    return torch.cat([lookup, tail], dim=-1)
