"""The plugin host: `get_plugin_manager`, the loading policy, and typed registries.

Built-in components are registered by import, third-party ones through the ``adaptix``
entry-point group, and both go through the same hooks and registries, so they are listed and
blocked the same way. `get_plugin_manager` returns a fresh manager on every call. Calls made
without ``plugins=`` (`adaptix.policy`, `adaptix.sweep`, ...) share `default_plugin_manager`,
built once per set of ``ADAPTIX_*`` settings: `refresh_default_plugin_manager` forgets it, e.g.
after installing a plugin while the process runs.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

import pluggy

from adaptix import hookspecs
from adaptix._version import __version__
from adaptix.callsite import warn
from adaptix.components import (
    Backbone,
    Calibrator,
    Component,
    ExitCriterion,
    ExitHead,
    KVStrategy,
)
from adaptix.errors import AdaptixError, PluginError, ValidationError
from adaptix.scalars import flag
from adaptix.settings import Settings

ENTRY_POINT_GROUP = "adaptix"

#: Built-in plugins: registered by import, under these names, like any other plugin.
BUILTIN_PLUGINS: Mapping[str, str] = {
    "adaptix.criteria": "adaptix.default_plugins.criteria",
    "adaptix.calibrators": "adaptix.default_plugins.calibrators",
    "adaptix.heads": "adaptix.default_plugins.heads",
    "adaptix.backbones": "adaptix.default_plugins.backbones",
    "adaptix.msdnet": "adaptix.default_plugins.msdnet",
    "adaptix.kv": "adaptix.default_plugins.kv",
}

C = TypeVar("C", bound=Component)


class DuplicateComponentError(PluginError):
    """Two plugins register a component of the same kind under the same name."""


class AdaptixPluginWarning(UserWarning):
    """Something is off with the plugins, but nothing has asked for what it affects yet: a
    third-party plugin failed to load or register, or a blocked name matches no plugin."""


@dataclass(frozen=True)
class Entry(Generic[C]):
    """A registered component and who provides it."""

    name: str
    component: type[C]
    plugin: str
    distribution: str
    version: str


@dataclass
class PluginInfo:
    """A loaded (or broken) plugin: its distribution and what it provides."""

    name: str
    distribution: str
    version: str
    module: str
    components: dict[str, list[str]] = field(default_factory=dict)
    error: BaseException | None = None


class Registry(Generic[C]):
    """Components of one kind, by name."""

    def __init__(self, kind: str, base: type[C], manager: AdaptixPluginManager) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry[C]] = {}
        self._manager = manager

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry[C]]:
        """Registered entries, sorted by name."""
        return [self._entries[name] for name in self.names()]

    def entry(self, name: str) -> Entry[C]:
        """The entry registered as ``name``.

        Raises:
            ValidationError: ``name`` is not a string.
            PluginError: no such name; the message lists what is available, and which plugins
                failed to load (the error chains the first failure).
        """
        if not isinstance(name, str):
            raise ValidationError(
                f"expected a {self.kind} name (str), got {name!r} ({type(name).__name__}). "
                f"Available: {', '.join(self.names()) or 'none'}."
            )
        if name in self._entries:
            return self._entries[name]
        available = ", ".join(self.names()) or "none"
        message = f"unknown {self.kind} '{name}'. Available: {available}."
        broken = self._manager.broken_plugins()
        if broken:
            listed = "; ".join(f"{p.name} ({type(p.error).__name__}: {p.error})" for p in broken)
            message += f" These plugins failed to load and may provide it: {listed}."
            raise PluginError(message) from broken[0].error
        blocked = self._manager.blocked_names()
        if blocked:
            message += f" Blocked plugins: {', '.join(blocked)} (ADAPTIX_DISABLE_PLUGINS)."
        raise PluginError(message)

    def get(self, name: str) -> type[C]:
        """The component class registered as ``name`` (see `entry` for errors)."""
        return self.entry(name).component

    def _add(self, entry: Entry[C]) -> None:
        previous = self._entries.get(entry.name)
        if previous is not None:
            raise DuplicateComponentError(
                f"duplicate {self.kind} '{entry.name}': provided by plugin '{previous.plugin}' "
                f"({previous.distribution} {previous.version}) and by plugin '{entry.plugin}' "
                f"({entry.distribution} {entry.version}). Uninstall or block one of them "
                "(ADAPTIX_DISABLE_PLUGINS), or rename the component."
            )
        self._entries[entry.name] = entry


class Registrar(Generic[C]):
    """What a registration hook receives: adds components on behalf of one plugin."""

    def __init__(self, registry: Registry[C], info: PluginInfo) -> None:
        self._registry = registry
        self._info = info

    def add(self, component: type[C], name: str | None = None) -> None:
        """Register ``component`` (a class) under ``name`` (default: ``component.name``)."""
        base = self._registry.base
        if not (isinstance(component, type) and issubclass(component, base)):
            raise PluginError(
                f"plugin '{self._info.name}' registered {component!r} as a {self._registry.kind}"
                f", expected a subclass of {base.__module__}.{base.__qualname__}."
            )
        key = name if name is not None else getattr(component, "name", None)
        if not isinstance(key, str) or not key:
            raise PluginError(
                f"plugin '{self._info.name}' registered {component.__qualname__} without a "
                f"name (got {key!r}, expected a non-empty str): set the class attribute `name` "
                "or pass name=..."
            )
        self._registry._add(
            Entry(key, component, self._info.name, self._info.distribution, self._info.version)
        )
        self._info.components.setdefault(self._registry.kind, []).append(key)


@dataclass(frozen=True)
class ComponentKind:
    """One kind of component: the one table (`COMPONENT_KINDS`) that the manager's registries,
    its properties and the contract tests (`adaptix.testing.contracts`) derive theirs from.

    Attributes:
        name: the kind's name (``"exit head"``): the registry's kind, the contract's case.
        hook: the hook that registers its components (``"adaptix_register_exit_heads"``).
        attribute: the manager's property that holds its registry (``"exit_heads"``).
        base: the class its components subclass.
    """

    name: str
    hook: str
    attribute: str
    base: type[Component]


#: Every kind of component, in the order registries are built and contract cases listed.
COMPONENT_KINDS: tuple[ComponentKind, ...] = (
    ComponentKind("criterion", "adaptix_register_criteria", "criteria", ExitCriterion),
    ComponentKind("calibrator", "adaptix_register_calibrators", "calibrators", Calibrator),
    ComponentKind("exit head", "adaptix_register_exit_heads", "exit_heads", ExitHead),
    ComponentKind("backbone", "adaptix_register_backbones", "backbones", Backbone),
    ComponentKind("kv strategy", "adaptix_register_kv_strategies", "kv_strategies", KVStrategy),
)
_KIND_NAMES = tuple(kind.name for kind in COMPONENT_KINDS)


class AdaptixPluginManager(pluggy.PluginManager):
    """A pluggy manager with adaptix's hooks, loading policy and typed registries."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.settings = settings
        self._infos: dict[str, PluginInfo] = {}
        self._entry_point_names: set[str] = set()
        self._registries: dict[str, Registry[Any]] | None = None
        for name in settings.disable_plugins:
            self.set_blocked(name)
        if settings.trace_plugins:
            self.trace.root.setwriter(sys.stderr.write)
            self.enable_tracing()

    # -- loading ---------------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register a plugin object (see pluggy); registries are rebuilt on next use."""
        registered = super().register(plugin, name)
        if registered is not None and registered not in self._infos:
            module = getattr(plugin, "__name__", type(plugin).__name__)
            self._infos[registered] = PluginInfo(registered, "(registered in code)", "", module)
        self._registries = None
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        """Unregister a plugin (see pluggy); registries are rebuilt on next use."""
        removed = super().unregister(plugin, name)
        self._registries = None
        return removed

    def load_builtins(self) -> None:
        """Register the built-in plugins that are not blocked."""
        for name, module_name in BUILTIN_PLUGINS.items():
            if self.is_blocked(name):
                continue
            module = importlib.import_module(module_name)
            self._infos[name] = PluginInfo(name, "adaptix", __version__, module_name)
            self.register(module, name)

    def load_entrypoint_plugins(self) -> None:
        """Load third-party plugins of the ``adaptix`` entry-point group.

        A plugin that fails to import is recorded and warned about (or raised, when
        ``strict_plugins`` is set); asking for a component it might provide fails loudly.
        """
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._entry_point_names.add(ep.name)
            if self.is_blocked(ep.name) or self.has_plugin(ep.name):
                continue
            dist = ep.dist
            info = PluginInfo(
                ep.name,
                dist.metadata["Name"] if dist is not None else "(unknown)",
                dist.version if dist is not None else "",
                ep.value,
            )
            self._infos[ep.name] = info
            try:
                plugin = ep.load()
            except Exception as err:
                self._broken(info, err, f"could not be imported ({ep.value})")
                continue
            self.register(plugin, ep.name)

    def warn_unknown_blocked(self) -> None:
        """Warn (`AdaptixPluginWarning`) about blocked names that match no plugin.

        Call it once the built-ins and the entry points are loaded: only then are the names
        known. A misspelt name in ``ADAPTIX_DISABLE_PLUGINS`` would otherwise block nothing and
        say nothing.
        """
        known = set(BUILTIN_PLUGINS) | self._entry_point_names | set(self._infos)
        unknown = [name for name in self.blocked_names() if name not in known]
        if unknown:
            warn(
                f"ADAPTIX_DISABLE_PLUGINS / disable= names {unknown}, which match no plugin, so "
                f"they block nothing. Known plugins: {', '.join(sorted(known))}. Check the "
                "spelling against `adaptix plugins`.",
                AdaptixPluginWarning,
            )

    def _broken(self, info: PluginInfo, err: Exception, what: str) -> None:
        info.error = err
        message = f"adaptix plugin '{info.name}' from {info.distribution} {what}: {err!r}"
        if self.settings.strict_plugins or info.distribution == "adaptix":
            raise PluginError(message) from err
        warn(message, AdaptixPluginWarning)

    # -- registries ------------------------------------------------------------------------

    def _build_registries(self) -> dict[str, Registry[Any]]:
        registries: dict[str, Registry[Any]] = {}
        for info in self._infos.values():
            info.components.clear()
        for kind in COMPONENT_KINDS:
            hook_name = kind.hook
            registry: Registry[Any] = Registry(kind.name, kind.base, self)
            registries[kind.name] = registry
            hook = getattr(self.hook, hook_name)
            every = self.get_plugins()
            # pluggy calls impls in LIFO order; reverse so earlier-registered plugins go first.
            for impl in reversed(hook.get_hookimpls()):
                info = self._infos[impl.plugin_name]
                if info.error is not None:
                    if self.settings.strict_plugins:
                        raise PluginError(
                            f"adaptix plugin '{info.name}' is broken: {info.error!r}"
                        ) from info.error
                    continue
                others = [p for p in every if p is not impl.plugin]
                caller = self.subset_hook_caller(hook_name, remove_plugins=others)
                try:
                    caller(registry=Registrar(registry, info))
                except DuplicateComponentError:
                    raise
                except Exception as err:
                    self._broken(info, err, f"failed in {hook_name}")
        return registries

    def registry(self, kind: str) -> Registry[Any]:
        """The registry of the component kind named ``kind`` (a `ComponentKind.name`); the
        typed properties below (`criteria` and siblings) are the same registries.

        Raises:
            ValidationError: ``kind`` names no kind of `COMPONENT_KINDS`.
        """
        if kind not in _KIND_NAMES:
            raise ValidationError(
                f"expected a component kind in {list(_KIND_NAMES)}, got {kind!r}."
            )
        if self._registries is None:
            self._registries = self._build_registries()
        return self._registries[kind]

    @property
    def criteria(self) -> Registry[ExitCriterion]:
        """Exit criteria by name."""
        return self.registry("criterion")

    @property
    def calibrators(self) -> Registry[Calibrator]:
        """Calibrators by name."""
        return self.registry("calibrator")

    @property
    def exit_heads(self) -> Registry[ExitHead]:
        """Exit-head builders by name."""
        return self.registry("exit head")

    @property
    def backbones(self) -> Registry[Backbone]:
        """Backbone adapters by name."""
        return self.registry("backbone")

    @property
    def kv_strategies(self) -> Registry[KVStrategy]:
        """KV-cache strategies for decoder exits by name."""
        return self.registry("kv strategy")

    # -- introspection ---------------------------------------------------------------------

    def plugin_infos(self) -> list[PluginInfo]:
        """Every loaded or broken plugin, with what it provides (registries are built first)."""
        self.registry("criterion")
        return list(self._infos.values())

    def broken_plugins(self) -> list[PluginInfo]:
        """Plugins that failed to import or to register."""
        return [info for info in self._infos.values() if info.error is not None]

    def blocked_names(self) -> list[str]:
        """Names blocked through settings."""
        return sorted(self.settings.disable_plugins)


def get_plugin_manager(
    *,
    autoload: bool | None = None,
    disable: str | Iterable[str] | None = None,
    trace: bool | None = None,
    strict: bool | None = None,
    settings: Settings | None = None,
) -> AdaptixPluginManager:
    """A fresh plugin manager with the built-ins and (unless turned off) installed plugins.

    Arguments left as None come from `adaptix.settings.Settings.from_env` (``ADAPTIX_*``). A
    blocked name that matches no built-in or installed plugin warns (`AdaptixPluginWarning`);
    with autoload off, installed plugins are not scanned, so only the built-in names are known
    and nothing is warned.

    Args:
        autoload: load third-party plugins from the ``adaptix`` entry-point group.
        disable: plugin names to block (built-in names too, e.g. ``"adaptix.criteria"``): a
            list, or one string, comma separated like ``ADAPTIX_DISABLE_PLUGINS``.
        trace: print every hook call to stderr, for debugging plugins.
        strict: raise, instead of warning, when a third-party plugin fails to load.
        settings: base settings (default: from the environment).

    Raises:
        ValidationError: an argument of the wrong type.
        ConfigError: an ``ADAPTIX_*`` variable holds a value it cannot mean.
    """
    if settings is not None and not isinstance(settings, Settings):
        raise ValidationError(
            f"expected settings= an adaptix.settings.Settings, got {type(settings).__name__}."
        )
    base = settings if settings is not None else Settings.from_env()
    overrides: dict[str, Any] = {}
    for field_name, argument, value in (
        ("autoload_plugins", "autoload", autoload),
        ("trace_plugins", "trace", trace),
        ("strict_plugins", "strict", strict),
    ):
        if value is not None:
            overrides[field_name] = flag(value, argument)
    if disable is not None:
        overrides["disable_plugins"] = _plugin_names(disable)
    manager = AdaptixPluginManager(base.model_copy(update=overrides))
    manager.load_builtins()
    if manager.settings.autoload_plugins:
        manager.load_entrypoint_plugins()
        manager.warn_unknown_blocked()
    return manager


def _plugin_names(disable: object) -> tuple[str, ...]:
    """``disable=`` as a tuple of names: one string is split at commas, as in the environment."""
    if isinstance(disable, str):
        return Settings(disable_plugins=disable).disable_plugins
    if not isinstance(disable, (list, tuple, set, frozenset)):
        raise ValidationError(
            f"expected disable= a list of plugin names (or one name), got "
            f"{type(disable).__name__} {disable!r}."
        )
    bad = [name for name in disable if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ValidationError(
            f"expected disable= to hold plugin names (non-empty strings), got {bad!r}. The "
            "names are the ones `adaptix plugins` lists, e.g. 'adaptix.criteria'."
        )
    return tuple(name.strip() for name in disable)


@functools.lru_cache(maxsize=8)
def _default_manager(settings: Settings) -> AdaptixPluginManager:
    return get_plugin_manager(settings=settings)


def default_plugin_manager() -> AdaptixPluginManager:
    """The manager that calls without ``plugins=`` use: built once per set of ``ADAPTIX_*``
    settings, then shared.

    Building a manager scans the installed entry points (about 20 ms), which every
    `adaptix.policy` call would otherwise pay. Changing an ``ADAPTIX_*`` variable gives another
    manager; a plugin installed while the process runs is seen after
    `refresh_default_plugin_manager`. Do not register plugins on this shared manager: build
    your own with `get_plugin_manager` and pass it as ``plugins=``.
    """
    return _default_manager(Settings.from_env())


def refresh_default_plugin_manager() -> None:
    """Forget the shared default managers: the next call builds a fresh one (rescanning the
    installed plugins)."""
    _default_manager.cache_clear()


def resolve_manager(plugins: AdaptixPluginManager | None) -> AdaptixPluginManager:
    """``plugins`` or, when None, `default_plugin_manager`.

    Raises:
        ValidationError: ``plugins`` is neither None nor a plugin manager.
    """
    if plugins is None:
        return default_plugin_manager()
    if not isinstance(plugins, AdaptixPluginManager):
        raise ValidationError(
            f"expected plugins= an adaptix plugin manager (adaptix.get_plugin_manager()) or "
            f"None, got {type(plugins).__name__}."
        )
    return plugins


__all__ = [
    "AdaptixPluginManager",
    "AdaptixPluginWarning",
    "DuplicateComponentError",
    "Entry",
    "PluginInfo",
    "Registrar",
    "Registry",
    "call_plugin",
    "default_plugin_manager",
    "get_plugin_manager",
    "refresh_default_plugin_manager",
]


R = TypeVar("R")


def call_plugin(entry: Entry[Any], method: str, fn: Callable[..., R], *args: Any) -> R:
    """Call a component's method, turning any exception it raises into a chained `PluginError`.

    Nothing is swallowed: the original exception is the ``__cause__``. adaptix's own errors
    (bad input detected by the component) pass through unchanged.
    """
    try:
        return fn(*args)
    except AdaptixError:
        raise
    except Exception as err:
        raise PluginError(
            f"{entry.component.__qualname__}.{method} ({entry.name!r} from plugin "
            f"'{entry.plugin}', {entry.distribution} {entry.version}) raised "
            f"{type(err).__name__}: {err}"
        ) from err
