"""The plugin host: registries, loading policy, blocking, broken plugins, tracing, bad input."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor

import adaptix
from adaptix import AdaptixError, CalibrationError, ConfigError, PluginError, ValidationError
from adaptix.components import ExitCriterion, build_params
from adaptix.default_plugins.criteria import Confidence, PCEEWSParams
from adaptix.plugins import (
    AdaptixPluginManager,
    AdaptixPluginWarning,
    default_plugin_manager,
    refresh_default_plugin_manager,
)
from adaptix.settings import Settings
from adaptix.testing import synthetic_trace

BUILTIN_CRITERIA = ["confidence", "entropy", "patience", "pcee", "pcee_ws", "pcee_lcb"]


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
        ("confidence", True, r"real threshold, got True \(bool\)"),
        ("confidence", "0.5", r"real threshold, got '0\.5' \(str\)"),
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
        (Zero, 3, r"without a name \(got 3, expected a non-empty str\)"),
    ],
    ids=["instance", "other-kind", "nameless", "name-not-a-string"],
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


# ------------------------------------------------------------------ arguments and settings


def test_disable_as_one_string_blocks_that_plugin() -> None:
    assert _quiet_manager(disable="adaptix.criteria").criteria.names() == []
    both = _quiet_manager(disable="adaptix.criteria, adaptix.heads")
    assert both.blocked_names() == ["adaptix.criteria", "adaptix.heads"]
    assert (len(both.criteria), len(both.exit_heads)) == (0, 0)
    assert "reliability" in both.calibrators


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"disable": 3}, r"disable= a list of plugin names \(or one name\), got int"),
        ({"disable": {"adaptix.criteria": 1}}, "disable= a list of plugin names.*got dict"),
        ({"disable": ["adaptix.criteria", 3]}, r"plugin names \(non-empty strings\), got \[3\]"),
        ({"disable": [None]}, r"got \[None\]"),
        ({"disable": [""]}, r"got \[''\]"),
        ({"autoload": "no"}, r"autoload to be True or False, got 'no' \(str\)"),
        ({"strict": 1}, r"strict to be True or False, got 1 \(int\)"),
        ({"trace": "yes"}, "trace to be True or False"),
        ({"settings": {"autoload_plugins": False}}, "settings= an adaptix.settings.Settings"),
    ],
    ids=[
        "disable-int",
        "disable-dict",
        "disable-int-entry",
        "disable-none-entry",
        "disable-empty-entry",
        "autoload-str",
        "strict-int",
        "trace-str",
        "settings-dict",
    ],
)
def test_arguments_of_the_wrong_type_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        adaptix.get_plugin_manager(**options)


@pytest.mark.parametrize("via", ["environment", "argument"])
def test_an_unknown_blocked_name_warns_listing_the_known_ones(
    entry_point_plugins, monkeypatch, via: str
) -> None:
    entry_point_plugins({"zero_ep": (Zero,)})
    names = "adaptix.criterias, zero_ep"
    if via == "environment":
        monkeypatch.setenv("ADAPTIX_DISABLE_PLUGINS", names)
    options = {"disable": names} if via == "argument" else {}
    with pytest.warns(
        AdaptixPluginWarning, match=r"\['adaptix.criterias'\].*block nothing"
    ) as info:
        manager = adaptix.get_plugin_manager(**options)
    message = str(info[0].message)
    assert "zero_ep'" not in message  # a blocked entry point is known, even though not loaded
    assert "Known plugins: adaptix.backbones, adaptix.calibrators, adaptix.criteria" in message
    assert "zero_ep" in message.split("Known plugins:")[1]
    assert "confidence" in manager.criteria  # the misspelt name blocked nothing
    assert "zero" not in manager.criteria


def test_known_blocked_names_and_autoload_off_do_not_warn(entry_point_plugins) -> None:
    entry_point_plugins({"zero_ep": (Zero,)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adaptix.get_plugin_manager(disable=["zero_ep", "adaptix.heads"])
        # Installed plugins are not scanned with autoload off: their names are unknown then.
        adaptix.get_plugin_manager(disable=["zero_ep"], autoload=False)


@pytest.mark.parametrize(
    "variable", ["ADAPTIX_AUTOLOAD_PLUGINS", "ADAPTIX_TRACE_PLUGINS", "ADAPTIX_STRICT_PLUGINS"]
)
def test_a_switch_in_the_environment_that_means_nothing_is_a_config_error(
    variable: str, monkeypatch
) -> None:
    with pytest.raises(ConfigError, match=f"{variable} expects one of .* got 'maybe'"):
        Settings.from_env({variable: "maybe"})
    assert Settings.from_env({variable: " "}) == Settings()  # empty: the default
    monkeypatch.setenv(variable, "maybe")
    with pytest.raises(ConfigError, match=variable):
        adaptix.get_plugin_manager()


def test_settings_of_the_wrong_type_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"autoload_plugins: .*got 'maybe'"):
        Settings(autoload_plugins="maybe")
    with pytest.raises(ConfigError, match=r"disable_plugins\.0: .*got 3"):
        Settings(disable_plugins=(3,))


def test_a_registry_asked_for_a_name_that_is_not_a_string(plugins) -> None:
    with pytest.raises(ValidationError, match=r"criterion name \(str\), got 123 \(int\)"):
        plugins.criteria.entry(123)
    with pytest.raises(ValidationError, match=r"backbone name \(str\), got None.*Available: "):
        plugins.backbones.get(None)
    assert [1] not in plugins.criteria
    assert 3 not in plugins.exit_heads


def test_plugins_that_are_not_a_manager_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"plugins= an adaptix plugin manager.*got str"):
        adaptix.policy("confidence", 0.5, plugins="adaptix.criteria")


# ------------------------------------------------------------------ the default manager


@pytest.fixture
def fresh_default():
    """The default manager forgotten before and after the test, so no other test sees ours."""
    refresh_default_plugin_manager()
    yield
    refresh_default_plugin_manager()


def test_calls_without_a_manager_share_one_until_refreshed(
    fresh_default, entry_point_plugins, monkeypatch
) -> None:
    entry_point_plugins({"zero_ep": (Zero,)})
    scans = []
    found = adaptix.plugins.entry_points
    monkeypatch.setattr(
        "adaptix.plugins.entry_points", lambda group: scans.append(group) or found(group)
    )
    for _ in range(3):
        adaptix.policy("zero", 0.5)
    trace = synthetic_trace(8, 3, 4)
    adaptix.sweep(trace, "zero", [0.5])
    adaptix.calibrate(trace)
    assert scans == ["adaptix"]  # one scan of the installed plugins, not one per call
    shared = default_plugin_manager()
    assert default_plugin_manager() is shared
    assert adaptix.get_plugin_manager() is not shared  # get_plugin_manager stays fresh
    refresh_default_plugin_manager()
    assert default_plugin_manager() is not shared
    assert len(scans) == 3


def test_the_default_manager_follows_the_environment(fresh_default, monkeypatch) -> None:
    assert "confidence" in default_plugin_manager().criteria
    monkeypatch.setenv("ADAPTIX_DISABLE_PLUGINS", "adaptix.criteria")
    with pytest.raises(PluginError, match=r"Blocked plugins: adaptix\.criteria"):
        adaptix.policy("confidence", 0.5)
    monkeypatch.delenv("ADAPTIX_DISABLE_PLUGINS")
    assert adaptix.policy("confidence", 0.5).name == "confidence"


@pytest.mark.parametrize("params", ["window", [1], ("window", 2), 3, {1: 2}])
def test_parameters_that_are_not_a_mapping_of_names_are_refused(plugins, params) -> None:
    with pytest.raises(ValidationError, match=r"parameters of criterion 'pcee_ws' as a mapping"):
        build_params(PCEEWSParams, params, "criterion 'pcee_ws'")


@pytest.mark.parametrize("params", ["x", [1]])
@pytest.mark.parametrize(
    ("which", "owner"), [("backbone", "backbone 'sequential'"), ("head", "exit head 'linear'")]
)
def test_build_model_refuses_parameters_that_are_not_a_mapping(plugins, params, which, owner):
    with pytest.raises(ValidationError, match=f"parameters of {owner} as a mapping"):
        adaptix.build_model(
            "sequential",
            3,
            source=[torch.nn.Linear(4, 4)],
            example_input=torch.randn(2, 4),
            plugins=plugins,
            **{f"{which}_params": params},
        )


@pytest.mark.parametrize("name", ["confidence", "pcee"])
@pytest.mark.parametrize("kind", ["trace", "dict", "path"])
def test_a_calibration_that_is_not_a_calibration_is_refused(plugins, name, kind) -> None:
    trace = synthetic_trace(8, 3, 4)
    given = {"trace": trace, "dict": {"counts": [[1]]}, "path": "calibration.json"}[kind]
    with pytest.raises(CalibrationError, match=r"adaptix\.Calibration or None, got a"):
        adaptix.policy(name, 0.5, given, plugins=plugins)


@pytest.mark.parametrize(
    "returned", ["0.5", None, True, math.nan, math.inf, -math.inf, 10**400, torch.tensor(0.5)]
)
def test_a_threshold_that_is_not_a_finite_number_is_a_plugin_error(manager_with, returned):
    odd = type(
        "OddThreshold",
        (Zero,),
        {"name": "odd_threshold", "validate_threshold": classmethod(lambda cls, _: returned)},
    )
    manager = manager_with(odd, name="odd_plugin")
    with pytest.raises(
        PluginError,
        match=r"'odd_threshold' from plugin 'odd_plugin' returned the threshold .* from "
        r"OddThreshold\.validate_threshold .* expected a finite real number",
    ):
        adaptix.policy("odd_threshold", 0.5, plugins=manager)


def test_one_table_of_component_kinds() -> None:
    """`COMPONENT_KINDS` is the one table: the manager's registries and properties, the hooks
    and the contract cases all follow it."""
    from adaptix import hookspecs
    from adaptix.plugins import COMPONENT_KINDS
    from adaptix.testing.contracts import KINDS

    manager = adaptix.get_plugin_manager()
    assert tuple(kind.name for kind in COMPONENT_KINDS) == KINDS
    for kind in COMPONENT_KINDS:
        registry = manager.registry(kind.name)
        assert getattr(manager, kind.attribute) is registry
        assert (registry.kind, registry.base) == (kind.name, kind.base)
        assert callable(getattr(hookspecs, kind.hook, None))
    with pytest.raises(ValidationError, match="expected a component kind in"):
        manager.registry("exit heads")
