"""The language-model job (``adaptix run --preset smollm2-bbc``): token exits of a decoder LM
on BBC News, controlled and certified per token, from the model file to the report.

1. Load the model (`adaptix_transformers.load_causal_lm`: SmolLM2 is converted once and cached)
   and BBC News split by article (train, calibration, test; no article in two splits).
2. Train the exit adapters on the train articles, or load them from the cache
   (`adaptix.online.lm_adapters.train_adapters`), once for the union of every exit
   configuration's layers (an adapter depends only on its own layer's hidden states).
3. Trace the calibration and test articles, teacher-forced, into token traces labelled by the
   full model's token (*consistency*) and by the text's next token (*accuracy*): compact traces
   (`adaptix.compact_token_traces`) by default, one per logit scale (the overconfidence stress
   needs the full logits scaled), cached by model, adapters, tokens and scale.
4. For every exit configuration and target: calibrate, sweep every criterion over the δ grid,
   read the bin-table criteria on survivor bins, certify the guarantee mode, natural and under
   every stress (`adaptix.experiment.analysis.analyse`, the classification job's step 4); the
   study over ``study.splits`` random splits by article (`adaptix.experiment.study.run_study`).
5. Generate on held-out prompts: tokens/s and layers per token of the early-exit generator at
   the configured δ against full depth, and of the lossless self-speculative mode (its output
   checked equal to full depth's), timed in paired rounds (`adaptix.online.paired`); a few
   continuations side by side.
6. Record everything in MLflow (a parent run; a run per exit configuration; a run per frontier
   point and per certified policy, with the model's and the data's checksums) and write the
   report (`adaptix.experiment.lm_report`).

Nothing of the text is stored except the sample continuations in the output directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adaptix._version import __version__
from adaptix.core.cache import ModelCache, cache_key
from adaptix.core.files import tensor_digest
from adaptix.core.trace import Trace
from adaptix.errors import AdaptixError, ConfigError
from adaptix.experiment.analysis import analyse
from adaptix.experiment.config import GUARANTEE_ROW
from adaptix.experiment.figures import write_model_plots
from adaptix.experiment.lm_config import ExitsConfig, LMJobConfig, Target
from adaptix.experiment.lm_report import render_lm_report
from adaptix.experiment.lm_results import (
    GenerationPoint,
    LMData,
    LMJobResult,
    LMModel,
    Sample,
    SequenceResult,
)
from adaptix.experiment.results import ModelOutcome
from adaptix.experiment.study import StudyResult, run_study
from adaptix.offline.policy import ExitPolicy, policy
from adaptix.online.decoder import (
    DecoderModel,
    build_decoder,
    compact_token_traces,
    token_traces,
    vocabulary_calibration,
)
from adaptix.online.generate import EarlyExitGenerator, GenerationOutput
from adaptix.online.lm_adapters import AdapterRecipe, train_adapters, weights_digest
from adaptix.online.paired import time_paired
from adaptix.online.sequence import (
    SequenceCertificate,
    certify_sequences,
    generate_all,
    sequence_losses,
)
from adaptix.online.speculative import SelfSpeculativeGenerator
from adaptix.plugins import AdaptixPluginManager, get_plugin_manager
from adaptix.tracking import Tracker, default_tracking_uri, log_certified, log_frontier

__all__ = ["run_lm_job"]

#: Where the job finds BBC News and the decoder LMs: the adaptix-transformers plugin.
_PLUGIN_HINT = (
    "the language-model job needs the adaptix-transformers plugin with BBC News "
    "(pip install -e 'plugins/adaptix-transformers[bbc]'; `make install` does it), and for "
    "SmolLM2 `make lm`"
)


def run_lm_job(config: LMJobConfig, *, log: Callable[[str], None] = print) -> LMJobResult:
    """Run the language-model job (see the module docstring) and return its results.

    Raises:
        ConfigError: the plugin or its data is missing, the splits hold too few articles for
            the configuration, or an exit configuration does not fit the model.
        AdaptixError: as the steps raise (a model that cannot be loaded, a plugin that broke).
    """
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, log)
    finally:
        torch.set_num_threads(threads)


def _run(config: LMJobConfig, log: Callable[[str], None]) -> LMJobResult:
    started = time.perf_counter()
    out = config.output_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"expected output_dir to be a writable directory, got {str(out)!r} ({err})."
        ) from err
    manager = get_plugin_manager()
    log(f"adaptix {__version__}: language-model job '{config.name}' → {out.resolve()}")
    cache_dir = config.resolved_cache_dir()
    lm, tokenizer, parts_model = _load_model(config, cache_dir, log)
    data = _load_data(config, tokenizer, log)
    union = _union_layers(config, parts_model)
    model = _with_adapters(config, parts_model, union, data, cache_dir, log)
    lm.adapters_digest = _adapters_digest(model)
    traces = _traces(config, model, data, cache_dir, log)
    readings = {name: manager.criteria.get(name).accuracy_reading for name in config.sweep.criteria}
    outcomes: dict[str, dict[Target, ModelOutcome]] = {}
    for exits in config.exits:
        columns = _columns(union, _layers_of(exits, model.num_layers))
        outcomes[exits.name] = {}
        for target in config.targets:
            name = f"{exits.name}-{target}"
            natural, *stressed = (
                _split(_select(traces[scale][target], columns), data)
                for scale in (1.0, *config.sweep.stress_scales)
            )
            log(f"[{name}] calibrate, sweep, certify ({natural[0].num_inputs} calibration tokens)")
            outcome = analyse(
                _Analysed(name),
                *natural,
                config,
                manager,
                readings,
                stressed=dict(zip(config.sweep.stress_scales, stressed, strict=True)),
            )
            write_model_plots(name, outcome, out)
            outcomes[exits.name][target] = outcome
    studies = _studies(config, union, model, traces, data, manager, log)
    decoder = _generation_model(config, parts_model, model, union)
    generation, samples = _generate(config, decoder, outcomes, data, tokenizer, log)
    sequence = _sequence(config, decoder, outcomes, data, log)
    result = LMJobResult(
        config=config,
        model=lm,
        data=data,
        outcomes=outcomes,
        studies=studies,
        generation=generation,
        samples=samples,
        sequence=sequence,
        output_dir=out,
        seconds=0.0,
        report="",
    )
    # The report is written before anything is logged: a tracking failure loses nothing.
    result.seconds = time.perf_counter() - started
    result.report = render_lm_report(result)
    report_path = out / "report.md"
    report_path.write_text(result.report, encoding="utf-8")
    log(result.report)
    if config.tracking.enabled:
        tracking = _Tracking(config, result)
        try:
            tracking.log_configurations()
            tracking.finish(report_path)
        except BaseException:
            tracking.tracker.end_run(tracking.parent, "FAILED")
            raise
        log(f"MLflow: run {result.parent_run_id} at {result.tracking_uri}")
    return result


# ------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class _Analysed:
    """An exit configuration under one target, as the analysis names it."""

    name: str


def _plugin() -> Any:
    try:
        import adaptix_transformers
    except ImportError as err:
        raise ConfigError(f"{_PLUGIN_HINT} ({err}).") from err
    return adaptix_transformers


def _load_model(
    config: LMJobConfig, cache_dir: Path, log: Callable[[str], None]
) -> tuple[LMModel, Any, DecoderModel]:
    """The model with no early exit yet (its parts), its tokenizer and provenance."""
    plugin = _plugin()
    started = time.perf_counter()
    loaded = plugin.load_causal_lm(
        config.model.source,
        tiny=config.model.tiny.model_dump(),
        cache_dir=None if config.model.source != "smollm2" else _smollm2_cache(cache_dir),
    )
    model = build_decoder("causal_lm", loaded.model, exit_layers=[])
    digest = weights_digest(model.parts)
    log(
        f"model: {loaded.description}, {model.num_layers} layers, vocabulary "
        f"{model.parts.vocab_size} ({time.perf_counter() - started:.1f} s; weights sha256 "
        f"{digest[:12]})"
    )
    info = LMModel(
        description=config.model.describe(),
        source=config.model.source,
        num_layers=model.num_layers,
        vocab_size=model.parts.vocab_size,
        weights_sha256=digest,
        file_sha256=loaded.file_sha256,
    )
    return info, loaded.tokenizer, model


def _smollm2_cache(cache_dir: Path) -> Path | None:
    """SmolLM2's conversion: the shared default cache unless ADAPTIX_CACHE_DIR or cache_dir
    moved the job's cache (then under it)."""
    return None if cache_dir == Path(".adaptix-cache") else cache_dir / "models"


def _layers_of(exits: ExitsConfig, num_layers: int) -> tuple[int, ...]:
    """The configuration's exit layers with the last layer appended; ConfigError when one is
    past the model."""
    last = num_layers - 1
    beyond = [layer for layer in exits.layers if layer > last]
    if beyond:
        raise ConfigError(
            f"exits '{exits.name}': layers {beyond} are past the model's last layer {last} "
            f"({num_layers} layers, 0-based)."
        )
    return exits.layers if exits.layers[-1] == last else (*exits.layers, last)


def _union_layers(config: LMJobConfig, model: DecoderModel) -> tuple[int, ...]:
    layers = {layer for e in config.exits for layer in _layers_of(e, model.num_layers)}
    return tuple(sorted(layers))


def _columns(union: Sequence[int], layers: Sequence[int]) -> list[int]:
    return [union.index(layer) for layer in layers]


def _with_adapters(
    config: LMJobConfig,
    model: DecoderModel,
    union: tuple[int, ...],
    data: LMData,
    cache_dir: Path,
    log: Callable[[str], None],
) -> DecoderModel:
    """The model with an exit after every layer of ``union``, and trained adapters."""
    bare = DecoderModel(model.parts, union)
    settings = config.adapters
    if not settings.enabled or len(union) == 1:
        return bare
    recipe = AdapterRecipe(
        loss=settings.loss,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=settings.seed,
    )
    started = time.perf_counter()
    ids = data.train_blocks
    adapters = train_adapters(
        bare,
        ids,
        torch.ones_like(ids, dtype=torch.bool),
        recipe,
        cache=cache_dir / "exit-adapters",
    )
    log(
        f"exit adapters for layers {list(union[:-1])}: {ids.numel()} train tokens "
        f"({time.perf_counter() - started:.1f} s, cached after the first run)"
    )
    return DecoderModel(model.parts, union, adapters=adapters)


def _adapters_digest(model: DecoderModel) -> str | None:
    if model.adapters is None:
        return None
    return tensor_digest(nn.ModuleList(model.adapters).state_dict())


# ------------------------------------------------------------------------------------- data


def _load_data(config: LMJobConfig, tokenizer: Any, log: Callable[[str], None]) -> LMData:
    """BBC News by article: the train blocks and the calibration and test token rows."""
    plugin = _plugin()
    settings = config.data
    try:
        articles = plugin.bbc_articles()
    except AdaptixError as err:
        raise ConfigError(f"{_PLUGIN_HINT}: {err}") from err
    tokens = settings.tokens_per_article
    rows: dict[str, Tensor] = {}
    digests: dict[str, str] = {}
    counts: dict[str, int] = {}
    limits = {"calibration": settings.calibration_articles, "test": settings.test_articles}
    for split, limit in limits.items():
        texts = plugin.split_articles(articles, split, seed=settings.seed)
        digests[split] = _texts_digest(texts)
        counts[split] = len(texts)
        ids = [
            row[:tokens]
            for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"]
            if len(row) >= tokens
        ]
        if limit is not None:
            ids = ids[:limit]
        if len(ids) < 2:
            raise ConfigError(
                f"data: the {split} split has {len(ids)} articles of at least "
                f"tokens_per_article={tokens} tokens; lower data.tokens_per_article."
            )
        rows[split] = torch.tensor(ids, dtype=torch.long)
    train_texts = plugin.split_articles(articles, "train", seed=settings.seed)
    digests["train"] = _texts_digest(train_texts)
    counts["train"] = len(train_texts)
    blocks = plugin.bbc_token_blocks(
        tokenizer, settings.block_len, split="train", seed=settings.seed, articles=articles
    )[: settings.train_blocks]
    data = LMData(
        calibration=rows["calibration"],
        test=rows["test"],
        train_blocks=blocks,
        articles=counts,
        sha256=digests,
        corpus_sha256=_texts_digest(articles),
        location=str(plugin.bbc_news_dir()),
        tokens_per_article=tokens,
    )
    log(f"data: {data.describe()}")
    return data


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- traces


def _traces(
    config: LMJobConfig,
    model: DecoderModel,
    data: LMData,
    cache_dir: Path,
    log: Callable[[str], None],
) -> dict[float, dict[Target, Trace]]:
    """Per logit scale, the pooled (calibration then test) token trace of every target, over
    the union model's exits; cached by model, adapters, tokens, scale and kind."""
    ids = torch.cat([data.calibration, data.test])
    mask = torch.ones_like(ids, dtype=torch.bool)
    store = ModelCache(cache_dir)
    out: dict[float, dict[Target, Trace]] = {}
    full: tuple[Trace, Trace] | None = None
    for scale in (1.0, *config.sweep.stress_scales):
        key = cache_key(
            model=weights_digest(model.parts),
            exit_layers=list(model.exit_layers),
            adapters=_adapters_digest(model),
            tokens=tensor_digest({"ids": ids}),
            scale=scale,
            kind=config.traces,
            version=1,
        )
        entry = store.load("token-traces", key)
        if entry is not None:
            state, _ = entry
            pair = tuple(
                Trace(state["logits"], state[f"labels.{t}"], state["costs"]) for t in ("c", "a")
            )
            log(f"token traces (logits x{scale:g}): from the cache")
        else:
            started = time.perf_counter()
            if config.traces == "compact":
                pair = compact_token_traces(model, ids, mask, scale=scale, progress=True)
            else:
                if full is None:
                    full = token_traces(model, ids, mask)
                pair = (full[0].scaled(scale), full[1].scaled(scale)) if scale != 1.0 else full
            consistency, accuracy = pair
            if consistency.labels is None or accuracy.labels is None:  # token traces are labelled
                raise AdaptixError("token traces came back without labels.")
            state = {
                "logits": consistency.logits,
                "labels.c": consistency.labels,
                "labels.a": accuracy.labels,
                "costs": consistency.costs,
            }
            store.save("token-traces", key, state, {"scale": scale, "kind": config.traces})
            log(
                f"token traces (logits x{scale:g}): {consistency.num_inputs} tokens x "
                f"{consistency.num_exits} exits x {consistency.num_classes} classes "
                f"({time.perf_counter() - started:.1f} s)"
            )
        out[scale] = {"consistency": pair[0], "accuracy": pair[1]}
    return out


def _select(trace: Trace, columns: list[int]) -> Trace:
    """The trace at the exits ``columns`` of the union model. Costs are in layers (a token
    leaving after layer l ran l + 1); the exit heads' own cost is not counted (the generation
    timings measure it), so the per-block profile is the layers between exits."""
    index = torch.tensor(columns)
    costs = trace.costs[index]
    blocks = torch.diff(costs, prepend=costs.new_zeros(1)).tolist()
    meta = {
        **trace.meta,
        "cost_unit": "layers",
        "block_flops": json.dumps(blocks),
        "head_flops": json.dumps([0.0] * len(blocks)),
    }
    return Trace(trace.logits[:, index], trace.labels, costs, meta)


def _split(trace: Trace, data: LMData) -> tuple[Trace, Trace]:
    """(calibration, test) rows of a pooled trace."""
    first = data.calibration.shape[0] * (data.tokens_per_article - 1)
    rows = torch.arange(trace.num_inputs)
    return trace.subset(rows[:first]), trace.subset(rows[first:])


# ------------------------------------------------------------------------------------ study


def _studies(
    config: LMJobConfig,
    union: tuple[int, ...],
    model: DecoderModel,
    traces: dict[float, dict[Target, Trace]],
    data: LMData,
    manager: AdaptixPluginManager,
    log: Callable[[str], None],
) -> dict[str, StudyResult]:
    """The study by article, per target and scale: ``"<target> x<scale>"`` -> its result."""
    settings = config.study
    if settings.splits == 0:
        return {}
    exits = config.exits_named(settings.exits)
    columns = _columns(union, _layers_of(exits, model.num_layers))
    per_article = data.tokens_per_article - 1
    groups = (
        torch.arange(data.calibration.shape[0]).repeat_interleave(per_article),
        data.calibration.shape[0] + torch.arange(data.test.shape[0]).repeat_interleave(per_article),
    )
    studies = {}
    store = ModelCache(config.resolved_cache_dir())
    for target in settings.targets:
        for scale in (1.0, *config.sweep.stress_scales):
            calib, test = _split(_select(traces[scale][target], columns), data)
            arguments: dict[str, Any] = {
                "splits": settings.splits,
                "calibration_size": (calib.num_inputs + test.num_inputs) // 2,
                "deltas": settings.deltas,
                "scales": (1.0,),
                "alpha": config.guarantee.alpha,
                "criteria": config.study_criteria(),
                "bins": config.sweep.bins,
                "calibrators": (config.sweep.calibrator,),
                "seed": config.seed,
            }
            # a study is a function of its traces and arguments: cached by them
            key = cache_key(
                calibration=calib.content_digest(),
                test=test.content_digest(),
                groups=tensor_digest({"c": groups[0], "t": groups[1]}),
                arguments=arguments,
                version=1,
            )
            result = _cached_study(store, key)
            if result is None:
                log(f"study: {target}, logits x{scale:g}, {settings.splits} splits by article")
                result = run_study(calib, test, groups=groups, plugins=manager, **arguments)
                store.save("lm-study", key, {}, {"study": result.to_dict()})
            else:
                log(f"study: {target}, logits x{scale:g}: from the cache")
            name = f"{target} x{scale:g}"
            stem = f"study-{exits.name}-{target}-x{scale:g}"
            (config.output_dir / f"{stem}.md").write_text(result.to_markdown(), encoding="utf-8")
            result.to_csv(config.output_dir / f"{stem}.csv")
            studies[name] = result
    return studies


def _cached_sequence(store: ModelCache, key: str) -> SequenceResult | None:
    entry = store.load("lm-sequence", key)
    if entry is None:
        return None
    try:
        data = dict(entry[1]["sequence"])
        fields = dict(data.pop("certificate"))
        fields["tested"] = tuple(tuple(t) for t in fields["tested"])
        return SequenceResult(SequenceCertificate(**fields), **data)
    except (KeyError, TypeError, ValueError) as err:
        warnings.warn(
            f"unreadable sequence certificate in the cache ({err}): certifying again.", stacklevel=2
        )
        return None


def _cached_study(store: ModelCache, key: str) -> StudyResult | None:
    entry = store.load("lm-study", key)
    if entry is None:
        return None
    try:
        return StudyResult.from_dict(entry[1]["study"])
    except (KeyError, AdaptixError) as err:
        warnings.warn(f"unreadable study in the cache ({err}): running it again.", stacklevel=2)
        return None


# ------------------------------------------------------------------------------- generation


def _generation_model(
    config: LMJobConfig, bare: DecoderModel, model: DecoderModel, union: tuple[int, ...]
) -> DecoderModel:
    """The generation's exit configuration as a model of its own (its adapters the union's)."""
    exits = config.exits_named(config.generation.exits)
    layers = _layers_of(exits, model.num_layers)
    adapters = None
    if model.adapters is not None:
        adapters = [model.adapters[union.index(layer)] for layer in layers[:-1]]
    return DecoderModel(bare.parts, layers, adapters=adapters)


def _consistency(
    config: LMJobConfig, outcomes: dict[str, dict[Target, ModelOutcome]]
) -> ModelOutcome:
    """The generation's exit configuration's analysis on the consistency target (else the
    first target's): the calibration and certificates the generator reads."""
    chosen = outcomes[config.exits_named(config.generation.exits).name]
    return chosen.get("consistency") or next(iter(chosen.values()))


def _generate(
    config: LMJobConfig,
    decoder: DecoderModel,
    outcomes: dict[str, dict[Target, ModelOutcome]],
    data: LMData,
    tokenizer: Any,
    log: Callable[[str], None],
) -> tuple[list[GenerationPoint], list[Sample]]:
    settings = config.generation
    if not settings.enabled:
        return [], []
    exits = config.exits_named(settings.exits)
    policies = _generation_policies(config, decoder, _consistency(config, outcomes))
    prompts = _prompts(config, data)
    full = EarlyExitGenerator(decoder, None, kv=settings.kv)
    points = []
    for batch in settings.batch_sizes:
        rows = prompts[: batch * settings.batches]
        full_pass = _passes(full, rows, batch, settings.new_tokens)
        reference = full_pass()
        for (criterion, delta), pol in policies.items():
            runner = EarlyExitGenerator(decoder, pol, kv=settings.kv)
            run_pass = _passes(runner, rows, batch, settings.new_tokens)
            outputs = run_pass()
            times = time_paired(full_pass, run_pass, rounds=settings.rounds)
            points.append(
                _point(exits.name, criterion, delta, batch, rows, outputs, reference, times)
            )
            log(f"generation: {points[-1].describe()}")
        if settings.speculative and decoder.num_exits > 1:
            draft = decoder.num_exits - 2 if settings.draft_exit is None else settings.draft_exit
            if draft > decoder.num_exits - 2:
                raise ConfigError(
                    f"generation.draft_exit {draft} is not an early exit of '{exits.name}' "
                    f"(0..{decoder.num_exits - 2})."
                )
            speculative = SelfSpeculativeGenerator(decoder, draft, settings.draft_tokens)
            spec_pass = _passes(speculative, rows, batch, settings.new_tokens)
            outputs = spec_pass()
            times = time_paired(full_pass, spec_pass, rounds=settings.rounds)
            points.append(
                _point(exits.name, "lossless", None, batch, rows, outputs, reference, times)
            )
            log(f"generation: {points[-1].describe()}")
    samples = _samples(config, decoder, policies, prompts, tokenizer)
    return points, samples


def _generation_policies(
    config: LMJobConfig, decoder: DecoderModel, outcome: ModelOutcome
) -> dict[tuple[str, float], ExitPolicy]:
    """The policy of every (criterion, δ) the generator runs, on the consistency calibration:
    the swept criterion at the threshold its reading gives δ (its compact calibration turned
    into one over the vocabulary), or the guarantee mode's certified policy."""
    manager = get_plugin_manager()
    settings = config.generation
    grid = config.sweep.deltas()
    policies: dict[tuple[str, float], ExitPolicy] = {}
    for criterion in settings.criteria:
        for delta in settings.deltas:
            if criterion == GUARANTEE_ROW:
                certified = outcome.certified.get("natural", [])
                match = [c for c in certified if abs(c.delta - delta) < 1e-9]
                if not match:
                    raise ConfigError(
                        f"generation.deltas {delta:g} is not on the sweep's δ grid "
                        f"({grid[0]:g} to {grid[-1]:g} by {config.sweep.delta_step:g}): the "
                        "guarantee mode is certified on that grid."
                    )
                policies[criterion, delta] = match[0].policy
                continue
            component = manager.criteria.get(criterion)
            reading = component.accuracy_reading
            if reading is None:
                raise ConfigError(
                    f"generation.criteria {criterion!r} declares no accuracy reading, so δ "
                    "gives it no threshold: leave it out."
                )
            calibration = (
                vocabulary_calibration(outcome.calibration, decoder)
                if component.needs_calibration
                else None
            )
            policies[criterion, delta] = policy(
                criterion,
                reading.threshold(delta),
                calibration=calibration,
                **config.sweep.params_of(criterion),
            )
    return policies


def _prompts(config: LMJobConfig, data: LMData) -> list[list[int]]:
    """Prompts from the test articles: each one's first ``prompt_tokens`` tokens, the articles
    repeated in order when more prompts are needed than there are articles."""
    settings = config.generation
    needed = max(settings.batch_sizes) * settings.batches
    take = min(settings.prompt_tokens, data.tokens_per_article)
    rows = data.test[:, :take].tolist()
    return [rows[i % len(rows)] for i in range(max(needed, settings.samples))]


def _passes(
    generator: EarlyExitGenerator | SelfSpeculativeGenerator,
    rows: list[list[int]],
    batch: int,
    new_tokens: int,
) -> Callable[[], list[Any]]:
    """One pass over ``rows`` in batches of ``batch``, ``new_tokens`` each (no early end)."""

    def run() -> list[Any]:
        return [
            generator.generate(rows[i : i + batch], max_new_tokens=new_tokens, eos_token_id=[])
            for i in range(0, len(rows), batch)
        ]

    return run


def _point(
    exits: str,
    criterion: str,
    delta: float | None,
    batch: int,
    rows: list[list[int]],
    outputs: list[Any],
    reference: list[Any],
    times: Any,
) -> GenerationPoint:
    tokens = [t for out in outputs for t in out.tokens]
    full = [t for out in reference for t in out.tokens]
    count = sum(len(t) for t in tokens)
    same = sum(a == b for a, b in zip(tokens, full, strict=True))
    prefix = [_common_prefix(a, b) for a, b in zip(tokens, full, strict=True)]
    layers: float | None = None
    acceptance: float | None = None
    if criterion == "lossless":
        drafted = sum(sum(out.drafted) for out in outputs)
        accepted = sum(sum(out.accepted) for out in outputs)
        acceptance = accepted / drafted if drafted else None
    else:
        layers = _layers_per_token(outputs)
    seconds = times.runner_seconds
    baseline = times.baseline_seconds
    return GenerationPoint(
        exits=exits,
        criterion=criterion,
        delta=delta,
        batch_size=batch,
        prompts=len(rows),
        new_tokens=count,
        tokens_per_second=count / seconds if seconds else None,
        full_tokens_per_second=count / baseline if baseline else None,
        speedup=times.realised_speedup,
        layers_per_token=layers,
        identical_continuations=same / len(tokens),
        mean_agreeing_prefix=sum(prefix) / len(prefix),
        acceptance_rate=acceptance,
        rounds=times.rounds,
    )


def _layers_per_token(outputs: Sequence[GenerationOutput]) -> float | None:
    """Mean layers a new token's own step ran over every row of ``outputs``, each row's first
    token (the prefill's, at full depth) left out, as `GenerationOutput.layers_per_token`."""
    ran = [out.exit_layers[e] + 1 for out in outputs for row in out.exits for e in row[1:]]
    return sum(ran) / len(ran) if ran else None


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _samples(
    config: LMJobConfig,
    decoder: DecoderModel,
    policies: dict[tuple[str, float], ExitPolicy],
    prompts: list[list[int]],
    tokenizer: Any,
) -> list[Sample]:
    """The first ``samples`` prompts continued at full depth and by the first generation
    criterion at the highest δ, greedy."""
    settings = config.generation
    if settings.samples == 0 or not policies:
        return []
    (criterion, delta), chosen = max(policies.items(), key=lambda item: item[0][1])
    rows = prompts[: settings.samples]
    full = EarlyExitGenerator(decoder, None, kv=settings.kv).generate(
        rows, max_new_tokens=settings.new_tokens, eos_token_id=[]
    )
    early = EarlyExitGenerator(decoder, chosen, kv=settings.kv).generate(
        rows, max_new_tokens=settings.new_tokens, eos_token_id=[]
    )
    samples = []
    for i, prompt in enumerate(rows):
        layers = [decoder.exit_layers[e] + 1 for e in early.exits[i][1:]]
        samples.append(
            Sample(
                prompt=tokenizer.decode(prompt),
                full=tokenizer.decode(full.tokens[i]),
                early=tokenizer.decode(early.tokens[i]),
                criterion=criterion,
                delta=delta,
                layers_per_token=sum(layers) / len(layers) if layers else float(decoder.num_layers),
                identical=early.tokens[i] == full.tokens[i],
            )
        )
    return samples


def _sequence(
    config: LMJobConfig,
    decoder: DecoderModel,
    outcomes: dict[str, dict[Target, ModelOutcome]],
    data: LMData,
    log: Callable[[str], None],
) -> SequenceResult | None:
    """The sequence-level certificate on calibration prompts, then its rule on test prompts."""
    settings = config.sequence
    if not settings.enabled or decoder.num_exits == 1:
        return None
    manager = get_plugin_manager()
    take = min(config.generation.prompt_tokens, data.tokens_per_article)
    prompts = {
        split: rows[: settings.prompts, :take].tolist()
        for split, rows in (("calibration", data.calibration), ("test", data.test))
    }
    calibration = None
    if manager.criteria.get(settings.criterion).needs_calibration:
        calibration = vocabulary_calibration(_consistency(config, outcomes).calibration, decoder)
    # greedy generation is deterministic: the certificate and its test loss are cached by
    # everything they depend on
    store = ModelCache(config.resolved_cache_dir())
    key = cache_key(
        model=weights_digest(decoder.parts),
        exit_layers=list(decoder.exit_layers),
        adapters=_adapters_digest(decoder),
        prompts={k: tensor_digest({"ids": torch.tensor(v)}) for k, v in prompts.items()},
        settings=settings.model_dump(mode="json"),
        kv=config.generation.kv,
        calibration=None if calibration is None else calibration.checksum,
        params=config.sweep.params_of(settings.criterion),
        version=1,
    )
    cached = _cached_sequence(store, key)
    if cached is not None:
        log(f"sequence certificate: from the cache: {cached.certificate.statement()}")
        return cached
    started = time.perf_counter()
    chosen, certificate = certify_sequences(
        decoder,
        prompts["calibration"],
        settings.criterion,
        risk=settings.risk,
        alpha=settings.alpha,
        thresholds=settings.thresholds,
        loss=settings.loss,
        max_new_tokens=settings.new_tokens,
        batch_size=settings.batch_size,
        calibration=calibration,
        eos_token_id=[],
        kv=config.generation.kv,
        plugins=manager,
        **config.sweep.params_of(settings.criterion),
    )
    test_loss = None
    layers = None
    if chosen is not None:
        full = generate_all(
            EarlyExitGenerator(decoder, None, kv=config.generation.kv),
            prompts["test"],
            settings.new_tokens,
            settings.batch_size,
            [],
        )
        runner = EarlyExitGenerator(decoder, chosen, kv=config.generation.kv)
        outputs = _passes(runner, prompts["test"], settings.batch_size, settings.new_tokens)()
        early = [row for out in outputs for row in out.tokens]
        losses = sequence_losses(early, full, settings.new_tokens, settings.loss)
        test_loss = float(losses.mean())
        layers = _layers_per_token(outputs)
    result = SequenceResult(certificate, test_loss, len(prompts["test"]), layers)
    store.save("lm-sequence", key, {}, {"sequence": dataclasses.asdict(result)})
    log(
        f"sequence certificate: {certificate.statement()} Test loss: {test_loss} "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return result


# ---------------------------------------------------------------------------------- MLflow


@dataclass
class _Tracking:
    """The job's MLflow session: the parent run, open until the report is logged."""

    config: LMJobConfig
    result: LMJobResult
    tracker: Tracker = field(init=False)
    parent: str | None = field(init=False)
    common: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        config, result = self.config, self.result
        self.tracker = Tracker(
            experiment=config.tracking.experiment,
            tracking_uri=config.tracking.uri or default_tracking_uri(),
            artifact_location=str((config.output_dir / "mlartifacts").resolve()),
        )
        data, model = result.data, result.model
        self.common = {
            "job": "lm",
            "model.source": model.source,
            "model.sha256": model.weights_sha256,
            "model.file_sha256": model.file_sha256 or "",
            "adapters.sha256": model.adapters_digest or "",
            "data.source": "bbc-news",
            "data.sha256": data.corpus_sha256,
            "data.location": data.location,
            "tokens_per_article": data.tokens_per_article,
            **{f"data.{s}_articles": n for s, n in data.articles.items()},
            **{f"data.{s}_sha256": d for s, d in data.sha256.items()},
            "data.calibration_rows": data.calibration.shape[0],
            "data.test_rows": data.test.shape[0],
            "seed": config.seed,
        }
        self.parent = self.tracker.start_run(
            config.name,
            params={"config": config.model_dump_json(), **self.common},
            tags={"adaptix.version": __version__, "adaptix.job": "lm"},
        )
        self._datasets(self.parent)

    def _datasets(self, run: str | None) -> None:
        data = self.result.data
        for split in ("train", "calibration", "test"):
            self.tracker.log_dataset(
                run,
                name=f"bbc-news / {split} ({data.articles[split]} articles)",
                location=data.location,
                digest=data.sha256[split],
                context=split,
            )

    def log_configurations(self) -> None:
        """One run per exit configuration: its params, its control, knob and generation
        metrics, and a child run per frontier point and per certified policy."""
        config, result, tracker = self.config, self.result, self.tracker
        manager = get_plugin_manager()
        for exits in config.exits:
            layers = list(_layers_of(exits, result.model.num_layers))
            run = tracker.start_run(
                exits.name,
                parent=self.parent,
                params={"exit_layers": json.dumps(layers), **self.common},
            )
            self._datasets(run)
            metrics: dict[str, float] = {}
            for target, outcome in result.outcomes[exits.name].items():
                metrics.update(_outcome_metrics(target, outcome))
            speed: dict[tuple[str, float], dict[str, float | None]] = {}
            for point in result.generation:
                if point.exits != exits.name:
                    continue
                metrics.update(point.metrics())
                if point.delta is not None and point.criterion != GUARANTEE_ROW:
                    # the frontier point the generator ran: the threshold δ reads as
                    reading = manager.criteria.get(point.criterion).accuracy_reading
                    threshold = point.delta if reading is None else reading.threshold(point.delta)
                    speed.setdefault((point.criterion, threshold), {}).update(
                        {
                            f"tokens_per_second_batch_{point.batch_size}": point.tokens_per_second,
                            f"speedup_measured_batch_{point.batch_size}": point.speedup,
                        }
                    )
            sequence = result.sequence
            if (
                sequence is not None
                and exits.name == config.exits_named(config.generation.exits).name
            ):
                metrics.update(_sequence_metrics(sequence))
                tracker.log_params(run, {"sequence.statement": sequence.certificate.statement()})
            tracker.log_metrics(run, metrics)
            for target, outcome in result.outcomes[exits.name].items():
                params = {**self.common, "token_target": target, "exit_layers": json.dumps(layers)}
                log_frontier(
                    outcome.frontier,
                    tracker=tracker,
                    parent=run,
                    model=f"{exits.name}/{target}",
                    params=params,
                    calibration=outcome.calibration,
                    extra_metrics=speed if target == "consistency" else None,
                    criterion_params={
                        c: config.sweep.params_of(c) for c in outcome.frontier.criteria()
                    },
                    plugins=manager,
                )
                natural = outcome.certified.get("natural", [])
                log_certified(
                    [c.policy for c in natural],
                    [c.point for c in natural],
                    tracker=tracker,
                    parent=run,
                    model=f"{exits.name}/{target}",
                    params=params,
                )
                for path in sorted(config.output_dir.glob(f"*-{exits.name}-{target}.png")):
                    tracker.log_artifact(run, path, "plots")
            tracker.end_run(run)

    def finish(self, report: Path) -> None:
        """Log the report, the CSVs and the studies to the parent run and close it."""
        out = self.config.output_dir
        for path in [report, *sorted(out.glob("*.csv")), *sorted(out.glob("study-*.md"))]:
            self.tracker.log_artifact(self.parent, path)
        self.tracker.end_run(self.parent)
        self.result.tracking_uri = self.config.tracking.uri or default_tracking_uri()
        self.result.parent_run_id = self.parent
        self.result.tracking_failures = list(self.tracker.failures)


def _sequence_metrics(sequence: SequenceResult) -> dict[str, float]:
    cert = sequence.certificate
    values = {
        "sequence.certified": float(cert.certified),
        "sequence.threshold": cert.threshold,
        "sequence.risk": cert.risk,
        "sequence.calibration_loss": cert.calibration_loss,
        "sequence.test_loss": sequence.test_loss,
        "sequence.layers_per_token": sequence.layers_per_token,
        "sequence.thresholds_tested": float(len(cert.tested)),
    }
    return {k: v for k, v in values.items() if v is not None}


def _outcome_metrics(target: str, outcome: ModelOutcome) -> dict[str, float]:
    metrics = {f"{target}.exit_accuracy_{e}": a for e, a in enumerate(outcome.exit_accuracy)}
    for panel, summaries in outcome.control.items():
        tag = panel.replace("logits ×", "x").replace(" ", "_")
        for criterion, s in summaries.items():
            metrics[f"{target}.{tag}.{criterion}.violation_rate"] = s.violation_rate
            metrics[f"{target}.{tag}.{criterion}.worst_shortfall"] = s.worst_shortfall
            metrics[f"{target}.{tag}.{criterion}.mean_regret"] = s.mean_regret
        survivors = outcome.survivors.get(panel)
        if survivors is not None:
            for criterion, s in survivors.control.items():
                key = f"{target}.{tag}.{criterion}.survivors"
                metrics[f"{key}.violation_rate"] = s.violation_rate
                metrics[f"{key}.worst_shortfall"] = s.worst_shortfall
    for panel, points in outcome.certified.items():
        tag = panel.replace("logits ×", "x").replace(" ", "_")
        metrics[f"{target}.{tag}.{GUARANTEE_ROW}.uncertified"] = sum(
            not c.certified for c in points
        )
    for criterion, count in outcome.knob.items():
        metrics[f"{target}.knob.{criterion}.distinct_policies"] = count
    return metrics
