"""Token-level early exit for decoder LMs: the generator against transformers and against itself.

A tiny randomly initialised Llama (no download), in float64 so that float rounding never flips
a greedy token or an exit decision: with a policy that never exits early the generator is the
plain model (equal to ``generate``); with ``deferred`` its cache equals the full model's after
every step; its exits equal the offline simulation on the traced hidden states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from torch import Tensor

import adaptix
from adaptix.components import DecoderParts, KVStrategy
from adaptix.errors import AdaptixError, PluginError, ValidationError
from adaptix.online.decoder import DecoderModel, token_trace
from adaptix.online.generate import EarlyExitGenerator, GenerationOutput

transformers = pytest.importorskip("transformers")
adaptix_transformers = pytest.importorskip("adaptix_transformers")

PROMPTS = [
    [5, 6, 7, 8, 9],
    [10, 11],
    [3, 4, 5, 6, 7, 8, 9, 10],
    [12],
    [40, 41, 42],
    [7, 7, 7, 7, 7, 7],
    [100, 3],
    [9, 8, 7, 6],
]
NEW = 10


@pytest.fixture(scope="module")
def hf() -> Any:
    return adaptix_transformers.tiny_llama(layers=6, dtype=torch.float64)


@pytest.fixture(scope="module")
def model(hf: Any) -> DecoderModel:
    return DecoderModel(adaptix_transformers.decoder_parts(hf), [1, 3])


def _padded(prompts: list[list[int]]) -> tuple[Tensor, Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt)
        mask[i, width - len(prompt) :] = 1
    return ids, mask


def _policy_that_exits(model: DecoderModel) -> adaptix.ExitPolicy:
    """A confidence policy at the median first-exit confidence of some traced tokens."""
    ids, mask = _padded(PROMPTS)
    trace = token_trace(model, ids, mask)
    confidence = trace.logits.softmax(-1).amax(-1)[:, 0]
    return adaptix.policy("confidence", float(confidence.median()))


@pytest.mark.parametrize("batch", [1, 8])
def test_never_exiting_equals_transformers_generate(
    hf: Any, model: DecoderModel, batch: int
) -> None:
    prompts = PROMPTS[:batch] if batch > 1 else [PROMPTS[2]]
    out = EarlyExitGenerator(model, None).generate(prompts, max_new_tokens=NEW, eos_token_id=[])
    ids, mask = _padded(prompts)
    reference = hf.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=NEW,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert out.tokens == reference[:, ids.shape[1] :].tolist()
    assert out.exit_histogram() == [0, 0, batch * (NEW - 1)]


def test_a_policy_that_never_fires_is_the_plain_model(model: DecoderModel) -> None:
    plain = EarlyExitGenerator(model, None).generate(PROMPTS, max_new_tokens=NEW, eos_token_id=[])
    never = EarlyExitGenerator(model, adaptix.policy("confidence", 1.0)).generate(
        PROMPTS, max_new_tokens=NEW, eos_token_id=[]
    )
    assert never.tokens == plain.tokens


def _reference_cache(hf: Any, out: GenerationOutput) -> list[tuple[Tensor, Tensor]]:
    """The full model's keys and values on the generated sequences (teacher-forced)."""
    mask = out.attention_mask
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    result = hf(
        input_ids=out.sequences,
        attention_mask=mask.long(),
        position_ids=positions,
        use_cache=True,
    )
    return [(layer.keys, layer.values) for layer in result.cache.layers]


@pytest.mark.parametrize("steps", [2, 4, 7, NEW])
def test_the_deferred_cache_equals_the_full_model_s_after_every_step(
    hf: Any, model: DecoderModel, steps: int
) -> None:
    policy = _policy_that_exits(model)
    out = EarlyExitGenerator(model, policy, kv="deferred").generate(
        PROMPTS, max_new_tokens=steps, eos_token_id=[], keep_cache=True
    )
    assert out.cache is not None
    if steps > 2:
        assert sum(out.exit_histogram()[:-1]) > 0, "the policy must make some tokens exit early"
    reference = _reference_cache(hf, out)
    real = out.attention_mask.clone()
    real[:, -1] = False  # the last new token is no step's input
    for layer, (keys, values) in enumerate(reference):
        filled = out.cache.filled[layer] & real
        # a slot lacks this layer only while no later token of its row has run the layer
        # (pending work): the missing slots of a row are a suffix of its inputs, so no key was
        # ever read before it was computed
        for row in range(len(PROMPTS)):
            inputs = real[row].nonzero().squeeze(1)
            missing = ~filled[row, inputs]
            if bool(missing.any()):
                first = int(missing.nonzero()[0])
                assert bool(missing[first:].all()), f"row {row}, layer {layer}: a hole in the cache"
                assert inputs[first] >= out.prompt_length, "a prompt slot is missing"
        got_k = out.cache.keys[layer].permute(0, 2, 1, 3)[filled]
        want_k = keys.permute(0, 2, 1, 3)[filled]
        torch.testing.assert_close(got_k, want_k, rtol=1e-9, atol=1e-9)
        got_v = out.cache.values[layer].permute(0, 2, 1, 3)[filled]
        torch.testing.assert_close(got_v, values.permute(0, 2, 1, 3)[filled], rtol=1e-9, atol=1e-9)


def test_deferred_work_is_done_when_a_later_token_runs_the_layer(model: DecoderModel) -> None:
    policy = _policy_that_exits(model)
    out = EarlyExitGenerator(model, policy, kv="deferred").generate(
        PROMPTS, max_new_tokens=NEW, eos_token_id=[], keep_cache=True
    )
    assert out.cache is not None
    deep = out.cache.filled[-1]
    last = model.num_exits - 1
    checked = 0
    for row, exits in enumerate(out.exits):
        # the input of step k sits at slot prompt_length + k - 1 and produced exits[k]
        full = [k for k in range(1, len(exits)) if exits[k] == last]
        if not full:
            continue
        for k in range(1, full[-1]):
            if exits[k] < last:
                assert bool(deep[row, out.prompt_length + k - 1]), (row, k)
                checked += 1
    assert checked > 0, "some early exits must be followed by a full-depth step"


@pytest.mark.parametrize("criterion", ["confidence", "entropy", "patience", "pcee"])
def test_exits_equal_the_offline_simulation_on_traced_hidden_states(
    model: DecoderModel, criterion: str
) -> None:
    ids, mask = _padded(PROMPTS)
    trace = token_trace(model, ids, mask)
    if criterion == "pcee":
        policy = adaptix.policy("pcee", 0.5, adaptix.calibrate(trace, bins=5))
    elif criterion == "patience":
        policy = adaptix.policy("patience", 2)
    elif criterion == "entropy":
        entropy = adaptix.policy("entropy", 0.5).scores(trace.logits)[:, 0]
        policy = adaptix.policy("entropy", float(entropy.median()))
    else:
        policy = _policy_that_exits(model)
    out = EarlyExitGenerator(model, policy, kv="deferred").generate(
        PROMPTS, max_new_tokens=NEW, eos_token_id=[]
    )
    # the inputs of steps 1..NEW-1: the slots of each row's new tokens but the last
    select = torch.zeros_like(out.attention_mask)
    select[:, out.prompt_length : out.prompt_length + NEW - 1] = True
    traced = token_trace(model, out.sequences, out.attention_mask, select=select)
    simulated = adaptix.simulate(traced, policy).exit_index.view(len(PROMPTS), NEW - 1)
    assert simulated.tolist() == [row[1:] for row in out.exits]


def test_copy_fills_the_skipped_layers_right_away(model: DecoderModel) -> None:
    policy = _policy_that_exits(model)
    out = EarlyExitGenerator(model, policy, kv="copy").generate(
        PROMPTS, max_new_tokens=NEW, eos_token_id=[], keep_cache=True
    )
    assert out.cache is not None
    assert sum(out.exit_histogram()[:-1]) > 0
    real = out.attention_mask.clone()
    real[:, -1] = False  # the last token is never an input
    for layer in range(model.num_layers):
        assert bool(out.cache.filled[layer][real].all())


def test_eos_and_per_row_lengths_end_rows(model: DecoderModel) -> None:
    plain = EarlyExitGenerator(model, None).generate(PROMPTS, max_new_tokens=NEW, eos_token_id=[])
    eos = plain.tokens[0][3]
    out = EarlyExitGenerator(model, None).generate(
        PROMPTS, max_new_tokens=[NEW - i for i in range(8)], eos_token_id=eos
    )
    assert out.tokens[0] == plain.tokens[0][:4]
    for row in range(1, 8):
        full = plain.tokens[row][: NEW - row]
        cut = full.index(eos) + 1 if eos in full else len(full)
        assert out.tokens[row] == full[:cut]


def test_sampling_is_seeded(model: DecoderModel) -> None:
    policy = _policy_that_exits(model)
    generator = EarlyExitGenerator(model, policy)
    runs = [
        generator.generate(PROMPTS, max_new_tokens=NEW, do_sample=True, seed=seed, eos_token_id=[])
        for seed in (3, 3, 4)
    ]
    assert runs[0].tokens == runs[1].tokens
    assert runs[0].tokens != runs[2].tokens


def test_tensor_prompts_with_a_mask_equal_list_prompts(model: DecoderModel) -> None:
    ids, mask = _padded(PROMPTS)
    generator = EarlyExitGenerator(model, _policy_that_exits(model))
    from_list = generator.generate(PROMPTS, max_new_tokens=NEW, eos_token_id=[])
    from_tensor = generator.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[])
    assert from_list.tokens == from_tensor.tokens
    assert from_list.exits == from_tensor.exits


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ("a text", "tokenize text first"),
        ([], "at least one prompt"),
        ([[1, 2], []], "prompt 1 is empty"),
        ([[1, 2.5]], "must be integers"),
        ([[1, 99999]], r"token ids must lie in \[0, 128\)"),
        ([["a"]], "must be integers"),
        ([5], "expected a list of token ids"),
    ],
)
def test_bad_prompts_are_validation_errors(model: DecoderModel, prompts: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        EarlyExitGenerator(model).generate(prompts, max_new_tokens=3)


def test_right_padding_is_refused(model: DecoderModel) -> None:
    ids = torch.tensor([[1, 2, 0]])
    with pytest.raises(ValidationError, match="left-padded"):
        EarlyExitGenerator(model).generate(
            ids, attention_mask=torch.tensor([[1, 1, 0]]), max_new_tokens=2
        )


@pytest.mark.parametrize(
    ("lengths", "match"), [(0, "≥ 1"), ([1, 2], "one int per row"), (True, "≥ 1"), ("3", "an int")]
)
def test_bad_lengths_are_validation_errors(model: DecoderModel, lengths: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        EarlyExitGenerator(model).generate(PROMPTS[:3], max_new_tokens=lengths)


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ([9], "exit layer 9 is out of range: the decoder has 6 layers"),
        ([-1], "out of range"),
        ([3, 1], "increasing"),
        (["x"], "integers"),
    ],
)
def test_exit_layers_out_of_range_are_validation_errors(hf: Any, layers: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        DecoderModel(adaptix_transformers.decoder_parts(hf), layers)


def test_an_unknown_kv_strategy_lists_the_known_ones(model: DecoderModel) -> None:
    with pytest.raises(PluginError, match="deferred"):
        EarlyExitGenerator(model, kv="nope")


def test_a_policy_for_another_model_is_refused(model: DecoderModel) -> None:
    ids, mask = _padded(PROMPTS)
    trace = token_trace(model, ids, mask)
    four_exits = adaptix.Trace(
        torch.cat([trace.logits, trace.logits[:, :1]], dim=1), trace.labels, torch.arange(1.0, 5.0)
    )
    with pytest.raises(AdaptixError, match="exits"):
        EarlyExitGenerator(model, adaptix.policy("pcee", 0.5, adaptix.calibrate(four_exits)))


def test_nan_logits_are_a_validation_error(hf: Any) -> None:
    broken = adaptix_transformers.tiny_llama(layers=6, dtype=torch.float64)
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight.fill_(float("nan"))
    model = DecoderModel(adaptix_transformers.decoder_parts(broken), [0, 3])
    with pytest.raises(ValidationError, match="NaN or infinite"):
        EarlyExitGenerator(model, adaptix.policy("confidence", 0.5)).generate(
            [[1, 2]], max_new_tokens=3
        )


def test_not_a_decoder_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="causal LM"):
        adaptix_transformers.decoder_parts(torch.nn.Linear(2, 2))


class _WrongShape(KVStrategy):
    name = "wrong_shape"

    def fill(
        self, parts: DecoderParts, exit_layer: int, hidden: Tensor, positions: Tensor
    ) -> Mapping[int, tuple[Tensor, Tensor]]:
        return {exit_layer + 1: (hidden, hidden)}


class _WrongLayer(KVStrategy):
    name = "wrong_layer"

    def fill(
        self, parts: DecoderParts, exit_layer: int, hidden: Tensor, positions: Tensor
    ) -> Mapping[int, tuple[Tensor, Tensor]]:
        shape = (hidden.shape[0], parts.num_kv_heads, parts.head_dim)
        zeros = torch.zeros(shape, dtype=hidden.dtype)
        return {exit_layer: (zeros, zeros)}


class _Raises(KVStrategy):
    name = "raises"

    def fill(
        self, parts: DecoderParts, exit_layer: int, hidden: Tensor, positions: Tensor
    ) -> Mapping[int, tuple[Tensor, Tensor]]:
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    ("strategy", "match"),
    [
        (_WrongShape, r"broke its contract: fill\(exit_layer=\d\) gave layer \d keys"),
        (_WrongLayer, "only the skipped layers"),
        (_Raises, "raised RuntimeError: boom"),
    ],
)
def test_a_kv_strategy_that_breaks_its_contract_is_a_plugin_error(
    model: DecoderModel,
    manager_with: Callable[..., adaptix.AdaptixPluginManager],
    strategy: type[KVStrategy],
    match: str,
) -> None:
    plugins = manager_with(strategy)
    generator = EarlyExitGenerator(
        model, adaptix.policy("confidence", 0.0), kv=strategy.name, plugins=plugins
    )
    with pytest.raises(PluginError, match=match):
        generator.generate(PROMPTS, max_new_tokens=3)


def test_a_third_party_kv_strategy_plugs_in(
    model: DecoderModel, manager_with: Callable[..., adaptix.AdaptixPluginManager]
) -> None:
    class Drop(KVStrategy):
        """Leaves the skipped layers empty: later tokens do not attend to an exited token there."""

        name = "drop"

    plugins = manager_with(Drop)
    assert "drop" in plugins.kv_strategies
    out = EarlyExitGenerator(
        model, adaptix.policy("confidence", 0.0), kv="drop", plugins=plugins
    ).generate(PROMPTS, max_new_tokens=4, eos_token_id=[], keep_cache=True)
    assert out.cache is not None
    assert out.exit_histogram() == [len(PROMPTS) * 3, 0, 0]
    slot = out.prompt_length  # the first step's input: exited at exit 0 (layer 1)
    assert not bool(out.cache.filled[2][:, slot].any())
    assert bool(out.cache.filled[1][:, slot].all())


def test_the_contract_check_catches_a_strategy_that_claims_exactness_falsely(
    manager_with: Callable[..., adaptix.AdaptixPluginManager],
) -> None:
    from adaptix.default_plugins.kv import Copy
    from adaptix.testing.contracts import check_kv_strategy

    class Boastful(Copy):
        name = "boastful"
        exact = True

    with pytest.raises(AssertionError, match="claims exact, but at layer"):
        check_kv_strategy("boastful", plugins=manager_with(Boastful))


def test_exits_a_calibrated_policy_can_never_fire_at_run_no_head(
    model: DecoderModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, mask = _padded(PROMPTS)
    trace = token_trace(model, ids, mask)
    calibration = adaptix.calibrate(trace, bins=5)
    policy = adaptix.policy("pcee", 0.5, calibration)
    tables = [policy.criterion.fused_table(e) for e in range(model.num_exits - 1)]
    best = [float(t[~t.isnan()].max()) for t in tables]  # type: ignore[union-attr]
    # a target above what exit 0 ever shows, but within reach of a later exit
    delta = min(1.0, max(best[0] + 1e-6, 0.05))
    policy = adaptix.policy("pcee", delta, calibration)
    generator = EarlyExitGenerator(model, policy)
    assert 0 in generator.silent_exits
    assert (1 in generator.silent_exits) == (best[1] < delta)
    calls: list[int] = []
    original = model.exit_logits
    monkeypatch.setattr(
        model, "exit_logits", lambda e, hidden: calls.append(e) or original(e, hidden)
    )
    out = generator.generate(PROMPTS, max_new_tokens=NEW, eos_token_id=[])
    assert 0 not in calls
    select = torch.zeros_like(out.attention_mask)
    select[:, out.prompt_length : out.prompt_length + NEW - 1] = True
    traced = token_trace(model, out.sequences, out.attention_mask, select=select)
    simulated = adaptix.simulate(traced, policy).exit_index.view(len(PROMPTS), NEW - 1)
    assert simulated.tolist() == [row[1:] for row in out.exits]


def _family(name: str, **extra: Any) -> Any:
    config_class = getattr(transformers, f"{name}Config")
    model_class = getattr(transformers, f"{name}ForCausalLM")
    config = config_class(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
        tie_word_embeddings=False,
        **extra,
    )
    torch.manual_seed(0)
    model = model_class(config).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize(
    ("family", "extra"),
    [
        ("Qwen2", {}),
        ("Qwen3", {"head_dim": 16}),
        ("Mistral", {"sliding_window": 64}),
        ("Llama", {"attention_bias": True, "mlp_bias": True}),
    ],
)
def test_other_families_generate_as_transformers_does(family: str, extra: dict[str, Any]) -> None:
    hf = _family(family, **extra)
    model = adaptix.build_decoder("causal_lm", hf, exit_layers=[1])
    prompts = PROMPTS[:4]
    out = EarlyExitGenerator(model).generate(prompts, max_new_tokens=8)
    ids, mask = _padded(prompts)
    reference = hf.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0
    )
    expected = []
    for row in reference[:, ids.shape[1] :].tolist():
        expected.append(row[: row.index(2) + 1] if 2 in row else row)
    assert out.tokens == expected


def test_sequences_beyond_a_sliding_window_are_refused() -> None:
    model = adaptix.build_decoder(
        "causal_lm", _family("Mistral", sliding_window=16), exit_layers=[1]
    )
    with pytest.raises(ValidationError, match="sliding attention window"):
        EarlyExitGenerator(model).generate([[1, 2, 3]], max_new_tokens=20)


def test_an_unsupported_family_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(ValidationError, match="model_type 'gemma'"):
        adaptix_transformers.decoder_parts(_family("Gemma"))


def test_the_two_token_traces_share_one_pass(model: DecoderModel) -> None:
    from adaptix.online.decoder import token_traces

    ids, mask = _padded(PROMPTS)
    consistency, accuracy = token_traces(model, ids, mask)
    assert consistency.logits.data_ptr() == accuracy.logits.data_ptr()  # one copy
    assert torch.equal(consistency.labels, consistency.logits[:, -1].argmax(-1))
    # the next token of every kept slot: the row's tokens shifted by one
    expected = [
        ids[r, s + 1] for r in range(ids.shape[0]) for s in range(ids.shape[1] - 1) if mask[r, s]
    ]
    assert accuracy.labels.tolist() == [int(t) for t in expected]
    bad = mask.bool().clone()  # the last column has no next token
    with pytest.raises(ValidationError, match="no next token"):
        token_traces(model, ids, mask, select=bad)


def test_a_certified_token_policy_runs_in_the_generator(model: DecoderModel) -> None:
    # calibration text and test text are different prompts (never tokens of the same text)
    generator = torch.Generator().manual_seed(5)
    calibration_ids = torch.randint(3, 128, (48, 16), generator=generator)
    ones = torch.ones_like(calibration_ids, dtype=torch.bool)
    consistency = token_trace(model, calibration_ids, ones)
    certified = adaptix.guarantee(consistency, "confidence", early_accuracy=0.6, alpha=0.1)
    assert certified.certificate is not None
    out = EarlyExitGenerator(model, certified).generate(
        PROMPTS, max_new_tokens=NEW, eos_token_id=[]
    )
    select = torch.zeros_like(out.attention_mask)
    select[:, out.prompt_length : out.prompt_length + NEW - 1] = True
    traced = token_trace(model, out.sequences, out.attention_mask, select=select)
    simulated = adaptix.simulate(traced, certified).exit_index.view(len(PROMPTS), NEW - 1)
    assert simulated.tolist() == [row[1:] for row in out.exits]


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_compact_token_traces_decide_as_the_full_ones(model: DecoderModel, scale: float) -> None:
    from adaptix.online.decoder import compact_token_traces, token_traces

    generator = torch.Generator().manual_seed(11)
    ids = torch.randint(3, 128, (12, 14), generator=generator)
    mask = torch.ones_like(ids, dtype=torch.bool)
    full = [t.scaled(scale) for t in token_traces(model, ids, mask)]
    compact = compact_token_traces(model, ids, mask, scale=scale, batch_size=5)
    assert compact[0].num_classes < full[0].num_classes
    for big, small in zip(full, compact, strict=True):
        torch.testing.assert_close(
            small.logits.softmax(-1).amax(-1), big.logits.softmax(-1).amax(-1), rtol=1e-5, atol=1e-6
        )
        right_big = big.logits.argmax(-1) == big.labels[:, None]
        right_small = small.logits.argmax(-1) == small.labels[:, None]
        assert torch.equal(right_big, right_small)
        calibration_big, calibration_small = (
            adaptix.calibrate(big, bins=5),
            adaptix.calibrate(small, bins=5),
        )
        assert torch.equal(calibration_big.counts, calibration_small.counts)
        assert torch.equal(calibration_big.correct, calibration_small.correct)
        for name, threshold in (("confidence", 0.4), ("patience", 2)):
            pol = adaptix.policy(name, threshold)
            assert torch.equal(
                adaptix.simulate(big, pol).exit_index, adaptix.simulate(small, pol).exit_index
            )
        assert torch.equal(
            adaptix.simulate(big, adaptix.policy("pcee", 0.5, calibration_big)).exit_index,
            adaptix.simulate(small, adaptix.policy("pcee", 0.5, calibration_small)).exit_index,
        )
    # the compact calibration serves the model itself, in the generator
    from adaptix.online.decoder import vocabulary_calibration

    served = vocabulary_calibration(adaptix.calibrate(compact[0], bins=5), model)
    policy = adaptix.policy("pcee", 0.5, served)
    EarlyExitGenerator(model, policy).generate(PROMPTS, max_new_tokens=3)


def test_sequences_longer_than_the_model_or_memory_are_refused(model: DecoderModel) -> None:
    # tiny_llama was made for 512 positions
    with pytest.raises(ValidationError, match="exceed the 512 positions"):
        EarlyExitGenerator(model).generate([[1, 2, 3]], max_new_tokens=600)
    with pytest.raises(ValidationError, match=r"KV cache .* would take"):
        DecoderModel(tiny_decoder_parts(), [1]).prefill(
            torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool), 10**11
        )


def tiny_decoder_parts() -> DecoderParts:
    from adaptix.testing import tiny_decoder

    return tiny_decoder()
