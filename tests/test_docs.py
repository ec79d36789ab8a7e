"""The API reference covers the public API, through addresses that stay put when modules move.

(The docs' snippets run as tests of their own: conftest.py at the repository root.)
"""

from __future__ import annotations

import re
from pathlib import Path

import adaptix

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference"
# The packages users import by name; everything else is reached through `adaptix.<name>`.
PUBLIC_PACKAGES = {
    f"adaptix.{name}"
    for name in (
        "components",
        "hookspecs",
        "plugins",
        "testing",
        "tracking",
        "kernels",
        "distributed",
        "experiment",
    )
}


def reference_entries() -> list[str]:
    """The identifiers of every mkdocstrings directive (``::: adaptix.Trace``) of the reference."""
    return [
        match.group(1)
        for page in sorted(REFERENCE.glob("*.md"))
        for match in re.finditer(r"^::: (\S+)\s*$", page.read_text(encoding="utf-8"), re.M)
    ]


def test_every_public_name_is_in_the_reference() -> None:
    documented = set(reference_entries())
    missing = [
        name
        for name in adaptix.__all__
        if name != "__version__" and f"adaptix.{name}" not in documented
    ]
    assert not missing, f"add to a page of docs/reference/: {missing}"


def test_the_reference_names_public_addresses_only() -> None:
    public = {f"adaptix.{name}" for name in adaptix.__all__} | PUBLIC_PACKAGES
    entries = reference_entries()
    assert entries, f"no ::: directive found under {REFERENCE}"
    private = [entry for entry in entries if entry not in public]
    assert not private, (
        f"reference pages must use adaptix.<name> or a public package, not a module path "
        f"(modules move): {private}"
    )
