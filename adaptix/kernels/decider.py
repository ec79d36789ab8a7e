"""`ExitDecider`: one exit's decision rule, validated and prepared once, applied many times.

The runtime asks the same question at the same exit for every batch: which rows pass this
threshold (and this exit's calibration table)? `exit_decision` answers it from scratch, with
every check and every output of `ExitDecision`. That is right for a one-off call, but on a CPU
at small batches its Python work costs as much as the exit head itself, and on CUDA it would
validate, list the reasons the kernel can or cannot run and derive the table on every call. An
`ExitDecider` checks the rule once and keeps, per device, what does not depend on the logits:
the float32 bound that makes a float32 comparison exact; for a calibration table, the float32
lookup of its bin edges (equal-width or given, `adaptix.Calibration.float32_edges`) plus which
bins stay (torch path), or the contiguous table, which bins pass and, for given edges, their
lookup (kernel path); and whether the fused kernel runs there. Per call it computes only what
the runtime asks (`decide`: which rows go on, and the prediction when the kernel made it
anyway), with the fewest torch operations that give exactly the reference's answer
(`tests/test_kernels.py` checks it against `exit_decision_reference`, NaN and infinite logits
and bin edges included), or one launch of the fused Triton kernel that writes only the exit
mask and the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

from adaptix.core.scores import (
    bin_edges,
    bin_index,
    confidence,
    float32_edges,
    normalized_entropy,
    prediction,
)
from adaptix.errors import expect
from adaptix.kernels.dispatch import (
    BACKENDS,
    MAX_TRITON_COLUMN_SPAN,
    kernel_for,
    logits_unavailable_reasons,
    triton_cannot_run,
)
from adaptix.kernels.reference import (
    SUPPORTED_DTYPES,
    check_exit_logits,
    check_exit_rule,
    float32_bound,
    table_passes,
)
from adaptix.kernels.types import Backend, ExitKind


@dataclass(frozen=True)
class _Prepared:
    """What an `ExitDecider` keeps on one device.

    Attributes:
        kernel: the Triton kernel module where the backend runs it on this device, else None.
        bound: the float32 bound as a 0-d tensor (torch path, kinds confidence and entropy):
            comparing with a Python float wraps it anew on every call, which costs more than
            the comparison on small batches.
        lookup: for kind "table" (torch path), the float32 lookup of the bin edges and
            whether a row in bin 0 … M (M: undefined confidence) stays.
        table: for kind "table", the contiguous table (kernel path).
        passes: for kind "table", which bins let a row exit (kernel path).
        edges: for kind "table" with given edges, their float32 lookup (kernel path); None
            for equal-width bins, which the kernel computes from the confidence.
    """

    kernel: ModuleType | None
    bound: Tensor
    lookup: tuple[Tensor, Tensor] | None = None
    table: Tensor | None = None
    passes: Tensor | None = None
    edges: Tensor | None = None


class ExitDecider:
    """Which rows of an exit's logits leave, for a fixed threshold, kind and table.

    Args:
        threshold: the threshold (τ or δ), a Python float.
        kind: "confidence", "entropy" or "table" (see `exit_decision_reference`).
        table: for kind "table", the exit's calibrated bin accuracies [M] (NaN: empty bin).
        edges: for kind "table", the exit's bin edges [M + 1] (``calibration.edges[e]``), or
            None for equal-width bins (``calibration.equal_width``).
        backend: as for `exit_decision`: "auto" runs the Triton kernel on CUDA tensors and the
            torch path elsewhere, "torch" always torch, "triton" always the kernel. Resolved
            once per device, on the first logits seen there.

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
        edges: Tensor | None = None,
        backend: Backend = "auto",
    ) -> None:
        expect(backend in BACKENDS, f"backend in {BACKENDS}", repr(backend), "Choose one of them.")
        self.threshold = check_exit_rule(threshold, kind=kind, table=table, edges=edges)
        self.kind = kind
        self.backend = backend
        self.table = table
        self.edges = edges
        # One path for both kinds of bins: a float32 lookup of the edges that `bin_index`
        # bucketizes against (for equal-width bins, the exact edges of PCEE.md's float32 rule).
        self._lookup: Tensor | None = None
        if table is not None:
            bins = int(table.shape[0])
            self._lookup = bin_edges(bins) if edges is None else float32_edges(edges.cpu())
        # float32 scores compared with this bound decide exactly as float64(score) vs threshold.
        self._bound = float32_bound(self.threshold, at_least=kind != "entropy")
        self._passes = None if table is None else table_passes(table, self.threshold)
        self._prepared: dict[torch.device, _Prepared] = {}

    def _on(self, device: torch.device) -> _Prepared:
        """What this rule needs on ``device``, prepared on first use."""
        prepared = self._prepared.get(device)
        if prepared is None:
            prepared = self._prepared[device] = self._prepare(device)
        return prepared

    def _prepare(self, device: torch.device) -> _Prepared:
        kernel = kernel_for(device, self.backend)
        bound = torch.tensor(self._bound, dtype=torch.float32, device=device)
        if self.table is None or self._passes is None or self._lookup is None:
            return _Prepared(kernel, bound)
        # The torch lookup even beside the kernel: logits too wide for it fall back to torch.
        bin_stays = torch.cat([~self._passes.cpu(), torch.ones(1, dtype=torch.bool)])
        lookup = (self._lookup.to(device), bin_stays.to(device))
        if kernel is None:
            return _Prepared(kernel, bound, lookup=lookup)
        return _Prepared(
            kernel,
            bound,
            lookup,
            table=self.table.to(device).contiguous(),
            passes=self._passes.to(device),
            edges=None if self.edges is None else lookup[0],
        )

    def _check(self, logits: Tensor) -> None:
        if not (
            isinstance(logits, Tensor)
            and logits.dim() == 2
            and logits.dtype in SUPPORTED_DTYPES
            and logits.shape[1] >= 1
        ):
            check_exit_logits(logits)  # raises, naming what is wrong

    def _kernel(self, logits: Tensor, prepared: _Prepared) -> ModuleType | None:
        """The kernel if it decides these logits; None for the torch path."""
        kernel = prepared.kernel
        if kernel is None or logits.shape[1] * max(logits.stride(1), 1) <= MAX_TRITON_COLUMN_SPAN:
            return kernel
        if self.backend == "auto":
            return None
        raise triton_cannot_run(logits_unavailable_reasons(logits))

    def __call__(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The exit mask (bool ``[N]``) and the prediction (int64 ``[N]``) of these logits.

        Raises:
            adaptix.errors.ValidationError: the logits are not a float32/16 or bfloat16 ``[N, C]``
                tensor; `AdaptixError` where backend "triton" cannot run.
        """
        self._check(logits)
        prepared = self._on(logits.device)
        kernel = self._kernel(logits, prepared)
        if kernel is not None:
            return self._launch(kernel, logits, prepared)
        return self._stays(logits, prepared).logical_not_(), prediction(logits)

    def decide(self, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        """The runtime's question: which rows go on (bool ``[N]``), and the prediction
        (int64 ``[N]``) where the fused kernel made it anyway, else None (the torch path does
        not compute it: the caller computes it only if rows leave). On CPU, kind "table" costs
        four operations: softmax, max, one ``bucketize`` against exact float32 bin edges and
        one lookup.

        Raises:
            adaptix.errors.ValidationError: as `__call__`; `AdaptixError` where backend
                "triton" cannot run.
        """
        self._check(logits)
        prepared = self._on(logits.device)
        kernel = self._kernel(logits, prepared)
        if kernel is not None:
            exit_mask, predicted = self._launch(kernel, logits, prepared)
            return exit_mask.logical_not_(), predicted
        return self._stays(logits, prepared), None

    def _stays(self, logits: Tensor, prepared: _Prepared) -> Tensor:
        top = confidence(logits)
        if self.kind == "confidence":  # NaN compares False: undefined rows stay
            return torch.ge(top, prepared.bound).logical_not_()
        if self.kind == "entropy":
            # The entropy of a NaN softmax can come out as 0: undefined rows stay explicitly.
            exits = torch.le(normalized_entropy(logits), prepared.bound)
            return exits.logical_not_().logical_or_(top.isnan())
        assert prepared.lookup is not None  # `_prepare` makes it for kind "table"
        lookup, bin_stays = prepared.lookup
        # index_select: a third of the cost of advanced indexing on small batches.
        return bin_stays.index_select(0, bin_index(top, lookup.shape[0], lookup))

    def _launch(
        self, kernel: ModuleType, logits: Tensor, prepared: _Prepared
    ) -> tuple[Tensor, Tensor]:
        """One launch of the fused kernel on the prepared rule: exit mask and prediction,
        without the confidences and scores the runtime does not read."""
        n_rows = logits.shape[0]
        exit_mask = torch.empty(n_rows, dtype=torch.bool, device=logits.device)
        predicted = torch.empty(n_rows, dtype=torch.int64, device=logits.device)
        kernel.launch_exit_decision(
            logits,
            kind=self.kind,
            bound=self._bound,
            table=prepared.table,
            passes=prepared.passes,
            edges=prepared.edges,
            prediction=predicted,
            exit_mask=exit_mask,
        )
        return exit_mask, predicted

    def __repr__(self) -> str:
        return (
            f"ExitDecider(threshold={self.threshold}, kind={self.kind!r}, backend={self.backend!r})"
        )


__all__ = ["ExitDecider"]
