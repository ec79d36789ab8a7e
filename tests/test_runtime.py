"""The batched runtime and what it stands on: `EarlyExitRunner` against `adaptix.simulate`, its
input checks and measured FLOPs in `MultiExitModel.trace`.

The agreement tests use two small models trained briefly on real Fashion-MNIST (a ResNet-style
CNN and an MLP adapted by the ``sequential`` backbone) and only inputs whose decisions are not
within float32 noise of a boundary: the runner computes later exits on compacted batches, and a
batch of another composition may move a logit by about 1e-6.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import adaptix
from adaptix import (
    CalibrationError,
    EarlyExitRunner,
    ExitPolicy,
    MultiExitModel,
    RunnerOutput,
    ValidationError,
)
from adaptix.core.rows import batch_size
from adaptix.experiment.data import FashionMNIST, load_fashion_mnist
from adaptix.online.model import profile_from_trace
from adaptix.testing import synthetic_trace

CRITERIA = ("confidence", "entropy", "patience", "pcee", "pcee_ws")
MODES = ("compact", "lockstep")
FAMILIES = ("resnet_family", "mlp_family")
BATCH_SIZES = (1, 7, 64, 200)
EVAL_ROWS = 200  # rows of the agreement tests (the largest batch takes them all at once)
SINGLE_ROWS = 16  # batch size 1 costs a call per row: fewer rows suffice
BINS = 10  # the calibration's M
# Decisions of the agreement inputs stay at least this far from every boundary (score against
# threshold, confidence against bin edge, top-1 against top-2 probability).
MARGIN = 1e-4
# Where the thresholds of continuous criteria are sought: quantiles of the early-exit scores.
QUANTILES = (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8)


@dataclass(frozen=True)
class Family:
    """A trained model, inputs far from decision boundaries, their trace and chosen policies."""

    model: MultiExitModel
    inputs: Tensor
    trace: adaptix.Trace
    calibration: adaptix.Calibration
    policies: dict[str, ExitPolicy]


@pytest.fixture(scope="module")
def fashion() -> FashionMNIST:
    """Small deterministic Fashion-MNIST splits."""
    return load_fashion_mnist(calibration_size=1000, train_size=2000, test_size=1000, seed=0)


def unambiguous_rows(trace: adaptix.Trace, count: int) -> Tensor:
    """Indices of the first ``count`` inputs whose predictions and bins are clear at every exit."""
    probs = torch.softmax(trace.logits.float(), dim=-1)
    top2 = probs.topk(2, dim=-1).values
    scaled = top2[..., 0] * BINS
    clear = (top2[..., 0] - top2[..., 1] > MARGIN) & ((scaled - scaled.round()).abs() > MARGIN)
    rows = clear.all(dim=1).nonzero().squeeze(1)
    assert rows.numel() >= count, f"only {rows.numel()} unambiguous rows"
    return rows[:count]


def thresholds_in_gaps(scores: Tensor) -> list[float]:
    """Thresholds near `QUANTILES` of ``scores``, each in a gap at least 2·MARGIN wide."""
    values = scores[torch.isfinite(scores)].flatten().double()
    distinct = values.unique()
    wide = distinct[1:] - distinct[:-1] > 2 * MARGIN
    middles = ((distinct[1:] + distinct[:-1]) / 2)[wide]
    targets = torch.quantile(values, torch.tensor(QUANTILES, dtype=torch.float64))
    return [float(middles[(middles - target).abs().argmin()]) for target in targets]


def spread_policy(base: ExitPolicy, trace: adaptix.Trace) -> ExitPolicy:
    """``base`` at a threshold under which inputs leave at two or more distinct early exits."""
    last = trace.num_exits - 1
    if base.name == "patience":
        candidates = [1.0, 2.0]
    else:
        candidates = thresholds_in_gaps(base.scores(trace.logits)[:, :last])
    for threshold in candidates:
        policy = base.with_threshold(threshold)
        exits = adaptix.simulate(trace, policy).exit_index
        if len(set(exits.tolist()) - {last}) >= 2:
            return policy
    raise AssertionError(f"no threshold of {base.name} spreads inputs over two early exits")


def make_family(model: MultiExitModel, fashion: FashionMNIST) -> Family:
    """Trace and calibrate a trained model; keep clear test inputs; pick a policy per criterion."""
    calibration = adaptix.calibrate(model.trace(*fashion.calibration.pair()), bins=BINS)
    full = model.trace(*fashion.test.pair())
    rows = unambiguous_rows(full, EVAL_ROWS)
    trace = full.subset(rows)
    bases = {
        name: adaptix.policy(name, 1.0, calibration if name.startswith("pcee") else None)
        for name in CRITERIA
    }
    policies = {name: spread_policy(base, trace) for name, base in bases.items()}
    return Family(model, fashion.test.images[rows], trace, calibration, policies)


@pytest.fixture(scope="module")
def resnet_family(fashion: FashionMNIST) -> Family:
    """A small ResNet-style CNN with four exits, trained jointly for one epoch."""
    torch.manual_seed(0)
    # Size "small" with a second block in the middle stage: four exits, so that patience (which
    # cannot fire at exit 0) still has two early exits to choose from.
    model = adaptix.build_model(
        "resnet", 10, backbone_params={"widths": (16, 32, 64), "depths": (1, 2, 1)}
    )
    adaptix.train_exits(
        model, fashion.train.pair(), mode="joint", epochs=1, batch_size=64, lr=1e-2, progress=False
    )
    return make_family(model, fashion)


@pytest.fixture(scope="module")
def mlp_family(fashion: FashionMNIST) -> Family:
    """An nn.Sequential MLP with five exits (one per layer), trained jointly."""
    torch.manual_seed(0)
    width = 64
    stack = nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, width), nn.ReLU()),
        *(nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(4)),
    )
    model = adaptix.build_model(
        "sequential", 10, source=stack, example_input=torch.zeros(2, 1, 28, 28)
    )
    adaptix.train_exits(
        model, fashion.train.pair(), mode="joint", epochs=3, batch_size=64, lr=3e-3, progress=False
    )
    return make_family(model, fashion)


def run_batches(runner: EarlyExitRunner, inputs: Tensor, size: int) -> RunnerOutput:
    """The runner on consecutive batches of ``size`` rows, outputs concatenated."""
    outputs = [runner(inputs[start : start + size]) for start in range(0, len(inputs), size)]
    probabilities = [out.probabilities for out in outputs]
    return RunnerOutput(
        torch.cat([out.predictions for out in outputs]),
        torch.cat([out.exit_index for out in outputs]),
        None if probabilities[0] is None else torch.cat(probabilities),
    )


# ------------------------------------------------------------------- agreement with simulate


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("family_name", FAMILIES)
def test_runner_exits_where_simulate_says(
    request: pytest.FixtureRequest, family_name: str, criterion: str, mode: str
) -> None:
    family: Family = request.getfixturevalue(family_name)
    policy = family.policies[criterion]
    expected = adaptix.simulate(family.trace, policy)
    last = family.model.num_exits - 1
    assert len(set(expected.exit_index.tolist()) - {last}) >= 2
    # Criteria with a fused exit decision take it by default; fused=False takes their score.
    paths = (True, False) if policy.criterion.fused_kind is not None else (True,)
    for fused in paths:
        runner = EarlyExitRunner(family.model, policy, mode=mode, fused=fused)
        for size in BATCH_SIZES:
            rows = SINGLE_ROWS if size == 1 else EVAL_ROWS
            out = run_batches(runner, family.inputs[:rows], size)
            where = f"batch size {size}, fused={fused}"
            assert torch.equal(out.exit_index, expected.exit_index[:rows]), where
            assert torch.equal(out.predictions, expected.predictions[:rows]), where
            assert out.probabilities is None
            assert out.exit_index.dtype == out.predictions.dtype == torch.int64


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family_name", FAMILIES)
def test_probabilities_are_the_softmax_at_the_exit_taken(
    request: pytest.FixtureRequest, family_name: str, mode: str
) -> None:
    family: Family = request.getfixturevalue(family_name)
    policy = family.policies["pcee"]
    expected = adaptix.simulate(family.trace, policy)
    taken = family.trace.logits[torch.arange(EVAL_ROWS), expected.exit_index]
    runner = EarlyExitRunner(family.model, policy, return_probabilities=True, mode=mode)
    for size in (1, 64, EVAL_ROWS):
        rows = SINGLE_ROWS if size == 1 else EVAL_ROWS
        out = run_batches(runner, family.inputs[:rows], size)
        assert out.probabilities is not None
        assert out.probabilities.dtype == torch.float32
        torch.testing.assert_close(
            out.probabilities, torch.softmax(taken[:rows].float(), dim=-1), rtol=0, atol=1e-5
        )
        assert torch.equal(out.probabilities.argmax(dim=-1), out.predictions)
        assert torch.equal(out.exit_index, expected.exit_index[:rows])


@pytest.mark.parametrize("mode", MODES)
def test_blocks_only_see_rows_still_running(resnet_family: Family, mode: str) -> None:
    model = resnet_family.model
    seen: list[list[int]] = [[] for _ in model.blocks]
    hooks = [
        block.register_forward_pre_hook(lambda _, args, e=e: seen[e].append(batch_size(args[0])))
        for e, block in enumerate(model.blocks)
    ]
    try:
        out = EarlyExitRunner(model, resnet_family.policies["pcee"], mode=mode)(
            resnet_family.inputs
        )
    finally:
        for hook in hooks:
            hook.remove()
    exits = out.exit_index
    for e in range(model.num_exits):
        reached = int((exits >= e).sum())
        if mode == "compact":  # block e runs on exactly the rows that did not leave before it
            assert seen[e] == ([reached] if reached else [])
        else:  # the whole batch runs until its last row has left
            assert seen[e] == ([EVAL_ROWS] if reached else [])
    assert bool((exits < model.num_exits - 1).any())  # some rows did leave early


@settings(max_examples=8, deadline=None)
@given(
    threshold=st.floats(0.0, 1.0),
    mode=st.sampled_from(MODES),
    size=st.sampled_from([13, 64, EVAL_ROWS]),
)
def test_any_confidence_threshold_agrees(
    resnet_family: Family, threshold: float, mode: str, size: int
) -> None:
    early = resnet_family.trace.logits[:, :-1].float()
    confidence = torch.softmax(early, dim=-1).amax(dim=-1)
    assume(bool(((confidence.double() - threshold).abs() > MARGIN).all()))
    policy = adaptix.policy("confidence", threshold)
    expected = adaptix.simulate(resnet_family.trace, policy)
    runner = EarlyExitRunner(resnet_family.model, policy, mode=mode)
    out = run_batches(runner, resnet_family.inputs, size)
    assert torch.equal(out.exit_index, expected.exit_index)
    assert torch.equal(out.predictions, expected.predictions)


# --------------------------------------------------------------------------------- bad input


def two_exit_model() -> MultiExitModel:
    """Two ReLU layers on eight features, with a four-class exit after each."""
    torch.manual_seed(0)
    return MultiExitModel(
        nn.ModuleList(
            [
                nn.Sequential(nn.Linear(8, 64), nn.ReLU()),
                nn.Sequential(nn.Linear(64, 64), nn.ReLU()),
            ]
        ),
        nn.ModuleList([nn.Linear(64, 4), nn.Linear(64, 4)]),
    )


@pytest.fixture
def resnet_runner(resnet_family: Family) -> EarlyExitRunner:
    return EarlyExitRunner(resnet_family.model, resnet_family.policies["confidence"])


@pytest.mark.parametrize(
    "inputs",
    [torch.zeros(3, 1, 32, 32), torch.zeros(3, 28, 28), torch.zeros(3, 3, 28, 28)],
    ids=["larger-images", "no-channel-dim", "three-channels"],
)
def test_wrong_input_shape_is_refused(resnet_runner: EarlyExitRunner, inputs: Tensor) -> None:
    with pytest.raises(ValidationError, match=r"shape \[N, 1, 28, 28\]"):
        resnet_runner(inputs)


@pytest.mark.parametrize(
    "inputs",
    [
        {"images": torch.zeros(3, 1, 28, 28), "mask": torch.ones(4)},
        [0.5, 1.5],
        torch.tensor(1.0),
        {"images": torch.zeros(3, 1, 28, 28)},
    ],
    ids=["batch-sizes-disagree", "no-tensor", "scalar", "dict-for-a-tensor-backbone"],
)
def test_wrong_batch_structure_is_refused(resnet_runner: EarlyExitRunner, inputs: object) -> None:
    with pytest.raises(ValidationError):
        resnet_runner(inputs)


def test_empty_batch_is_refused(resnet_runner: EarlyExitRunner) -> None:
    with pytest.raises(ValidationError, match="empty batch"):
        resnet_runner(torch.zeros(0, 1, 28, 28))


def test_inputs_on_another_device_are_refused(resnet_runner: EarlyExitRunner) -> None:
    with pytest.raises(ValidationError, match="expected inputs on cpu"):
        resnet_runner(torch.zeros(2, 1, 28, 28, device="meta"))


def test_policy_calibrated_for_more_exits_is_refused(
    resnet_family: Family, mlp_family: Family
) -> None:
    assert mlp_family.model.num_exits != resnet_family.model.num_exits
    policy = adaptix.policy("pcee", 0.5, mlp_family.calibration)
    with pytest.raises(CalibrationError, match="exits"):
        EarlyExitRunner(resnet_family.model, policy)(resnet_family.inputs[:4])


@pytest.mark.parametrize("name", ["pcee", "pcee_ws"])
@pytest.mark.parametrize("fused", [True, False])
def test_policy_calibrated_for_fewer_exits_is_refused_when_built(name: str, fused: bool) -> None:
    model = two_exit_model().eval()  # two exits
    calibration = adaptix.calibrate(synthetic_trace(200, 1, 4, seed=0))
    with pytest.raises(CalibrationError, match="model's 2 exits, got one for 1 exits"):
        EarlyExitRunner(model, adaptix.policy(name, 0.5, calibration), fused=fused)


def test_policy_calibrated_for_other_classes_is_refused(resnet_family: Family) -> None:
    num_exits = resnet_family.model.num_exits
    counts = torch.ones(num_exits, BINS, dtype=torch.long)
    calibration = adaptix.Calibration(counts, counts, num_classes=3)
    for name in ("pcee", "pcee_ws"):
        runner = EarlyExitRunner(resnet_family.model, adaptix.policy(name, 0.5, calibration))
        with pytest.raises(CalibrationError, match="3 classes"):
            runner(resnet_family.inputs[:4])


def test_heads_on_another_device_than_blocks_are_refused(resnet_family: Family) -> None:
    model = copy.deepcopy(resnet_family.model)
    model.heads[0].to("meta")
    with pytest.raises(ValidationError, match="one device"):
        EarlyExitRunner(model, resnet_family.policies["confidence"])


def test_a_head_moved_after_the_runner_was_built_is_refused() -> None:
    """The device check caches the model's tensors: moving one in place must still be seen."""
    model = two_exit_model().eval()
    runner = EarlyExitRunner(model, adaptix.policy("confidence", 0.5))
    inputs = torch.randn(3, 8)
    runner(inputs)
    model.heads[0].to("meta")
    with pytest.raises(ValidationError, match="one device"):
        runner(inputs)


def test_a_head_replaced_after_the_runner_was_built_is_refused() -> None:
    model = two_exit_model().eval()
    runner = EarlyExitRunner(model, adaptix.policy("confidence", 0.5))
    inputs = torch.randn(3, 8)
    runner(inputs)
    model.heads[1] = nn.Linear(64, 4, device="meta")
    with pytest.raises(ValidationError, match="one device"):
        runner(inputs)


@pytest.mark.parametrize("where", ["block", "head"])
def test_a_layer_replaced_deep_inside_is_a_validation_error(where: str) -> None:
    """A replacement below the blocks and heads escapes the cached device check; the failing
    call still becomes a `ValidationError` naming the block or head."""
    model = two_exit_model().eval()
    runner = EarlyExitRunner(model, adaptix.policy("confidence", 0.5))
    inputs = torch.randn(3, 8)
    runner(inputs)
    if where == "block":
        model.blocks[1][0] = nn.Linear(64, 64, device="meta")
    else:
        model.heads[0] = nn.Sequential(nn.Linear(64, 4))
        runner(inputs)  # the new head is cached
        model.heads[0][0] = nn.Linear(64, 4, device="meta")
    with pytest.raises(ValidationError, match=f"{where} [01] failed"):
        runner(inputs)


def test_unknown_mode_is_refused(resnet_family: Family) -> None:
    with pytest.raises(ValidationError, match="'compact' or 'lockstep'"):
        EarlyExitRunner(resnet_family.model, resnet_family.policies["confidence"], mode="eager")


def test_a_plain_module_is_refused(resnet_family: Family) -> None:
    with pytest.raises(ValidationError, match="MultiExitModel"):
        EarlyExitRunner(nn.Linear(4, 2), resnet_family.policies["confidence"])


class Failing(nn.Module):
    """A block that raises ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def forward(self, state: Tensor) -> Tensor:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [RuntimeError("mat1 and mat2 shapes"), ValueError("bad"), TypeError("bad"), IndexError("bad")],
    ids=lambda err: type(err).__name__,
)
@pytest.mark.parametrize("mode", MODES)
def test_a_block_that_raises_becomes_a_validation_error(mode: str, error: Exception) -> None:
    torch.manual_seed(0)
    model = MultiExitModel(
        nn.ModuleList([nn.Linear(4, 4), Failing(error)]),
        nn.ModuleList([nn.Linear(4, 3), nn.Linear(4, 3)]),
    ).eval()
    # Nothing leaves at exit 0 (three classes: confidence < 1), so every row reaches block 1.
    runner = EarlyExitRunner(model, adaptix.policy("confidence", 1.0), mode=mode)
    with pytest.raises(ValidationError, match="block 1 failed") as caught:
        runner(torch.randn(5, 4))
    assert caught.value.__cause__ is error


def test_a_shape_mismatch_inside_a_block_is_a_validation_error(mlp_family: Family) -> None:
    runner = EarlyExitRunner(mlp_family.model, mlp_family.policies["confidence"])
    with pytest.raises(ValidationError, match="block 0 failed"):
        runner(torch.zeros(2, 1, 20, 20))


# ------------------------------------------------------------------------ traces and FLOPs


def linear_model(a: int, b: int, d: int, c: int) -> MultiExitModel:
    """Blocks Linear(a, b) and Linear(b, d); heads Linear(b, c) and Linear(d, c)."""
    return MultiExitModel(
        nn.ModuleList([nn.Linear(a, b), nn.Linear(b, d)]),
        nn.ModuleList([nn.Linear(b, c), nn.Linear(d, c)]),
    )


def test_trace_costs_are_measured_cumulative_flops_with_heads() -> None:
    a, b, d, c = 12, 20, 8, 3
    torch.manual_seed(0)
    model = linear_model(a, b, d, c)
    # 8 rows in batches of 3, 3 and 2: costs are per input whatever the batches (and dividing
    # by a power of two keeps the per-input FLOPs exact integers).
    inputs = torch.randn(8, a)
    trace = model.trace(inputs, batch_size=3)
    profile = profile_from_trace(trace)
    # A Linear(p, q) layer costs one p x q matrix product per input: 2·p·q FLOPs (bias free).
    assert profile.blocks == (2 * a * b, 2 * b * d)
    assert profile.heads == (2 * b * c, 2 * d * c)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.blocks[0](inputs)
    assert counter.get_total_flops() == len(inputs) * profile.blocks[0]
    first = 2 * a * b + 2 * b * c
    assert trace.costs.tolist() == [first, first + 2 * b * d + 2 * d * c]
    assert profile.exit_costs == trace.costs.tolist()
    assert profile.plain_cost == 2 * a * b + 2 * b * d + 2 * d * c  # no intermediate head
    assert profile.static_costs() == [first, profile.plain_cost]
    assert model.flop_profile(inputs[:2]) == profile
    with torch.inference_mode():
        expected = torch.stack(model(inputs), dim=1)
    torch.testing.assert_close(trace.logits, expected)


def test_single_linear_block_costs_two_a_b_per_input() -> None:
    a, b = 7, 5
    model = MultiExitModel(nn.ModuleList([nn.Linear(a, b)]), nn.ModuleList([nn.Identity()]))
    trace = model.trace(torch.randn(4, a))
    assert profile_from_trace(trace).blocks == (2 * a * b,)
    assert trace.costs.tolist() == [2 * a * b]


def test_cnn_trace_costs_are_cumulative(resnet_family: Family) -> None:
    trace = resnet_family.trace
    profile = profile_from_trace(trace)
    assert all(flops > 0 for flops in (*profile.blocks, *profile.heads))
    steps = [block + head for block, head in zip(profile.blocks, profile.heads, strict=True)]
    torch.testing.assert_close(trace.costs, torch.tensor(steps, dtype=torch.float64).cumsum(0))
    assert profile.plain_cost == pytest.approx(
        float(trace.costs[-1]) - sum(profile.heads[:-1]), rel=1e-12
    )
    assert profile.plain_cost < float(trace.costs[-1])
    # Every image has the same shape: the FLOPs per input do not depend on the batch.
    small = resnet_family.model.flop_profile(resnet_family.inputs[:4])
    assert small.blocks == pytest.approx(profile.blocks, rel=1e-12)
    assert small.heads == pytest.approx(profile.heads, rel=1e-12)


def test_trace_keeps_the_training_mode() -> None:
    model = linear_model(3, 4, 4, 2).train()
    model.trace(torch.randn(2, 3))
    assert model.training
