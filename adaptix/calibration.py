"""`Calibration`: per-exit reliability tables (counts n and correct k per confidence bin).

The tables are sums, so calibrations of several shards merge by addition. They are saved in a
versioned JSON format with a checksum; a corrupt or mismatched file is always an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adaptix.components import build_params
from adaptix.errors import CalibrationError, PluginError

if TYPE_CHECKING:
    from adaptix.plugins import AdaptixPluginManager
    from adaptix.trace import Trace

_FORMAT = "adaptix.calibration"
_VERSION = 1


class Calibration:
    """Reliability statistics of every exit, binned by confidence.

    Args:
        counts: int64 ``[E, M]``: n[e, m], inputs whose exit-e confidence falls in bin m.
        correct: int64 ``[E, M]``: k[e, m], how many of those exit-e predictions are right.
        confidence_sum: float64 ``[E, M]``: sum of those confidences (for reliability diagrams and
            calibration error; additive like n and k). Zeros if not given.
        num_classes: C, the number of classes of the model that was calibrated.
        method: the calibrator that produced the tables.
        meta: free-form string metadata (model, split, ...).

    Raises:
        CalibrationError: if the tables are inconsistent (shapes, negative counts, k > n).
    """

    __slots__ = ("confidence_sum", "correct", "counts", "meta", "method", "num_classes")

    def __init__(
        self,
        counts: Tensor,
        correct: Tensor,
        num_classes: int,
        *,
        confidence_sum: Tensor | None = None,
        method: str = "reliability",
        meta: Mapping[str, str] | None = None,
    ) -> None:
        self.counts = torch.as_tensor(counts, dtype=torch.int64).detach().cpu()
        self.correct = torch.as_tensor(correct, dtype=torch.int64).detach().cpu()
        self.confidence_sum = (
            torch.zeros(self.counts.shape, dtype=torch.float64)
            if confidence_sum is None
            else torch.as_tensor(confidence_sum, dtype=torch.float64).detach().cpu()
        )
        self.num_classes = int(num_classes)
        self.method = str(method)
        self.meta = dict(meta or {})
        self._validate()

    def _validate(self) -> None:
        if self.counts.dim() != 2 or self.counts.shape[0] < 1 or self.counts.shape[1] < 1:
            raise CalibrationError(
                f"expected count tables of shape [E, M] with E, M >= 1, got "
                f"{list(self.counts.shape)}. Build calibrations with adaptix.calibrate."
            )
        for name, table in (("correct", self.correct), ("confidence_sum", self.confidence_sum)):
            if table.shape != self.counts.shape:
                raise CalibrationError(
                    f"expected '{name}' of shape {list(self.counts.shape)} like 'counts', got "
                    f"{list(table.shape)}."
                )
        if bool((self.counts < 0).any()) or bool((self.correct < 0).any()):
            raise CalibrationError("expected non-negative counts, got negative entries.")
        if bool((self.correct > self.counts).any()):
            raise CalibrationError(
                "expected correct[e, m] <= counts[e, m] in every bin, got more correct "
                "predictions than inputs: the tables are corrupt."
            )
        if self.num_classes < 1:
            raise CalibrationError(f"expected num_classes >= 1, got {self.num_classes}.")
        if int(self.counts.sum()) == 0:
            raise CalibrationError(
                "expected a calibration built from at least one input, got empty tables. "
                "Calibrate on a non-empty, labelled held-out set."
            )

    @property
    def num_exits(self) -> int:
        """E, the number of exits."""
        return int(self.counts.shape[0])

    @property
    def bins(self) -> int:
        """M, the number of confidence bins."""
        return int(self.counts.shape[1])

    @property
    def num_inputs(self) -> int:
        """How many calibration inputs the tables count (the same at every exit)."""
        return int(self.counts[0].sum())

    def accuracy(self, window: int = 0) -> Tensor:
        """Calibrated accuracy per exit and bin, float64 ``[E, M]``, NaN where undefined.

        Args:
            window: pool each bin with its ``window`` neighbours on each side (``pcee_ws``'s w).
                0 gives the plain bin accuracy a[e, m] = k / n (``pcee``).
        """
        if window < 0:
            raise CalibrationError(f"expected a window >= 0, got {window}.")
        n = _pool(self.counts.double(), window)
        k = _pool(self.correct.double(), window)
        return torch.where(n >= 1, k / n.clamp(min=1), torch.full_like(n, float("nan")))

    def mean_confidence(self) -> Tensor:
        """Mean confidence per exit and bin, float64 ``[E, M]``, NaN for empty bins."""
        n = self.counts.double()
        return torch.where(n >= 1, self.confidence_sum / n.clamp(min=1), torch.nan)

    def expected_calibration_error(self) -> Tensor:
        """ECE of every exit, float64 ``[E]``: sum over bins of n/N · |accuracy - confidence|."""
        gap = (self.accuracy() - self.mean_confidence()).abs().nan_to_num(0.0)
        return (gap * self.counts).sum(dim=1) / self.counts.sum(dim=1).clamp(min=1)

    def check_compatible(self, num_exits: int, num_classes: int, what: str = "the trace") -> None:
        """Raise `CalibrationError` unless this calibration fits a model of that shape."""
        if (self.num_exits, self.num_classes) != (num_exits, num_classes):
            raise CalibrationError(
                f"expected a calibration for {num_exits} exits and {num_classes} classes "
                f"({what}), got one for {self.num_exits} exits and {self.num_classes} classes. "
                "Calibrate on data from the same model."
            )

    def __add__(self, other: object) -> Calibration:
        if not isinstance(other, Calibration):
            return NotImplemented
        if (self.method, self.bins, self.num_classes, self.num_exits) != (
            other.method,
            other.bins,
            other.num_classes,
            other.num_exits,
        ):
            raise CalibrationError(
                "expected calibrations with the same method, exits, classes and bins to merge, "
                f"got ({self.method}, E={self.num_exits}, C={self.num_classes}, M={self.bins}) "
                f"and ({other.method}, E={other.num_exits}, C={other.num_classes}, "
                f"M={other.bins})."
            )
        return Calibration(
            self.counts + other.counts,
            self.correct + other.correct,
            self.num_classes,
            confidence_sum=self.confidence_sum + other.confidence_sum,
            method=self.method,
            meta={**self.meta, **other.meta},
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Calibration):
            return NotImplemented
        return self._payload() == other._payload()

    __hash__ = None  # type: ignore[assignment]  # mutable tensors inside: not hashable

    def __repr__(self) -> str:
        return (
            f"Calibration(method={self.method!r}, E={self.num_exits}, C={self.num_classes}, "
            f"M={self.bins}, inputs={self.num_inputs})"
        )

    def _payload(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "num_exits": self.num_exits,
            "num_classes": self.num_classes,
            "bins": self.bins,
            "counts": self.counts.tolist(),
            "correct": self.correct.tolist(),
            # repr of a float round-trips exactly through JSON.
            "confidence_sum": self.confidence_sum.tolist(),
            "meta": self.meta,
        }

    @property
    def checksum(self) -> str:
        """SHA-256 of the canonical content: identifies this calibration in experiment records."""
        return _digest(self._payload())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the versioned JSON file with its checksum; atomically replaces ``path``."""
        target = Path(path)
        payload = self._payload()
        document = {"format": _FORMAT, "version": _VERSION, **payload, "sha256": _digest(payload)}
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True))
        os.replace(tmp, target)
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        num_exits: int | None = None,
        num_classes: int | None = None,
    ) -> Calibration:
        """Read a file written by `save`, verifying format, version, shapes and checksum.

        Args:
            path: the file.
            num_exits: if given, the file must be for this many exits.
            num_classes: if given, the file must be for this many classes.

        Raises:
            CalibrationError: the file is missing, corrupt, of another version, or mismatched.
        """
        source = Path(path)
        try:
            document = json.loads(source.read_text())
        except FileNotFoundError as err:
            raise CalibrationError(f"no calibration file at {source}.") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CalibrationError(
                f"expected a JSON calibration file at {source}, but it could not be parsed "
                f"({err}). The file is corrupt: re-create it with Calibration.save."
            ) from err
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise CalibrationError(
                f"expected an '{_FORMAT}' file at {source}, got something else. Pass the file "
                "that Calibration.save wrote."
            )
        if document.get("version") != _VERSION:
            raise CalibrationError(
                f"expected calibration format version {_VERSION}, got "
                f"{document.get('version')!r} in {source}. Re-create it with this adaptix."
            )
        keys = (
            "method",
            "num_exits",
            "num_classes",
            "bins",
            "counts",
            "correct",
            "confidence_sum",
            "meta",
        )
        missing = [key for key in (*keys, "sha256") if key not in document]
        if missing:
            raise CalibrationError(f"calibration file {source} lacks fields {missing}: corrupt.")
        payload = {key: document[key] for key in keys}
        if _digest(payload) != document["sha256"]:
            raise CalibrationError(
                f"checksum mismatch in {source}: the file was modified or truncated after it "
                "was saved. Re-create it with Calibration.save."
            )
        try:
            calibration = cls(
                torch.tensor(payload["counts"], dtype=torch.int64),
                torch.tensor(payload["correct"], dtype=torch.int64),
                payload["num_classes"],
                confidence_sum=torch.tensor(payload["confidence_sum"], dtype=torch.float64),
                method=payload["method"],
                meta=payload["meta"],
            )
        except (TypeError, ValueError, RuntimeError) as err:
            raise CalibrationError(
                f"calibration file {source} has malformed tables: {err}"
            ) from err
        if (calibration.num_exits, calibration.bins) != (payload["num_exits"], payload["bins"]):
            raise CalibrationError(
                f"calibration file {source} declares E={payload['num_exits']}, "
                f"M={payload['bins']} but its tables are {list(calibration.counts.shape)}."
            )
        if num_exits is not None or num_classes is not None:
            calibration.check_compatible(
                calibration.num_exits if num_exits is None else num_exits,
                calibration.num_classes if num_classes is None else num_classes,
                what="the model it is loaded for",
            )
        return calibration


def _digest(payload: Mapping[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _pool(table: Tensor, window: int) -> Tensor:
    """Sum each bin with its ``window`` neighbours on each side (clipped at the edges)."""
    if window == 0:
        return table
    bins = table.shape[1]
    cumulative = torch.nn.functional.pad(table.cumsum(dim=1), (1, 0))
    idx = torch.arange(bins)
    hi = (idx + window + 1).clamp(max=bins)
    lo = (idx - window).clamp(min=0)
    return cumulative[:, hi] - cumulative[:, lo]


def calibrate(
    trace: Trace,
    method: str = "reliability",
    bins: int = 10,
    *,
    plugins: AdaptixPluginManager | None = None,
    **params: Any,
) -> Calibration:
    """Calibrate every exit of ``trace`` (held-out, labelled data) with a registered calibrator.

    Args:
        trace: a labelled trace of data that was not used for training.
        method: a registered calibrator name (default ``"reliability"``).
        bins: M, the number of equal-width confidence bins (default 10).
        plugins: the plugin manager to resolve ``method`` with (default: a fresh one).
        **params: the calibrator's own parameters.

    Raises:
        CalibrationError: the trace is unlabelled, or ``bins`` is not a positive integer.
        PluginError: unknown method, or the calibrator raised.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise CalibrationError(f"expected bins to be an integer >= 1, got {bins!r}.")
    from adaptix.plugins import call_plugin, resolve_manager  # the host imports this module

    manager = resolve_manager(plugins)
    entry = manager.calibrators.entry(method)
    calibrator = entry.component(build_params(entry.component.Params, params, method))
    result = call_plugin(entry, "fit", calibrator.fit, trace, bins)
    if not isinstance(result, Calibration):
        raise PluginError(
            f"calibrator '{method}' from plugin '{entry.plugin}' returned "
            f"{type(result).__name__}, expected an adaptix.Calibration."
        )
    result.check_compatible(trace.num_exits, trace.num_classes)
    if result.bins != bins:
        raise PluginError(
            f"calibrator '{method}' from plugin '{entry.plugin}' returned {result.bins} bins, "
            f"asked for {bins}."
        )
    return result
