"""The installed ``adaptix-example`` distribution, end to end: found through its entry point,
listed by the CLI, usable by name everywhere, and hidden when blocked."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptix
from adaptix import PluginError
from adaptix.cli import main
from adaptix.testing import contract_cases

DISTRIBUTION = "adaptix-example"


@pytest.fixture(autouse=True)
def _installed() -> None:
    """The plugin must be installed: the test command (``make test``) installs it."""
    try:
        version(DISTRIBUTION)
    except PackageNotFoundError:
        pytest.fail(
            f"the {DISTRIBUTION} distribution is not installed, so its entry point cannot be "
            "tested. Run `make test` (it installs plugins/adaptix-example), or "
            "`pip install -e plugins/adaptix-example`."
        )


def test_the_entry_point_is_declared() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="adaptix")}
    assert found.get("example") == "adaptix_example"


def test_it_is_discovered_with_its_distribution_and_version(plugins) -> None:
    info = next(i for i in plugins.plugin_infos() if i.name == "example")
    assert (info.distribution, info.version) == (DISTRIBUTION, version(DISTRIBUTION))
    assert info.version == "0.1.0"
    assert (info.module, info.components, info.error) == (
        "adaptix_example",
        {"criterion": ["margin"]},
        None,
    )
    entry = plugins.criteria.entry("margin")
    assert (entry.plugin, entry.distribution) == ("example", DISTRIBUTION)
    assert ("criterion", "margin") in contract_cases(plugins)


def _clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ADAPTIX_")}


def _example_lines(out: str) -> tuple[list[str], str]:
    """The fields of the plugin's line in ``adaptix plugins`` and the line after it."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("example "))
    return lines[start].split(), lines[start + 1].strip()


def test_the_cli_lists_it_in_a_fresh_process() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "adaptix.cli", "plugins"],
        capture_output=True,
        text=True,
        env=_clean_environment(),
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert _example_lines(completed.stdout) == (
        ["example", DISTRIBUTION, "0.1.0"],
        "criterion: margin",
    )


def test_the_cli_lists_it_in_process(capsys) -> None:
    assert main(["plugins"]) == 0
    assert _example_lines(capsys.readouterr().out) == (
        ["example", DISTRIBUTION, "0.1.0"],
        "criterion: margin",
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_margin_in_policy_simulate_and_sweep_matches_the_definition(
    data, traces, naive, plugins
) -> None:
    trace = data.draw(traces(labelled=None), label="trace")
    quantities = naive.quantities(trace)
    margins = [q.margin for row in quantities for q in row]
    grid = data.draw(st.lists(st.floats(0.0, 1.0) | st.sampled_from(margins), min_size=1))
    scores = adaptix.policy("margin", 0.5, plugins=plugins).scores(trace.logits)
    assert scores.tolist() == [[q.margin for q in row] for row in quantities]
    frontier = adaptix.sweep(trace, "margin", grid, plugins=plugins)
    for threshold, point in zip(grid, frontier, strict=True):
        result = adaptix.simulate(trace, adaptix.policy("margin", threshold, plugins=plugins))
        expected = naive.exits(quantities, lambda i, e, row, t=threshold: row[e].margin >= t)
        assert result.exit_index.tolist() == expected
        metrics = naive.metrics(trace, quantities, expected)
        assert (point.accuracy, point.early_accuracy) == (
            metrics["accuracy"],
            metrics["early_accuracy"],
        )
        assert list(point.exit_histogram) == metrics["exit_histogram"]
        assert point.relative_cost == pytest.approx(metrics["relative_cost"], rel=1e-12)


def test_blocking_it_hides_it(monkeypatch, capsys) -> None:
    monkeypatch.setenv("ADAPTIX_DISABLE_PLUGINS", "example")
    manager = adaptix.get_plugin_manager()
    assert "margin" not in manager.criteria
    assert "example" not in {info.name for info in manager.plugin_infos()}
    with pytest.raises(PluginError, match=r"unknown criterion 'margin'.*Blocked plugins: example"):
        adaptix.policy("margin", 0.5, plugins=manager)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert DISTRIBUTION not in out
    assert "blocked (ADAPTIX_DISABLE_PLUGINS): example" in out


def test_autoload_off_hides_it(monkeypatch) -> None:
    assert "margin" not in adaptix.get_plugin_manager(autoload=False).criteria
    monkeypatch.setenv("ADAPTIX_AUTOLOAD_PLUGINS", "0")
    assert "margin" not in adaptix.get_plugin_manager().criteria
    assert "margin" in adaptix.get_plugin_manager(autoload=True).criteria


def test_a_single_class_has_margin_one(plugins) -> None:
    scores = adaptix.policy("margin", 1.0, plugins=plugins).scores(torch.randn(3, 2, 1))
    assert scores.tolist() == [[1.0, 1.0]] * 3
