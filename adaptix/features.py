"""Feature functions: what an exit head reads from a block's output (`BackboneParts.feature`).

Public building blocks for backbone plugins, built-in or third-party, so that a backbone that
hands its heads the CLS token or the masked mean of a transformer state uses the same module as
the built-in ``sequential`` backbone does.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

FeatureName = Literal["identity", "flatten", "avgpool", "cls", "mean"]


class TokenPool(nn.Module):
    """Features of a transformer state: the CLS token or the masked mean over tokens.

    The state is a tensor ``[n, T, d]`` or a dict with ``hidden`` and, optionally,
    ``attention_mask`` (``[n, T]``, 1 for real tokens).
    """

    def __init__(self, how: Literal["cls", "mean"]) -> None:
        super().__init__()
        self.how = how

    def forward(self, state: Any) -> Tensor:
        hidden = state["hidden"] if isinstance(state, dict) else state
        if self.how == "cls":
            return hidden[:, 0]
        mask = state.get("attention_mask") if isinstance(state, dict) else None
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def feature_module(name: FeatureName) -> nn.Module | None:
    """The feature function called ``name`` (None for identity)."""
    if name == "identity":
        return None
    if name == "flatten":
        return nn.Flatten()
    if name == "avgpool":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return TokenPool(name)


__all__ = ["FeatureName", "TokenPool", "feature_module"]
