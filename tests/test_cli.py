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
    assert "    criterion: confidence, entropy, patience, pcee, pcee_ws, pcee_lcb" in out
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


BAD_COMPONENTS = """\
[[models]]
name = "s"
backbone = "msdnett"

[[models]]
name = "l"
head = "linear"
head_params = { hidden = 3 }

[sweep]
criteria = ["confidence", "pcee", "confidance"]
"""


@pytest.mark.parametrize("command", ["config", "run"])
def test_unknown_components_fail_before_anything_runs(
    command: str, tmp_path, monkeypatch, capsys
) -> None:
    def run_job(*args: object, **kwargs: object) -> None:
        raise AssertionError("the job started with a configuration naming unknown components")

    monkeypatch.setattr("adaptix.experiment.run_job", run_job)
    path = tmp_path / "bad.toml"
    path.write_text(BAD_COMPONENTS)
    assert main([command, str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"adaptix: error: invalid {path}:"
    problems = {line.split(":")[0].strip(): line for line in lines[1:]}
    assert set(problems) == {"models.0.backbone", "models.1.head_params", "sweep.criteria.2"}
    assert (
        "unknown backbone 'msdnett'. Available: causal_lm, msdnet, resnet, sequential"
        in captured.err
    )
    assert "exit head 'linear'.hidden: Extra inputs are not permitted" in captured.err
    assert "unknown criterion 'confidance'. Available: confidence, entropy" in captured.err


def test_config_prints_the_validated_defaults(capsys) -> None:
    assert main(["config"]) == 0
    printed = capsys.readouterr().out
    assert '"backbone": "msdnet"' in printed
    assert '"criteria": [\n      "confidence"' in printed


def test_a_meaningless_switch_in_the_environment_exits_with_status_2(monkeypatch, capsys):
    monkeypatch.setenv("ADAPTIX_AUTOLOAD_PLUGINS", "maybe")
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adaptix: error: ADAPTIX_AUTOLOAD_PLUGINS expects one of")
    assert "got 'maybe'" in err


def test_an_output_dir_that_is_a_file_exits_with_status_2(tmp_path, capsys) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    config = tmp_path / "job.toml"
    config.write_text(f'output_dir = "{taken}"\n')
    assert main(["run", str(config)]) == 2
    assert "expected output_dir to be a writable directory" in capsys.readouterr().err
