"""Measured compute: FLOPs of every block and exit head, counted by `torch.utils.flop_counter`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class FlopProfile:
    """FLOPs per input of each block and each exit head (averaged over the measured inputs).

    Attributes:
        blocks: FLOPs per input of block e.
        heads: FLOPs per input of head e (feature function included).
    """

    blocks: tuple[float, ...]
    heads: tuple[float, ...]

    @property
    def exit_costs(self) -> list[float]:
        """cost[e]: blocks 0..e plus every head evaluated on the way (0..e): cumulative."""
        total, costs = 0.0, []
        for block, head in zip(self.blocks, self.heads, strict=True):
            total += block + head
            costs.append(total)
        return costs

    @property
    def plain_cost(self) -> float:
        """The plain model a user would otherwise deploy: every block plus the final head only."""
        return sum(self.blocks) + self.heads[-1]

    def static_costs(self) -> list[float]:
        """Cost of the model truncated at exit e (blocks 0..e plus head e only)."""
        total, costs = 0.0, []
        for block, head in zip(self.blocks, self.heads, strict=True):
            total += block
            costs.append(total + head)
        return costs

    def __add__(self, other: FlopProfile) -> FlopProfile:
        return FlopProfile(
            tuple(a + b for a, b in zip(self.blocks, other.blocks, strict=True)),
            tuple(a + b for a, b in zip(self.heads, other.heads, strict=True)),
        )

    def scaled(self, factor: float) -> FlopProfile:
        """Every entry multiplied by ``factor`` (e.g. 1 / number of inputs)."""
        return FlopProfile(
            tuple(b * factor for b in self.blocks), tuple(h * factor for h in self.heads)
        )


class FlopMeter:
    """Counts the FLOPs of successive calls; ``with meter: ...`` then read `total`."""

    def __init__(self) -> None:
        # Imported here: torch.utils.flop_counter imports triton when it is installed, and
        # `import adaptix` must stay light.
        from torch.utils.flop_counter import FlopCounterMode

        self._mode: Any = FlopCounterMode(display=False)
        self.total = 0

    def __enter__(self) -> FlopMeter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        self.total = int(self._mode.get_total_flops())


def count_flops(fn: object, *args: object) -> tuple[object, int]:
    """Call ``fn(*args)`` under a FLOP counter; returns (result, FLOPs)."""
    with torch.inference_mode(), FlopMeter() as meter:
        result = fn(*args)  # type: ignore[operator]  # any callable
    return result, meter.total
