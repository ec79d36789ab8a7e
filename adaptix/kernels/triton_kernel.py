"""The exit decision fused into one Triton kernel: one read of the logits, O(N) writes.

Imported only when the triton backend runs (`adaptix.kernels.dispatch` does it lazily), so
`import adaptix` works without triton. `TRITON_INTERPRET=1` must be set before this module is
first imported for the kernel to run in Triton's interpreter.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from adaptix.core.scores import float32_edges
from adaptix.kernels.reference import float32_bound, table_passes
from adaptix.kernels.types import ExitDecision, ExitKind

KIND_CODES: dict[ExitKind, int] = {"confidence": 0, "entropy": 1, "table": 2}

TILE_ELEMENTS = 2048
"""Logits a program holds per step: BLOCK_N rows × BLOCK_C columns."""

NUM_WARPS = 8

_NO_INDEX = tl.constexpr(2**31 - 1)


@triton.jit
def exit_decision_kernel(  # type: ignore[no-untyped-def]  # Triton interprets annotations
    logits_ptr,
    stride_row,
    stride_col,
    n_rows,
    n_cols,
    threshold,
    inv_log_n_cols,
    table_ptr,
    passes_ptr,
    edges_ptr,
    n_bins,
    prediction_ptr,
    confidence_ptr,
    score_ptr,
    exit_ptr,
    KIND: tl.constexpr,
    SEARCH_STEPS: tl.constexpr,
    WRITE_SCORES: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Decide BLOCK_N rows in one pass over their logits.

    Each lane j of the [BLOCK_N, BLOCK_C] tile keeps an online softmax over the columns it
    sees (j, j + BLOCK_C, ...): its running max m, s = sum exp(z - m), t = sum exp(z - m)(z - m)
    (entropy only) and the first column holding m. Lanes are merged once, after the loop, so
    the loop body has no cross-thread reduction. One exp per element: whichever of z and m is
    smaller is the one exponentiated relative to the other.

    `threshold` is the float32 bound from `float32_bound`, so comparing in float32 is exact.
    `table_ptr`, `passes_ptr` and `n_bins` are read only when KIND is the table code (2);
    `confidence_ptr` and `score_ptr` are written only when WRITE_SCORES is set (the runtime
    asks for the exit mask and the prediction alone).

    Bins: SEARCH_STEPS == 0 is the equal-width fast path, bin = min(floor(c · M), M - 1) in
    float32. SEARCH_STEPS > 0 reads `edges_ptr`, the float32 lookup [M] of the bins' edges
    (`adaptix.core.scores.float32_edges`: non-decreasing, +inf last), with 2**SEARCH_STEPS >= M:
    the bin is the number of lookup entries <= c, found by a branchless binary search of
    SEARCH_STEPS probes per row (one gather each, from a table that stays in L1).
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    row_start = logits_ptr + rows.to(tl.int64)[:, None] * stride_row
    lanes = tl.arange(0, BLOCK_C)

    m = tl.full([BLOCK_N, BLOCK_C], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    t = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    # A lane that only ever sees -inf keeps its first column, so an all -inf row predicts 0.
    first_max = tl.zeros([BLOCK_N, BLOCK_C], tl.int32) + lanes[None, :]
    # Three stages: loads for the next two tiles are in flight (cp.async) while one is reduced.
    for start in tl.range(0, n_cols, BLOCK_C, num_stages=3):
        cols = start + lanes
        mask = row_ok[:, None] & (cols < n_cols)[None, :]
        z = tl.load(row_start + cols[None, :] * stride_col, mask=mask, other=float("-inf"))
        z = z.to(tl.float32)
        # Strictly greater keeps the first column on ties, as torch.argmax; NaN never grows.
        grows = z > m
        d = tl.where(grows, m - z, z - m)
        e = tl.exp(d)
        # -inf contributes exp(-inf) = 0 and must not reach 0 * -inf = NaN in t.
        skip = z == float("-inf")
        if KIND == 1:
            # s == 0 exactly while the lane has seen only -inf (then m = -inf and d = -inf).
            s_d = tl.where(s == 0.0, 0.0, s * d)
            t = tl.where(grows, e * (t + s_d), tl.where(skip, t, t + e * d))
        s = tl.where(grows, s * e + 1.0, tl.where(skip, s, s + e))
        first_max = tl.where(grows, cols[None, :], first_max)
        m = tl.where(grows, z, m)

    row_max = tl.max(m, axis=1)
    from_max = m - row_max[:, None]
    lane_scale = tl.where(m == float("-inf"), 0.0, tl.exp(from_max))
    total = tl.sum(s * lane_scale, axis=1)
    # The max element contributes exp(0) = 1, so its probability is 1 / total. div_rn: the
    # default fp32 division is approximate on NVIDIA GPUs and bin edges (c = 1/2, 1/4, ...)
    # must come out exactly as in torch.
    confidence = tl.math.div_rn(tl.full([BLOCK_N], 1.0, tl.float32), total)
    # Every logit -inf: the softmax is 0/0, NaN as in torch.
    confidence = tl.where(row_max == float("-inf"), float("nan"), confidence)
    prediction = tl.min(tl.where(m == row_max[:, None], first_max, _NO_INDEX), axis=1)

    # torch.argmax returns the first NaN. NaN (or +inf) logits make `total` NaN, so the rows
    # that need it are known here and the second pass only runs for tiles that hold one.
    if tl.max((total != total).to(tl.int32), axis=0) > 0:
        first_nan = tl.full([BLOCK_N], _NO_INDEX, tl.int32)
        for start in tl.range(0, n_cols, BLOCK_C):
            cols = start + lanes
            mask = row_ok[:, None] & (cols < n_cols)[None, :]
            z = tl.load(row_start + cols[None, :] * stride_col, mask=mask, other=0.0)
            nan_col = tl.min(tl.where(z != z, cols[None, :], _NO_INDEX), axis=1)
            first_nan = tl.minimum(first_nan, nan_col)
        prediction = tl.where(first_nan < _NO_INDEX, first_nan, prediction)

    if KIND == 0:
        score = confidence
        exits = score >= threshold
    elif KIND == 1:
        # H = log S - T / S with T <= 0: a sum of two non-negative terms, no cancellation.
        shift = tl.where(m == float("-inf"), 0.0, from_max)
        t_total = tl.sum(lane_scale * (t + s * shift), axis=1)
        entropy = tl.log(total) - tl.math.div_rn(t_total, total)
        score = tl.where(confidence == confidence, entropy * inv_log_n_cols, float("nan"))
        exits = score <= threshold
    else:
        defined = confidence == confidence
        if SEARCH_STEPS == 0:
            # Same float32 product and floor as the reference, so equal confidences share a bin.
            scaled = tl.where(defined, tl.floor(confidence * n_bins), 0.0)
            bins = tl.minimum(scaled.to(tl.int32), n_bins - 1)
        else:
            # Binary lifting: `bins` entries are known <= c; try to add the next 2**k. The lookup
            # is sorted, so entry bins + 2**k - 1 <= c means all of them are. NaN never moves.
            bins = tl.zeros([BLOCK_N], tl.int32)
            for step in tl.static_range(SEARCH_STEPS):
                width = tl.constexpr(1) << (SEARCH_STEPS - 1 - step)
                probe = bins + (width - 1)
                edge = tl.load(
                    edges_ptr + probe, mask=row_ok & (probe < n_bins), other=float("inf")
                )
                bins = tl.where(edge <= confidence, bins + width, bins)
        # The table keeps its own dtype (float64): one rounding to float32 here, as .float().
        score = tl.load(table_ptr + bins, mask=row_ok, other=float("nan")).to(tl.float32)
        score = tl.where(defined, score, float("nan"))
        exits = tl.load(passes_ptr + bins, mask=row_ok, other=0) & defined

    tl.store(prediction_ptr + rows, prediction.to(tl.int64), mask=row_ok)
    if WRITE_SCORES:
        tl.store(confidence_ptr + rows, confidence, mask=row_ok)
        tl.store(score_ptr + rows, score, mask=row_ok)
    tl.store(exit_ptr + rows, exits, mask=row_ok)


def block_shape(n_cols: int, tile_elements: int = TILE_ELEMENTS) -> tuple[int, int]:
    """Choose (BLOCK_N, BLOCK_C): whole short rows per tile, long rows walked in chunks."""
    block_c = min(triton.next_power_of_2(n_cols), tile_elements)
    return tile_elements // block_c, block_c


def exit_decision_triton(
    logits: Tensor,
    threshold: float,
    *,
    kind: ExitKind,
    table: Tensor | None = None,
    edges: Tensor | None = None,
    tile_elements: int = TILE_ELEMENTS,
) -> ExitDecision:
    """Run the fused kernel; the arguments must already be validated and runnable.

    See `adaptix.kernels.dispatch.exit_decision`, which checks both.

    Args:
        logits: [N, C] float32, float16 or bfloat16.
        threshold: the threshold (τ or δ).
        kind: which score decides.
        table: for kind "table", one exit's bin accuracies [M], on the logits' device.
        edges: for kind "table", that exit's bin edges [M + 1] on the logits' device, or None
            for equal-width bins.
        tile_elements: see `launch_exit_decision`.
    """
    n_rows = logits.shape[0]
    device = logits.device
    prediction = torch.empty(n_rows, dtype=torch.int64, device=device)
    confidence = torch.empty(n_rows, dtype=torch.float32, device=device)
    score = torch.empty(n_rows, dtype=torch.float32, device=device)
    exit_mask = torch.empty(n_rows, dtype=torch.bool, device=device)
    lookup: Tensor | None = None
    if kind == "table":
        assert table is not None  # dispatch validated: kind "table" comes with a table
        # The kernel indexes the table as contiguous; a column of a 2-D table is not.
        table, passes = table.contiguous(), table_passes(table, threshold)
        lookup = None if edges is None else float32_edges(edges)
        bound = 0.0  # unused: `passes` already holds every bin's comparison
    else:
        passes = None
        bound = float32_bound(threshold, at_least=kind == "confidence")
    launch_exit_decision(
        logits,
        kind=kind,
        bound=bound,
        table=table,
        passes=passes,
        edges=lookup,
        prediction=prediction,
        exit_mask=exit_mask,
        scores=(confidence, score),
        tile_elements=tile_elements,
    )
    return ExitDecision(prediction, confidence, score, exit_mask)


def launch_exit_decision(
    logits: Tensor,
    *,
    kind: ExitKind,
    bound: float,
    table: Tensor | None,
    passes: Tensor | None,
    prediction: Tensor,
    exit_mask: Tensor,
    edges: Tensor | None = None,
    scores: tuple[Tensor, Tensor] | None = None,
    tile_elements: int = TILE_ELEMENTS,
) -> None:
    """Run the fused kernel on prepared arguments, writing into the given outputs.

    Nothing is checked or derived here: `exit_decision_triton` prepares the arguments for a
    one-off call, `adaptix.kernels.ExitDecider` once for every call of an exit.

    Args:
        logits: [N, C] float32, float16 or bfloat16.
        kind: which score decides.
        bound: for kinds "confidence" and "entropy", the threshold's `float32_bound` (at least
            for "confidence", at most for "entropy"); unused for "table".
        table: for kind "table", one exit's bin accuracies [M], contiguous, on the logits'
            device; None for the other kinds.
        passes: for kind "table", `table_passes` of that table and the threshold (bool [M],
            same device); None for the other kinds.
        edges: for kind "table" with bins other than equal-width, the float32 lookup [M] of
            their edges (`adaptix.core.scores.float32_edges`, contiguous, same device); None for
            equal-width bins (the fast path) and the other kinds.
        prediction: int64 [N], written.
        exit_mask: bool [N], written.
        scores: float32 [N] confidence and score, written when given (skipped when None).
        tile_elements: logits a program holds per step, a power of two. The default suits
            GPUs; Triton's CPU interpreter runs programs one by one, so tests pass larger
            tiles to run fewer of them.
    """
    n_rows, n_cols = logits.shape
    if n_rows == 0:
        return
    # Unused pointers (the table for other kinds, the scores when not asked): any tensor will
    # do, the kernel never touches them.
    table_values = prediction if table is None else table
    passes = exit_mask if passes is None else passes
    lookup = prediction if edges is None else edges
    # 2**steps >= M probes cover bins 0 … M - 1; the fast path (0 steps) for equal width.
    search_steps = 0 if edges is None else max((passes.shape[0] - 1).bit_length(), 1)
    confidence, score = (prediction, prediction) if scores is None else scores
    inv_log_n_cols = 1.0 / math.log(n_cols) if n_cols > 1 else 0.0
    block_n, block_c = block_shape(n_cols, tile_elements)

    def launch() -> None:
        exit_decision_kernel[(triton.cdiv(n_rows, block_n),)](
            logits,
            logits.stride(0),
            logits.stride(1),
            n_rows,
            n_cols,
            bound,
            inv_log_n_cols,
            table_values,
            passes,
            lookup,
            passes.shape[0],
            prediction,
            confidence,
            score,
            exit_mask,
            KIND=KIND_CODES[kind],
            SEARCH_STEPS=search_steps,
            WRITE_SCORES=scores is not None,
            BLOCK_N=block_n,
            BLOCK_C=block_c,
            num_warps=NUM_WARPS,
            # Explicit, since Triton warns about the default; FMA contraction only makes the
            # running sums more accurate and never touches the exact steps (bins, comparisons).
            enable_fp_fusion=True,
        )

    if logits.device.type == "cuda":
        # Triton launches on the current device; the logits may live on another one.
        with torch.cuda.device(logits.device):
            launch()
    else:
        launch()
