"""The sequence-level certificate (`adaptix.online.sequence.certify_sequences`): Learn-then-Test
over thresholds on the risk of a generated continuation against the full model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptix import ValidationError
from adaptix.core.bounds import hoeffding_bentkus_pvalue
from adaptix.offline.policy import policy
from adaptix.online.decoder import DecoderModel
from adaptix.online.generate import EarlyExitGenerator
from adaptix.online.sequence import certify_sequences, generate_all, sequence_losses
from adaptix.testing.decoder import tiny_decoder


@pytest.fixture(scope="module")
def model() -> DecoderModel:
    return DecoderModel(tiny_decoder(layers=6, seed=3), [1, 3])


def _prompts(n: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 64, (n, 5), generator=generator).tolist()


def test_losses_count_positions_that_differ_and_sequences_that_differ() -> None:
    early = [[1, 2, 3, 4], [1, 2, 3, 4], [1, 9, 3]]
    full = [[1, 2, 3, 4], [1, 2, 0, 0], [1, 2, 3, 4]]
    assert sequence_losses(early, full, 4).tolist() == [0.0, 0.5, 0.5]
    assert sequence_losses(early, full, 4, "differs").tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValidationError, match="as many"):
        sequence_losses(early, full[:2], 4)


@pytest.mark.parametrize("risk", [0.05, 0.3, 0.9])
def test_the_certified_threshold_is_the_last_the_fixed_sequence_rejects(
    model: DecoderModel, risk: float
) -> None:
    prompts = _prompts(60, seed=0)
    thresholds = (0.99, 0.9, 0.7, 0.5, 0.3, 0.1)
    chosen, certificate = certify_sequences(
        model,
        prompts,
        "confidence",
        risk=risk,
        thresholds=thresholds,
        max_new_tokens=6,
        batch_size=7,
        eos_token_id=[],
        progress=False,
    )
    # an independent recount of every tested threshold
    full = generate_all(EarlyExitGenerator(model, None), prompts, 6, 60, eos_token_id=[])
    passed = []
    for threshold, mean, p in certificate.tested:
        early = generate_all(
            EarlyExitGenerator(model, policy("confidence", threshold)), prompts, 6, 60, []
        )
        recount = float(sequence_losses(early, full, 6).mean())
        assert mean == pytest.approx(recount)
        assert p == pytest.approx(float(hoeffding_bentkus_pvalue(recount, 60, risk)))
        passed.append(p <= 0.05)
    # fixed sequence: every tested threshold but the last passed; the last failed, or it was
    # the grid's end
    assert all(passed[:-1])
    if passed[-1]:
        assert len(passed) == len(thresholds)
        expected = certificate.tested[-1][0]
    else:
        expected = None if len(passed) == 1 else certificate.tested[-2][0]
    assert certificate.threshold == expected
    assert (chosen is None) == (expected is None)
    if chosen is not None:
        assert chosen.threshold == expected
        assert certificate.calibration_loss is not None
        assert certificate.calibration_loss < risk
    assert certificate.prompts == 60
    assert str(risk) in certificate.statement() or "nothing certified" in certificate.statement()


def test_a_loose_risk_certifies_more_exits_than_a_tight_one(model: DecoderModel) -> None:
    prompts = _prompts(80, seed=1)
    thresholds = (0.99, 0.9, 0.7, 0.5, 0.3, 0.1)
    tight = certify_sequences(
        model,
        prompts,
        risk=0.02,
        thresholds=thresholds,
        max_new_tokens=6,
        eos_token_id=[],
        progress=False,
    )[1]
    loose = certify_sequences(
        model,
        prompts,
        risk=0.95,
        thresholds=thresholds,
        max_new_tokens=6,
        eos_token_id=[],
        progress=False,
    )[1]
    assert loose.threshold is not None
    assert tight.threshold is None or loose.threshold <= tight.threshold


def test_the_statement_holds_on_fresh_prompts_at_the_certified_threshold(
    model: DecoderModel,
) -> None:
    """On a large fresh sample the certified rule's mean loss is at most ε (plus sampling
    slack), as the certificate promises for prompts drawn like the calibration ones."""
    chosen, certificate = certify_sequences(
        model,
        _prompts(100, seed=2),
        risk=0.4,
        thresholds=(0.99, 0.9, 0.7, 0.5, 0.3, 0.1),
        max_new_tokens=6,
        eos_token_id=[],
        progress=False,
    )
    assert chosen is not None
    fresh = _prompts(400, seed=3)
    full = generate_all(EarlyExitGenerator(model, None), fresh, 6, 50, [])
    early = generate_all(EarlyExitGenerator(model, chosen), fresh, 6, 50, [])
    losses = sequence_losses(early, full, 6)
    assert losses.mean() <= certificate.risk + 2 * losses.std() / np.sqrt(len(losses))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"risk": 0.0}, "risk"),
        ({"risk": 0.2, "alpha": 1.0}, "alpha"),
        ({"risk": 0.2, "loss": "rouge"}, "loss"),
        ({"risk": 0.2, "thresholds": ()}, "threshold"),
        ({"risk": 0.2, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_refused(model: DecoderModel, kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        certify_sequences(model, _prompts(3, 0), progress=False, **kwargs)
    with pytest.raises(ValidationError, match="prompt"):
        certify_sequences(model, [], risk=0.2, progress=False)
