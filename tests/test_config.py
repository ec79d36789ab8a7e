"""The job configuration resolves every component name, and checks its parameters, when it is
validated: a misspelt name fails before any training, with its dotted path and the names that
exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import field_validator
from torch import Tensor, nn

from adaptix import ConfigError
from adaptix.components import ExitCriterion, ExitHead, ParamsModel
from adaptix.experiment.config import JobConfig, load_config, parse_config


def _problems(err: ConfigError) -> dict[str, str]:
    """The dotted path -> message of every problem a `ConfigError` lists."""
    lines = str(err).splitlines()[1:]
    return {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in lines}


def _refused(data: dict[str, Any], **options: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, **options)
    return _problems(info.value)


class Tiny(ExitHead):
    name = "tiny_head"

    def build(self, in_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(in_features, num_classes)


class FussyParams(ParamsModel):
    width: int = 1

    @field_validator("width")
    @classmethod
    def _explode(cls, value: int) -> int:
        raise TypeError("fussy cannot validate")


class Fussy(Tiny):
    name = "fussy_head"
    Params = FussyParams


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        (
            {"models": [{"name": "a"}, {"name": "b", "backbone": "resnett"}]},
            "models.1.backbone",
            "unknown backbone 'resnett'. Available: causal_lm, msdnet, resnet, sequential",
        ),
        (
            {"models": [{"name": "a", "head": "mpl"}]},
            "models.0.head",
            "unknown exit head 'mpl'. Available: linear, mlp",
        ),
        (
            {"sweep": {"criteria": ["confidence", "pcee", "pcee-ws"]}},
            "sweep.criteria.2",
            "unknown criterion 'pcee-ws'. Available: confidence, entropy, ",
        ),
        (
            {"runtime": {"criterion": "entropyy"}},
            "runtime.criterion",
            "unknown criterion 'entropyy'",
        ),
        (
            {"models": [{"name": "a", "backbone_params": {"size": "huge"}}]},
            "models.0.backbone_params",
            "backbone 'msdnet'.size: Input should be 'small', 'medium' or 'large'",
        ),
        (
            {"models": [{"name": "a", "backbone": "resnet", "backbone_params": {"blocks": 2}}]},
            "models.0.backbone_params",
            "backbone 'resnet'.blocks: Extra inputs are not permitted",
        ),
        (
            {"models": [{"name": "a", "head_params": {"hidden": 0}}]},
            "models.0.head_params",
            "exit head 'mlp'.hidden: Input should be greater than or equal to 1",
        ),
        (
            {"runtime": {"criterion": "patience", "thresholds": [2, 0.9]}},
            "runtime.thresholds",
            "criterion 'patience' expects an integer threshold >= 1, got 0.9",
        ),
        ({"sweep": {"criteria": []}}, "sweep.criteria", "criteria needs at least one entry"),
        (
            {"sweep": {"criteria": ["pcee", "entropy", "pcee"]}},
            "sweep.criteria",
            "each criterion once, got ['pcee'] more than once",
        ),
        ({"models": []}, "models", "models needs at least one entry"),
        (
            {"guarantee": {"criterion": "confidance"}},
            "guarantee.criterion",
            "unknown criterion 'confidance'. Available: confidence, ",
        ),
        ({"guarantee": {"alpha": 1.0}}, "guarantee.alpha", "alpha in (0, 1)"),
        ({"guarantee": {"alpha": 0}}, "guarantee.alpha", "alpha in (0, 1)"),
        (
            {"sweep": {"calibrator": "equal_width"}},
            "sweep.calibrator",
            "unknown calibrator 'equal_width'. Available: equal_mass, reliability",
        ),
    ],
    ids=[
        "backbone",
        "head",
        "criterion",
        "runtime-criterion",
        "backbone-param-value",
        "backbone-param-name",
        "head-param",
        "runtime-threshold",
        "no-criteria",
        "repeated-criterion",
        "no-models",
        "guarantee-criterion",
        "guarantee-alpha-one",
        "guarantee-alpha-zero",
        "calibrator",
    ],
)
def test_a_component_problem_is_reported_at_its_dotted_path(
    data: dict[str, Any], path: str, message: str
) -> None:
    problems = _refused(data)
    assert list(problems) == [path]  # that problem alone, no echo on the enclosing list
    assert message in problems[path]


def test_an_unknown_name_skips_the_check_of_its_parameters() -> None:
    problems = _refused({"models": [{"name": "a", "head": "nope", "head_params": {"x": 1}}]})
    assert list(problems) == ["models.0.head"]


def test_names_resolve_with_the_given_plugin_manager(manager_with, tmp_path: Path) -> None:
    data = {"models": [{"name": "a", "head": "tiny_head"}]}
    assert "models.0.head" in _refused(data)
    plugins = manager_with(Tiny, Fussy, name="tiny_plugin")
    assert parse_config(data, plugins=plugins).models[0].head == "tiny_head"
    path = tmp_path / "job.yaml"
    path.write_text("models:\n  - name: a\n    head: tiny_head\n")
    assert load_config(path, plugins=plugins).models[0].head == "tiny_head"
    assert load_config(None, plugins=plugins) == JobConfig()
    # A plugin's parameter model that raises something else is reported as the plugin's fault.
    fussy = _refused(
        {"models": [{"name": "a", "head": "fussy_head", "head_params": {"width": 2}}]},
        plugins=plugins,
    )
    assert "FussyParams" not in fussy["models.0.head_params"]
    assert "'fussy_head' from plugin 'tiny_plugin'" in fussy["models.0.head_params"]
    assert "TypeError: fussy cannot validate" in fussy["models.0.head_params"]


def test_a_blocked_builtin_makes_the_defaults_invalid(monkeypatch) -> None:
    monkeypatch.setenv("ADAPTIX_DISABLE_PLUGINS", "adaptix.msdnet")
    with pytest.raises(ConfigError) as info:
        load_config(None)
    problems = _problems(info.value)
    assert set(problems) == {"models.0.backbone", "models.1.backbone", "models.2.backbone"}
    assert "Blocked plugins: adaptix.msdnet" in problems["models.0.backbone"]


def test_the_default_configuration_is_valid() -> None:
    config = load_config(None)
    assert [m.backbone for m in config.models] == ["msdnet"] * 3
    assert config.sweep.criteria == (
        "confidence", "entropy", "patience", "pcee", "pcee_ws", "pcee_lcb"
    )  # fmt: skip
    assert (config.guarantee.enabled, config.guarantee.criterion) == (True, "confidence")
    assert config.guarantee.alpha == 0.05


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sweep": {"delta_max": 1.0}}, "certifies targets δ in (0, 1), got the grid 0.5 to 1"),
        ({"sweep": {"delta_min": 0.0}}, "certifies targets δ in (0, 1), got the grid 0 to 0.99"),
    ],
)
def test_the_guarantee_needs_a_grid_inside_the_unit_interval(
    data: dict[str, Any], message: str
) -> None:
    problems = _refused(data)
    assert list(problems) == ["(top level)"]
    assert message in problems["(top level)"]
    assert parse_config({**data, "guarantee": {"enabled": False}}).guarantee.enabled is False


class NamedLikeTheGuaranteeRow(ExitCriterion):
    name = "guarantee"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return logits.softmax(-1).amax(-1), state


def test_a_criterion_named_like_the_guarantee_row_is_refused(manager_with) -> None:
    plugins = manager_with(NamedLikeTheGuaranteeRow, name="guarantee_plugin")
    data: dict[str, Any] = {"sweep": {"criteria": ["confidence", "guarantee"]}}
    problems = _refused(data, plugins=plugins)
    assert list(problems) == ["(top level)"]
    assert "named 'guarantee', the label of the guarantee's row" in problems["(top level)"]
    assert parse_config({**data, "guarantee": {"enabled": False}}, plugins=plugins)


def test_a_blocked_criterion_plugin_is_reported_in_the_default_sections(monkeypatch) -> None:
    monkeypatch.setenv("ADAPTIX_DISABLE_PLUGINS", "adaptix.criteria")
    problems = _refused({})
    assert set(problems) == {f"sweep.criteria.{i}" for i in range(6)} | {
        "runtime.criterion",
        "guarantee.criterion",
    }
    assert "Blocked plugins: adaptix.criteria" in problems["runtime.criterion"]


def test_a_file_that_is_not_text_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(path)
