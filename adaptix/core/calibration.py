"""`Calibration`: per-exit reliability tables (counts n and correct k per confidence bin).

A calibration owns its binning: the bin edges of every exit, and `Calibration.bin_index`, the
one bin lookup that the criteria, the calibrators and the exit decision (`ExitDecider`, the
fused kernel) read. The tables are sums, so calibrations of several shards with the same edges
merge by addition. They are saved in a versioned JSON format with a checksum; a corrupt or
mismatched file is always an error.

A calibration counts either every calibration input at every exit (the paper's reliability
table) or, made by `adaptix.offline.survivors`, at each exit only the inputs that a rule at a
target δ sends on from the exits before (`SurvivorRule` records which); the latter does not add (its
shards' counts, `adaptix.offline.survivors.SurvivorCounts`, do).
"""

from __future__ import annotations

import base64
import operator
import os
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from adaptix import scalars
from adaptix.core.files import (
    DocumentKind,
    check_meta,
    json_digest,
    read_json,
    write_document,
)
from adaptix.core.scores import bin_edges, bin_index, confidence_and_prediction, float32_edges
from adaptix.errors import CalibrationError

if TYPE_CHECKING:
    from adaptix.core.trace import Trace

_FORMAT = "adaptix.calibration"
# Version 2 records the bin edges ("edges": null for equal-width bins, which keeps the files of
# the default calibrator small); version 1 files, from before edges existed, load as equal-width.
# Version 3 records the fingerprints of the rows counted ("rows": base64 of little-endian int64
# digests, sorted; null when unknown); version 2 and 1 files load with rows unknown.
# Version 4 adds "survivors" (`SurvivorRule`) and is written only for survivor calibrations: a
# calibration of every input is a version 3 document, so its checksum, which certificates and
# experiment records bind to, is what it was before survivor calibrations existed.
_VERSION = 4
_KEYS_V1 = (
    "method",
    "num_exits",
    "num_classes",
    "bins",
    "counts",
    "correct",
    "confidence_sum",
    "meta",
)
_KEYS = {
    1: _KEYS_V1,
    2: (*_KEYS_V1, "edges"),
    3: (*_KEYS_V1, "edges", "rows"),
    4: (*_KEYS_V1, "edges", "rows", "survivors"),
}
#: Calibration files: read and written by `adaptix.core.files` (one reader for every kind).
CALIBRATION_FILE = DocumentKind(
    "calibration", _FORMAT, _KEYS, "Calibration.save", error=CalibrationError
)
# Float64 sums of float32 confidences in [0, 1] may exceed n[e, m] by rounding: allow this much
# per counted input (far above the rounding of any realistic sum, far below one confidence).
_SUM_TOLERANCE = 1e-6
# Whole numbers that float64 holds exactly: a larger "count" in a float table is not a count.
_EXACT_FLOAT_INTEGERS = 2.0**53
#: The most bins a calibration may have: bin(c) = floor(c * M) in float32 (PCEE.md), and beyond
#: 2**24 bins float32 cannot tell them apart.
MAX_BINS = 2**24
_JSON_SCALARS = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class SurvivorRule:
    """What a survivor calibration was made for (``PCEE.md``: survivor calibration).

    Its exit-e tables count only the calibration inputs that ``criterion``, with ``params``,
    reading the tables of exits 0 … e − 1 at threshold ``delta``, does not let leave before e.
    The criterion that reads such a calibration must be that criterion with those parameters,
    and refuses any threshold other than ``delta``.

    Attributes:
        criterion: the registry name of the criterion whose rule decided (``pcee``, ...).
        params: its parameters, ``params.model_dump(mode="json")`` items sorted by name (JSON
            scalars).
        delta: δ in [0, 1], the target the earlier exits were decided at.

    Raises:
        CalibrationError: a field of the wrong type or range.
    """

    criterion: str
    params: tuple[tuple[str, Any], ...]
    delta: float

    def __post_init__(self) -> None:
        if not isinstance(self.criterion, str) or not self.criterion:
            raise CalibrationError(
                f"expected the survivor rule's criterion as a registry name (a non-empty "
                f"string), got {self.criterion!r}."
            )
        params = tuple(self.params) if isinstance(self.params, (tuple, list)) else None
        if params is None or not all(
            isinstance(item, (tuple, list))
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], _JSON_SCALARS)
            for item in params
        ):
            raise CalibrationError(
                "expected the survivor rule's params as (name, JSON scalar) pairs, got "
                f"{reprlib.repr(self.params)}."
            )
        object.__setattr__(self, "params", tuple(sorted((str(k), v) for k, v in params)))
        delta = scalars.unit(
            self.delta,
            "the survivor rule's δ",
            open_low=False,
            open_high=False,
            error=CalibrationError,
        )
        object.__setattr__(self, "delta", delta)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form that `Calibration.save` writes."""
        return {"criterion": self.criterion, "params": dict(self.params), "delta": self.delta}

    @classmethod
    def from_dict(cls, value: object, source: str | Path) -> SurvivorRule:
        """The rule of a `to_dict` document; `CalibrationError` if it is malformed."""
        if (
            not isinstance(value, dict)
            or set(value) != {"criterion", "params", "delta"}
            or not isinstance(value["params"], dict)
            or type(value["delta"]) not in (int, float)
        ):
            raise CalibrationError(
                f"calibration file {source} has malformed 'survivors' ({reprlib.repr(value)}): "
                "corrupt. Re-create it with Calibration.save."
            )
        return cls(value["criterion"], tuple(value["params"].items()), value["delta"])


class Calibration:
    """Reliability statistics of every exit, binned by confidence.

    Args:
        counts: ``[E, M]``: n[e, m], inputs whose exit-e confidence falls in bin m. Stored as
            int64. An integer tensor (or nested list), or a floating one whose values are all
            whole numbers (counts often come out of float accumulators such as a weighted
            ``bincount``; the conversion is exact); fractional, NaN/inf and bool tables are
            refused rather than truncated.
        correct: ``[E, M]``: k[e, m], how many of those exit-e predictions are right; the same
            rules as ``counts``.
        num_classes: C, the number of classes of the model that was calibrated.
        confidence_sum: ``[E, M]``: sum of those confidences, stored as float64 (for reliability
            diagrams and calibration error; additive like n and k). Zeros if not given.
        edges: ``[E, M + 1]``: the bin edges of every exit, stored as float64: finite,
            non-decreasing, from edges[e, 0] = 0 to edges[e, M] = 1. Bin m of exit e holds the
            confidences c with edges[e, m] <= c < edges[e, m + 1], the last bin closed at 1;
            equal edges make a bin of zero width, which holds nothing. None (the default) for
            M equal-width bins, edges k / M: their lookup is ``PCEE.md``'s float32 rule
            bin(c) = min(floor(c · M), M - 1), which is what edges equal to k / M at every exit
            mean too (see `equal_width`).
        method: the calibrator that produced the tables.
        meta: string metadata (model, split, ...): keys and values must be strings.
        rows: the fingerprints (`Trace.row_digests`) of the rows counted, as a 1-D integer
            tensor (stored sorted and unique), or None when unknown. `count_bins` (and so every
            built-in calibrator and `adaptix.calibrate`) records them; sums of calibrations
            record the union, or None if a part is unknown. `adaptix.guarantee` reads them to
            refuse certifying a criterion on the rows its calibration was counted on.
        survivors: None (the default) for the paper's tables, which count every calibration
            input at every exit; for a survivor calibration (`adaptix.offline.survivors`), the
            `SurvivorRule` whose survivors exit e counts. Its exits then count non-increasing
            numbers of inputs, exit 0 all of them; it does not add with ``+``.

    Raises:
        CalibrationError: if the tables are inconsistent (see `_validate`).
    """

    __slots__ = (
        "_binning",
        "confidence_sum",
        "correct",
        "counts",
        "edges",
        "meta",
        "method",
        "num_classes",
        "rows",
        "survivors",
    )

    def __init__(
        self,
        counts: Tensor,
        correct: Tensor,
        num_classes: int,
        *,
        confidence_sum: Tensor | None = None,
        edges: Tensor | None = None,
        method: str = "reliability",
        meta: Mapping[str, str] | None = None,
        rows: Tensor | None = None,
        survivors: SurvivorRule | None = None,
    ) -> None:
        if survivors is not None and not isinstance(survivors, SurvivorRule):
            raise CalibrationError(
                f"expected survivors as an adaptix.core.calibration.SurvivorRule or None, got "
                f"{type(survivors).__name__}. Make survivor calibrations with "
                "adaptix.calibrate_survivors."
            )
        self.survivors = survivors
        self.rows = None if rows is None else _check_rows(rows)
        self.counts = _as_table(counts, "counts")
        self.correct = _as_table(correct, "correct")
        self.confidence_sum = (
            torch.zeros(self.counts.shape, dtype=torch.float64)
            if confidence_sum is None
            else _as_table(confidence_sum, "confidence_sum")
        )
        self.edges = (
            _equal_width_edges(self.counts.shape) if edges is None else _as_table(edges, "edges")
        )
        self.num_classes = num_classes
        self.method = method
        self.meta = check_meta(meta, "Calibration", CalibrationError)
        self._validate()
        self.num_classes = operator.index(num_classes)
        self.counts = self.counts.to(torch.int64)
        self.correct = self.correct.to(torch.int64)
        self.confidence_sum = self.confidence_sum.to(torch.float64)
        self.edges = self.edges.to(torch.float64)
        self._binning = _Binning(self.edges)

    def _validate(self) -> None:
        """Check every field and every relation between the tables, as given to the constructor.

        The tables may still have the caller's dtype here; the constructor casts them after.

        Raises:
            CalibrationError: the first rule that does not hold: num_classes an integer >= 1;
                method a non-empty string; tables of shape [E, M] (E, M >= 1), all alike;
                counts and correct whole numbers, confidence sums finite reals; 0 <= k <= n;
                0 <= confidence sum <= n (confidences lie in [0, 1]; float rounding allowed);
                edges of shape [E, M + 1], finite, non-decreasing from 0 to 1, no input in a
                bin of zero width; at least one input; and every exit counting the same inputs
                (for a survivor calibration: no exit counting more inputs than the one before).
        """
        scalars.count(self.num_classes, "num_classes", low=1, error=CalibrationError)
        if not isinstance(self.method, str) or not self.method:
            raise CalibrationError(
                f"expected method to be the calibrator's name (a non-empty string), got "
                f"{self.method!r}."
            )
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
        _check_whole_numbers(self.counts, "counts")
        _check_whole_numbers(self.correct, "correct")
        _check_real(self.confidence_sum, "confidence_sum")
        counts, correct = self.counts.double(), self.correct.double()
        if bool((counts < 0).any()) or bool((correct < 0).any()):
            raise CalibrationError(
                "expected non-negative counts, got negative entries. Counts are numbers of "
                "inputs: build them with adaptix.calibrate."
            )
        if bool((correct > counts).any()):
            raise CalibrationError(
                "expected correct[e, m] <= counts[e, m] in every bin, got more correct "
                "predictions than inputs: the tables are corrupt."
            )
        _check_confidence_sum(self.confidence_sum.double(), counts)
        _check_edges(self.edges, self.counts.shape)
        _check_zero_width_bins(self.edges.double(), counts)
        per_exit = counts.sum(dim=1)
        if float(per_exit.sum()) == 0:
            raise CalibrationError(
                "expected a calibration built from at least one input, got empty tables. "
                "Calibrate on a non-empty, labelled held-out set."
            )
        if self.survivors is not None:
            if bool((per_exit[1:] > per_exit[:-1]).any()):
                raise CalibrationError(
                    "expected a survivor calibration's exits to count no more inputs than the "
                    f"exit before (survivors only leave), got totals "
                    f"{[int(v) for v in per_exit.tolist()]} per exit. Make it with "
                    "adaptix.calibrate_survivors."
                )
        elif bool((per_exit != per_exit[0]).any()):
            raise CalibrationError(
                "expected every exit to count every calibration input (the same total at each "
                f"exit), got totals {[int(v) for v in per_exit.tolist()]} per exit. Count each "
                "input once at every exit; calibrations of shards merge by addition."
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
        """How many calibration inputs the tables count (at exit 0; the same at every exit but
        in a survivor calibration)."""
        return int(self.counts[0].sum())

    @property
    def equal_width(self) -> bool:
        """Whether the bins are M equal-width bins (edges k / M at every exit), looked up by
        ``PCEE.md``'s float32 rule; False for edges of another kind (``equal_mass``)."""
        return self._binning.lookup is None

    def bin_index(self, confidence: Tensor, exit_index: int) -> Tensor:
        """The bin of each confidence at exit ``exit_index``: the one bin lookup of adaptix.

        Equal-width bins: exactly `adaptix.core.scores.bin_index` (``PCEE.md``: min(floor(c · M),
        M - 1) in float32). Other edges: the bin m with edges[e, m] <= c < edges[e, m + 1]
        (the last bin closed at 1), compared exactly for float32 confidences (the float32
        lookup of `float32_edges`). A NaN confidence gets M, a bin that no table has: readers
        never let it exit.

        Args:
            confidence: confidences (max softmax probabilities) of any shape, on any device.
            exit_index: e, in 0 … E - 1.

        Returns:
            int64 bins, the confidence's shape and device.

        Raises:
            CalibrationError: ``exit_index`` is not an exit of this calibration.
        """
        return self._binning.bin_index(confidence, self._exit(exit_index))

    def float32_edges(self, exit_index: int) -> Tensor:
        """Exit ``exit_index``'s float32 lookup ``[M]``: interior edges, then +inf.

        ``adaptix.core.scores.bin_index(c, M, lookup)`` against it equals `bin_index` for every
        float32 confidence c in [0, 1] and NaN; for equal-width bins it is
        `adaptix.core.scores.bin_edges`. The exit decision bucketizes against it.

        Raises:
            CalibrationError: ``exit_index`` is not an exit of this calibration.
        """
        exit_index = self._exit(exit_index)
        lookup = self._binning.lookup
        return bin_edges(self.bins) if lookup is None else lookup[exit_index]

    def _exit(self, exit_index: int) -> int:
        """``exit_index`` as an int, or `CalibrationError` unless it is an exit 0 … E - 1."""
        high = self.num_exits - 1
        return scalars.integer(exit_index, "exit_index", low=0, high=high, error=CalibrationError)

    def accuracy(self, window: int = 0) -> Tensor:
        """Calibrated accuracy per exit and bin, float64 ``[E, M]``, NaN where undefined.

        Args:
            window: pool each bin with its ``window`` neighbours on each side (``pcee_ws``'s w).
                0 gives the plain bin accuracy a[e, m] = k / n (``pcee``).
        """
        return bin_accuracy(self.counts, self.correct, window)

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
        """The calibration of both sets of inputs: tables added, meta the entries both share.

        A meta entry that the two calibrations do not share with the same value describes only
        one of them, so it is left out of the sum (which makes addition commutative).

        Raises:
            CalibrationError: the two differ in method, exits, classes, bins or bin edges, or
                one is a survivor calibration (whose shards decide with the global tables:
                add their `adaptix.offline.survivors.SurvivorCounts` instead).
        """
        if not isinstance(other, Calibration):
            return NotImplemented
        if self.survivors is not None or other.survivors is not None:
            raise CalibrationError(
                "expected calibrations of every input to add, got a survivor calibration: the "
                "survivors of a shard are decided by the tables of the whole calibration set, "
                "so survivor calibrations of shards do not add. Add the shards' SurvivorCounts "
                "exit by exit (adaptix.offline.survivors.count_survivors) and take .calibration(δ)."
            )
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
        if not torch.equal(self.edges, other.edges):
            e, m = (self.edges != other.edges).nonzero()[0].tolist()
            raise CalibrationError(
                "expected calibrations with the same bin edges to merge, got edges that differ "
                f"(first at exit {e}, edge {m}: {float(self.edges[e, m])!r} and "
                f"{float(other.edges[e, m])!r}). Edges fitted to the data (equal_mass) differ "
                "between shards: count every shard with the same edges, e.g. "
                "adaptix.calibrate(shard, 'equal_mass', bins, edges=first.edges), then add."
            )
        return Calibration(
            self.counts + other.counts,
            self.correct + other.correct,
            self.num_classes,
            confidence_sum=self.confidence_sum + other.confidence_sum,
            edges=self.edges,
            method=self.method,
            meta={key: value for key, value in self.meta.items() if other.meta.get(key) == value},
            rows=(
                None
                if self.rows is None or other.rows is None
                else torch.cat([self.rows, other.rows])
            ),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Calibration):
            return NotImplemented
        return self._payload() == other._payload()

    __hash__ = None  # type: ignore[assignment]  # mutable tensors inside: not hashable

    def __repr__(self) -> str:
        rule = self.survivors
        survivors = "" if rule is None else f", survivors of {rule.criterion} at δ={rule.delta}"
        return (
            f"Calibration(method={self.method!r}, E={self.num_exits}, C={self.num_classes}, "
            f"M={self.bins}, inputs={self.num_inputs}{survivors})"
        )

    def _payload(self) -> dict[str, Any]:
        payload = {
            "method": self.method,
            "num_exits": self.num_exits,
            "num_classes": self.num_classes,
            "bins": self.bins,
            "counts": self.counts.tolist(),
            "correct": self.correct.tolist(),
            # repr of a float round-trips exactly through JSON.
            "confidence_sum": self.confidence_sum.tolist(),
            "edges": None if self.equal_width else self.edges.tolist(),
            # Checked again: the dict can have been edited since the constructor checked it.
            "meta": check_meta(self.meta, "Calibration", CalibrationError),
            "rows": None if self.rows is None else _encode_rows(self.rows),
        }
        if self.survivors is not None:  # version 4; without it, the version 3 payload
            payload["survivors"] = self.survivors.to_dict()
        return payload

    @property
    def checksum(self) -> str:
        """SHA-256 of the canonical content: identifies this calibration in experiment records."""
        return json_digest(self._payload())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the versioned JSON file with its checksum, atomically (`write_document`).

        A missing parent directory is created.

        Raises:
            ValidationError: ``path`` is a directory or cannot be written; a file already at
                ``path`` is then left as it was.
        """
        version = _VERSION if self.survivors is not None else 3
        return write_document(path, CALIBRATION_FILE, version, self._payload())

    def to_document(self) -> dict[str, Any]:
        """The JSON-ready document `save` writes (format, version, tables, edges, checksum),
        for embedding in another file (`adaptix.ExitPolicy.save` does)."""
        version = _VERSION if self.survivors is not None else 3
        return CALIBRATION_FILE.document(version, self._payload())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        num_exits: int | None = None,
        num_classes: int | None = None,
    ) -> Calibration:
        """Read a file written by `save`, verifying format, version, shapes and checksum.

        Files of format version 1 (before bin edges were recorded) load as equal-width bins.

        Args:
            path: the file.
            num_exits: if given, the file must be for this many exits.
            num_classes: if given, the file must be for this many classes.

        Raises:
            CalibrationError: the file is missing, corrupt, of another version, or mismatched.
        """
        source = Path(path)
        calibration = cls.from_document(read_json(source, CALIBRATION_FILE), source=str(source))
        if num_exits is not None or num_classes is not None:
            calibration.check_compatible(
                calibration.num_exits if num_exits is None else num_exits,
                calibration.num_classes if num_classes is None else num_classes,
                what="the model it is loaded for",
            )
        return calibration

    @classmethod
    def from_document(cls, document: Any, *, source: str = "the document") -> Calibration:
        """The calibration of a parsed `to_document` document, verified as `load` verifies a
        file (``source`` names it in errors).

        Raises:
            CalibrationError: the document is corrupt, of another version, or inconsistent.
        """
        version, payload = CALIBRATION_FILE.check(document, source)
        keys = _KEYS[version]
        calibration = cls(
            _json_table(payload["counts"], "counts", source, whole=True),
            _json_table(payload["correct"], "correct", source, whole=True),
            payload["num_classes"],
            confidence_sum=_json_table(
                payload["confidence_sum"], "confidence_sum", source, whole=False
            ),
            edges=(
                None
                if payload.get("edges") is None
                else _json_table(payload["edges"], "edges", source, whole=False)
            ),
            method=payload["method"],
            meta=payload["meta"],
            rows=None if payload.get("rows") is None else _decode_rows(payload["rows"], source),
            survivors=(
                None
                if "survivors" not in keys
                else SurvivorRule.from_dict(payload["survivors"], source)
            ),
        )
        declared = (payload["num_exits"], payload["bins"])
        # JSON true is a Python bool, which equals 1: only a JSON integer declares a size.
        if not all(type(size) is int for size in declared) or declared != (
            calibration.num_exits,
            calibration.bins,
        ):
            raise CalibrationError(
                f"calibration file {source} declares E={declared[0]!r}, M={declared[1]!r} but "
                f"its tables are {list(calibration.counts.shape)}: expected the integers E and "
                "M of its tables. The file is corrupt: re-create it with Calibration.save."
            )
        return calibration


def _check_rows(rows: object) -> Tensor:
    """Row fingerprints as a sorted, unique int64 CPU tensor."""
    if not isinstance(rows, Tensor) or rows.dim() != 1 or rows.dtype != torch.int64:
        got = f"{rows.dtype} {list(rows.shape)}" if isinstance(rows, Tensor) else repr(rows)
        raise CalibrationError(
            f"expected rows as a 1-D int64 tensor of row fingerprints (Trace.row_digests), got "
            f"{reprlib.repr(got)}."
        )
    return torch.unique(rows.detach().cpu())


def _encode_rows(rows: Tensor) -> str:
    return base64.b64encode(rows.numpy().astype("<i8").tobytes()).decode("ascii")


def _decode_rows(value: object, source: str | Path) -> Tensor:
    try:
        if not isinstance(value, str):
            raise ValueError(f"a {type(value).__name__}, not a string")
        data = base64.b64decode(value.encode("ascii"), validate=True)
        if len(data) % 8:
            raise ValueError(f"{len(data)} bytes, not a whole number of 64-bit digests")
    except ValueError as err:
        raise CalibrationError(
            f"calibration file {source} has malformed 'rows' ({err}): corrupt. Re-create it "
            "with Calibration.save."
        ) from err
    return torch.from_numpy(np.frombuffer(data, dtype="<i8").astype(np.int64))


def _json_table(value: object, name: str, source: str | Path, *, whole: bool) -> Tensor:
    """Table ``name`` of a calibration file as a tensor; `CalibrationError` for anything else.

    The file holds each ``[E, M]`` table as equal-length lists of JSON integers (``whole``) or
    numbers: a bool, a string or a fraction among the counts is corruption, never converted.
    """
    kinds = "integers" if whole else "numbers"
    rows = value if isinstance(value, list) else None
    if rows is None or not all(isinstance(row, list) for row in rows):
        raise CalibrationError(
            f"expected '{name}' in {source} as a list of lists of {kinds}, got "
            f"{type(value).__name__} {str(value)[:80]}. The file is corrupt: re-create it with "
            "Calibration.save."
        )
    cells = [cell for row in rows for cell in row]
    allowed = (int,) if whole else (int, float)
    bad = [cell for cell in cells if isinstance(cell, bool) or not isinstance(cell, allowed)]
    if bad or len({len(row) for row in rows}) > 1:
        got = f"the entry {bad[0]!r}" if bad else f"rows of lengths {[len(r) for r in rows]}"
        raise CalibrationError(
            f"expected '{name}' in {source} as equal-length rows of {kinds}, got {got}. The "
            "file is corrupt: re-create it with Calibration.save."
        )
    try:
        return torch.tensor(rows, dtype=torch.int64 if whole else torch.float64)
    except (OverflowError, RuntimeError, ValueError) as err:
        raise CalibrationError(
            f"expected '{name}' in {source} with {kinds} that fit in 64 bits, got {err}. The "
            "file is corrupt: re-create it with Calibration.save."
        ) from err


def _as_table(value: object, name: str) -> Tensor:
    """``value`` as a CPU tensor of its own dtype (float64 for Python floats, which torch would
    round to float32); `CalibrationError` if it is not numeric."""
    try:
        table = torch.as_tensor(value)
        if table.is_floating_point() and isinstance(value, list | tuple):
            table = torch.as_tensor(value, dtype=torch.float64)
        return table.detach().cpu()
    except (OverflowError, RuntimeError, TypeError, ValueError) as err:
        raise CalibrationError(
            f"expected '{name}' as a tensor (or nested list) of numbers, got "
            f"{type(value).__name__} ({err}). Build the tables with adaptix.calibrate."
        ) from err


def _check_whole_numbers(table: Tensor, name: str) -> None:
    """`CalibrationError` unless every entry of ``table`` is a whole number int64 holds."""
    if table.dtype == torch.bool or table.dtype.is_complex:
        raise CalibrationError(
            f"expected '{name}' as whole numbers (int64), got a {table.dtype} table. Pass the "
            "counts as integers."
        )
    if not table.dtype.is_floating_point:
        return
    values = table.double()
    whole = torch.isfinite(values) & (values == values.round())
    whole &= values.abs() <= _EXACT_FLOAT_INTEGERS
    if not bool(whole.all()):
        first = values[~whole][0].item()
        raise CalibrationError(
            f"expected '{name}' as whole numbers, got {int((~whole).sum())} entries that are "
            f"not (first: {first!r}) in a {table.dtype} table. Counts are numbers of inputs: pass "
            "integers (or whole-valued floats); they are not rounded for you."
        )


def _check_real(table: Tensor, name: str) -> None:
    """`CalibrationError` unless ``table`` holds finite real numbers."""
    if table.dtype == torch.bool or table.dtype.is_complex:
        raise CalibrationError(
            f"expected '{name}' as real numbers (float64), got a {table.dtype} table."
        )
    if table.dtype.is_floating_point and not bool(torch.isfinite(table).all()):
        raise CalibrationError(
            f"expected finite '{name}', got {int((~torch.isfinite(table)).sum())} NaN/inf "
            "entries. Rebuild the tables with adaptix.calibrate."
        )


def _check_confidence_sum(confidence_sum: Tensor, counts: Tensor) -> None:
    """`CalibrationError` unless 0 <= confidence_sum <= counts (up to float rounding)."""
    slack = _SUM_TOLERANCE * counts
    impossible = (confidence_sum < -slack) | (confidence_sum > counts + slack)
    if bool(impossible.any()):
        e, m = impossible.nonzero()[0].tolist()
        raise CalibrationError(
            "expected 0 <= confidence_sum[e, m] <= counts[e, m] (each confidence lies in "
            f"[0, 1]), got {float(confidence_sum[e, m])!r} for {int(counts[e, m])} inputs at "
            f"exit {e}, bin {m}. Sum the confidences of the inputs counted in each bin."
        )


class _Binning:
    """The bins of every exit: validated float64 edges ``[E, M + 1]`` and how to look them up.

    Attributes:
        edges: the edges.
        lookup: their float32 lookup ``[E, M]`` (`adaptix.core.scores.float32_edges`), or None for
            equal-width bins (edges k / M), which ``PCEE.md``'s float32 rule looks up.
    """

    __slots__ = ("edges", "lookup")

    def __init__(self, edges: Tensor) -> None:
        self.edges = edges
        equal = torch.equal(edges, _equal_width_edges((edges.shape[0], edges.shape[1] - 1)))
        self.lookup = None if equal else float32_edges(edges)

    def bin_index(self, confidence: Tensor, exit_index: int) -> Tensor:
        """See `Calibration.bin_index`."""
        bins = self.edges.shape[1] - 1
        if self.lookup is None:
            return bin_index(confidence, bins)
        return bin_index(confidence, bins, self.lookup[exit_index].to(confidence.device))


def _equal_width_edges(shape: tuple[int, ...]) -> Tensor:
    """The edges k / M of equal-width bins for tables of ``shape`` ``[E, M]``, float64
    ``[E, M + 1]`` (empty for any other shape, which `Calibration._validate` refuses)."""
    if len(shape) != 2 or shape[1] < 1:
        return torch.empty(0, dtype=torch.float64)
    exits, bins = shape
    return (torch.arange(bins + 1, dtype=torch.float64) / bins).repeat(exits, 1)


def _check_edges(edges: Tensor, shape: tuple[int, ...]) -> None:
    """`CalibrationError` unless ``edges`` are bin edges for tables of ``shape`` ``[E, M]``:
    ``[E, M + 1]``, finite real numbers, non-decreasing from 0 to 1 at every exit."""
    exits, bins = shape
    _check_real(edges, "edges")
    if tuple(edges.shape) != (exits, bins + 1):
        raise CalibrationError(
            f"expected 'edges' of shape [E, M + 1] = {[exits, bins + 1]} (M + 1 bin edges for "
            f"each exit of the [E, M] tables), got {list(edges.shape)}."
        )
    values = edges.double()
    ends = (values[:, 0] != 0.0) | (values[:, -1] != 1.0)
    if bool(ends.any()):
        e = int(ends.nonzero()[0])
        raise CalibrationError(
            "expected every exit's bin edges to run from 0 to 1 (confidences lie in [0, 1]), "
            f"got {float(values[e, 0])!r} to {float(values[e, -1])!r} at exit {e}."
        )
    falling = values[:, 1:] < values[:, :-1]
    if bool(falling.any()):
        e, m = falling.nonzero()[0].tolist()
        raise CalibrationError(
            "expected non-decreasing bin edges at every exit, got edges[e, m] = "
            f"{float(values[e, m])!r} > edges[e, m + 1] = {float(values[e, m + 1])!r} at exit "
            f"{e}, m = {m}. Sort them."
        )


def _check_zero_width_bins(edges: Tensor, counts: Tensor) -> None:
    """`CalibrationError` if a bin of zero width (equal edges; not the last bin, which is
    closed at 1 and holds c = 1 when its lower edge is 1) counts an input."""
    crowded = (edges[:, 1:-1] == edges[:, :-2]) & (counts[:, :-1] > 0)
    if bool(crowded.any()):
        e, m = crowded.nonzero()[0].tolist()
        raise CalibrationError(
            f"expected no input in a bin of zero width, got {int(counts[e, m])} in bin {m} of "
            f"exit {e}, whose edges are both {float(edges[e, m])!r}: the tables do not match "
            "the edges. Count with the same edges (adaptix.core.calibration.count_bins)."
        )


def bin_accuracy(counts: Tensor, correct: Tensor, window: int = 0) -> Tensor:
    """Accuracy per bin from counts n and correct k ``[..., M]``: float64, NaN where undefined.

    The one formula of ``pcee`` (``window`` 0: a = k / n) and ``pcee_ws`` (each bin pooled with
    its ``window`` neighbours on each side: ã = Σ k / Σ n), for one table or a stack of them.

    Raises:
        CalibrationError: ``window`` is not an integer ≥ 0.
    """
    window = scalars.count(window, "window", error=CalibrationError)
    n = _pool(counts.double(), window)
    k = _pool(correct.double(), window)
    return torch.where(n >= 1, k / n.clamp(min=1), torch.full_like(n, float("nan")))


def _pool(table: Tensor, window: int) -> Tensor:
    """Sum each bin (last dimension) with its ``window`` neighbours on each side (clipped at
    the edges)."""
    if window == 0:
        return table
    bins = table.shape[-1]
    cumulative = torch.nn.functional.pad(table.cumsum(dim=-1), (1, 0))
    idx = torch.arange(bins)
    hi = (idx + window + 1).clamp(max=bins)
    lo = (idx - window).clamp(min=0)
    return cumulative[..., hi] - cumulative[..., lo]


class BinnedTrace(NamedTuple):
    """A labelled trace, binned: what every count of a calibration is made from.

    Attributes:
        bins: int64 ``[N, E]``, the bin of each input's confidence at each exit.
        correct: bool ``[N, E]``, whether the exit's prediction is right.
        confidence: float32 ``[N, E]``, the confidence c_e.
        edges: float64 ``[E, M + 1]``, the bin edges looked up.
    """

    bins: Tensor
    correct: Tensor
    confidence: Tensor
    edges: Tensor


def checked_edges(edges: object, num_exits: int, bins: int) -> Tensor:
    """Bin edges as `Calibration` keeps them: float64 ``[E, M + 1]``, M equal-width bins for
    None, else ``edges`` (a tensor or nested lists) checked by the rules of `Calibration`.

    Raises:
        CalibrationError: the edges break those rules.
    """
    shape = (num_exits, bins)
    given = _equal_width_edges(shape) if edges is None else _as_table(edges, "edges")
    _check_edges(given, shape)
    return given.double()


def bin_trace(trace: Trace, bins: int, *, edges: object = None) -> BinnedTrace:
    """The bin, correctness and confidence of every input at every exit of a labelled trace,
    bins looked up exactly as `Calibration.bin_index` looks them up.

    Args:
        trace: a labelled trace of held-out data.
        bins: M, the number of bins.
        edges: ``[E, M + 1]`` bin edges of every exit, or None for M equal-width bins.

    Raises:
        CalibrationError: the trace is unlabelled, a float32 softmax of its logits is undefined,
            or the edges break the rules of `Calibration`.
    """
    if trace.labels is None:
        raise CalibrationError(
            "expected a labelled trace to calibrate, got labels=None. Trace a held-out "
            "labelled set (not the training data)."
        )
    confidence, prediction = confidence_and_prediction(trace.logits)  # [N, E] each
    undefined = confidence.isnan()
    if bool(undefined.any()):
        raise CalibrationError(
            f"expected logits whose float32 softmax is defined, got {int(undefined.sum())} "
            "input-exits without one (float64 logits beyond float32's range?). Scale or "
            "drop those inputs."
        )
    binning = _Binning(checked_edges(edges, trace.num_exits, bins))
    by_exit = confidence.t().contiguous()  # bucketize copies non-contiguous inputs, and warns
    columns = [binning.bin_index(by_exit[e], e) for e in range(trace.num_exits)]
    correct = prediction == trace.labels.unsqueeze(1)
    return BinnedTrace(torch.stack(columns, dim=1), correct, confidence, binning.edges)


def count_bins(
    trace: Trace, bins: int, *, edges: object = None, method: str = "reliability"
) -> Calibration:
    """Count a labelled trace into confidence bins: n, k and confidence sums per exit and bin.

    What a calibrator does once it knows its bins (both built-in ones end here), and how a
    shard is counted with the bins of another calibration so that the two merge by addition.
    Bins are looked up exactly as `Calibration.bin_index` looks them up.

    Args:
        trace: a labelled trace of held-out data.
        bins: M, the number of bins.
        edges: ``[E, M + 1]`` bin edges of every exit (a tensor or nested lists; see
            `Calibration`), or None for M equal-width bins.
        method: the calibrator's name, recorded in the calibration.

    Raises:
        CalibrationError: the trace is unlabelled, a float32 softmax of its logits is undefined,
            or the edges break the rules of `Calibration`.
    """
    binned = bin_trace(trace, bins, edges=edges)
    num_exits = trace.num_exits
    shape = (num_exits, bins)
    # One flat bincount over (exit, bin) cells: no loop over inputs.
    offsets = (torch.arange(num_exits, device=binned.bins.device) * bins).unsqueeze(0)
    cell = (binned.bins + offsets).flatten()
    size = num_exits * bins
    counts = torch.bincount(cell, minlength=size)
    hits = torch.bincount(cell, weights=binned.correct.flatten().double(), minlength=size)
    conf_sum = torch.bincount(cell, weights=binned.confidence.flatten().double(), minlength=size)
    return Calibration(
        counts.view(shape).cpu(),
        hits.round().long().view(shape).cpu(),
        trace.num_classes,
        confidence_sum=conf_sum.view(shape).cpu(),
        edges=binned.edges,
        method=method,
        meta=trace.meta,
        rows=trace.row_digests(),
    )
