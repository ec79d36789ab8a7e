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

from adaptix.errors import CalibrationError, ValidationError
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
        calibration = policy.calibration
        if calibration is not None and calibration.num_exits != model.num_exits:
            # The classes are checked on the first batch, when the heads have said how many.
            raise CalibrationError(
                f"expected a calibration for the model's {model.num_exits} exits, got one for "
                f"{calibration.num_exits} exits. Calibrate on a trace of this very model "
                "(adaptix.calibrate(model.trace(inputs, labels)))."
            )
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
        n = self.model.check_input(inputs)
        device = batch_device(inputs)  # the model's device: check_input verified it
        if self.mode == "lockstep":
            return self._lockstep(inputs, n, device)
        return self._compact(inputs, n, device)

    def _stays(self, e: int, logits: Tensor, criterion_state: Any) -> tuple[Tensor, Any]:
        """Which active rows go on after exit ``e``, and the criterion's next state."""
        if self.fused_kind is not None:
            return self._deciders[e].stays(logits), criterion_state
        score, criterion_state = self.policy.score(logits, e, criterion_state)
        return ~self.policy.fires(score), criterion_state

    def _compact(self, inputs: Any, n: int, device: torch.device) -> RunnerOutput:
        """Rows that exit leave the batch. Until the first row leaves, nothing is indexed or
        written: a batch where no row exits early costs its blocks, its heads and, per exit,
        the decision and one host synchronisation."""
        model = self.model
        last = model.num_exits - 1
        criterion = self.policy.criterion
        out: _Results | None = None  # allocated when the first row leaves
        rows: Tensor | None = None  # original positions of the active rows; None: all of them
        state, criterion_state = inputs, criterion.start(n, device)
        for e in range(model.num_exits):
            state = model.run_block(e, state)
            logits = model.head_logits(e, state)
            if e == 0:
                self._check_classes(logits)
            if e == last:
                if out is None or rows is None:  # no row left early
                    return self._all_leave(logits, e)
                out.write(rows, None, logits, prediction(logits), e)
                break
            stays, criterion_state = self._stays(e, logits, criterion_state)
            if n == 1:  # a single row stays or leaves: no index to build
                if bool(stays):  # the one host synchronisation of this exit
                    continue
                return self._all_leave(logits, e)
            keep = stays.nonzero(as_tuple=True)[0]  # the one host synchronisation of this exit
            remaining = int(keep.numel())
            if remaining == (n if rows is None else int(rows.numel())):
                continue  # no row leaves: nothing to write or compact
            if remaining == 0 and (out is None or rows is None):
                return self._all_leave(logits, e)  # the whole batch leaves together
            if out is None or rows is None:
                out = _Results.empty(n, logits, last, self.return_probabilities)
                rows = torch.arange(n, device=device)
            out.write(rows, None if remaining == 0 else ~stays, logits, prediction(logits), e)
            if remaining == 0:
                break
            rows = rows.index_select(0, keep)
            state = take_rows(state, keep)
            criterion_state = criterion.select_state(criterion_state, keep)
        assert out is not None  # the loop returns or writes every row before it ends
        return out.output()

    def _all_leave(self, logits: Tensor, exit_at: int) -> RunnerOutput:
        """Every row of the batch leaves at ``exit_at``, none having left before."""
        return RunnerOutput(
            prediction(logits),
            torch.full((logits.shape[0],), exit_at, dtype=torch.long, device=logits.device),
            probabilities(logits) if self.return_probabilities else None,
        )

    def _lockstep(self, inputs: Any, n: int, device: torch.device) -> RunnerOutput:
        """The whole batch goes on until its last row has exited (the baseline)."""
        model = self.model
        last = model.num_exits - 1
        out: _Results | None = None
        rows = torch.arange(n, device=device)
        pending = torch.ones(n, dtype=torch.bool, device=device)  # not yet exited
        state, criterion_state = inputs, self.policy.criterion.start(n, device)
        for e in range(model.num_exits):
            state = model.run_block(e, state)
            logits = model.head_logits(e, state)
            if e == 0:
                self._check_classes(logits)
                out = _Results.empty(n, logits, last, self.return_probabilities)
            assert out is not None
            if e == last:
                out.write(rows, pending, logits, prediction(logits), e)
                break
            stays, criterion_state = self._stays(e, logits, criterion_state)
            fire = pending & ~stays
            pending = pending & stays
            # The one host synchronisation of this exit: did any row leave, does any remain.
            left, remain = torch.stack((fire.any(), pending.any())).tolist()
            if left:
                out.write(rows, fire, logits, prediction(logits), e)
            if not remain:
                break
        assert out is not None
        return out.output()


@dataclass
class _Results:
    """The batch's results in original row order, filled as rows leave."""

    predictions: Tensor
    exit_index: Tensor
    probs: Tensor | None

    @classmethod
    def empty(cls, n: int, logits: Tensor, last: int, with_probabilities: bool) -> _Results:
        device = logits.device
        return cls(
            torch.empty(n, dtype=torch.long, device=device),
            torch.full((n,), last, dtype=torch.long, device=device),
            torch.empty(n, logits.shape[-1], dtype=torch.float32, device=device)
            if with_probabilities
            else None,
        )

    def output(self) -> RunnerOutput:
        return RunnerOutput(self.predictions, self.exit_index, self.probs)

    def write(
        self, rows: Tensor, leave: Tensor | None, logits: Tensor, predicted: Tensor, exit_at: int
    ) -> None:
        """Write results of the active rows that leave (all when ``leave`` is None).

        Uses masked selects on the active rows rather than boolean indexing, which would need a
        host synchronisation to size its result.
        """
        if leave is None:
            self.predictions[rows] = predicted
            self.exit_index[rows] = exit_at
            if self.probs is not None:
                self.probs[rows] = probabilities(logits)
            return
        self.predictions[rows] = torch.where(leave, predicted, self.predictions[rows])
        self.exit_index[rows] = torch.where(leave, exit_at, self.exit_index[rows])
        if self.probs is not None:
            kept = self.probs[rows]
            self.probs[rows] = torch.where(leave.unsqueeze(1), probabilities(logits), kept)
