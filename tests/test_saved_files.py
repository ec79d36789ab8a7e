"""Files saved by adaptix 0.1.0 (``tests/data/v0.1``, written at commit ffea157, before the
layout by layer) load with this version and hold what they held.

None of them is a pickle of adaptix objects: traces and model cache entries are torch files of
plain tensors and strings (read with ``weights_only=True``), calibrations and policies are JSON
with a format name (``"adaptix.trace"`` and siblings: names of formats, not module paths, so
they stay as they are when modules move).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import adaptix
from adaptix.core.cache import ModelCache
from adaptix.experiment import load_config
from adaptix.experiment.datasets import DataSource
from adaptix.experiment.training import model_cache_key
from adaptix.testing import synthetic_trace

DATA = Path(__file__).resolve().parent / "data" / "v0.1"


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return json.loads((DATA / "expected.json").read_text(encoding="utf-8"))


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def test_a_saved_trace_loads(expected: dict[str, Any]) -> None:
    trace = adaptix.Trace.load(DATA / "trace.pt")
    want = expected["trace"]
    assert list(trace.logits.shape) == want["shape"]
    assert trace.labels is not None
    assert _digest(trace.logits) == want["logits_sha256"]
    assert _digest(trace.labels) == want["labels_sha256"]
    assert trace.costs.tolist() == want["costs"]
    same = synthetic_trace(200, 3, 4)  # what 0.1.0 saved, drawn again by this version
    assert torch.equal(trace.logits, same.logits)
    assert torch.equal(trace.labels, same.labels)


def test_a_saved_calibration_loads(expected: dict[str, Any]) -> None:
    calibration = adaptix.Calibration.load(DATA / "calibration.json")
    want = expected["calibration"]
    assert calibration.counts.tolist() == want["counts"]
    assert calibration.correct.tolist() == want["correct"]
    assert calibration.edges.tolist() == want["edges"]
    assert calibration.method == want["method"]


def test_a_saved_policy_loads_and_decides_as_before(expected: dict[str, Any]) -> None:
    policy = adaptix.ExitPolicy.load(DATA / "policy.json")
    assert (policy.name, policy.threshold) == (
        expected["policy"]["criterion"],
        expected["policy"]["threshold"],
    )
    assert policy.certificate is None
    calibration = adaptix.Calibration.load(DATA / "calibration.json")
    rebuilt = adaptix.policy("pcee", 0.9, calibration)
    trace = adaptix.Trace.load(DATA / "trace.pt")
    assert torch.equal(
        adaptix.simulate(trace, policy).exit_index, adaptix.simulate(trace, rebuilt).exit_index
    )


def test_a_saved_certified_policy_loads_with_its_certificate(expected: dict[str, Any]) -> None:
    policy = adaptix.ExitPolicy.load(DATA / "policy-certified.json")
    want = expected["certified"]
    assert (policy.name, policy.threshold) == (want["criterion"], want["threshold"])
    assert policy.certificate is not None
    assert json.loads(json.dumps(policy.certificate.to_dict())) == want["certificate"]
    trace = adaptix.Trace.load(DATA / "trace.pt")
    adaptix.verify_certificate(policy, trace)  # the evidence it was certified on


def test_a_saved_model_cache_entry_is_found_and_loads(expected: dict[str, Any]) -> None:
    want = expected["model_cache"]
    config = load_config()
    spec = config.models[0]
    source = DataSource(
        "Fashion-MNIST", "/nowhere", "0" * 64, {"train": 1, "calibration": 1, "test": 1}
    )
    key = model_cache_key(spec, config, source)
    assert (spec.name, key) == (want["name"], want["key"])  # the job finds the entry it wrote
    cache = ModelCache(DATA / "model-cache")
    assert cache.path(spec.name, key).name == want["file"]
    loaded = cache.load(spec.name, key)
    assert loaded is not None
    state, info = loaded
    assert {k: _digest(v) for k, v in state.items()} == want["state_sha256"]
    assert info == want["info"]
