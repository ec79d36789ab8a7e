"""Scale-out on Ray Data: trace a dataset on an actor pool and reduce what control needs by
addition, without collecting logits on the driver.

Everything adaptix computes for control is a sum over inputs: the calibration tables
(`Calibration` adds), the per-threshold counts behind `sweep` and `guarantee`
(`adaptix.offline.statistics.ThresholdCounts` adds). So a dataset that outgrows one machine is
traced and counted shard by shard on Ray workers, and only the counts travel to the driver, whose
memory stays flat whatever the number of rows.

- `trace_dataset` maps a Ray Dataset of inputs to one of exit logits with ``map_batches`` and a
  callable class that builds the model once per actor (``compute=ActorPoolStrategy(size=n)``,
  the form Ray 2.60 expects: its ``concurrency`` argument is deprecated again). It is lazy and
  streaming: nothing runs until a consumer pulls.
- `reduce_statistics` counts a dataset of logits (from `trace_dataset`, or any with a
  ``logits`` column ``[E, C]`` per row and a ``label`` column) into a `Calibration` and any
  number of `ThresholdCounts`, in one pass; each batch yields its partial counts, which the
  driver adds as they stream in.
- `reduce_survivors` counts a dataset of logits and labels into survivor calibrations
  (`adaptix.offline.survivors`) for a grid of δ: one reduction per exit, since exit e's survivors
  are decided by the tables of the exits before, over the whole dataset.
- `collect_trace` brings the logits to the driver as a `Trace`, when you ask for them.

Results equal the single-process path on the same rows: the counts are integers and add
exactly; the only float sums (the calibration's confidence sums) differ from one process's by
summation order, at most a few units in the last place of float64 per bin. Defaults are the
single-process ones: a criterion counted without a grid gets `adaptix.guarantee`'s candidates
(``purpose="certification"``) or `adaptix.sweep`'s grid (``purpose="sweep"``), from the same
`adaptix.offline.statistics.default_grid`.

The promises of the single-process path hold across Ray too:

- **Arguments are checked when a function is called**, on the driver, before any row is read:
  every scalar by `adaptix.scalars`, costs, bins, edges, criteria, grids and calibrations by
  counting a one-row stand-in trace with the same functions the workers run, and the dataset's
  columns from its schema when Ray knows it without executing anything (a dataset read from
  files or built from items). A schema Ray only learns by running upstream work (the output of
  ``map_batches``, e.g. `trace_dataset`'s) is checked on every batch, by the same rule.
- **Errors cross Ray intact**: an `AdaptixError` raised on a worker (a missing column, a bad
  trace, a calibration of another model, a broken plugin) reaches the caller as itself, with
  Ray's error as its ``__cause__``, not as a ``RayTaskError`` or ``ActorDiedError``. Wrap your
  own consumption of `trace_dataset`'s output in `adaptix_errors` for the same.

Ray is imported lazily (``pip install 'adaptix[ray]'``); ``import adaptix`` never needs it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle
import re
import reprlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal, NoReturn

import numpy as np
import torch

from adaptix.core.calibration import MAX_BINS, Calibration, count_bins
from adaptix.core.trace import Trace
from adaptix.errors import AdaptixError, ValidationError
from adaptix.offline.policy import ExitPolicy
from adaptix.offline.statistics import (
    CANDIDATES,
    SWEEP_GRID_SIZE,
    ThresholdCounts,
    count_thresholds,
    default_grid,
)
from adaptix.offline.survivors import SurvivorCounts, count_survivors
from adaptix.online.model import MultiExitModel, build_model
from adaptix.online.monitor import DEFAULT_BINS, ReferenceCounts, reference_counts
from adaptix.plugins import resolve_manager
from adaptix.scalars import choice, count, flag, integer, real

_INSTALL_HINT = "pip install 'adaptix[ray]' (Ray Data 2.60)"
LOGITS = "logits"
LABEL = "label"

Purpose = Literal["certification", "sweep"]
#: What counts are for, and so the size of a criterion's default grid: certification's
#: candidates (`adaptix.offline.statistics.CANDIDATES`) or a sweep's points
#: (`adaptix.offline.statistics.SWEEP_GRID_SIZE`). One default per computation, on every path.
GRID_SIZES: dict[Purpose, int] = {"certification": CANDIDATES, "sweep": SWEEP_GRID_SIZE}


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


# ------------------------------------------------------------------- errors that cross Ray intact

# Ray keeps of a worker's exception only its text: Ray Data wraps it in a UserCodeException
# and drops the original object, and an actor that dies in __init__ becomes an ActorDiedError
# with the traceback as a string. So a worker raises, in place of an AdaptixError, a carrier
# whose message holds the error's class and message, encoded; the driver finds the last such
# token in Ray's error and raises the error itself. The token names a class, never pickled
# code: the driver rebuilds only an AdaptixError subclass already imported there.
_TOKEN = re.compile(r"<adaptix-error ([A-Za-z0-9_=-]+)>")


class _CarriedError(Exception):
    """An `AdaptixError` on its way from a Ray worker to the driver (see `adaptix_errors`)."""


def _carried(err: AdaptixError) -> _CarriedError:
    kind = type(err)
    payload = {"module": kind.__module__, "name": kind.__qualname__, "message": str(err)}
    token = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode("ascii")
    return _CarriedError(f"{kind.__name__}: {err}\n<adaptix-error {token}>")


def _rebuilt(token: str) -> AdaptixError | None:
    """The error a token describes, or None when it names no loaded AdaptixError class."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        module, name, message = payload["module"], payload["name"], payload["message"]
    except (ValueError, KeyError, TypeError):
        return None
    kind: Any = sys.modules.get(module) if isinstance(module, str) else None
    for part in name.split(".") if isinstance(name, str) else [""]:
        kind = getattr(kind, part, None)
    if not (isinstance(kind, type) and issubclass(kind, AdaptixError)) or not isinstance(
        message, str
    ):
        return None
    try:
        return kind(message)
    except TypeError:  # a subclass whose __init__ takes more: the message alone, as Exception
        error: AdaptixError = kind.__new__(kind, message)
        return error


def _adaptix_error_in(err: BaseException) -> AdaptixError | None:
    """The `AdaptixError` that ``err`` (a Ray error) carries, or None."""
    ray_error = sys.modules.get("ray.exceptions")
    chain: list[BaseException] = []
    seen: set[int] = set()
    pending: list[Any] = [err]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        chain.append(item)
        pending += [getattr(item, "cause", None), item.__cause__, item.__context__]
    for item in chain:
        tokens = _TOKEN.findall(str(item))
        found = _rebuilt(tokens[-1]) if tokens else None
        if found is not None:
            return found
    if ray_error is None:
        return None
    for item in chain:  # a plain Ray task's error keeps the original as its ``cause``
        cause = getattr(item, "cause", None)
        original = isinstance(cause, AdaptixError) and not isinstance(cause, ray_error.RayError)
        if isinstance(item, ray_error.RayError) and original:
            return cause
    return None


@contextmanager
def adaptix_errors() -> Iterator[None]:
    """Inside the block, an `AdaptixError` raised on a Ray worker is raised as itself (its
    class and message; Ray's error is its ``__cause__``), instead of the ``RayTaskError``,
    ``UserCodeException`` or ``ActorDiedError`` that Ray wraps it in. `reduce_statistics` and
    `collect_trace` consume through it; wrap your own consumption of `trace_dataset`'s output::

        with adaptix_errors():
            rows = logits.take_all()

    Errors that are not adaptix's stay Ray's.
    """
    try:
        yield
    except Exception as err:
        ray_error = sys.modules.get("ray.exceptions")
        from_ray = ray_error is not None and isinstance(err, ray_error.RayError)
        found = _adaptix_error_in(err) if from_ray or not isinstance(err, AdaptixError) else None
        if found is None:
            raise  # raised on the driver (already itself), or not adaptix's
        raise found from err


# ------------------------------------------------------------------------------ checked inputs


def _dataset(dataset: Any, ray: ModuleType, name: str) -> Any:
    if not isinstance(dataset, ray.data.Dataset):
        raise ValidationError(
            f"expected {name} to be a ray.data.Dataset, got {type(dataset).__name__}. Build one "
            "with ray.data.from_items, ray.data.read_parquet, ... (or trace_dataset)."
        )
    return dataset


def _known_columns(dataset: Any) -> list[str] | None:
    """The dataset's columns if Ray knows them without executing anything, else None."""
    schema = dataset.schema(fetch_if_missing=False)
    return None if schema is None else list(schema.names)


def _require(columns: Iterable[str], needed: Mapping[str, str], fix: str = "") -> None:
    """Raise naming the first of ``needed`` (column -> why) missing from ``columns``."""
    present = list(columns)
    for column, why in needed.items():
        if column not in present:
            raise ValidationError(
                f"expected a column {column!r} ({why}) in the dataset, got the columns "
                f"{present}.{' ' + fix if fix else ''}"
            )


def _column_name(value: Any, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        what = "a column name (a non-empty str)" + (" or None" if optional else "")
        raise ValidationError(f"expected {name} to be {what}, got {value!r}.")
    return value


def _costs(costs: Any) -> tuple[float, ...]:
    """``costs`` as plain floats, each checked by `adaptix.scalars.real` (bools and strings
    refused), the whole by `Trace`'s own rule (non-decreasing, last > 0)."""
    if isinstance(costs, torch.Tensor | np.ndarray):
        costs = list(costs.reshape(-1)) if costs.ndim == 1 else costs
    if isinstance(costs, str | bytes) or not isinstance(costs, Sequence | list):
        raise ValidationError(
            f"expected costs as a sequence of one cumulative cost per exit, got "
            f"{type(costs).__name__}. Use model.trace(example).costs."
        )
    values = tuple(real(c, f"costs[{e}]", low=0.0) for e, c in enumerate(costs))
    if not values:
        raise ValidationError("expected costs for at least one exit, got none.")
    try:  # the trace's own rule, checked now
        Trace(torch.zeros(1, len(values), 2), None, list(values))
    except ValidationError as err:
        raise ValidationError(f"expected costs as a Trace takes them: {err}") from err
    return values


def _logits_shape(dataset: Any) -> tuple[int, ...] | None:
    """The shape of one row's logits if Ray knows it without executing anything."""
    schema = dataset.schema(fetch_if_missing=False)
    if schema is None or LOGITS not in schema.names:
        return None
    shape = getattr(schema.types[schema.names.index(LOGITS)], "shape", None)
    return tuple(shape) if isinstance(shape, tuple) else None


def _check_logits_shape(shape: tuple[int, ...] | None, exits: int) -> None:
    if shape is not None and (len(shape) != 2 or shape[0] != exits):
        raise ValidationError(
            f"expected the dataset's logits to be [E, C] = [{exits}, C] per row (one row of "
            f"class logits per exit, as many exits as costs), got {list(shape)}. Give the costs "
            "of the model that made the logits."
        )


def _stand_in(costs: tuple[float, ...], classes: int, labelled: bool) -> Trace:
    """A one-row trace of the model's shape: counting it with the workers' own functions
    checks, on the driver and at once, what every shard would refuse later."""
    labels = torch.zeros(1, dtype=torch.int64) if labelled else None
    return Trace(torch.zeros(1, len(costs), classes), labels, list(costs))


def _labels(array: np.ndarray, column: str) -> torch.Tensor:
    """A batch's labels as int64; a column of floats or bools is refused, not truncated."""
    value = np.asarray(array)
    if value.dtype.kind not in "iu":
        raise ValidationError(
            f"expected the column {column!r} to hold integer class labels, got dtype "
            f"{value.dtype}. Cast it to int64 (e.g. ds.map_batches) before counting."
        )
    return _tensor(value, np.int64)


def _tensor(array: np.ndarray, dtype: Any = None) -> torch.Tensor:
    """A tensor of a batch's column; Ray hands read-only arrays, which torch must not wrap."""
    value = np.asarray(array, dtype=dtype)
    return torch.from_numpy(value if value.flags.writeable else value.copy())


# ------------------------------------------------------------------------------------- tracing


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

    def __post_init__(self) -> None:
        for name in ("path", "backbone", "head"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValidationError(f"expected {name} to be a non-empty str, got {value!r}.")
        count(self.num_classes, "num_classes", low=2)
        for name in ("backbone_params", "head_params"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValidationError(
                    f"expected {name} to be a mapping of parameters, got "
                    f"{type(getattr(self, name)).__name__}."
                )

    def __call__(self) -> MultiExitModel:
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
        except (OSError, RuntimeError, pickle.UnpicklingError) as err:
            raise ValidationError(
                f"expected a state dict saved with torch.save at {self.path}, but it could not "
                f"be read ({type(err).__name__}: {err})."
            ) from err
        try:
            keys = model.load_state_dict(state, strict=False)
        except (RuntimeError, TypeError, AttributeError) as err:  # a tensor of another shape
            self._misfit(str(err).strip().splitlines()[-1].strip(), err)
        if keys.missing_keys or keys.unexpected_keys:
            self._misfit(
                f"{len(keys.missing_keys)} parameters missing "
                f"{reprlib.repr(list(keys.missing_keys))}, {len(keys.unexpected_keys)} "
                f"unexpected {reprlib.repr(list(keys.unexpected_keys))}",
                None,
            )
        return model.eval()

    def _misfit(self, why: str, err: BaseException | None) -> NoReturn:
        raise ValidationError(
            f"expected the state dict at {self.path} to fit the model built from backbone "
            f"{self.backbone!r}, {self.num_classes} classes and head {self.head!r}, but it does "
            f"not: {why}. Build the factory with the arguments the weights were trained with."
        ) from err


class _Tracer:
    """The actor's callable: builds the model once (per actor), then maps batches of inputs
    to every exit's logits. Its `AdaptixError`s leave as carriers (see `adaptix_errors`)."""

    def __init__(
        self,
        model_factory: Callable[[], MultiExitModel],
        input_column: str,
        label_column: str | None,
        threads: int | None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            self.model = model_factory().eval()
        except AdaptixError as err:
            raise _carried(err) from err
        self.input_column = input_column
        self.label_column = label_column

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._trace(batch)
        except AdaptixError as err:
            raise _carried(err) from err

    def _trace(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        needed = {self.input_column: "the inputs to trace"}
        if self.label_column is not None:
            needed[self.label_column] = "the labels"
        _require(batch, needed, _TRACE_FIX)
        inputs = _tensor(batch[self.input_column])
        exits = list(self.model.iter_exits(inputs))
        rows = int(inputs.shape[0])
        for e, logits in enumerate(exits):
            self.model.check_logits(e, logits, rows)
        out = {LOGITS: torch.stack(exits, dim=1).float().cpu().numpy()}
        if self.label_column is not None:
            labels = _labels(batch[self.label_column], self.label_column)
            out[LABEL] = labels.numpy()
        return out


_TRACE_FIX = "Name the columns with input_column and label_column (None for unlabelled data)."


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

    Every argument is checked here, before anything runs (the columns too, when Ray knows the
    dataset's schema without executing it; otherwise on every batch). Consume the result with
    `reduce_statistics` or `collect_trace`, or inside `adaptix_errors`, to get the workers'
    `AdaptixError`s as themselves.

    Args:
        dataset: a ``ray.data.Dataset`` with a column of input tensors (one row per input).
        model_factory: builds the model (called once per actor, on the worker: load weights
            there, e.g. from a file path captured in a closure). Must be picklable.
        input_column: the column of inputs.
        label_column: the column of integer labels, or None for unlabelled data.
        batch_size: rows per forward pass, an integer >= 1.
        workers: actors in the pool (``ActorPoolStrategy(size=workers)``), an integer >= 1.
        threads_per_worker: torch threads in each actor, an integer >= 1 (None: torch's
            default).
        cpus_per_worker: the CPUs Ray reserves for each actor, a real > 0 (default: its
            threads, or 1); above 1, a whole number, as Ray requires.
            The actors keep their reservation for the whole pass, so leave room for the
            stages around them: a pool that reserves every CPU of the cluster starves the
            tasks that read its inputs (``ray.data.range``, files) and the pass waits forever.
            On a 2-CPU machine, two actors at 0.5 each leave one CPU for the rest.

    Raises:
        AdaptixError: Ray is not installed.
        ValidationError: not a dataset, a missing column, a setting out of range, a factory
            that is not callable or cannot be pickled.
    """
    ray = import_ray()
    _dataset(dataset, ray, "dataset")
    inputs = _column_name(input_column, "input_column")
    labels = _column_name(label_column, "label_column", optional=True)
    if inputs == labels:
        raise ValidationError(
            f"expected input_column and label_column to name two columns, got {inputs!r} twice."
        )
    rows = count(batch_size, "batch_size", low=1)
    actors = count(workers, "workers", low=1)
    threads = (
        None
        if threads_per_worker is None
        else count(threads_per_worker, "threads_per_worker", low=1)
    )
    cpus = float(threads or 1) if cpus_per_worker is None else _cpus(cpus_per_worker)
    _factory(model_factory, ray)
    columns = _known_columns(dataset)
    if columns is not None:
        needed = {str(inputs): "the inputs to trace"}
        if labels is not None:
            needed[labels] = "the labels"
        _require(columns, needed, _TRACE_FIX)
    return dataset.map_batches(
        _Tracer,
        fn_constructor_args=(model_factory, inputs, labels, threads),
        batch_size=rows,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
    )


def _cpus(value: Any) -> float:
    cpus = real(value, "cpus_per_worker", low=0.0, open_low=True)
    if cpus > 1 and not cpus.is_integer():
        raise ValidationError(
            f"expected cpus_per_worker in (0, 1] or a whole number, got {value!r}: Ray reserves "
            "fractions of one CPU only."
        )
    return cpus


def _factory(model_factory: Any, ray: ModuleType) -> None:
    """Refuse a factory the actors could not call or receive."""
    if not callable(model_factory):
        raise ValidationError(
            f"expected model_factory to be a callable that builds the model, got "
            f"{type(model_factory).__name__}."
        )
    try:
        ray.cloudpickle.dumps(model_factory)
    except Exception as err:  # whatever pickling raises (TypeError, PicklingError, ...)
        raise ValidationError(
            f"expected model_factory to be picklable (Ray ships it to every actor), but it is "
            f"not ({type(err).__name__}: {err}). Use adaptix.distributed.SavedModel, or a "
            "module-level function."
        ) from err


# ------------------------------------------------------------------------------------ counting


@dataclass(frozen=True)
class ThresholdSpec:
    """One criterion to count over a threshold grid (see `reduce_statistics`).

    Attributes:
        criterion: a registered criterion name.
        thresholds: the grid, or None for the criterion's default grid for the counts'
            purpose (`reduce_statistics`'s ``purpose``): `adaptix.guarantee`'s candidates for
            certification, `adaptix.sweep`'s grid for a sweep.
        params: the criterion's own parameters.
    """

    criterion: str
    thresholds: Sequence[float] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.criterion, str) or not self.criterion:
            raise ValidationError(
                f"expected criterion to be a criterion name (str), got {self.criterion!r}."
            )
        if not isinstance(self.params, Mapping) or not all(
            isinstance(key, str) for key in self.params
        ):
            raise ValidationError(
                f"expected params to be a mapping of parameter names to values, got "
                f"{self.params!r}."
            )


@dataclass
class Statistics:
    """What `reduce_statistics` returns: the sums over every row.

    Attributes:
        num_inputs: rows counted.
        calibration: the calibration tables (None unless asked).
        counts: per criterion name, its `ThresholdCounts` over the grid counted (given, or the
            default for the purpose): `Certifier.from_counts` certifies from them, and their
            ``.points()`` are `adaptix.sweep`'s on the same grid.
        monitor: the reference counts of a `ShiftMonitor` (None unless asked):
            ``ShiftMonitor(policy, stats.monitor)``.
        purpose: what the counts were made for (``"certification"`` or ``"sweep"``).
    """

    num_inputs: int
    calibration: Calibration | None
    counts: dict[str, ThresholdCounts]
    monitor: ReferenceCounts | None = None
    purpose: Purpose = "certification"


@dataclass(frozen=True)
class _Plan:
    """What every batch counts: checked and resolved on the driver, shipped to the workers."""

    costs: tuple[float, ...]
    purpose: Purpose
    labels_required: bool
    bins: int | None
    edges: Any
    specs: tuple[ThresholdSpec, ...]  # every grid explicit
    calibration: Calibration | None
    monitor: ExitPolicy | None
    monitor_bins: int


def _count_batch(batch: dict[str, np.ndarray], plan: _Plan) -> dict[str, np.ndarray]:
    """One batch of logits -> one row: its row count and its partial statistics, each the
    adaptix object itself (pickled), so that the driver reduces them with their own ``+``
    and its compatibility checks. Its `AdaptixError`s leave as carriers."""
    try:
        return _count(batch, plan)
    except AdaptixError as err:
        raise _carried(err) from err


def _count(batch: dict[str, np.ndarray], plan: _Plan) -> dict[str, np.ndarray]:
    _require(batch, _needed(plan.labels_required))
    logits = _tensor(batch[LOGITS])
    labels = _labels(batch[LABEL], LABEL) if LABEL in batch else None
    trace = Trace(logits, labels, list(plan.costs))
    out: dict[str, np.ndarray] = {
        "rows": np.array([trace.num_inputs], dtype=np.int64),
        "labelled": np.array([labels is not None]),
    }
    if plan.bins is not None:
        out["calibration"] = _packed(count_bins(trace, plan.bins, edges=plan.edges))
    if plan.monitor is not None:
        out["monitor"] = _packed(reference_counts(trace, plan.monitor, plan.monitor_bins))
    for i, spec in enumerate(plan.specs):
        counted = count_thresholds(
            trace,
            spec.criterion,
            spec.thresholds,
            plan.calibration,
            fingerprints=plan.purpose == "certification",  # for Certifier.from_counts
            **dict(spec.params),
        )
        out[f"counts{i}"] = _packed(counted)
    return out


def _needed(labels: bool) -> dict[str, str]:
    needed = {LOGITS: "every exit's logits, [E, C] per row"}
    if labels:
        needed[LABEL] = "the labels, which calibration and certification need"
    return needed


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
    monitor_bins: int = DEFAULT_BINS,
    purpose: Purpose = "certification",
    batch_size: int = 4096,
) -> Statistics:
    """Count a Ray Dataset of logits (and labels) in one streaming pass: its calibration tables
    (``bins``) and, per `ThresholdSpec`, the counts of a criterion over a threshold grid.

    Every batch becomes one row of partial statistics on a worker (Ray tasks); the driver adds
    them with their own ``+`` as they arrive, so its memory does not grow with the dataset.
    Every argument is checked first, on the driver, before a row is read (see the module).

    ``purpose`` says what the counts are for, so that each computation has one default on
    every path: with ``"certification"`` (the default), a criterion without a grid is counted
    at `adaptix.guarantee`'s candidate thresholds (`adaptix.offline.statistics.CANDIDATES`), so that
    ``Certifier.from_counts(stats.counts[name])`` certifies exactly as
    ``adaptix.guarantee(whole_trace, name, ...)``, and labels are required; with ``"sweep"``,
    at `adaptix.sweep`'s default grid (`adaptix.offline.statistics.SWEEP_GRID_SIZE`), so that
    ``.points()`` are ``adaptix.sweep(whole_trace, name).points``, and labels are optional
    (without them, points have no accuracy).

    Args:
        logits: a Ray Dataset with a ``logits`` column (``[E, C]`` per row) and a ``label``
            column of integer labels (what `trace_dataset` gives).
        costs: the model's cumulative costs ``[E]`` (e.g. ``model.trace(example).costs``).
        bins: calibration bins to count, 1 to 2**24 (None: no calibration; needs labels).
            ``adaptix.calibrate``'s default is 10.
        edges: bin edges ``[E, M + 1]`` (None: equal-width), as
            `adaptix.core.calibration.count_bins`.
        thresholds: the criteria and grids to count (`adaptix.offline.statistics.ThresholdCounts`).
        calibration: the calibration that calibrated criteria (pcee, ...) read.
        monitor: a policy: also count the dataset as the reference of a `ShiftMonitor` for it
            (`adaptix.online.monitor.ReferenceCounts`: build the monitor from them).
        monitor_bins: the monitor's equal-width bins when ``monitor`` reads no calibration
            (`ShiftMonitor`'s and `reference_counts`' default).
        purpose: ``"certification"`` or ``"sweep"``: the default grids and whether labels are
            required (above).
        batch_size: rows per partial count, an integer >= 1.

    Raises:
        AdaptixError: Ray is not installed; or whatever a worker raised, as itself.
        ValidationError: nothing to count, an empty dataset, a missing column (``label`` where
            calibration or certification needs it), an argument out of range, a shard whose
            statistics do not add (another model, binning, criterion or grid), a dataset
            labelled in some batches only, or the same criterion named twice in ``thresholds``.
        PluginError, CalibrationError: an unknown criterion, or a calibration that does not fit
            the costs' exits, before any work.
    """
    ray = import_ray()
    plan = _plan(
        logits, ray, costs, bins, edges, thresholds, calibration, monitor, monitor_bins, purpose
    )
    rows = count(batch_size, "batch_size", low=1)
    partials = logits.map_batches(
        _count_batch,
        fn_kwargs={"plan": plan},
        batch_size=rows,
        batch_format="numpy",
        # Counting is light next to tracing; reserving no CPU for it keeps a pipeline whose
        # tracing actors hold every CPU of the cluster from waiting forever on its counts.
        num_cpus=0,
    )
    with adaptix_errors():
        return _reduce(partials, plan)


def _plan(
    logits: Any,
    ray: ModuleType,
    costs: Any,
    bins: Any,
    edges: Any,
    thresholds: Any,
    calibration: Any,
    monitor: Any,
    monitor_bins: Any,
    purpose: Any,
) -> _Plan:
    """Check every argument of `reduce_statistics` and resolve its default grids, at once."""
    _dataset(logits, ray, "logits")
    goal: Purpose = (
        "sweep" if choice(purpose, "purpose", GRID_SIZES) == "sweep" else "certification"
    )
    values = _costs(costs)
    if isinstance(thresholds, ThresholdSpec | str) or not isinstance(thresholds, Sequence):
        raise ValidationError(
            f"expected thresholds as a list of ThresholdSpec, got {thresholds!r}. Wrap one in "
            "a list: thresholds=[ThresholdSpec('confidence')]."
        )
    specs = tuple(thresholds)
    for spec in specs:
        if not isinstance(spec, ThresholdSpec):
            raise ValidationError(
                f"expected every item of thresholds to be a ThresholdSpec, got {spec!r}."
            )
    if bins is None and not specs and monitor is None:
        raise ValidationError("expected bins, thresholds or monitor to count, got none.")
    names = [spec.criterion for spec in specs]
    if len(set(names)) != len(names):
        raise ValidationError(
            f"expected each criterion once in thresholds, got {names}. Count one criterion "
            "with other parameters in another call."
        )
    if calibration is not None and not isinstance(calibration, Calibration):
        raise ValidationError(
            f"expected calibration to be an adaptix.Calibration or None, got "
            f"{type(calibration).__name__}."
        )
    if monitor is not None and not isinstance(monitor, ExitPolicy):
        raise ValidationError(
            f"expected monitor to be an adaptix.ExitPolicy (the policy the monitor watches) or "
            f"None, got {type(monitor).__name__}."
        )
    shape = _logits_shape(logits)
    _check_logits_shape(shape, len(values))
    reading = calibration or (monitor.calibration if monitor is not None else None)
    classes = shape[1] if shape is not None else reading.num_classes if reading is not None else 2
    labels_needed = bins is not None or (goal == "certification" and bool(specs))
    stand_in = _stand_in(values, classes, labelled=True)
    checked_bins = None
    if bins is not None:
        checked_bins = integer(bins, "bins", low=1, high=MAX_BINS)
        count_bins(stand_in, checked_bins, edges=edges)
    manager = resolve_manager(None)  # the workers resolve criteria with the default manager
    resolved = []
    for spec in specs:
        grid = spec.thresholds
        if grid is None:
            grid = default_grid(spec.criterion, manager, GRID_SIZES[goal])
        count_thresholds(stand_in, spec.criterion, grid, calibration, **dict(spec.params))
        resolved.append(ThresholdSpec(spec.criterion, grid, dict(spec.params)))
    checked_monitor_bins = count(monitor_bins, "monitor_bins", low=1)
    if monitor is not None:
        reference_counts(stand_in, monitor, checked_monitor_bins)
    columns = _known_columns(logits)
    if columns is not None:
        _require(columns, _needed(labels_needed))
    return _Plan(
        values,
        goal,
        labels_needed,
        checked_bins,
        edges,
        tuple(resolved),
        calibration,
        monitor,
        checked_monitor_bins,
    )


def _reduce(partials: Any, plan: _Plan) -> Statistics:
    """Add the partial statistics as they stream in."""
    rows = 0
    labelled: set[bool] = set()
    total_monitor: ReferenceCounts | None = None
    total_calibration: Calibration | None = None
    totals: list[Any] = [None] * len(plan.specs)
    for part in partials.iter_rows():
        rows += int(part["rows"])
        labelled.add(bool(part["labelled"]))
        if len(labelled) > 1:
            raise ValidationError(
                "expected every batch of the dataset to have a 'label' column or none to have "
                "one, got both: its labels would be dropped. Label every row, or drop the "
                "column."
            )
        if plan.bins is not None:
            piece = pickle.loads(part["calibration"])
            total_calibration = piece if total_calibration is None else total_calibration + piece
        if plan.monitor is not None:
            piece = pickle.loads(part["monitor"])
            total_monitor = piece if total_monitor is None else total_monitor + piece
        for i in range(len(plan.specs)):
            piece = pickle.loads(part[f"counts{i}"])
            totals[i] = piece if totals[i] is None else totals[i] + piece
    if rows == 0:
        raise ValidationError("expected a dataset with at least one row, got none.")
    counts = {spec.criterion: total for spec, total in zip(plan.specs, totals, strict=True)}
    return Statistics(rows, total_calibration, counts, total_monitor, plan.purpose)


def _count_survivor_batch(
    batch: dict[str, np.ndarray], costs: tuple[float, ...], counts: SurvivorCounts
) -> dict[str, np.ndarray]:
    """One batch of logits -> one row: its survivor counts up to the next exit (pickled),
    deciding with the whole set's ``counts``. Its `AdaptixError`s leave as carriers."""
    try:
        _require(batch, _needed(True))
        trace = Trace(_tensor(batch[LOGITS]), _labels(batch[LABEL], LABEL), list(costs))
        return {"counts": _packed(count_survivors(trace, counts))}
    except AdaptixError as err:
        raise _carried(err) from err


def reduce_survivors(
    logits: Any,
    costs: Sequence[float],
    deltas: Sequence[float],
    criterion: str = "pcee",
    *,
    bins: int = 10,
    edges: Any = None,
    params: Mapping[str, Any] | None = None,
    batch_size: int = 4096,
) -> SurvivorCounts:
    """Survivor calibration (`adaptix.calibrate_survivors`) of a Ray Dataset of logits and
    labels, for every δ of ``deltas`` at once, counted by shard and added on the driver.

    Exit e's counts need the tables of exits 0 … e − 1 over the whole dataset, so the dataset
    is counted exit by exit: one pass (one reduction) per exit, each batch counted on a worker
    with `adaptix.count_survivors` from the sums so far, the partial counts added with their
    own ``+`` as they stream in. The result equals ``calibrate_survivors`` on the whole trace:
    the counts exactly, the confidence sums up to summation order. The dataset is read E
    times: ``materialize()`` one that is expensive to recompute (the output of
    `trace_dataset`) first.

    Args:
        logits: a Ray Dataset with a ``logits`` column (``[E, C]`` per row) and a ``label``
            column of integer labels (what `trace_dataset` gives).
        costs: the model's cumulative costs ``[E]``.
        deltas: the grid of targets δ, each in [0, 1], distinct.
        criterion: the rule, a criterion with a bin table (``pcee``, ``pcee_ws``,
            ``pcee_lcb``); the workers resolve it with their default plugin manager.
        bins: M (default 10).
        edges: ``[E, M + 1]`` bin edges (an ``equal_mass`` calibration's ``edges``), or None
            for M equal-width bins.
        params: the criterion's own parameters.
        batch_size: rows per partial count, an integer >= 1.

    Raises:
        AdaptixError: Ray is not installed; or whatever a worker raised, as itself.
        ValidationError: not a dataset, an empty one, a missing column, bad costs, a δ grid
            or size out of range, or parameters the criterion refuses.
        PluginError, CalibrationError: an unknown criterion or one without a bin table, or
            edges that break the rules of `Calibration`, before any work.
    """
    ray = import_ray()
    _dataset(logits, ray, "logits")
    values = _costs(costs)
    rows = count(batch_size, "batch_size", low=1)
    if params is not None and not isinstance(params, Mapping):
        raise ValidationError(
            f"expected params as a mapping of parameter names to values, got {params!r}."
        )
    shape = _logits_shape(logits)
    _check_logits_shape(shape, len(values))
    columns = _known_columns(logits)
    if columns is not None:
        _require(columns, _needed(True))
    counts = SurvivorCounts.empty(  # checks the grid, rule, bins and edges before any work
        deltas,
        criterion,
        num_exits=len(values),
        num_classes=1 if shape is None else shape[1],
        bins=integer(bins, "bins", low=1, high=MAX_BINS),
        edges=edges,
        **dict(params or {}),
    )
    if shape is None:  # the schema is known only by running upstream work: one row's worth
        with adaptix_errors():
            first = logits.take(1)
        if not first:
            raise ValidationError("expected a dataset with at least one row, got none.")
        _require(first[0], _needed(True))
        shape = tuple(np.asarray(first[0][LOGITS]).shape)
        _check_logits_shape(shape, len(values))
        counts = dataclasses.replace(counts, num_classes=shape[1])
    while not counts.complete:
        partials = logits.map_batches(
            _count_survivor_batch,
            fn_kwargs={"costs": values, "counts": counts},
            batch_size=rows,
            batch_format="numpy",
            num_cpus=0,  # light next to tracing, as reduce_statistics's counts
        )
        total: SurvivorCounts | None = None
        with adaptix_errors():
            for part in partials.iter_rows():
                piece = pickle.loads(part["counts"])
                total = piece if total is None else total + piece
        if total is None:
            raise ValidationError("expected a dataset with at least one row, got none.")
        counts = total
    return counts


def _in_order(dataset: Any) -> Any:
    """``dataset`` executed with its blocks in input order (Ray's default,
    ``preserve_order=False``, lets an actor pool hand blocks back as they finish, so row i of
    a trace would not be input i). A copy with its own context: the caller's dataset and
    Ray's global `DataContext` are left as they were."""
    ordered = type(dataset).copy(dataset, _deep_copy=True)
    ordered.context.execution_options.preserve_order = True
    return ordered


def collect_trace(
    logits: Any,
    costs: Sequence[float],
    meta: Mapping[str, str] | None = None,
    *,
    labelled: bool | None = None,
) -> Trace:
    """Bring a dataset of logits to the driver as one `Trace` (it must fit in its memory),
    row i of the trace from row i of the dataset (its blocks are executed in order, whatever
    the order the workers finish them in).

    Args:
        logits: a Ray Dataset with a ``logits`` column (``[E, C]`` per row) and, optionally, a
            ``label`` column (what `trace_dataset` gives).
        costs: the model's cumulative costs ``[E]``.
        meta: the trace's metadata (str -> str).
        labelled: True: the ``label`` column is required (a trace to calibrate or certify
            on); False: labels are left out; None (default): kept when the dataset has them.

    Raises:
        AdaptixError: Ray is not installed; or whatever a worker raised, as itself.
        ValidationError: not a dataset, bad costs or meta, a missing column, an empty
            dataset, or labels in some batches only (never dropped silently).
    """
    ray = import_ray()
    _dataset(logits, ray, "logits")
    values = _costs(costs)
    want = None if labelled is None else flag(labelled, "labelled")
    Trace(torch.zeros(1, len(values), 2), None, list(values), meta=meta)  # checks meta now
    _check_logits_shape(_logits_shape(logits), len(values))
    columns = _known_columns(logits)
    if columns is not None:
        _require(columns, _needed(want is True))
    parts, labels = [], []
    with adaptix_errors():
        for batch in _in_order(logits).iter_batches(batch_format="numpy"):
            _require(batch, _needed(want is True))
            parts.append(_tensor(batch[LOGITS]))
            if LABEL in batch and want is not False:
                labels.append(_labels(batch[LABEL], LABEL))
    if not parts:
        raise ValidationError("expected a dataset with at least one row, got none.")
    if labels and len(labels) != len(parts):
        raise ValidationError(
            "expected every batch of the dataset to have a 'label' column or none to have one, "
            "got both: its labels would be dropped. Label every row, or pass labelled=False."
        )
    label_tensor = torch.cat(labels) if labels else None
    return Trace(torch.cat(parts), label_tensor, list(values), meta=meta)
