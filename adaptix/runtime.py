"""`EarlyExitRunner`: batched early exiting that really skips the compute of rows that exit.

The runner goes block by block. At each exit it evaluates the head on the rows still active,
asks the criterion which rows exit, writes those rows' results at their original positions, and
continues with the remaining rows only: the hidden state, everything that travels with a row
(attention masks, ...) and the criterion's state are compacted together. There is no Python loop
over rows and at most one host synchronisation per exit (to learn how many rows remain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from adaptix.errors import ValidationError
from adaptix.kernels import Backend, ExitDecider
from adaptix.model import MultiExitModel
from adaptix.policy import ExitPolicy
from adaptix.rows import batch_device, take_rows
from adaptix.scores import prediction, probabilities


@dataclass(frozen=True)
class RunnerOutput:
    """What `EarlyExitRunner` returns for a batch, in the batch's original row order.

    Attributes:
        predictions: int64 ``[N]``, the prediction at the exit each row took.
        exit_index: int64 ``[N]``, the exit each row took.
        probabilities: float32 ``[N, C]`` softmax at that exit, if asked for.
    """

    predictions: Tensor
    exit_index: Tensor
    probabilities: Tensor | None = None


class EarlyExitRunner:
    """Run a `MultiExitModel` with an `ExitPolicy`, exiting rows early for real.

    Args:
        model: the multi-exit model (put it in eval mode; the runner does not change modes).
        policy: when to exit (`adaptix.policy`).
        return_probabilities: also return the softmax at the exit taken.
        mode: ``"compact"`` (rows that exit leave the batch) or ``"lockstep"`` (the whole batch
            goes on until its last row has exited: the baseline that shows what compaction buys;
            the decisions are the same).
        backend: for criteria that declare a ``fused_kind`` (confidence, entropy, pcee,
            pcee_ws): ``"auto"`` runs the fused Triton exit-decision kernel on CUDA and its torch
            reference elsewhere, ``"torch"`` always the reference, ``"triton"`` always the
            kernel (an error listing the reasons where it cannot run). The decisions are the
            same as the criterion's own `score`; other criteria always use `score`.
        fused: set False to use the criterion's `score` even where a fused op exists.

    Raises:
        ValidationError: blocks and heads on different devices, or an unknown mode.
        CalibrationError: the policy's calibration was made for another model.
    """

    def __init__(
        self,
        model: MultiExitModel,
        policy: ExitPolicy,
        *,
        return_probabilities: bool = False,
        mode: Literal["compact", "lockstep"] = "compact",
        backend: Backend = "auto",
        fused: bool = True,
    ) -> None:
        if not isinstance(model, MultiExitModel):
            raise ValidationError(
                f"expected an adaptix.MultiExitModel, got {type(model).__name__}."
            )
        if mode not in ("compact", "lockstep"):
            raise ValidationError(f"expected mode 'compact' or 'lockstep', got {mode!r}.")
        self.model = model
        self.policy = policy
        self.return_probabilities = return_probabilities
        self.mode = mode
        self.backend = backend
        device = model.check_devices()
        self._checked_classes: int | None = None
        criterion = policy.criterion
        self.fused_kind = criterion.fused_kind if fused else None
        # One prepared decision per early exit: validated once, not on every batch.
        self._deciders: list[ExitDecider] = []
        if self.fused_kind is not None:
            for e in range(model.num_exits - 1):
                table = criterion.fused_table(e)
                self._deciders.append(
                    ExitDecider(
                        policy.threshold,
                        kind=self.fused_kind,
                        table=None if table is None else table.to(device),
                        backend=backend,
                    )
                )

    def _check_classes(self, logits: Tensor) -> None:
        num_classes = int(logits.shape[-1])
        if self._checked_classes != num_classes:
            self.policy.check_model(self.model.num_exits, num_classes)
            self._checked_classes = num_classes

    @torch.inference_mode()
    def __call__(self, inputs: Any) -> RunnerOutput:
        """Predictions and exit indices for one batch (see the module docstring)."""
        model = self.model
        n = model.check_input(inputs)
        device = batch_device(inputs)  # the model's device: check_input verified it
        last = model.num_exits - 1
        criterion = self.policy.criterion
        predictions = torch.empty(n, dtype=torch.long, device=device)
        exit_index = torch.full((n,), last, dtype=torch.long, device=device)
        probs: Tensor | None = None
        rows = torch.arange(n, device=device)  # original positions of the active rows
        pending = torch.ones(n, dtype=torch.bool, device=device)  # lockstep: not yet exited
        state = inputs
        criterion_state = criterion.start(n, device)
        for e in range(model.num_exits):
            state = model.run_block(e, state)
            logits = model.head_logits(e, state)
            if e == 0:
                self._check_classes(logits)
                if self.return_probabilities:
                    probs = torch.empty(n, logits.shape[-1], dtype=torch.float32, device=device)
            if e == last:
                leave = pending if self.mode == "lockstep" else None
                self._write(
                    rows, leave, logits, prediction(logits), e, predictions, exit_index, probs
                )
                break
            if self.fused_kind is not None:
                fire, predicted = self._deciders[e](logits)
            else:
                score, criterion_state = self.policy.score(logits, e, criterion_state)
                fire, predicted = self.policy.fires(score), prediction(logits)
            if self.mode == "lockstep":
                fire = fire & pending
                pending = pending & ~fire
                # The one host synchronisation of this exit: did any row leave, does any remain.
                left, remain = torch.stack((fire.any(), pending.any())).tolist()
                if left:
                    self._write(rows, fire, logits, predicted, e, predictions, exit_index, probs)
                if not remain:
                    break
                continue
            keep = (~fire).nonzero().squeeze(1)  # the one host synchronisation of this exit
            remaining = int(keep.numel())
            if remaining == int(rows.numel()):  # no row leaves: nothing to write or compact
                continue
            leave = None if remaining == 0 else fire
            self._write(rows, leave, logits, predicted, e, predictions, exit_index, probs)
            if remaining == 0:
                break
            rows = rows[keep]
            state = take_rows(state, keep)
            criterion_state = criterion.select_state(criterion_state, keep)
        return RunnerOutput(predictions, exit_index, probs)

    @staticmethod
    def _write(
        rows: Tensor,
        leave: Tensor | None,
        logits: Tensor,
        predicted: Tensor,
        exit_at: int,
        predictions: Tensor,
        exit_index: Tensor,
        probs: Tensor | None,
    ) -> None:
        """Write results of the active rows that leave (all when ``leave`` is None).

        Uses masked selects on the active rows rather than boolean indexing, which would need a
        host synchronisation to size its result.
        """
        if leave is None:
            predictions[rows] = predicted
            exit_index[rows] = exit_at
            if probs is not None:
                probs[rows] = probabilities(logits)
            return
        predictions[rows] = torch.where(leave, predicted, predictions[rows])
        exit_index[rows] = torch.where(leave, exit_at, exit_index[rows])
        if probs is not None:
            probs[rows] = torch.where(leave.unsqueeze(1), probabilities(logits), probs[rows])
