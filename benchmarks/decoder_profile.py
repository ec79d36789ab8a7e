"""Where `EarlyExitGenerator`'s time goes: op time by source line, Python time, host reads.

Run from the repository root::

    python benchmarks/decoder_profile.py [--batch 8] [--target medium] [--kv deferred copy]

On `decoder_speed`'s default model and prompts, for each KV strategy and the full-depth loop:

1. Torch calls timed through a `torch.overrides.TorchFunctionMode` (dispatch included), each
   charged to the innermost line of adaptix that made it, summed by line and by cost category
   (layer maths, attention mask, KV writes, decisions, compaction, host reads, bookkeeping).
2. cProfile: adaptix functions by own time (Python overhead included, which (1) does not see).
3. Host reads: `Tensor.__bool__`, ``__int__``, ``item`` and ``tolist`` calls counted by line
   through a `torch.overrides.TorchFunctionMode` (each one a device synchronisation on a GPU;
   nearly free on a CPU, so (1) cannot show what they would cost there), per generated token.
"""

from __future__ import annotations

import argparse
import cProfile
import linecache
import pstats
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from decoder_speed import TARGETS, build_setup, in_batches
from torch.overrides import TorchFunctionMode

from adaptix.online.generate import EarlyExitGenerator

#: Cost categories, matched in order on the source line that issued an op (its text or file).
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    ("host read", re.compile(r"\bbool\(|\.tolist\(\)|\bint\(|\.item\(\)")),
    ("KV gather", re.compile(r"cache\.(keys|values)\[layer\]\[rows, :, :span\]")),
    ("KV write", re.compile(r"self\.(keys|values|filled)\[layer\]\[rows|cache\.write")),
    (
        "attention mask",
        re.compile(r"visible =|order =|query_slots =|mask = \(|cache\.(filled|real)\[rows"),
    ),
    (
        "decision",
        re.compile(
            r"exit_logits|policy\.(score|fires|start)|_check_logits|_choose|criteria|policy"
        ),
    ),
    (
        "compaction",
        re.compile(
            r"\[keep\]|\[out\]|_trim|select_state|nonzero|hidden\[:, first|new_hidden|pending"
        ),
    ),
    (
        "bookkeeping",
        re.compile(r"sequences\[|finished|level\[|self\.level|cache\.real\[rows, slot"),
    ),
]
HOST_READS = {"__bool__", "__int__", "item", "tolist", "__index__"}


def caller_line() -> tuple[str, int] | None:
    """The innermost adaptix (path, line) on the Python stack above this module."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/adaptix/" in name and "/adaptix/core/flops" not in name:
            return name, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None


def category(path: str, line: int) -> str:
    """The cost category of the adaptix line ``path:line``."""
    text = linecache.getline(path, line)
    if "/criteria" in path or "/offline/policy" in path or "/core/" in path:
        return "decision"
    for name, pattern in CATEGORIES:
        if pattern.search(text):
            return name
    if path.endswith("decoder.py"):
        return "layer maths"
    return "other"


def label(path: str, line: int) -> str:
    text = linecache.getline(path, line).strip()
    return f"{path.split('/adaptix/')[-1]}:{line} {text[:64]}"


class OpTimes(TorchFunctionMode):
    """Wall time of every torch call (dispatch included), charged to the adaptix line that made
    it; calls inside a call are not seen again (the mode is off while its handler runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: Counter[tuple[str, int]] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        start = time.perf_counter()
        result = func(*args, **(kwargs or {}))
        where = caller_line()
        self.seconds[where or ("outside adaptix", 0)] += time.perf_counter() - start
        return result


def op_profile(run: Callable[[], Any], top: int) -> None:
    """(1): torch call time by adaptix line and by category."""
    start = time.perf_counter()
    run()
    plain = time.perf_counter() - start
    mode = OpTimes()
    start = time.perf_counter()
    with mode:
        run()
    wall = time.perf_counter() - start
    ops = sum(mode.seconds.values())
    by_category: Counter[str] = Counter()
    for (path, line), seconds in mode.seconds.items():
        by_category["other" if line == 0 else category(path, line)] += seconds
    print(
        f"\nwall {plain * 1e3:.0f} ms; {wall * 1e3:.0f} ms while timing torch calls, which "
        f"took {ops * 1e3:.0f} ms of it (the rest: Python between calls and the timing)"
    )
    print("| category | torch-call ms | % of torch-call time |\n|---|---|---|")
    for name, seconds in by_category.most_common():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / ops:.1%} |")
    print(f"\n| line (top {top}) | category | ms | % |\n|---|---|---|---|")
    for (path, line), seconds in mode.seconds.most_common(top):
        name = "other" if line == 0 else category(path, line)
        print(f"| `{label(path, line)}` | {name} | {seconds * 1e3:.1f} | {seconds / ops:.1%} |")


def python_profile(run: Callable[[], Any], top: int) -> None:
    """(2): cProfile, adaptix functions by own time."""
    run()
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((own, cumulative, calls, f"{path.split('/adaptix/')[-1]}:{line} {name}"))
    print(f"\ncProfile total {total * 1e3:.0f} ms\n| function | calls | own ms | own % | cum % |")
    print("|---|---|---|---|---|")
    for own, cumulative, calls, name in sorted(rows, reverse=True)[:top]:
        print(
            f"| `{name}` | {calls} | {own * 1e3:.1f} | {own / total:.1%} | "
            f"{cumulative / total:.1%} |"
        )


class HostReads(TorchFunctionMode):
    """Counts tensor-to-Python reads by the adaptix line that made them."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            frame = sys._getframe(1)
            while frame is not None and "/adaptix/" not in frame.f_code.co_filename:
                frame = frame.f_back  # type: ignore[assignment]
            if frame is not None:
                path = frame.f_code.co_filename.split("/adaptix/")[-1]
                text = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
                self.counts[f"{path}:{frame.f_lineno} {text[:60]}"] += 1
        return func(*args, **(kwargs or {}))


def host_reads(run: Callable[[], Any], tokens: int, top: int) -> None:
    """(3): host reads per generated token, by line."""
    mode = HostReads()
    with mode:
        run()
    total = sum(mode.counts.values())
    print(f"\nhost reads: {total} in {tokens} tokens ({total / tokens:.1f} per token)")
    print("| line | reads | per token |\n|---|---|---|")
    for line, count in mode.counts.most_common(top):
        print(f"| `{line}` | {count} | {count / tokens:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--target", choices=list(TARGETS), default="medium")
    parser.add_argument("--kv", nargs="+", default=["deferred", "copy"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = build_setup(args.batch)
    policy = setup.policies[args.target]
    cases = [("full depth", EarlyExitGenerator(setup.model, None))] + [
        (
            f"{kv}, {args.target} (confidence {policy.threshold:.3f})",
            EarlyExitGenerator(setup.model, policy, kv=kv),
        )
        for kv in args.kv
    ]
    for name, generator in cases:
        run = in_batches(generator, setup.prompts, args.batch, args.new_tokens)
        outputs = run()
        tokens = sum(out.num_tokens for out in outputs)
        histogram = [sum(col) for col in zip(*(o.exit_histogram() for o in outputs), strict=True)]
        print(f"\n## {name}: batch {args.batch}, {tokens} tokens, exits {histogram}")
        op_profile(run, args.top)
        python_profile(run, args.top)
        host_reads(run, tokens, args.top)


if __name__ == "__main__":
    main()
