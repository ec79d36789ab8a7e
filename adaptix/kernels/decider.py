"""`ExitDecider`: one exit's decision rule, validated and prepared once, applied many times.

The runtime asks the same question at the same exit for every batch: which rows pass this
threshold (and this exit's calibration table)? `exit_decision` answers it from scratch, with
every check and every output of `ExitDecision`. That is right for a one-off call, but on a CPU
at small batches its Python work costs as much as the exit head itself. An `ExitDecider` checks
the rule once and keeps what does not depend on the logits: the float32 bound that makes a
float32 comparison exact, and the table's pass mask. Per call it computes only the exit mask and
the prediction, with the fewest torch operations that give exactly the reference's answer
(`tests/test_kernels.py` checks it against `exit_decision_reference`, NaN and infinite logits
and bin edges included). On CUDA it runs the fused Triton kernel, as `exit_decision` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adaptix.errors import expect
from adaptix.kernels.dispatch import BACKENDS, exit_decision
from adaptix.kernels.reference import (
    SUPPORTED_DTYPES,
    check_exit_logits,
    check_exit_rule,
    float32_bound,
    table_passes,
)
from adaptix.kernels.types import Backend, ExitKind
from adaptix.scores import normalized_entropy


class ExitDecider:
    """Which rows of an exit's logits leave, for a fixed threshold, kind and table.

    Args:
        threshold: the threshold (τ or δ), a Python float.
        kind: "confidence", "entropy" or "table" (see `exit_decision_reference`).
        table: for kind "table", the exit's calibrated bin accuracies [M] (NaN: empty bin).
        backend: as for `exit_decision`: "auto" runs the Triton kernel on CUDA tensors and the
            torch path elsewhere, "torch" always torch, "triton" always the kernel.

    Raises:
        adaptix.errors.ValidationError: the threshold, kind, table or backend break their
            contract (the same messages as `exit_decision`).
    """

    def __init__(
        self,
        threshold: float,
        *,
        kind: ExitKind,
        table: Tensor | None = None,
        backend: Backend = "auto",
    ) -> None:
        expect(backend in BACKENDS, f"backend in {BACKENDS}", repr(backend), "Choose one of them.")
        self.threshold = check_exit_rule(threshold, kind=kind, table=table)
        self.kind = kind
        self.backend = backend
        self.table = table
        # float32 scores compared with these bounds decide exactly as float64(score) vs threshold.
        self._bound = float32_bound(self.threshold, at_least=kind != "entropy")
        self._bins = 0 if table is None else int(table.shape[0])
        # Bin M, one past the table, never passes: rows with an undefined confidence go there.
        self._passes: dict[torch.device, Tensor] = {}
        if table is not None:
            passes = torch.cat(
                [table_passes(table, self.threshold).cpu(), torch.zeros(1, dtype=torch.bool)]
            )
            self._passes[passes.device] = passes

    def _passes_on(self, device: torch.device) -> Tensor:
        passes = self._passes.get(device)
        if passes is None:
            passes = next(iter(self._passes.values())).to(device)
            self._passes[device] = passes
        return passes

    def __call__(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The exit mask (bool ``[N]``) and the prediction (int64 ``[N]``) of these logits.

        Raises:
            adaptix.errors.ValidationError: the logits are not a float32/16 or bfloat16 ``[N, C]``
                tensor; `AdaptixError` where backend "triton" cannot run.
        """
        if not (
            isinstance(logits, Tensor)
            and logits.dim() == 2
            and logits.dtype in SUPPORTED_DTYPES
            and logits.shape[1] >= 1
        ):
            check_exit_logits(logits)  # raises, naming what is wrong
        if self.backend == "triton" or (self.backend == "auto" and logits.device.type == "cuda"):
            table = None if self.table is None else self._table_on(logits.device)
            decision = exit_decision(
                logits, self.threshold, kind=self.kind, table=table, backend=self.backend
            )
            return decision.exit_mask, decision.prediction
        z = logits.float()
        confidence = torch.softmax(z, dim=-1).amax(dim=-1)
        prediction = torch.argmax(z, dim=-1)
        if self.kind == "confidence":  # NaN compares False: undefined rows never exit
            return confidence >= self._bound, prediction
        if self.kind == "entropy":
            # The entropy of a NaN softmax can come out as 0: mask undefined rows explicitly.
            exits = (normalized_entropy(z) <= self._bound) & (confidence == confidence)
            return exits, prediction
        # bin = min(floor(c · M), M - 1) in float32, as `adaptix.scores.bin_index`; NaN → bin M.
        bins = (confidence * float(self._bins)).floor_().clamp_(0, self._bins - 1)
        bins = bins.nan_to_num_(float(self._bins)).long()
        return self._passes_on(logits.device)[bins], prediction

    def _table_on(self, device: torch.device) -> Tensor:
        assert self.table is not None
        if self.table.device != device:
            self.table = self.table.to(device)
        return self.table

    def __repr__(self) -> str:
        return (
            f"ExitDecider(threshold={self.threshold}, kind={self.kind!r}, backend={self.backend!r})"
        )


__all__ = ["ExitDecider"]
