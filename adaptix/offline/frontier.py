"""`Frontier`: the compute-accuracy trade-off of a sweep, one `FrontierPoint` per (criterion,
threshold), as `adaptix.sweep` and `adaptix.offline.statistics.ThresholdCounts.points` give it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from adaptix.core.files import atomic_write


@dataclass(frozen=True)
class FrontierPoint:
    """One (criterion, threshold) point of a sweep, with the metrics of `SimulationResult`."""

    criterion: str
    threshold: float
    accuracy: float | None
    early_accuracy: float | None
    relative_cost: float
    mean_cost: float
    exit_histogram: tuple[float, ...]

    @property
    def early_exit_rate(self) -> float:
        """Share of inputs that left before the last exit."""
        return sum(self.exit_histogram[:-1])


class Frontier(Sequence[FrontierPoint]):
    """The compute-accuracy trade-off of a sweep: one `FrontierPoint` per (criterion, threshold)."""

    def __init__(self, points: Sequence[FrontierPoint], costs: Sequence[float]) -> None:
        self.points = list(points)
        self.costs = [float(c) for c in costs]

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: Any) -> Any:
        return self.points[index]

    def __iter__(self) -> Iterator[FrontierPoint]:
        return iter(self.points)

    def __repr__(self) -> str:
        return f"Frontier({len(self)} points, criteria={self.criteria()})"

    def criteria(self) -> list[str]:
        """The criteria in the sweep, in order of first appearance."""
        return list(dict.fromkeys(p.criterion for p in self.points))

    def of(self, criterion: str) -> list[FrontierPoint]:
        """The points of one criterion, in threshold order."""
        return [p for p in self.points if p.criterion == criterion]

    def records(self) -> list[dict[str, Any]]:
        """Flat dicts (histogram spread into ``exit_share_<e>`` columns), e.g. for pandas."""
        rows = []
        for point in self.points:
            row = asdict(point)
            histogram = row.pop("exit_histogram")
            row.update({f"exit_share_{e}": share for e, share in enumerate(histogram)})
            rows.append(row)
        return rows

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write `records` as CSV (empty cells for undefined accuracies), atomically.

        Raises:
            ValidationError: ``path`` is a directory or cannot be written (see
                `adaptix.core.files.atomic_write`); an existing file is then left as it was.
        """
        rows = self.records()
        fields = (
            list(rows[0]) if rows else [f.name for f in FrontierPoint.__dataclass_fields__.values()]
        )

        def write(handle: BinaryIO) -> None:
            text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            text.flush()
            text.detach()  # atomic_write closes the file itself

        return atomic_write(path, write, "frontier")
