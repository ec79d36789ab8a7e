"""The printed report: the paper's two questions answered in tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adaptix.control import best_accuracy_within, cheapest_reaching

if TYPE_CHECKING:
    from adaptix.components import AccuracyReading
    from adaptix.experiment.config import GuaranteeConfig
    from adaptix.experiment.job import JobResult, ModelOutcome


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _models_table(result: JobResult) -> str:
    rows = []
    for name, o in result.models.items():
        trained = "cache" if o.cached else f"{o.trained_seconds or 0:.0f} s"
        rows.append(
            [
                name,
                str(len(o.exit_accuracy)),
                f"{o.profile.plain_cost / 1e6:.2f}",
                " / ".join(f"{c / 1e6:.1f}" for c in o.profile.exit_costs),
                " / ".join(_pct(a) for a in o.exit_accuracy),
                trained,
            ]
        )
    return _table(
        [
            "model",
            "exits",
            "plain MFLOPs",
            "cost per exit (MFLOPs, heads incl.)",
            "accuracy per exit (%)",
            "trained",
        ],
        rows,
    )


def _control_table(
    outcome: ModelOutcome,
    deltas: list[float],
    readings: dict[str, AccuracyReading | None],
    guarantee: GuaranteeConfig,
) -> str:
    rows = []
    for panel, summaries in outcome.control.items():
        for criterion, s in summaries.items():
            rows.append(
                [
                    panel,
                    criterion,
                    _pct(s.violation_rate, 0),
                    _pct(s.worst_shortfall, 2),
                    "" if s.worst_shortfall == 0 else _pct(s.worst_shortfall_early_share, 2),
                    f"{s.mean_relative_cost:.3f}",
                    "n/a"
                    if s.mean_cost_vs_confidence is None
                    else f"{s.mean_cost_vs_confidence:.3f}",
                    f"{s.mean_regret:.3f}",
                ]
            )
    note = _reading_note(outcome, deltas, readings)
    if outcome.certified:
        note += " " + _guarantee_note(outcome, guarantee)
    return (
        note
        + "\n\n"
        + _table(
            [
                "logits",
                "criterion",
                "violation rate (%)",
                "worst shortfall (pt)",
                "early exits at worst δ (%)",
                "mean rel. cost",
                "cost / confidence(τ=δ)",
                "regret vs oracle",
            ],
            rows,
        )
    )


def _reading_note(
    outcome: ModelOutcome, deltas: list[float], readings: dict[str, AccuracyReading | None]
) -> str:
    """The δ grid and the thresholds each criterion is read at (its declared reading)."""
    criteria = dict.fromkeys(c for summaries in outcome.control.values() for c in summaries)
    thresholds = []
    for criterion in criteria:
        reading = readings.get(criterion)
        if reading is not None:
            kind = "the target itself" if reading.is_target else "naive reading"
            thresholds.append(
                f"{criterion} τ = {reading.threshold(deltas[0]):g} … "
                f"{reading.threshold(deltas[-1]):g} ({kind})"
            )
    grid = f"δ grid: {deltas[0]:g} to {deltas[-1]:g} ({len(deltas)} values)"
    if not thresholds:
        return f"{grid}; no swept criterion declares an accuracy reading, so none is tabled."
    return (
        f"{grid}, each criterion read at the threshold its accuracy reading gives for δ: "
        f"{'; '.join(thresholds)}."
    )


def _guarantee_note(outcome: ModelOutcome, guarantee: GuaranteeConfig) -> str:
    """What the guarantee row certifies, in one δ's own words, and how many δ it could not."""
    natural = next(iter(outcome.certified.values()))
    example = min(natural, key=lambda c: abs(c.delta - 0.9))
    certificate = example.policy.certificate
    statement = (
        "" if certificate is None else f" At δ = {example.delta:g}: {certificate.statement()}"
    )
    uncertified = ", ".join(
        f"{panel} {sum(not c.certified for c in points)}"
        for panel, points in outcome.certified.items()
    )
    return (
        f"The guarantee row certifies, for each δ, the cheapest threshold of "
        f"{guarantee.criterion} whose early accuracy is ≥ δ with probability ≥ "
        f"{1 - guarantee.alpha:g} over the calibration split (Learn-then-Test, α = "
        f"{guarantee.alpha:g}), and simulates that policy on the test split.{statement} "
        f"δ left uncertified (every input then goes to the last exit), of {len(natural)}: "
        f"{uncertified}."
    )


def _knob_table(result: JobResult) -> str:
    """Distinct policies over the δ grid, per criterion (rows) and model (columns)."""
    names = list(result.models)
    criteria = list(dict.fromkeys(c for o in result.models.values() for c in o.knob))
    rows = [[c, *(str(result.models[n].knob.get(c, "n/a")) for n in names)] for c in criteria]
    return _table(["criterion", *(f"{n}: distinct policies" for n in names)], rows)


def _scale_table(result: JobResult) -> tuple[str, list[str]]:
    names = list(result.models)
    large_name = names[-1]
    large = result.models[large_name]
    truncated = list(zip(large.profile.static_costs(), large.exit_accuracy, strict=True))
    criteria = large.frontier.criteria()
    targets = [c for c in criteria if (reading := result.readings.get(c)) and reading.is_target]
    curves = {
        c: [(p.mean_cost, p.accuracy) for p in large.frontier.of(c) if p.accuracy is not None]
        for c in criteria
    }
    rows, verdicts = [], []
    for name in names[:-1]:
        small = result.models[name]
        budget, target = small.profile.plain_cost, small.full_accuracy
        trunc_acc = best_accuracy_within(truncated, budget)
        trunc_cost = cheapest_reaching(truncated, target)
        for c in criteria:
            acc = best_accuracy_within(curves[c], budget)
            cost = cheapest_reaching(curves[c], target)
            rows.append(
                [
                    name,
                    f"{budget / 1e6:.2f}",
                    _pct(target),
                    f"{large_name} + {c}",
                    _pct(acc),
                    _pct(trunc_acc),
                    "n/a" if cost is None else f"{cost / budget:.2f}×",
                    "n/a" if trunc_cost is None else f"{trunc_cost / budget:.2f}×",
                ]
            )
        for c in targets:
            acc = best_accuracy_within(curves[c], budget)
            beats_small = acc is not None and acc > target
            beats_trunc = acc is not None and (trunc_acc is None or acc > trunc_acc)
            gain = "n/a" if acc is None else f"{100 * (acc - target):+.1f} pt"
            verdicts.append(
                f"- vs {name} at its cost ({budget / 1e6:.2f} MFLOPs): {large_name} + {c} "
                f"{_pct(acc)} % against {_pct(target)} % ({gain}); truncated {large_name} "
                f"{_pct(trunc_acc)} %. Claim "
                + ("**holds**" if beats_small and beats_trunc else "**does not hold**")
                + (
                    " (beats the smaller model"
                    + (" and" if beats_trunc else " but not")
                    + " the static truncation)"
                    if beats_small
                    else ""
                )
                + "."
            )
    table = _table(
        [
            "smaller model",
            "its MFLOPs",
            "its accuracy (%)",
            "large model policy",
            "accuracy at equal cost (%)",
            f"{large_name} truncated, same budget (%)",
            "cost at equal accuracy",
            "truncated: cost at equal accuracy",
        ],
        rows,
    )
    return table, verdicts


def _runtime_table(result: JobResult) -> str:
    if not result.runtime:
        return "(runtime measurement turned off)"
    rows = [
        [
            p.model,
            p.criterion,
            f"{p.threshold:g}",
            str(p.batch_size),
            f"{p.plain_seconds:.3f}",
            f"{p.runner_seconds:.3f}",
            f"{p.realised_speedup:.2f}×",
            f"{p.ideal_speedup:.2f}×",
            f"{p.realised_speedup / p.ideal_speedup:.2f}",
            _pct(p.accuracy),
            "yes" if p.agrees_with_simulation else "NO",
        ]
        for p in result.runtime
    ]
    return _table(
        [
            "model",
            "criterion",
            "δ",
            "batch",
            "plain s",
            "runner s",
            "realised",
            "ideal",
            "realised/ideal",
            "accuracy (%)",
            "runner = simulate",
        ],
        rows,
    )


def render_report(result: JobResult) -> str:
    """The report as Markdown (also printed by ``adaptix run``)."""
    config = result.config
    deltas = config.sweep.deltas()
    large_name = list(result.models)[-1]
    parts = [
        f"# adaptix report: {config.name}",
        "",
        "## Models (test split)",
        _models_table(result),
        "",
        f"## (a) Control: does δ deliver early accuracy ≥ δ? ({large_name}, test split)",
        _control_table(result.models[large_name], deltas, result.readings, config.guarantee),
        "",
    ]
    for name in list(result.models)[:-1]:
        control = _control_table(result.models[name], deltas, result.readings, config.guarantee)
        parts += [f"### Control on {name}", control, ""]
    parts += [
        f"## The knob: distinct policies over δ = {deltas[0]:g} … {deltas[-1]:g} "
        f"({len(deltas)} values; test split, natural logits)",
        "Two values of δ are one policy when they send every test input to the same exit; "
        f"{len(deltas)} distinct policies is the finest knob the grid can show. A rule that "
        "picks the cheapest policy meeting δ meets every δ up to the first exit's accuracy by "
        "sending every input there, so all those δ are one policy: the hindsight oracle's row "
        "(the cheapest confidence threshold meeting δ on the test split itself) shows how fine "
        "such a rule's knob can be on this data.",
        "",
        _knob_table(result),
        "",
    ]
    table, verdicts = _scale_table(result)
    parts += [
        f"## (b) Scale: {large_name} with early exits against smaller models and static "
        "truncation (test split)",
        table,
        "",
        *verdicts,
        "",
        "## Batched runtime: real wall-clock speed-ups (test split)",
        _runtime_table(result),
        "",
        f"Outputs in {result.output_dir}: report.md, frontier-*.csv, calibration-*.json, "
        "trace-*-calibration.pt, trace-*-test.pt, control-*.png, reliability-*.png, "
        "accuracy-vs-flops.png.",
    ]
    if result.tracking_uri:
        parts.append(
            f"MLflow: {result.tracking_uri} (run `mlflow ui --backend-store-uri "
            f"{result.tracking_uri}`)"
        )
    if result.tracking_failures:
        parts.append("MLflow could not record everything:")
        parts += [f"- {failure}" for failure in result.tracking_failures]
    if result.seconds:
        parts.append(f"Job time: {result.seconds:.0f} s.")
    return "\n".join(parts) + "\n"
