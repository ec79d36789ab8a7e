"""`Trace`: the logits of every exit for a set of inputs, with labels and cumulative costs.

A trace is what the offline simulator, the calibrators and the sweeps read. It is validated once,
on construction, so everything downstream can trust its shapes, dtypes and values.
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from adaptix import scalars
from adaptix.core.files import atomic_write, check_meta, tensor_digest
from adaptix.errors import ValidationError, expect

_FORMAT = "adaptix.trace"
_VERSION = 1
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FIELDS = ("logits", "labels", "costs")  # and "meta", optional


class Trace:
    """Exit logits ``[N, E, C]``, labels ``[N]`` (or None) and cumulative costs ``[E]``.

    Args:
        logits: floating tensor ``[N, E, C]``: input n's logits at exit e. Must be finite.
        labels: int64 tensor ``[N]`` with values in ``[0, C)`` on the logits' device, or None
            for unlabelled data.
        costs: ``[E]`` cumulative compute (e.g. FLOPs) to decide at each exit; finite,
            non-negative, non-decreasing, and ``costs[-1] > 0``.
        meta: string metadata (model name, split, ...) that travels with the trace: keys and
            values must be strings.

    Raises:
        ValidationError: if any of the above does not hold.
    """

    __slots__ = ("costs", "labels", "logits", "meta")

    def __init__(
        self,
        logits: Tensor,
        labels: Tensor | None,
        costs: Tensor | list[float] | tuple[float, ...],
        meta: Mapping[str, str] | None = None,
    ) -> None:
        self.logits = _check_logits(logits)
        n, e, c = self.logits.shape
        self.labels = None if labels is None else _check_labels(labels, n, c, self.logits.device)
        self.costs = _check_costs(costs, e)
        self.meta = check_meta(meta, "Trace")

    @property
    def num_inputs(self) -> int:
        """N, the number of inputs."""
        return int(self.logits.shape[0])

    @property
    def num_exits(self) -> int:
        """E, the number of exits (the last one is the final classifier)."""
        return int(self.logits.shape[1])

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return int(self.logits.shape[2])

    def __len__(self) -> int:
        return self.num_inputs

    def __repr__(self) -> str:
        labelled = "labelled" if self.labels is not None else "unlabelled"
        return (
            f"Trace(N={self.num_inputs}, E={self.num_exits}, C={self.num_classes}, {labelled}, "
            f"costs={[round(float(c), 4) for c in self.costs]})"
        )

    def content_digest(self) -> str:
        """SHA-256 of the trace's tensors (logits, labels when present, costs; dtypes and
        shapes included): identifies its content in study records and caches."""
        tensors = {"logits": self.logits, "costs": self.costs}
        if self.labels is not None:
            tensors["labels"] = self.labels
        return tensor_digest(tensors)

    def row_digests(self) -> Tensor:
        """int64 ``[N]``: a 64-bit fingerprint of each row (its logits at every exit, compared
        as float64 values, and its label), the same on any device and for any float dtype.

        Two traces share a row when they share its digest: this is how adaptix sees that a
        calibration was counted on the rows being certified (`adaptix.guarantee`), or that a
        study was given one trace twice. Distinct rows collide with probability about 2⁻⁶⁴
        per pair.
        """
        return row_digests(self.logits, self.labels)

    def subset(self, index: Tensor | slice) -> Trace:
        """The trace of a subset of inputs.

        Args:
            index: a slice, a 1-D integer tensor of input indices in ``[-N, N)`` (repeats
                allowed, e.g. for a bootstrap), or a boolean mask of shape ``[N]``.

        Raises:
            ValidationError: any other index, an index out of range, or an empty selection.
        """
        rows = _check_index(index, self.num_inputs, self.logits.device)
        labels = None if self.labels is None else self.labels[rows]
        return Trace(self.logits[rows], labels, self.costs, self.meta)

    @classmethod
    def concat(cls, traces: Sequence[Trace], meta: Mapping[str, str] | None = None) -> Trace:
        """The traces' inputs as one trace, in order: traces of one model (same exits, classes
        and costs), all labelled or all unlabelled.

        The logits take the promoted dtype of all of them, on the first trace's device; the
        metadata is ``meta``, or the first trace's.

        Raises:
            ValidationError: no traces, something that is not a trace, traces of different
                models, or labelled and unlabelled ones together.
        """
        parts = list(traces) if isinstance(traces, Sequence) else []
        if not parts or not all(isinstance(t, Trace) for t in parts):
            raise ValidationError(
                f"expected a non-empty list of adaptix.Trace to join, got {reprlib.repr(traces)}."
            )
        first = parts[0]
        for i, trace in enumerate(parts[1:], start=1):
            if (trace.num_exits, trace.num_classes) != (first.num_exits, first.num_classes):
                raise ValidationError(
                    f"expected traces of the same model to join, got E={first.num_exits}, "
                    f"C={first.num_classes} (trace 0) and E={trace.num_exits}, "
                    f"C={trace.num_classes} (trace {i}). Join the traces of one model."
                )
            if not torch.equal(trace.costs, first.costs):
                raise ValidationError(
                    f"expected traces of the same model to join, got different costs: "
                    f"{first.costs.tolist()} (trace 0) and {trace.costs.tolist()} (trace {i}). "
                    "Join the traces of one model."
                )
            if (trace.labels is None) != (first.labels is None):
                raise ValidationError(
                    f"expected traces all labelled or all unlabelled to join, got trace 0 "
                    f"{'un' if first.labels is None else ''}labelled and trace {i} not: the "
                    "joined labels would be incomplete."
                )
        device = first.logits.device
        dtype = first.logits.dtype
        for trace in parts[1:]:
            dtype = torch.promote_types(dtype, trace.logits.dtype)
        logits = torch.cat([t.logits.to(device, dtype) for t in parts])
        labels = (
            None
            if first.labels is None
            else torch.cat([t.labels.to(device) for t in parts if t.labels is not None])
        )
        return cls(logits, labels, first.costs, first.meta if meta is None else meta)

    def scaled(self, factor: float) -> Trace:
        """The same trace with every logit multiplied by ``factor`` (temperature 1 / factor).

        Scaling by a factor above 1 makes every head more confident without changing a single
        prediction: the overconfidence stress of ``PCEE.md``.
        """
        factor = scalars.real(factor, "factor", low=0.0, open_low=True)
        logits = self.logits * factor
        if not bool(torch.isfinite(logits).all()):
            raise ValidationError(
                f"expected a factor that keeps the {self.logits.dtype} logits finite, got "
                f"{reprlib.repr(factor)}, which overflows them. Use a smaller factor, or convert "
                "the logits to float64 first."
            )
        meta = {**self.meta, "logit_scale": str(factor)}
        return Trace(logits, self.labels, self.costs, meta)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save to ``path`` (a torch file of plain tensors, loadable with ``weights_only``).

        The write is atomic (see `atomic_write`): an existing file at ``path`` is never left
        half-written. A missing parent directory is created.

        Raises:
            ValidationError: ``path`` is a directory or cannot be written; a file already at
                ``path`` is then left as it was.
        """
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "logits": self.logits.detach().cpu(),
            "labels": None if self.labels is None else self.labels.detach().cpu(),
            "costs": self.costs.detach().cpu(),
            # Checked again: the dict can have been edited since the constructor checked it.
            "meta": check_meta(self.meta, "Trace"),
        }
        return atomic_write(path, lambda handle: torch.save(payload, handle), "trace")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Load a trace written by `save`; a corrupt or foreign file raises `ValidationError`.

        The file is read with ``weights_only=True``: it can hold only tensors and plain data,
        never code.
        """
        source = Path(path)
        if source.is_dir():
            raise ValidationError(
                f"expected a trace file at {source}, got a directory. Pass the path of the file "
                "that Trace.save wrote."
            )
        try:
            payload = torch.load(source, map_location="cpu", weights_only=True)
        except FileNotFoundError as err:
            raise ValidationError(
                f"no trace file at {path}. Check the path, or create it with Trace.save."
            ) from err
        except Exception as err:
            raise ValidationError(
                f"expected an adaptix trace file at {path}, but it could not be read ({err}). "
                "Re-create it with Trace.save."
            ) from err
        expect(
            isinstance(payload, dict) and payload.get("format") == _FORMAT,
            "an adaptix trace file",
            f"a file without the '{_FORMAT}' header at {path}",
            "Re-create it with Trace.save.",
        )
        expect(
            payload.get("version") == _VERSION,
            f"trace format version {_VERSION}",
            payload.get("version"),
            "Upgrade adaptix or re-create the trace.",
        )
        missing = [field for field in _FIELDS if field not in payload]
        expect(
            not missing,
            f"a trace file with the fields {list(_FIELDS)}",
            f"one without {missing} at {path}",
            "The file is corrupt: re-create it with Trace.save.",
        )
        return cls(payload["logits"], payload["labels"], payload["costs"], payload.get("meta"))


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def row_digests(logits: Tensor, labels: Tensor | None) -> Tensor:
    """The digests of `Trace.row_digests` for logits ``[N, ...]`` and labels ``[N]`` (or None).

    Each value (as float64, with -0.0 read as 0.0) is mixed with its position and the mixes are
    summed, so a row's digest does not depend on how the rows are batched or ordered.
    """
    n = int(logits.shape[0])
    values = (logits.detach().reshape(n, -1).double().cpu() + 0.0).numpy()
    bits = values.view(np.uint64)
    position = np.arange(bits.shape[1], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        digests = _mix(bits ^ position).sum(axis=1, dtype=np.uint64)
        label = np.full(n, -1, dtype=np.int64) if labels is None else labels.cpu().numpy()
        digests = _mix(digests ^ _mix(label.astype(np.int64).view(np.uint64) + np.uint64(1)))
    return torch.from_numpy(digests.view(np.int64).copy())


def shared_rows(first: Tensor, second: Tensor) -> Tensor:
    """bool ``[len(first)]``: which digests of ``first`` also occur in ``second``."""
    return torch.from_numpy(np.isin(first.cpu().numpy(), second.cpu().numpy()))


def _check_logits(logits: object) -> Tensor:
    if not isinstance(logits, Tensor):
        raise ValidationError(
            f"expected logits as a torch.Tensor, got {type(logits).__name__}. "
            "Convert with torch.as_tensor."
        )
    expect(
        logits.dim() == 3,
        "logits of shape [N, E, C]",
        f"shape {list(logits.shape)}",
        "Stack the exits on dimension 1: torch.stack(per_exit_logits, dim=1).",
    )
    expect(
        logits.dtype in _FLOAT_DTYPES,
        "floating logits (fp16, bf16, fp32 or fp64)",
        logits.dtype,
        "Cast with .float().",
    )
    expect(
        logits.device.type != "meta",
        "logits that hold data",
        "a tensor on the 'meta' device (shapes only)",
        "Trace real outputs of the model.",
    )
    n, e, c = logits.shape
    expect(
        n >= 1 and e >= 1 and c >= 1,
        "at least one input, one exit and one class",
        f"N={n}, E={e}, C={c}",
        "An empty set cannot be simulated or calibrated.",
    )
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        raise ValidationError(
            f"expected finite logits, got {int((~finite).sum())} NaN/inf values (first at input "
            f"{bad[0]}, exit {bad[1]}, class {bad[2]}). Check the model for overflow (try fp32) "
            "or drop the bad inputs."
        )
    return logits.detach()


def _check_labels(labels: object, n: int, c: int, device: torch.device) -> Tensor:
    if not isinstance(labels, Tensor):
        raise ValidationError(
            f"expected labels as a torch.Tensor or None, got {type(labels).__name__}. "
            "Convert with torch.as_tensor(labels, dtype=torch.int64)."
        )
    expect(labels.dtype == torch.int64, "int64 labels", labels.dtype, "Cast with .long().")
    expect(
        labels.device == device,
        f"labels on the logits' device ({device})",
        f"labels on {labels.device}",
        f"Move them with labels.to('{device}').",
    )
    expect(
        labels.shape == (n,),
        f"labels of shape [{n}] (one per input)",
        f"shape {list(labels.shape)}",
        "Pass one class index per input.",
    )
    if n and not bool(((labels >= 0) & (labels < c)).all()):
        lo, hi = int(labels.min()), int(labels.max())
        raise ValidationError(
            f"expected labels in [0, {c}), got values from {lo} to {hi}. The logits have {c} "
            "classes; check the label encoding."
        )
    return labels.detach()


def _check_costs(costs: object, e: int) -> Tensor:
    try:
        tensor = torch.as_tensor(costs, dtype=torch.float64).detach().cpu()
    except (OverflowError, RuntimeError, TypeError, ValueError) as err:
        raise ValidationError(
            f"expected {e} numeric costs, got {reprlib.repr(costs)}. Give one cumulative cost "
            "per exit."
        ) from err
    expect(
        tensor.shape == (e,),
        f"costs of shape [{e}] (one per exit)",
        f"shape {list(tensor.shape)}",
        "Give the cumulative cost of reaching each exit.",
    )
    expect(
        bool(torch.isfinite(tensor).all()) and bool((tensor >= 0).all()),
        "finite, non-negative costs",
        tensor.tolist(),
        "Costs are FLOPs or seconds.",
    )
    if e > 1 and not bool((tensor[1:] >= tensor[:-1]).all()):
        raise ValidationError(
            f"expected cumulative (non-decreasing) costs, got {tensor.tolist()}. Costs are the "
            "total compute to reach each exit; use torch.cumsum on per-exit costs."
        )
    expect(
        float(tensor[-1]) > 0,
        "a positive cost for the last exit",
        tensor.tolist(),
        "Relative cost divides by the last exit's cost.",
    )
    return tensor


def _check_index(index: object, n: int, device: torch.device) -> Tensor | slice:
    """``index`` (a slice, an integer index tensor or a boolean mask) checked against N = n."""
    if isinstance(index, slice):
        try:
            rows = range(n)[index]
        except (TypeError, ValueError) as err:
            raise ValidationError(
                f"expected a slice of integers with a non-zero step, got {index!r} ({err})."
            ) from err
        if rows.step > 0:
            return slice(rows.start, rows.stop, rows.step)
        return torch.arange(rows.start, rows.stop, rows.step, device=device)
    if not isinstance(index, Tensor):
        raise ValidationError(
            f"expected a slice, an integer index tensor or a boolean mask, got "
            f"{type(index).__name__}. Convert a list with torch.tensor(indices)."
        )
    if index.dtype == torch.bool:
        expect(
            index.shape == (n,),
            f"a boolean mask of shape [{n}] (one entry per input)",
            f"shape {list(index.shape)}",
            "Build the mask from the trace's own tensors, e.g. trace.labels == 3.",
        )
        return index.to(device)
    expect(
        not index.dtype.is_floating_point and not index.dtype.is_complex and index.dim() == 1,
        "a 1-D integer index tensor",
        f"a {index.dim()}-D {index.dtype} tensor",
        "Pass input indices as torch.tensor([...]) or a boolean mask.",
    )
    if index.numel() and not (-n <= int(index.min()) and int(index.max()) < n):
        raise ValidationError(
            f"expected indices in [-{n}, {n}) (the trace has {n} inputs), got values from "
            f"{int(index.min())} to {int(index.max())}."
        )
    return index.to(device=device, dtype=torch.int64)


def check_trace(
    value: object, role: str | None = None, *, labelled: bool = False, fix: str = ""
) -> Trace:
    """``value`` if it is an `adaptix.Trace` (with labels, when ``labelled``); otherwise a
    `ValidationError` saying what was expected (``role``: what the trace is for, e.g. "the
    calibration trace"), what came, and ``fix`` (how to get one). The one check of adaptix's
    entry points that take a trace."""
    if isinstance(value, Trace) and (value.labels is not None or not labelled):
        return value
    kind = "a labelled adaptix.Trace" if labelled else "an adaptix.Trace"
    what = kind if role is None else f"{role} as {kind}"
    got = "a Trace without labels" if isinstance(value, Trace) else f"a {type(value).__name__}"
    hint = fix or "Build one with adaptix.Trace(logits, labels, costs) or model.trace(...)."
    raise ValidationError(f"expected {what}, got {got}. {hint}")
