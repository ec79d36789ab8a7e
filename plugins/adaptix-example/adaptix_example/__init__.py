"""adaptix-example: the ``margin`` exit criterion, and a template for third-party plugins.

``margin`` exits when the top-1 softmax probability beats the runner-up by at least τ in [0, 1]:
a small margin means the head hesitates between two classes even when its top probability is
high. The criterion is registered through the ``adaptix_register_criteria`` hook; the
``[project.entry-points.adaptix]`` table of ``pyproject.toml`` is how adaptix finds this module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import adaptix
from adaptix.components import ExitCriterion
from adaptix.core.scores import probabilities
from adaptix.plugins import Registrar


class Margin(ExitCriterion):
    """Exit when the top-1 minus top-2 softmax probability (float32) is at least τ.

    With a single class the runner-up has probability 0, so the margin is 1.
    """

    name = "margin"
    description = "top-1 minus top-2 softmax probability >= τ"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        # A zero column stands in for the runner-up when there is one class; with two or more
        # it never changes the top two values (probabilities are >= 0).
        padded = torch.nn.functional.pad(probabilities(logits), (0, 1))
        top = padded.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1], state


@adaptix.hookimpl
def adaptix_register_criteria(registry: Registrar[ExitCriterion]) -> None:
    """Register ``margin``; called once when adaptix builds its registries."""
    registry.add(Margin)
