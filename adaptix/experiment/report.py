"""The printed report: the paper's two questions answered in tables."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from adaptix.experiment.config import GUARANTEE_ROW, survivor_row
from adaptix.offline.control import best_accuracy_within, cheapest_reaching

if TYPE_CHECKING:
    from adaptix.components import AccuracyReading
    from adaptix.experiment.config import GuaranteeConfig
    from adaptix.experiment.results import JobResult, ModelOutcome


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table whose columns line up in plain text too (cells padded to the widest;
    columns whose cells all read as numbers are right-aligned)."""
    columns = list(zip(header, *rows, strict=True)) if rows else [(h,) for h in header]
    widths = [max(3, *(len(cell) for cell in column)) for column in columns]
    numeric = [bool(rows) and all(_numeric(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        ("-" * (w - 1) + ":") if right else "-" * w
        for w, right in zip(widths, numeric, strict=True)
    ]
    lines = [line(header), "| " + " | ".join(rule) + " |"]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    """Whether a cell reads as a number (a figure, a ratio such as 1.20×, or n/a)."""
    text = cell.strip().rstrip("×%").replace(" / ", "").replace(" pt", "").replace("+", "")
    if text in ("n/a", ""):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    return markdown_table(
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


def control_table(
    outcome: ModelOutcome,
    deltas: list[float],
    readings: dict[str, AccuracyReading | None],
    guarantee: GuaranteeConfig,
) -> str:
    rows = []
    for panel, summaries in outcome.control.items():
        survivors = outcome.survivors.get(panel)
        named = {**summaries}
        if survivors is not None:
            named.update({survivor_row(c): s for c, s in survivors.control.items()})
        for row, s in named.items():
            rows.append(
                [
                    panel,
                    row,
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
    if outcome.survivors:
        note += " " + _survivor_note(outcome)
    return (
        note
        + "\n\n"
        + markdown_table(
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


def _survivor_note(outcome: ModelOutcome) -> str:
    """What the survivor rows read, and how many calibration inputs reach the last exit."""
    natural = next(iter(outcome.survivors.values()))
    counts = next(iter(natural.counts.values()), None)
    if counts is None:
        return "No swept criterion reads a bin table, so no row reads survivor bins."
    example = min(counts.deltas, key=lambda d: abs(d - 0.9))
    reached = counts.calibration(example).counts.sum(dim=1)
    return (
        f"Rows '… (survivor bins)' read, at each δ, the criterion's survivor calibration at δ "
        "(adaptix.calibrate_survivors on the calibration split, one call per criterion for the "
        "whole grid): the same bins, exit e counting only the calibration inputs that the rule "
        f"at δ sends on from the exits before (for {counts.criterion} at δ = {example:g}, "
        f"{int(reached[0])} inputs at the first exit, {int(reached[-1])} reach the last); the "
        "other rows of the same criteria count every calibration input at every exit, as the "
        "paper does."
    )


def _knob_table(result: JobResult) -> str:
    """Distinct policies over the δ grid, per criterion (rows) and model (columns), those on
    survivor bins after the rest."""
    names = list(result.models)
    knobs = {
        name: {
            **o.knob,
            **(
                {survivor_row(c): k for c, k in o.survivors["natural"].knob.items()}
                if "natural" in o.survivors
                else {}
            ),
        }
        for name, o in result.models.items()
    }
    criteria = list(dict.fromkeys(c for knob in knobs.values() for c in knob))
    rows = [[c, *(str(knobs[n].get(c, "n/a")) for n in names)] for c in criteria]
    return markdown_table(["criterion", *(f"{n}: distinct policies" for n in names)], rows)


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
    table = markdown_table(
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


def _runtime_note(result: JobResult) -> str:
    """What the two ideals mean, and the measured time and FLOP share of every block."""
    times = result.exit_times
    if times is None or not result.runtime:
        return ""
    model = result.models[result.runtime[0].model]
    flops = model.profile.exit_costs
    plain = model.profile.plain_cost
    block_flops = [flops[0], *(b - a for a, b in itertools.pairwise(flops))]
    time_share = " / ".join(
        _pct((b + h) / times.plain, 0) for b, h in zip(times.block, times.head, strict=True)
    )
    flop_share = " / ".join(_pct(f / plain, 0) for f in block_flops)
    return (
        f"Timed on the first {result.runtime[0].inputs} test inputs in batches of "
        f"{result.runtime[0].batch_size} (median of {result.config.runtime.repeats} paired rounds "
        "of the runner, each between two passes of the plain model, as adaptix.testing.speed "
        "times; realised = the median of the rounds' ratios). "
        "Ideal (FLOPs) is the plain model's FLOPs over the policy's mean FLOPs per input; ideal "
        "(time) weighs each exit by the measured time of its blocks and heads at batch "
        f"{times.batch_size} (per input, best of {result.config.runtime.repeats}), since on a "
        "CPU early blocks cost more time than their share of the FLOPs. Share of the plain "
        f"model per exit (block and head), {model.config.name}: time {time_share} %; FLOPs "
        f"{flop_share} %."
    )


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
            f"{p.time_ideal_speedup:.2f}×",
            f"{p.realised_speedup / p.ideal_speedup:.2f}",
            f"{p.realised_speedup / p.time_ideal_speedup:.2f}",
            _pct(p.accuracy),
            "yes" if p.agrees_with_simulation else "NO",
        ]
        for p in result.runtime
    ]
    return markdown_table(
        [
            "model",
            "criterion",
            "δ",
            "batch",
            "plain s",
            "runner s",
            "realised",
            "ideal (FLOPs)",
            "ideal (time)",
            "realised / ideal (FLOPs)",
            "realised / ideal (time)",
            "accuracy, timed inputs (%)",
            "runner = simulate",
        ],
        rows,
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _summary(result: JobResult) -> list[str]:
    """The two claims, one line each with their numbers, then every target met or missed."""
    config, targets = result.config, result.config.targets
    criterion = config.target_criterion()
    names = list(result.models)
    large = result.models[names[-1]]
    lines = []
    control = large.control.get("natural", {}).get(criterion)
    if control is not None:
        deltas = config.sweep.deltas()
        missed = round(control.violation_rate * len(deltas))
        stressed = [
            f"{panel}: {round(s.violation_rate * len(deltas))}"
            for panel, summaries in large.control.items()
            if panel != "natural" and (s := summaries.get(criterion)) is not None
        ]
        guaranteed = large.control.get("natural", {}).get(GUARANTEE_ROW)
        lines.append(
            f"- **Control.** On {names[-1]}, {criterion} at δ = {deltas[0]:g} … "
            f"{deltas[-1]:g} missed δ (early accuracy below the target) at {missed} of "
            f"{len(deltas)} δ on the natural logits (worst shortfall "
            f"{_pct(control.worst_shortfall, 2)} pt)"
            + (f"; under overconfidence, {'; '.join(stressed)}" if stressed else "")
            + (
                f"; the guarantee mode missed at {round(guaranteed.violation_rate * len(deltas))}"
                f" of {len(deltas)} (worst {_pct(guaranteed.worst_shortfall, 2)} pt)"
                if guaranteed is not None
                else ""
            )
            + "."
        )
    if len(names) < 2:
        return [*lines, "- **Scale.** One model only: nothing to compare."]
    small = result.models[names[0]]
    frontier = [
        (p.mean_cost, p.accuracy) for p in large.frontier.of(criterion) if p.accuracy is not None
    ]
    truncated = list(zip(large.profile.static_costs(), large.exit_accuracy, strict=True))
    budget = small.profile.plain_cost
    at_small = best_accuracy_within(frontier, budget)
    truncated_at_small = best_accuracy_within(truncated, budget)
    wanted = large.full_accuracy - targets.full_accuracy_tolerance
    reach = cheapest_reaching(frontier, wanted)
    share = None if reach is None else reach / large.profile.plain_cost
    gain = None if at_small is None else at_small - small.full_accuracy
    gain_truncated = (
        None if at_small is None or truncated_at_small is None else at_small - truncated_at_small
    )
    lines.append(
        f"- **Scale.** At {names[0]}'s cost ({budget / 1e6:.2f} MFLOPs), {names[-1]} + "
        f"{criterion} reaches {_pct(at_small, 2)} % against {names[0]}'s "
        f"{_pct(small.full_accuracy, 2)} % ({_pt(gain)}) and {names[-1]} truncated "
        f"{_pct(truncated_at_small, 2)} % ({_pt(gain_truncated)}); it reaches its own "
        f"full-depth accuracy ({_pct(large.full_accuracy, 2)} %, within "
        f"{100 * targets.full_accuracy_tolerance:g} pt) at "
        + ("no swept point" if share is None else f"{share:.2f} of its cost")
        + "."
    )
    gap = large.full_accuracy - small.full_accuracy
    checks = [
        (
            f"{names[-1]} at full depth ≥ {_pct(targets.final_accuracy)} %",
            f"{_pct(large.full_accuracy, 2)} %",
            large.full_accuracy >= targets.final_accuracy,
        ),
        (
            f"{names[-1]} beats {names[0]} at full depth by ≥ "
            f"{100 * targets.gap_over_smallest:g} pt",
            _pt(gap),
            gap >= targets.gap_over_smallest,
        ),
        (
            f"at {names[0]}'s cost, {names[-1]} + {criterion} beats {names[0]} by ≥ "
            f"{100 * targets.gain_at_smallest_cost:g} pt",
            _pt(gain),
            gain is not None and gain >= targets.gain_at_smallest_cost,
        ),
        (
            f"... and beats {names[-1]} truncated at that cost",
            _pt(gain_truncated),
            at_small is not None and (gain_truncated is None or gain_truncated > 0),
        ),
        (
            f"{names[-1]} + {criterion} within {100 * targets.full_accuracy_tolerance:g}"
            f" pt of its full-depth accuracy at ≤ {targets.full_accuracy_cost:g} of its cost",
            "n/a" if share is None else f"{share:.2f}",
            share is not None and share <= targets.full_accuracy_cost,
        ),
    ]
    table = markdown_table(
        ["target", "measured", "verdict"],
        [[what, value, _verdict(ok)] for what, value, ok in checks],
    )
    return [*lines, "", table]


def _pt(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f} pt"


def _setup(result: JobResult) -> list[str]:
    """The data, the training recipe, the hardware and the time the job took."""
    config = result.config
    recipe = config.train
    parts = [
        f"{recipe.mode} training, {recipe.epochs} epochs, batch {recipe.batch_size}, AdamW lr "
        f"{recipe.lr:g} ({recipe.schedule}), weight decay {recipe.weight_decay:g}"
    ]
    if recipe.label_smoothing:
        parts.append(f"label smoothing {recipe.label_smoothing:g}")
    if recipe.augment:
        parts.append(f"random shifts ≤ {recipe.crop_pad} px and flips (p = {recipe.flip:g})")
    if recipe.loss_weights:
        parts.append("exit loss weights " + " / ".join(f"{w:g}" for w in recipe.loss_weights))
    if recipe.distillation:
        parts.append(f"distillation {recipe.distillation:g} (T = {recipe.temperature:g})")
    if recipe.workers > 1:
        parts.append(f"{recipe.workers} models at once, one process and thread each")
    trained = [name for name, o in result.models.items() if not o.cached]
    timing = (
        f"Job time {result.seconds:.0f} s"
        + (
            f" (cold for {', '.join(trained)}: {result.training_seconds:.0f} s of it training)"
            if trained
            else " (every model from the cache)"
        )
        + "."
    )
    return [
        f"- Data: {result.data}.",
        f"- Recipe: {'; '.join(parts)}.",
        f"- Hardware: {result.hardware}.",
        f"- {timing}",
    ]


def render_report(result: JobResult) -> str:
    """The report as Markdown (also printed by ``adaptix run``)."""
    config = result.config
    deltas = config.sweep.deltas()
    large_name = list(result.models)[-1]
    parts = [
        f"# adaptix report: {config.name}",
        "",
        "## Summary",
        *_summary(result),
        "",
        "## Setup",
        *_setup(result),
        "",
        "## Models (test split)",
        _models_table(result),
        "",
        f"## (a) Control: does δ deliver early accuracy ≥ δ? ({large_name}, test split)",
        control_table(result.models[large_name], deltas, result.readings, config.guarantee),
        "",
    ]
    for name in list(result.models)[:-1]:
        control = control_table(result.models[name], deltas, result.readings, config.guarantee)
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
        _runtime_note(result),
        "",
        _runtime_table(result),
        "",
        f"Outputs in {result.output_dir}: report.md, frontier-*.csv (frontier-*-survivors.csv: "
        "on survivor bins), calibration-*.json, "
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
    return "\n".join(parts) + "\n"
