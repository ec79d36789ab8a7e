"""What the public-API fuzz test (`test_fuzz_api.py`) draws from, and how it judges a call.

Every call goes through `outcome`: its result, or the `AdaptixError` it raised; any other
exception fails the test on the spot, naming the call and its arguments. Strategies that corrupt
an input say so: they return the input together with the list of problems they planted, so the
test knows, independently of adaptix, whether the call must fail (a planted hard problem), must
succeed (none), or may do either (only soft problems, such as a value adaptix could reasonably
convert).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from hypothesis import strategies as st
from torch import Tensor, nn

import adaptix
from adaptix import AdaptixError
from adaptix.components import Calibrator, ExitCriterion
from adaptix.core.calibration import Calibration
from adaptix.plugins import AdaptixPluginManager
from adaptix.settings import Settings

NAN = float("nan")
INF = float("inf")

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
OTHER_DTYPES = (torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64)

Verdict = Literal["valid", "invalid", "either"]


# ------------------------------------------------------------------------------ judging calls


def describe(value: Any) -> str:
    """A short description of an argument: tensors by dtype, shape and non-finite count."""
    if isinstance(value, Tensor):
        bad = ""
        if value.is_floating_point() or value.is_complex():
            count = int((~torch.isfinite(value)).sum())
            bad = f", {count} non-finite" if count else ""
        return f"tensor({value.dtype}, {list(value.shape)}{bad})"
    if isinstance(value, nn.Module):
        return type(value).__name__
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, tuple):
        return f"({', '.join(describe(v) for v in value)}{',' if len(value) == 1 else ''})"
    if isinstance(value, list):
        return f"[{', '.join(describe(v) for v in value)}]"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def call_text(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """``name(arg, key=value)`` with `describe`d arguments."""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    parts = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or the `AdaptixError` it raised.

    Raises:
        AssertionError: ``fn`` raised anything else; the message names the call.
    """
    try:
        return fn(*args, **kwargs)
    except AdaptixError as err:
        return err
    except Exception as err:
        raise AssertionError(
            f"{call_text(fn, args, kwargs)} raised {type(err).__name__}: {err} "
            "(expected a valid result or an adaptix.AdaptixError)"
        ) from err


def must_raise(result: Any, kind: type[AdaptixError], what: str) -> AdaptixError:
    """``result`` must be an error of ``kind``; returns it."""
    if isinstance(result, kind):
        return result
    if isinstance(result, AdaptixError):
        raise AssertionError(
            f"{what}: expected {kind.__name__}, got {type(result).__name__}: {result}"
        )
    raise AssertionError(f"{what}: expected {kind.__name__}, but it returned {describe(result)}")


def must_succeed(result: Any, what: str) -> Any:
    """``result`` must not be an error; returns it."""
    if isinstance(result, AdaptixError):
        raise AssertionError(f"{what}: valid input refused with {type(result).__name__}: {result}")
    return result


def judge(result: Any, verdict: Verdict, kind: type[AdaptixError], what: str) -> bool:
    """Check ``result`` against ``verdict``; True when it is a result to check further."""
    if verdict == "valid":
        must_succeed(result, what)
        return True
    if verdict == "invalid":
        must_raise(result, kind, what)
        return False
    return not isinstance(result, AdaptixError)


def combine(problems: Sequence[tuple[str, bool]]) -> Verdict:
    """The verdict of planted problems: (description, hard?) pairs."""
    if any(hard for _, hard in problems):
        return "invalid"
    return "either" if problems else "valid"


# ---------------------------------------------------------------------------- scalar values


#: Values that are never a real number.
NOT_NUMBERS: tuple[Any, ...] = (
    None,
    "0.5",
    "",
    b"1",
    [0.5],
    (0.5,),
    {"t": 0.5},
    0.5j,
    object(),
    torch.tensor([0.5, 0.5]),
)
#: Reals that break most ranges.
BAD_REALS: tuple[Any, ...] = (NAN, INF, -INF, -0.5, -1e-12, 1 + 1e-12, 1.5, 2, -1, 1e308)
#: Booleans pass isinstance(x, int); adaptix must refuse them as numbers.
BOOLS: tuple[Any, ...] = (True, False, np.bool_(True))
#: Real numbers in [0, 1] in several types.
UNIT_REALS: tuple[Any, ...] = (
    0.0,
    1.0,
    0.5,
    0,
    1,
    -0.0,
    Fraction(1, 3),
    np.float32(0.25),
    np.float64(0.75),
    np.int64(1),
    5e-324,
    1 - 2**-53,
)
#: Numbers adaptix may convert or refuse (not `numbers.Real`, but hold a number).
CONVERTIBLE: tuple[Any, ...] = (torch.tensor(0.5), np.array(0.5))


def is_real(value: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def finite_real(value: Any) -> bool:
    """A real, non-bool, finite number."""
    return is_real(value) and math.isfinite(float(value))


def convertible_number(value: Any) -> float | None:
    """The number a `CONVERTIBLE` value holds (a one-element numeric tensor or array), or None."""
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf":
        return float(value)
    if isinstance(value, Tensor) and value.numel() == 1 and value.dtype in FLOAT_DTYPES:
        return float(value)
    return None


def unit_verdict(value: Any) -> Verdict:
    """Whether ``value`` is a number in [0, 1] (thresholds of the built-in criteria, δ).

    A Python float or int is valid; another real (Fraction, numpy scalar) or a one-element
    tensor may be converted or refused.
    """
    held = float(value) if is_real(value) else convertible_number(value)
    if held is None or not 0.0 <= held <= 1.0:
        return "invalid"
    return "valid" if isinstance(value, (float, int)) else "either"


def count_verdict(value: Any, minimum: int = 1) -> Verdict:
    """Whether ``value`` is an integer >= ``minimum`` (patience, bins, epochs, ...).

    A Python int is valid; an integral float or a numpy integer may be converted or refused.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return "valid" if value >= minimum else "invalid"
    held = float(value) if is_real(value) else convertible_number(value)
    if held is not None and math.isfinite(held) and held.is_integer() and held >= minimum:
        return "either"
    return "invalid"


def thresholds(extra: Sequence[Any] = ()) -> st.SearchStrategy[Any]:
    """Anything a user might pass as a threshold: good, out of range, and not a number."""
    good = st.floats(0.0, 1.0) | st.sampled_from(UNIT_REALS)
    bad = st.sampled_from((*BAD_REALS, *BOOLS, *NOT_NUMBERS, *CONVERTIBLE)) | st.floats()
    options = [good, bad]
    if extra:
        options.insert(0, st.sampled_from(list(extra)))
    return st.one_of(options)


def counts(extra: Sequence[Any] = ()) -> st.SearchStrategy[Any]:
    """Anything a user might pass as an integer count (bins, patience, epochs, ...)."""
    good = st.integers(1, 6)
    bad = st.sampled_from((0, -1, 2.5, 3.0, NAN, INF, *BOOLS, *NOT_NUMBERS, np.int64(2)))
    options = [good, bad]
    if extra:
        options.insert(0, st.sampled_from(list(extra)))
    return st.one_of(options)


# --------------------------------------------------------------------------------- tensors


def random_values(generator: torch.Generator, shape: tuple[int, ...], style: str) -> Tensor:
    """float64 values of one of three styles: gaussian, coarse (ties), peaked (saturated)."""
    if style == "coarse":
        return torch.randint(-2, 3, shape, generator=generator).double()
    if style == "peaked":
        return torch.randn(shape, generator=generator, dtype=torch.float64) * 40.0
    return torch.randn(shape, generator=generator, dtype=torch.float64) * 2.0


@st.composite
def tensors(
    draw: st.DrawFn,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    *,
    specials: int = 0,
) -> Tensor:
    """A tensor of ``shape`` and ``dtype`` with up to ``specials`` NaN/±inf values planted."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    style = draw(st.sampled_from(["gauss", "coarse", "peaked"]))
    values = random_values(generator, shape, style)
    if dtype == torch.bool:
        return values > 0
    if not (dtype.is_floating_point or dtype.is_complex):
        return values.clamp(0 if dtype == torch.uint8 else -100, 100).round().to(dtype)
    size = values.numel()
    if size and specials:
        flat = values.flatten()
        for _ in range(draw(st.integers(1, specials))):
            flat[draw(st.integers(0, size - 1))] = draw(st.sampled_from([NAN, INF, -INF]))
        values = flat.view(shape)
    if dtype.is_complex:
        return torch.complex(values.float(), values.float().flip(-1) if values.dim() else values)
    return values.to(dtype)


def non_finite(tensor: Tensor) -> bool:
    """Whether a floating or complex tensor holds NaN or ±inf."""
    if tensor.is_floating_point() or tensor.is_complex():
        return not bool(torch.isfinite(tensor).all())
    return False


# ------------------------------------------------------------------------------ tiny models


def tiny_model(num_exits: int, dim: int, num_classes: int, seed: int) -> adaptix.MultiExitModel:
    """A `MultiExitModel` of ``nn.Linear`` blocks (dim → dim) and heads (dim → C).

    Weights and biases are small dyadic rationals, so on inputs of small dyadic values every
    block and head computes exactly in float32, whatever the batch composition: the runner's
    compacted batches and a full-batch trace then see the very same logits.
    """
    generator = torch.Generator().manual_seed(seed)
    blocks, heads = nn.ModuleList(), nn.ModuleList()
    for _ in range(num_exits):
        block, head = nn.Linear(dim, dim), nn.Linear(dim, num_classes)
        with torch.no_grad():
            block.weight.copy_(torch.randint(-1, 2, (dim, dim), generator=generator) / 2)
            block.bias.copy_(torch.randint(-1, 2, (dim,), generator=generator) / 2)
            head.weight.copy_(torch.randint(-3, 4, (num_classes, dim), generator=generator) / 4)
            head.bias.copy_(torch.randint(-3, 4, (num_classes,), generator=generator) / 4)
        blocks.append(block)
        heads.append(head)
    return adaptix.MultiExitModel(blocks, heads).eval()


def tiny_inputs(rows: int, dim: int, seed: int) -> Tensor:
    """float32 inputs of small dyadic values (see `tiny_model`)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, (rows, dim), generator=generator).float() / 2


# ------------------------------------------------------------------- arguments with problems

BUILTIN_CRITERIA = ("confidence", "entropy", "patience", "pcee", "pcee_ws")


@st.composite
def trace_arguments(draw: st.DrawFn) -> tuple[Any, Any, Any, Any, list[tuple[str, bool]]]:
    """(logits, labels, costs, meta, planted problems) for `adaptix.Trace`."""
    problems: list[tuple[str, bool]] = []
    n, e, c = draw(st.integers(0, 5)), draw(st.integers(0, 4)), draw(st.integers(0, 5))
    rank = draw(st.sampled_from([3, 3, 3, 3, 3, 3, 0, 1, 2, 4]))
    shape: tuple[int, ...] = (n, e, c)
    if rank != 3:
        shape = tuple(draw(st.integers(1, 3)) for _ in range(rank))
        problems.append((f"logits of rank {rank}", True))
    elif 0 in shape:
        problems.append((f"empty logits {list(shape)}", True))
    dtype = draw(st.sampled_from(FLOAT_DTYPES * 3 + OTHER_DTYPES))
    if dtype not in FLOAT_DTYPES:
        problems.append((f"{dtype} logits", True))
    logits: Any = draw(tensors(shape, dtype, specials=draw(st.sampled_from([0, 0, 0, 2]))))
    if non_finite(logits):
        problems.append(("non-finite logits", True))
    if draw(st.integers(0, 9)) == 0:
        logits = logits.tolist()
        problems.append(("logits as a list", True))

    rows = shape[0] if shape else 0
    classes = shape[-1] if shape else 0
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    good_labels = torch.randint(max(classes, 1), (rows,), generator=generator)
    label_kind = draw(
        st.sampled_from(["none", "good", "good", "good", "int32", "float", "big", "negative"])
        | st.sampled_from(["shape", "list", "bool"])
    )
    labels: Any = {
        "none": None,
        "good": good_labels,
        "int32": good_labels.int(),
        "float": good_labels.float(),
        "big": good_labels + max(classes, 1),
        "negative": good_labels - max(classes, 1),
        "shape": torch.zeros(rows + 1, dtype=torch.long),
        "list": good_labels.tolist(),
        "bool": good_labels > 0,
    }[label_kind]
    if label_kind in ("int32", "float", "shape", "list", "bool") or (
        label_kind in ("big", "negative") and rows > 0
    ):
        problems.append((f"labels: {label_kind}", True))

    exits = shape[1] if len(shape) > 1 else 1
    steps = torch.randint(0, 3, (exits,), generator=generator).double()
    if exits:
        steps[0] += 1.0
    good_costs = steps.cumsum(0)
    cost_kind = draw(
        st.sampled_from(["list", "tuple", "float64", "float32", "int64", "numpy"])
        | st.sampled_from(["length", "nan", "inf", "negative", "decreasing", "zero", "str"])
        | st.sampled_from(["none", "nested"])
    )
    bad_costs = {
        "length": [*good_costs.tolist(), 99.0],
        "nan": [*good_costs.tolist()[:-1], NAN],
        "inf": [*good_costs.tolist()[:-1], INF],
        "negative": [-1.0, *good_costs.tolist()[1:]],
        "decreasing": list(range(exits, 0, -1)),
        "zero": [0.0] * exits,
        "str": "1,2,3",
        "none": None,
        "nested": [good_costs.tolist()],
    }
    costs: Any = {
        "list": good_costs.tolist(),
        "tuple": tuple(good_costs.tolist()),
        "float64": good_costs,
        "float32": good_costs.float(),
        "int64": good_costs.long(),
        "numpy": good_costs.numpy(),
    }.get(cost_kind, bad_costs.get(cost_kind))
    really_bad = cost_kind in bad_costs and not (
        cost_kind in ("negative", "nan", "inf") and exits == 0
    )
    if cost_kind == "decreasing" and exits < 2:
        really_bad = False
    if cost_kind == "negative" and exits == 1:
        really_bad = True
    if really_bad:
        problems.append((f"costs: {cost_kind}", True))
    elif cost_kind == "numpy":
        problems.append(("costs as a numpy array", False))

    meta_kind = draw(st.sampled_from(["none", "empty", "str", "int", "key", "null", "text"]))
    meta: Any = {
        "none": None,
        "empty": {},
        "str": {"model": "tiny", "split": "test"},
        "int": {"model": 1},
        "key": {1: "tiny"},
        "null": {"model": None},
        "text": "model=tiny",
    }[meta_kind]
    if meta_kind in ("int", "key", "null", "text"):
        problems.append((f"meta: {meta_kind}", True))
    return logits, labels, costs, meta, problems


@st.composite
def subsets(draw: st.DrawFn, n: int) -> tuple[Any, str]:
    """(index, verdict) for `Trace.subset` of a trace of ``n`` inputs."""
    kind = draw(
        st.sampled_from(["slice", "rows", "mask", "repeat"])
        | st.sampled_from(["empty_slice", "out_of_range", "short_mask", "false_mask"])
        | st.sampled_from(["float", "int", "none", "text", "list", "negative"])
    )
    k = draw(st.integers(1, n))
    index: Any = {
        "slice": slice(0, k),
        "rows": torch.arange(k),
        "mask": torch.arange(n) < k,
        "repeat": torch.zeros(k + 1, dtype=torch.long),
        "empty_slice": slice(n, n),
        "out_of_range": torch.tensor([n]),
        "short_mask": torch.ones(n + 1, dtype=torch.bool),
        "false_mask": torch.zeros(n, dtype=torch.bool),
        "float": torch.zeros(k),
        "int": 0,
        "none": None,
        "text": "0",
        "list": list(range(k)),
        "negative": torch.tensor([-1]),
    }[kind]
    verdict = (
        "valid"
        if kind in ("slice", "rows", "mask", "repeat")
        else "either"
        if kind in ("list", "negative")
        else "invalid"
    )
    return index, verdict


@st.composite
def calibration_arguments(
    draw: st.DrawFn,
) -> tuple[Any, Any, Any, dict[str, Any], list[tuple[str, bool]]]:
    """(counts, correct, num_classes, keywords, planted problems) for `adaptix.Calibration`."""
    problems: list[tuple[str, bool]] = []
    e, m = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    total = draw(st.integers(1, 12))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    bins = torch.randint(m, (e, total), generator=generator)
    n = torch.stack([torch.bincount(row, minlength=m) for row in bins])
    k = (n.double() * torch.rand(e, m, generator=generator, dtype=torch.float64)).floor().long()
    # A confidence in bin j lies in [j / M, (j + 1) / M]: sums that fit their bins.
    inside = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    confidence_sum = n.double() * inside
    num_classes: Any = draw(st.integers(1, 6))
    keywords: dict[str, Any] = {"confidence_sum": confidence_sum, "method": "reliability"}

    corruption = draw(
        st.sampled_from(["none"] * 8)
        | st.sampled_from(["fractional_counts", "fractional_correct", "negative", "too_correct"])
        | st.sampled_from(["shape_correct", "shape_sum", "one_dimensional", "no_bins", "empty"])
        | st.sampled_from(["uneven_exits", "nan_sum", "inf_sum", "negative_sum", "sum_over_n"])
        | st.sampled_from(["sum_in_empty_bin", "classes", "method", "meta", "integral_floats"])
        | st.sampled_from(["lists", "no_sum"])
    )
    counts_arg: Any = n
    correct_arg: Any = k
    if corruption == "fractional_counts":
        counts_arg = n.double() + 0.5
        problems.append(("fractional counts", True))
    elif corruption == "fractional_correct":
        correct_arg = k.double() + 0.25
        problems.append(("fractional correct", True))
    elif corruption == "negative":
        counts_arg = n.clone()
        counts_arg[0, 0] = -1
        problems.append(("a negative count", True))
    elif corruption == "too_correct":
        correct_arg = n + 1
        problems.append(("more correct than counted", True))
    elif corruption == "shape_correct":
        correct_arg = k[:, :-1] if m > 1 else k.repeat(1, 2)
        problems.append(("correct of another shape", True))
    elif corruption == "shape_sum":
        keywords["confidence_sum"] = confidence_sum.flatten()
        problems.append(("confidence_sum of another shape", True))
    elif corruption == "one_dimensional":
        counts_arg, correct_arg = n.flatten(), k.flatten()
        keywords["confidence_sum"] = confidence_sum.flatten()
        problems.append(("one-dimensional tables", True))
    elif corruption == "no_bins":
        counts_arg = correct_arg = torch.zeros(e, 0, dtype=torch.long)
        keywords["confidence_sum"] = torch.zeros(e, 0)
        problems.append(("no bins", True))
    elif corruption == "empty":
        counts_arg = correct_arg = torch.zeros_like(n)
        keywords["confidence_sum"] = torch.zeros_like(confidence_sum)
        problems.append(("no inputs", True))
    elif corruption == "uneven_exits":
        if e > 1:
            counts_arg = n.clone()
            counts_arg[-1, 0] += 1
            keywords["confidence_sum"] = counts_arg.double() * inside
            problems.append(("exits count different numbers of inputs", True))
    elif corruption in ("nan_sum", "inf_sum", "negative_sum"):
        bad = {"nan_sum": NAN, "inf_sum": INF, "negative_sum": -1.0}[corruption]
        keywords["confidence_sum"] = confidence_sum.clone()
        keywords["confidence_sum"][0, 0] = bad
        problems.append((f"confidence_sum {bad}", True))
    elif corruption == "sum_over_n":
        keywords["confidence_sum"] = n.double() + 1.0
        problems.append(("confidence sums above the counts", True))
    elif corruption == "sum_in_empty_bin":
        empty = (n == 0).nonzero()
        if len(empty):
            keywords["confidence_sum"] = confidence_sum.clone()
            keywords["confidence_sum"][tuple(empty[0].tolist())] = 0.5
            problems.append(("a confidence sum in an empty bin", True))
    elif corruption == "classes":
        num_classes = draw(st.sampled_from([0, -1, 2.5, True, "3", None, NAN]))
        problems.append((f"num_classes={num_classes!r}", True))
    elif corruption == "method":
        keywords["method"] = draw(st.sampled_from([None, 3, ["reliability"]]))
        problems.append((f"method={keywords['method']!r}", True))
    elif corruption == "meta":
        keywords["meta"] = draw(st.sampled_from([{"a": 1}, {1: "a"}, {"a": None}, "a=b"]))
        problems.append((f"meta={keywords['meta']!r}", True))
    elif corruption == "integral_floats":
        counts_arg, correct_arg = n.double(), k.double()
        problems.append(("integral float counts", False))
    elif corruption == "lists":
        counts_arg, correct_arg = n.tolist(), k.tolist()
        keywords["confidence_sum"] = confidence_sum.tolist()
        problems.append(("tables as lists", False))
    elif corruption == "no_sum":
        del keywords["confidence_sum"]
    return counts_arg, correct_arg, num_classes, keywords, problems


FIELD_JUNK: dict[str, tuple[Any, ...]] = {
    "counts": (2.5, -1, "3", None, True, 2**70, [], NAN),
    "correct": (0.5, -1, "0", None, True, 10**9),
    "confidence_sum": (NAN, -1.0, "0.5", None, 1e300),
    "num_classes": (0, -1, 2.5, True, "3", None, 1e10),
    "num_exits": ("2", 2.5, None, True, 99),
    "bins": ("2", 2.5, None, True, 99),
    "method": (5, None, ["reliability"]),
    "meta": (5, "x", {"a": 1}, {"a": None}, [], [["a", "b"]]),
}


def flip_field(document: dict[str, Any], field: str, value: Any, position: int) -> dict[str, Any]:
    """The document with ``field`` (or one cell of a table field) replaced by ``value``."""
    flipped = json.loads(json.dumps(document))
    if field in ("counts", "correct", "confidence_sum"):
        row = flipped[field][position % len(flipped[field])]
        row[position % len(row)] = value
    else:
        flipped[field] = value
    return flipped


@st.composite
def sweep_arguments(draw: st.DrawFn) -> tuple[Any, Any, list[tuple[str, bool]]]:
    """(criteria, thresholds, planted problems) for `adaptix.sweep`."""
    problems: list[tuple[str, bool]] = []
    names = draw(st.lists(st.sampled_from(BUILTIN_CRITERIA), min_size=1, max_size=3, unique=True))
    shape = draw(st.sampled_from(["list", "list", "str", "mapping", "duplicate", "unknown"]))
    criteria: Any = {
        "list": names,
        "str": names[0],
        "mapping": {name: ({"window": 1} if name == "pcee_ws" else {}) for name in names},
        "duplicate": [*names, names[0]],
        "unknown": [*names, "nope"],
    }[shape]
    if shape == "str":
        names = names[:1]
    if shape in ("duplicate", "unknown"):
        problems.append((f"criteria: {shape}", True))

    def grid_for(name: str) -> Any:
        kind = draw(st.sampled_from(["good", "good", "good", "empty", "junk", "tensor"]))
        good = (
            draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
            if name == "patience"
            else draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4))
        )
        if kind == "empty":
            problems.append((f"an empty grid for {name}", True))
            return []
        if kind == "junk":
            bad = draw(st.sampled_from([NAN, -0.5, 1.5, "0.5", None, True]))
            problems.append((f"threshold {bad!r} for {name}", True))
            return [*good, bad]
        return torch.tensor(good, dtype=torch.float64) if kind == "tensor" else good

    how = draw(st.sampled_from(["mapping", "mapping", "none", "shared", "shared_empty"]))
    grids: Any
    if how == "mapping":
        grids = {name: grid_for(name) for name in names}
    elif how == "none":
        grids = None
    elif how == "shared_empty":
        grids = []
        problems.append(("an empty threshold list", True))
    else:
        grids = draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4))
        if "patience" in names and any(not float(t).is_integer() or t < 1 for t in grids):
            problems.append(("fractional thresholds for patience", True))
    return criteria, grids, problems


@st.composite
def exit_rules(draw: st.DrawFn) -> tuple[Any, Any, Any, Any, list[tuple[str, bool]]]:
    """(threshold, kind, table, backend, planted problems) for an exit decision."""
    problems: list[tuple[str, bool]] = []
    threshold = draw(thresholds([-3.0, 2.0, 1e30]))
    if not finite_real(threshold):
        held = convertible_number(threshold)
        soft = held is not None and math.isfinite(held)
        problems.append((f"threshold {describe(threshold)}", not soft))
    kind = draw(st.sampled_from(["confidence", "entropy", "table"] * 3 + ["margin", None, 3]))
    if kind not in ("confidence", "entropy", "table"):
        problems.append((f"kind {kind!r}", True))
    bins = draw(st.integers(1, 6))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    good_table = (torch.randint(0, 5, (bins,), generator=generator) / 4).double()
    good_table[torch.rand(bins, generator=generator) < 0.3] = NAN
    table_kind = draw(st.sampled_from(["none", "good", "good", "half", "2d", "int", "empty"]))
    table: Any = {
        "none": None,
        "good": good_table,
        "half": good_table.half(),
        "2d": good_table.unsqueeze(0),
        "int": good_table.nan_to_num(0).long(),
        "empty": good_table[:0],
    }[table_kind]
    if kind == "table" and table_kind not in ("good", "half"):
        problems.append((f"table {table_kind} for kind 'table'", True))
    if kind in ("confidence", "entropy") and table is not None:
        problems.append((f"a table for kind {kind!r}", True))
    backend = draw(st.sampled_from(["auto", "torch"] * 4 + ["triton", "cuda", None]))
    if backend not in ("auto", "torch"):
        problems.append((f"backend {backend!r} on a CPU", True))
    return threshold, kind, table, backend, problems


@st.composite
def exit_logits(draw: st.DrawFn) -> tuple[Tensor, list[tuple[str, bool]]]:
    """Logits for an exit decision (any rank, dtype, NaN/±inf) and their planted problems."""
    problems: list[tuple[str, bool]] = []
    rank = draw(st.sampled_from([2] * 8 + [1, 3]))
    shape = (draw(st.integers(0, 6)), draw(st.integers(0, 5)))
    if rank != 2:
        shape = tuple(draw(st.integers(1, 3)) for _ in range(rank))
        problems.append((f"logits of rank {rank}", True))
    elif shape[1] == 0:
        problems.append(("no classes", True))
    dtype = draw(st.sampled_from((torch.float32, torch.float16, torch.bfloat16) * 3 + OTHER_DTYPES))
    dtype = draw(st.sampled_from([dtype, dtype, dtype, torch.float64]))
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        problems.append((f"{dtype} logits", True))
    return draw(tensors(shape, dtype, specials=draw(st.sampled_from([0, 0, 3])))), problems


@st.composite
def model_parts(draw: st.DrawFn) -> tuple[Any, Any, dict[str, Any], list[tuple[str, bool]], int]:
    """(blocks, heads, keywords, planted problems, dim) for `adaptix.MultiExitModel`."""
    problems: list[tuple[str, bool]] = []
    e, d, c = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    model = tiny_model(e, d, c, draw(st.integers(0, 2**31 - 1)))
    blocks: Any = model.blocks
    heads: Any = model.heads
    shape = draw(st.sampled_from(["good"] * 6 + ["lists", "fewer_heads", "none", "empty"]))
    if shape == "lists":
        blocks, heads = list(blocks), list(heads)
    elif shape == "fewer_heads":
        heads = nn.ModuleList(list(heads)[:-1]) if e > 1 else nn.ModuleList(list(heads) * 2)
    elif shape == "none":
        blocks = None
    elif shape == "empty":
        blocks, heads = nn.ModuleList(), nn.ModuleList()
    if shape != "good":
        problems.append((f"blocks/heads: {shape}", True))
    feature = draw(st.sampled_from(["none", "identity", "lambda", "text", "number"]))
    keywords: dict[str, Any] = {
        "feature": {
            "none": None,
            "identity": nn.Identity(),
            "lambda": lambda x: x,
            "text": "identity",
            "number": 3,
        }[feature]
    }
    if feature in ("text", "number"):
        problems.append((f"feature: {feature}", True))
    input_shape = draw(st.sampled_from(["none", "good", "number", "text", "negative"]))
    keywords["input_shape"] = {
        "none": None,
        "good": (d,),
        "number": d,
        "text": ("d",),
        "negative": (-1,),
    }[input_shape]
    if input_shape in ("number", "text", "negative"):
        problems.append((f"input_shape: {input_shape}", True))
    return blocks, heads, keywords, problems, d


# ---------------------------------------------------------------------- broken plugin parts

PLUGIN_NAME = "fuzz_plugin"

#: How a fuzzed criterion misbehaves, and whether that is still a valid criterion.
CRITERION_BEHAVIOURS: dict[str, bool] = {
    "score_raises": False,
    "score_returns_list": False,
    "score_shape_one": False,  # [1]: valid only for a single row
    "score_shape_column": False,  # [n, 1]
    "score_shape_extra_row": False,  # [n + 1]
    "score_complex": False,
    "score_without_state": False,  # returns the tensor alone, not (score, state)
    "score_nan": True,  # NaN never fires: everything leaves at the last exit
    "score_integers": True,  # an int64 score is still a number
    "start_raises": False,
    "select_state_raises": False,  # only wrong where rows leave and others stay
    "threshold_junk": False,  # validate_threshold returns a string
}


class FuzzCriterion(ExitCriterion):
    """Confidence (top softmax probability) with one planted misbehaviour, by subclass.

    The state is each row's original position, so `select_state` has something to select.
    """

    behaviour: ClassVar[str] = "none"

    @classmethod
    def validate_threshold(cls, threshold: float) -> float:
        value = super().validate_threshold(threshold)
        return str(value) if cls.behaviour == "threshold_junk" else value  # type: ignore[return-value]  # the planted bug

    def start(self, batch_size: int, device: torch.device) -> Any:
        if self.behaviour == "start_raises":
            raise RuntimeError("start broke")
        return torch.arange(batch_size, device=device)

    def select_state(self, state: Any, keep: Tensor) -> Any:
        if self.behaviour == "select_state_raises":
            raise KeyError("select_state broke")
        return state[keep]

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        confidence = torch.softmax(logits.float(), dim=-1).amax(dim=-1)
        behaviour = self.behaviour
        junk: dict[str, Callable[[], Any]] = {
            "score_returns_list": lambda: confidence.tolist(),
            "score_shape_one": lambda: confidence[:1],
            "score_shape_column": lambda: confidence.unsqueeze(1),
            "score_shape_extra_row": lambda: torch.cat([confidence, confidence[:1]]),
            "score_complex": lambda: confidence.to(torch.complex64),
            "score_nan": lambda: torch.full_like(confidence, NAN),
            "score_integers": lambda: (confidence * 4).floor().long(),
        }
        if behaviour == "score_raises":
            raise ZeroDivisionError("score broke")
        if behaviour == "score_without_state":
            return confidence  # type: ignore[return-value]  # the planted bug
        return junk.get(behaviour, lambda: confidence)(), state


def fuzz_criterion_classes() -> dict[str, type[FuzzCriterion]]:
    """One registered criterion class per behaviour, named ``fuzz_<behaviour>``."""
    return {
        behaviour: type(
            f"Fuzz_{behaviour}",
            (FuzzCriterion,),
            {"name": f"fuzz_{behaviour}", "behaviour": behaviour, "description": behaviour},
        )
        for behaviour in CRITERION_BEHAVIOURS
    }


def expected_scores(behaviour: str, confidence: Tensor) -> Tensor:
    """The float64 score a valid behaviour gives for these confidences."""
    if behaviour == "score_nan":
        return torch.full_like(confidence, NAN, dtype=torch.float64)
    if behaviour == "score_integers":
        return (confidence.float() * 4).floor().double()
    return confidence.double()


#: How a fuzzed calibrator misbehaves: valid (the honest reliability tables) or not.
CALIBRATOR_BEHAVIOURS: dict[str, bool] = {
    "honest": True,
    "fit_raises": False,
    "returns_none": False,
    "returns_dict": False,
    "returns_tensor": False,
    "returns_wrong_exits": False,
    "returns_wrong_classes": False,
    "returns_wrong_bins": False,
}


class FuzzCalibrator(Calibrator):
    """The built-in reliability tables, with one planted misbehaviour, by subclass."""

    behaviour: ClassVar[str] = "honest"

    def fit(self, trace: adaptix.Trace, bins: int) -> Calibration:
        behaviour = self.behaviour
        if behaviour == "fit_raises":
            raise ValueError("fit broke")
        honest = adaptix.calibrate(trace, bins=bins, plugins=_builtins_only())
        tables = {"method": self.name, "meta": dict(trace.meta)}
        junk: dict[str, Callable[[], Any]] = {
            "returns_none": lambda: None,
            "returns_dict": lambda: {"counts": honest.counts},
            "returns_tensor": lambda: honest.counts,
            "returns_wrong_exits": lambda: Calibration(
                torch.cat([honest.counts, honest.counts]),
                torch.cat([honest.correct, honest.correct]),
                honest.num_classes,
                **tables,
            ),
            "returns_wrong_classes": lambda: Calibration(
                honest.counts, honest.correct, honest.num_classes + 1, **tables
            ),
            "returns_wrong_bins": lambda: Calibration(
                torch.cat([honest.counts, torch.zeros_like(honest.counts)], dim=1),
                torch.cat([honest.correct, torch.zeros_like(honest.correct)], dim=1),
                honest.num_classes,
                **tables,
            ),
        }
        if behaviour in junk:
            return junk[behaviour]()  # type: ignore[no-any-return]  # the planted bug
        return Calibration(
            honest.counts,
            honest.correct,
            honest.num_classes,
            confidence_sum=honest.confidence_sum,
            **tables,
        )


def fuzz_calibrator_classes() -> dict[str, type[FuzzCalibrator]]:
    """One registered calibrator class per behaviour, named ``fuzz_<behaviour>``."""
    return {
        behaviour: type(
            f"FuzzCalibrator_{behaviour}",
            (FuzzCalibrator,),
            {"name": f"fuzz_{behaviour}", "behaviour": behaviour, "description": behaviour},
        )
        for behaviour in CALIBRATOR_BEHAVIOURS
    }


def _builtins_only() -> AdaptixPluginManager:
    return adaptix.get_plugin_manager(settings=Settings(autoload_plugins=False))


# ------------------------------------------------------------------------------ file helpers


def strict_equal(a: Any, b: Any) -> bool:
    """JSON values equal by value, but a bool is not a number and a string is not a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def calibration_digest(payload: Mapping[str, Any]) -> str:
    """The checksum of the calibration file format (SHA-256 of the canonical JSON payload)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
