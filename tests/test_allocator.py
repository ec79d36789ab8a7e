"""`adaptix.tune_cpu_allocator`: glibc's thresholds, its validation and its report."""

from __future__ import annotations

import sys

import pytest
import torch

import adaptix
from adaptix import ValidationError
from adaptix.online.allocator import _glibc, cpu_allocator_tuned

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or _glibc() is None, reason="needs Linux with glibc"
)


@glibc
def test_tuning_applies_and_is_reported() -> None:
    assert adaptix.tune_cpu_allocator(64 << 20) is True
    assert cpu_allocator_tuned() == 64 << 20
    assert adaptix.tune_cpu_allocator(64 << 20) is True  # again: nothing to do
    # Buffers above the old dynamic mmap ceiling (32 MiB) still allocate and compute correctly.
    big = torch.ones(48 << 18)  # 48 MiB of float32
    assert float(big.sum()) == 48 << 18
    assert adaptix.tune_cpu_allocator() is True
    assert cpu_allocator_tuned() == 1 << 30


@pytest.mark.parametrize("value", [0, (1 << 20) - 1, (1 << 30) + 1, 2.5e8, True, "1GiB"])
def test_out_of_range_thresholds_are_refused(value: object) -> None:
    before = cpu_allocator_tuned()
    with pytest.raises(ValidationError, match="threshold_bytes"):
        adaptix.tune_cpu_allocator(value)  # type: ignore[arg-type]
    assert cpu_allocator_tuned() == before


def test_without_glibc_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("adaptix.online.allocator._glibc", lambda: None)
    before = cpu_allocator_tuned()
    assert adaptix.tune_cpu_allocator(128 << 20) is False
    assert cpu_allocator_tuned() == before
