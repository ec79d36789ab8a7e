"""The ``adaptix`` command line: ``adaptix plugins`` and the error convention."""

from __future__ import annotations

import pytest

import adaptix
from adaptix.cli import build_parser, main
from adaptix.default_plugins.criteria import Confidence
from adaptix.plugins import AdaptixPluginWarning


class Sure(Confidence):
    name = "sure"


def test_plugins_lists_every_builtin_with_its_components(capsys) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    version = adaptix.__version__
    for plugin in ("adaptix.criteria", "adaptix.calibrators", "adaptix.heads"):
        assert any(line.split() == [plugin, "adaptix", version] for line in lines), out
    assert "    criterion: confidence, entropy, patience, pcee, pcee_ws" in out
    assert "    calibrator: reliability" in out
    assert "    exit head: linear, mlp" in out
    assert "blocked" not in out


def test_plugins_lists_entry_point_plugins_after_the_builtins(entry_point_plugins, capsys):
    entry_point_plugins({"sure_ep": (Sure,)})
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    position = next(i for i, line in enumerate(lines) if line.startswith("sure_ep "))
    assert lines[position].split() == ["sure_ep", "(unknown)"]
    assert lines[position + 1].strip() == "criterion: sure"
    builtins = [i for i, line in enumerate(lines) if line.startswith("adaptix.")]
    assert max(builtins) < position


def test_plugins_shows_what_is_blocked(monkeypatch, capsys) -> None:
    monkeypatch.setenv("ADAPTIX_DISABLE_PLUGINS", "adaptix.criteria")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "blocked (ADAPTIX_DISABLE_PLUGINS): adaptix.criteria" in out
    assert "criterion: confidence" not in out


def test_plugins_marks_a_broken_plugin(entry_point_plugins, capsys) -> None:
    entry_point_plugins({"missing": None})
    with pytest.warns(AdaptixPluginWarning):
        assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "BROKEN: ModuleNotFoundError" in out
    assert next(line for line in out.splitlines() if line.startswith("missing ")).split()[:2] == [
        "missing",
        "(unknown)",
    ]


def test_an_adaptix_error_exits_with_status_2_and_a_message(
    entry_point_plugins, monkeypatch, capsys
):
    entry_point_plugins({"missing": None})
    monkeypatch.setenv("ADAPTIX_STRICT_PLUGINS", "1")
    assert main(["plugins"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("adaptix: error: adaptix plugin 'missing'")
    assert captured.out == ""


def test_a_command_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "plugins" in capsys.readouterr().err


def test_the_parser_documents_the_plugins_command() -> None:
    assert "list every plugin" in build_parser().format_help()
