"""The plugin host: registries, loading policy, blocking, broken plugins, tracing, bad input."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor

import adaptix
from adaptix import AdaptixError, CalibrationError, PluginError, ValidationError
from adaptix.components import ExitCriterion
from adaptix.default_plugins.criteria import Confidence
from adaptix.plugins import AdaptixPluginManager, AdaptixPluginWarning
from adaptix.settings import Settings
from adaptix.testing import synthetic_trace

BUILTIN_CRITERIA = ["confidence", "entropy", "patience", "pcee", "pcee_ws"]


class Exploding(ExitCriterion):
    name = "exploding"
    description = "raises while scoring"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        raise ZeroDivisionError("score blew up")


class OneScorePerBatch(ExitCriterion):
    name = "one_score"
    description = "returns a single score instead of one per row"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return torch.zeros(1), state


class SecondConfidence(Confidence):
    """A third-party criterion that takes a built-in's name."""


class Zero(ExitCriterion):
    name = "zero"
    description = "stands in for a third-party criterion"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return torch.zeros(logits.shape[0]), state


class RegistersZero:
    @adaptix.hookimpl
    def adaptix_register_criteria(self, registry: Any) -> None:
        registry.add(Zero)


class HookRaises:
    @adaptix.hookimpl
    def adaptix_register_criteria(self, registry: Any) -> None:
        raise RuntimeError("registration exploded")


class RegistersNonsense:
    def __init__(self, component: object, name: str | None = None) -> None:
        self.component = component
        self.name = name

    @adaptix.hookimpl
    def adaptix_register_criteria(self, registry: Any) -> None:
        registry.add(self.component, name=self.name)


def _quiet_manager(**options: Any) -> AdaptixPluginManager:
    """Built-ins only, whatever is installed."""
    return adaptix.get_plugin_manager(settings=Settings(autoload_plugins=False), **options)


def test_builtins_are_plugins_like_any_other(plugins) -> None:
    assert set(BUILTIN_CRITERIA) <= set(plugins.criteria.names())
    assert "reliability" in plugins.calibrators
    assert {"linear", "mlp"} <= set(plugins.exit_heads)
    infos = {info.name: info for info in plugins.plugin_infos()}
    builtins = infos["adaptix.criteria"]
    assert (builtins.distribution, builtins.version) == ("adaptix", adaptix.__version__)
    assert builtins.components == {"criterion": BUILTIN_CRITERIA}
    entry = plugins.criteria.entry("pcee")
    assert (entry.plugin, entry.distribution) == ("adaptix.criteria", "adaptix")


def test_every_call_returns_a_fresh_manager(manager_with) -> None:
    extended = manager_with(Zero)
    assert "zero" in extended.criteria
    assert "zero" not in _quiet_manager().criteria
    assert adaptix.get_plugin_manager() is not adaptix.get_plugin_manager()


def test_registries_are_rebuilt_after_register_and_unregister() -> None:
    manager = _quiet_manager()
    assert "zero" not in manager.criteria
    manager.register(RegistersZero(), name="zero_plugin")
    assert "zero" in manager.criteria
    info = next(i for i in manager.plugin_infos() if i.name == "zero_plugin")
    assert (info.distribution, info.components) == ("(registered in code)", {"criterion": ["zero"]})
    manager.unregister(name="zero_plugin")
    assert "zero" not in manager.criteria


def test_an_unknown_criterion_lists_the_available_ones(plugins) -> None:
    with pytest.raises(PluginError, match="unknown criterion 'confidance'") as info:
        adaptix.policy("confidance", 0.5, plugins=plugins)
    for name in BUILTIN_CRITERIA:
        assert name in str(info.value)


def test_an_unknown_parameter_is_refused_with_its_dotted_path(plugins) -> None:
    calibration = adaptix.calibrate(synthetic_trace(40, 3, 4), plugins=plugins)
    with pytest.raises(
        ValidationError, match=r"criterion 'pcee_ws'\.windows: Extra inputs"
    ) as info:
        adaptix.policy("pcee_ws", 0.5, calibration, windows=2, plugins=plugins)
    assert "Accepted parameters: ['window']" in str(info.value)
    with pytest.raises(ValidationError, match=r"criterion 'pcee_ws'\.window"):
        adaptix.policy("pcee_ws", 0.5, calibration, window=-1, plugins=plugins)
    with pytest.raises(ValidationError, match="Accepted parameters: none"):
        adaptix.policy("confidence", 0.5, window=1, plugins=plugins)


@pytest.mark.parametrize("name", ["pcee", "pcee_ws"])
def test_pcee_needs_a_calibration(plugins, name: str) -> None:
    with pytest.raises(CalibrationError, match=f"criterion '{name}' needs a calibration"):
        adaptix.policy(name, 0.5, plugins=plugins)


@pytest.mark.parametrize(
    ("name", "threshold", "message"),
    [
        ("confidence", 1.5, r"threshold in \[0, 1\], got 1.5"),
        ("confidence", -0.1, r"threshold in \[0, 1\], got -0.1"),
        ("entropy", 2, r"threshold in \[0, 1\]"),
        ("confidence", math.nan, "NaN threshold"),
        ("confidence", True, "real threshold"),
        ("confidence", "0.5", "real threshold"),
        ("patience", 0, "integer threshold >= 1, got 0"),
        ("patience", 1.5, "integer threshold >= 1, got 1.5"),
    ],
)
def test_thresholds_out_of_range_are_refused(plugins, name, threshold, message) -> None:
    with pytest.raises(ValidationError, match=message):
        adaptix.policy(name, threshold, plugins=plugins)


def test_a_criterion_name_must_be_a_string(plugins) -> None:
    with pytest.raises(ValidationError, match="criterion name"):
        adaptix.policy(Confidence, 0.5, plugins=plugins)


def test_a_plugin_whose_hook_raises_warns_then_fails_when_asked() -> None:
    manager = _quiet_manager()
    manager.register(HookRaises(), name="fragile")
    with pytest.warns(AdaptixPluginWarning, match="'fragile'.*registration exploded"):
        names = manager.criteria.names()
    assert set(BUILTIN_CRITERIA) <= set(names)  # nothing else is affected
    with pytest.raises(PluginError, match=r"failed to load.*fragile") as info:
        adaptix.policy("fragile_criterion", 0.5, plugins=manager)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "registration exploded"


def test_a_plugin_whose_hook_raises_fails_at_once_when_strict() -> None:
    manager = _quiet_manager(strict=True)
    manager.register(HookRaises(), name="fragile")
    with pytest.raises(
        PluginError, match=r"'fragile'.*failed in adaptix_register_criteria"
    ) as info:
        manager.criteria.names()
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("via", ["simulate", "sweep"])
def test_a_criterion_that_raises_while_scoring_is_reported(manager_with, via: str) -> None:
    manager = manager_with(Exploding, name="boom_plugin")
    trace = synthetic_trace(8, 3, 4)
    runs = {
        "simulate": lambda: adaptix.simulate(
            trace, adaptix.policy("exploding", 0.5, plugins=manager)
        ),
        "sweep": lambda: adaptix.sweep(trace, "exploding", [0.5], plugins=manager),
    }
    with pytest.raises(PluginError, match=r"Exploding\.scores.*'exploding'.*'boom_plugin'") as info:
        runs[via]()
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert "score blew up" in str(info.value)


def test_scores_of_the_wrong_shape_are_reported(manager_with) -> None:
    manager = manager_with(OneScorePerBatch, name="sloppy")
    pol = adaptix.policy("one_score", 0.5, plugins=manager)
    with pytest.raises(AdaptixError, match=r"'one_score' from plugin 'sloppy' returned scores"):
        adaptix.simulate(synthetic_trace(8, 3, 4), pol)


def test_a_duplicate_name_names_both_providers(manager_with) -> None:
    manager = manager_with(SecondConfidence, name="copycat")
    with pytest.raises(PluginError, match="duplicate criterion 'confidence'") as info:
        manager.criteria.names()
    assert "plugin 'adaptix.criteria'" in str(info.value)
    assert "plugin 'copycat'" in str(info.value)


@pytest.mark.parametrize(
    ("component", "name", "message"),
    [
        (Confidence(adaptix.components.NoParams()), None, "expected a subclass"),
        (adaptix.components.ExitHead, None, "expected a subclass"),
        (type("Nameless", (Zero,), {"name": ""}), None, "without a name"),
    ],
    ids=["instance", "other-kind", "nameless"],
)
def test_registering_something_else_is_refused(component, name, message) -> None:
    manager = _quiet_manager()
    manager.register(RegistersNonsense(component, name), name="confused")
    # A broken third-party plugin that nothing asked for warns; the built-ins stay usable.
    with pytest.warns(AdaptixPluginWarning, match=f"plugin 'confused'.*{message}"):
        assert "confidence" in manager.criteria.names()
    strict = _quiet_manager(strict=True)
    strict.register(RegistersNonsense(component, name), name="confused")
    with pytest.raises(PluginError, match=f"plugin 'confused'.*{message}"):
        strict.criteria.names()


def test_a_component_can_be_registered_under_another_name() -> None:
    manager = _quiet_manager()
    manager.register(RegistersNonsense(Zero, name="nothing"), name="renamer")
    assert manager.criteria.get("nothing") is Zero


def test_blocking_a_plugin_by_name(monkeypatch) -> None:
    manager = _quiet_manager(disable=["adaptix.criteria"])
    assert manager.criteria.names() == []
    assert "adaptix.criteria" not in {info.name for info in manager.plugin_infos()}
    assert "reliability" in manager.calibrators
    with pytest.raises(PluginError, match=r"Blocked plugins: adaptix.criteria \(ADAPTIX_DISABLE"):
        adaptix.policy("confidence", 0.5, plugins=manager)
    monkeypatch.setenv("ADAPTIX_DISABLE_PLUGINS", "adaptix.criteria, adaptix.heads")
    from_env = adaptix.get_plugin_manager(autoload=False)
    assert from_env.blocked_names() == ["adaptix.criteria", "adaptix.heads"]
    assert (len(from_env.criteria), len(from_env.exit_heads)) == (0, 0)
    assert "reliability" in from_env.calibrators


def test_entry_point_plugins_load_unless_autoload_is_off(entry_point_plugins, monkeypatch):
    entry_point_plugins({"zero_ep": (Zero,)})
    manager = adaptix.get_plugin_manager()
    entry = manager.criteria.entry("zero")
    assert (entry.plugin, entry.distribution) == ("zero_ep", "(unknown)")
    assert "zero" not in adaptix.get_plugin_manager(autoload=False).criteria
    monkeypatch.setenv("ADAPTIX_AUTOLOAD_PLUGINS", "0")
    assert "zero" not in adaptix.get_plugin_manager().criteria
    assert "zero" in adaptix.get_plugin_manager(autoload=True).criteria


def test_a_blocked_entry_point_plugin_is_not_imported(entry_point_plugins) -> None:
    entry_point_plugins({"zero_ep": (Zero,), "missing": None})
    manager = adaptix.get_plugin_manager(disable=["zero_ep", "missing"])
    assert "zero" not in manager.criteria
    assert manager.broken_plugins() == []  # "missing" was never imported
    with pytest.raises(PluginError, match="Blocked plugins: missing, zero_ep"):
        manager.criteria.entry("zero")


def test_a_plugin_that_cannot_be_imported_warns_then_fails_when_asked(entry_point_plugins):
    entry_point_plugins({"missing": None, "zero_ep": (Zero,)})
    with pytest.warns(AdaptixPluginWarning, match=r"'missing'.*could not be imported"):
        manager = adaptix.get_plugin_manager()
    assert "zero" in manager.criteria  # the others still load
    assert [info.name for info in manager.broken_plugins()] == ["missing"]
    with pytest.raises(PluginError, match=r"These plugins failed to load.*missing") as info:
        adaptix.policy("what_missing_provides", 0.5, plugins=manager)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_a_plugin_that_cannot_be_imported_fails_at_once_when_strict(entry_point_plugins) -> None:
    entry_point_plugins({"missing": None})
    with pytest.raises(PluginError, match=r"'missing'.*could not be imported") as info:
        adaptix.get_plugin_manager(strict=True)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_the_trace_switch_prints_every_hook_call(capsys, monkeypatch) -> None:
    _quiet_manager().criteria.names()
    assert capsys.readouterr().err == ""
    _quiet_manager(trace=True).criteria.names()
    err = capsys.readouterr().err
    for hook in ("adaptix_register_criteria", "adaptix_register_calibrators"):
        assert f"{hook} [hook]" in err
        assert f"finish {hook}" in err
    monkeypatch.setenv("ADAPTIX_TRACE_PLUGINS", "yes")
    adaptix.get_plugin_manager(autoload=False).exit_heads.names()
    assert "adaptix_register_exit_heads [hook]" in capsys.readouterr().err


def test_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "ADAPTIX_DISABLE_PLUGINS": " a, b ,,c ",
            "ADAPTIX_AUTOLOAD_PLUGINS": "off",
            "ADAPTIX_TRACE_PLUGINS": "TRUE",
            "ADAPTIX_STRICT_PLUGINS": "1",
        }
    )
    assert settings.disable_plugins == ("a", "b", "c")
    assert (settings.autoload_plugins, settings.trace_plugins, settings.strict_plugins) == (
        False,
        True,
        True,
    )
    assert Settings.from_env({}) == Settings()


def test_no_warning_from_a_healthy_installation() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adaptix.get_plugin_manager().plugin_infos()
