"""The language-model job's report (`render_lm_report`), in Markdown: the setup and its
checksums, per exit configuration and target the control table (target δ against the realised
consistency or accuracy on held-out articles, certified and not) and the knob, the study by
article, tokens/s and layers per token against full depth, and sample continuations side by
side."""

from __future__ import annotations

from adaptix.components import AccuracyReading
from adaptix.experiment.config import GUARANTEE_ROW
from adaptix.experiment.lm_results import LMJobResult
from adaptix.experiment.report import control_table, markdown_table
from adaptix.experiment.results import ModelOutcome
from adaptix.offline.frontier import FrontierPoint
from adaptix.plugins import get_plugin_manager

#: The δ rows of the report's target-vs-realised tables (those on the sweep's grid).
REPORT_DELTAS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render_lm_report(result: LMJobResult) -> str:
    """The report of a language-model job's result."""
    config = result.config
    lines = [f"# {config.name}: token-level control of a decoder LM", ""]
    lines += _setup(result)
    for exits in config.exits:
        for target, outcome in result.outcomes[exits.name].items():
            lines += [f"## {exits.name}: {target}", ""]
            lines += _realised(result, outcome, target)
            lines += [
                "### Control over the δ grid",
                "",
                control_table(
                    outcome,
                    config.sweep.deltas(),
                    _readings(result),
                    config.guarantee,
                ),
                "",
                "Knob (distinct policies over the δ grid on the test articles): "
                + ", ".join(f"{c} {k}" for c, k in outcome.knob.items())
                + ".",
                "",
            ]
    if result.studies:
        lines += _studies(result)
    if result.generation:
        lines += _generation(result)
    if result.samples:
        lines += _samples(result)
    if result.sequence is not None:
        lines += _sequence(result)
    lines += _statement(result)
    return "\n".join(lines).rstrip() + "\n"


def _readings(result: LMJobResult) -> dict[str, AccuracyReading | None]:
    manager = get_plugin_manager()
    return {
        name: manager.criteria.get(name).accuracy_reading for name in result.config.sweep.criteria
    }


def _setup(result: LMJobResult) -> list[str]:
    config, model, data = result.config, result.model, result.data
    exits = "; ".join(f"{e.name}: layers {list(e.layers)}" for e in config.exits)
    adapters = (
        f"affine exit adapters ({config.adapters.loss}, {config.adapters.epochs} epoch(s)), "
        f"sha256 {model.adapters_digest[:12]}"
        if model.adapters_digest
        else "no exit adapters"
    )
    file_line = f", file sha256 {model.file_sha256[:12]}" if model.file_sha256 else ""
    return [
        f"- Model: {model.description}; {model.num_layers} layers, vocabulary "
        f"{model.vocab_size}; weights sha256 {model.weights_sha256[:12]}{file_line}.",
        f"- Exits (0-based layer after which a token may leave; the last layer always): {exits}; "
        f"{adapters}.",
        f"- Data: {data.describe()}.",
        f"- Traces: {config.traces} token traces, teacher-forced; targets "
        f"{', '.join(config.targets)} (consistency: the exited token equals the full model's; "
        "accuracy: it equals the text's next token). Calibration and test are different "
        "articles.",
        f"- Calibration: {config.sweep.calibrator}, {config.sweep.bins} bins; certified mode: "
        f"{config.guarantee.criterion}, α = {config.guarantee.alpha:g}; stress: logits × "
        f"{', '.join(f'{s:g}' for s in config.sweep.stress_scales) or 'none'}.",
        f"- Wall clock: {result.seconds:.0f} s.",
        "",
    ]


def _point_at(outcome: ModelOutcome, criterion: str, threshold: float) -> FrontierPoint | None:
    for point in outcome.frontier.of(criterion):
        if abs(point.threshold - threshold) < 1e-9:
            return point
    return None


def _realised(result: LMJobResult, outcome: ModelOutcome, target: str) -> list[str]:
    """Target δ against what each rule realised on the test articles, and its layers per token."""
    config = result.config
    grid = config.sweep.deltas()
    deltas = [d for d in REPORT_DELTAS if any(abs(d - g) < 1e-9 for g in grid)] or grid[
        :: max(1, len(grid) // 6)
    ]
    readings = _readings(result)
    layers = result.model.num_layers
    criteria = {c: r for c, r in readings.items() if r is not None}
    certified = {round(c.delta, 9): c for c in outcome.certified.get("natural", [])}
    header = ["δ", *(f"{c}: early / all % (layers)" for c in criteria)]
    if certified:
        header.append(f"{GUARANTEE_ROW}: early / all % (layers)")
    rows = []
    for delta in deltas:
        row = [f"{delta:g}"]
        for criterion, reading in criteria.items():
            point = _point_at(outcome, criterion, reading.threshold(delta))
            row.append(_realised_cell(point, delta, layers))
        if certified:
            chosen = certified.get(round(delta, 9))
            cell = "n/a" if chosen is None else _realised_cell(chosen.point, delta, layers)
            if chosen is not None and not chosen.certified:
                cell += " uncertified"
            row.append(cell)
        rows.append(row)
    return [
        f"### Target δ against realised {target} on the test articles",
        "",
        f"Each cell: the {target} of the tokens that left early / of all tokens, in %, then the "
        "mean layers a token ran (of "
        f"{layers}); ✗ marks an early {target} below δ. Criteria read δ as their accuracy "
        "reading gives it (confidence: τ = δ, the naive reading); the guarantee column is the "
        "certified policy for δ.",
        "",
        markdown_table(header, rows),
        "",
    ]


def _realised_cell(point: FrontierPoint | None, delta: float, layers: int) -> str:
    if point is None:
        return "n/a"
    early = point.early_accuracy
    miss = " ✗" if early is not None and early < delta else ""
    return f"{_pct(early)} / {_pct(point.accuracy)} ({point.relative_cost * layers:.1f}){miss}"


def _studies(result: LMJobResult) -> list[str]:
    study = result.config.study
    exits = result.config.exits_named(study.exits).name
    lines = [
        f"## Study by article ({exits})",
        "",
        f"{study.splits} random splits of the pooled calibration and test tokens, by article "
        "(no article on both sides); per δ, how often each mode misses δ beyond the test "
        "split's noise, and its cost against the hindsight oracle.",
        "",
    ]
    for name, studied in result.studies.items():
        target, scale = name.rsplit(" x", 1)
        note = (
            ""
            if scale == "1"
            else f"The logits were multiplied by {scale} before the trace was reduced (a compact "
            "trace cannot be rescaled afterwards), so the study reads this trace as it is: its "
            "'natural logits' below are the stressed ones.\n\n"
        )
        heading = (
            f"### {target}, logits as trained"
            if scale == "1"
            else f"### {target}, logits × {scale}"
        )
        lines += [heading, "", note + studied.to_markdown(), ""]
    return lines


def _generation(result: LMJobResult) -> list[str]:
    settings = result.config.generation
    rows = []
    for p in result.generation:
        rows.append(
            [
                p.exits,
                str(p.batch_size),
                p.label,
                _cell(p.tokens_per_second, ".1f"),
                _cell(p.full_tokens_per_second, ".1f"),
                _cell(p.speedup, ".2f") + ("×" if p.speedup is not None else ""),
                _cell(p.layers_per_token, ".1f"),
                _pct(p.identical_continuations, 0),
                _cell(p.mean_agreeing_prefix, ".1f"),
                _pct(p.acceptance_rate, 0),
            ]
        )
    return [
        "## Generation: tokens/s against full depth",
        "",
        f"Greedy, {settings.new_tokens} new tokens per prompt (no early end), prompts of "
        f"{settings.prompt_tokens} tokens from test articles, {settings.batches} batch(es) per "
        f"pass, KV strategy {settings.kv}; full depth and each mode timed in "
        f"{settings.rounds} paired rounds (median of per-round ratios). lossless: "
        f"self-speculative decoding (draft {settings.draft_tokens} tokens at an early exit, "
        "verify at full depth), whose continuations must equal full depth's (100 %).",
        "",
        markdown_table(
            [
                "exits",
                "batch",
                "mode",
                "tokens/s",
                "full depth tokens/s",
                "× full depth",
                "layers / token",
                "identical to full (%)",
                "agreeing prefix (tokens)",
                "acceptance (%)",
            ],
            rows,
        ),
        "",
    ]


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ").strip()


def _samples(result: LMJobResult) -> list[str]:
    first = result.samples[0]
    rows = [
        [
            "…" + _escape(s.prompt[-120:]),
            _escape(s.full),
            _escape(s.early),
            f"{s.layers_per_token:.1f}",
            "yes" if s.identical else "no",
        ]
        for s in result.samples
    ]
    return [
        f"## Sample continuations: full depth and {first.criterion} at δ = {first.delta:g}",
        "",
        markdown_table(
            ["prompt (end)", "full depth", "early exit", "layers / token", "identical"], rows
        ),
        "",
    ]


def _sequence(result: LMJobResult) -> list[str]:
    sequence = result.sequence
    if sequence is None:
        return []
    cert = sequence.certificate
    rows = [
        [f"{threshold:g}", f"{mean:.3f}", f"{p:.3g}", "yes" if p <= cert.alpha else "no"]
        for threshold, mean, p in cert.tested
    ]
    measured = (
        "Nothing was certified, so the rule is full depth."
        if sequence.test_loss is None
        else f"On {sequence.test_prompts} prompts from test articles the certified rule's mean "
        f"loss was {sequence.test_loss:.3f} (bound {cert.risk:g}), its new tokens ran "
        f"{_cell(sequence.layers_per_token, '.1f')} layers of {result.model.num_layers} on "
        "average."
    )
    return [
        "## Sequence-level certificate (CALM's form)",
        "",
        f"Learn-then-Test over thresholds of {cert.criterion} (fixed sequence, safest first, "
        f"Hoeffding–Bentkus p-values) on {cert.prompts} prompts from calibration articles, one "
        f"per article, each continued greedily for {cert.max_new_tokens} tokens at full depth "
        f"and with exits; loss: {cert.loss}. Certificate: {cert.statement()}",
        "",
        markdown_table(["threshold", "mean loss", "p-value", "rejected (≤ α)"], rows),
        "",
        measured,
        "",
    ]


def _statement(result: LMJobResult) -> list[str]:
    return [
        "## What the token-level statements say",
        "",
        "The certified mode's statement is about tokens: over teacher-forced tokens of texts "
        "drawn like the calibration articles, the tokens that leave early agree with the full "
        "model at least δ of the time, with probability ≥ 1 − α over the calibration draw. "
        "It says nothing per sequence: in free generation an early token that differs changes "
        "the prefix, and later tokens are then compared with the full model on a text it did "
        "not write. The sequence-level certificate, when the job ran it, bounds that directly: the "
        "expected share of a continuation that differs from full depth's. The generation "
        "table shows how often whole continuations stay identical; the lossless mode is the "
        "one whose continuations always equal full depth's.",
        "",
    ]


__all__ = ["REPORT_DELTAS", "render_lm_report"]
