"""Token-level early exit in a decoder LM against the same loop at full depth: speed and agreement.

Run from the repository root (about 5 minutes on two loaded cores)::

    python benchmarks/decoder_speed.py --out .benchmarks/decoder-speed.json

For every batch size, target and KV strategy, the early-exit `EarlyExitGenerator` is timed
against the same generator with no policy (``EarlyExitGenerator(model, None)``, every token at
full depth) in paired, interleaved rounds (`adaptix.online.paired.time_paired`, as
``exit_benchmark`` times a classifier): the realised speed-up is the median over rounds of
time(full) / time(early exit) over the same prompts, which is also the ratio of tokens/s, since
both produce ``max_new_tokens`` per row (no end-of-sequence). Figures:

- ``ideal (layers)``: L / `GenerationOutput.layers_per_token`, the layer passes saved by the
  new tokens after the first (prefill and first token are full depth in both loops, so the
  realised figure, which includes them, is bounded a little below this).
- ``ideal (FLOPs)``: FLOPs of the full pass / FLOPs of the early-exit pass, counted by
  `adaptix.core.flops.FlopMeter` over one whole pass (prefill, exit heads, ``copy``'s KV fills
  and ``deferred``'s catch-up layers included): ``deferred`` saves passes, not arithmetic.
- ``agree``: share of new tokens equal, position by position, to the full-depth greedy output
  for the same prompts; ``prefix``: mean length of the agreeing prefix of a row (the first new
  token comes from the prefill and always agrees).

The targets are ``confidence`` thresholds at quantiles of the first exit's confidence on a
teacher-forced `token_trace` of the full model's own continuations of other prompts (labels: the
full model's greedy token): ``light`` lets about 10 % of the traced tokens leave at the first
exit, ``medium`` 30 %, ``heavy`` 60 % (more leave at later exits). At batch 1 the script also
times transformers' ``generate`` (greedy, no end-of-sequence) and, where this transformers has
it, ``generate(assistant_early_exit=k)`` (LayerSkip's self-speculative decoding, batch 1 only)
against the same full-depth loop.

The default model is a random ``tiny_llama(layers=12, hidden=256, heads=8, kv_heads=4,
vocab=2000)``: its early exits rarely agree with its last (about 4 % at layer 3), so agreement
figures say what the machinery does, not what a trained model would. ``--smollm2`` runs
SmolLM2-135M-Instruct (``make lm``) on BBC News prompts (calibration prompts from the
calibration split, benchmark prompts from the test split), with ``--adapters N`` exit adapters
distilled on N blocks of 64 train tokens first (cached). On a shared machine quote only the
ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import adaptix
from adaptix.core.flops import FlopMeter
from adaptix.online.decoder import DecoderModel, token_trace
from adaptix.online.generate import EarlyExitGenerator, GenerationOutput
from adaptix.online.paired import RoundTimer, time_paired
from adaptix.online.speculative import SelfSpeculativeGenerator

KV_STRATEGIES = ("deferred", "copy")
#: Target name -> share of traced tokens whose first-exit confidence reaches the threshold.
TARGETS = {"light": 0.10, "medium": 0.30, "heavy": 0.60}
BATCHES = (1, 8, 32)
#: Prompts generated per pass at each batch size (batch 1 costs a call per prompt: fewer).
ROWS = {1: 2, 8: 8, 32: 32}
PROMPT_LENGTHS = (8, 24)  # ragged prompt lengths, inclusive
FIRST_TOKEN = 3  # below: pad (0), bos (1), eos (2) of tiny_llama
CALIBRATION_PROMPTS = 32
CALIBRATION_NEW_TOKENS = 32

Generate = Callable[[], list[Any]]


# ------------------------------------------------------------------------------- the set-up


@dataclass
class Setup:
    """The model under test, its prompts and the policies of the targets."""

    hf: Any
    model: DecoderModel
    prompts: list[list[int]]
    policies: dict[str, adaptix.ExitPolicy]
    description: str


def random_prompts(count: int, vocab: int, seed: int) -> list[list[int]]:
    """``count`` prompts of random token ids, ragged lengths in `PROMPT_LENGTHS` (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    low, high = PROMPT_LENGTHS
    lengths = torch.randint(low, high + 1, (count,), generator=generator).tolist()
    return [
        torch.randint(FIRST_TOKEN, vocab, (length,), generator=generator).tolist()
        for length in lengths
    ]


def default_exit_layers(layers: int) -> list[int]:
    """Exits after a quarter, half and three quarters of the layers (0-based layer indices)."""
    return sorted({max(0, layers * k // 4 - 1) for k in (1, 2, 3)})


def load_hf(smollm2: bool) -> tuple[Any, Any, str]:
    """The transformers model, its tokenizer (None for the random model) and its description."""
    if smollm2:
        from adaptix_transformers import load_smollm2

        model, tokenizer = load_smollm2(progress=False)
        return model.eval(), tokenizer, "SmolLM2-135M-Instruct"
    from adaptix_transformers import tiny_llama

    shape = {"layers": 12, "hidden": 256, "heads": 8, "kv_heads": 4, "vocab": 2000}
    return (
        tiny_llama(**shape),
        None,
        "random tiny_llama(" + ", ".join(f"{k}={v}" for k, v in shape.items()) + ")",
    )


def text_prompts(tokenizer: Any, count: int, *, split: str, seed: int) -> list[list[int]]:
    """``count`` BBC News prompts of 8–24 tokens from ``split`` (the text is read from the
    installed corpus, never stored)."""
    from adaptix_transformers import bbc_token_blocks

    blocks = bbc_token_blocks(tokenizer, 32, split=split)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(blocks.shape[0], generator=generator)[:count]
    lengths = torch.randint(8, 25, (count,), generator=generator)
    return [blocks[int(r), : int(n)].tolist() for r, n in zip(rows, lengths, strict=True)]


def trained_adapters(model: DecoderModel, tokenizer: Any, blocks: int) -> list[Any]:
    """Exit adapters distilled on ``blocks`` BBC train blocks of 64 tokens (cached)."""
    from adaptix_transformers import bbc_token_blocks

    from adaptix.online.lm_adapters import AdapterRecipe, train_adapters

    text = bbc_token_blocks(tokenizer, 64, split="train")[:blocks]
    mask = torch.ones_like(text, dtype=torch.bool)
    cache = Path.home() / ".cache" / "adaptix" / "exit-adapters"
    return train_adapters(model, text, mask, AdapterRecipe(epochs=1, batch_size=128), cache=cache)


def target_policies(model: DecoderModel, prompts: list[list[int]]) -> dict[str, Any]:
    """`TARGETS` as confidence policies, from a trace of the full model's continuations."""
    full = EarlyExitGenerator(model, None).generate(
        prompts, max_new_tokens=CALIBRATION_NEW_TOKENS, eos_token_id=[]
    )
    trace = token_trace(model, full.sequences, full.attention_mask)
    first = trace.logits.softmax(-1).amax(-1)[:, 0]
    return {
        name: adaptix.policy("confidence", float(first.quantile(1 - share)))
        for name, share in TARGETS.items()
    }


def build_setup(
    prompts: int,
    *,
    device: str = "cpu",
    seed: int = 0,
    exit_layers: Sequence[int] | None = None,
    smollm2: bool = False,
    adapter_blocks: int = 0,
) -> Setup:
    """The model with its exits, ``prompts`` benchmark prompts and the targets' policies."""
    hf, tokenizer, description = load_hf(smollm2)
    hf.to(device)
    from adaptix_transformers import decoder_parts

    parts = decoder_parts(hf)
    layers = len(parts.blocks)
    model = DecoderModel(parts, exit_layers or default_exit_layers(layers))
    if tokenizer is not None and adapter_blocks > 0:
        model = DecoderModel(
            parts, model.exit_layers, adapters=trained_adapters(model, tokenizer, adapter_blocks)
        )
        description += f", exit adapters distilled on {adapter_blocks} x 64 BBC train tokens"
    vocab = parts.vocab_size
    if tokenizer is None:
        calibration = random_prompts(CALIBRATION_PROMPTS, vocab, seed=seed + 1)
        benchmark = random_prompts(prompts, vocab, seed=seed)
    else:  # real text: calibration prompts and benchmark prompts from disjoint splits
        calibration = text_prompts(tokenizer, CALIBRATION_PROMPTS, split="calibration", seed=seed)
        benchmark = text_prompts(tokenizer, prompts, split="test", seed=seed)
    return Setup(
        hf=hf,
        model=model,
        prompts=benchmark,
        policies=target_policies(model, calibration),
        description=f"{description}, exits after layers {list(model.exit_layers)}",
    )


# --------------------------------------------------------------------------------- measuring


def synchronized(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """``fn`` followed by a CUDA synchronisation where the device is one."""
    if not device.startswith("cuda"):
        return fn

    def run() -> Any:
        result = fn()
        torch.cuda.synchronize()
        return result

    return run


def in_batches(
    generator: EarlyExitGenerator, prompts: list[list[int]], batch: int, new: int
) -> Generate:
    """One pass: ``prompts`` generated in consecutive batches of ``batch``."""

    def run() -> list[GenerationOutput]:
        return [
            generator.generate(prompts[i : i + batch], max_new_tokens=new, eos_token_id=[])
            for i in range(0, len(prompts), batch)
        ]

    return run


def tokens_of(outputs: Sequence[GenerationOutput]) -> list[list[int]]:
    return [row for out in outputs for row in out.tokens]


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> tuple[float, float]:
    """Share of tokens equal position-wise to ``reference``'s, and the mean agreeing prefix."""
    same = total = 0
    prefixes = []
    for row, want in zip(tokens, reference, strict=True):
        equal = [a == b for a, b in zip(row, want, strict=True)]
        same += sum(equal)
        total += len(equal)
        prefixes.append(equal.index(False) if False in equal else len(equal))
    return same / total, statistics.mean(prefixes)


def counted(run: Generate) -> tuple[list[Any], int]:
    """One pass of ``run`` under a FLOP counter: its outputs and FLOPs."""
    meter = FlopMeter()
    with meter:
        outputs = run()
    return outputs, meter.total


@dataclass(frozen=True)
class FullDepth:
    """The full-depth loop on one batch size's prompts: its pass, tokens and FLOPs."""

    run: Generate
    tokens: list[list[int]]
    flops: int


def full_depth(setup: Setup, batch: int, rows: int, new: int, device: str) -> FullDepth:
    generator = EarlyExitGenerator(setup.model, None)
    run = synchronized(in_batches(generator, setup.prompts[:rows], batch, new), device)
    outputs, flops = counted(run)
    return FullDepth(run, tokens_of(outputs), flops)


def simulation_mismatches(
    model: DecoderModel, policy: adaptix.ExitPolicy, output: GenerationOutput, *, exact: bool
) -> list[tuple[int, int]]:
    """(row, step) where the generator's exit differs from `adaptix.simulate` on a
    teacher-forced full-depth trace of its own sequences ([]: it decided as simulate does).

    With an exact KV strategy every step is compared; otherwise (``copy``) a row's steps up to
    and including its first early exit, after which its cache is no longer the full model's.
    """
    new = max(len(row) for row in output.tokens)
    select = torch.zeros_like(output.attention_mask)
    select[:, output.prompt_length : output.prompt_length + new - 1] = True
    traced = token_trace(model, output.sequences, output.attention_mask, select=select)
    simulated = adaptix.simulate(traced, policy).exit_index.view(len(output.tokens), new - 1)
    last = model.num_exits - 1
    wrong = []
    for row, (exits, expected) in enumerate(zip(output.exits, simulated.tolist(), strict=True)):
        for step, (got, want) in enumerate(zip(exits[1:], expected, strict=True), start=1):
            if got != want:
                wrong.append((row, step))
            if not exact and got < last:
                break
    return wrong


@dataclass
class Result:
    """One measured configuration (one row of the table)."""

    batch: int
    runner: str  # "early exit", "hf.generate", "hf.generate assistant_early_exit=k"
    target: str = ""
    kv: str = ""
    policy: str = ""
    rows: int = 0
    new_tokens: int = 0
    realised_speedup: float | None = None
    baseline_tokens_per_s: float | None = None
    runner_tokens_per_s: float | None = None
    ideal_layers: float | None = None
    ideal_flops: float | None = None
    layers_per_token: float | None = None
    exit_histogram: list[int] = field(default_factory=list)
    agreement: float | None = None
    agreeing_prefix: float | None = None
    rounds: int = 0
    note: str = ""

    @property
    def realised_over_ideal(self) -> float | None:
        if self.realised_speedup is None or self.ideal_layers is None:
            return None
        return self.realised_speedup / self.ideal_layers

    def extra_info(self) -> dict[str, Any]:
        """JSON-ready figures (pytest-benchmark's ``extra_info``, the script's JSON)."""
        info = {k: v for k, v in asdict(self).items() if v not in (None, "", [])}
        if self.realised_over_ideal is not None:
            info["realised_over_ideal"] = self.realised_over_ideal
        return info


def timed(
    baseline: Generate,
    runner: Generate,
    tokens: int,
    rounds: int,
    timer: RoundTimer | None = None,
) -> tuple[float | None, float | None, float | None, int]:
    """Paired rounds: realised speed-up, baseline and runner tokens/s, rounds."""
    times = time_paired(baseline, runner, rounds=rounds, warmup_rounds=1, timer=timer)
    if times.realised_speedup is None or not times.baseline_seconds or not times.runner_seconds:
        return None, None, None, 0
    return (
        times.realised_speedup,
        tokens / times.baseline_seconds,
        tokens / times.runner_seconds,
        times.rounds,
    )


def measure_early_exit(
    setup: Setup,
    full: FullDepth,
    batch: int,
    rows: int,
    new: int,
    target: str,
    kv: str,
    rounds: int,
    device: str,
    timer: RoundTimer | None = None,
) -> Result:
    """The early-exit generator against the full-depth loop on ``rows`` prompts."""
    prompts = setup.prompts[:rows]
    policy = setup.policies[target]
    generator = EarlyExitGenerator(setup.model, policy, kv=kv)
    early = synchronized(in_batches(generator, prompts, batch, new), device)
    outputs, flops = counted(early)
    share, prefix = agreement(tokens_of(outputs), full.tokens)
    exits = [row for out in outputs for row in out.exits]
    merged = GenerationOutput(
        tokens=tokens_of(outputs),
        exits=exits,
        sequences=outputs[0].sequences,
        attention_mask=outputs[0].attention_mask,
        prompt_length=outputs[0].prompt_length,
        exit_layers=setup.model.exit_layers,
        num_layers=setup.model.num_layers,
    )
    layers = merged.layers_per_token()
    total = merged.num_tokens
    realised, base_rate, rate, done = timed(full.run, early, total, rounds, timer)
    return Result(
        batch=batch,
        runner="early exit",
        target=target,
        kv=kv,
        policy=f"confidence {policy.threshold:.3f}",
        rows=rows,
        new_tokens=new,
        realised_speedup=realised,
        baseline_tokens_per_s=base_rate,
        runner_tokens_per_s=rate,
        ideal_layers=setup.model.num_layers / layers,
        ideal_flops=full.flops / flops,
        layers_per_token=layers,
        exit_histogram=merged.exit_histogram(),
        agreement=share,
        agreeing_prefix=prefix,
        rounds=done,
    )


def measure_speculative(
    setup: Setup,
    full: FullDepth,
    batch: int,
    rows: int,
    new: int,
    rounds: int,
    device: str,
    draft_exit: int,
    draft_tokens: int,
    timer: RoundTimer | None = None,
) -> Result:
    """Self-speculative decoding (lossless) against the full-depth loop on ``rows`` prompts."""
    prompts = setup.prompts[:rows]
    generator = SelfSpeculativeGenerator(setup.model, draft_exit, draft_tokens)

    def passes() -> list[Any]:
        return [
            generator.generate(prompts[i : i + batch], max_new_tokens=new, eos_token_id=[])
            for i in range(0, len(prompts), batch)
        ]

    run = synchronized(passes, device)
    outputs = run()
    tokens = [row for out in outputs for row in out.tokens]
    share, prefix = agreement(tokens, full.tokens)
    drafted = sum(sum(out.drafted) for out in outputs)
    accepted = sum(sum(out.accepted) for out in outputs)
    realised, base_rate, rate, done = timed(full.run, run, len(tokens) * new, rounds, timer)
    return Result(
        batch=batch,
        runner=f"self-speculative (exit {draft_exit}, k={draft_tokens})",
        rows=rows,
        new_tokens=new,
        realised_speedup=realised,
        baseline_tokens_per_s=base_rate,
        runner_tokens_per_s=rate,
        agreement=share,
        agreeing_prefix=prefix,
        rounds=done,
        note=f"acceptance {accepted / max(drafted, 1):.1%}"
        + ("" if share == 1.0 else " NOT LOSSLESS"),
    )


def hf_generate(
    hf: Any, prompts: list[list[int]], new: int, device: str, early_exit: int | None = None
) -> Generate:
    """transformers' greedy ``generate`` at batch 1 over ``prompts``, no end-of-sequence
    (``assistant_early_exit=early_exit`` unless None)."""
    config = copy.deepcopy(hf.generation_config)
    config.eos_token_id = None
    config.pad_token_id = 0
    config.max_new_tokens = config.min_new_tokens = new
    config.do_sample = False
    config.assistant_early_exit = early_exit

    def run() -> list[list[int]]:
        rows = []
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            out = hf.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
            )
            rows.append(out[0, ids.shape[1] :].tolist())
        return rows

    return synchronized(run, device)


def hf_batched_tokens(
    hf: Any, prompts: list[list[int]], batch: int, new: int, device: str
) -> list[list[int]]:
    """transformers' greedy ``generate`` on left-padded batches of ``batch`` prompts, each
    row cut after its end-of-sequence token (the model's): the full-depth loop's oracle. (With
    ``eos_token_id=None`` transformers still stops at the model's; ``min_new_tokens`` bans the
    token instead, which changes the greedy output: neither gives the plain output unstopped.)
    """
    config = copy.deepcopy(hf.generation_config)
    config.pad_token_id = 0
    config.max_new_tokens = new
    config.do_sample = False
    eos = config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or ())
    rows = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        width = max(map(len, chunk))
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, prompt in enumerate(chunk):
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        out = hf.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
        for row in out[:, width:].tolist():
            ends = [i for i, token in enumerate(row) if token in eos]
            rows.append(row[: ends[0] + 1] if ends else row)
    return rows


def measure_hf(
    setup: Setup,
    full: FullDepth,
    rows: int,
    new: int,
    rounds: int,
    device: str,
    early_exit: int | None,
) -> Result:
    """transformers' ``generate`` (``assistant_early_exit=early_exit`` unless None) against
    the full-depth loop at batch 1. The speed-up is time(full-depth loop) / time(generate)."""
    runner = hf_generate(setup.hf, setup.prompts[:rows], new, device, early_exit)
    name = "hf.generate" + ("" if early_exit is None else f" assistant_early_exit={early_exit}")
    result = Result(batch=1, runner=name, rows=rows, new_tokens=new)
    try:
        tokens = runner()
    except Exception as err:  # report why this transformers cannot, and go on
        result.note = f"failed: {type(err).__name__}: {err}"
        return result
    result.agreement, result.agreeing_prefix = agreement(tokens, full.tokens)
    realised, base_rate, rate, done = timed(full.run, runner, rows * new, rounds)
    result.realised_speedup, result.baseline_tokens_per_s = realised, base_rate
    result.runner_tokens_per_s, result.rounds = rate, done
    return result


# ---------------------------------------------------------------------------------- reporting


def _cell(value: float | None, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (format(value, spec))
    )


def markdown(results: Sequence[Result], num_layers: int) -> str:
    """The results as a markdown table."""
    header = (
        "| batch | runner | target | kv | policy | layers/token | exits | ideal (layers) "
        "| ideal (FLOPs) | realised | realised/ideal | tok/s full | tok/s runner | agree "
        "| prefix | rounds |"
    )
    lines = [header, "|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|"]
    for r in results:
        exits = "/".join(str(c) for c in r.exit_histogram) or "-"
        lines.append(
            f"| {r.batch} | {r.runner} | {r.target or '-'} | {r.kv or '-'} | {r.policy or '-'} "
            f"| {_cell(r.layers_per_token, '.2f')} | {exits} | {_cell(r.ideal_layers, '.2f')} "
            f"| {_cell(r.ideal_flops, '.2f')} | {_cell(r.realised_speedup, '.2f')} "
            f"| {_cell(r.realised_over_ideal, '.2f')} | {_cell(r.baseline_tokens_per_s, '.1f')} "
            f"| {_cell(r.runner_tokens_per_s, '.1f')} | {_cell(r.agreement, '.1%')} "
            f"| {_cell(r.agreeing_prefix, '.1f')}/{r.new_tokens} | {r.rounds} |"
            + (f" {r.note}" if r.note else "")
        )
    lines.append(
        f"\nrealised = time(full-depth loop) / time(runner), median of paired rounds; L = "
        f"{num_layers}; hf rows: realised > 1 means transformers is faster than the full loop."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--kv", nargs="+", default=list(KV_STRATEGIES))
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=None,
        help="prompts per pass at each batch size (default: 2 at batch 1, else the batch)",
    )
    parser.add_argument("--new-tokens", type=int, default=16, help="max_new_tokens per row")
    parser.add_argument("--rounds", type=int, default=3, help="timed paired rounds per case")
    parser.add_argument("--exit-layers", type=int, nargs="+", default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: on two shared cores, two threads spin against "
        "the other load and ran 4x slower; 0 keeps torch's default)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hf-early-exit",
        type=int,
        nargs="*",
        default=None,
        help="assistant_early_exit values for hf.generate at batch 1 (default: the middle "
        "exit's layer count; none given: skip)",
    )
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers rows")
    parser.add_argument(
        "--smollm2",
        action="store_true",
        help="SmolLM2-135M (make lm) on BBC News prompts instead of the random model",
    )
    parser.add_argument(
        "--speculative",
        type=int,
        default=4,
        help="draft tokens per round of the lossless self-speculative rows (0: skip them)",
    )
    parser.add_argument(
        "--draft-exit",
        type=int,
        default=None,
        help="the early exit that drafts (default: the middle early exit)",
    )
    parser.add_argument(
        "--adapters",
        type=int,
        default=0,
        help="with --smollm2: distil exit adapters on N blocks of 64 BBC train tokens first",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = {b: ROWS.get(b, b) for b in args.batches}
    elif len(args.rows) != len(args.batches):
        parser.error("--rows needs one value per --batches value")
    else:
        args.rows = dict(zip(args.batches, args.rows, strict=True))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    setup = build_setup(
        max(args.rows.values()),
        device=args.device,
        seed=args.seed,
        exit_layers=args.exit_layers,
        smollm2=args.smollm2,
        adapter_blocks=args.adapters,
    )
    model = setup.model
    print(f"# {setup.description}; {torch.get_num_threads()} threads, {args.device}")
    for name, policy in setup.policies.items():
        print(f"# target {name}: confidence {policy.threshold:.4f}")
    results = []
    fulls = {}
    for batch in args.batches:
        full = fulls[batch] = full_depth(
            setup, batch, args.rows[batch], args.new_tokens, args.device
        )
        for target in args.targets:
            for kv in args.kv:
                result = measure_early_exit(
                    setup,
                    full,
                    batch,
                    args.rows[batch],
                    args.new_tokens,
                    target,
                    kv,
                    args.rounds,
                    args.device,
                )
                print(
                    f"batch {batch:>3} {target:<6} {kv:<8} realised "
                    f"{_cell(result.realised_speedup, '.2f')} ideal "
                    f"{_cell(result.ideal_layers, '.2f')} agree {_cell(result.agreement, '.1%')}",
                    flush=True,
                )
                results.append(result)
    if args.speculative:
        draft_exit = (
            (len(model.exit_layers) - 2) // 2 if args.draft_exit is None else args.draft_exit
        )
        for batch in args.batches:
            result = measure_speculative(
                setup,
                fulls[batch],
                batch,
                args.rows[batch],
                args.new_tokens,
                args.rounds,
                args.device,
                draft_exit,
                args.speculative,
            )
            print(
                f"batch {batch:>3} {result.runner}: realised "
                f"{_cell(result.realised_speedup, '.2f')} {result.note}",
                flush=True,
            )
            results.append(result)
    if 1 in args.batches and not args.no_hf:
        middle = model.exit_layers[len(model.exit_layers) // 2 - 1] + 1
        early_exits = [middle] if args.hf_early_exit is None else args.hf_early_exit
        for early_exit in [None, *early_exits]:
            result = measure_hf(
                setup, fulls[1], args.rows[1], args.new_tokens, args.rounds, args.device, early_exit
            )
            print(
                f"{result.runner}: realised {_cell(result.realised_speedup, '.2f')} {result.note}",
                flush=True,
            )
            results.append(result)
    table = markdown(results, model.num_layers)
    print()
    print(table)
    elapsed = time.perf_counter() - start
    print(f"\n{elapsed:.0f} s in all")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "model": setup.description,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "adaptix": adaptix.__version__,
            "targets": {k: v.threshold for k, v in setup.policies.items()},
            "target_first_exit_shares": TARGETS,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "seconds": elapsed,
            "results": [r.extra_info() for r in results],
        }
        args.out.write_text(json.dumps(document, indent=1, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
