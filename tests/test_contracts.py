"""The contract checks of `adaptix.testing`: every registered component passes them, and each
check catches the breakage it is there for."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any, ClassVar

import pytest
import torch
from pydantic import ConfigDict
from torch import Tensor, nn

import adaptix
from adaptix import PluginError
from adaptix.components import (
    Backbone,
    BackboneParts,
    Calibrator,
    Direction,
    ExitHead,
    ParamsModel,
)
from adaptix.core.calibration import Calibration
from adaptix.core.trace import Trace
from adaptix.default_plugins.calibrators import Reliability
from adaptix.default_plugins.criteria import PCEE, Confidence, Patience
from adaptix.default_plugins.heads import Linear
from adaptix.testing import (
    check_backbone,
    check_calibrator,
    check_component,
    check_criterion,
    check_exit_head,
    contract_cases,
)

CASES = contract_cases()


def _named(cases: list[tuple[type, str]]) -> list[Any]:
    """Parameters (component class, expected message), each named after its class."""
    return [pytest.param(component, message, id=component.__name__) for component, message in cases]


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}:{n}" for k, n in CASES])
def test_every_registered_component_honours_its_contract(kind: str, name: str, plugins) -> None:
    check_component(kind, name, plugins=plugins)


def test_the_cases_cover_every_kind_and_every_builtin() -> None:
    kinds = {kind for kind, _ in CASES}
    assert {"criterion", "calibrator", "exit head"} <= kinds
    for case in [("criterion", "pcee_ws"), ("calibrator", "reliability"), ("exit head", "mlp")]:
        assert case in CASES


def test_a_backbone_that_adapts_a_network_is_checked_with_a_source(plugins) -> None:
    source = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    check_backbone("sequential", source=source, params={"boundaries": (2, 3)}, plugins=plugins)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(adaptix.ValidationError, match="component kind"):
        check_component("tokenizer", "bpe")


# -------------------------------------------------------------------- criteria that break it


class Jittery(Confidence):
    name = "jittery"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        value, state = super().score(logits, exit_index, state)
        return value + 1e-3 * torch.rand(value.shape), state


class WideScores(Confidence):
    name = "wide"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        value, state = super().score(logits, exit_index, state)
        return value.unsqueeze(1), state


class IntegerScores(Confidence):
    name = "integer_scores"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        value, state = super().score(logits, exit_index, state)
        return (value * 10).long(), state


class Backwards(Confidence):
    """Reads τ as 1 - τ: a larger threshold makes inputs exit earlier."""

    name = "backwards"

    @classmethod
    def validate_threshold(cls, threshold: float) -> float:
        return 1.0 - super().validate_threshold(threshold)


class BatchRelative(Confidence):
    """Scores relative to the batch mean: an input's exit depends on the others."""

    name = "batch_relative"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        value, state = super().score(logits, exit_index, state)
        return (value - value.mean() + 0.5).clamp(0, 1), state


class ForgetfulPatience(Patience):
    """Keeps the state of every row when rows leave the batch."""

    name = "forgetful"

    def select_state(self, state: Any, keep: Tensor) -> Any:
        if state is None:
            return None
        previous, streak = state
        return previous[: keep.numel()], streak[: keep.numel()]


class Scribbler(Confidence):
    name = "scribbler"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        value, state = super().score(logits, exit_index, state)
        logits.mul_(2.0)
        return value, state


class CarelessPCEE(PCEE):
    """Never checks that its calibration fits the model."""

    name = "careless_pcee"

    def check_model(self, num_exits: int, num_classes: int) -> None:
        return None


class AcceptsNaN(Confidence):
    name = "accepts_nan"

    @classmethod
    def validate_threshold(cls, threshold: float) -> float:
        return float(threshold)


class LooseParams(ParamsModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class LooseConfidence(Confidence):
    name = "loose"
    Params = LooseParams


class Sideways(Confidence):
    name = "sideways"
    direction: ClassVar[Direction] = "gt"  # type: ignore[assignment]  # the breakage under test


class Undescribed(Confidence):
    name = "undescribed"
    description = ""


@pytest.mark.parametrize(
    ("criterion", "message"),
    _named(
        [
            (Jittery, "scores differ between two calls"),
            (WideScores, r"must return a tensor of shape \[64, 4\]"),
            (IntegerScores, "must be floating point"),
            (Backwards, "not monotone: input .* stricter threshold"),
            (BatchRelative, "alone differ from its scores in the batch"),
            (ForgetfulPatience, "select_state must keep exactly the state of the kept rows"),
            (Scribbler, "must not modify the logits"),
            (CarelessPCEE, "check_model must refuse"),
            (LooseConfidence, "extra='forbid'"),
            (Sideways, "`direction` must be 'ge' or 'le'"),
            (Undescribed, "`description` must be a non-empty str"),
        ]
    ),
)
def test_a_broken_criterion_fails_the_check(manager_with, criterion, message: str) -> None:
    manager = manager_with(criterion)
    with pytest.raises(AssertionError, match=f"criterion '{criterion.name}': .*{message}"):
        check_criterion(criterion.name, plugins=manager)


def test_a_nan_threshold_that_a_criterion_accepts_is_refused_by_the_host(manager_with) -> None:
    manager = manager_with(AcceptsNaN, name="lenient")
    with pytest.raises(PluginError, match=r"'accepts_nan' from plugin 'lenient' returned the thr"):
        adaptix.policy("accepts_nan", math.nan, plugins=manager)


def test_a_criterion_registered_under_an_alias_fails_the_name_check() -> None:
    class Aliased:
        @adaptix.hookimpl
        def adaptix_register_criteria(self, registry: Any) -> None:
            registry.add(Confidence, name="certainty")

    manager = adaptix.get_plugin_manager(autoload=False)
    manager.register(Aliased())
    with pytest.raises(AssertionError, match="must be the non-empty registry name 'certainty'"):
        check_criterion("certainty", plugins=manager)


def test_a_criterion_is_checked_with_a_given_calibration_and_grid(plugins) -> None:
    calibration = adaptix.calibrate(adaptix.testing.synthetic_trace(100, 2, 3), plugins=plugins)
    check_criterion(
        "pcee_ws", calibration=calibration, thresholds=[0.9, 0.1, 0.5], params={"window": 2}
    )


def test_an_empty_grid_is_refused(plugins) -> None:
    with pytest.raises(
        adaptix.ValidationError, match="expected thresholds to hold at least one threshold"
    ):
        check_criterion("confidence", thresholds=[], plugins=plugins)
    with pytest.raises(
        adaptix.ValidationError, match="expected thresholds as a list of thresholds"
    ):
        check_criterion("confidence", thresholds=0.5, plugins=plugins)  # type: ignore[arg-type]  # on purpose


# ----------------------------------------------------------------- calibrators that break it


class HalfCounting(Reliability):
    name = "half_counting"

    def fit(self, trace: Trace, bins: int) -> Calibration:
        return super().fit(trace.subset(slice(0, None, 2)), bins)


class LabelBlind(Reliability):
    """Treats an unlabelled trace as if every label were 0."""

    name = "label_blind"

    def fit(self, trace: Trace, bins: int) -> Calibration:
        labels = torch.zeros(trace.num_inputs, dtype=torch.long)
        return super().fit(Trace(trace.logits, labels, trace.costs, trace.meta), bins)


class Normalising(Reliability):
    """Rescales the counts to 100 inputs per exit: shards no longer add up."""

    name = "normalising"

    def fit(self, trace: Trace, bins: int) -> Calibration:
        plain = super().fit(trace, bins)
        scale = 100.0 / trace.num_inputs
        counts = (plain.counts * scale).round().long()
        correct = torch.minimum((plain.correct * scale).round().long(), counts)
        return Calibration(counts, correct, plain.num_classes, method=self.name)


class Unfit(Calibrator):
    name = "unfit"
    description = "returns a calibration of random counts"

    def fit(self, trace: Trace, bins: int) -> Calibration:
        counts = torch.randint(1, 5, (trace.num_exits, bins))
        return Calibration(counts, counts // 2, trace.num_classes, method=self.name)


@pytest.mark.parametrize(
    ("calibrator", "message"),
    _named(
        [
            (HalfCounting, "every input must be counted once at every exit"),
            (LabelBlind, "unlabelled trace must raise"),
            (Normalising, "valid Calibration.*every exit to count every calibration input"),
            (Unfit, "valid Calibration.*every exit to count every calibration input"),
        ]
    ),
)
def test_a_broken_calibrator_fails_the_check(manager_with, calibrator, message: str) -> None:
    manager = manager_with(calibrator)
    with pytest.raises(AssertionError, match=f"calibrator '{calibrator.name}': .*{message}"):
        check_calibrator(calibrator.name, plugins=manager)


def test_a_calibrator_whose_shards_do_not_add_up_fails_the_check(manager_with) -> None:
    class Squared(Reliability):
        """Counts every input once but squares the correct counts: not additive."""

        name = "squared"

        def fit(self, trace: Trace, bins: int) -> Calibration:
            plain = super().fit(trace, bins)
            correct = torch.minimum(plain.correct**2, plain.counts)
            return Calibration(plain.counts, correct, plain.num_classes, method=self.name)

    with pytest.raises(AssertionError, match="calibrations must merge by addition"):
        check_calibrator("squared", plugins=manager_with(Squared))


# ------------------------------------------------------------------- exit heads that break it


class OffByOne(ExitHead):
    name = "off_by_one"
    description = "one logit too many"

    def build(self, in_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(in_features, num_classes + 1)


class SharedHead(Linear):
    name = "shared"
    _cache: ClassVar[dict[tuple[int, int], nn.Module]] = {}

    def build(self, in_features: int, num_classes: int) -> nn.Module:
        key = (in_features, num_classes)
        return self._cache.setdefault(key, nn.Linear(in_features, num_classes))


class Detached(nn.Module):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features.detach())


class DetachingHead(Linear):
    name = "detaching"

    def build(self, in_features: int, num_classes: int) -> nn.Module:
        return Detached(in_features, num_classes)


class DropoutInEval(nn.Module):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return nn.functional.dropout(self.linear(features), 0.5, training=True)


class NoisyHead(Linear):
    name = "noisy"

    def build(self, in_features: int, num_classes: int) -> nn.Module:
        return DropoutInEval(in_features, num_classes)


@pytest.mark.parametrize(
    ("head", "message"),
    _named(
        [
            (OffByOne, r"must give logits \[4, 5\]"),
            (SharedHead, "two builds share 2 parameter tensors"),
            (DetachingHead, "no gradient reaches the features"),
            (NoisyHead, "not deterministic in eval mode"),
        ]
    ),
)
def test_a_broken_exit_head_fails_the_check(manager_with, head, message: str) -> None:
    manager = manager_with(head)
    with pytest.raises(AssertionError, match=f"exit head '{head.name}': .*{message}"):
        check_exit_head(head.name, plugins=manager)


# -------------------------------------------------------------------- backbones: good and bad


class TinyMLP(Backbone):
    """Three linear blocks; exposes its example input through a class method."""

    name = "tiny_mlp"
    description = "three linear blocks on 6 features"
    dims: ClassVar[tuple[int, ...]] = (8, 8, 4)
    declared: ClassVar[tuple[int, ...] | None] = (8, 8, 4)

    def build(self, source: Any = None) -> BackboneParts:
        sizes = (6, *self.dims)
        blocks = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        return BackboneParts(blocks=blocks, feature_dims=self.declared)

    @classmethod
    def example_input(cls) -> Tensor:
        return torch.randn(3, 6)


class Miscounted(TinyMLP):
    name = "miscounted"
    declared = (8, 8)


class Mismeasured(TinyMLP):
    name = "mismeasured"
    declared = (8, 8, 5)


class Hollow(TinyMLP):
    name = "hollow"

    def build(self, source: Any = None) -> BackboneParts:
        return BackboneParts(blocks=nn.ModuleList())


class NotParts(TinyMLP):
    name = "not_parts"

    def build(self, source: Any = None) -> BackboneParts:
        return nn.ModuleList([nn.Linear(6, 8)])  # type: ignore[return-value]  # under test


class Unpooled(TinyMLP):
    """Its blocks keep a token axis and it declares no feature function."""

    name = "unpooled"

    @classmethod
    def example_input(cls) -> Tensor:
        return torch.randn(3, 2, 6)


def test_a_backbone_with_an_example_input_runs_a_forward_pass(manager_with) -> None:
    check_backbone("tiny_mlp", plugins=manager_with(TinyMLP))


@pytest.mark.parametrize(
    ("backbone", "message"),
    _named(
        [
            (Miscounted, "one positive size per block: 3 blocks, feature_dims \\[8, 8\\]"),
            (Mismeasured, "after block 2 have size 4, feature_dims says 5"),
            (Hollow, "build returned no blocks"),
            (NotParts, "must return adaptix.components.BackboneParts"),
            (Unpooled, r"after block 0 must be a \[n, d\] tensor"),
        ]
    ),
)
def test_a_broken_backbone_fails_the_check(manager_with, backbone, message: str) -> None:
    manager = manager_with(backbone)
    with pytest.raises(AssertionError, match=f"backbone '{backbone.name}': .*{message}"):
        check_backbone(backbone.name, plugins=manager)
