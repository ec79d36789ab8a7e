"""Scale-out on Ray Data (`adaptix.distributed`) on a local 2-CPU cluster bound to loopback:
tracing on an actor pool gives the model's own logits, and the statistics reduced by addition
equal the single-process ones (counts exactly; float sums within summation-order error)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import adaptix
from adaptix.core.calibration import count_bins
from adaptix.errors import AdaptixError, ValidationError
from adaptix.testing import synthetic_trace

# Before Ray is imported: bind the local cluster to 127.0.0.1 only, report no usage.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="needs Ray Data: pip install 'adaptix[ray]'")

from adaptix.distributed import (  # noqa: E402  # after the skip: needs nothing of Ray itself
    SavedModel,
    ThresholdSpec,
    collect_trace,
    import_ray,
    reduce_statistics,
    reduce_survivors,
    trace_dataset,
)

ROWS = 300
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster of 2 CPUs, bound to 127.0.0.1 only, shut down after the module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[SavedModel, adaptix.Trace]:
    """A small ResNet with exits (seeded weights) saved to a file, and its trace of ROWS
    random inputs computed here, in this process."""
    torch.manual_seed(0)
    model = adaptix.build_model("resnet", num_classes=10, backbone_params={"size": "small"})
    model.eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(model.state_dict(), path)
    inputs = torch.randn(ROWS, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(10, (ROWS,), generator=torch.Generator().manual_seed(2))
    trace = model.trace(inputs, labels, 64)
    factory = SavedModel(str(path), "resnet", 10, backbone_params={"size": "small"})
    return factory, trace


def inputs_dataset(trace: adaptix.Trace) -> Any:
    inputs = torch.randn(ROWS, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert trace.labels is not None
    return ray.data.from_items(
        [{"inputs": inputs[i].numpy(), "label": int(trace.labels[i])} for i in range(ROWS)]
    )


def test_tracing_on_an_actor_pool_gives_the_model_s_logits(
    cluster: None, saved: tuple[SavedModel, adaptix.Trace]
) -> None:
    factory, expected = saved
    logits = trace_dataset(inputs_dataset(expected), factory, batch_size=64, workers=2)
    got = collect_trace(logits, expected.costs.tolist())
    assert got.num_inputs == ROWS
    # Row i of the trace is input i, in whatever order the actors finished their blocks.
    assert got.labels is not None
    assert expected.labels is not None
    assert torch.equal(got.labels, expected.labels)
    # float32 convolutions in another process (one thread, another oneDNN schedule) round
    # differently; another model's logits would differ by O(1).
    assert torch.allclose(got.logits, expected.logits, atol=1e-4, rtol=1e-4)


def test_collect_trace_keeps_input_order_when_blocks_finish_out_of_order(cluster: None) -> None:
    class SlowFirstBlock:  # local, so the workers get it by value (tests/ is not importable)
        """Finishes the block holding row 0 last: blocks leave the pool out of order unless
        the consumer asks for order."""

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            import time

            if int(batch["id"][0]) == 0:
                time.sleep(2.0)
            ids = batch["id"].astype("float32")
            return {"logits": ids.reshape(-1, 1, 1).repeat(2, axis=2)}

    finished_late = ray.data.range(40, override_num_blocks=4).map_batches(
        SlowFirstBlock, batch_size=10, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5
    )
    got = collect_trace(finished_late, [1.0])
    assert torch.equal(got.logits[:, 0, 0], torch.arange(40, dtype=torch.float32))
    # The order is asked for on a copy: Ray's global context is left as it was.
    assert not ray.data.DataContext.get_current().execution_options.preserve_order


def test_reduced_statistics_equal_the_single_process_ones(
    cluster: None, saved: tuple[SavedModel, adaptix.Trace]
) -> None:
    """Traced on actors and counted in uneven batches, streaming: the calibration and the
    per-threshold counts of confidence and pcee equal what one process computes."""
    factory, trace = saved
    whole = adaptix.calibrate(trace)
    logits = trace_dataset(inputs_dataset(trace), factory, batch_size=64, workers=2)
    specs = [
        ThresholdSpec("confidence", [0.2, 0.5, 0.9]),
        ThresholdSpec("pcee", [0.1, 0.3, 0.6]),
    ]
    stats = reduce_statistics(
        logits, trace.costs.tolist(), bins=10, thresholds=specs, calibration=whole, batch_size=70
    )
    assert stats.num_inputs == ROWS
    calibration = stats.calibration
    assert calibration is not None
    assert torch.equal(calibration.counts, whole.counts)
    assert torch.equal(calibration.correct, whole.correct)
    # Float sums in another order: equal up to float64 rounding.
    assert torch.allclose(calibration.confidence_sum, whole.confidence_sum, rtol=1e-12, atol=0)
    from adaptix.offline.statistics import count_thresholds

    for spec in specs:
        expected = count_thresholds(
            trace, spec.criterion, spec.thresholds, whole if spec.criterion == "pcee" else None
        )
        got = stats.counts[spec.criterion]
        assert torch.equal(got.exits, expected.exits), spec.criterion
        assert got.correct is not None
        assert expected.correct is not None
        assert torch.equal(got.correct, expected.correct), spec.criterion
        assert got.points() == expected.points(), spec.criterion


def test_counting_with_the_edges_of_another_calibration(cluster: None) -> None:
    """Equal-mass edges fitted once, every shard counted with them: the distributed tables
    equal `count_bins` of the whole trace with those edges."""
    trace = synthetic_trace(900, 4, 6, seed=3)
    first = adaptix.calibrate(trace, "equal_mass", bins=8)
    logits = ray.data.from_items(
        [{"logits": trace.logits[i].numpy(), "label": int(trace.labels[i])} for i in range(900)]  # type: ignore[index]  # labelled
    )
    stats = reduce_statistics(
        logits, trace.costs.tolist(), bins=8, edges=first.edges, batch_size=100
    )
    expected = count_bins(trace, 8, edges=first.edges)
    assert stats.calibration is not None
    assert torch.equal(stats.calibration.counts, expected.counts)
    assert torch.equal(stats.calibration.edges, expected.edges)


@pytest.mark.parametrize(
    ("criterion", "params", "edges"),
    [("pcee", {}, False), ("pcee_lcb", {"bonferroni": True}, True)],
)
def test_survivor_counts_reduced_on_ray_equal_calibrate_survivors(
    cluster: None, criterion: str, params: dict[str, Any], edges: bool
) -> None:
    """One reduction per exit, shards of uneven size (the last one short): the survivor
    counts of every δ equal `calibrate_survivors` on the whole trace exactly (confidence
    sums up to summation order), and so does each δ's calibration."""
    trace = synthetic_trace(500, 4, 5, seed=7).scaled(2.0)
    assert trace.labels is not None
    deltas = [0.5, 0.7, 0.9, 0.95]
    bin_edges = adaptix.calibrate(trace, "equal_mass", bins=6).edges if edges else None
    expected = adaptix.calibrate_survivors(
        trace, deltas, criterion, bins=6, edges=bin_edges, **params
    )
    logits = ray.data.from_items(
        [{"logits": trace.logits[i].numpy(), "label": int(trace.labels[i])} for i in range(500)]
    )
    got = reduce_survivors(
        logits,
        trace.costs.tolist(),
        deltas,
        criterion,
        bins=6,
        edges=bin_edges,
        params=params,
        batch_size=120,
    )
    assert got.complete
    assert (got.criterion, got.params, got.deltas) == (
        expected.criterion,
        expected.params,
        expected.deltas,
    )
    assert torch.equal(got.counts, expected.counts)
    assert torch.equal(got.correct, expected.correct)
    assert torch.equal(got.edges, expected.edges)
    assert got.rows is not None
    assert expected.rows is not None
    assert torch.equal(got.rows, expected.rows)
    assert torch.allclose(got.confidence_sum, expected.confidence_sum, rtol=1e-12, atol=0)
    # Survivors really leave: the later exits count fewer inputs than exit 0.
    assert bool((got.counts.sum(dim=2)[:, -1] < 500).any())
    for delta in deltas:
        assert got.calibration(delta).counts.equal(expected.calibration(delta).counts)


def test_survivor_counting_checks_the_rule_before_reading_a_row(cluster: None) -> None:
    logits = ray.data.from_items([{"logits": torch.zeros(4, 5).numpy(), "label": 0}])
    with pytest.raises(adaptix.PluginError, match="whose bin_table returns None"):
        reduce_survivors(logits, [1.0, 2.0, 3.0, 4.0], [0.9], "confidence")
    with pytest.raises(ValidationError, match="distinct"):
        reduce_survivors(logits, [1.0, 2.0, 3.0, 4.0], [0.9, 0.9])


def test_a_monitor_reference_counted_on_ray_equals_the_trace_s(cluster: None) -> None:
    """The shift monitor's reference histograms (exit-0 bins, exits, bins of the inputs that
    reach each exit), counted in shards: equal to `reference_counts` of the whole trace, and a
    monitor built from them tests as one built from the trace."""
    from adaptix.online.monitor import reference_counts

    trace = synthetic_trace(900, 4, 6, seed=5)
    policy = adaptix.policy("pcee", 0.7, adaptix.calibrate(trace))
    logits = ray.data.from_items([{"logits": trace.logits[i].numpy()} for i in range(900)])
    stats = reduce_statistics(logits, trace.costs.tolist(), monitor=policy, batch_size=128)
    expected = reference_counts(trace, policy)
    assert stats.monitor is not None
    assert torch.equal(stats.monitor.reach, expected.reach)
    assert torch.equal(stats.monitor.exits, expected.exits)
    from_counts = adaptix.ShiftMonitor(policy, stats.monitor)
    from_trace = adaptix.ShiftMonitor(policy, trace)
    for mine, theirs in zip(from_counts.tests, from_trace.tests, strict=True):
        assert torch.equal(mine.reference, theirs.reference)


def test_what_cannot_be_reduced_is_an_error(cluster: None) -> None:
    empty = ray.data.from_items([{"logits": torch.zeros(2, 3).numpy(), "label": 0}]).filter(
        lambda row: False
    )
    with pytest.raises(ValidationError, match="bins, thresholds or monitor"):
        reduce_statistics(empty, [1.0, 2.0])
    with pytest.raises(ValidationError, match="at least one row"):
        reduce_statistics(empty, [1.0, 2.0], bins=4)
    twice = [ThresholdSpec("confidence", [0.5]), ThresholdSpec("confidence", [0.9])]
    with pytest.raises(ValidationError, match="each criterion once"):
        reduce_statistics(empty, [1.0, 2.0], thresholds=twice)


def test_settings_out_of_range_are_refused_before_anything_runs(
    cluster: None, saved: tuple[SavedModel, adaptix.Trace]
) -> None:
    factory, trace = saved
    inputs = inputs_dataset(trace)
    for bad in ({"workers": 0}, {"batch_size": 0}, {"workers": True}):
        with pytest.raises(ValidationError):
            trace_dataset(inputs, factory, **bad)
    with pytest.raises(ValidationError, match="callable"):
        trace_dataset(inputs, "not a factory")  # type: ignore[arg-type]  # on purpose
    with pytest.raises(ValidationError, match=r"ray\.data\.Dataset"):
        trace_dataset(object(), factory)


def test_saved_model_says_when_its_file_cannot_be_read(tmp_path: Path) -> None:
    factory = SavedModel(str(tmp_path / "missing.pt"), "resnet", 10)
    with pytest.raises(ValidationError, match="could not be read"):
        factory()


def test_without_ray_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(AdaptixError, match=r"pip install 'adaptix\[ray\]'"):
        import_ray()


def test_the_job_counts_survivors_on_the_cluster_as_in_process(
    cluster: None, tmp_path: Path
) -> None:
    """With ``[ray]``, the job counts survivors by shard (`reduce_survivors`) on the cluster it
    joined: the counts of its pcee_lcb (with the job's parameters: the correction) equal
    `calibrate_survivors`'."""
    from test_experiment import _config

    from adaptix.experiment import analysis, job

    config = _config(tmp_path, ray={"workers": 2, "batch_size": 64})
    assert config.ray is not None
    trace = synthetic_trace(300, 4, 5, seed=3).scaled(2.0)
    calibration = adaptix.calibrate(trace, "equal_mass", 10)
    deltas = [0.6, 0.8, 0.9]
    manager = adaptix.get_plugin_manager()
    with job.ray_session(config.ray):  # joins the module's cluster, leaves it running
        on_ray = analysis.count_survivors(
            trace, deltas, "pcee_lcb", calibration, config, manager, job.OnRay(config.ray)
        )
    assert ray.is_initialized()
    here = adaptix.calibrate_survivors(
        trace, deltas, "pcee_lcb", bins=10, edges=calibration.edges, bonferroni=True
    )
    assert dict(on_ray.params) == dict(here.params)
    assert torch.equal(on_ray.counts, here.counts)
    assert torch.equal(on_ray.correct, here.correct)
