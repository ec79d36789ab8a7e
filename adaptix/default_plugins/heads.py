"""Built-in exit heads: ``linear`` and ``mlp``."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from adaptix.components import ExitHead, ParamsModel
from adaptix.hookspecs import hookimpl
from adaptix.plugins import Registrar


class Linear(ExitHead):
    """A single linear layer on the block's features."""

    name = "linear"
    description = "one linear layer"

    def build(self, in_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(in_features, num_classes)


class MLPParams(ParamsModel):
    """``hidden``: width of the hidden layer; ``dropout``: dropout before the output layer."""

    hidden: int = Field(default=256, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class MLP(ExitHead):
    """Linear → GELU → dropout → linear: a stronger head for weak early features."""

    name = "mlp"
    description = "two-layer perceptron with GELU"
    Params = MLPParams
    params: MLPParams

    def build(self, in_features: int, num_classes: int) -> nn.Module:
        hidden = self.params.hidden
        return nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.GELU(),
            nn.Dropout(self.params.dropout),
            nn.Linear(hidden, num_classes),
        )


@hookimpl
def adaptix_register_exit_heads(registry: Registrar[ExitHead]) -> None:
    """Register the built-in exit heads."""
    registry.add(Linear)
    registry.add(MLP)
