"""What a `ShiftMonitor` says: its report (`ShiftReport`, what moved), its alarm (`ShiftAlarm`)
and the warning an alarm raises (`ShiftWarning`). Result types: they neither count nor test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from adaptix.scalars import real


class ShiftWarning(UserWarning):
    """Warned when a `ShiftMonitor` raises an alarm."""


@dataclass(frozen=True)
class Move:
    """One category whose share moved: live against reference, with a two-proportion z."""

    what: str
    reference_share: float
    live_share: float
    z: float


@dataclass(frozen=True)
class ShiftReport:
    """What `ShiftMonitor.report` says: the test's state and what moved.

    Attributes:
        inputs: stream inputs of the test segment described (all since the last reset when
            the test does not restart).
        segment: which test segment, 1 for the first (see ``restart_every``).
        log_evalue: log E of the combined test (its current segment) at the last check (0
            before any).
        threshold: the current alarm line, log(1/α_j) (`segment_threshold`).
        alarmed: whether the monitor has alarmed since the last reset.
        alarm_inputs: the inputs counted when it alarmed (None: no alarm).
        bins: every exit-0 confidence bin, reference and live shares.
        exits: every exit, reference and live shares of the inputs leaving there.
        reach: per exit e, the bins of the inputs that reach exit e (exit 0 repeats ``bins``).
    """

    inputs: int
    segment: int
    log_evalue: float
    threshold: float
    alarmed: bool
    alarm_inputs: int | None
    bins: tuple[Move, ...]
    exits: tuple[Move, ...]
    reach: tuple[tuple[Move, ...], ...]

    def moved(self, z: float = 3.0) -> list[Move]:
        """The exit-0 bins, exits and reached bins whose |z| ≥ ``z``, largest first.

        Raises:
            ValidationError: ``z`` is not a real ≥ 0.
        """
        z = real(z, "z", low=0.0)
        every = [*self.bins, *self.exits, *(m for moves in self.reach[1:] for m in moves)]
        return sorted((m for m in every if abs(m.z) >= z), key=lambda m: -abs(m.z))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""

        def rows(moves: tuple[Move, ...]) -> list[dict[str, Any]]:
            return [m.__dict__.copy() for m in moves]

        return {
            "inputs": self.inputs,
            "segment": self.segment,
            "log_evalue": self.log_evalue,
            "threshold": self.threshold,
            "alarmed": self.alarmed,
            "alarm_inputs": self.alarm_inputs,
            "bins": rows(self.bins),
            "exits": rows(self.exits),
            "reach": [rows(moves) for moves in self.reach],
        }

    def __str__(self) -> str:
        state = f"ALARM at {self.alarm_inputs} inputs" if self.alarmed else "no alarm"
        lines = [
            f"shift monitor: segment {self.segment}, {self.inputs} inputs, "
            f"log E = {self.log_evalue:.2f} "
            f"(alarm at {self.threshold:.2f}), {state}",
        ]
        moved = self.moved()
        if not moved:
            lines.append("nothing moved by |z| >= 3")
        else:
            lines.append(f"{'moved':<22} {'reference':>9} {'live':>7} {'z':>7}")
            lines += [
                f"{m.what:<22} {m.reference_share:>9.3f} {m.live_share:>7.3f} {m.z:>7.1f}"
                for m in moved[:12]
            ]
        return "\n".join(lines)


@dataclass(frozen=True)
class ShiftAlarm:
    """What an alarm hands the ``on_alarm`` callback.

    Attributes:
        inputs: stream inputs counted when the alarm was raised.
        batches: batches counted by then.
        log_evalue: the combined test's log E (≥ log(1/α)).
        alpha: the false-alarm level.
        report: what moved.
    """

    inputs: int
    batches: int
    log_evalue: float
    alpha: float
    report: ShiftReport

    def message(self) -> str:
        """One line for a warning or a log."""
        moved = ", ".join(f"{m.what} ({m.z:+.1f} sd)" for m in self.report.moved()[:4])
        return (
            f"adaptix: the input distribution shifted (log E = {self.log_evalue:.1f} ≥ "
            f"{self.report.threshold:.1f} after {self.inputs} inputs; false-alarm "
            f"probability ≤ {self.alpha}). Moved: {moved or 'no single bin by 3 sd'}. The "
            "policy's calibration may no longer hold: recalibrate (ShiftMonitor.recalibrated_"
            "policy / recertify) and swap it in (EarlyExitRunner.swap_policy)."
        )


def moves(reference: Tensor, live: Tensor, names: list[str]) -> tuple[Move, ...]:
    """Per category: shares and the two-proportion z (0 where either side has no inputs)."""
    n_ref = float(reference.sum())
    n_live = float(live.sum())
    moves = []
    for name, r, s in zip(names, reference.tolist(), live.tolist(), strict=True):
        p_ref = r / n_ref if n_ref else 0.0
        p_live = s / n_live if n_live else 0.0
        pooled = (r + s) / (n_ref + n_live) if n_ref + n_live else 0.0
        spread = (
            math.sqrt(pooled * (1 - pooled) * (1 / n_ref + 1 / n_live)) if n_ref and n_live else 0.0
        )
        moves.append(Move(name, p_ref, p_live, (p_live - p_ref) / spread if spread > 0 else 0.0))
    return tuple(moves)
