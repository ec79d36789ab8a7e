"""The fused exit-decision kernel against the unfused torch reference (its baseline).

Run with ``pytest benchmarks/test_bench_kernel.py`` (``make bench`` runs every benchmark). The
triton variant needs CUDA and skips without it; the reference always runs, on CUDA when there
is one. On CUDA each timed call ends with ``torch.cuda.synchronize()``, and ``extra_info`` holds
the effective bandwidth (bytes of logits read / mean time) and its share of the device's peak.
``benchmarks/gpu_check.sh`` runs this on a GPU machine and prints the summary table.

On a CPU the reference for 4096 × 131072 needs about 10 GiB and seconds per call: pick sizes
with ``-k``, e.g. ``-k "4096x10"`` (C = 10 and 1024).
"""

from __future__ import annotations

import math

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from adaptix.kernels import (
    Backend,
    ExitDecision,
    ExitKind,
    exit_decision,
    triton_unavailable_reasons,
)

N_ROWS = 4096
N_COLS = [10, 1024, 16384, 32000, 131072]
DTYPES = [torch.float32, torch.bfloat16]
KINDS: list[ExitKind] = ["confidence", "entropy", "table"]
THRESHOLD = {"confidence": 0.5, "entropy": 0.5, "table": 0.7}
SAMPLE_ROWS = 256

# Peak DRAM bandwidth in bytes/s of the devices we measure on, keyed by words that must all
# appear in torch.cuda.get_device_name(): "NVIDIA H100 80GB HBM3" is the SXM part, while
# "NVIDIA H100 PCIe" and "NVIDIA H100 NVL" have other peaks and stay unknown.
PEAK_BANDWIDTH: list[tuple[tuple[str, ...], float]] = [
    (("NVIDIA H200",), 4.8e12),
    (("H100", "HBM3"), 3.35e12),
    (("A100", "80GB"), 2.0e12),
]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def peak_bandwidth(device_name: str) -> float | None:
    """The device's peak bandwidth in bytes/s, or None where the table does not know it."""
    for words, peak in PEAK_BANDWIDTH:
        if all(word in device_name for word in words):
            return peak
    return None


def check_decision(
    decision: ExitDecision,
    logits: torch.Tensor,
    threshold: float,
    kind: ExitKind,
    table: torch.Tensor | None,
) -> None:
    """Assert the decision against a float64 softmax (on sampled rows) and the exit rule (all)."""
    rows = logits[:SAMPLE_ROWS].double()
    probs = torch.softmax(rows, dim=1)
    assert torch.equal(decision.prediction[:SAMPLE_ROWS], rows.argmax(dim=1))
    # A float32 sum of C terms has a typical rounding error of about sqrt(C) ulps: torch's own
    # CPU softmax was off by 1.1e-5 at C = 32000 (sqrt(C) * 2^-24 = 1.1e-5). The bounds allow
    # 8 times that, and never less than 1e-5.
    bound = max(1e-5, 8 * math.sqrt(logits.shape[1]) * 2.0**-24)
    torch.testing.assert_close(
        decision.confidence[:SAMPLE_ROWS].double(), probs.amax(dim=1), rtol=0, atol=bound
    )
    score = decision.score.double()
    if kind == "confidence":
        assert torch.equal(decision.exit_mask, score >= threshold)
    elif kind == "entropy":
        entropy = -torch.special.xlogy(probs, probs).sum(dim=1) / math.log(logits.shape[1])
        torch.testing.assert_close(score[:SAMPLE_ROWS], entropy, rtol=0, atol=5 * bound)
        assert torch.equal(decision.exit_mask, score <= threshold)
    else:
        assert table is not None
        bins = (decision.confidence * table.shape[0]).floor().clamp(max=table.shape[0] - 1)
        accuracy = table[bins.long()]
        torch.testing.assert_close(score, accuracy.float().double(), equal_nan=True)
        assert torch.equal(decision.exit_mask, accuracy >= threshold)


@pytest.mark.parametrize("n_cols", N_COLS, ids=lambda n_cols: f"{N_ROWS}x{n_cols}")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: str(dtype).removeprefix("torch."))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["torch", "triton"], ids=["reference", "fused"])
def test_exit_decision(
    benchmark: BenchmarkFixture, backend: Backend, kind: ExitKind, dtype: torch.dtype, n_cols: int
) -> None:
    generator = torch.Generator().manual_seed(n_cols)
    logits = (torch.randn(N_ROWS, n_cols, generator=generator) * 4).to(DEVICE, dtype)
    table = None
    if kind == "table":
        table = torch.linspace(0.3, 1.0, 10, dtype=torch.float64)
        table[4] = math.nan
        table = table.to(DEVICE)
    if backend == "triton":
        reasons = triton_unavailable_reasons(logits, table=table)
        if DEVICE != "cuda" or reasons:
            pytest.skip(f"the fused kernel cannot run here: {'; '.join(reasons) or 'no CUDA'}")
    threshold = THRESHOLD[kind]

    def timed() -> ExitDecision:
        decision = exit_decision(logits, threshold, kind=kind, table=table, backend=backend)
        if DEVICE == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously: time their completion
        return decision

    # The first call is checked (and compiles the kernel, outside the timed rounds).
    check_decision(timed(), logits, threshold, kind, table)
    benchmark(timed)

    read = logits.numel() * logits.element_size()
    benchmark.extra_info["dtype"] = str(dtype).removeprefix("torch.")
    benchmark.extra_info["n_elements"] = logits.numel()
    benchmark.extra_info["bytes_read"] = read
    if DEVICE == "cuda" and benchmark.stats is not None:
        name = torch.cuda.get_device_name()
        bandwidth = read / benchmark.stats.stats.mean
        peak = peak_bandwidth(name)
        benchmark.extra_info["device"] = name
        benchmark.extra_info["bandwidth_bytes_per_s"] = bandwidth
        benchmark.extra_info["peak_bytes_per_s"] = peak if peak is not None else "unknown"
        benchmark.extra_info["fraction_of_peak"] = bandwidth / peak if peak else "unknown"
