"""Seeded synthetic traces that look like a trained multi-exit model's: later exits know more."""

from __future__ import annotations

import torch

from adaptix.core.trace import Trace
from adaptix.scalars import count, flag, integer


def synthetic_trace(
    num_inputs: int = 256,
    num_exits: int = 4,
    num_classes: int = 5,
    *,
    seed: int = 0,
    labelled: bool = True,
) -> Trace:
    """A reproducible trace where accuracy and confidence grow with depth.

    Each input has a difficulty; the true class's logit gets a boost that grows with the exit
    index and shrinks with the difficulty, on top of noise that is partly shared between exits
    (so predictions tend to persist from one exit to the next, as patience expects). Early exits
    are less accurate than late ones and overconfident (with 10 classes and 8 exits: accuracy
    0.32 at mean confidence 0.50 at the first exit, 0.90 at 0.84 at the last), the premise of
    PCEE. Costs grow linearly with depth.

    Args:
        num_inputs: N.
        num_exits: E.
        num_classes: C.
        seed: seeds every random draw: the same arguments give the same trace.
        labelled: attach the labels (False gives an unlabelled trace of the same logits).

    Raises:
        ValidationError: a size below 1 (2 for the classes), or an argument of the wrong type
            (`adaptix.scalars`).
    """
    num_inputs = count(num_inputs, "num_inputs", low=1)
    num_exits = count(num_exits, "num_exits", low=1)
    num_classes = count(num_classes, "num_classes", low=2)
    seed = integer(seed, "seed")
    labelled = flag(labelled, "labelled")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (num_inputs,), generator=generator)
    ease = 1.5 - torch.rand(num_inputs, 1, generator=generator)
    depth = torch.linspace(1.5, 6.0, num_exits).unsqueeze(0)
    boost = (ease * depth).unsqueeze(2)  # [N, E, 1]
    shared = torch.randn(num_inputs, 1, num_classes, generator=generator)
    own = torch.randn(num_inputs, num_exits, num_classes, generator=generator)
    truth = torch.nn.functional.one_hot(labels, num_classes).unsqueeze(1).float()
    logits = 1.2 * shared + 1.2 * own + boost * truth
    costs = torch.arange(1, num_exits + 1, dtype=torch.float64)
    meta = {"source": "adaptix.testing.synthetic_trace"}
    return Trace(logits, labels if labelled else None, costs, meta)
