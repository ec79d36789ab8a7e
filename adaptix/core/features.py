"""Feature functions: what an exit head reads from a block's output (`BackboneParts.feature`).

Public building blocks for backbone plugins, built-in or third-party, so that a backbone that
hands its heads the CLS token or the masked mean of a transformer state uses the same module as
the built-in ``sequential`` backbone does.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from adaptix.errors import ValidationError

FeatureName = Literal["identity", "flatten", "avgpool", "cls", "mean"]


class TokenPool(nn.Module):
    """Features of a transformer state: the CLS token or the masked mean over tokens.

    The state is a tensor ``[n, T, d]`` or a dict with ``hidden`` and, optionally,
    ``attention_mask`` (``[n, T]``, 1 for real tokens). For the mean, a ``[n, T]`` tensor under
    any other key is refused (`ValidationError`): it would be a mask silently ignored.
    """

    def __init__(self, how: Literal["cls", "mean"]) -> None:
        super().__init__()
        self.how = how

    def forward(self, state: Any) -> Tensor:
        hidden = state["hidden"] if isinstance(state, dict) else state
        if self.how == "cls":
            return hidden[:, 0]
        mask = state.get("attention_mask") if isinstance(state, dict) else None
        if mask is None and isinstance(state, dict):
            _refuse_unread_mask(state, hidden)
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _refuse_unread_mask(state: dict[str, Any], hidden: Tensor) -> None:
    """A ``[n, T]`` tensor under another key than ``attention_mask`` is almost surely a mask
    that the mean would silently ignore (averaging the padding in): refuse it."""
    for key, value in state.items():
        if key != "hidden" and isinstance(value, Tensor) and value.shape == hidden.shape[:2]:
            raise ValidationError(
                f"expected the token mask under the key 'attention_mask', got a [n, T] tensor "
                f"under {key!r}, which the masked mean would ignore (padding averaged in). "
                "Rename it 'attention_mask', or pass your own feature function."
            )


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
