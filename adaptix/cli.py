"""The ``adaptix`` command line."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptix.errors import AdaptixError, ValidationError

if TYPE_CHECKING:
    from adaptix.experiment.study import StudyResult


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
    from adaptix.experiment import LMJobConfig, load_job_config, run_job
    from adaptix.experiment.lm_job import run_lm_job

    config = load_job_config(args.config, preset=args.preset)
    overrides = {}
    if args.output_dir is not None:
        overrides["output_dir"] = args.output_dir
    if args.no_tracking:
        overrides["tracking"] = config.tracking.model_copy(update={"enabled": False})
    if overrides:
        config = config.model_copy(update=overrides)
    if isinstance(config, LMJobConfig):
        run_lm_job(config)
    else:
        run_job(config)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from adaptix.experiment import load_job_config

    print(load_job_config(args.config, preset=args.preset).model_dump_json(indent=2))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from adaptix.core.trace import Trace
    from adaptix.experiment.study import run_study
    from adaptix.experiment.study_plots import write_plots

    settings = {
        "splits": args.splits,
        "calibration_size": args.calibration_size,
        "alpha": args.alpha,
        "scales": _numbers(args.scales, "--scales"),
        "deltas": _deltas(args.deltas),
        "criteria": _names(args.criteria),
        "bins": args.bins,
        "seed": args.seed,
        "calibrators": _names(args.calibrators),
        "survivors": None if args.survivors is None else _names(args.survivors),
        "bonferroni": args.bonferroni,
    }
    traces = Trace.load(args.calibration_trace), Trace.load(args.test_trace)
    result = run_study(*traces, **settings)
    written = [*result.write(args.out), *write_plots(result, args.out)]
    print(result.to_markdown())
    for path in written:
        print(f"wrote {path}")
    if not args.no_mlflow:
        _log_study(result, written, args.out)
    return 0


def _log_study(result: StudyResult, written: list[Path], out: Path) -> None:
    """Log to MLflow; the files are written by now, so a failure here only warns."""
    from adaptix.experiment.study import log_study
    from adaptix.tracking import Tracker, default_tracking_uri

    uri = default_tracking_uri()
    try:
        tracker = Tracker(tracking_uri=uri, artifact_location=str((out / "mlartifacts").resolve()))
    except AdaptixError as err:
        print(f"adaptix: warning: the study was not logged to MLflow: {err}", file=sys.stderr)
        return
    run = log_study(result, written, tracker=tracker)
    for failure in tracker.failures:
        print(f"adaptix: warning: {failure}", file=sys.stderr)
    if run is not None:
        print(f"MLflow run {run} at {uri} (mlflow ui --backend-store-uri {uri})")


def _names(text: str) -> list[str]:
    """A comma-separated list of names (empty entries dropped)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _numbers(text: str, option: str) -> list[float]:
    """A comma-separated list of numbers."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError as err:
        raise ValidationError(
            f"expected {option} as numbers separated by commas (e.g. 1,2,3), got {text!r}."
        ) from err


def _deltas(text: str) -> list[float]:
    """``START:STOP:STEP`` (both ends included) or a comma-separated list of targets δ."""
    if ":" not in text:
        return _numbers(text, "--deltas")
    parts = _numbers(text.replace(":", ","), "--deltas")
    finite = all(math.isfinite(part) for part in parts)
    if len(parts) != 3 or not finite or not parts[2] > 0 or parts[1] < parts[0]:
        raise ValidationError(
            f"expected --deltas as START:STOP:STEP with START ≤ STOP and STEP > 0 (e.g. "
            f"0.8:0.99:0.01), or a list such as 0.8,0.9,0.95; got {text!r}."
        )
    start, stop, step = parts
    count = math.floor((stop - start) / step + 1e-9) + 1
    return [round(start + i * step, 10) for i in range(count)]


_PRESET_HELP = (
    "a shipped configuration: fashion-mnist (the default job), bbc-minilm (MiniLM-L6 on BBC "
    "News) or smollm2-bbc (token exits of SmolLM2 on BBC News, the language-model job); "
    "`adaptix config --preset NAME` prints it"
)


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
        "run",
        help="the main job: train, calibrate, sweep, measure, report (default config); a "
        "configuration with kind = 'lm' runs the language-model job",
    )
    run.add_argument("config", nargs="?", help="a TOML or YAML job configuration")
    run.add_argument("--preset", help=_PRESET_HELP)
    run.add_argument("--output-dir", type=Path, help="where to write the report and plots")
    run.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    run.set_defaults(func=_cmd_run)
    show = commands.add_parser("config", help="print the effective job configuration as JSON")
    show.add_argument("config", nargs="?", help="a TOML or YAML job configuration")
    show.add_argument("--preset", help=_PRESET_HELP)
    show.set_defaults(func=_cmd_config)
    _add_study(commands)
    _add_shift_study(commands)
    return parser


def _add_shift_study(commands: Any) -> None:
    shift = commands.add_parser(
        "shift-study",
        help="the shift monitor's evidence on the job's model: false alarms on unshifted "
        "streams, detection delay and early accuracy under synthetic shifts, recalibration",
    )
    shift.add_argument("config", nargs="?", help="a TOML or YAML job configuration")
    shift.add_argument("--preset", help=_PRESET_HELP)
    shift.add_argument("--streams", type=int, help="streams per case (default 200)")
    shift.add_argument("--null-length", type=int, help="inputs per unshifted stream (50,000)")
    shift.add_argument("--delay-length", type=int, help="inputs per shifted stream (20,000)")
    shift.add_argument("--repeats", type=int, help="recalibration draws per shift (100)")
    shift.add_argument("--delta", type=float, default=0.9, help="the policy's δ (default 0.9)")
    shift.add_argument("--alpha", type=float, default=0.05, help="false-alarm level α")
    shift.add_argument("--seed", type=int, default=0, help="seeds every draw (default 0)")
    shift.add_argument(
        "--quick",
        action="store_true",
        help="a small run: 20 streams of 5,000 inputs, 10 repeats, two severities per shift "
        "(options given explicitly win)",
    )
    shift.add_argument("--output-dir", type=Path, help="the job's output_dir (default: config's)")
    shift.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    shift.set_defaults(func=_cmd_shift_study)


def _cmd_shift_study(args: argparse.Namespace) -> int:
    from adaptix.experiment import load_config
    from adaptix.experiment.shift_job import shift_job
    from adaptix.experiment.shift_study import StudySettings
    from adaptix.experiment.shifts import DEFAULT_SEVERITIES

    sizes = {"streams": 20, "null_length": 5_000, "delay_length": 5_000, "repeats": 10}
    given = {key: getattr(args, key) for key in sizes if getattr(args, key) is not None}
    if args.quick:
        given = {**sizes, **given}
    # Every setting is checked before the job's data loads, a model trains or a split traces.
    settings = StudySettings(delta=args.delta, alpha=args.alpha, seed=args.seed, **given)
    settings.check_criterion()
    config = load_config(args.config, preset=args.preset)
    if args.output_dir is not None:
        config = config.model_copy(update={"output_dir": args.output_dir})
    severities = (
        {kind: levels[1::2] for kind, levels in DEFAULT_SEVERITIES.items()} if args.quick else None
    )
    result, written = shift_job(config, settings, severities=severities)
    print(result.to_markdown())
    for path in written:
        print(f"wrote {path}")
    if not args.no_mlflow and config.tracking.enabled:
        _log_shift_study(result, written, config)
    return 0


def _log_shift_study(result: Any, written: list[Path], config: Any) -> None:
    """Log to MLflow; the files are written by now, so a failure here only warns."""
    from adaptix.experiment.shift_study import log_shift_study
    from adaptix.tracking import Tracker, default_tracking_uri

    uri = config.tracking.uri or default_tracking_uri()
    try:
        tracker = Tracker(
            tracking_uri=uri,
            experiment=config.tracking.experiment,
            artifact_location=str((Path(config.output_dir) / "mlartifacts").resolve()),
        )
    except AdaptixError as err:
        print(f"adaptix: warning: the study was not logged to MLflow: {err}", file=sys.stderr)
        return
    run = log_shift_study(result, written, tracker)
    for failure in tracker.failures:
        print(f"adaptix: warning: {failure}", file=sys.stderr)
    if run is not None:
        print(f"MLflow run {run} at {uri} (mlflow ui --backend-store-uri {uri})")


def _add_study(commands: Any) -> None:
    from adaptix.experiment.study import DEFAULT_CALIBRATORS, DEFAULT_CRITERIA, DEFAULT_SURVIVORS

    study = commands.add_parser(
        "study",
        help="repeated random calibration/test splits: how often each criterion misses δ "
        "(natural and overconfident logits), and its cost against the hindsight oracle",
    )
    study.add_argument("calibration_trace", type=Path, help="a labelled trace (Trace.save)")
    study.add_argument("test_trace", type=Path, help="a labelled trace of the same model")
    study.add_argument("--splits", type=int, default=100, help="random splits (default 100)")
    study.add_argument(
        "--calibration-size", type=int, default=5000, help="inputs per calibration split"
    )
    study.add_argument("--alpha", type=float, default=0.05, help="the guarantee's level α")
    study.add_argument("--scales", default="1,2,3", help="logit scales (default 1,2,3)")
    study.add_argument(
        "--deltas",
        default="0.8:0.99:0.01",
        help="START:STOP:STEP or a list (default 0.8:0.99:0.01)",
    )
    study.add_argument(
        "--criteria", default=",".join(DEFAULT_CRITERIA), help="criteria and/or 'guarantee'"
    )
    study.add_argument("--bins", type=int, default=10, help="calibration bins (default 10)")
    study.add_argument(
        "--calibrators",
        default=",".join(DEFAULT_CALIBRATORS),
        help="calibrators whose bins the calibrated criteria use, each a mode (default "
        "reliability,equal_mass: the paper's equal-width bins and equal-mass bins)",
    )
    study.add_argument(
        "--survivors",
        help="criteria also measured on survivor tables, beside the paper's (default "
        f"{','.join(DEFAULT_SURVIVORS)} where studied; '' for none)",
    )
    study.add_argument(
        "--no-bonferroni",
        dest="bonferroni",
        action="store_false",
        help="leave out the modes of pcee_lcb (any criterion with a bonferroni parameter) with "
        "the Bonferroni correction, measured by default beside the per-bin ones",
    )
    study.add_argument("--seed", type=int, default=0, help="seeds the splits (default 0)")
    study.add_argument(
        "--out", type=Path, default=Path("adaptix-out/study"), help="where to write the files"
    )
    study.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    study.set_defaults(func=_cmd_study)


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
