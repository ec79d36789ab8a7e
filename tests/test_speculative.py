"""Self-speculative decoding: lossless (greedy full-depth output), batched, exact cache."""

from __future__ import annotations

import pytest
import torch

import adaptix
from adaptix.errors import ValidationError
from adaptix.online.decoder import DecoderModel
from adaptix.online.speculative import SelfSpeculativeGenerator
from adaptix.testing.decoder import tiny_decoder

PROMPTS = [[1, 5, 7, 9, 11], [3, 4], [8, 8, 8], [20, 21, 22, 23, 24, 25, 26], [9], [40, 3]]
NEW = 14


@pytest.fixture(scope="module")
def model() -> DecoderModel:
    return DecoderModel(tiny_decoder(layers=6), [1, 3])


@pytest.mark.parametrize("draft_exit", [0, 1])
@pytest.mark.parametrize("draft_tokens", [1, 3, 5])
def test_output_equals_greedy_full_depth_decoding(
    model: DecoderModel, draft_exit: int, draft_tokens: int
) -> None:
    plain = adaptix.EarlyExitGenerator(model).generate(PROMPTS, max_new_tokens=NEW, eos_token_id=[])
    out = SelfSpeculativeGenerator(model, draft_exit, draft_tokens).generate(
        PROMPTS, max_new_tokens=NEW, eos_token_id=[]
    )
    assert out.tokens == plain.tokens
    assert 0 <= out.acceptance_rate <= 1
    assert all(d > 0 for d in out.drafted)


def test_a_perfect_drafter_accepts_everything() -> None:
    # the draft exit is the layer before the last of a decoder whose last layer adds nothing
    parts = tiny_decoder(layers=3)
    with torch.no_grad():
        for module in (parts.blocks[2].self_attn.o_proj, parts.blocks[2].mlp.down_proj):
            module.weight.zero_()
    model = DecoderModel(parts, [1])
    out = SelfSpeculativeGenerator(model, 0, 4).generate(
        PROMPTS, max_new_tokens=NEW, eos_token_id=[]
    )
    assert out.acceptance_rate == 1.0
    plain = adaptix.EarlyExitGenerator(model).generate(PROMPTS, max_new_tokens=NEW, eos_token_id=[])
    assert out.tokens == plain.tokens
    assert out.rounds <= -(-(NEW - 1) // 4) + 1


def test_the_cache_equals_the_full_model_s(model: DecoderModel) -> None:
    out = SelfSpeculativeGenerator(model, 0, 3).generate(
        PROMPTS, max_new_tokens=NEW, eos_token_id=[], keep_cache=True
    )
    assert out.cache is not None
    reference, _ = model.prefill(out.sequences, out.attention_mask, out.sequences.shape[1])
    for layer in range(model.num_layers):
        filled = out.cache.filled[layer] & out.attention_mask
        # every real slot but each row's last token (not run yet) is filled
        expected = out.attention_mask.clone()
        for row, tokens in enumerate(out.tokens):
            expected[row, out.prompt_length + len(tokens) - 1] = False
        assert torch.equal(filled, expected), layer
        got = out.cache.keys[layer].transpose(1, 2)[filled]
        torch.testing.assert_close(got, reference.keys[layer].transpose(1, 2)[filled])
        got = out.cache.values[layer].transpose(1, 2)[filled]
        torch.testing.assert_close(got, reference.values[layer].transpose(1, 2)[filled])


def test_rows_end_at_their_own_end_of_sequence_and_budget(model: DecoderModel) -> None:
    plain = adaptix.EarlyExitGenerator(model).generate(PROMPTS, max_new_tokens=NEW, eos_token_id=[])
    eos = plain.tokens[0][5]
    budgets = [NEW - i for i in range(len(PROMPTS))]
    want = adaptix.EarlyExitGenerator(model).generate(
        PROMPTS, max_new_tokens=budgets, eos_token_id=eos
    )
    out = SelfSpeculativeGenerator(model, 1, 4).generate(
        PROMPTS, max_new_tokens=budgets, eos_token_id=eos
    )
    assert out.tokens == want.tokens


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"draft_exit": 2}, "early exit's index in 0..1"),
        ({"draft_exit": -1}, "early exit"),
        ({"draft_tokens": 0}, "draft_tokens"),
    ],
)
def test_bad_settings_are_validation_errors(
    model: DecoderModel, kwargs: dict[str, int], match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        SelfSpeculativeGenerator(model, **kwargs)


def test_bad_prompts_are_validation_errors(model: DecoderModel) -> None:
    with pytest.raises(ValidationError, match="tokenize text first"):
        SelfSpeculativeGenerator(model).generate("text", max_new_tokens=3)
