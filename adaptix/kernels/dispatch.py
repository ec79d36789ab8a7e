"""Choose the backend of an exit decision: the fused Triton kernel where it can run, else torch."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from torch import Tensor

from adaptix.errors import AdaptixError, expect
from adaptix.kernels.reference import (
    SUPPORTED_DTYPES,
    check_exit_inputs,
    exit_decision_reference,
)
from adaptix.kernels.types import Backend, ExitDecision, ExitKind

BACKENDS: tuple[Backend, ...] = ("auto", "torch", "triton")

MAX_TRITON_COLUMN_SPAN = 2**30
"""Largest C × column stride the kernel takes: it indexes columns with int32."""

# The values Triton itself reads as true for TRITON_INTERPRET.
_TRUE_WORDS = frozenset({"1", "true", "on", "yes", "y"})


def triton_interpreter_enabled() -> bool:
    """Whether TRITON_INTERPRET asks Triton to run kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE_WORDS


@functools.cache
def _import_triton_kernel() -> Callable[..., ExitDecision] | str:
    """Import the kernel once: its launcher, or why it cannot be imported."""
    try:
        from adaptix.kernels.triton_kernel import exit_decision_triton
    except Exception as error:  # any import failure is a reason to report, not to crash on
        return f"{type(error).__name__}: {error}"
    return exit_decision_triton


def triton_unavailable_reasons(logits: Tensor, *, table: Tensor | None = None) -> list[str]:
    """Every reason the Triton kernel cannot decide these logits; empty when it can.

    Imports triton (once) to check that it works.

    Args:
        logits: the logits [N, C] that would be decided.
        table: the bin-accuracy table, for kind "table".

    Returns:
        Human-readable reasons, one per problem.
    """
    reasons = []
    if logits.device.type != "cuda" and not triton_interpreter_enabled():
        reasons.append(
            f"logits are on {logits.device.type}, not cuda (TRITON_INTERPRET=1 runs the kernel "
            "in Triton's interpreter on CPU tensors, slowly)"
        )
    if logits.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"logits have dtype {logits.dtype}, not float32, float16 or bfloat16")
    span = logits.shape[-1] * max(logits.stride(-1), 1) if logits.dim() > 0 else 0
    if span > MAX_TRITON_COLUMN_SPAN:
        reasons.append(
            f"C × column stride = {span} exceeds {MAX_TRITON_COLUMN_SPAN} (int32 column indices)"
        )
    if table is not None and table.device != logits.device:
        reasons.append(
            f"table is on {table.device}, logits on {logits.device}; move it with "
            "table.to(logits.device)"
        )
    run_kernel = _import_triton_kernel()
    if isinstance(run_kernel, str):
        reasons.append(f"triton is not importable: {run_kernel}")
    return reasons


def exit_decision(
    logits: Tensor,
    threshold: float,
    *,
    kind: ExitKind,
    table: Tensor | None = None,
    backend: Backend = "auto",
) -> ExitDecision:
    """Decide, for each row of logits, whether it leaves at this exit.

    The semantics are those of `adaptix.kernels.exit_decision_reference`; backends differ only
    in float32 rounding of confidences and scores.

    Args:
        logits: [N, C] float32, float16 or bfloat16.
        threshold: the threshold (τ or δ), a Python float.
        kind: "confidence", "entropy" or "table".
        table: for kind "table", one exit's calibrated bin accuracies [M].
        backend: "torch" for the reference; "triton" for the fused kernel, which raises if it
            cannot run; "auto" for the kernel on CUDA tensors where it can run and the
            reference otherwise. "auto" never picks Triton's CPU interpreter, which is far
            slower than the reference; ask for "triton" explicitly to use it.

    Returns:
        The decision for every row.

    Raises:
        adaptix.errors.ValidationError: an argument breaks its contract.
        adaptix.errors.AdaptixError: backend "triton" cannot run; the message lists every reason.
    """
    expect(backend in BACKENDS, f"backend in {BACKENDS}", repr(backend), "Choose one of them.")
    threshold = check_exit_inputs(logits, threshold, kind=kind, table=table)
    if backend == "torch" or (backend == "auto" and logits.device.type != "cuda"):
        return exit_decision_reference(logits, threshold, kind=kind, table=table)
    reasons = triton_unavailable_reasons(logits, table=table)
    run_kernel = _import_triton_kernel()
    if not reasons and not isinstance(run_kernel, str):
        return run_kernel(logits, threshold, kind=kind, table=table)
    if backend == "auto":
        return exit_decision_reference(logits, threshold, kind=kind, table=table)
    raise AdaptixError(
        f"expected a setting where backend='triton' can run, got: {'; '.join(reasons)}. "
        "Fix these, or pass backend='auto' to fall back to the torch reference."
    )
