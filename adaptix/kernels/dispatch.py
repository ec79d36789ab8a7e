"""Choose the backend of an exit decision: the fused Triton kernel where it can run, else torch."""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch
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
def import_triton_kernel() -> ModuleType | str:
    """Import the kernel module once: the module, or why it cannot be imported."""
    try:
        from adaptix.kernels import triton_kernel
    except Exception as error:  # any import failure is a reason to report, not to crash on
        return f"{type(error).__name__}: {error}"
    return triton_kernel


def device_unavailable_reasons(device: torch.device) -> list[str]:
    """The reasons the Triton kernel cannot run on ``device`` at all, whatever the logits:
    neither CUDA nor Triton's interpreter, or triton not importable. Imports triton (once)."""
    reasons = []
    if device.type != "cuda" and not triton_interpreter_enabled():
        reasons.append(
            f"logits are on {device.type}, not cuda (TRITON_INTERPRET=1 runs the kernel "
            "in Triton's interpreter on CPU tensors, slowly)"
        )
    kernel = import_triton_kernel()
    if isinstance(kernel, str):
        reasons.append(f"triton is not importable: {kernel}")
    return reasons


def logits_unavailable_reasons(
    logits: Tensor, *, table: Tensor | None = None, edges: Tensor | None = None
) -> list[str]:
    """The reasons the kernel cannot decide these very logits (dtype, size, table and edges
    placement), on a device where it runs. Reads metadata only."""
    reasons = []
    if logits.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"logits have dtype {logits.dtype}, not float32, float16 or bfloat16")
    span = logits.shape[-1] * max(logits.stride(-1), 1) if logits.dim() > 0 else 0
    if span > MAX_TRITON_COLUMN_SPAN:
        reasons.append(
            f"C × column stride = {span} exceeds {MAX_TRITON_COLUMN_SPAN} (int32 column indices)"
        )
    for name, tensor in (("table", table), ("edges", edges)):
        if tensor is not None and tensor.device != logits.device:
            reasons.append(
                f"{name} is on {tensor.device}, logits on {logits.device}; move it with "
                f"{name}.to(logits.device)"
            )
    return reasons


def triton_unavailable_reasons(
    logits: Tensor, *, table: Tensor | None = None, edges: Tensor | None = None
) -> list[str]:
    """Every reason the Triton kernel cannot decide these logits; empty when it can.

    Imports triton (once) to check that it works.

    Args:
        logits: the logits [N, C] that would be decided.
        table: the bin-accuracy table, for kind "table".
        edges: the table's bin edges, for kind "table" with bins other than equal-width.

    Returns:
        Human-readable reasons, one per problem.
    """
    return device_unavailable_reasons(logits.device) + logits_unavailable_reasons(
        logits, table=table, edges=edges
    )


def triton_cannot_run(reasons: list[str]) -> AdaptixError:
    """The error for an explicit backend="triton" that cannot run, listing every reason."""
    return AdaptixError(
        f"expected a setting where backend='triton' can run, got: {'; '.join(reasons)}. "
        "Fix these, or pass backend='auto' to fall back to the torch reference."
    )


def kernel_for(device: torch.device, backend: Backend) -> ModuleType | None:
    """Where ``backend`` runs the Triton kernel on ``device``: the kernel module; None where it
    runs the reference. What `ExitDecider` resolves once per device.

    Raises:
        adaptix.errors.AdaptixError: backend "triton" and the kernel cannot run on ``device``;
            the message lists every reason.
    """
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return None
    reasons = device_unavailable_reasons(device)
    kernel = import_triton_kernel()
    if not reasons and not isinstance(kernel, str):
        return kernel
    if backend == "auto":
        return None
    raise triton_cannot_run(reasons)


def exit_decision(
    logits: Tensor,
    threshold: float,
    *,
    kind: ExitKind,
    table: Tensor | None = None,
    edges: Tensor | None = None,
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
        edges: for kind "table", that exit's bin edges [M + 1], or None for equal-width bins
            (see `adaptix.kernels.exit_decision_reference`).
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
    threshold = check_exit_inputs(logits, threshold, kind=kind, table=table, edges=edges)
    if backend == "torch" or (backend == "auto" and logits.device.type != "cuda"):
        return exit_decision_reference(logits, threshold, kind=kind, table=table, edges=edges)
    reasons = triton_unavailable_reasons(logits, table=table, edges=edges)
    kernel = import_triton_kernel()
    if not reasons and not isinstance(kernel, str):
        return kernel.exit_decision_triton(logits, threshold, kind=kind, table=table, edges=edges)
    if backend == "auto":
        return exit_decision_reference(logits, threshold, kind=kind, table=table, edges=edges)
    raise triton_cannot_run(reasons)
