"""The job's figures: each model's control and reliability plots, and the family's accuracy
against FLOPs."""

from __future__ import annotations

from pathlib import Path

from adaptix.experiment.config import survivor_row
from adaptix.experiment.plots import plot_accuracy_vs_flops, plot_control_panels, plot_reliability
from adaptix.experiment.results import JobResult, ModelOutcome


def write_model_plots(name: str, outcome: ModelOutcome, out: Path) -> None:
    """One model's control and reliability plots (written as soon as it is analysed, so that
    its MLflow run can carry them)."""
    panels: dict[str, dict[str, list[tuple[float, float | None]]]] = {}
    for panel, summaries in outcome.control.items():
        rows = {**summaries}
        if panel in outcome.survivors:
            rows.update(
                {
                    survivor_row(criterion): summary
                    for criterion, summary in outcome.survivors[panel].control.items()
                }
            )
        panels[panel] = {
            row: [(d, v[0]) for d, v in summary.per_delta.items()] for row, summary in rows.items()
        }
    plot_control_panels(
        panels,
        out / f"control-{name}.png",
        title=f"{name}: realised early accuracy against the target δ (test split)",
    )
    plot_reliability(
        outcome.calibration,
        out / f"reliability-{name}.png",
        title=f"{name}: reliability per exit (calibration split)",
    )


def write_family_plot(result: JobResult) -> None:
    """Accuracy against FLOPs: every model, its truncations and the largest one's frontiers."""
    out = result.output_dir
    largest = list(result.models)[-1]
    big = result.models[largest]
    frontiers = {}
    for criterion in big.frontier.criteria():
        points = sorted(
            (p.mean_cost, p.accuracy) for p in big.frontier.of(criterion) if p.accuracy is not None
        )
        frontiers[f"{largest} + {criterion}"] = points
    truncated = {
        name: list(zip(o.profile.static_costs(), o.exit_accuracy, strict=True))
        for name, o in result.models.items()
    }
    plot_accuracy_vs_flops(
        out / "accuracy-vs-flops.png",
        models={n: (o.profile.plain_cost, o.full_accuracy) for n, o in result.models.items()},
        truncated={f"{n} truncated at exit e": pts for n, pts in truncated.items()},
        frontiers=frontiers,
        title="Accuracy against compute per input (test split)",
    )
