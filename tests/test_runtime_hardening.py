"""`EarlyExitRunner` against hostile inputs: misbehaving criterion plugins, unbatched inputs,
malformed head outputs and non-finite logits, all without adding host synchronisations.

The models here are tiny and rigged (hand-written heads) so that which rows leave at which exit
is known exactly.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import pytest
import torch
from torch import Tensor, nn

import adaptix
from adaptix import EarlyExitRunner, MultiExitModel, PluginError, ValidationError
from adaptix.components import ExitCriterion
from adaptix.kernels import dispatch, exit_decision_reference
from adaptix.plugins import AdaptixPluginManager

Mode = Literal["compact", "lockstep"]
MODES: tuple[Mode, ...] = ("compact", "lockstep")
PLUGIN = "rigged_plugin"


def linear_model(num_exits: int = 3, features: int = 8, classes: int = 3) -> MultiExitModel:
    """Linear blocks on ``features`` features, a linear ``classes``-way head after each."""
    torch.manual_seed(0)
    return MultiExitModel(
        nn.ModuleList(nn.Linear(features, features) for _ in range(num_exits)),
        nn.ModuleList(nn.Linear(features, classes) for _ in range(num_exits)),
    ).eval()


# --------------------------------------------------------------- criteria that misbehave


class Alternate(ExitCriterion):
    """Every other row scores 1 (leaves at exit 0 at threshold 0.5), the others 0."""

    name = "alternate"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return (torch.arange(logits.shape[0], device=logits.device) % 2).float(), state


class OneScore(Alternate):
    name = "one_score"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return torch.zeros(1, device=logits.device), state


class ColumnScores(Alternate):
    name = "column_scores"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return torch.zeros(logits.shape[0], 1, device=logits.device), state


class OneScoreTooMany(Alternate):
    name = "one_too_many"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return torch.zeros(logits.shape[0] + 1, device=logits.device), state


class ListScores(Alternate):
    name = "list_scores"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return [0.0] * logits.shape[0], state  # type: ignore[return-value]  # deliberately wrong


class ComplexScores(Alternate):
    name = "complex_scores"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return torch.zeros(logits.shape[0], dtype=torch.complex64), state


class MetaScores(Alternate):
    name = "meta_scores"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return torch.zeros(logits.shape[0], device="meta"), state


class ScoresWithoutState(Alternate):
    name = "no_state"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return torch.zeros(logits.shape[0])  # type: ignore[return-value]  # deliberately wrong


class Raising(Alternate):
    """Raises ``error`` in ``method``."""

    method: ClassVar[str]
    error: ClassVar[Exception]

    def start(self, batch_size: int, device: torch.device) -> Any:
        self._maybe_raise("start")
        return {"seen": 0}

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        self._maybe_raise("score")
        return super().score(logits, exit_index, state)

    def select_state(self, state: Any, keep: Tensor) -> Any:
        self._maybe_raise("select_state")
        return state

    def _maybe_raise(self, method: str) -> None:
        if method == self.method:
            raise self.error


class RaisesInStart(Raising):
    name = "raises_in_start"
    method = "start"
    error = RuntimeError("no state for you")


class RaisesInScore(Raising):
    name = "raises_in_score"
    method = "score"
    error = AttributeError("'NoneType' object has no attribute 'shape'")


class RaisesInSelectState(Raising):
    name = "raises_in_select_state"
    method = "select_state"
    error = KeyError("seen")


def rigged_policy(
    manager_with: Callable[..., AdaptixPluginManager], criterion: type[ExitCriterion]
) -> adaptix.ExitPolicy:
    return adaptix.policy(criterion.name, 0.5, plugins=manager_with(criterion, name=PLUGIN))


def assert_names_the_plugin(
    error: PluginError, criterion: type[ExitCriterion], method: str
) -> None:
    message = str(error)
    assert f"{criterion.__qualname__}.{method}" in message
    assert f"'{criterion.name}'" in message
    assert f"'{PLUGIN}'" in message


@pytest.mark.parametrize(
    "criterion",
    [OneScore, ColumnScores, OneScoreTooMany, ListScores, ComplexScores, MetaScores],
)
@pytest.mark.parametrize("mode", MODES)
def test_malformed_scores_are_a_plugin_error(
    manager_with: Callable[..., AdaptixPluginManager],
    criterion: type[ExitCriterion],
    mode: Mode,
) -> None:
    runner = EarlyExitRunner(linear_model(), rigged_policy(manager_with, criterion), mode=mode)
    with pytest.raises(PluginError, match="returned scores") as caught:
        runner(torch.randn(5, 8))
    assert_names_the_plugin(caught.value, criterion, "score")
    assert "expected a real tensor of shape (5,) on cpu" in str(caught.value)


def test_a_score_without_its_state_is_a_plugin_error(
    manager_with: Callable[..., AdaptixPluginManager],
) -> None:
    runner = EarlyExitRunner(linear_model(), rigged_policy(manager_with, ScoresWithoutState))
    with pytest.raises(PluginError, match=r"expected a pair \(scores, state\)") as caught:
        runner(torch.randn(5, 8))
    assert_names_the_plugin(caught.value, ScoresWithoutState, "score")


@pytest.mark.parametrize(
    ("criterion", "modes"),
    [
        (RaisesInStart, MODES),
        (RaisesInScore, MODES),
        # Only compaction selects the state of the rows that go on.
        (RaisesInSelectState, ("compact",)),
    ],
)
def test_a_criterion_that_raises_is_a_plugin_error(
    manager_with: Callable[..., AdaptixPluginManager],
    criterion: type[Raising],
    modes: tuple[Mode, ...],
) -> None:
    policy = rigged_policy(manager_with, criterion)
    for mode in modes:
        runner = EarlyExitRunner(linear_model(), policy, mode=mode)
        with pytest.raises(PluginError, match=type(criterion.error).__name__) as caught:
            runner(torch.randn(6, 8))
        assert caught.value.__cause__ is criterion.error
        assert_names_the_plugin(caught.value, criterion, criterion.method)


class JunkThreshold(Alternate):
    name = "junk_threshold"

    @classmethod
    def validate_threshold(cls, threshold: float) -> float:
        return str(threshold)  # type: ignore[return-value]  # deliberately wrong


def test_a_threshold_that_is_not_a_number_is_a_plugin_error(
    manager_with: Callable[..., AdaptixPluginManager],
) -> None:
    with pytest.raises(PluginError, match=r"returned the threshold '0\.5'") as caught:
        rigged_policy(manager_with, JunkThreshold)
    assert_names_the_plugin(caught.value, JunkThreshold, "validate_threshold")


@pytest.mark.parametrize("policy", [None, "confidence", nn.Linear(2, 2), 0.5])
def test_a_policy_that_is_not_an_exit_policy_is_refused(policy: object) -> None:
    with pytest.raises(ValidationError, match=r"expected an adaptix\.ExitPolicy"):
        EarlyExitRunner(linear_model(), policy)  # type: ignore[arg-type]  # deliberately wrong


def test_an_unknown_backend_is_refused_even_without_a_fused_decision() -> None:
    with pytest.raises(ValidationError, match="backend in"):
        EarlyExitRunner(linear_model(), adaptix.policy("patience", 1.0), backend="cuda")  # type: ignore[arg-type]  # deliberately wrong


def test_a_well_formed_plugin_criterion_runs(
    manager_with: Callable[..., AdaptixPluginManager],
) -> None:
    """The checks refuse nothing that keeps the contract."""
    for mode in MODES:
        runner = EarlyExitRunner(linear_model(), rigged_policy(manager_with, Alternate), mode=mode)
        out = runner(torch.randn(6, 8))
        assert out.exit_index[1::2].tolist() == [0, 0, 0]
        assert out.predictions.shape == (6,)


# ----------------------------------------------------------------------- unbatched input

BUILT_IN = [("confidence", 0.5), ("entropy", 0.5), ("patience", 1.0)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "threshold"), BUILT_IN)
def test_one_input_without_its_batch_dimension_is_refused(
    name: str, threshold: float, mode: Mode
) -> None:
    """No declared input shape: the head's logits give it away ([C] instead of [n, C])."""
    runner = EarlyExitRunner(linear_model(), adaptix.policy(name, threshold), mode=mode)
    with pytest.raises(ValidationError, match=r"expects a batch.*unsqueeze"):
        runner(torch.randn(8))


def test_a_third_party_criterion_sees_no_unbatched_logits(
    manager_with: Callable[..., AdaptixPluginManager],
) -> None:
    runner = EarlyExitRunner(linear_model(), rigged_policy(manager_with, Alternate))
    with pytest.raises(ValidationError, match="expects a batch"):
        runner(torch.randn(8))


def test_one_input_of_the_declared_shape_is_refused() -> None:
    model = MultiExitModel(
        nn.ModuleList([nn.Flatten(), nn.Linear(16, 16)]),
        nn.ModuleList([nn.Linear(16, 3), nn.Linear(16, 3)]),
        input_shape=(1, 4, 4),
    ).eval()
    runner = EarlyExitRunner(model, adaptix.policy("confidence", 0.5))
    assert runner(torch.randn(2, 1, 4, 4)).predictions.shape == (2,)
    with pytest.raises(ValidationError, match=r"single input of shape \[1, 4, 4\].*unsqueeze"):
        runner(torch.randn(1, 4, 4))
    with pytest.raises(ValidationError, match="single input"):
        model.trace(torch.randn(1, 4, 4))


def test_a_single_value_is_refused() -> None:
    with pytest.raises(ValidationError, match="batch dimension"):
        EarlyExitRunner(linear_model(), adaptix.policy("confidence", 0.5))(torch.tensor(1.0))


def test_trace_refuses_one_input_without_its_batch_dimension() -> None:
    with pytest.raises(ValidationError, match=r"head 0.*expects a batch"):
        linear_model().trace(torch.randn(8))


class Take(nn.Module):
    """A broken head: applies ``fn`` to the logits of a linear layer."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 3)
        self.fn = fn

    def forward(self, features: Tensor) -> Tensor:
        return self.fn(self.linear(features))


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda z: z[:, 0], r"got shape \[5\]"),
        (lambda z: z[:1], r"n = 5 rows it was given, got torch.float32 of shape \[1, 3\]"),
        (lambda z: z.unsqueeze(0), r"shape \[1, 5, 3\]"),
        (lambda z: z.long(), "torch.int64"),
    ],
    ids=["no-class-dim", "other-rows", "three-dims", "integer"],
)
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_head_logits_of_the_wrong_shape_are_refused(
    fn: Callable[[Tensor], Tensor], message: str, fused: bool, mode: Mode
) -> None:
    model = linear_model()
    model.heads[1] = Take(fn)
    policy = adaptix.policy("confidence", 1.0)  # nothing leaves at exit 0: every row reaches 1
    runner = EarlyExitRunner(model, policy, mode=mode, fused=fused)
    with pytest.raises(ValidationError, match=f"head 1 to return floating logits.*{message}"):
        runner(torch.randn(5, 8))


# ------------------------------------------------------------------------ non-finite logits


class Sure(nn.Module):
    """Logits [n, 3]: sure of class 0 where feature 1 is set, undecided (uniform) elsewhere."""

    def forward(self, state: Tensor) -> Tensor:
        zeros = torch.zeros_like(state[:, 0])
        return torch.stack([state[:, 1] * 100, zeros, zeros], dim=1)


class Poison(nn.Module):
    """A block gone wrong for some inputs: ``value`` in the rows whose feature 2 is set."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, state: Tensor) -> Tensor:
        return state.masked_fill((state[:, 2] != 0).unsqueeze(1), self.value)


def poisoned_model(num_exits: int, value: float) -> MultiExitModel:
    """Exit 0 is sure about the rows with feature 1 set; block 1 poisons those with feature 2."""
    blocks = [nn.Identity(), Poison(value), *(nn.Identity() for _ in range(num_exits - 2))]
    return MultiExitModel(
        nn.ModuleList(blocks), nn.ModuleList(Sure() for _ in range(num_exits))
    ).eval()


def poisoned_batch() -> Tensor:
    """Rows 0-2 leave at exit 0; rows 1 and 4 are poisoned from block 1 on: only row 4 still
    runs there."""
    inputs = torch.zeros(6, 4)
    inputs[:3, 1] = 1.0
    inputs[[1, 4], 2] = 1.0
    return inputs


POLICIES = [("confidence", True), ("confidence", False), ("pcee", True), ("patience", False)]


def poisoned_policy(name: str) -> adaptix.ExitPolicy:
    if name == "patience":
        return adaptix.policy("patience", 1.0)
    if name == "confidence":
        return adaptix.policy("confidence", 0.9)
    # Bins of confidence >= 0.9 are right, the rest wrong: the sure rows leave at exit 0.
    counts = torch.tensor([[1] * 10] * 3)
    correct = torch.tensor([[0] * 9 + [1]] * 3)
    return adaptix.policy("pcee", 0.9, adaptix.Calibration(counts, correct, num_classes=3))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("num_exits", [2, 3], ids=["at-the-last-exit", "at-an-early-exit"])
@pytest.mark.parametrize("mode", MODES)
def test_non_finite_logits_name_the_exit_and_the_rows(
    mode: Mode, num_exits: int, value: float
) -> None:
    runner = EarlyExitRunner(
        poisoned_model(num_exits, value), adaptix.policy("confidence", 0.9), mode=mode
    )
    # Row 1 is poisoned too, but it left at exit 0 and never reads exit 1's logits.
    with pytest.raises(
        ValidationError, match=r"at exit 1 for the input rows at batch positions \[4\]"
    ):
        runner(poisoned_batch())


@pytest.mark.parametrize(("name", "fused"), POLICIES)
@pytest.mark.parametrize("mode", MODES)
def test_non_finite_logits_are_refused_with_every_criterion(
    name: str, fused: bool, mode: Mode
) -> None:
    runner = EarlyExitRunner(
        poisoned_model(3, math.nan), poisoned_policy(name), mode=mode, fused=fused
    )
    inputs = poisoned_batch()
    inputs[5, 1] = math.nan  # row 5's logits are NaN from exit 0 on
    with pytest.raises(
        ValidationError, match=r"exit 0 for the input rows at batch positions \[5\]"
    ):
        runner(inputs)


@pytest.mark.parametrize("num_exits", [2, 3], ids=["at-the-last-exit", "at-an-early-exit"])
def test_a_single_non_finite_row_is_refused(num_exits: int) -> None:
    runner = EarlyExitRunner(poisoned_model(num_exits, math.nan), poisoned_policy("confidence"))
    row = torch.zeros(1, 4)
    row[0, 2] = 1.0  # undecided at exit 0, poisoned at exit 1
    with pytest.raises(
        ValidationError, match=r"exit 1 for the input rows at batch positions \[0\]"
    ):
        runner(row)


def test_many_non_finite_rows_are_counted() -> None:
    runner = EarlyExitRunner(linear_model(), adaptix.policy("confidence", 0.9))
    inputs = torch.randn(40, 8)
    inputs[3:33] = math.nan
    with pytest.raises(
        ValidationError, match=r"\[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, \.\.\. \(30 rows\)\]"
    ):
        runner(inputs)


@pytest.mark.parametrize("mode", MODES)
def test_the_finite_check_can_be_turned_off(mode: Mode) -> None:
    runner = EarlyExitRunner(
        poisoned_model(3, math.nan),
        adaptix.policy("confidence", 0.9),
        mode=mode,
        check_finite=False,
    )
    out = runner(poisoned_batch())
    # As before the check: poisoned rows never leave early, the others are unaffected.
    assert out.exit_index.tolist() == [0, 0, 0, 2, 2, 2]
    assert out.predictions[[0, 1, 2, 3, 5]].tolist() == [0, 0, 0, 0, 0]


# ------------------------------------------------------------------ host synchronisations

SYNCS = ("nonzero", "tolist", "item", "__bool__", "__int__", "__float__")


def count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call that reads a tensor's values on the host (where a CUDA stream would
    synchronise): one entry per call, by name."""
    seen: list[str] = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def wrapper(
            self: Tensor, *args: Any, _name: str = name, _original: Any = original, **kwargs: Any
        ) -> Any:
            seen.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return seen


@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize(("name", "fused"), POLICIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "rows", [slice(0, 1), slice(3, 4), slice(0, 6)], ids=["one-leaves", "one-stays", "six"]
)
def test_one_synchronisation_per_exit(
    monkeypatch: pytest.MonkeyPatch,
    rows: slice,
    mode: Mode,
    name: str,
    fused: bool,
    check_finite: bool,
) -> None:
    """Every check (plugin scores, head shapes, non-finite logits) rides on the exit's one
    synchronisation; the finite check adds the last exit's."""
    model = poisoned_model(3, 0.0)  # "poisoned" with zeros: finite
    policy = poisoned_policy(name)
    runner = EarlyExitRunner(model, policy, mode=mode, fused=fused, check_finite=check_finite)
    inputs = poisoned_batch()[rows]
    expected = runner(inputs)  # checks the classes once: later batches do not
    seen = count_syncs(monkeypatch)
    out = runner(inputs)
    syncs = list(seen)
    monkeypatch.undo()
    assert torch.equal(out.exit_index, expected.exit_index)
    reached = int(out.exit_index.max()) + 1  # exits the batch ran
    early = min(reached, model.num_exits - 1)
    last = 1 if check_finite and reached == model.num_exits else 0
    assert len(syncs) == early + last, syncs


# ------------------------------------------------------------------- the kernel's prediction


@pytest.mark.parametrize("mode", MODES)
def test_the_runner_returns_the_kernels_prediction(
    monkeypatch: pytest.MonkeyPatch, mode: Mode
) -> None:
    """Where the fused kernel decides, its prediction is the one returned: the runner does not
    compute it again. A stand-in kernel marks its predictions as 42."""

    def launch_exit_decision(
        logits: Tensor, *, kind: Any, prediction: Tensor, exit_mask: Tensor, **_: Any
    ) -> None:
        exit_mask.copy_(exit_decision_reference(logits, 0.9, kind=kind).exit_mask)
        prediction.fill_(42)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernel = types.SimpleNamespace(launch_exit_decision=launch_exit_decision)
    monkeypatch.setattr(dispatch, "import_triton_kernel", lambda: kernel)
    runner = EarlyExitRunner(
        poisoned_model(3, 0.0), adaptix.policy("confidence", 0.9), mode=mode, backend="triton"
    )
    out = runner(poisoned_batch())
    assert out.exit_index.tolist() == [0, 0, 0, 2, 2, 2]
    assert out.predictions.tolist() == [42, 42, 42, 0, 0, 0]  # the last exit is not fused


@pytest.mark.parametrize("shape", [2, ("d",), (-1,), (0,), (True,), "28"])
def test_an_input_shape_that_is_not_positive_integers_is_refused(shape: object) -> None:
    blocks, heads = nn.ModuleList([nn.Linear(3, 3)]), nn.ModuleList([nn.Linear(3, 2)])
    with pytest.raises(ValidationError, match="input_shape as a tuple of positive integers"):
        MultiExitModel(blocks, heads, input_shape=shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("batch", [2.5, None, "2", True, 0])
def test_trace_refuses_a_batch_size_that_is_not_a_positive_integer(batch: object) -> None:
    model = MultiExitModel(nn.ModuleList([nn.Linear(3, 3)]), nn.ModuleList([nn.Linear(3, 2)]))
    with pytest.raises(ValidationError, match="batch_size to be an integer"):
        model.trace(torch.randn(4, 3), None, batch)  # type: ignore[arg-type]


class _DictBlock(nn.Module):
    """A block whose state is a dict (as a transformer's often is)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"x": self.linear(state["x"]), "mask": state["mask"]}


@pytest.mark.parametrize("feature", ["identity", "flatten", "avgpool"])
def test_a_feature_function_that_cannot_read_a_dict_state_is_refused(feature: str) -> None:
    """Measuring feature sizes on dict states was a raw AttributeError ('dict' has no 'dim')."""
    example = {"x": torch.zeros(2, 4), "mask": torch.ones(2, 4, dtype=torch.bool)}
    message = "produces features of type dict|failed on the output of block 0 .AttributeError"
    with pytest.raises(ValidationError, match=message):
        adaptix.build_model(
            "sequential",
            3,
            source=nn.Sequential(_DictBlock(), _DictBlock()),
            backbone_params={"feature": feature},
            example_input=example,
        )


def test_a_token_mask_under_another_key_is_refused_by_the_mean() -> None:
    """feature='mean' reads the mask at 'attention_mask'; one under 'mask' was silently ignored
    and the padding averaged in."""
    from adaptix.core.features import TokenPool

    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pool = TokenPool("mean")
    with pytest.raises(ValidationError, match="under 'mask'"):
        pool({"hidden": hidden, "mask": mask})
    masked = pool({"hidden": hidden, "attention_mask": mask})
    assert torch.allclose(masked[0], hidden[0, :2].mean(dim=0))
    assert torch.allclose(pool({"hidden": hidden}), hidden.mean(dim=1))  # no mask: plain mean
    assert torch.equal(TokenPool("cls")({"hidden": hidden, "mask": mask}), hidden[:, 0])
