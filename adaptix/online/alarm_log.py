"""Logging a `ShiftMonitor`'s alarm to a tracker (MLflow through `adaptix.tracking.Tracker`, or
any object with its methods): duck-typed, so the monitor imports no tracking library."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from adaptix.core.describe import describe_value
from adaptix.errors import ValidationError
from adaptix.online.shift_report import ShiftAlarm

if TYPE_CHECKING:
    from adaptix.tracking import Tracker

#: What a tracker must offer.
TRACKER_METHODS = ("start_run", "log_metrics", "log_artifact")


def check_tracker(tracker: object) -> None:
    """`ValidationError` unless ``tracker`` is None or has a `Tracker`'s logging methods."""
    needed = TRACKER_METHODS
    if tracker is not None and not all(callable(getattr(tracker, m, None)) for m in needed):
        raise ValidationError(
            f"expected tracker to be an adaptix.tracking.Tracker (or an object with "
            f"{', '.join(needed)}), got {describe_value(tracker)}. Build one: "
            "adaptix.tracking.Tracker('adaptix')."
        )


def log_alarm(tracker: Tracker, run_id: str | None, alarm: ShiftAlarm) -> None:
    """Log ``alarm`` to the run ``run_id``: its metrics (at step ``alarm.inputs``) and its
    report as the artifact ``shift-report.json`` (``run_id`` None: tracking is off)."""
    tracker.log_metrics(
        run_id,
        {
            "shift_alarm": 1.0,
            "shift_log_evalue": alarm.log_evalue,
            "shift_alarm_inputs": float(alarm.inputs),
        },
        step=alarm.inputs,
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shift-report.json"
        path.write_text(json.dumps(alarm.report.to_dict(), indent=1))
        tracker.log_artifact(run_id, path)
