"""Scale-out on Ray (`adaptix.distributed`): throughput of tracing + calibration + threshold
counts on 1 and 2 workers against the single-process path, and the driver's peak memory on a
stream far larger than it holds.

- Throughput: the same ROWS synthetic inputs through a small MLP with exits, traced and counted
  (calibration tables and a confidence grid) in one process (`model.trace`, `calibrate`,
  `count_thresholds`) and on a local Ray cluster with 1 and 2 tracing actors. Each path's
  result is checked against the single-process one (counts equal) on its first call.
- Memory: STREAM_ROWS rows generated on the workers (never on the driver), traced and counted;
  the driver's resident memory is sampled every 50 ms, and its peak growth over the run is
  compared with a run of a tenth of the rows: flat means it does not grow with the rows.

Figures are ratios against the single-process path measured in the same session; the table
prints at the end. On two cores, Ray's fixed costs (actor start, scheduling, serialisation)
are a large part of a small job; the design's point is that the driver only ever holds counts.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

import adaptix

# Before Ray is imported: bind the local cluster to 127.0.0.1 only, report no usage.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="needs Ray Data: pip install 'adaptix[ray]'")
psutil = pytest.importorskip("psutil", reason="Ray's dependency psutil samples memory")

from adaptix.distributed import (  # noqa: E402  # after the skip
    SavedModel,
    ThresholdSpec,
    reduce_statistics,
    trace_dataset,
)
from adaptix.offline.statistics import count_thresholds  # noqa: E402

ROWS = 200_000
STREAM_ROWS = 2_000_000
FEATURES = 32
GRID = [0.3, 0.5, 0.7, 0.9]
BATCH = 8192


def features(ids: np.ndarray) -> np.ndarray:
    """Deterministic inputs of rows ``ids`` (so a worker can generate its own shard)."""
    phase = ids.astype(np.float32)[:, None] * np.arange(1, FEATURES + 1, dtype=np.float32)
    return np.sin(phase * 0.001).astype(np.float32)


def labels(ids: np.ndarray) -> np.ndarray:
    return (ids % 10).astype(np.int64)


def generate(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ids = batch["id"]
    return {"inputs": features(ids), "label": labels(ids)}


@dataclass
class Table:
    """The session's figures, printed at the end (a pytest plugin, like the runtime's)."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.rows:
            return
        terminalreporter.write_sep("-", "scale-out on Ray (2 local CPUs)")
        for name, value in self.rows:
            terminalreporter.write_line(f"{name:<48} {value}")


@pytest.fixture(scope="session")
def table(request: pytest.FixtureRequest) -> Table:
    collector = Table()
    request.config.pluginmanager.register(collector, "adaptix-distributed-table")
    return collector


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    # The workers cannot import this benchmark module: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[adaptix.MultiExitModel, SavedModel]:
    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        *(
            torch.nn.Sequential(torch.nn.Linear(FEATURES, FEATURES), torch.nn.ReLU())
            for _ in range(4)
        )
    )
    built = adaptix.build_model(
        "sequential", num_classes=10, source=layers, example_input=torch.zeros(2, FEATURES)
    ).eval()
    path = tmp_path_factory.mktemp("model") / "mlp.pt"
    torch.save(built.state_dict(), path)
    factory = SavedModel(
        str(path), "sequential", 10, source=layers, example_input=torch.zeros(2, FEATURES)
    )
    return built, factory


def single_process(model: adaptix.MultiExitModel) -> tuple[adaptix.Calibration, Any]:
    ids = np.arange(ROWS)
    trace = model.trace(torch.from_numpy(features(ids)), torch.from_numpy(labels(ids)), BATCH)
    return adaptix.calibrate(trace), count_thresholds(trace, "confidence", GRID)


def on_ray(factory: SavedModel, workers: int, rows: int, costs: list[float]) -> Any:
    inputs = ray.data.range(rows).map_batches(generate, batch_format="numpy", batch_size=BATCH)
    # Half a CPU reserved per actor: the read of ray.data.range needs a CPU of its own.
    logits = trace_dataset(inputs, factory, batch_size=BATCH, workers=workers, cpus_per_worker=0.5)
    return reduce_statistics(
        logits, costs, bins=10, thresholds=[ThresholdSpec("confidence", GRID)], batch_size=BATCH
    )


def test_single_process(
    benchmark: BenchmarkFixture,
    model: tuple[adaptix.MultiExitModel, SavedModel],
    table: Table,
    timings: dict[str, float],
) -> None:
    built, _ = model
    benchmark.pedantic(single_process, args=(built,), rounds=2, iterations=1)
    timings["distributed-single"] = benchmark.stats["min"]
    table.rows.append(("single process: rows / s", f"{ROWS / benchmark.stats['min']:,.0f}"))


@pytest.mark.parametrize("workers", [1, 2])
def test_on_ray(
    benchmark: BenchmarkFixture,
    cluster: None,
    model: tuple[adaptix.MultiExitModel, SavedModel],
    table: Table,
    timings: dict[str, float],
    workers: int,
) -> None:
    built, factory = model
    expected_calibration, expected_counts = single_process(built)
    costs = built.trace(torch.zeros(2, FEATURES)).costs.tolist()
    got = on_ray(factory, workers, ROWS, costs)
    assert torch.equal(got.calibration.counts, expected_calibration.counts)
    assert torch.equal(got.counts["confidence"].exits, expected_counts.exits)
    benchmark.pedantic(on_ray, args=(factory, workers, ROWS, costs), rounds=2, iterations=1)
    seconds = benchmark.stats["min"]
    single = timings.get("distributed-single")
    ratio = f" ({single / seconds:.2f}× the single process)" if single else ""
    table.rows.append(
        (f"Ray, {workers} tracing actor(s): rows / s", f"{ROWS / seconds:,.0f}{ratio}")
    )


def peak_growth(work: Any) -> tuple[float, Any]:
    """Run ``work``; the peak growth of this process's resident memory during it, in MiB."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak = start
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return (peak - start) / 2**20, result


def test_driver_memory_stays_flat(
    cluster: None, model: tuple[adaptix.MultiExitModel, SavedModel], table: Table
) -> None:
    built, factory = model
    costs = built.trace(torch.zeros(2, FEATURES)).costs.tolist()
    small, small_stats = peak_growth(lambda: on_ray(factory, 2, STREAM_ROWS // 10, costs))
    large, large_stats = peak_growth(lambda: on_ray(factory, 2, STREAM_ROWS, costs))
    assert large_stats.num_inputs == STREAM_ROWS
    assert small_stats.num_inputs == STREAM_ROWS // 10
    logits_mib = STREAM_ROWS * built.num_exits * 10 * 4 / 2**20
    table.rows.append(
        (
            f"driver peak growth, {STREAM_ROWS // 10:,} rows",
            f"{small:.0f} MiB",
        )
    )
    table.rows.append(
        (
            f"driver peak growth, {STREAM_ROWS:,} rows",
            f"{large:.0f} MiB (their logits alone: {logits_mib:,.0f} MiB)",
        )
    )
    # Flat: ten times the rows may not cost the driver a tenth of their logits.
    assert large - small < logits_mib / 10
