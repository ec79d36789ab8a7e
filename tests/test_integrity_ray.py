"""Promise integrity across Ray (issue 20): `adaptix.distributed` keeps adaptix's promises.

- **Errors cross Ray intact** (class 6): an `AdaptixError` raised on a worker (a counting task,
  a tracing actor's call or its constructor) reaches the caller as itself, same class, its
  message first, Ray's error as its ``__cause__``; other errors stay Ray's.
- **Missing columns and bad arguments are refused up front** (classes 6 and 10): the dataset's
  columns are checked from its schema, labels are required where calibration or certification
  needs them (never dropped), and every argument is checked by `adaptix.scalars` when the
  function is called. The tests prove "before any work" by making every way of running a
  dataset raise: a refusal must come first. A hypothesis fuzz of the three entry points runs
  the same way, so it consumes nothing and stays fast.
- **One default per computation** (class 8): every equality the docs claim between the
  distributed and the single-process paths holds bit for bit with the defaults on both sides:
  `Certifier.from_counts(reduce_statistics(...))` and `adaptix.guarantee` / `adaptix.budget` of
  the whole trace; counts reduced for a sweep and `adaptix.sweep`; the monitor's reference
  counts; the calibration (its float sums up to summation order, as documented).

One local 2-CPU cluster bound to 127.0.0.1 serves the module; only a few tests run data.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fuzz_strategies import INF, NAN, describe
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import adaptix
from adaptix.errors import AdaptixError, CalibrationError, PluginError, ValidationError
from adaptix.offline.guarantee import CANDIDATES
from adaptix.offline.statistics import SWEEP_GRID_SIZE
from adaptix.online.monitor import reference_counts
from adaptix.testing import synthetic_trace

# Before Ray is imported: bind the local cluster to 127.0.0.1 only, report no usage.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="needs Ray Data: pip install 'adaptix[ray]'")

from adaptix.distributed import (  # noqa: E402  # after the skip
    SavedModel,
    ThresholdSpec,
    adaptix_errors,
    collect_trace,
    reduce_statistics,
    trace_dataset,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROWS, EXITS, CLASSES = 600, 4, 6
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster of 2 CPUs, bound to 127.0.0.1 only, shut down after the module."""
    # The workers cannot import this test module: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def trace() -> adaptix.Trace:
    return synthetic_trace(ROWS, EXITS, CLASSES, seed=11)


@pytest.fixture(scope="module")
def calibration() -> adaptix.Calibration:
    """Calibrated on other rows than the trace (certification needs held-out data)."""
    return adaptix.calibrate(synthetic_trace(ROWS, EXITS, CLASSES, seed=12))


def logits_dataset(trace: adaptix.Trace, labels: bool = True) -> Any:
    """The trace's rows as a Ray Dataset (known schema) in 7 blocks of uneven batches."""
    rows: list[dict[str, Any]] = []
    for i in range(trace.num_inputs):
        row: dict[str, Any] = {"logits": trace.logits[i].numpy()}
        if labels:
            assert trace.labels is not None
            row["label"] = int(trace.labels[i])
        rows.append(row)
    return ray.data.from_items(rows, override_num_blocks=7)


def inputs_dataset(rows: int = 40) -> Any:
    inputs = torch.randn(rows, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return ray.data.from_items(
        [{"inputs": inputs[i].numpy(), "label": i % 10} for i in range(rows)]
    )


def drop_label(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Upstream work whose output schema Ray learns only by running it."""
    return {name: value for name, value in batch.items() if name != "label"}


def keep(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Upstream work that changes nothing, but hides the schema until it runs."""
    return batch


def fail(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise RuntimeError("not adaptix's error")


def is_ray_error(err: BaseException | None) -> bool:
    return err is not None and type(err).__module__.startswith("ray")


class Reached(Exception):  # not an error: the work was about to start
    """Raised by any way of running a dataset, inside `nothing_runs`."""


@contextmanager
def nothing_runs() -> Iterator[None]:
    """Every way to transform or run a Ray Dataset raises `Reached`; the block must be fast."""
    with pytest.MonkeyPatch.context() as patch:
        for name in (
            "map_batches",
            "map",
            "iter_rows",
            "iter_batches",
            "take_all",
            "take",
            "materialize",
            "count",
            "to_pandas",
        ):

            def refuse(*args: Any, _name: str = name, **kwargs: Any) -> Any:
                raise Reached(_name)

            patch.setattr(ray.data.Dataset, name, refuse)
        start = time.perf_counter()
        yield
        assert time.perf_counter() - start < 10, "validation took long: did work start?"


class Datasets(dict[str, Any]):
    """Named datasets, shown by name in hypothesis' reports (not by their rows)."""

    def __repr__(self) -> str:
        return f"Datasets({list(self)})"


@pytest.fixture(scope="module")
def datasets(cluster: None, trace: adaptix.Trace) -> dict[str, Any]:
    """Datasets built once for the tests that never run them."""
    return Datasets(
        {
            "labelled": logits_dataset(trace),
            "unlabelled": logits_dataset(trace, labels=False),
            "inputs": inputs_dataset(),
            "inputs, labels known late": inputs_dataset().map_batches(drop_label),
        }
    )


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> SavedModel:
    torch.manual_seed(0)
    model = adaptix.build_model("resnet", num_classes=10, backbone_params={"size": "small"})
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(model.state_dict(), path)
    return SavedModel(str(path), "resnet", 10, backbone_params={"size": "small"})


# ----------------------------------------------------------- class 6: errors cross Ray intact


def test_an_error_of_a_counting_task_reaches_the_caller_as_itself(
    cluster: None, trace: adaptix.Trace
) -> None:
    """Costs for 3 exits, logits of 4: only a worker sees the shape, and its ValidationError
    is caught by ``except AdaptixError`` as a ValidationError, message first. (With a schema
    Ray knows, the driver refuses them before work: see the tests below.)"""
    late = logits_dataset(trace).map_batches(keep, batch_format="numpy")
    with pytest.raises(AdaptixError) as caught:
        reduce_statistics(late, [1.0, 2.0, 3.0], bins=10, batch_size=100)
    assert type(caught.value) is ValidationError
    assert str(caught.value).startswith("expected costs of shape [4]"), str(caught.value)
    assert is_ray_error(caught.value.__cause__), repr(caught.value.__cause__)


def test_a_worker_s_error_keeps_its_class(
    cluster: None, trace: adaptix.Trace, calibration: adaptix.Calibration
) -> None:
    """A calibration of a 5-class model passes the driver's checks (it fits the costs; the
    classes are hidden until ``keep`` runs) and is refused by the workers, which see 6 classes:
    the caller gets the CalibrationError."""
    other = adaptix.calibrate(synthetic_trace(200, EXITS, CLASSES - 1, seed=3))
    with pytest.raises(CalibrationError) as caught:
        reduce_statistics(
            logits_dataset(trace).map_batches(keep, batch_format="numpy"),
            trace.costs.tolist(),
            thresholds=[ThresholdSpec("pcee", [0.5])],
            calibration=other,
        )
    assert type(caught.value) is CalibrationError
    assert is_ray_error(caught.value.__cause__)


def test_an_error_in_a_tracing_actor_s_constructor_reaches_the_caller(
    cluster: None, tmp_path: Path
) -> None:
    """The actor dies building its model (Ray: ActorDiedError); the caller gets the factory's
    own ValidationError."""
    small = {"size": "small"}
    missing = SavedModel(str(tmp_path / "missing.pt"), "resnet", 10, backbone_params=small)
    logits = trace_dataset(inputs_dataset(), missing, batch_size=20, workers=1)
    with pytest.raises(ValidationError, match=r"^expected a state dict saved with torch\.save"):
        collect_trace(logits, [1.0, 2.0, 3.0, 4.0])


def test_a_column_missing_from_a_schema_ray_knows_late_is_named_by_the_worker(
    cluster: None, factory: SavedModel
) -> None:
    """The inputs' schema is only known after running ``drop_label``: the tracing actor names
    the missing column and those present, and your own consumption gets it as itself inside
    `adaptix_errors`."""
    inputs = inputs_dataset().map_batches(drop_label, batch_format="numpy")
    logits = trace_dataset(inputs, factory, batch_size=20, workers=1)
    missing = r"column 'label' .*got the columns \['inputs'\]"
    with pytest.raises(ValidationError, match=missing), adaptix_errors():
        logits.take_all()


def test_missing_labels_known_late_are_refused_by_the_counting_tasks(
    cluster: None, trace: adaptix.Trace
) -> None:
    late = logits_dataset(trace).map_batches(drop_label, batch_format="numpy")
    with pytest.raises(ValidationError, match=r"column 'label' \(the labels, which calibration"):
        reduce_statistics(late, trace.costs.tolist(), thresholds=[ThresholdSpec("confidence")])


def test_labels_in_some_batches_only_are_refused_not_dropped(
    cluster: None, trace: adaptix.Trace
) -> None:
    """Half the rows labelled: Ray fills the other half's labels with NaN (a float column),
    which is refused, by the trace and by the counts, instead of truncated or dropped."""
    half = trace.subset(torch.arange(ROWS // 2))
    mixed = logits_dataset(half).union(logits_dataset(half, labels=False))
    refused = r"(column 'label' to hold integer class labels|labels would be dropped)"
    with pytest.raises(ValidationError, match=refused):
        collect_trace(mixed, trace.costs.tolist())
    with pytest.raises(ValidationError, match=refused):
        reduce_statistics(
            mixed, trace.costs.tolist(), thresholds=[ThresholdSpec("confidence")], purpose="sweep"
        )


def test_other_errors_stay_ray_s(cluster: None, trace: adaptix.Trace) -> None:
    broken = logits_dataset(trace).map_batches(fail, batch_format="numpy")
    with pytest.raises(Exception) as caught:  # noqa: PT011  # whatever Ray raises
        reduce_statistics(broken, trace.costs.tolist(), bins=10)
    assert not isinstance(caught.value, AdaptixError)
    assert "not adaptix's error" in str(caught.value)


def raise_while_handling() -> None:
    try:
        raise ValidationError("first")
    except ValidationError:
        raise KeyError("second") from None


def test_a_token_naming_anything_but_an_adaptix_error_is_left_alone() -> None:
    """What crosses Ray is a class name and a message, never code: a token that names another
    class, or garbage, leaves the error as it was; one naming an AdaptixError rebuilds it."""

    def token(module: str, name: str) -> str:
        payload = {"module": module, "name": name, "message": "forged"}
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()

    for text in (token("builtins", "SystemExit"), token("os", "system"), "!!!", "e30="):
        with pytest.raises(RuntimeError), adaptix_errors():
            raise RuntimeError(f"<adaptix-error {text}>")
    with pytest.raises(CalibrationError, match=r"^forged$"), adaptix_errors():
        raise RuntimeError(f"<adaptix-error {token('adaptix.errors', 'CalibrationError')}>")
    with pytest.raises(ValidationError, match="raised here"), adaptix_errors():
        raise ValidationError("raised here")
    # A plain Ray task's error (``ray.remote``) holds the original: raised as itself.
    wrapped = ray.exceptions.RayTaskError("task", "traceback", CalibrationError("in a task"))
    with pytest.raises(CalibrationError, match=r"^in a task$") as caught, adaptix_errors():
        raise wrapped.as_instanceof_cause()
    assert type(caught.value) is CalibrationError
    # An error raised while handling an adaptix error on the driver stays itself.
    with pytest.raises(KeyError), adaptix_errors():
        raise_while_handling()


# ------------------------------------------------- classes 6 and 10: refused before any work


def test_missing_columns_are_named_before_any_work(
    datasets: dict[str, Any], trace: adaptix.Trace, factory: SavedModel
) -> None:
    labelled, unlabelled, inputs = datasets["labelled"], datasets["unlabelled"], datasets["inputs"]
    costs = trace.costs.tolist()
    cases = [
        (
            lambda: reduce_statistics(unlabelled, costs, thresholds=[ThresholdSpec("confidence")]),
            r"column 'label' .*got the columns \['logits'\]",
        ),
        (
            lambda: reduce_statistics(unlabelled, costs, bins=10, purpose="sweep"),
            r"column 'label' .*calibration",
        ),
        (
            lambda: reduce_statistics(inputs, costs, bins=10),
            r"column 'logits' .*got the columns \['inputs', 'label'\]",
        ),
        (lambda: collect_trace(unlabelled, costs, labelled=True), r"column 'label'"),
        (lambda: collect_trace(inputs, costs), r"column 'logits'"),
        (lambda: trace_dataset(labelled, factory), r"column 'inputs' .*\['logits', 'label'\]"),
        (lambda: trace_dataset(inputs, factory, label_column="y"), r"column 'y'"),
        (lambda: trace_dataset(inputs, factory, input_column="x"), r"column 'x'"),
    ]
    for call, message in cases:
        with nothing_runs(), pytest.raises(ValidationError, match=message):
            call()


def test_unlabelled_data_is_still_welcome_where_labels_are_not_needed(
    datasets: dict[str, Any], trace: adaptix.Trace
) -> None:
    """A sweep, a monitor reference and a trace need no labels: accepted (up to the work)."""
    unlabelled = datasets["unlabelled"]
    costs = trace.costs.tolist()
    policy = adaptix.policy("confidence", 0.7)
    for call in (
        lambda: reduce_statistics(
            unlabelled, costs, thresholds=[ThresholdSpec("confidence")], purpose="sweep"
        ),
        lambda: reduce_statistics(unlabelled, costs, monitor=policy),
        lambda: collect_trace(unlabelled, costs),
        lambda: trace_dataset(
            datasets["inputs, labels known late"],
            SavedModel("m", "resnet", 10),
            label_column=None,
        ),
    ):
        with pytest.raises(Reached), nothing_runs():
            call()


BAD_TRACE_ARGS: list[dict[str, Any]] = [
    {"workers": 0},
    {"workers": True},
    {"workers": 2.0},
    {"workers": "2"},
    {"workers": None},
    {"batch_size": 0},
    {"batch_size": 64.0},
    {"batch_size": np.bool_(True)},
    {"threads_per_worker": 0},
    {"threads_per_worker": 1.0},
    {"threads_per_worker": False},
    {"cpus_per_worker": 0},
    {"cpus_per_worker": -1},
    {"cpus_per_worker": NAN},
    {"cpus_per_worker": INF},
    {"cpus_per_worker": 1.5},
    {"cpus_per_worker": True},
    {"cpus_per_worker": "0.5"},
    {"input_column": ""},
    {"input_column": 3},
    {"label_column": 0},
    {"label_column": "inputs"},
    {"model_factory": "resnet"},
    {"model_factory": lambda: (yield)},
    {"dataset": [1, 2, 3]},
]


@pytest.mark.parametrize("bad", BAD_TRACE_ARGS, ids=describe)
def test_trace_dataset_refuses_bad_arguments_when_called(
    datasets: dict[str, Any], factory: SavedModel, bad: dict[str, Any]
) -> None:
    arguments: dict[str, Any] = {"dataset": datasets["inputs"], "model_factory": factory, **bad}
    if bad.get("model_factory") is not None and callable(bad["model_factory"]):
        arguments["model_factory"] = _unpicklable()
    with nothing_runs(), pytest.raises(ValidationError) as caught:
        trace_dataset(**arguments)
    assert next(iter(bad)) in str(caught.value) or "column" in str(caught.value)


def _unpicklable() -> Any:
    """A callable Ray cannot ship to an actor: it holds a lock."""
    import threading

    lock = threading.Lock()
    return lambda: lock


BAD_COUNT_ARGS: list[dict[str, Any]] = [
    {"costs": [1.0, 2.0, True, 4.0]},
    {"costs": ["1", "2", "3", "4"]},
    {"costs": "1234"},
    {"costs": [4.0, 3.0, 2.0, 1.0]},
    {"costs": [0.0, 0.0, 0.0, 0.0]},
    {"costs": []},
    {"costs": [1.0, NAN, 3.0, 4.0]},
    {"costs": 4.0},
    {"bins": 0},
    {"bins": 10.0},
    {"bins": True},
    {"bins": "10"},
    {"bins": 2**25},
    {"edges": [[0.0, 1.0]]},
    {"batch_size": 0},
    {"batch_size": 4096.0},
    {"purpose": "certify"},
    {"purpose": None},
    {"thresholds": ThresholdSpec("confidence")},
    {"thresholds": "confidence"},
    {"thresholds": ["confidence"]},
    {"thresholds": [ThresholdSpec("confidence", [])]},
    {"thresholds": [ThresholdSpec("confidence", [1.5])]},
    {"thresholds": [ThresholdSpec("confidence", ["0.5"])]},  # type: ignore[list-item]  # on purpose
    {"thresholds": [ThresholdSpec("pcee")]},
    {"thresholds": [ThresholdSpec("no-such")]},
    {"thresholds": [ThresholdSpec("pcee_ws", params={"window": 0})]},
    {"calibration": "calibration.pt"},
    {"monitor": "policy"},
    {"monitor_bins": 0},
    {"monitor_bins": 10.0},
    {"monitor_bins": True},
    {"dataset": "logits"},
]


@pytest.mark.parametrize("bad", BAD_COUNT_ARGS, ids=describe)
def test_reduce_statistics_refuses_bad_arguments_when_called(
    datasets: dict[str, Any], trace: adaptix.Trace, bad: dict[str, Any]
) -> None:
    arguments: dict[str, Any] = {"bins": 10, "costs": trace.costs.tolist(), **bad}
    dataset = arguments.pop("dataset", datasets["labelled"])
    with nothing_runs(), pytest.raises(AdaptixError) as caught:
        reduce_statistics(dataset, **arguments)
    if isinstance(caught.value, PluginError):
        assert "no-such" in str(caught.value)


def test_logits_of_another_model_are_refused_before_work(
    datasets: dict[str, Any], trace: adaptix.Trace
) -> None:
    """The schema says [4, 6] per row: 3 costs, or a calibration of 5 classes, are refused."""
    five = adaptix.calibrate(synthetic_trace(100, EXITS, CLASSES - 1, seed=1))
    for call in (
        lambda: reduce_statistics(datasets["labelled"], [1.0, 2.0, 3.0], bins=10),
        lambda: collect_trace(datasets["labelled"], [1.0, 2.0, 3.0]),
    ):
        with nothing_runs(), pytest.raises(ValidationError, match=r"\[E, C\] = \[3, C\]"):
            call()
    with nothing_runs(), pytest.raises(CalibrationError):
        reduce_statistics(
            datasets["labelled"],
            trace.costs.tolist(),
            thresholds=[ThresholdSpec("pcee")],
            calibration=five,
        )


def test_a_calibration_of_another_model_is_refused_before_work(
    datasets: dict[str, Any], trace: adaptix.Trace
) -> None:
    """A calibration of a 3-exit model for 4 exits' costs: refused before work."""
    three = adaptix.calibrate(synthetic_trace(100, 3, CLASSES, seed=1))
    with nothing_runs(), pytest.raises(CalibrationError):
        reduce_statistics(
            datasets["labelled"],
            trace.costs.tolist(),
            thresholds=[ThresholdSpec("pcee")],
            calibration=three,
        )


def test_threshold_specs_and_saved_models_check_their_fields() -> None:
    for bad in ({"criterion": 3}, {"criterion": ""}, {"criterion": "confidence", "params": [1]}):
        with pytest.raises(ValidationError):
            ThresholdSpec(**bad)
    for fields in (
        {"num_classes": 10.0},
        {"num_classes": True},
        {"num_classes": 1},
        {"path": ""},
        {"backbone": None},
        {"backbone_params": [("size", 1)]},
    ):
        arguments = {"path": "m.pt", "backbone": "resnet", "num_classes": 10, **fields}
        with pytest.raises(ValidationError):
            SavedModel(**arguments)  # type: ignore[arg-type]  # bad on purpose


def test_a_state_dict_of_another_model_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    small = {"size": "small"}
    with pytest.raises(ValidationError, match=r"to fit the model .* 1 unexpected \['weight'\]"):
        SavedModel(str(path), "resnet", 10, backbone_params=small)()
    torch.save(adaptix.build_model("resnet", 7, backbone_params=small).state_dict(), path)
    with pytest.raises(ValidationError, match="size mismatch"):
        SavedModel(str(path), "resnet", 10, backbone_params=small)()


# Values a fuzzed argument takes: (value, valid?).
COUNTS = [(1, True), (3, True), (np.int64(2), True), (0, False), (-1, False), (2.0, False),
          (2.5, False), (NAN, False), ("2", False), (None, False), (True, False),
          (False, False), (np.bool_(True), False)]  # fmt: skip
CPUS = [(None, True), (0.5, True), (1, True), (2.0, True), (np.float32(0.25), True),
        (0, False), (-0.5, False), (1.5, False), (INF, False), (NAN, False), ("1", False),
        (True, False)]  # fmt: skip
THREADS = [(None, True), (1, True), (np.int32(2), True), (0, False), (1.0, False),
           (False, False)]  # fmt: skip
PURPOSES = [("certification", True), ("sweep", True), ("Sweep", False), (None, False),
            (1, False)]  # fmt: skip
FLAGS = [(None, True), (True, True), (False, True), (np.bool_(False), True), (1, False),
         ("true", False), (0.0, False)]  # fmt: skip
BINS = [(None, True), (10, True), (np.int64(4), True), (0, False), (10.0, False),
        (True, False), ("10", False), (2**25, False)]  # fmt: skip
MONITOR_BINS = [(10, True), (np.int64(7), True), (0, False), (1.0, False), (True, False)]
SPECS = ["none", "default", "grid", "pcee", "bad-grid", "string-grid", "unknown", "bare", "names"]
SPEC_OK = {"none", "default", "grid", "pcee"}
COSTS = ["list", "tensor", "array", "ints", "bool", "str", "decreasing", "nan", "zeros", "text"]
COSTS_OK = {"list", "tensor", "array", "ints"}


def verdict(call: Any) -> str | AdaptixError:
    """``"accepted"`` when ``call`` got as far as running the dataset (inside `nothing_runs`),
    or the `AdaptixError` that refused it."""
    with nothing_runs():
        try:
            call()
        except Reached:
            event("accepted")
            return "accepted"
        except AdaptixError as err:
            event(f"refused: {type(err).__name__}")
            return err
    raise AssertionError("the call neither refused nor started any work")


def draw_arguments(
    data: st.DataObject, table: dict[str, list[tuple[Any, bool]]]
) -> tuple[dict[str, Any], str | None]:
    """Valid values for every argument but at most one (drawn first), which gets a bad one:
    so that accepted calls are as common as refused ones, and each refusal has one cause."""
    bad = data.draw(st.sampled_from([None, None, *table]), label="bad argument")
    arguments = {}
    for name, options in table.items():
        values = [value for value, ok in options if ok == (name != bad)]
        arguments[name] = data.draw(st.sampled_from(values), label=name)
    return arguments, bad


def judged(got: str | AdaptixError, valid: bool, named: str | None, what: str) -> None:
    """Accepted exactly when valid; a refusal of one bad scalar names it."""
    if valid:
        assert got == "accepted", f"{what}: refused valid arguments: {got}"
        return
    assert isinstance(got, AdaptixError), f"{what}: accepted"
    if named is not None:
        assert named in str(got), f"{what}: the message does not name {named}: {got}"


@FUZZ
@given(data=st.data())
def test_fuzz_trace_dataset_arguments(
    datasets: dict[str, Any], factory: SavedModel, data: st.DataObject
) -> None:
    """Refused at once exactly when an argument breaks its rule, naming it; else work would
    start."""
    columns = [("label", True), (None, True), ("missing", False), (1, False), ("inputs", False)]
    arguments, bad = draw_arguments(
        data,
        {
            "workers": COUNTS,
            "batch_size": COUNTS,
            "threads_per_worker": THREADS,
            "cpus_per_worker": CPUS,
            "label_column": columns,
        },
    )
    got = verdict(lambda: trace_dataset(datasets["inputs"], factory, **arguments))
    named = None if bad in (None, "label_column") else bad
    judged(got, bad is None, named, describe(arguments))


@FUZZ
@given(data=st.data(), labels=st.booleans(), monitor=st.booleans())
def test_fuzz_reduce_statistics_arguments(
    datasets: dict[str, Any],
    trace: adaptix.Trace,
    calibration: adaptix.Calibration,
    data: st.DataObject,
    labels: bool,
    monitor: bool,
) -> None:
    """The oracle restates the contract: every scalar by its rule, costs a trace takes, a known
    criterion with a grid it takes (pcee with its calibration), something to count, and labels
    where calibration or certification needs them."""
    good = trace.costs.tolist()
    costs = {
        "list": good, "tensor": trace.costs, "array": trace.costs.numpy(),
        "ints": [1, 2, 3, 9], "bool": [True] * EXITS, "str": [str(c) for c in good],
        "decreasing": good[::-1], "nan": [NAN, *good[1:]], "zeros": [0.0] * EXITS,
        "text": "1,2,3,4",
    }  # fmt: skip
    specs = {
        "none": [], "default": [ThresholdSpec("confidence")],
        "grid": [ThresholdSpec("entropy", [0.1, 0.5])], "pcee": [ThresholdSpec("pcee")],
        "bad-grid": [ThresholdSpec("confidence", [NAN])],
        "string-grid": [ThresholdSpec("confidence", "0.5")],  # type: ignore[arg-type]  # on purpose
        "unknown": [ThresholdSpec("no-such")], "bare": ThresholdSpec("confidence"),
        "names": ["confidence"],
    }  # fmt: skip
    arguments, bad = draw_arguments(
        data,
        {
            "costs": [(name, name in COSTS_OK) for name in COSTS],
            "bins": BINS,
            "thresholds": [(name, name in SPEC_OK) for name in SPECS],
            "monitor_bins": MONITOR_BINS,
            "purpose": PURPOSES,
            "batch_size": COUNTS,
        },
    )
    arguments["costs"] = costs[arguments["costs"]]
    arguments["thresholds"] = specs[arguments["thresholds"]]
    arguments["monitor"] = adaptix.policy("pcee", 0.7, calibration) if monitor else None
    counted = arguments["bins"] is not None or bool(arguments["thresholds"]) or monitor
    certifying = arguments["purpose"] == "certification" and bool(arguments["thresholds"])
    labels_needed = arguments["bins"] is not None or certifying
    valid = bad is None and counted and (labels or not labels_needed)
    dataset = datasets["labelled" if labels else "unlabelled"]
    got = verdict(lambda: reduce_statistics(dataset, calibration=calibration, **arguments))
    scalar = bad in ("costs", "bins", "purpose", "batch_size", "monitor_bins")
    alone = counted and (labels or not labels_needed)  # the bad scalar is the only problem
    named = bad if scalar and alone else None
    judged(got, valid, named, f"{describe(arguments)} (labels={labels})")


@FUZZ
@given(data=st.data(), labels=st.booleans())
def test_fuzz_collect_trace_arguments(
    datasets: dict[str, Any], data: st.DataObject, labels: bool
) -> None:
    arguments, bad = draw_arguments(
        data,
        {
            "labelled": FLAGS,
            "meta": [(None, True), ({"model": "m"}, True), ("meta", False)],
            "costs": [
                ((1.0, 2.0, 3.0, 4.0), True),
                ([1, 2, 2, 8], True),
                ([1, 2, True, 8], False),
                ([-1.0, 2.0, 3.0, 4.0], False),
                (None, False),
            ],
        },
    )
    valid = bad is None and (labels or arguments["labelled"] is not True)
    dataset = datasets["labelled" if labels else "unlabelled"]
    got = verdict(lambda: collect_trace(dataset, **arguments))
    named = bad if bad in ("labelled", "costs") else None
    judged(got, valid, named, f"{describe(arguments)} (labels={labels})")


# ------------------------------------------------ class 8: two paths, one answer, bit for bit


def same_certificate(mine: adaptix.ExitPolicy, theirs: adaptix.ExitPolicy) -> None:
    """Equal policies and certificates, field by field, ``rows`` included (counts reduced for
    certification carry their rows' fingerprints)."""
    assert mine.threshold == theirs.threshold
    assert mine.certificate is not None
    assert theirs.certificate is not None
    assert mine.certificate.rows is not None
    for item in dataclasses.fields(mine.certificate):
        a, b = getattr(mine.certificate, item.name), getattr(theirs.certificate, item.name)
        both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        same = a == b or both_nan
        assert same, f"{item.name}: {a!r} from counts, {b!r} from the trace"


@pytest.mark.filterwarnings("ignore:nothing certified")
def test_certificates_from_counts_reduced_on_ray_equal_guarantee_with_the_defaults(
    cluster: None, trace: adaptix.Trace, calibration: adaptix.Calibration
) -> None:
    """The docs' example (docs/distributed.md), with every default on both sides:
    `reduce_statistics` (bins=10, default grids) then `Certifier.from_counts` equals
    `adaptix.calibrate`, `adaptix.guarantee` and `adaptix.budget` of the whole trace; the
    monitor's reference counts equal `reference_counts` of the trace, and its monitor tests as
    one built from the trace."""
    policy = adaptix.policy("pcee", 0.7, calibration)
    stats = reduce_statistics(
        logits_dataset(trace),
        trace.costs.tolist(),
        bins=10,
        thresholds=[ThresholdSpec("confidence"), ThresholdSpec("pcee")],
        calibration=calibration,
        monitor=policy,
        batch_size=70,
    )
    assert stats.num_inputs == ROWS
    assert stats.purpose == "certification"
    for name, needs in (("confidence", None), ("pcee", calibration)):
        counts = stats.counts[name]
        assert len(counts.thresholds) == CANDIDATES, name
        certifier = adaptix.Certifier.from_counts(counts, calibration=needs)
        certificate = certifier.early_accuracy(0.7).certificate
        assert certificate is not None
        assert certificate.certified, "the comparison must cover a certified threshold"
        for method in ("binomial", "hoeffding_bentkus"):
            for delta in (0.7, 0.8, 0.95):  # certified, certified, not (the docs' δ)
                same_certificate(
                    certifier.early_accuracy(delta, alpha=0.05, method=method),
                    adaptix.guarantee(
                        trace, name, early_accuracy=delta, calibration=needs, method=method
                    ),
                )
            same_certificate(
                certifier.accuracy_drop(0.02, method=method),
                adaptix.guarantee(
                    trace, name, accuracy_drop=0.02, calibration=needs, method=method
                ),
            )
        same_certificate(
            certifier.budget(0.6),
            adaptix.budget(trace, name, relative_cost=0.6, calibration=needs),
        )
    whole = adaptix.calibrate(trace)
    assert stats.calibration is not None
    assert torch.equal(stats.calibration.counts, whole.counts)
    assert torch.equal(stats.calibration.correct, whole.correct)
    assert torch.equal(stats.calibration.edges, whole.edges)
    # Float sums in another order, as documented: equal up to float64 rounding.
    sums = stats.calibration.confidence_sum
    assert torch.allclose(sums, whole.confidence_sum, rtol=1e-12, atol=0)
    expected = reference_counts(trace, policy)
    assert stats.monitor is not None
    assert torch.equal(stats.monitor.reach, expected.reach)
    assert torch.equal(stats.monitor.exits, expected.exits)
    from_counts = adaptix.ShiftMonitor(policy, stats.monitor)
    from_trace = adaptix.ShiftMonitor(policy, trace)
    for mine, theirs in zip(from_counts.tests, from_trace.tests, strict=True):
        assert torch.equal(mine.reference, theirs.reference)


def test_sweeps_reduced_on_ray_equal_adaptix_sweep_with_the_defaults(
    cluster: None, trace: adaptix.Trace
) -> None:
    """``purpose="sweep"``: default grids of `SWEEP_GRID_SIZE`, and the points of the counts
    equal `adaptix.sweep`'s, labelled or not, bit for bit."""
    names = ["confidence", "entropy", "patience"]
    for labels in (True, False):
        whole = trace if labels else adaptix.Trace(trace.logits, None, trace.costs)
        stats = reduce_statistics(
            logits_dataset(trace, labels),
            trace.costs.tolist(),
            thresholds=[ThresholdSpec(name) for name in names],
            purpose="sweep",
            batch_size=90,
        )
        assert stats.purpose == "sweep"
        assert len(stats.counts["confidence"].thresholds) == SWEEP_GRID_SIZE
        points = [point for name in names for point in stats.counts[name].points()]
        assert points == adaptix.sweep(whole, names).points, f"labels={labels}"
