"""Shared fixtures: a plugin manager, random traces, a naive reference of ``PCEE.md``, and a way to
register components written in a test as a plugin."""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

import adaptix
from adaptix.components import (
    Backbone,
    Calibrator,
    Component,
    ExitCriterion,
    ExitHead,
    KVStrategy,
)
from adaptix.plugins import AdaptixPluginManager, Registrar, refresh_default_plugin_manager
from adaptix.settings import Settings

# The tensors here are tiny: a second intra-op thread only adds synchronisation, which on a busy
# two-core machine costs milliseconds per operation.
torch.set_num_threads(1)

PLUGIN_VARIABLES = (
    "ADAPTIX_DISABLE_PLUGINS",
    "ADAPTIX_AUTOLOAD_PLUGINS",
    "ADAPTIX_TRACE_PLUGINS",
    "ADAPTIX_STRICT_PLUGINS",
)


@pytest.fixture(autouse=True)
def _no_plugin_settings_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the ``ADAPTIX_*`` plugin variables they need; the caller's must not leak in."""
    for variable in PLUGIN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="session")
def plugins() -> AdaptixPluginManager:
    """One default manager (built-ins and installed plugins) for tests that only resolve names."""
    return adaptix.get_plugin_manager(settings=Settings())


# ----------------------------------------------------------------------- plugins written in tests


@dataclass(eq=False)  # pluggy keeps plugins in sets: hash by identity
class InCodePlugin:
    """A plugin object registering the given component classes, each through its kind's hook."""

    components: tuple[type[Component], ...]

    def _add(self, registry: Registrar[Any], base: type[Component]) -> None:
        for component in self.components:
            if issubclass(component, base):
                registry.add(component)

    @adaptix.hookimpl
    def adaptix_register_criteria(self, registry: Registrar[ExitCriterion]) -> None:
        self._add(registry, ExitCriterion)

    @adaptix.hookimpl
    def adaptix_register_calibrators(self, registry: Registrar[Calibrator]) -> None:
        self._add(registry, Calibrator)

    @adaptix.hookimpl
    def adaptix_register_exit_heads(self, registry: Registrar[ExitHead]) -> None:
        self._add(registry, ExitHead)

    @adaptix.hookimpl
    def adaptix_register_backbones(self, registry: Registrar[Backbone]) -> None:
        self._add(registry, Backbone)

    @adaptix.hookimpl
    def adaptix_register_kv_strategies(self, registry: Registrar[KVStrategy]) -> None:
        self._add(registry, KVStrategy)


def _manager_with(*components: type[Component], name: str = "in_test") -> AdaptixPluginManager:
    manager = adaptix.get_plugin_manager(settings=Settings(autoload_plugins=False))
    manager.register(InCodePlugin(components), name=name)
    return manager


@pytest.fixture(scope="session")
def manager_with() -> Callable[..., AdaptixPluginManager]:
    """``manager_with(*classes, name="in_test")``: a fresh manager (built-ins only) with the
    classes registered by an in-code plugin called ``name``."""
    return _manager_with


@pytest.fixture
def entry_point_plugins(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Callable[[Mapping[str, tuple[type[Component], ...] | None]], None]:
    """``entry_point_plugins({name: classes})`` makes the ``adaptix`` entry-point group hold
    exactly these plugins (classes None: a plugin whose module cannot be imported)."""

    def install(plugins: Mapping[str, tuple[type[Component], ...] | None]) -> None:
        found = []
        for name, components in plugins.items():
            module_name = f"adaptix_test_plugin_{name}"
            if components is not None:
                module = types.ModuleType(module_name)
                hooks = InCodePlugin(components)
                for hook in dir(hooks):
                    if hook.startswith("adaptix_"):
                        setattr(module, hook, getattr(hooks, hook))
                monkeypatch.setitem(sys.modules, module_name, module)
            found.append(EntryPoint(name, module_name, "adaptix"))
        monkeypatch.setattr(
            "adaptix.plugins.entry_points",
            lambda group: [ep for ep in found if ep.group == group],
        )
        # Calls without plugins= share a cached manager: make them see these plugins, and
        # forget them after the test.
        refresh_default_plugin_manager()
        request.addfinalizer(refresh_default_plugin_manager)

    return install


# ------------------------------------------------------------------------------ random traces


def _logits(
    generator: torch.Generator, shape: tuple[int, int, int], style: str, scale: float
) -> torch.Tensor:
    if style == "coarse":  # few distinct values: ties in the argmax, repeated confidences
        return torch.randint(-2, 3, shape, generator=generator).float()
    if style == "peaked":  # confidences of exactly 1.0 (the last bin) and exact zeros
        return torch.randn(shape, generator=generator) * 40.0
    return torch.randn(shape, generator=generator) * scale


@st.composite
def _traces(
    draw: st.DrawFn,
    *,
    labelled: bool | None = True,
    num_exits: int | None = None,
    num_classes: int | None = None,
    min_exits: int = 1,
    max_inputs: int = 40,
) -> adaptix.Trace:
    n = draw(st.integers(1, max_inputs))
    e = num_exits if num_exits is not None else draw(st.integers(min_exits, 5))
    c = num_classes if num_classes is not None else draw(st.integers(1, 6))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    style = draw(st.sampled_from(["gauss", "coarse", "peaked"]))
    scale = draw(st.sampled_from([0.3, 1.0, 3.0, 8.0]))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.float16]))
    logits = _logits(generator, (n, e, c), style, scale).to(dtype)
    with_labels = draw(st.booleans()) if labelled is None else labelled
    labels = torch.randint(c, (n,), generator=generator) if with_labels else None
    steps = torch.randint(0, 4, (e,), generator=generator).double()  # zero steps: equal costs
    steps[0] += 1.0
    return adaptix.Trace(logits, labels, steps.cumsum(0))


@pytest.fixture(scope="session")
def traces() -> Callable[..., st.SearchStrategy[adaptix.Trace]]:
    """A strategy of small random traces (N <= 40, E <= 5, C <= 6), for ``data.draw``.

    Keywords: ``labelled`` (True, False, None for either), ``num_exits``, ``num_classes`` (fixed
    instead of drawn), ``min_exits``, ``max_inputs``.
    """
    return _traces


# ------------------------------------------------------------------ the naive reference of PCEE.md


@dataclass(frozen=True)
class Quantities:
    """One input at one exit, computed from the definitions one row at a time."""

    confidence: float  # max p, a float32 value
    prediction: int  # first index of the maximum
    entropy: float  # -sum p log p / log C, 0 log 0 = 0, in float64 from the float32 p
    margin: float  # top-1 minus top-2 probability, subtracted in float32


class Naive:
    """``PCEE.md`` written as per-input Python loops: the oracle of the vectorised code."""

    @staticmethod
    def quantities(trace: adaptix.Trace) -> list[list[Quantities]]:
        """``[N][E]`` per-exit quantities."""
        rows = []
        for i in range(trace.num_inputs):
            row = []
            for e in range(trace.num_exits):
                logits = torch.tensor(trace.logits[i, e].tolist(), dtype=torch.float32)
                p = torch.softmax(logits, dim=0).tolist()  # p_e = softmax(z_e) in float32
                confidence = max(p)
                num_classes = len(p)
                entropy = 0.0
                if num_classes > 1:
                    raw = -sum(q * math.log(q) for q in p if q > 0.0) / math.log(num_classes)
                    entropy = min(max(raw, 0.0), 1.0)
                ranked = [*sorted(p, reverse=True), 0.0]  # a lone class's runner-up: 0
                margin = float(np.float32(ranked[0]) - np.float32(ranked[1]))
                row.append(Quantities(confidence, p.index(confidence), entropy, margin))
            rows.append(row)
        return rows

    @staticmethod
    def bin_of(confidence: float, bins: int) -> int:
        """bin(c) = min(floor(c · M), M - 1), the product in float32."""
        return min(math.floor(float(np.float32(confidence) * np.float32(bins))), bins - 1)

    @classmethod
    def tables(cls, trace: adaptix.Trace, bins: int) -> tuple[list[list[int]], list[list[int]]]:
        """n[e][m] and k[e][m] of a labelled trace."""
        assert trace.labels is not None
        n = [[0] * bins for _ in range(trace.num_exits)]
        k = [[0] * bins for _ in range(trace.num_exits)]
        for i, row in enumerate(cls.quantities(trace)):
            for e, q in enumerate(row):
                m = cls.bin_of(q.confidence, bins)
                n[e][m] += 1
                k[e][m] += int(q.prediction == int(trace.labels[i]))
        return n, k

    @staticmethod
    def accuracy(
        n: list[list[int]], k: list[list[int]], window: int = 0
    ) -> list[list[float | None]]:
        """a[e][m] (window 0) or ã[e][m], None where undefined."""
        table: list[list[float | None]] = []
        for counts, correct in zip(n, k, strict=True):
            bins = len(counts)
            row: list[float | None] = []
            for m in range(bins):
                near = range(max(0, m - window), min(bins, m + window + 1))
                total = sum(counts[j] for j in near)
                row.append(sum(correct[j] for j in near) / total if total >= 1 else None)
            table.append(row)
        return table

    @staticmethod
    def exits(
        quantities: list[list[Quantities]], fires: Callable[[int, int, list[Quantities]], bool]
    ) -> list[int]:
        """The first exit e in 0..E-2 where ``fires(i, e, row)``, else E-1, per input i."""
        exits = []
        for i, row in enumerate(quantities):
            chosen = len(row) - 1
            for e in range(len(row) - 1):
                if fires(i, e, row):
                    chosen = e
                    break
            exits.append(chosen)
        return exits

    @staticmethod
    def streaks(row: list[Quantities]) -> list[int]:
        """Patience's k_e: k_0 = 0, k_e = k_{e-1} + 1 if y_e = y_{e-1}, else 0."""
        streak = [0]
        for e in range(1, len(row)):
            same = row[e].prediction == row[e - 1].prediction
            streak.append(streak[-1] + 1 if same else 0)
        return streak

    @staticmethod
    def metrics(
        trace: adaptix.Trace, quantities: list[list[Quantities]], exits: list[int]
    ) -> dict[str, Any]:
        """accuracy, early accuracy, relative and mean cost, exit histogram."""
        n, last = trace.num_inputs, trace.num_exits - 1
        costs = trace.costs.tolist()
        mean_cost = sum(costs[e] for e in exits) / n
        result: dict[str, Any] = {
            "relative_cost": mean_cost / costs[-1],
            "mean_cost": mean_cost,
            "exit_histogram": [exits.count(e) / n for e in range(trace.num_exits)],
            "accuracy": None,
            "early_accuracy": None,
        }
        if trace.labels is not None:
            labels = trace.labels.tolist()
            right = [quantities[i][e].prediction == labels[i] for i, e in enumerate(exits)]
            early = [r for r, e in zip(right, exits, strict=True) if e < last]
            result["accuracy"] = sum(right) / n
            result["early_accuracy"] = sum(early) / len(early) if early else None
        return result


@pytest.fixture(scope="session")
def naive() -> type[Naive]:
    """The naive per-input reference of ``PCEE.md``."""
    return Naive
