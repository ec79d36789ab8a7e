"""The ``adaptix`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from adaptix.errors import AdaptixError


def _cmd_plugins(args: argparse.Namespace) -> int:
    from adaptix.plugins import get_plugin_manager

    manager = get_plugin_manager()
    infos = manager.plugin_infos()
    width = max((len(info.name) for info in infos), default=6)
    for info in sorted(infos, key=lambda i: (i.distribution != "adaptix", i.name)):
        status = (
            "" if info.error is None else f"  BROKEN: {type(info.error).__name__}: {info.error}"
        )
        print(f"{info.name:<{width}}  {info.distribution} {info.version}{status}")
        for kind, names in info.components.items():
            print(f"{'':<{width}}    {kind}: {', '.join(names)}")
    blocked = manager.blocked_names()
    if blocked:
        print(f"blocked (ADAPTIX_DISABLE_PLUGINS): {', '.join(blocked)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="adaptix", description="Adaptive inference with performance-controlled early exits."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    plugins = commands.add_parser(
        "plugins", help="list every plugin: distribution, version, components"
    )
    plugins.set_defaults(func=_cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adaptix`` script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AdaptixError as err:
        print(f"adaptix: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
