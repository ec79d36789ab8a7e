"""Exit adapters of a frozen decoder: identity at the start, trained by distillation, cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptix.errors import ValidationError
from adaptix.online import lm_adapters
from adaptix.online.decoder import DecoderModel, token_trace
from adaptix.online.lm_adapters import AdapterRecipe, AffineAdapter, train_adapters
from adaptix.testing.decoder import tiny_decoder

RECIPE = AdapterRecipe(epochs=15, lr=1e-2, batch_size=128)


@pytest.fixture(scope="module")
def text() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (24, 20), generator=generator)
    return ids, torch.ones_like(ids, dtype=torch.bool)


def _agreement(model: DecoderModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    trace = token_trace(model, ids, mask)
    return (trace.logits.argmax(-1) == trace.labels[:, None]).double().mean(0)


def test_untrained_adapters_are_the_plain_read_out(text: tuple[torch.Tensor, torch.Tensor]) -> None:
    parts = tiny_decoder()
    plain = DecoderModel(parts, [0, 2])
    adapted = DecoderModel(
        parts, [0, 2], adapters=[AffineAdapter(32).double(), AffineAdapter(32).double()]
    )
    torch.testing.assert_close(plain.token_logits(*text), adapted.token_logits(*text))


def test_distillation_raises_agreement_with_the_full_model(
    text: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    parts = tiny_decoder()
    model = DecoderModel(parts, [0, 2])
    before = _agreement(model, *text)
    adapters = train_adapters(model, *text, RECIPE, cache=tmp_path, progress=False)
    after = _agreement(DecoderModel(parts, [0, 2], adapters=adapters), *text)
    assert after[-1] == before[-1] == 1.0
    assert bool((after[:-1] > before[:-1] + 0.05).all()), (before, after)


def test_trained_adapters_are_cached_by_their_inputs(
    text: tuple[torch.Tensor, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = tiny_decoder()
    model = DecoderModel(parts, [0, 2])
    first = train_adapters(model, *text, RECIPE, cache=tmp_path, progress=False)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(lm_adapters, "exit_hidden_states", no_training)
    again = train_adapters(model, *text, RECIPE, cache=tmp_path, progress=False)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.linear.weight, b.linear.weight)
    # other tokens, another recipe or other exits are other keys: they train
    with pytest.raises(AssertionError, match="trained again"):
        train_adapters(model, text[0][:12], text[1][:12], RECIPE, cache=tmp_path, progress=False)
    with pytest.raises(AssertionError, match="trained again"):
        train_adapters(model, *text, AdapterRecipe(epochs=1), cache=tmp_path, progress=False)
    with pytest.raises(AssertionError, match="trained again"):
        train_adapters(DecoderModel(parts, [1, 2]), *text, RECIPE, cache=tmp_path, progress=False)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"loss": "mse"}, "adapter loss"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": True}, "batch_size"),
        ({"lr": 5.0}, "lr"),
    ],
)
def test_a_bad_recipe_is_a_validation_error(fields: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        AdapterRecipe(**fields)  # type: ignore[arg-type]


def test_adapters_must_match_the_exits() -> None:
    with pytest.raises(ValidationError, match="one adapter per early exit"):
        DecoderModel(tiny_decoder(), [0, 2], adapters=[AffineAdapter(32)])
