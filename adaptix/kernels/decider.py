"""`ExitDecider`: one exit's decision rule, validated and prepared once, applied many times.

The runtime asks the same question at the same exit for every batch: which rows pass this
threshold (and this exit's calibration table)? `exit_decision` answers it from scratch, with
every check and every output of `ExitDecision`. That is right for a one-off call, but on a CPU
at small batches its Python work costs as much as the exit head itself. An `ExitDecider` checks
the rule once and keeps what does not depend on the logits: the float32 bound that makes a
float32 comparison exact, and, for a calibration table, float32 bin edges plus which bins stay.
Per call it computes only what the runtime asks (`stays`: which rows go on; the prediction only
when rows leave), with the fewest torch operations that give exactly the reference's answer
(`tests/test_kernels.py` checks it against `exit_decision_reference`, NaN and infinite logits
and bin edges included). On CUDA it runs the fused Triton kernel, as `exit_decision` does.
"""

from __future__ import annotations

import numpy as np
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
from adaptix.kernels.types import Backend, ExitDecision, ExitKind
from adaptix.scores import normalized_entropy, prediction


def bin_edges(bins: int) -> Tensor:
    """float32 edges that turn `adaptix.scores.bin_index` into one ``torch.bucketize``.

    Edge k (k = 1 … M-1) is the smallest float32 c with float32(c · M) >= k, so that for every
    float32 confidence c in [0, 1]: ``bucketize(c, edges, right=True) == bin_index(c, M)``.
    A final +inf edge sends NaN (which compares False with every edge) to bin M.
    """
    scale = np.float32(bins)
    edges = []
    for k in range(1, bins):
        edge = np.float32(k / bins)
        while edge * scale >= k:  # float32 product: the very rounding `bin_index` does
            edge = np.nextafter(edge, np.float32(-1.0))
        while not edge * scale >= k:
            edge = np.nextafter(edge, np.float32(2.0))
        edges.append(edge)
    edges.append(np.float32(np.inf))
    return torch.from_numpy(np.array(edges, dtype=np.float32))


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
        self._bounds: dict[torch.device, Tensor] = {}
        # For kind "table", per device: the bin edges and, for bins 0 … M (M: undefined
        # confidence), whether a row in that bin stays.
        self._lookup: dict[torch.device, tuple[Tensor, Tensor]] = {}
        if table is not None:
            passes = table_passes(table, self.threshold).cpu()
            stays = torch.cat([~passes, torch.ones(1, dtype=torch.bool)])
            self._lookup[stays.device] = (bin_edges(int(table.shape[0])), stays)

    def _lookup_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        lookup = self._lookup.get(device)
        if lookup is None:
            edges, stays = next(iter(self._lookup.values()))
            lookup = self._lookup[device] = (edges.to(device), stays.to(device))
        return lookup

    def _check(self, logits: Tensor) -> None:
        if not (
            isinstance(logits, Tensor)
            and logits.dim() == 2
            and logits.dtype in SUPPORTED_DTYPES
            and logits.shape[1] >= 1
        ):
            check_exit_logits(logits)  # raises, naming what is wrong

    def _kernel(self, logits: Tensor) -> bool:
        return self.backend == "triton" or (self.backend == "auto" and logits.device.type == "cuda")

    def __call__(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The exit mask (bool ``[N]``) and the prediction (int64 ``[N]``) of these logits.

        Raises:
            adaptix.errors.ValidationError: the logits are not a float32/16 or bfloat16 ``[N, C]``
                tensor; `AdaptixError` where backend "triton" cannot run.
        """
        self._check(logits)
        if self._kernel(logits):
            decision = self._run_kernel(logits)
            return decision.exit_mask, decision.prediction
        return ~self._stays(logits), prediction(logits)

    def stays(self, logits: Tensor) -> Tensor:
        """The complement of the exit mask, without the prediction: the runtime's question
        (which rows go on), in the fewest operations. On CPU, kind "table" costs four: softmax,
        max, one ``bucketize`` against exact float32 bin edges and one lookup."""
        self._check(logits)
        if self._kernel(logits):
            return ~self._run_kernel(logits).exit_mask
        return self._stays(logits)

    def _stays(self, logits: Tensor) -> Tensor:
        confidence = torch.softmax(logits.float(), dim=-1).amax(dim=-1)
        if self.kind == "confidence":  # NaN compares False: undefined rows stay
            return torch.ge(confidence, self._bound_on(logits.device)).logical_not_()
        if self.kind == "entropy":
            # The entropy of a NaN softmax can come out as 0: undefined rows stay explicitly.
            exits = torch.le(normalized_entropy(logits), self._bound_on(logits.device))
            return exits.logical_not_().logical_or_(confidence.isnan())
        edges, stays = self._lookup_on(logits.device)
        # index_select: a third of the cost of advanced indexing on small batches.
        return stays.index_select(0, torch.bucketize(confidence, edges, right=True))

    def _bound_on(self, device: torch.device) -> Tensor:
        """The float32 bound as a 0-d tensor: comparing with a Python float wraps it anew on
        every call, which costs more than the comparison on small batches."""
        bound = self._bounds.get(device)
        if bound is None:
            bound = torch.tensor(self._bound, dtype=torch.float32, device=device)
            self._bounds[device] = bound
        return bound

    def _run_kernel(self, logits: Tensor) -> ExitDecision:
        table = None if self.table is None else self._table_on(logits.device)
        return exit_decision(
            logits, self.threshold, kind=self.kind, table=table, backend=self.backend
        )

    def _table_on(self, device: torch.device) -> Tensor:
        assert self.table is not None
        if self.table.device != device:
            self.table = self.table.to(device)
        return self.table

    def __repr__(self) -> str:
        return (
            f"ExitDecider(threshold={self.threshold}, kind={self.kind!r}, backend={self.backend!r})"
        )


__all__ = ["ExitDecider", "bin_edges"]
