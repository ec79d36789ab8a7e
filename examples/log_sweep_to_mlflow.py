"""Calibrate, sweep thresholds, and log the frontier and its figures to MLflow.

Run: .venv/bin/python examples/log_sweep_to_mlflow.py [TRACKING_URI] [FIGURE_DIR]

TRACKING_URI defaults to ``sqlite:///mlflow.db`` (a file in the working directory) and
FIGURE_DIR to ``figures``. The traces are synthetic (adaptix.testing.synthetic_trace); with a real
model, build them with ``model.trace(...)`` on a held-out calibration split and a test split.
Needs ``pip install 'adaptix[mlflow]'``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import adaptix
from adaptix.experiment import plots
from adaptix.testing import synthetic_trace
from adaptix.tracking import Tracker, log_frontier

CRITERIA = ["confidence", "entropy", "pcee", "pcee_ws"]
SEED = 0


def main(tracking_uri: str, figure_dir: Path) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    calibration_trace = synthetic_trace(2000, num_exits=4, num_classes=5, seed=SEED)
    test_trace = synthetic_trace(2000, num_exits=4, num_classes=5, seed=SEED + 1)
    calibration = adaptix.calibrate(calibration_trace)
    grid = [round(0.50 + 0.01 * i, 2) for i in range(50)]  # δ (or τ) = 0.50, 0.51, ..., 0.99
    frontier = adaptix.sweep(test_trace, CRITERIA, grid, calibration=calibration)

    control = {
        name: [(p.threshold, p.early_accuracy) for p in frontier.of(name)]
        for name in ("confidence", "pcee", "pcee_ws")
    }
    # The synthetic trace's costs are 1..E per input; call them MFLOPs for the figure.
    flops = {
        name: [(1e6 * p.mean_cost, p.accuracy or 0.0) for p in frontier.of(name)]
        for name in frontier.criteria()
    }
    static = [
        (
            1e6 * cost,
            float((test_trace.logits[:, e].argmax(1) == test_trace.labels).double().mean()),
        )
        for e, cost in enumerate(frontier.costs)
    ]
    figures = [
        plots.plot_control(control, figure_dir / "control.png", title="Control of early accuracy"),
        plots.plot_accuracy_vs_flops(
            figure_dir / "accuracy_vs_flops.png",
            models={"synthetic, full depth": static[-1]},
            truncated={"fixed exit": static},
            frontiers=flops,
            title="Accuracy against compute (synthetic trace)",
        ),
        plots.plot_reliability(
            calibration, figure_dir / "reliability.png", title="Reliability of each exit"
        ),
    ]

    tracker = Tracker("adaptix-example", tracking_uri)
    sizes = {"seed": SEED, "calibration_size": len(calibration_trace), "test_size": len(test_trace)}
    started = time.perf_counter()
    with tracker.run("synthetic-sweep", params=sizes) as parent:
        run_ids = log_frontier(
            frontier,
            tracker=tracker,
            parent=parent,
            model="synthetic",
            params=sizes,
            calibration=calibration,
            progress=True,
        )
        for figure in figures:
            tracker.log_artifact(parent, figure, "figures")
    elapsed = time.perf_counter() - started

    if tracker.failures:
        print("tracking failed, nothing more was logged:", *tracker.failures, sep="\n  ")
        return
    print(f"logged {len(run_ids)} runs in {elapsed:.1f} s ({len(run_ids) / elapsed:.1f} runs/s)")
    print(f"figures: {', '.join(str(f) for f in figures)}")
    print(f"browse them with:\n  mlflow ui --backend-store-uri {tracking_uri}")


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "sqlite:///mlflow.db",
        Path(sys.argv[2] if len(sys.argv) > 2 else "figures"),
    )
