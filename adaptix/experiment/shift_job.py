"""The shift-monitor study on the main job's model (``adaptix shift-study``): load or train the
model, trace the clean and the shifted splits, run `adaptix.experiment.shift_study` and write its
tables and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from adaptix.core.cache import ModelCache
from adaptix.core.scores import prediction
from adaptix.core.trace import Trace
from adaptix.errors import ValidationError
from adaptix.experiment.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from adaptix.experiment.datasets import check_data, load_job_data
from adaptix.experiment.shift_plots import write_plots
from adaptix.experiment.shift_study import (
    ShiftedSplit,
    ShiftStudyResult,
    StudySettings,
    run_shift_study,
)
from adaptix.experiment.shifts import (
    DEFAULT_SEVERITIES,
    check_severities,
    class_prior_weights,
    hardest_classes,
    shift_images,
)
from adaptix.experiment.training import train_or_load
from adaptix.plugins import get_plugin_manager


def shift_job(
    config: Any,
    settings: StudySettings | None = None,
    *,
    severities: dict[str, tuple[float, ...]] | None = None,
    log: Any = print,
) -> tuple[ShiftStudyResult, list[Path]]:
    """The study on the main job's runtime model (``runtime.model``, else its largest): load
    it from the job's cache (training it when missing), trace the calibration and test splits
    and the shifted test splits, run the study and write its tables and figures into
    ``output_dir/shift-study``.

    Image shifts apply to image datasets (a 4-d input tensor); the class-prior shift to any.
    Every setting (the job's, the study's, the severities) is checked before any data loads.

    Args:
        config: an `adaptix.experiment.JobConfig`.
        settings: what the study runs (default: `StudySettings()`, δ from the job's runtime
            section).
        severities: per shift kind, its severities (default:
            `adaptix.experiment.shifts.DEFAULT_SEVERITIES`).
        log: where progress lines go.
    """
    st = settings or StudySettings()
    if not isinstance(st, StudySettings):
        raise ValidationError(f"expected StudySettings, got {type(st).__name__}.")
    st.check_criterion()
    severities = check_severities(DEFAULT_SEVERITIES if severities is None else severities)
    check_data(config.data)
    data = load_job_data(config.data)
    name = config.runtime.model or config.models[-1].name
    spec = next(s for s in config.models if s.name == name)
    model, _, _ = train_or_load(
        spec, config, data, ModelCache(config.resolved_cache_dir()), get_plugin_manager(), log, {}
    )

    def trace(inputs: Any, labels: Tensor, what: str) -> Trace:
        log(f"tracing {what}")
        return model.trace(
            inputs, labels, data.batch_size, flop_batches=1, progress=True, meta={"split": what}
        )

    calibration = trace(data.calibration.inputs, data.calibration.labels, "calibration")
    test = trace(data.test.inputs, data.test.labels, "test")
    shifted: list[ShiftedSplit] = []
    images = isinstance(data.test.inputs, Tensor) and data.test.inputs.dim() == 4
    for kind, levels in severities.items():
        if kind == "class_prior":
            labels = calibration.labels
            assert labels is not None
            correct = prediction(calibration.logits[:, 0]) == labels
            boosted = hardest_classes(labels, correct, max(1, calibration.num_classes // 3))
            log(f"class_prior: boosting the hardest classes at exit 0: {boosted}")
            assert test.labels is not None
            for level in levels:
                weights = class_prior_weights(test.labels, level, boosted)
                shifted.append(ShiftedSplit(kind, level, test, weights))
            continue
        if not images:
            log(f"{kind}: skipped (an image shift; this dataset's inputs are not images)")
            continue
        for level in levels:
            moved = shift_images(
                data.test.inputs,
                kind,
                level,
                mean=FASHION_MNIST_MEAN,
                std=FASHION_MNIST_STD,
                seed=st.seed,
            )
            shifted.append(
                ShiftedSplit(kind, level, trace(moved, data.test.labels, f"{kind} {level:g}"))
            )
    log(f"shift study: {len(shifted)} shifted splits, {st.streams} streams each")
    result = run_shift_study(calibration, test, shifted, st)
    folder = Path(config.output_dir) / "shift-study"
    written = [*result.write(folder), *write_plots(result, folder)]
    return result, written
