"""Scale-out on Ray Data: trace a dataset on an actor pool and reduce what control needs by
addition, without collecting logits on the driver.

Everything adaptix computes for control is a sum over inputs: the calibration tables
(`Calibration` adds), the per-threshold counts behind `sweep` and `guarantee`
(`adaptix.statistics.ThresholdCounts` adds). So a dataset that outgrows one machine is traced
and counted shard by shard on Ray workers, and only the counts travel to the driver, whose
memory stays flat whatever the number of rows.

- `trace_dataset` maps a Ray Dataset of inputs to one of exit logits with ``map_batches`` and a
  callable class that builds the model once per actor (``compute=ActorPoolStrategy(size=n)``,
  the form Ray 2.60 expects: its ``concurrency`` argument is deprecated again). It is lazy and
  streaming: nothing runs until a consumer pulls.
- `reduce_statistics` counts a dataset of logits (from `trace_dataset`, or any with a
  ``logits`` column ``[E, C]`` per row and a ``label`` column) into a `Calibration` and any
  number of `ThresholdCounts`, in one pass; each batch yields its partial counts, which the
  driver adds as they stream in.
- `collect_trace` brings the logits to the driver as a `Trace`, when you ask for them.

Results equal the single-process path on the same rows: the counts are integers and add
exactly; the only float sums (the calibration's confidence sums) differ from one process's by
summation order, at most a few units in the last place of float64 per bin.

Ray is imported lazily (``pip install 'adaptix[ray]'``); ``import adaptix`` never needs it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adaptix.calibration import Calibration, count_bins
from adaptix.errors import AdaptixError, ValidationError
from adaptix.monitor import ReferenceCounts, reference_counts
from adaptix.policy import ExitPolicy
from adaptix.statistics import ThresholdCounts, count_thresholds
from adaptix.trace import Trace

if TYPE_CHECKING:
    from adaptix.model import MultiExitModel

_INSTALL_HINT = "pip install 'adaptix[ray]' (Ray Data 2.60)"
LOGITS = "logits"
LABEL = "label"


def _tensor(array: np.ndarray, dtype: Any = None) -> torch.Tensor:
    """A tensor of a batch's column; Ray hands read-only arrays, which torch must not wrap."""
    value = np.asarray(array, dtype=dtype)
    return torch.from_numpy(value if value.flags.writeable else value.copy())


def import_ray() -> ModuleType:
    """``ray`` (with ``ray.data``), or an `AdaptixError` saying how to install it."""
    try:
        import ray
        import ray.data  # the submodule must be importable too
    except ImportError as err:
        raise AdaptixError(
            f"expected Ray Data to be importable for adaptix.distributed, got {err}. Install "
            f"it with: {_INSTALL_HINT}"
        ) from err
    return ray


@dataclass(frozen=True)
class SavedModel:
    """A picklable model factory for `trace_dataset`: `adaptix.build_model` with these
    arguments, then the state dict saved at ``path`` (``torch.save(model.state_dict(), path)``)
    loaded into it, on the worker. ``path`` must be readable where the actors run (a shared
    file system, or object storage mounted on every node). For backbones that adapt a network
    of yours (``sequential``), ``source`` is that network (pickled with the factory; its weights
    come from ``path``) and ``example_input`` a small batch, as `adaptix.build_model` takes.
    """

    path: str
    backbone: str
    num_classes: int
    head: str = "linear"
    backbone_params: Mapping[str, Any] = field(default_factory=dict)
    head_params: Mapping[str, Any] = field(default_factory=dict)
    source: Any = None
    example_input: Any = None

    def __call__(self) -> MultiExitModel:
        from adaptix.model import build_model

        model = build_model(
            self.backbone,
            self.num_classes,
            source=self.source,
            head=self.head,
            backbone_params=dict(self.backbone_params),
            head_params=dict(self.head_params),
            example_input=self.example_input,
        )
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise ValidationError(
                f"expected a state dict saved with torch.save at {self.path}, but it could not "
                f"be read ({type(err).__name__}: {err})."
            ) from err
        model.load_state_dict(state)
        return model.eval()


class _Tracer:
    """The actor's callable: builds the model once (per actor), then maps batches of inputs
    to every exit's logits."""

    def __init__(
        self,
        model_factory: Callable[[], MultiExitModel],
        input_column: str,
        label_column: str | None,
        threads: int | None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = model_factory().eval()
        self.input_column = input_column
        self.label_column = label_column

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = _tensor(batch[self.input_column])
        exits = list(self.model.iter_exits(inputs))
        rows = int(inputs.shape[0])
        for e, logits in enumerate(exits):
            self.model.check_logits(e, logits, rows)
        out = {LOGITS: torch.stack(exits, dim=1).float().cpu().numpy()}
        if self.label_column is not None:
            out[LABEL] = np.asarray(batch[self.label_column], dtype=np.int64)
        return out


def trace_dataset(
    dataset: Any,
    model_factory: Callable[[], MultiExitModel],
    *,
    input_column: str = "inputs",
    label_column: str | None = LABEL,
    batch_size: int = 256,
    workers: int = 2,
    threads_per_worker: int | None = 1,
    cpus_per_worker: float | None = None,
) -> Any:
    """A lazy Ray Dataset of every exit's logits (column ``logits``, ``[E, C]`` per row, and
    ``label`` when ``label_column`` is given) for ``dataset``'s inputs.

    Args:
        dataset: a ``ray.data.Dataset`` with a column of input tensors (one row per input).
        model_factory: builds the model (called once per actor, on the worker: load weights
            there, e.g. from a file path captured in a closure). Must be picklable.
        input_column: the column of inputs.
        label_column: the column of int labels, or None for unlabelled data.
        batch_size: rows per forward pass.
        workers: actors in the pool (``ActorPoolStrategy(size=workers)``).
        threads_per_worker: torch threads in each actor (None: torch's default).
        cpus_per_worker: the CPUs Ray reserves for each actor (default: its threads, or 1).
            The actors keep their reservation for the whole pass, so leave room for the
            stages around them: a pool that reserves every CPU of the cluster starves the
            tasks that read its inputs (``ray.data.range``, files) and the pass waits forever.
            On a 2-CPU machine, two actors at 0.5 each leave one CPU for the rest.

    Raises:
        AdaptixError: Ray is not installed.
        ValidationError: a setting out of range.
    """
    ray = import_ray()
    for name, value in (("batch_size", batch_size), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValidationError(f"expected {name} to be an integer >= 1, got {value!r}.")
    if not callable(model_factory):
        raise ValidationError(
            f"expected model_factory to be a callable that builds the model, got "
            f"{type(model_factory).__name__}."
        )
    return dataset.map_batches(
        _Tracer,
        fn_constructor_args=(model_factory, input_column, label_column, threads_per_worker),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker if cpus_per_worker is not None else (threads_per_worker or 1),
    )


@dataclass(frozen=True)
class ThresholdSpec:
    """One criterion to count over a threshold grid (see `reduce_statistics`)."""

    criterion: str
    thresholds: Sequence[float] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Statistics:
    """What `reduce_statistics` returns: the sums over every row.

    Attributes:
        num_inputs: rows counted.
        calibration: the calibration tables (None unless asked).
        counts: per criterion name, its `ThresholdCounts` (`Certifier.from_counts` certifies
            from them; ``.points()`` are `sweep`'s).
        monitor: the reference counts of a `ShiftMonitor` (None unless asked):
            ``ShiftMonitor(policy, stats.monitor)``.
    """

    num_inputs: int
    calibration: Calibration | None
    counts: dict[str, ThresholdCounts]
    monitor: ReferenceCounts | None = None


def _count_batch(
    batch: dict[str, np.ndarray],
    costs: tuple[float, ...],
    bins: int | None,
    edges: Any,
    specs: tuple[ThresholdSpec, ...],
    calibration: Calibration | None,
    monitor: ExitPolicy | None = None,
) -> dict[str, np.ndarray]:
    """One batch of logits -> one row: its row count and its partial statistics, each the
    adaptix object itself (pickled), so that the driver reduces them with their own ``+``
    and its compatibility checks."""
    logits = _tensor(batch[LOGITS])
    labels = _tensor(batch[LABEL], np.int64) if LABEL in batch else None
    trace = Trace(logits, labels, list(costs))
    out: dict[str, np.ndarray] = {"rows": np.array([trace.num_inputs], dtype=np.int64)}
    if bins is not None:
        out["calibration"] = _packed(count_bins(trace, bins, edges=edges))
    if monitor is not None:
        out["monitor"] = _packed(reference_counts(trace, monitor))
    for i, spec in enumerate(specs):
        counted = count_thresholds(
            trace, spec.criterion, spec.thresholds, calibration, **dict(spec.params)
        )
        out[f"counts{i}"] = _packed(counted)
    return out


def _packed(value: object) -> np.ndarray:
    return np.array([pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)], dtype=object)


def reduce_statistics(
    logits: Any,
    costs: Sequence[float],
    *,
    bins: int | None = None,
    edges: Any = None,
    thresholds: Sequence[ThresholdSpec] = (),
    calibration: Calibration | None = None,
    monitor: ExitPolicy | None = None,
    batch_size: int = 4096,
) -> Statistics:
    """Count a Ray Dataset of logits (and labels) in one streaming pass: its calibration tables
    (``bins``) and, per `ThresholdSpec`, the counts of a criterion over a threshold grid.

    Every batch becomes one row of partial statistics on a worker (Ray tasks); the driver adds
    them with their own ``+`` as they arrive, so its memory does not grow with the dataset.

    Args:
        logits: a Ray Dataset with a ``logits`` column (``[E, C]`` per row) and, for
            calibration and accuracies, a ``label`` column (what `trace_dataset` gives).
        costs: the model's cumulative costs ``[E]`` (e.g. ``model.trace(example).costs``).
        bins: calibration bins to count (None: no calibration).
        edges: bin edges ``[E, M + 1]`` (None: equal-width), as `adaptix.calibration.count_bins`.
        thresholds: the criteria and grids to count (`adaptix.statistics.ThresholdCounts`).
        calibration: the calibration that calibrated criteria (pcee, ...) read.
        monitor: a policy: also count the dataset as the reference of a `ShiftMonitor` for it
            (`adaptix.monitor.ReferenceCounts`: build the monitor from them).
        batch_size: rows per partial count.

    Raises:
        AdaptixError: Ray is not installed.
        ValidationError: nothing to count, or an empty dataset.
        ValidationError: also a shard whose statistics do not add (another model, binning,
            criterion or grid), or the same criterion named twice in ``thresholds``.
    """
    import_ray()
    specs = tuple(thresholds)
    if bins is None and not specs and monitor is None:
        raise ValidationError("expected bins, thresholds or monitor to count, got none.")
    names = [spec.criterion for spec in specs]
    if len(set(names)) != len(names):
        raise ValidationError(
            f"expected each criterion once in thresholds, got {names}. Count one criterion "
            "with other parameters in another call."
        )
    partials = logits.map_batches(
        _count_batch,
        fn_kwargs={
            "costs": tuple(float(c) for c in costs),
            "bins": bins,
            "edges": edges,
            "specs": specs,
            "calibration": calibration,
            "monitor": monitor,
        },
        batch_size=batch_size,
        batch_format="numpy",
        # Counting is light next to tracing; reserving no CPU for it keeps a pipeline whose
        # tracing actors hold every CPU of the cluster from waiting forever on its counts.
        num_cpus=0,
    )
    rows = 0
    total_monitor: ReferenceCounts | None = None
    total_calibration: Calibration | None = None
    totals: list[Any] = [None] * len(specs)
    for part in partials.iter_rows():
        rows += int(part["rows"])
        if bins is not None:
            piece = pickle.loads(part["calibration"])
            total_calibration = piece if total_calibration is None else total_calibration + piece
        if monitor is not None:
            piece = pickle.loads(part["monitor"])
            total_monitor = piece if total_monitor is None else total_monitor + piece
        for i in range(len(specs)):
            piece = pickle.loads(part[f"counts{i}"])
            totals[i] = piece if totals[i] is None else totals[i] + piece
    if rows == 0:
        raise ValidationError("expected a dataset with at least one row, got none.")
    counts = {spec.criterion: total for spec, total in zip(specs, totals, strict=True)}
    return Statistics(rows, total_calibration, counts, total_monitor)


def collect_trace(
    logits: Any, costs: Sequence[float], meta: Mapping[str, str] | None = None
) -> Trace:
    """Bring a dataset of logits to the driver as one `Trace` (it must fit in its memory)."""
    import_ray()
    parts, labels = [], []
    for batch in logits.iter_batches(batch_format="numpy"):
        parts.append(_tensor(batch[LOGITS]))
        if LABEL in batch:
            labels.append(_tensor(batch[LABEL], np.int64))
    if not parts:
        raise ValidationError("expected a dataset with at least one row, got none.")
    label_tensor = torch.cat(labels) if len(labels) == len(parts) else None
    return Trace(torch.cat(parts), label_tensor, list(costs), meta=meta)
