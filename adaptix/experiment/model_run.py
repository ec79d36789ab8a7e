"""One model's MLflow run (the job's step 6), as the logging worker logs it: its params, metrics,
frontier points, certified policies, survivor-bin points and plots (`ModelRunLogger`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptix.experiment.config import GUARANTEE_ROW, ModelConfig, SweepConfig
from adaptix.experiment.results import ModelOutcome, RuntimePoint
from adaptix.plugins import AdaptixPluginManager
from adaptix.tracking import (
    Tracker,
    log_certified,
    log_frontier,
    log_survivors,
)


def log_datasets(tracker: Tracker, run: str | None, splits: dict[str, Any]) -> None:
    """The splits a run read, as MLflow dataset inputs (`Tracker.log_dataset`), from the
    provenance params in ``splits`` (`DataSource.params`; none there: nothing to record)."""
    if "data.sha256" not in splits:
        return
    for split in ("train", "calibration", "test"):
        tracker.log_dataset(
            run,
            name=f"{splits['data.source']} / {split} ({splits[f'data.{split}_rows']} rows)",
            location=splits["data.location"],
            digest=splits["data.sha256"],
            context=split,
        )


@dataclass
class ModelRunLogger:
    """Logs model runs under the job's parent run (in the logging worker, `adaptix.experiment.
    mlflow_session`): what every model's runs share.

    Attributes:
        tracker: the worker's own tracker.
        parent: the job's parent run (None: the tracker is disabled).
        splits: the params every run carries (the splits' sizes, the data's provenance).
        manager: the plugins the criteria resolve in.
        output_dir: where the model's plots are.
        sweep: the job's sweep settings, for each criterion's params (None: its defaults).
    """

    tracker: Tracker
    parent: str | None
    splits: dict[str, Any]
    manager: AdaptixPluginManager
    output_dir: Path
    sweep: SweepConfig | None = None

    def log_model(self, name: str, outcome: ModelOutcome, runtime: list[RuntimePoint]) -> None:
        """One model's run: its params, per-exit, control and knob metrics, its frontier points
        (with the speed-ups measured in ``runtime``), the guarantee mode's certified policies and
        the survivor-bin points of the natural panel, and its plots."""
        tracker = self.tracker
        spec = outcome.config
        if not isinstance(spec, ModelConfig):
            raise TypeError(f"expected a vision model's outcome, got one of {spec!r}")
        run = tracker.start_run(
            name,
            parent=self.parent,
            params={
                "backbone": spec.backbone,
                "backbone_params": json.dumps(spec.backbone_params),
                "head": spec.head,
                "calibration_checksum": outcome.calibration.checksum,
                **self.splits,
            },
        )
        log_datasets(tracker, run, self.splits)
        metrics = {f"exit_accuracy_{e}": a for e, a in enumerate(outcome.exit_accuracy)}
        metrics.update({f"exit_flops_{e}": c for e, c in enumerate(outcome.profile.exit_costs)})
        metrics["plain_flops"] = outcome.profile.plain_cost
        for panel, summaries in outcome.control.items():
            tag = panel.replace("logits ×", "x").replace(" ", "_")
            for criterion, s in summaries.items():
                metrics[f"{tag}.{criterion}.violation_rate"] = s.violation_rate
                metrics[f"{tag}.{criterion}.worst_shortfall"] = s.worst_shortfall
                metrics[f"{tag}.{criterion}.mean_regret"] = s.mean_regret
        for panel, points in outcome.certified.items():
            tag = panel.replace("logits ×", "x").replace(" ", "_")
            metrics[f"{tag}.{GUARANTEE_ROW}.uncertified"] = sum(not c.certified for c in points)
        for panel, survivors in outcome.survivors.items():
            tag = panel.replace("logits ×", "x").replace(" ", "_")
            for criterion, s in survivors.control.items():
                metrics[f"{tag}.{criterion}.survivors.violation_rate"] = s.violation_rate
                metrics[f"{tag}.{criterion}.survivors.worst_shortfall"] = s.worst_shortfall
                metrics[f"{tag}.{criterion}.survivors.mean_regret"] = s.mean_regret
        for criterion, count in outcome.knob.items():
            metrics[f"knob.{criterion}.distinct_policies"] = count
        natural_survivors = outcome.survivors.get("natural")
        if natural_survivors is not None:
            for criterion, count in natural_survivors.knob.items():
                metrics[f"knob.{criterion}.survivors.distinct_policies"] = count
        tracker.log_metrics(run, metrics)
        speedups: dict[tuple[str, float], dict[str, float | None]] = {
            (p.criterion, p.threshold): {
                "speedup_measured": p.realised_speedup,
                "speedup_ideal": p.ideal_speedup,
            }
            for p in runtime
        }
        log_frontier(
            outcome.frontier,
            tracker=tracker,
            parent=run,
            model=name,
            params=self.splits,
            calibration=outcome.calibration,
            extra_metrics=speedups,
            criterion_params=None
            if self.sweep is None
            else {c: self.sweep.params_of(c) for c in outcome.frontier.criteria()},
            plugins=self.manager,
        )
        natural = outcome.certified.get("natural", [])
        log_certified(
            [c.policy for c in natural],
            [c.point for c in natural],
            tracker=tracker,
            parent=run,
            model=name,
            params=self.splits,
        )
        if natural_survivors is not None:
            survivor_points = list(natural_survivors.frontier)
            log_survivors(
                [
                    natural_survivors.counts[p.criterion].policy(p.threshold, plugins=self.manager)
                    for p in survivor_points
                ],
                survivor_points,
                tracker=tracker,
                parent=run,
                model=name,
                # The bins' provenance: the all-input calibration whose edges they keep.
                params={**self.splits, "edges_checksum": outcome.calibration.checksum},
                plugins=self.manager,
            )
        for path in sorted(self.output_dir.glob(f"*-{name}.png")):
            tracker.log_artifact(run, path, "plots")
        tracker.end_run(run)
