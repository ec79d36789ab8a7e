"""The job's step 3: trace the calibration and test splits (every exit's logits and the
measured FLOPs), in this process (on Ray: `adaptix.experiment.job`)."""

from __future__ import annotations

import os

import torch

from adaptix.core.trace import Trace
from adaptix.experiment.datasets import JobData
from adaptix.online.model import MultiExitModel


def trace_splits(
    model: MultiExitModel, data: JobData, name: str, every_core: bool = False
) -> tuple[Trace, Trace]:
    """The calibration and test traces: every exit's logits, and the measured FLOPs (on one
    batch: every input of a split has the same shape). On every core when ``every_core``
    (measured: the large CNN traced 10,000 images in 8 s on two threads, 15 s on one), on the
    job's ``threads`` otherwise."""
    threads = torch.get_num_threads()
    if every_core:
        torch.set_num_threads(os.cpu_count() or threads)
    try:
        return _trace_both(model, data, name)
    finally:
        torch.set_num_threads(threads)


def _trace_both(model: MultiExitModel, data: JobData, name: str) -> tuple[Trace, Trace]:
    calibration, test = (
        model.trace(
            split.inputs,
            split.labels,
            data.batch_size,
            flop_batches=1,  # every input of a split has one shape: one batch counts them all
            progress=True,
            meta={"model": name, "split": split_name},
        )
        for split_name, split in (("calibration", data.calibration), ("test", data.test))
    )
    return calibration, test
