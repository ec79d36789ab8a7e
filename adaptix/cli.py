"""The ``adaptix`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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


def _cmd_run(args: argparse.Namespace) -> int:
    from adaptix.experiment import load_config, run_job

    config = load_config(args.config)
    overrides = {}
    if args.output_dir is not None:
        overrides["output_dir"] = args.output_dir
    if args.no_tracking:
        overrides["tracking"] = config.tracking.model_copy(update={"enabled": False})
    if overrides:
        config = config.model_copy(update=overrides)
    run_job(config)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from adaptix.experiment import load_config

    print(load_config(args.config).model_dump_json(indent=2))
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
    run = commands.add_parser(
        "run", help="the main job: train, calibrate, sweep, measure, report (default config)"
    )
    run.add_argument("config", nargs="?", help="a TOML or YAML job configuration")
    run.add_argument("--output-dir", type=Path, help="where to write the report and plots")
    run.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    run.set_defaults(func=_cmd_run)
    show = commands.add_parser("config", help="print the effective job configuration as JSON")
    show.add_argument("config", nargs="?", help="a TOML or YAML job configuration")
    show.set_defaults(func=_cmd_config)
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
