"""Measured compute: FLOPs of every block and exit head, counted by `torch.utils.flop_counter`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adaptix.errors import ValidationError
from adaptix.scalars import real


@dataclass(frozen=True)
class FlopProfile:
    """FLOPs per input of each block and each exit head (averaged over the measured inputs).

    Attributes:
        blocks: FLOPs per input of block e.
        heads: FLOPs per input of head e (feature function included).

    Raises:
        ValidationError: unless there is one block and one head per exit (at least one exit),
            every entry a finite, non-negative number.
    """

    blocks: tuple[float, ...]
    heads: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.blocks or len(self.blocks) != len(self.heads):
            raise ValidationError(
                f"expected one block and one head FLOP count per exit (at least one exit), got "
                f"{len(self.blocks)} blocks and {len(self.heads)} heads. Measure them with "
                "MultiExitModel.flop_profile."
            )
        bad = [v for v in (*self.blocks, *self.heads) if not _is_flop_count(v)]
        if bad:
            raise ValidationError(
                f"expected finite, non-negative FLOP counts, got {bad[0]!r}. Measure them with "
                "MultiExitModel.flop_profile."
            )
        # numpy scalars and 0-d tensors are accepted; the profile holds plain floats.
        object.__setattr__(self, "blocks", tuple(real(v, "a FLOP count") for v in self.blocks))
        object.__setattr__(self, "heads", tuple(real(v, "a FLOP count") for v in self.heads))

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
        if len(self.blocks) != len(other.blocks):
            raise ValidationError(
                f"expected FLOP profiles of the same number of exits to add, got "
                f"{len(self.blocks)} and {len(other.blocks)}."
            )
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


def _is_flop_count(value: object) -> bool:
    """Whether ``value`` is a finite number >= 0 by adaptix's one rule (`adaptix.scalars`)."""
    try:
        real(value, "a FLOP count", low=0.0)
    except ValidationError:
        return False
    return True
