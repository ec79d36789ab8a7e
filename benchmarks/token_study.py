"""How often token-level control misses its target on SmolLM2, over article-level splits.

Run from the repository root after ``make lm`` (about 10 minutes on two cores; the exit
adapters are those `decoder_speed.py --smollm2 --adapters N` trains, cached)::

    python benchmarks/token_study.py --out .benchmarks/token-study

The first ``--tokens`` tokens of every article of the BBC News calibration and test splits are
teacher-forced through SmolLM2 with exits after ``--exit-layers``; each token is a row of a
compact token trace (`adaptix.compact_token_traces`, exact for the criteria studied here)
labelled by the full model's token: the target is **consistency** with the full model. The two
splits are pooled and `adaptix.experiment.study.run_study` draws ``--splits`` random
calibration/test splits **by article** (``groups=``: the tokens of one article are never on
both sides), and measures, per δ, how often each mode misses δ beyond the test split's noise,
its cost against the hindsight oracle, natural and with the logits × 2 (the overconfidence
stress: the × 2 traces are reduced from the scaled logits). Entropy is left out (compact
traces do not keep it). The text is read from the installed corpus and never stored.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from decoder_speed import trained_adapters  # the same cached adapters (this script's folder)

import adaptix
from adaptix.experiment.study import run_study

CRITERIA = ("confidence", "pcee", "pcee_lcb", "guarantee")
DELTAS = (0.5, 0.6, 0.7, 0.8, 0.9)


def article_tokens(tokenizer: object, split: str, tokens: int) -> torch.Tensor:
    """The first ``tokens`` tokens of every article of ``split`` with at least that many."""
    from adaptix_transformers import bbc_articles, split_articles

    rows = []
    for text in split_articles(bbc_articles(), split):
        ids = tokenizer(text)["input_ids"]  # type: ignore[operator]
        if len(ids) >= tokens:
            rows.append(ids[:tokens])
    return torch.tensor(rows, dtype=torch.long)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=48, help="tokens per article")
    parser.add_argument("--splits", type=int, default=50)
    parser.add_argument("--exit-layers", type=int, nargs="+", default=[14, 20, 25])
    parser.add_argument("--adapters", type=int, default=150, help="0: no adapters")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(".benchmarks/token-study"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    from adaptix_transformers import decoder_parts, load_smollm2

    hf, tokenizer = load_smollm2(progress=False)
    parts = decoder_parts(hf)
    model = adaptix.DecoderModel(parts, args.exit_layers)
    if args.adapters:
        model = adaptix.DecoderModel(
            parts, model.exit_layers, adapters=trained_adapters(model, tokenizer, args.adapters)
        )
    texts = {
        split: article_tokens(tokenizer, split, args.tokens) for split in ("calibration", "test")
    }
    per_article = args.tokens - 1  # slots with a next token
    groups = {
        "calibration": torch.arange(texts["calibration"].shape[0]).repeat_interleave(per_article),
    }
    groups["test"] = 100_000 + torch.arange(texts["test"].shape[0]).repeat_interleave(per_article)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {
        "model": f"SmolLM2-135M-Instruct, exits after layers {list(model.exit_layers)}",
        "articles": {k: int(v.shape[0]) for k, v in texts.items()},
        "tokens_per_article": args.tokens,
    }
    for scale in args.scales:
        # one call for both splits, so that their compact traces share one class layout
        ids = torch.cat([texts["calibration"], texts["test"]])
        mask = torch.ones_like(ids, dtype=torch.bool)
        consistency, _ = adaptix.compact_token_traces(model, ids, mask, scale=scale)
        first = texts["calibration"].shape[0] * per_article
        rows = torch.arange(consistency.num_inputs)
        traces = {
            "calibration": consistency.subset(rows[:first]),
            "test": consistency.subset(rows[first:]),
        }
        pooled = traces["calibration"].num_inputs + traces["test"].num_inputs
        study = run_study(
            traces["calibration"],
            traces["test"],
            splits=args.splits,
            calibration_size=pooled // 2,
            deltas=DELTAS,
            scales=(1.0,),
            alpha=args.alpha,
            criteria=CRITERIA,
            groups=(groups["calibration"], groups["test"]),
        )
        name = f"scale-{scale:g}"
        (args.out / f"{name}.md").write_text(study.to_markdown())
        study.to_csv(args.out / f"{name}.csv")
        print(f"\n## logits × {scale:g}\n")
        print(study.to_markdown())
        summary[name] = study.summary()
    summary["seconds"] = time.perf_counter() - start
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\n{summary['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
