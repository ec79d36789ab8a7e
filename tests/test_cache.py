"""`ModelCache`: entries round-trip, and a corrupt entry is reported and never used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptix.core.cache import ModelCache

KEY = "cd" * 32
STATE = {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.zeros(2)}


def test_an_entry_round_trips(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    path = cache.save("m", KEY, STATE, {"seconds": 1.5})
    assert path == cache.path("m", KEY)
    loaded = cache.load("m", KEY)
    assert loaded is not None
    state, info = loaded
    assert state.keys() == STATE.keys()
    assert all(torch.equal(state[name], STATE[name]) for name in STATE)
    assert info == {"seconds": 1.5}
    assert cache.load("m", "ef" * 32) is None


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ("not json", "corrupt model cache entry"),
        (None, "corrupt model cache entry"),
        (3, "corrupt model cache entry"),
        ("[1, 2]", "invalid model cache entry .* info"),
    ],
    ids=["not-json", "none", "int", "json-list"],
)
def test_an_entry_with_corrupt_info_is_retrained(tmp_path: Path, info: object, message) -> None:
    cache = ModelCache(tmp_path)
    path = cache.save("m", KEY, STATE, {})
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "info": info}, path)  # weights and checksum still valid
    with pytest.warns(UserWarning, match=message):
        assert cache.load("m", KEY) is None
