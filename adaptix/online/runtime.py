"""`EarlyExitRunner`: batched early exiting that really skips the compute of rows that exit.

The runner goes block by block. At each exit it evaluates the head on the rows still active,
asks the criterion which rows exit, writes those rows' results at their original positions, and
continues with the remaining rows only: the hidden state, everything that travels with a row
(attention masks, ...) and the criterion's state are compacted together. There is no Python loop
over rows and at most one host synchronisation per exit (to learn how many rows remain and, with
``check_finite``, whether any logits are NaN or infinite: both in the same transfer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from adaptix.core.rows import batch_device, take_rows
from adaptix.core.scores import prediction, probabilities
from adaptix.errors import CalibrationError, ValidationError
from adaptix.kernels import Backend, ExitDecider
from adaptix.kernels.dispatch import BACKENDS
from adaptix.offline.policy import ExitPolicy
from adaptix.online.model import MultiExitModel
from adaptix.online.monitor import ShiftMonitor
from adaptix.scalars import count, flag

if TYPE_CHECKING:
    import os

    from adaptix.core.trace import Trace
    from adaptix.online.monitor import ReferenceCounts


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

    Everything the runner is handed is checked without a host synchronisation of its own: the
    batch against the model (`MultiExitModel.check_input`: a single input without its batch
    dimension is refused), every head's logits (``[n, C]`` for the n rows it was given), and
    every score a criterion plugin returns (``[n]`` on the logits' device); a plugin that raises
    is reported as a `PluginError` naming it. With ``check_finite`` (the default) the runner
    also refuses NaN or infinite logits at every exit, folding the test into the exit's one
    synchronisation; the last exit, which otherwise needs none, then has one too.

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
        check_finite: refuse a batch as soon as an exit gives NaN or infinite logits for a row
            still running (a `ValidationError` naming the exit and the rows' batch positions),
            as `MultiExitModel.trace` does. Set False to skip the test (about one elementwise
            pass over the logits per exit, and one synchronisation at the last exit); such rows
            then never exit early and get an arbitrary prediction.
        monitor: an `adaptix.ShiftMonitor` built for ``policy``: the runner counts every exit's
            confidence bins and the exit histogram into it on the device (no extra host
            synchronisation) and lets it test every ``monitor.check_every`` batches. With
            ``monitor.audit`` > 0 (``"compact"`` mode only) that share of rows, chosen at
            random, goes on to the last exit and gets its prediction (``exit_index`` says
            so), while the monitor keeps their logits at every exit and the exit they would
            have taken.

    The policy can be replaced between batches with `swap_policy`.

    Raises:
        ValidationError: not a `MultiExitModel` or not an `ExitPolicy`, blocks and heads on
            different devices, an unknown mode or backend, a flag that is not a bool, or a
            monitor built for another policy (or auditing in lockstep mode).
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
        check_finite: bool = True,
        monitor: ShiftMonitor | None = None,
    ) -> None:
        if not isinstance(model, MultiExitModel):
            raise ValidationError(
                f"expected an adaptix.MultiExitModel, got {type(model).__name__}."
            )
        if mode not in ("compact", "lockstep"):
            raise ValidationError(f"expected mode 'compact' or 'lockstep', got {mode!r}.")
        if backend not in BACKENDS:
            raise ValidationError(f"expected backend in {BACKENDS}, got {backend!r}.")
        self.model = model
        self.return_probabilities = flag(return_probabilities, "return_probabilities")
        self.mode = mode
        self.backend = backend
        self.fused = flag(fused, "fused")
        self.check_finite = flag(check_finite, "check_finite")
        self._device = model.check_devices()
        self._checked_classes: int | None = None
        self._plan = self._prepare(policy)
        self.monitor = monitor
        if monitor is not None:
            if not isinstance(monitor, ShiftMonitor):
                raise ValidationError(
                    f"expected monitor to be an adaptix.ShiftMonitor, got {type(monitor).__name__}."
                )
            if monitor.policy is not policy:
                raise ValidationError(
                    "expected a ShiftMonitor built for the runner's policy, got one built for "
                    f"{monitor.policy!r}. Build it with the same ExitPolicy object."
                )
            if monitor.num_exits != model.num_exits:
                raise ValidationError(
                    f"expected a ShiftMonitor of the model's {model.num_exits} exits, got one "
                    f"of {monitor.num_exits}."
                )
            if monitor.audit > 0 and mode != "compact":
                raise ValidationError(
                    "expected mode 'compact' for a monitor that audits rows (audit > 0), got "
                    f"{mode!r}."
                )

    @property
    def policy(self) -> ExitPolicy:
        """The policy the next batch runs with."""
        return self._plan.policy

    @property
    def fused_kind(self) -> str | None:
        """The fused exit decision in use (None: the criterion's own score)."""
        return self._plan.fused_kind

    def swap_policy(
        self,
        policy: ExitPolicy,
        *,
        reference: Trace | ReferenceCounts | str | os.PathLike[str] | None = None,
    ) -> None:
        """Run the next batches with ``policy`` (e.g. `ShiftMonitor.recalibrated_policy`).

        Everything the new policy needs (its checks, its exit deciders) is prepared first and
        then installed with one assignment, so a batch runs wholly with the old policy or
        wholly with the new one. An attached monitor starts a new test for the new policy
        (`ShiftMonitor.reset`), against ``reference`` when given: a `Trace` of the data the new
        policy was calibrated on, the path of one saved with `Trace.save`, or `ReferenceCounts`
        counted for the new policy (counts of another policy are refused).

        Raises:
            ValidationError, CalibrationError: as the constructor, for ``policy``; a
                ``reference`` the monitor refuses, or one given with no monitor attached (it
                would be ignored); nothing changes then.
        """
        if reference is not None and self.monitor is None:
            raise ValidationError(
                "expected no reference: this runner has no monitor, the only reader of one. "
                "Attach a ShiftMonitor (monitor=...) or drop the reference."
            )
        plan = self._prepare(policy)
        if self._checked_classes is not None:
            policy.check_model(self.model.num_exits, self._checked_classes)
        if self.monitor is not None:
            self.monitor.reset(policy=policy, reference=reference)
        self._plan = plan

    def _prepare(self, policy: ExitPolicy) -> _Plan:
        """Check ``policy`` against the model and build its exit deciders."""
        model = self.model
        if not isinstance(policy, ExitPolicy):
            raise ValidationError(
                f"expected an adaptix.ExitPolicy, got {type(policy).__name__}. Build one with "
                "adaptix.policy(name, threshold, calibration)."
            )
        device = self._device
        calibration = policy.calibration
        if calibration is not None and calibration.num_exits != model.num_exits:
            # The classes are checked on the first batch, when the heads have said how many.
            raise CalibrationError(
                f"expected a calibration for the model's {model.num_exits} exits, got one for "
                f"{calibration.num_exits} exits. Calibrate on a trace of this very model "
                "(adaptix.calibrate(model.trace(inputs, labels)))."
            )
        criterion = policy.criterion
        # A policy that never exits early (an uncertified guarantee) needs no decision at all.
        fused_kind = criterion.fused_kind if self.fused and policy.exits_early else None
        # One prepared decision per early exit: validated once, not on every batch.
        deciders: list[ExitDecider] = []
        if fused_kind is not None:
            for e in range(model.num_exits - 1):
                table = criterion.fused_table(e)
                # A table is indexed by the bins of the criterion's calibration, which owns them
                # (equal-width, the kernel's fast path, when it has none).
                edges = (
                    None
                    if table is None or calibration is None or calibration.equal_width
                    else calibration.edges[e].to(device)
                )
                deciders.append(
                    ExitDecider(
                        policy.threshold,
                        kind=fused_kind,
                        table=None if table is None else table.to(device),
                        edges=edges,
                        backend=self.backend,
                    )
                )
        return _Plan(policy, fused_kind, deciders)

    def _check_classes(self, logits: Tensor, policy: ExitPolicy) -> None:
        num_classes = int(logits.shape[-1])
        if self._checked_classes != num_classes:
            policy.check_model(self.model.num_exits, num_classes)
            self._checked_classes = num_classes

    @torch.inference_mode()
    def __call__(self, inputs: Any) -> RunnerOutput:
        """Predictions and exit indices for one batch (see the module docstring).

        Raises:
            ValidationError: the batch does not fit the model (shape, device, a single input
                without its batch dimension), a head returns logits that are not ``[n, C]``,
                or (``check_finite``) an exit gives NaN or infinite logits.
            PluginError: the criterion raised, or returned malformed scores.
        """
        plan = self._plan  # read once: a swap takes effect at the next batch
        n = self.model.check_input(inputs)
        device = batch_device(inputs)  # the model's device: check_input verified it
        monitor = self.monitor
        if self.mode == "lockstep":
            output = self._lockstep(inputs, n, device, plan)
            if monitor is not None:
                monitor.end_batch(output.exit_index)
            return output
        positions = None if monitor is None else monitor.audit_rows(n)
        audit = (
            None if positions is None else _Audit(positions, n, device, self.model.num_exits - 1)
        )
        output = self._compact(inputs, n, device, plan, audit)
        if monitor is not None:
            if audit is None:
                monitor.end_batch(output.exit_index)
            else:
                monitor.end_batch(output.exit_index, audit.would_exit, audit.stacked_logits())
        return output

    def _logits(self, e: int, state: Any, active: int, plan: _Plan) -> Tensor:
        """Head ``e``'s logits of the ``active`` rows in ``state``, their shape checked."""
        logits = self.model.head_logits(e, state)
        self.model.check_logits(e, logits, active)
        if e == 0:
            self._check_classes(logits, plan.policy)
        return logits

    def _stays(
        self, plan: _Plan, e: int, logits: Tensor, criterion_state: Any
    ) -> tuple[Tensor, Tensor | None, Any]:
        """Which active rows go on after exit ``e``, their prediction if the decision made it
        anyway (the fused kernel), and the criterion's next state."""
        if plan.fused_kind is not None:
            stays, predicted = plan.deciders[e].decide(logits)
            return stays, predicted, criterion_state
        if not plan.policy.exits_early:
            stays = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
            return stays, None, criterion_state
        score, criterion_state = plan.policy.score(logits, e, criterion_state)
        return ~plan.policy.fires(score), None, criterion_state

    def _non_finite_flag(self, logits: Tensor) -> Tensor | None:
        """A 0-d flag on the logits' device: whether any value is NaN or infinite (None when
        the check is off). Computing it does not synchronise; reading it does."""
        return _non_finite(logits) if self.check_finite else None

    def _compact(
        self, inputs: Any, n: int, device: torch.device, plan: _Plan, audit: _Audit | None
    ) -> RunnerOutput:
        """Rows that exit leave the batch. Until the first row leaves, nothing is indexed or
        written: a batch where no row exits early costs its blocks, its heads and, per exit,
        the decision and one host synchronisation.

        Audited rows (``audit``) are put first and always go on, so they stay the first rows
        of every compacted batch: their logits are a slice, with no index to build."""
        model = self.model
        monitor = self.monitor
        last = model.num_exits - 1
        out: _Results | None = None  # allocated when the first row leaves
        rows: Tensor | None = None  # original positions of the active rows; None: all of them
        active = n
        state = inputs
        if audit is not None:
            rows = audit.order
            state = take_rows(inputs, rows)
        criterion_state = plan.policy.start(n, device)
        for e in range(model.num_exits):
            state = model.run_block(e, state)
            logits = self._logits(e, state, active, plan)
            if audit is not None and out is None:
                out = _Results.empty(n, logits, last, self.return_probabilities)
            if monitor is not None:
                monitor.count_exit(e, logits, None if audit is None else audit.reach(active))
            if audit is not None:
                audit.logits.append(logits[: audit.size])
            non_finite = self._non_finite_flag(logits)
            if e == last:
                if non_finite is not None and bool(non_finite):  # this exit's one sync
                    raise _non_finite_error(logits, rows, e)
                if out is None or rows is None:  # no row left early
                    return self._all_leave(logits, e, None)
                out.write(rows, None, logits, prediction(logits), e)
                break
            stays, predicted, criterion_state = self._stays(plan, e, logits, criterion_state)
            if audit is not None:
                stays = audit.decide(stays, e)
            if n == 1:  # a single row stays or leaves: no index to build
                go_on, bad = _single_row(stays, non_finite)  # this exit's one sync
                if bad:
                    raise _non_finite_error(logits, None, e)
                if go_on:
                    continue
                return self._all_leave(logits, e, predicted)
            keep = _staying_rows(stays, non_finite, active)  # this exit's one sync
            if keep is None:
                raise _non_finite_error(logits, rows, e)
            remaining = int(keep.numel())
            if remaining == active:
                continue  # no row leaves: nothing to write or compact
            if remaining == 0 and (out is None or rows is None):
                return self._all_leave(logits, e, predicted)  # the whole batch leaves together
            if out is None or rows is None:
                out = _Results.empty(n, logits, last, self.return_probabilities)
                rows = torch.arange(n, device=device)
            if predicted is None:
                predicted = prediction(logits)
            out.write(rows, None if remaining == 0 else ~stays, logits, predicted, e)
            if remaining == 0:
                break
            rows = rows.index_select(0, keep)
            state = take_rows(state, keep)
            criterion_state = plan.policy.select_state(criterion_state, keep)
            active = remaining
        assert out is not None  # the loop returns or writes every row before it ends
        return out.output()

    def _all_leave(self, logits: Tensor, exit_at: int, predicted: Tensor | None) -> RunnerOutput:
        """Every row of the batch leaves at ``exit_at``, none having left before."""
        return RunnerOutput(
            prediction(logits) if predicted is None else predicted,
            torch.full((logits.shape[0],), exit_at, dtype=torch.long, device=logits.device),
            probabilities(logits) if self.return_probabilities else None,
        )

    def _lockstep(self, inputs: Any, n: int, device: torch.device, plan: _Plan) -> RunnerOutput:
        """The whole batch goes on until its last row has exited (the baseline)."""
        model = self.model
        monitor = self.monitor
        last = model.num_exits - 1
        out: _Results | None = None
        rows = torch.arange(n, device=device)
        pending = torch.ones(n, dtype=torch.bool, device=device)  # not yet exited
        state, criterion_state = inputs, plan.policy.start(n, device)
        for e in range(model.num_exits):
            state = model.run_block(e, state)
            logits = self._logits(e, state, n, plan)
            if e == 0:
                out = _Results.empty(n, logits, last, self.return_probabilities)
            assert out is not None
            if monitor is not None:
                monitor.count_exit(e, logits, pending)
            # Rows that have left no longer read their logits: only pending rows must be finite.
            bad = (_non_finite(logits, dim=1) & pending).any() if self.check_finite else None
            if e == last:
                if bad is not None and bool(bad):  # this exit's one sync
                    raise _non_finite_error(logits, None, e, pending)
                out.write(rows, pending, logits, prediction(logits), e)
                break
            stays, predicted, criterion_state = self._stays(plan, e, logits, criterion_state)
            fire = pending & ~stays
            still = pending & stays
            # The one host synchronisation of this exit: did any row leave, does any remain,
            # and (check_finite) does any pending row have non-finite logits.
            flags = [fire.any(), still.any(), *([] if bad is None else [bad])]
            left, remain, *non_finite = torch.stack(flags).tolist()
            if any(non_finite):
                raise _non_finite_error(logits, None, e, pending)
            pending = still
            if left:
                predicted = prediction(logits) if predicted is None else predicted
                out.write(rows, fire, logits, predicted, e)
            if not remain:
                break
        assert out is not None
        return out.output()


@dataclass(frozen=True)
class _Plan:
    """What the runner needs of a policy, prepared once: swapped in with one assignment."""

    policy: ExitPolicy
    fused_kind: str | None
    deciders: list[ExitDecider]


class _Audit:
    """One batch's audited rows: put first (``order``: every row's original position, the
    audited ones first), kept to the last exit, their logits and would-be exits recorded."""

    def __init__(self, positions: Tensor, n: int, device: torch.device, last: int) -> None:
        audited = torch.zeros(n, dtype=torch.bool)
        audited[positions] = True
        # Host work: the positions come from the monitor's CPU generator. On a GPU the copy
        # goes from pinned memory without blocking: a pageable copy would wait for the stream.
        order = torch.cat((positions, (~audited).nonzero(as_tuple=True)[0]))
        if device.type == "cuda":
            order = order.pin_memory()
        self.order = order.to(device, non_blocking=True)
        self.size = int(positions.numel())
        self.logits: list[Tensor] = []
        self.last = last
        # The exit each audited row would have taken (``last``: none yet).
        self.would_exit = torch.full((self.size,), last, dtype=torch.long, device=device)

    def reach(self, active: int) -> Tensor:
        """Which active rows count as reaching this exit: all but audited rows that would
        have left already."""
        rest = torch.ones(active - self.size, dtype=torch.bool, device=self.would_exit.device)
        return torch.cat((self.would_exit == self.last, rest))

    def decide(self, stays: Tensor, exit_at: int) -> Tensor:
        """Record where audited rows would have left; keep them in the batch."""
        left = ~stays[: self.size] & (self.would_exit == self.last)
        self.would_exit = torch.where(left, exit_at, self.would_exit)
        return torch.cat((torch.ones_like(left), stays[self.size :]))

    def stacked_logits(self) -> Tensor:
        """``[k, E, C]``: the audited rows' logits at every exit."""
        return torch.stack(self.logits, dim=1)


_NON_FINITE = (
    "expected finite logits, got NaN or infinite logits at exit {exit} for the input rows at "
    "batch positions {rows}. Check those inputs (MultiExitModel.trace refuses them too), or "
    "pass check_finite=False to the runner to skip this check (such rows then get an arbitrary "
    "prediction)."
)
_LISTED_ROWS = 10  # rows named in the message; more are counted


def _non_finite(logits: Tensor, dim: int | None = None) -> Tensor:
    """Whether the logits (with ``dim``: each row along it) hold a NaN or an infinity, as a bool
    tensor on their device. Their float64 sum is then NaN or infinite, and only then (float32
    values cannot overflow it), so the sum times zero is NaN exactly there: three small
    operations, about half the cost of ``isfinite(...).all()`` on a CPU."""
    total = logits.sum(dtype=torch.float64) if dim is None else logits.sum(dim, dtype=torch.float64)
    return total.mul_(0.0).isnan()


def _single_row(stays: Tensor, non_finite: Tensor | None) -> tuple[bool, bool]:
    """For a batch of one row: whether it goes on, and whether its logits are non-finite, in one
    host synchronisation."""
    if non_finite is None:
        return bool(stays), False
    go_on, bad = torch.cat((stays, non_finite.view(1))).tolist()
    return bool(go_on), bool(bad)


def _staying_rows(stays: Tensor, non_finite: Tensor | None, active: int) -> Tensor | None:
    """The indices of the rows that go on, in one host synchronisation; None when
    ``non_finite`` (a 0-d flag) is set.

    The flag rides on the same ``nonzero`` as the decision: it is repeated ``active + 1`` times
    after the ``active`` decisions, so more than ``active`` indices come back exactly when it
    is set, and otherwise they are the staying rows' indices.
    """
    if non_finite is None:
        return stays.nonzero(as_tuple=True)[0]
    found = torch.cat((stays, non_finite.expand(active + 1))).nonzero(as_tuple=True)[0]
    return None if found.numel() > active else found


def _non_finite_error(
    logits: Tensor, rows: Tensor | None, exit_at: int, among: Tensor | None = None
) -> ValidationError:
    """The error for non-finite logits at ``exit_at``, naming the rows by batch position
    (``rows``: original positions of the active rows, None when they are all of them; ``among``:
    only these rows count). The error path: it synchronises as it needs."""
    bad = _non_finite(logits, dim=1)
    if among is not None:
        bad &= among
    local = bad.nonzero(as_tuple=True)[0]
    positions = (local if rows is None else rows.index_select(0, local)).tolist()
    listed = ", ".join(map(str, positions[:_LISTED_ROWS]))
    if len(positions) > _LISTED_ROWS:
        listed += f", ... ({len(positions)} rows)"
    return ValidationError(_NON_FINITE.format(exit=exit_at, rows=f"[{listed}]"))


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


@dataclass(frozen=True)
class ExitTimes:
    """Measured wall-clock seconds per input of every block and every head, at one batch size.

    On a CPU the early blocks of a CNN cost more time than their share of the FLOPs (large
    feature maps, memory-bound), so the speed-up a policy can reach in time differs from the
    FLOP-based one: `ideal_speedup` gives the time-based figure.

    Attributes:
        block: seconds per input of block e, ``[E]``.
        head: seconds per input of head e, ``[E]``.
        batch_size: the rows per forward pass they were measured at.
    """

    block: tuple[float, ...]
    head: tuple[float, ...]
    batch_size: int

    @property
    def plain(self) -> float:
        """Seconds per input of the plain model: every block, then the last head."""
        return sum(self.block) + self.head[-1]

    def to_exit(self, e: int) -> float:
        """Seconds per input of an input that leaves at exit ``e``: blocks and heads 0..e."""
        return sum(self.block[: e + 1]) + sum(self.head[: e + 1])

    def ideal_speedup(self, exit_histogram: Tensor) -> float:
        """plain / the mean time of inputs leaving as ``exit_histogram`` (shares per exit) says:
        what the runner would reach if every exit's remaining rows ran at this batch size's
        cost per row (smaller batches cost more per row, so a real run falls short of it)."""
        shares = exit_histogram.double().tolist()
        if len(shares) != len(self.block):
            raise ValidationError(
                f"expected an exit histogram of {len(self.block)} shares, got {len(shares)}."
            )
        # Counts, or shares that do not add up to 1, would give a speed-up that is silently off.
        if not (all(0 <= s < float("inf") for s in shares) and abs(sum(shares) - 1) <= 1e-4):
            raise ValidationError(
                f"expected an exit histogram of shares (finite, >= 0, summing to 1), got "
                f"{shares}. Divide counts by their total."
            )
        mean = sum(share * self.to_exit(e) for e, share in enumerate(shares))
        return self.plain / mean


@torch.inference_mode()
def time_exits(model: MultiExitModel, batches: list[Any], repeats: int = 2) -> ExitTimes:
    """Time every block and head of ``model`` over ``batches`` (best of ``repeats`` passes,
    after one warm-up pass); times are per input.

    Raises:
        ValidationError: no batches, an input the model refuses, or ``repeats`` < 1.
    """
    if not batches:
        raise ValidationError("expected at least one batch to time, got none.")
    repeats = count(repeats, "repeats", low=1)
    sizes = [model.check_input(batch) for batch in batches]
    rows = sum(sizes)
    synchronise = torch.cuda.synchronize if model.check_devices().type == "cuda" else None
    best_block = [float("inf")] * model.num_exits
    best_head = [float("inf")] * model.num_exits
    for attempt in range(repeats + 1):
        block = [0.0] * model.num_exits
        head = [0.0] * model.num_exits
        for batch in batches:
            state = batch
            for e in range(model.num_exits):
                start = time.perf_counter()
                state = model.run_block(e, state)
                if synchronise is not None:
                    synchronise()
                middle = time.perf_counter()
                model.head_logits(e, state)
                if synchronise is not None:
                    synchronise()
                block[e] += middle - start
                head[e] += time.perf_counter() - middle
        if attempt == 0:
            continue  # warm-up
        best_block = [min(a, b) for a, b in zip(best_block, block, strict=True)]
        best_head = [min(a, b) for a, b in zip(best_head, head, strict=True)]
    return ExitTimes(
        block=tuple(t / rows for t in best_block),
        head=tuple(t / rows for t in best_head),
        batch_size=max(sizes),
    )
