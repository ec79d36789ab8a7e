"""The exit decision in pure torch: the specification, the CPU path and the test oracle.

Every other backend must return what `exit_decision_reference` returns: the same predictions and
masks, and confidences and scores equal up to float32 rounding.
"""

from __future__ import annotations

import math
import reprlib

import numpy as np
import torch
from torch import Tensor

from adaptix.core.scores import (
    bin_index,
    confidence_and_prediction,
    float32_edges,
    normalized_entropy,
)
from adaptix.errors import ValidationError, expect
from adaptix.kernels.types import ExitDecision, ExitKind
from adaptix.scalars import real

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EXIT_KINDS: tuple[ExitKind, ...] = ("confidence", "entropy", "table")


def check_exit_inputs(
    logits: Tensor,
    threshold: float,
    *,
    kind: ExitKind,
    table: Tensor | None,
    edges: Tensor | None = None,
) -> float:
    """Validate the arguments of an exit decision (see `exit_decision_reference`).

    Returns:
        The threshold as a Python float.

    Raises:
        adaptix.errors.ValidationError: an argument breaks its contract.
    """
    check_exit_logits(logits)
    return check_exit_rule(threshold, kind=kind, table=table, edges=edges)


def check_exit_logits(logits: Tensor) -> None:
    """Validate the logits of an exit decision: a float32/16 or bfloat16 tensor ``[N, C]``.

    Raises:
        adaptix.errors.ValidationError: they break that contract.
    """
    expect(
        isinstance(logits, Tensor),
        "logits as a torch.Tensor",
        type(logits).__name__,
        "Pass the exit head's output tensor.",
    )
    expect(
        logits.dim() == 2,
        "logits of shape [N, C]",
        f"shape {list(logits.shape)}",
        "Flatten the leading dimensions, e.g. logits.reshape(-1, logits.shape[-1]).",
    )
    expect(
        logits.dtype in SUPPORTED_DTYPES,
        "logits of dtype float32, float16 or bfloat16",
        logits.dtype,
        "Cast them, e.g. logits.float().",
    )
    expect(
        logits.shape[1] >= 1,
        "at least one class (C >= 1)",
        f"shape {list(logits.shape)}",
        "Check the exit head's output size.",
    )


def check_exit_rule(
    threshold: float, *, kind: ExitKind, table: Tensor | None, edges: Tensor | None = None
) -> float:
    """Validate the threshold, kind, table and bin edges of an exit decision.

    Returns:
        The threshold as a Python float.

    Raises:
        adaptix.errors.ValidationError: an argument breaks its contract.
    """
    expect(
        not isinstance(threshold, Tensor),
        "a real threshold (a Python or numpy number)",
        type(threshold).__name__,
        "Pass a number, e.g. float(threshold); a tensor would force a device synchronisation.",
    )
    value = real(threshold, "the threshold")
    expect(kind in EXIT_KINDS, f"kind in {EXIT_KINDS}", repr(kind), "Choose one of them.")
    if kind != "table":
        expect(
            table is None and edges is None,
            f"no table and no bin edges for kind={kind!r}",
            "a table" if edges is None else "bin edges",
            "Pass kind='table' to decide from calibrated bin accuracies, or drop them.",
        )
        return value
    if table is None:
        raise ValidationError(
            "expected a table of bin accuracies for kind='table', got None. "
            "Pass one exit's row of the calibration table, e.g. accuracy[e]."
        )
    expect(
        isinstance(table, Tensor),
        "the table as a torch.Tensor",
        type(table).__name__,
        "Pass one exit's row of the calibration table, e.g. accuracy[e].",
    )
    expect(
        table.dim() == 1 and table.is_floating_point() and table.numel() >= 1,
        "a 1-D floating table with at least one bin",
        f"{table.dtype} of shape {list(table.shape)}",
        "Pass one exit's bin accuracies (float64, NaN for empty bins).",
    )
    if edges is not None:
        check_bin_edges(edges, int(table.shape[0]))
    return value


def check_bin_edges(edges: Tensor, bins: int) -> None:
    """Validate one exit's bin edges: a floating tensor ``[M + 1]`` holding data, finite,
    non-decreasing, from 0 to 1 (what `adaptix.Calibration` stores for each exit).

    Raises:
        adaptix.errors.ValidationError: they break that contract.
    """
    fix = "Pass one exit's row of the calibration's edges, e.g. calibration.edges[e]."
    expect(isinstance(edges, Tensor), "bin edges as a torch.Tensor", type(edges).__name__, fix)
    expect(
        edges.dim() == 1
        and edges.is_floating_point()
        and edges.numel() == bins + 1
        and edges.device.type != "meta",
        f"bin edges as a 1-D floating tensor of M + 1 = {bins + 1} values (M: the table's bins)",
        f"{edges.dtype} of shape {list(edges.shape)} on {edges.device}",
        fix,
    )
    values = edges.detach().double().cpu()
    expect(
        bool(torch.isfinite(values).all())
        and float(values[0]) == 0.0
        and float(values[-1]) == 1.0
        and bool((values[1:] >= values[:-1]).all()),
        "finite, non-decreasing bin edges from 0 to 1",
        reprlib.repr(values.tolist()),
        fix,
    )


def float32_bound(threshold: float, *, at_least: bool) -> float:
    """Round a float64 threshold to the float32 that makes float32 comparisons exact.

    For every float32 s: ``s >= float32_bound(t, at_least=True)`` exactly when
    ``float64(s) >= t``, and ``s <= float32_bound(t, at_least=False)`` exactly when
    ``float64(s) <= t``. Rounding to nearest instead would let a score just below the threshold
    exit.

    Args:
        threshold: the threshold as given (float64).
        at_least: True for the smallest float32 >= threshold, False for the largest <= it.

    Returns:
        The bound, a float32 value held in a Python float (possibly infinite).
    """
    # Thresholds beyond the float32 range round to +-inf here and are stepped back below.
    with np.errstate(over="ignore"):
        bound = np.float32(threshold)
    if at_least and float(bound) < threshold:
        bound = np.nextafter(bound, np.float32(np.inf))
    elif not at_least and float(bound) > threshold:
        bound = np.nextafter(bound, np.float32(-np.inf))
    return float(bound)


def table_passes(table: Tensor, threshold: float) -> Tensor:
    """Which bins let a row exit: defined (not NaN) and at least the threshold, in float64.

    Args:
        table: one exit's bin accuracies [M], NaN where the bin is empty.
        threshold: the target accuracy.

    Returns:
        A bool tensor [M] on the table's device.
    """
    # NaN compares False, so an empty bin never lets anything exit.
    return table.double() >= threshold


def exit_decision_reference(
    logits: Tensor,
    threshold: float,
    *,
    kind: ExitKind,
    table: Tensor | None = None,
    edges: Tensor | None = None,
) -> ExitDecision:
    """Decide, for each row of logits, whether it leaves at this exit.

    The softmax is computed in float32. Rows whose softmax is undefined (a NaN or +inf logit,
    or every logit -inf) get NaN confidence and score and never exit. Comparisons with the
    threshold are exact in float64: a float32 score s passes ``>= t`` when ``float64(s) >= t``.

    Kinds:
        - "confidence": score = confidence; exit when score >= threshold.
        - "entropy": score = -sum p log p / log C (0 log 0 = 0; 0 when C == 1); exit when
          score <= threshold.
        - "table": bin = min(floor(confidence * M), M - 1) in float32 (equal-width bins), or,
          given ``edges``, the bin m with edges[m] <= confidence < edges[m + 1] (the last bin
          closed at 1; compared exactly, the float32 confidence against the float64 edges);
          score = float32(table[bin]); exit when table[bin] is defined and >= threshold.

    Args:
        logits: [N, C] float32, float16 or bfloat16.
        threshold: the threshold (τ or δ).
        kind: which score decides.
        table: for kind "table", one exit's calibrated bin accuracies [M] (float64, NaN for
            empty bins); moved to the logits' device if needed.
        edges: for kind "table", that exit's bin edges [M + 1] (finite, non-decreasing, from
            0 to 1), or None for M equal-width bins. See `adaptix.Calibration.edges`.

    Returns:
        The decision for every row.

    Raises:
        adaptix.errors.ValidationError: an argument breaks its contract.
    """
    threshold = check_exit_inputs(logits, threshold, kind=kind, table=table, edges=edges)
    # The definitions live in adaptix.core.scores, shared with the criteria and the simulator.
    confidence, prediction = confidence_and_prediction(logits)
    undefined = confidence.isnan()
    if kind == "confidence":
        score = confidence.clone()
        exit_mask = score.double() >= threshold
    elif kind == "entropy":
        score = normalized_entropy(logits).masked_fill(undefined, math.nan)
        exit_mask = score.double() <= threshold
    else:
        assert table is not None  # check_exit_inputs requires it for kind "table"
        table = table.to(logits.device)
        lookup = None if edges is None else float32_edges(edges.to(logits.device))
        # NaN confidences get bin 0 only to stay indexable; they are masked out below.
        bins = bin_index(confidence.masked_fill(undefined, 0.0), table.shape[0], lookup)
        score = table.float()[bins].masked_fill(undefined, math.nan)
        exit_mask = table_passes(table, threshold)[bins] & ~undefined
    return ExitDecision(prediction, confidence, score, exit_mask)
