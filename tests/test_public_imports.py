"""Plugins and examples use only adaptix's public API: the code third-party authors copy must not
reach into built-in plugins (``adaptix.default_plugins``) or private (underscore) modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import adaptix
from adaptix.core.features import TokenPool

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    path
    for folder in ("plugins", "examples")
    for path in (ROOT / folder).rglob("*.py")
    if ".egg-info" not in str(path) and "build" not in path.relative_to(ROOT).parts
)


def _private_imports(path: Path) -> list[str]:
    """``module.name`` of every adaptix import in ``path`` that is not public API."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            imported = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for dotted in imported:
            parts = dotted.split(".")
            if parts[0] != "adaptix":
                continue
            if "default_plugins" in parts or any(p.startswith("_") for p in parts[1:]):
                found.append(dotted)
    return found


def test_there_are_plugins_and_examples_to_check() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in SOURCES}
    assert "plugins/adaptix-transformers/adaptix_transformers/backbone.py" in names
    assert "plugins/adaptix-example/adaptix_example/__init__.py" in names
    assert any(name.startswith("examples/") for name in names)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_only_public_adaptix_api_is_imported(path: Path) -> None:
    assert _private_imports(path) == []


def test_the_built_in_backbones_pool_tokens_with_the_public_module(plugins) -> None:
    model = adaptix.build_model(
        "sequential",
        3,
        source=[torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)],
        backbone_params={"feature": "mean"},
        plugins=plugins,
        example_input=torch.randn(2, 5, 4),
    )
    assert isinstance(model.feature, TokenPool)
