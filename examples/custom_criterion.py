"""Write a third-party exit criterion, register it, check it, and use it like a built-in.

Run: .venv/bin/python examples/custom_criterion.py

A packaged plugin declares an entry point instead of calling `register` (see
plugins/adaptix-example, the template to copy).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

import adaptix
from adaptix.components import ExitCriterion, ParamsModel
from adaptix.core.scores import probabilities
from adaptix.testing import check_criterion


class TopKParams(ParamsModel):
    """``k``: how many top classes share the mass."""

    k: int = Field(default=2, ge=1)


class TopKMass(ExitCriterion):
    """Exit when the k most likely classes hold at least τ of the probability mass."""

    name = "topk_mass"
    description = "probability mass of the top-k classes >= τ"
    Params = TopKParams
    params: TopKParams

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        k = min(self.params.k, logits.shape[-1])
        return probabilities(logits).topk(k, dim=-1).values.sum(dim=-1), state


class MyPlugin:
    """The plugin object: one hook that registers the criterion."""

    @adaptix.hookimpl
    def adaptix_register_criteria(self, registry: Any) -> None:
        registry.add(TopKMass)


def main() -> None:
    plugins = adaptix.get_plugin_manager()
    plugins.register(MyPlugin(), name="my-plugin")
    check_criterion("topk_mass", plugins=plugins)  # the contract every component must meet
    print("criteria:", plugins.criteria.names())

    torch.manual_seed(0)
    logits = torch.randn(2000, 4, 10) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1)
    labels = logits[:, -1].argmax(-1)
    trace = adaptix.Trace(logits, labels, costs=[1.0, 2.0, 3.0, 4.0])
    policy = adaptix.policy("topk_mass", 0.9, plugins=plugins, k=3)
    result = adaptix.simulate(trace, policy)
    print(f"{policy}: relative cost {result.relative_cost:.3f}, accuracy {result.accuracy:.3f}")
    frontier = adaptix.sweep(trace, {"topk_mass": {"k": 3}}, [0.5, 0.7, 0.9], plugins=plugins)
    for point in frontier:
        print(f"  τ={point.threshold:.1f}: relative cost {point.relative_cost:.3f}")


if __name__ == "__main__":
    main()
