"""The hooks an adaptix plugin implements.

A plugin is a module (or object) with functions decorated by `adaptix.hookimpl`, found through
the ``adaptix`` entry-point group. Every hook registers components into a typed registry. Hooks
are called once, when `adaptix.get_plugin_manager` builds its registries, never per layer or per
batch: adaptix resolves components by name and then calls their plain methods.

Example, in ``my_plugin.py``::

    import adaptix

    @adaptix.hookimpl
    def adaptix_register_criteria(registry):
        registry.add(MyCriterion)

and in the plugin's ``pyproject.toml``::

    [project.entry-points.adaptix]
    my_plugin = "my_plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from adaptix.components import Backbone, Calibrator, ExitCriterion, ExitHead, KVStrategy
    from adaptix.plugins import Registrar

PROJECT = "adaptix"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def adaptix_register_criteria(registry: Registrar[ExitCriterion]) -> None:
    """Register exit criteria (subclasses of `adaptix.components.ExitCriterion`).

    Called once per plugin manager, when its registries are built. Call
    ``registry.add(CriterionClass)`` for each criterion; its ``name`` must be unique among all
    plugins. The return value is ignored.
    """


@hookspec
def adaptix_register_calibrators(registry: Registrar[Calibrator]) -> None:
    """Register calibrators (subclasses of `adaptix.components.Calibrator`).

    Called once per plugin manager. The return value is ignored.
    """


@hookspec
def adaptix_register_exit_heads(registry: Registrar[ExitHead]) -> None:
    """Register exit-head builders (subclasses of `adaptix.components.ExitHead`).

    Called once per plugin manager. The return value is ignored.
    """


@hookspec
def adaptix_register_backbones(registry: Registrar[Backbone]) -> None:
    """Register backbone adapters (subclasses of `adaptix.components.Backbone`).

    Called once per plugin manager. The return value is ignored.
    """


@hookspec
def adaptix_register_kv_strategies(registry: Registrar[KVStrategy]) -> None:
    """Register KV-cache strategies for decoder exits (subclasses of
    `adaptix.components.KVStrategy`).

    Called once per plugin manager. The return value is ignored.
    """
