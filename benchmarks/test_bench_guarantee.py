"""`adaptix.guarantee` against a `sweep` of the same candidate thresholds.

Issue target: certifying on 10,000 calibration inputs × 10 exits × 200 thresholds takes under a
second. The baseline is the sweep of the same 200 confidence thresholds on the same trace,
measured in the same run (the certification computes the same exits, then one p-value per
threshold); the ratio goes to ``extra_info`` and the absolute time is printed for the target.
The first call of each benchmark is checked against `simulate`.
"""

from __future__ import annotations

import pytest

import adaptix
from adaptix.plugins import AdaptixPluginManager
from adaptix.testing import synthetic_trace


@pytest.fixture(scope="module")
def calibration_trace() -> adaptix.Trace:
    """10,000 inputs, 10 exits, 10 classes (seeded)."""
    return synthetic_trace(10_000, 10, 10, seed=3)


def test_sweep_of_the_candidates(benchmark, calibration_trace, plugins, timings) -> None:
    grid = adaptix.get_plugin_manager().criteria.get("confidence").default_thresholds(200)
    frontier = benchmark(adaptix.sweep, calibration_trace, "confidence", grid, plugins=plugins)
    assert len(frontier) == len(grid)
    if not benchmark.disabled:
        timings["guarantee_baseline_sweep"] = benchmark.stats.stats.mean


def test_guarantee(benchmark, calibration_trace, plugins: AdaptixPluginManager, timings):
    policy = benchmark(
        adaptix.guarantee, calibration_trace, "confidence", early_accuracy=0.9, plugins=plugins
    )
    certificate = policy.certificate
    assert certificate is not None
    assert certificate.certified
    result = adaptix.simulate(calibration_trace, policy)
    assert result.early_accuracy == pytest.approx(certificate.estimate)
    if benchmark.disabled:
        return
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["seconds"] = round(mean, 4)
    baseline = timings.get("guarantee_baseline_sweep")
    if baseline:
        benchmark.extra_info["ratio_vs_sweep"] = round(mean / baseline, 2)
    print(f"\nguarantee on 10,000 × 10 × 200: {mean:.3f} s (target < 1 s)")
