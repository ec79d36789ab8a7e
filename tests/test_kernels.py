"""Tests of adaptix.kernels: the reference (the spec), the dispatch and the fused Triton kernel.

Where the kernel runs:
- On a CUDA machine, the `TestKernel` cases with the "cuda" id run the compiled kernel.
- On CPU, Triton can only run the kernel in its interpreter, which it picks when the kernel is
  decorated, so TRITON_INTERPRET=1 must be set before `adaptix.kernels.triton_kernel` is first
  imported. Setting it here would leak into every test module collected after this one (and
  make this module's compile-only test see an interpreted kernel), so
  `test_kernel_in_triton_interpreter` reruns `TestKernel` in ONE subprocess with
  TRITON_INTERPRET=1; in this process the "interpreter" cases skip.
- `test_compile_for_cuda_targets` compiles the kernel down to a cubin for sm_80 and sm_90 with
  the ptxas that ships with triton: no GPU needed; both bin paths of kind "table" (equal-width
  and edges).

Tolerances: see `allowed_error`.
"""

from __future__ import annotations

import ast
import bisect
import math
import os
import re
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptix.core.scores import bin_edges, bin_index, confidence, float32_edges
from adaptix.default_plugins.calibrators import equal_mass_edges
from adaptix.errors import AdaptixError, ValidationError
from adaptix.kernels import (
    ExitDecider,
    ExitDecision,
    ExitKind,
    dispatch,
    exit_decision,
    exit_decision_reference,
    triton_unavailable_reasons,
)
from adaptix.kernels import decider as decider_module
from adaptix.kernels.reference import float32_bound

REPO = Path(__file__).resolve().parents[1]
HAS_TRITON = find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
IN_INTERPRETER = dispatch.triton_interpreter_enabled()

SHAPES = [(1, 1), (7, 1023), (1823, 781), (4, 32000), (2, 128256)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KINDS: list[ExitKind] = ["confidence", "entropy", "table"]
FLOAT32_EPS = 2.0**-23
NEG_INF = float("-inf")

# Every shape with every kind; dtypes rotate so that each shape and each kind meets all three
# (the dtype only changes the load: fp16/bf16 are upcast exactly). The full product would
# triple the interpreter's time for no new path.
RANDOM_CASES = [
    (shape, DTYPES[(row + column) % len(DTYPES)], kind)
    for row, shape in enumerate(SHAPES)
    for column, kind in enumerate(KINDS)
]

# The interpreter runs programs one after another, at ~0.1 s each, so inputs of more than this
# many logits use it as their tile there: 8 programs instead of 912 for 1823 rows of 781. The
# others keep the GPU tile and walk long rows in chunks (63 of them for 128256 columns).
INTERPRETER_TILE = 2**18


# --- helpers -------------------------------------------------------------------------------


def case_id(value: object) -> str:
    """Short test ids: 1823x781, bfloat16, entropy."""
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value).removeprefix("torch.")


def make_logits(n_rows: int, n_cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random logits whose rows cycle through the cases the kernel must get right.

    Row r % 5: 0 plain; 1 about 30 % of entries -inf; 2 all equal; 3 the maximum repeated at
    columns 0, 2048 (same lane, a later chunk) and C - 1 (first index must win); 4 spread
    ×50 so most exp() underflow. The last row is all -inf when there are at least 7 rows.
    """
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n_rows, n_cols, generator=generator) * 4
    for row in range(1, n_rows, 5):
        z[row, torch.rand(n_cols, generator=generator) < 0.3] = NEG_INF
    z[2::5] = 1.5
    ties = z[3::5]
    top = ties.amax(dim=1, keepdim=True) + 1
    for col in {0, min(2048, n_cols - 1), n_cols - 1}:
        ties[:, col : col + 1] = top
    z[4::5] *= 50
    if n_rows >= 7:
        z[-1] = NEG_INF
    return z.to(dtype)


def make_table(n_bins: int, seed: int) -> torch.Tensor:
    """Bin accuracies in [0, 1] with two undefined (NaN) bins."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.rand(n_bins, generator=generator, dtype=torch.float64)
    table[[1, n_bins // 2]] = math.nan
    return table


def make_edges(n_bins: int, seed: int) -> torch.Tensor:
    """Bin edges [M + 1] from 0 to 1: random float64 interior edges (not float32 values, so the
    kernel's rounded-up lookup matters), 0.5 among them (c = 1/2 falls on it) from M = 3, and
    two equal ones (a bin of zero width) from M = 5."""
    generator = torch.Generator().manual_seed(seed)
    interior = torch.rand(n_bins - 1, generator=generator, dtype=torch.float64)
    if n_bins >= 3:
        interior[0] = 0.5
    if n_bins >= 5:
        interior[1] = interior[2]
    ends = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    return torch.cat([ends[0], interior.sort().values, ends[1]])


def draw_edges(
    data: st.DataObject, table: torch.Tensor | None, logits: torch.Tensor
) -> torch.Tensor | None:
    """For a table, None (equal-width bins) or bin edges [M + 1] drawn to sit where lookups go
    wrong: on the rows' confidences, one float32 step either side of them, on values float32
    cannot hold, repeated (bins of zero width), at 0 and 1."""
    if table is None or not data.draw(st.booleans(), label="with edges"):
        return None
    top = confidence(logits)
    seen = [float(c) for c in top.tolist() if not math.isnan(c)] or [0.5]
    near = st.sampled_from(seen).flatmap(
        lambda c: st.sampled_from(
            [
                c,
                float(np.nextafter(np.float32(c), np.float32(2))),
                float(np.nextafter(np.float32(c), np.float32(-1))),
            ]
        )
    )
    edge = st.one_of(near, st.floats(0.0, 1.0), st.sampled_from([0.0, 0.1, 1 / 3, 1.0]))
    interior = data.draw(
        st.lists(edge, min_size=table.shape[0] - 1, max_size=table.shape[0] - 1), label="edges"
    )
    clipped = sorted(min(max(value, 0.0), 1.0) for value in interior)
    return torch.tensor([0.0, *clipped, 1.0], dtype=torch.float64)


def float64_truth(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence and normalised entropy from a float64 softmax of the same logits."""
    probs = torch.softmax(logits.double(), dim=1)
    n_cols = logits.shape[1]
    entropy = -torch.special.xlogy(probs, probs).sum(dim=1)
    entropy = entropy / math.log(n_cols) if n_cols > 1 else entropy * 0
    return probs.amax(dim=1), entropy


def max_abs_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    """Largest |value - truth| over rows where both are defined (0 if there are none)."""
    error = (value.double() - truth).abs().nan_to_num(nan=0.0)
    return float(error.max()) if error.numel() else 0.0


def allowed_error(reference: torch.Tensor, truth: torch.Tensor) -> float:
    """How far from the float64 truth a kernel result may be: 4 × torch's own error, + 4 ulp.

    Low-precision logits are upcast exactly, so kernel and reference see the same float32
    numbers and differ only by float32 rounding: exp (ex2.approx on GPUs), summation order
    (per lane then a tree, against torch's vectorised sum) and the final division. Measuring
    torch's float32 error against a float64 softmax of the same inputs gives the scale of that
    rounding for this very input; a kernel up to 4× worse is still float32-accurate, one that
    is wrong (a missed rescale, a lost term) is off by orders of magnitude more. The 4 ulp of
    1.0 floor covers inputs where torch happens to be exact (e.g. C = 1).
    """
    return 4 * max_abs_error(reference, truth) + 4 * FLOAT32_EPS


def naive_decision(
    decision: ExitDecision,
    threshold: float,
    kind: ExitKind,
    table: torch.Tensor | None,
    edges: torch.Tensor | None = None,
) -> tuple[list[bool], list[float]]:
    """The contract, row by row in Python float64: exits and expected scores."""
    exits, scores = [], []
    for top, score in zip(decision.confidence.tolist(), decision.score.tolist(), strict=True):
        if kind == "confidence":
            exits.append(score >= threshold)
            scores.append(top)
        elif kind == "entropy":
            exits.append(score <= threshold)
            scores.append(score)
        elif math.isnan(top):
            exits.append(False)
            scores.append(math.nan)
        else:
            assert table is not None
            values = table.tolist()
            n_bins = len(values)
            if edges is None:
                # The bin is computed in float32, as the contract says.
                product = np.float32(top) * np.float32(n_bins)
                bin_ = min(math.floor(product), n_bins - 1)
            else:
                # The bin whose edges hold c, compared exactly in Python floats.
                bin_ = bisect.bisect_right(edges.tolist()[1:-1], top)
            accuracy = values[bin_]
            exits.append(not math.isnan(accuracy) and accuracy >= threshold)
            scores.append(float(np.float32(accuracy)))
    return exits, scores


def assert_matches_reference(
    got: ExitDecision,
    logits: torch.Tensor,
    threshold: float,
    *,
    kind: ExitKind,
    table: torch.Tensor | None = None,
    edges: torch.Tensor | None = None,
) -> None:
    """The kernel's decision equals the reference's, up to float32 rounding of the numbers."""
    logits = logits.cpu()
    table = None if table is None else table.cpu()
    edges = None if edges is None else edges.cpu()
    want = exit_decision_reference(logits, threshold, kind=kind, table=table, edges=edges)
    got = ExitDecision(*(field.cpu() for field in got))
    for name, got_field, want_field in zip(ExitDecision._fields, got, want, strict=True):
        assert got_field.dtype == want_field.dtype, name
        assert got_field.shape == want_field.shape, name

    assert torch.equal(got.prediction, want.prediction)
    assert torch.equal(got.confidence.isnan(), want.confidence.isnan())
    true_confidence, true_entropy = float64_truth(logits)
    tolerance = allowed_error(want.confidence, true_confidence)
    assert max_abs_error(got.confidence, true_confidence) <= tolerance
    if kind == "entropy":
        tolerance = allowed_error(want.score, true_entropy)
        assert max_abs_error(got.score, true_entropy) <= tolerance

    # Exact: the kernel's own numbers go through the contract's comparison and bins.
    exits, scores = naive_decision(got, threshold, kind, table, edges)
    assert got.exit_mask.tolist() == exits
    np.testing.assert_array_equal(got.score.numpy(), np.array(scores, dtype=np.float32))

    # And the same masks (and undefined scores: a bin can be empty) as the reference wherever
    # float32 rounding cannot flip a decision.
    if kind == "table" and edges is not None:
        gaps = (want.confidence.double()[:, None] - edges[None, :]).abs()
        near = gaps.nan_to_num(nan=1.0).amin(dim=1) <= tolerance
    elif kind == "table":
        assert table is not None
        scaled = want.confidence.double() * table.shape[0]
        near = (scaled - scaled.round()).abs() <= tolerance * table.shape[0]
    else:
        near = (want.score.double() - threshold).abs() <= tolerance
    assert torch.equal(got.exit_mask[~near], want.exit_mask[~near])
    assert torch.equal(got.score[~near].isnan(), want.score[~near].isnan())


def threshold_inside(scores: torch.Tensor, quantile: float) -> float:
    """A threshold that splits the defined scores, so masks hold both values."""
    defined = scores[~scores.isnan()].double().numpy()
    return float(np.quantile(defined, quantile)) if defined.size else 0.5


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("cpu", id="interpreter"),
        pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
    ],
)
def kernel_device(request: pytest.FixtureRequest) -> str:
    """Where `TestKernel` runs the kernel; see the module docstring."""
    device: str = request.param
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if device == "cpu" and not IN_INTERPRETER:
        pytest.skip(
            "runs in the TRITON_INTERPRET=1 subprocess of test_kernel_in_triton_interpreter"
        )
    if device == "cuda" and (IN_INTERPRETER or not HAS_CUDA):
        pytest.skip("needs a CUDA device (and TRITON_INTERPRET unset)")
    return device


def run_kernel(
    logits: torch.Tensor,
    threshold: float,
    *,
    kind: ExitKind,
    table: torch.Tensor | None = None,
    edges: torch.Tensor | None = None,
) -> ExitDecision:
    """The kernel through the public dispatch; in the interpreter, large inputs use big tiles."""
    if logits.device.type == "cpu" and logits.numel() > INTERPRETER_TILE:
        from adaptix.kernels.triton_kernel import exit_decision_triton

        return exit_decision_triton(
            logits,
            threshold,
            kind=kind,
            table=table,
            edges=edges,
            tile_elements=INTERPRETER_TILE,
        )
    return exit_decision(logits, threshold, kind=kind, table=table, edges=edges, backend="triton")


# --- the kernel against the reference ------------------------------------------------------


class TestKernel:
    """The fused kernel equals the reference: in the interpreter on CPU, compiled on CUDA."""

    @pytest.mark.parametrize(("shape", "dtype", "kind"), RANDOM_CASES, ids=case_id)
    def test_random_logits(
        self, kernel_device: str, shape: tuple[int, int], dtype: torch.dtype, kind: ExitKind
    ) -> None:
        logits = make_logits(*shape, dtype, seed=shape[0] + shape[1]).to(kernel_device)
        table = make_table(10, seed=shape[1]) if kind == "table" else None
        reference = exit_decision_reference(logits.cpu(), 0.5, kind=kind, table=table)
        threshold = 0.5 if kind == "table" else threshold_inside(reference.score, 0.4)
        table = None if table is None else table.to(kernel_device)
        got = run_kernel(logits, threshold, kind=kind, table=table)
        assert_matches_reference(got, logits, threshold, kind=kind, table=table)

    @pytest.mark.parametrize(
        ("shape", "dtype", "n_bins"),
        [
            ((7, 1023), torch.float32, 10),
            ((1823, 781), torch.bfloat16, 3),
            ((4, 32000), torch.float16, 17),
            ((20, 5), torch.float32, 2),
            ((1, 1), torch.float32, 1),
        ],
        ids=case_id,
    )
    def test_table_with_edges(
        self, kernel_device: str, shape: tuple[int, int], dtype: torch.dtype, n_bins: int
    ) -> None:
        """The edges path: edges at confidences of the very rows (as ``equal_mass`` puts them),
        ties making bins of zero width, one bin, the last bin closed at 1."""
        logits = make_logits(*shape, dtype, seed=shape[0] * n_bins)
        top = exit_decision_reference(logits, 0.5, kind="confidence").confidence
        edges = equal_mass_edges(top[~top.isnan()].unsqueeze(1), n_bins)[0]
        table = make_table(n_bins, seed=n_bins) if n_bins > 2 else torch.rand(n_bins).double()
        got = run_kernel(
            logits.to(kernel_device),
            0.4,
            kind="table",
            table=table.to(kernel_device),
            edges=edges.to(kernel_device),
        )
        assert_matches_reference(got, logits, 0.4, kind="table", table=table, edges=edges)

    def test_confidences_on_given_edges(self, kernel_device: str) -> None:
        """c = 1, 1/2, 1/4, 1/5, 1/8, 1/10 exactly (as in `test_confidences_on_bin_edges`)
        against edges 0.1 and 0.2, which float32 cannot hold (float32(0.1) > 0.1, so c =
        float32(1/10) is above its edge), and 1/8, 1/4, 1/2, which it can (c lands on them)."""
        counts = [1, 2, 4, 5, 8, 10]
        logits = torch.full((len(counts), 5000), NEG_INF)
        for row, count in enumerate(counts):
            logits[row, torch.linspace(0, 4999, count).long()] = 3.0
        edges = torch.tensor([0.0, 0.1, 0.125, 0.2, 0.25, 0.5, 1.0], dtype=torch.float64)
        table = torch.arange(6, dtype=torch.float64) / 6 + 0.01
        got = run_kernel(
            logits.to(kernel_device),
            0.3,
            kind="table",
            table=table.to(kernel_device),
            edges=edges.to(kernel_device),
        )
        expected_bins = [5, 5, 4, 3, 2, 1]
        assert got.score.tolist() == [float(np.float32(table[b].item())) for b in expected_bins]
        assert got.exit_mask.tolist() == [table[b].item() >= 0.3 for b in expected_bins]
        assert_matches_reference(got, logits, 0.3, kind="table", table=table, edges=edges)

    @pytest.mark.parametrize("n_bins", [4, 10])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=case_id)
    def test_confidences_on_bin_edges(
        self, kernel_device: str, dtype: torch.dtype, n_bins: int
    ) -> None:
        # k equal maxima and -inf elsewhere: S = k exactly, so c = 1/k exactly in float32.
        # 1, 1/2, 1/4, 1/5, 1/8, 1/10 sit on the edges of 4 or 10 bins (or round onto them:
        # float32(0.1) * 10 == 1.0). Maxima sit in different lanes and chunks of a long row.
        counts = [1, 2, 4, 5, 8, 10]
        logits = torch.full((len(counts), 5000), NEG_INF)
        for row, count in enumerate(counts):
            logits[row, torch.linspace(0, 4999, count).long()] = 3.0
        table = torch.arange(n_bins, dtype=torch.float64) / n_bins + 0.01
        device_table = table.to(kernel_device)
        got = run_kernel(logits.to(kernel_device, dtype), 0.3, kind="table", table=device_table)

        expected_confidence = [float(np.float32(1) / np.float32(count)) for count in counts]
        assert got.confidence.tolist() == expected_confidence
        expected_bins = {4: [3, 2, 1, 0, 0, 0], 10: [9, 5, 2, 2, 1, 1]}[n_bins]
        expected_scores = [float(np.float32(table[b].item())) for b in expected_bins]
        assert got.score.tolist() == expected_scores
        assert got.exit_mask.tolist() == [table[b].item() >= 0.3 for b in expected_bins]
        assert_matches_reference(got, logits.to(dtype), 0.3, kind="table", table=table)

    @pytest.mark.parametrize(
        ("kind", "threshold", "expected"),
        [
            # Rows have c = 1, 1/2, 1/4 exactly (confidence) or h = 0, 0, NaN (entropy).
            ("confidence", 0.5, [True, True, False]),
            ("confidence", float(np.nextafter(0.5, 1.0)), [True, False, False]),
            ("confidence", float(np.nextafter(0.5, 0.0)), [True, True, False]),
            ("confidence", 0.25, [True, True, True]),
            ("entropy", 0.0, [True, True, False]),
            ("entropy", float(np.nextafter(0.0, -1.0)), [False, False, False]),
            # float32(0.6) > 0.6: the table must be compared in float64, not in float32.
            ("table", 0.6, [True, False, False]),
            ("table", float(np.nextafter(0.6, 1.0)), [False, False, False]),
        ],
    )
    def test_threshold_is_compared_exactly(
        self, kernel_device: str, kind: ExitKind, threshold: float, expected: list[bool]
    ) -> None:
        logits = torch.full((3, 3000), NEG_INF)
        logits[0, 2500] = 1.0
        if kind == "entropy":
            logits[1, 7] = 2.0  # one-hot: entropy exactly 0; row 2 stays all -inf (NaN)
        else:
            logits[1, [3, 2051]] = 2.0
            logits[2, [0, 1000, 2000, 2999]] = 2.0
        table = torch.tensor([0.0, 0.1, 0.2, 0.6], dtype=torch.float64) if kind == "table" else None
        device_table = None if table is None else table.to(kernel_device)
        got = run_kernel(logits.to(kernel_device), threshold, kind=kind, table=device_table)
        assert got.exit_mask.tolist() == expected
        assert_matches_reference(got, logits, threshold, kind=kind, table=table)

    @pytest.mark.parametrize("n_cols", [7, 5000])
    @pytest.mark.parametrize("kind", KINDS)
    def test_non_finite_rows(self, kernel_device: str, n_cols: int, kind: ExitKind) -> None:
        # Undefined softmax rows: NaN confidence and score, no exit, prediction as torch.argmax.
        nan, inf = math.nan, math.inf
        far = n_cols - 2
        logits = torch.randn(8, n_cols, generator=torch.Generator().manual_seed(n_cols))
        logits[0, far] = nan
        logits[1, [3, far]] = nan
        logits[2, [1, far]] = inf
        logits[3, 1] = inf
        logits[3, 2] = nan  # NaN beats +inf in torch.argmax
        logits[4] = NEG_INF
        logits[5] = NEG_INF
        logits[5, far] = -3.0  # only one finite logit: c = 1
        table = make_table(10, seed=3) if kind == "table" else None
        device_table = None if table is None else table.to(kernel_device)
        got = run_kernel(logits.to(kernel_device), 0.5, kind=kind, table=device_table)
        assert got.confidence.isnan().tolist() == [True] * 5 + [False] * 3
        assert not got.exit_mask[:5].any()
        assert_matches_reference(got, logits, 0.5, kind=kind, table=table)

    def test_strided_logits_and_table(self, kernel_device: str) -> None:
        base = make_logits(12, 3000, torch.float32, seed=11).to(kernel_device)
        for logits in (base[:, ::3], base[::2, 1:], base.t()[:25]):
            got = run_kernel(logits, 0.3, kind="entropy")
            assert_matches_reference(got, logits, 0.3, kind="entropy")
        # One exit's column of a [M, E] table: the kernel must not assume a contiguous table.
        tables = torch.stack([make_table(8, seed=1), make_table(8, seed=2)], dim=1)
        column = tables.to(kernel_device)[:, 1]
        assert not column.is_contiguous()
        logits = make_logits(12, 40, torch.float32, seed=12) / 8
        got = run_kernel(logits.to(kernel_device), 0.4, kind="table", table=column)
        assert_matches_reference(got, logits, 0.4, kind="table", table=tables[:, 1])

    def test_empty_batch(self, kernel_device: str) -> None:
        got = run_kernel(torch.empty(0, 10, device=kernel_device), 0.5, kind="entropy")
        want = exit_decision_reference(torch.empty(0, 10), 0.5, kind="entropy")
        for got_field, want_field in zip(got, want, strict=True):
            assert got_field.shape == want_field.shape == (0,)
            assert got_field.dtype == want_field.dtype

    @pytest.mark.parametrize(
        ("kind", "with_edges"), [*((k, False) for k in KINDS), ("table", True)]
    )
    def test_decider_launches_the_prepared_kernel(
        self, kernel_device: str, kind: ExitKind, with_edges: bool
    ) -> None:
        """`ExitDecider` with backend "triton" (the runtime's path on CUDA) decides as the full
        kernel call, from the rule it prepared on its first call, and hands back the kernel's
        prediction. The table is a column of a 2-D table: not contiguous."""
        logits = make_logits(37, 50, torch.float32, seed=9).to(kernel_device)
        tables = torch.stack([make_table(10, seed=4), make_table(10, seed=5)], dim=1)
        table = tables[:, 1].to(kernel_device) if kind == "table" else None
        edges = make_edges(10, seed=3).to(kernel_device) if with_edges else None
        full = run_kernel(logits, 0.4, kind=kind, table=table, edges=edges)
        assert_matches_reference(full, logits, 0.4, kind=kind, table=table, edges=edges)
        decider = ExitDecider(0.4, kind=kind, table=table, edges=edges, backend="triton")
        for _ in range(2):  # the second call runs on what the first one prepared
            stays, predicted = decider.decide(logits)
            assert torch.equal(stays, ~full.exit_mask)
            assert predicted is not None
            assert torch.equal(predicted, full.prediction)
        exits, predicted = decider(logits)
        assert torch.equal(exits, full.exit_mask)
        assert torch.equal(predicted, full.prediction)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_property_kernel_equals_reference(
        self, kernel_device: str, data: st.DataObject
    ) -> None:
        n_rows = data.draw(st.integers(1, 4), label="n_rows")
        n_cols = data.draw(st.integers(1, 300), label="n_cols")
        # A few distinct values make ties, -inf and equal rows common.
        values = st.sampled_from([NEG_INF, -30.0, -1.0, 0.0, 0.5, 2.0, 9.0])
        rows = st.lists(values, min_size=n_cols, max_size=n_cols)
        logits = torch.tensor(data.draw(st.lists(rows, min_size=n_rows, max_size=n_rows)))
        logits = logits.to(data.draw(st.sampled_from(DTYPES), label="dtype"))
        kind = data.draw(st.sampled_from(KINDS), label="kind")
        threshold = data.draw(st.floats(0.0, 1.0), label="threshold")
        table = make_table(data.draw(st.integers(2, 12)), seed=n_cols) if kind == "table" else None
        edges = draw_edges(data, table, logits)
        got = run_kernel(
            logits.to(kernel_device),
            threshold,
            kind=kind,
            table=None if table is None else table.to(kernel_device),
            edges=None if edges is None else edges.to(kernel_device),
        )
        assert_matches_reference(got, logits, threshold, kind=kind, table=table, edges=edges)


def test_kernel_in_triton_interpreter() -> None:
    """Run `TestKernel` in Triton's CPU interpreter, in one subprocess (module docstring)."""
    if IN_INTERPRETER:
        pytest.skip("already inside the interpreter run")
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    command = [
        sys.executable,
        "-m",
        "pytest",
        f"{Path(__file__).resolve()}::TestKernel",
        "-k",
        "interpreter",
        "-q",
        "-p",
        "no:cacheprovider",
        # The interpreter evaluates masked-out lanes too (log(0), 0/0): numpy warns, harmlessly.
        "-W",
        "ignore::RuntimeWarning",
    ]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"interpreter run failed:\n{result.stdout[-8000:]}\n{result.stderr[-4000:]}")
    assert " passed" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or IN_INTERPRETER, reason="needs a CUDA device")
def test_auto_picks_the_kernel_on_cuda() -> None:
    logits = make_logits(300, 5000, torch.bfloat16, seed=5).cuda()
    assert triton_unavailable_reasons(logits) == []
    auto = exit_decision(logits, 0.2, kind="entropy")
    fused = exit_decision(logits, 0.2, kind="entropy", backend="triton")
    for auto_field, fused_field in zip(auto, fused, strict=True):
        assert torch.equal(auto_field.nan_to_num(), fused_field.nan_to_num())


# --- compile-only: CUDA targets without a GPU ----------------------------------------------


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(IN_INTERPRETER, reason="TRITON_INTERPRET=1 replaces the kernel")
@pytest.mark.parametrize(
    ("arch", "kind", "with_edges"),
    # Every kind for sm_90 (H100/H200); sm_80 (A100) without "confidence", whose code is a
    # subset of "entropy"'s: each compile costs a second or two of CPU. Kind "table" both with
    # equal-width bins (the fast path) and with bin edges (the binary search).
    [
        (80, "entropy", False),
        (80, "table", False),
        (80, "table", True),
        (90, "confidence", False),
        (90, "entropy", False),
        (90, "table", False),
        (90, "table", True),
    ],
    ids=lambda value: (
        ("edges" if value else "fast")
        if isinstance(value, bool)
        else f"sm_{value}"
        if isinstance(value, int)
        else str(value)
    ),
)
def test_compile_for_cuda_targets(
    arch: int, kind: ExitKind, with_edges: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import triton
    from triton.backends.compiler import GPUTarget

    from adaptix.kernels.triton_kernel import (
        KIND_CODES,
        NUM_WARPS,
        block_shape,
        exit_decision_kernel,
    )

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # really compile, no cache hit
    signature = {
        "logits_ptr": "*bf16",
        "stride_row": "i32",
        "stride_col": "constexpr",
        "n_rows": "i32",
        "n_cols": "i32",
        "threshold": "fp32",
        "inv_log_n_cols": "fp32",
        "table_ptr": "*fp64",
        "passes_ptr": "*i1",
        "edges_ptr": "*fp32",
        "n_bins": "i32",
        "prediction_ptr": "*i64",
        "confidence_ptr": "*fp32",
        "score_ptr": "*fp32",
        "exit_ptr": "*i1",
        "KIND": "constexpr",
        "SEARCH_STEPS": "constexpr",
        "WRITE_SCORES": "constexpr",
        "BLOCK_N": "constexpr",
        "BLOCK_C": "constexpr",
    }
    # What the launcher specialises for a vocabulary-sized row (C = 128256): contiguous
    # columns, 16-byte aligned pointers, row stride and C divisible by 16.
    aligned = [name for name in signature if name.endswith("_ptr")] + ["stride_row", "n_cols"]
    names = list(signature)
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    block_n, block_c = block_shape(128256)
    source = triton.compiler.ASTSource(
        fn=exit_decision_kernel,
        signature=signature,
        constexprs={
            "stride_col": 1,
            "KIND": KIND_CODES[kind],
            # Ten bins: four probes of the binary search (2**4 >= 10).
            "SEARCH_STEPS": 4 if with_edges else 0,
            # sm_80 compiles the full decision (`exit_decision`), sm_90 the runtime's variant
            # (`ExitDecider`: exit mask and prediction only).
            "WRITE_SCORES": arch == 80,
            "BLOCK_N": block_n,
            "BLOCK_C": block_c,
        },
        attrs=attrs,
    )
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": NUM_WARPS, "enable_fp_fusion": True},
    )
    assert compiled.asm["cubin"], "no cubin: ptxas did not run"
    ptx = compiled.asm["ptx"]
    assert f".target sm_{arch}" in ptx
    # IEEE division (div.rn), not the approximate default: bin edges must be exact.
    assert "div.rn.f32" in ptx
    assert "div.full.f32" not in ptx
    # 16-byte loads (direct or cp.async): what a memory-bound kernel needs.
    assert re.search(r"ld\.global[\w.]*\.v4\.b32|cp\.async\.c[ag]\.shared\.global.*0x10", ptx)


# --- the reference: the specification ------------------------------------------------------


def test_reference_known_values() -> None:
    logits = torch.tensor([[0.0, 0.0], [NEG_INF, 3.0], [1.0, 1.0]], dtype=torch.float16)
    decision = exit_decision_reference(logits, 0.5, kind="entropy")
    assert decision.prediction.tolist() == [0, 1, 0]
    assert decision.confidence.tolist() == [0.5, 1.0, 0.5]
    assert decision.score.tolist() == [1.0, 0.0, 1.0]
    assert decision.exit_mask.tolist() == [False, True, False]
    single = exit_decision_reference(torch.tensor([[4.0]]), 0.0, kind="entropy")
    assert single.score.tolist() == [0.0]
    assert single.exit_mask.tolist() == [True]


def test_confidence_is_the_largest_probability() -> None:
    """`adaptix.core.scores.confidence`, the one definition the decider and the reference share."""
    logits = torch.tensor(
        [[0.0, 0.0], [NEG_INF, 3.0], [math.nan, 1.0], [NEG_INF, NEG_INF]], dtype=torch.float16
    )
    got = confidence(logits)
    assert got.dtype == torch.float32
    assert got[:2].tolist() == [0.5, 1.0]
    assert got[2:].isnan().all()  # undefined softmax
    reference = exit_decision_reference(logits, 0.5, kind="confidence").confidence
    assert torch.equal(got.nan_to_num(), reference.nan_to_num())


def test_reference_outputs_are_separate_tensors() -> None:
    decision = exit_decision_reference(torch.randn(3, 4), 0.5, kind="confidence")
    assert decision.score.data_ptr() != decision.confidence.data_ptr()
    assert [field.dtype for field in decision] == [
        torch.int64,
        torch.float32,
        torch.float32,
        torch.bool,
    ]


Rule = tuple[ExitKind, torch.Tensor | None, torch.Tensor | None]  # kind, table, edges


def draw_decision_case(
    data: st.DataObject, *, max_rows: int, max_cols: int, nan_and_inf: bool
) -> tuple[torch.Tensor, Rule, float]:
    """Logits (ties, -inf and, if asked, NaN and +inf entries), a kind, its table and bin edges
    (`draw_edges`), and a threshold on, just above or just below one of the scores: where
    float32 shortcuts go wrong."""
    n_rows = data.draw(st.integers(1, max_rows), label="n_rows")
    n_cols = data.draw(st.integers(1, max_cols), label="n_cols")
    finite = st.floats(-50.0, 50.0, allow_nan=False, width=32)
    special = [NEG_INF, math.inf, math.nan] if nan_and_inf else [NEG_INF]
    entries = st.one_of(finite, st.sampled_from(special), st.sampled_from([0.0, 1.0, 2.0]))
    rows = st.lists(entries, min_size=n_cols, max_size=n_cols)
    raw = data.draw(st.lists(rows, min_size=n_rows, max_size=n_rows), label="logits")
    logits = torch.tensor(raw).to(data.draw(st.sampled_from(DTYPES), label="dtype"))
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    table = make_table(data.draw(st.integers(2, 12)), seed=n_cols) if kind == "table" else None
    edges = draw_edges(data, table, logits)
    first = exit_decision_reference(logits, 0.5, kind=kind, table=table, edges=edges)
    candidates = [s for s in first.score.tolist() if not math.isnan(s)] or [0.5]
    on_score = data.draw(st.sampled_from(candidates), label="score")
    threshold = data.draw(
        st.sampled_from(
            [on_score, float(np.nextafter(on_score, 2.0)), float(np.nextafter(on_score, -1.0))]
        )
        | st.floats(-0.1, 1.1),
        label="threshold",
    )
    return logits, (kind, table, edges), threshold


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_property_reference_mask_is_the_float64_definition(data: st.DataObject) -> None:
    logits, (kind, table, edges), threshold = draw_decision_case(
        data, max_rows=6, max_cols=40, nan_and_inf=False
    )
    decision = exit_decision_reference(logits, threshold, kind=kind, table=table, edges=edges)

    exits, scores = naive_decision(decision, threshold, kind, table, edges)
    assert decision.exit_mask.tolist() == exits
    np.testing.assert_array_equal(decision.score.numpy(), np.array(scores, dtype=np.float32))
    as_float64 = logits.double().numpy()
    defined = ~decision.confidence.isnan().numpy()
    assert (decision.prediction.numpy() == as_float64.argmax(axis=1))[defined].all()
    true_confidence, true_entropy = float64_truth(logits)
    # A float32 softmax of at most 40 classes: within a few ulp of 1.0 (worst case ~20).
    assert max_abs_error(decision.confidence, true_confidence) <= 32 * FLOAT32_EPS
    if kind == "entropy":
        assert max_abs_error(decision.score, true_entropy) <= 32 * FLOAT32_EPS


@settings(max_examples=300, deadline=None)
@given(
    threshold=st.floats(allow_nan=False, allow_infinity=False),
    score=st.floats(width=32, allow_nan=False, allow_infinity=False),
)
def test_property_float32_bound_makes_comparisons_exact(threshold: float, score: float) -> None:
    above = np.float32(float32_bound(threshold, at_least=True))
    below = np.float32(float32_bound(threshold, at_least=False))
    assert bool(np.float32(score) >= above) == (score >= threshold)
    assert bool(np.float32(score) <= below) == (score <= threshold)


# --- the prepared decision of the runtime ---------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_property_decider_decides_as_the_reference(data: st.DataObject) -> None:
    """`ExitDecider` (the runtime's path) returns the reference's exit mask and prediction,
    thresholds on and next to the scores, NaN, infinite and tied logits included."""
    logits, (kind, table, edges), threshold = draw_decision_case(
        data, max_rows=8, max_cols=30, nan_and_inf=True
    )
    expected = exit_decision_reference(logits, threshold, kind=kind, table=table, edges=edges)
    decider = ExitDecider(threshold, kind=kind, table=table, edges=edges, backend="torch")
    exits, prediction = decider(logits)
    assert torch.equal(exits, expected.exit_mask)
    assert torch.equal(prediction, expected.prediction)
    stays, no_prediction = decider.decide(logits)
    assert torch.equal(stays, ~expected.exit_mask)
    assert no_prediction is None  # the torch path leaves the prediction to the caller


@pytest.mark.parametrize("kind", KINDS)
def test_decider_on_bin_edges_and_undefined_rows(kind: ExitKind) -> None:
    """Confidences exactly on bin edges (1/C for C = 2, 4, 5, 10), all -inf rows and NaN."""
    rows = [torch.zeros(1, c) for c in (2, 4, 5, 10)]
    logits = torch.cat(
        [torch.nn.functional.pad(r, (0, 10 - r.shape[1]), value=NEG_INF) for r in rows]
    )
    logits = torch.cat([logits, torch.full((1, 10), NEG_INF), torch.full((1, 10), math.nan)])
    table = make_table(10, seed=3) if kind == "table" else None
    # Edges on 1/10, 1/5, 1/4 (float32 holds only the last) and 1/2, twice: a bin of zero width.
    on_edges = torch.tensor([0, 0.1, 0.2, 0.25, 0.3, 0.5, 0.5, 0.6, 0.7, 0.8, 1.0])
    for edges in (None, on_edges.double()) if kind == "table" else (None,):
        for threshold in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
            expected = exit_decision_reference(
                logits, threshold, kind=kind, table=table, edges=edges
            )
            decider = ExitDecider(threshold, kind=kind, table=table, edges=edges)
            exits, prediction = decider(logits)
            assert torch.equal(exits, expected.exit_mask), threshold
            assert torch.equal(decider.decide(logits)[0], ~expected.exit_mask), threshold
            assert torch.equal(prediction, expected.prediction)
            assert not exits[-2:].any()  # undefined softmax: never exits


class FakeKernel:
    """A stand-in for the kernel module: records every launch and writes the reference's
    decision (no triton needed), or ``prediction_value`` as the prediction when given. With
    ``edges``, it checks that the launch got their float32 lookup and decides with them."""

    def __init__(
        self,
        threshold: float,
        prediction_value: int | None = None,
        edges: torch.Tensor | None = None,
    ) -> None:
        self.threshold = threshold
        self.prediction_value = prediction_value
        self.edges = edges
        self.launches: list[dict[str, object]] = []

    def launch_exit_decision(
        self,
        logits: torch.Tensor,
        *,
        kind: ExitKind,
        prediction: torch.Tensor,
        exit_mask: torch.Tensor,
        **prepared: object,
    ) -> None:
        self.launches.append({"kind": kind, **prepared})
        table, lookup = prepared["table"], prepared["edges"]
        assert table is None or isinstance(table, torch.Tensor)
        if self.edges is None:
            assert lookup is None  # equal-width bins: the kernel's fast path
        else:
            assert isinstance(lookup, torch.Tensor)
            assert torch.equal(lookup, float32_edges(self.edges))
        decision = exit_decision_reference(
            logits, self.threshold, kind=kind, table=table, edges=self.edges
        )
        exit_mask.copy_(decision.exit_mask)
        if self.prediction_value is None:
            prediction.copy_(decision.prediction)
        else:
            prediction.fill_(self.prediction_value)


def use_fake_kernel(monkeypatch: pytest.MonkeyPatch, kernel: FakeKernel) -> None:
    """Make the kernel runnable on CPU tensors, with ``kernel`` as its module."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dispatch, "import_triton_kernel", lambda: kernel)


def counting(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Count the calls of ``module.name`` (one list entry per call)."""
    calls: list[int] = []
    original = getattr(module, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize(("kind", "with_edges"), [*((k, False) for k in KINDS), ("table", True)])
def test_decider_prepares_the_kernel_path_once(
    monkeypatch: pytest.MonkeyPatch, kind: ExitKind, with_edges: bool
) -> None:
    """On the kernel's path the rule is validated, the backend resolved and the table (and the
    lookup of the edges) derived once; each call is one launch that writes no confidence or
    score, and its prediction comes back to the caller."""
    edges = make_edges(10, seed=2) if with_edges else None
    kernel = FakeKernel(0.4, edges=edges)
    use_fake_kernel(monkeypatch, kernel)
    rules = counting(monkeypatch, decider_module, "check_exit_rule")
    passes = counting(monkeypatch, decider_module, "table_passes")
    resolved = counting(monkeypatch, dispatch, "device_unavailable_reasons")
    tables = torch.stack([make_table(10, seed=4), make_table(10, seed=5)], dim=1)
    table = tables[:, 1] if kind == "table" else None  # a column: not contiguous
    decider = ExitDecider(0.4, kind=kind, table=table, edges=edges, backend="triton")
    for seed in range(3):
        logits = make_logits(12, 30, torch.float32, seed=seed)
        expected = exit_decision_reference(logits, 0.4, kind=kind, table=table, edges=edges)
        stays, predicted = decider.decide(logits)
        assert torch.equal(stays, ~expected.exit_mask)
        assert predicted is not None
        assert torch.equal(predicted, expected.prediction)
    assert (len(rules), len(resolved)) == (1, 1)
    assert len(passes) == (1 if kind == "table" else 0)
    assert len(kernel.launches) == 3
    first = kernel.launches[0]
    assert first.get("scores") is None  # nothing computed only to be dropped
    for launch in kernel.launches[1:]:  # the very same prepared tensors every time
        assert launch["table"] is first["table"]
        assert launch["passes"] is first["passes"]
        assert launch["edges"] is first["edges"]
    if kind == "table":
        assert isinstance(first["table"], torch.Tensor)
        assert first["table"].is_contiguous()


@pytest.mark.parametrize("kind", KINDS)
def test_decider_takes_logits_too_wide_for_the_kernel_to_torch(
    monkeypatch: pytest.MonkeyPatch, kind: ExitKind
) -> None:
    """Backend "auto" where the kernel runs: logits past its column span go to the torch path
    (prepared beside the kernel's); "triton" refuses them, saying why."""
    monkeypatch.setattr(decider_module, "kernel_for", lambda device, backend: FakeKernel(0.4))
    for module in (decider_module, dispatch):
        monkeypatch.setattr(module, "MAX_TRITON_COLUMN_SPAN", 16)
    table = make_table(10, seed=4) if kind == "table" else None
    decider = ExitDecider(0.4, kind=kind, table=table)
    for n_cols, kernel in ((30, False), (10, True)):
        logits = make_logits(12, n_cols, torch.float32, seed=n_cols)
        stays, predicted = decider.decide(logits)
        expected = exit_decision_reference(logits, 0.4, kind=kind, table=table)
        assert torch.equal(stays, ~expected.exit_mask)
        assert (predicted is not None) == kernel
    strict = ExitDecider(0.4, kind=kind, table=table, backend="triton")
    with pytest.raises(AdaptixError, match="C × column stride = 30 exceeds 16"):
        strict.decide(make_logits(12, 30, torch.float32, seed=1))


def test_decider_where_the_kernel_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Backend "triton" where the kernel cannot run: the error lists the reasons on every call;
    "auto" falls back to the reference."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "import_triton_kernel", lambda: "ModuleNotFoundError: triton")
    logits = make_logits(6, 9, torch.float32, seed=1)
    strict = ExitDecider(0.5, kind="entropy", backend="triton")
    for _ in range(2):
        with pytest.raises(AdaptixError, match=r"not cuda.*triton is not importable"):
            strict.decide(logits)
    stays, predicted = ExitDecider(0.5, kind="entropy").decide(logits)
    assert predicted is None
    assert torch.equal(stays, ~exit_decision_reference(logits, 0.5, kind="entropy").exit_mask)


@pytest.mark.parametrize("bins", [1, 2, 3, 7, 10, 15, 64, 100, 1000])
def test_bin_edges_bucketize_exactly_as_bin_index(bins: int) -> None:
    """Every float32 within 64 ulp of every edge, and a dense grid: the same bin both ways."""
    edges = bin_edges(bins)
    assert edges.dtype == torch.float32
    assert edges.shape == (bins,)
    assert edges[-1] == math.inf
    near = [
        np.nextafter(np.float32(k / bins), np.float32(direction), dtype=np.float32)
        for k in range(1, bins)
        for direction in (-1.0, 2.0)
    ]
    probes = [np.float32(0.0), np.float32(1.0)]
    for start in near:
        value = start
        for _ in range(64):
            probes += [value]
            value = np.nextafter(value, np.float32(2.0), dtype=np.float32)
        value = start
        for _ in range(64):
            probes += [value]
            value = np.nextafter(value, np.float32(-1.0), dtype=np.float32)
    confidence = torch.cat(
        [torch.tensor(np.array(probes, dtype=np.float32)), torch.rand(100_000), torch.ones(1)]
    ).clamp_(0.0, 1.0)
    assert torch.equal(torch.bucketize(confidence, edges, right=True), bin_index(confidence, bins))
    assert int(torch.bucketize(torch.tensor([math.nan]), edges, right=True)) == bins


@pytest.mark.parametrize(
    ("threshold", "kind", "table", "backend", "message"),
    [
        (math.nan, "confidence", None, "auto", "threshold to be a finite real number"),
        (0.5, "margin", None, "auto", "kind in"),
        (0.5, "table", None, "auto", "table of bin accuracies"),
        (0.5, "confidence", torch.rand(10), "auto", "no table"),
        (0.5, "table", torch.arange(10), "auto", "1-D floating table"),
        (0.5, "confidence", None, "cuda", "backend in"),
    ],
)
def test_decider_refuses_a_bad_rule_when_built(
    threshold: float, kind: str, table: object, backend: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ExitDecider(threshold, kind=kind, table=table, backend=backend)  # type: ignore[arg-type]  # deliberately wrong


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (torch.randn(5), "shape [N, C]"),
        (torch.randn(2, 5).double(), "float32, float16 or bfloat16"),
        (torch.randn(2, 0), "C >= 1"),
        ([[0.1, 0.9]], "torch.Tensor"),
    ],
)
def test_decider_refuses_bad_logits(logits: object, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ExitDecider(0.5, kind="confidence")(logits)  # type: ignore[arg-type]  # deliberately wrong


EDGES_11 = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)


@pytest.mark.parametrize(
    ("kind", "edges", "message"),
    [
        ("confidence", EDGES_11, "no table and no bin edges for kind='confidence', got bin edges"),
        ("table", EDGES_11[:10], "M + 1 = 11 values .*, got torch.float64 of shape [10] on cpu"),
        ("table", EDGES_11.reshape(1, 11), "got torch.float64 of shape [1, 11]"),
        ("table", torch.arange(11), "got torch.int64 of shape [11]"),
        ("table", torch.empty(11, device="meta"), "of shape [11] on meta"),
        ("table", EDGES_11.tolist(), "bin edges as a torch.Tensor, got list"),
        ("table", EDGES_11.flip(0), "non-decreasing bin edges from 0 to 1, got [1.0, 0.9"),
        ("table", EDGES_11 * 0.9 + 0.1, "from 0 to 1, got [0.1, 0.19"),
        ("table", EDGES_11 * 0.9, "from 0 to 1, got [0.0, 0.09"),
        ("table", EDGES_11.index_fill(0, torch.tensor([3]), math.nan), "finite, non-decreasing"),
    ],
    ids=[
        "other-kind",
        "too-few",
        "2-d",
        "integers",
        "meta",
        "list",
        "decreasing",
        "from-0.1",
        "to-0.9",
        "nan",
    ],
)
@pytest.mark.parametrize("entry", ["decider", "exit_decision"])
def test_bad_bin_edges_are_refused(kind: str, edges: object, message: str, entry: str) -> None:
    table = make_table(10, seed=1) if kind == "table" else None
    pattern = re.escape(message).replace(re.escape(".*"), ".*")
    rule = {"kind": kind, "table": table, "edges": edges}
    build: Callable[[], object] = (
        (lambda: ExitDecider(0.5, **rule))  # type: ignore[arg-type]  # deliberately wrong
        if entry == "decider"
        else (lambda: exit_decision(torch.randn(2, 5), 0.5, **rule))  # type: ignore[arg-type]  # deliberately wrong
    )
    with pytest.raises(ValidationError, match=pattern):
        build()


# --- validation and dispatch ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("logits", "threshold", "kind", "table", "message"),
    [
        (torch.randn(5), 0.5, "confidence", None, "shape [N, C]"),
        (torch.randn(2, 5).double(), 0.5, "confidence", None, "float32, float16 or bfloat16"),
        (torch.ones(2, 5, dtype=torch.int64), 0.5, "confidence", None, "float32, float16"),
        (torch.randn(2, 0), 0.5, "confidence", None, "C >= 1"),
        ([[0.1, 0.9]], 0.5, "confidence", None, "torch.Tensor"),
        (torch.randn(2, 5), math.nan, "confidence", None, "threshold to be a finite real number"),
        (torch.randn(2, 5), math.inf, "entropy", None, "threshold to be a finite real number"),
        (torch.randn(2, 5), True, "confidence", None, "threshold to be a real number, got True"),
        (torch.randn(2, 5), torch.tensor(0.5), "confidence", None, "real threshold"),
        (torch.randn(2, 5), 0.5, "margin", None, "kind in"),
        (torch.randn(2, 5), 0.5, "table", None, "table of bin accuracies"),
        (torch.randn(2, 5), 0.5, "confidence", torch.rand(10), "no table"),
        (torch.randn(2, 5), 0.5, "table", torch.rand(2, 5), "1-D floating table"),
        (torch.randn(2, 5), 0.5, "table", torch.arange(10), "1-D floating table"),
        (torch.randn(2, 5), 0.5, "table", torch.empty(0), "1-D floating table"),
    ],
)
@pytest.mark.parametrize("backend", ["torch", "auto", "triton"])
def test_invalid_inputs_are_rejected(
    logits: object, threshold: object, kind: str, table: object, message: str, backend: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as error:
        exit_decision(logits, threshold, kind=kind, table=table, backend=backend)  # type: ignore[arg-type]  # deliberately wrong types
    assert str(error.value).startswith("expected ")


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValidationError, match="backend in"):
        exit_decision(torch.randn(2, 3), 0.5, kind="confidence", backend="cuda")  # type: ignore[arg-type]  # deliberately wrong


def _fail_if_imported() -> str:
    pytest.fail("the triton kernel was imported on the reference path")


def test_auto_on_cpu_uses_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    for interpret in ("0", "1"):  # not even the interpreter: it is far slower than torch
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
        monkeypatch.setattr(dispatch, "import_triton_kernel", _fail_if_imported)
        logits = make_logits(12, 30, torch.float16, seed=1)
        table = make_table(10, seed=2)
        got = exit_decision(logits, 0.4, kind="table", table=table)
        want = exit_decision_reference(logits, 0.4, kind="table", table=table)
        for got_field, want_field in zip(got, want, strict=True):
            assert torch.equal(got_field.nan_to_num(), want_field.nan_to_num())


def test_explicit_triton_on_cpu_raises_with_its_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(AdaptixError, match="logits are on cpu, not cuda") as error:
        exit_decision(torch.randn(3, 4), 0.5, kind="confidence", backend="triton")
    assert "backend='auto'" in str(error.value)


def test_every_reason_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(
        dispatch, "import_triton_kernel", lambda: "ModuleNotFoundError: No module named 'triton'"
    )
    huge = torch.zeros(2, 1).expand(2, 2**31)  # no memory behind it: stride 0
    table = torch.empty(10, dtype=torch.float64, device="meta")
    with pytest.raises(AdaptixError) as error:
        exit_decision(huge, 0.5, kind="table", table=table, backend="triton")
    message = str(error.value)
    for reason in (
        "logits are on cpu, not cuda",
        "exceeds 1073741824",
        "table is on meta, logits on cpu",
        "triton is not importable: ModuleNotFoundError",
    ):
        assert reason in message
    reasons = triton_unavailable_reasons(torch.zeros(2, 3, dtype=torch.float64))
    assert any("dtype torch.float64" in reason for reason in reasons)
    elsewhere = torch.empty(11, dtype=torch.float64, device="meta")
    reasons = triton_unavailable_reasons(torch.zeros(2, 3), table=table, edges=elsewhere)
    assert "edges is on meta, logits on cpu; move it with edges.to(logits.device)" in reasons


def test_interpreter_makes_cpu_tensors_runnable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    # A stand-in launcher: importing the real module here would decorate the kernel for the
    # interpreter in this process.
    stand_in = types.SimpleNamespace(exit_decision_triton=exit_decision_reference)
    monkeypatch.setattr(dispatch, "import_triton_kernel", lambda: stand_in)
    assert triton_unavailable_reasons(torch.randn(3, 4)) == []


def test_only_the_triton_module_imports_triton() -> None:
    # torch itself may import triton (torch.utils.flop_counter does when it is installed), so
    # sys.modules cannot tell who asked for it: read the import statements instead.
    for path in sorted((REPO / "adaptix" / "kernels").glob("*.py")):
        if path.name == "triton_kernel.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "triton" for name in names), path.name
            if "triton_kernel" in names or "adaptix.kernels.triton_kernel" in names:
                assert node not in tree.body, f"{path.name} imports the kernel module eagerly"


def test_kernels_work_without_triton() -> None:
    script = textwrap.dedent(
        """
        import sys

        class NoTriton:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "triton":
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, NoTriton())
        import torch
        import adaptix
        import adaptix.kernels

        logits = torch.randn(4, 6)
        decision = adaptix.kernels.exit_decision(logits, 0.5, kind="entropy")
        assert decision.exit_mask.shape == (4,)
        assert "adaptix.kernels.triton_kernel" not in sys.modules
        reasons = adaptix.kernels.triton_unavailable_reasons(logits)
        assert any(r.startswith("triton is not importable") for r in reasons), reasons
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
