"""The shift monitor on the token generator: quiet on calibration-kind text, alarms on another
kind, refuses a reference of another policy or model."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch

import adaptix
from adaptix.errors import ValidationError
from adaptix.online.decoder import DecoderModel, token_trace
from adaptix.online.generate import EarlyExitGenerator
from adaptix.testing.decoder import tiny_decoder

Prompts = Callable[[int, int], list[list[int]]]


@pytest.fixture(scope="module")
def model() -> DecoderModel:
    return DecoderModel(tiny_decoder(layers=4, vocab=64), [0, 2])


def varied(n: int, seed: int) -> list[list[int]]:
    """The calibration kind: prompts of random tokens."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 64, (n, 6), generator=generator).tolist()


def repetitive(n: int, seed: int) -> list[list[int]]:
    """Another kind: one token repeated."""
    return [[5 + (seed + i) % 3] * 6 for i in range(n)]


def stream_trace(model: DecoderModel, prompts: Prompts, n: int, seed: int) -> adaptix.Trace:
    """A token trace of the model's own continuations, as the generator's stream sees them."""
    out = EarlyExitGenerator(model).generate(prompts(n, seed), max_new_tokens=10, eos_token_id=[])
    select = torch.zeros_like(out.attention_mask)
    select[:, out.prompt_length : out.prompt_length + 9] = True
    return token_trace(model, out.sequences, out.attention_mask, select=select)


@pytest.fixture(scope="module")
def policy(model: DecoderModel) -> adaptix.ExitPolicy:
    calibration = adaptix.calibrate(stream_trace(model, varied, 96, 2), bins=5)
    return adaptix.policy("pcee", 0.3, calibration)


@pytest.fixture(scope="module")
def reference(model: DecoderModel) -> adaptix.Trace:
    return stream_trace(model, varied, 96, 1)


def _watch(
    model: DecoderModel, policy: adaptix.ExitPolicy, reference: adaptix.Trace, prompts: Prompts
) -> adaptix.ShiftMonitor:
    monitor = adaptix.ShiftMonitor(policy, reference, check_every=2)
    generator = EarlyExitGenerator(model, policy, monitor=monitor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", adaptix.ShiftWarning)
        for batch in range(30):
            generator.generate(prompts(8, 100 + batch), max_new_tokens=10, eos_token_id=[])
            if monitor.alarmed:
                break
    return monitor


def test_calibration_kind_text_raises_no_alarm(
    model: DecoderModel, policy: adaptix.ExitPolicy, reference: adaptix.Trace
) -> None:
    monitor = _watch(model, policy, reference, varied)
    assert not monitor.alarmed
    assert monitor.report().inputs >= 30 * 8 * 9


def test_another_kind_of_text_raises_an_alarm(
    model: DecoderModel, policy: adaptix.ExitPolicy, reference: adaptix.Trace
) -> None:
    assert _watch(model, policy, reference, repetitive).alarmed


def test_a_monitor_of_another_policy_or_model_is_refused(
    model: DecoderModel, policy: adaptix.ExitPolicy, reference: adaptix.Trace
) -> None:
    other = adaptix.policy("pcee", 0.3, policy.calibration)
    with pytest.raises(ValidationError, match="another policy"):
        EarlyExitGenerator(model, policy, monitor=adaptix.ShiftMonitor(other, reference))
    with pytest.raises(ValidationError, match="another policy"):
        EarlyExitGenerator(model, None, monitor=adaptix.ShiftMonitor(policy, reference))
    with pytest.raises(ValidationError, match="audit=0"):
        EarlyExitGenerator(
            model, policy, monitor=adaptix.ShiftMonitor(policy, reference, audit=0.1)
        )
    with pytest.raises(ValidationError, match="ShiftMonitor"):
        EarlyExitGenerator(model, policy, monitor="mlflow")  # type: ignore[arg-type]
