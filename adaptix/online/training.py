"""`train_exits`: train the exit heads of a `MultiExitModel` (backbone frozen or jointly)."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from adaptix.core.rows import batch_size as rows_in
from adaptix.core.rows import leaves, take_rows, to_device
from adaptix.core.scores import prediction
from adaptix.errors import ValidationError
from adaptix.online.model import MultiExitModel
from adaptix.scalars import choice, count, flag, integer, real, unit

Data = tuple[Any, Tensor]


@dataclass
class TrainResult:
    """What `train_exits` returns.

    Attributes:
        val_accuracy: per-exit accuracy on the validation data at the kept epoch (None without
            validation data).
        history: per epoch: mean training loss and, with validation data, per-exit accuracy.
        best_epoch: the epoch whose weights were kept (the last one without validation data).
    """

    val_accuracy: list[float] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0


def _check_data(data: object, what: str) -> tuple[Any, Tensor, int]:
    """``(inputs, labels)`` checked, and the largest label (one host synchronisation).

    Raises:
        ValidationError: not a pair of inputs and one int64 label per input, no input, a
            negative label, or NaN/inf in a floating input tensor.
    """
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], Tensor)):
        raise ValidationError(
            f"expected {what} as a pair (inputs, labels) with int64 labels, got "
            f"{type(data).__name__}."
        )
    inputs, labels = data
    n = rows_in(inputs)
    if labels.dtype != torch.int64 or labels.shape != (n,):
        raise ValidationError(
            f"expected {what} labels as int64 of shape [{n}], got {labels.dtype} "
            f"{list(labels.shape)}."
        )
    if n == 0:
        raise ValidationError(f"expected {what} with at least one example, got none.")
    low, high = (int(bound) for bound in torch.aminmax(labels))
    if low < 0:
        raise ValidationError(
            f"expected {what} labels that are class indices 0..C-1, got {low} at input "
            f"{int(labels.argmin())}. Remap the labels to 0..C-1."
        )
    _check_finite_inputs(inputs, what)
    return inputs, labels, high


def _check_finite_inputs(inputs: Any, what: str) -> None:
    """`ValidationError` naming the rows of a floating input tensor that hold NaN or inf.

    A float64 sum is NaN or infinite exactly when a summand is (float32 or float16 inputs
    cannot overflow it): one pass over the inputs, without a boolean copy of them.
    """
    for leaf in leaves(inputs):
        if not leaf.is_floating_point() or math.isfinite(float(leaf.sum(dtype=torch.float64))):
            continue
        finite = torch.isfinite(leaf.flatten(1) if leaf.dim() > 1 else leaf.unsqueeze(1))
        rows = (~finite.all(dim=1)).nonzero().flatten().tolist()
        raise ValidationError(
            f"expected finite inputs in the {what}, got NaN or infinite values in {len(rows)} "
            f"inputs (rows {rows[:10]}{', ...' if len(rows) > 10 else ''}). Drop or repair them: "
            "one such input makes every loss NaN."
        )


def _check_classes(exit_index: int, logits: Tensor, top_label: int, what: str) -> None:
    """`ValidationError` unless the exit's logits ``[n, C]`` have a class for ``top_label``.

    Cross-entropy indexes the logits with the labels: a label >= C is an IndexError on a CPU and
    a device-side assertion on a GPU. Reads the shape only: no host synchronisation.
    """
    classes = logits.shape[-1]
    if top_label >= classes:
        raise ValidationError(
            f"expected {what} labels that are class indices 0..{classes - 1} for the {classes} "
            f"classes of exit {exit_index}'s head, got the label {top_label}. Remap the labels, "
            "or build the model with as many classes as the data has."
        )


def _loss(
    logits: Sequence[Tensor],
    labels: Tensor,
    weights: Sequence[float],
    distillation: float,
    temperature: float,
    top_label: int,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Weighted sum of per-exit cross-entropies (``label_smoothing`` as in
    `torch.nn.functional.cross_entropy`), optionally distilled from the last exit
    (``top_label``: the largest label of the training data, checked against each exit's C)."""
    teacher = logits[-1].detach() / temperature
    total = logits[0].new_zeros(())
    for e, (out, weight) in enumerate(zip(logits, weights, strict=True)):
        _check_classes(e, out, top_label, "training data")
        loss = F.cross_entropy(out, labels, label_smoothing=label_smoothing)
        if distillation > 0 and e < len(logits) - 1:
            soft = F.kl_div(
                F.log_softmax(out / temperature, dim=-1),
                F.log_softmax(teacher, dim=-1),
                log_target=True,
                reduction="batchmean",
            )
            loss = (1 - distillation) * loss + distillation * temperature**2 * soft
        total = total + weight * loss
    return total


class RandomCropFlip:
    """Training augmentation for image batches ``[n, C, H, W]``: a random shift of up to ``pad``
    pixels each way (the classic pad-and-crop; borders replicate the edge pixels, which keeps a
    plain background plain), then a horizontal flip with probability ``flip``.

    Every image draws its own shift and flip from torch's global generator, which
    `train_exits` seeds. Pass it as ``train_exits(..., augment=RandomCropFlip())``.

    Args:
        pad: the largest shift in pixels (0: none).
        flip: the probability of a horizontal flip (0: never; 0.5 for left-right symmetric
            classes such as Fashion-MNIST's).
    """

    def __init__(self, pad: int = 2, flip: float = 0.5) -> None:
        self.pad = count(pad, "pad")
        self.flip = unit(flip, "flip", open_low=False, open_high=False)

    def __repr__(self) -> str:
        return f"RandomCropFlip(pad={self.pad}, flip={self.flip:g})"

    def __call__(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.dim() != 4:
            got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValidationError(f"RandomCropFlip expects images [n, C, H, W], got {got}.")
        n, _, height, width = images.shape
        out = images
        if self.pad:
            padded = F.pad(images, (self.pad,) * 4, mode="replicate")
            dy = torch.randint(0, 2 * self.pad + 1, (n, 1), device=images.device)
            dx = torch.randint(0, 2 * self.pad + 1, (n, 1), device=images.device)
            rows = (dy + torch.arange(height, device=images.device))[:, None, :, None]
            cols = (dx + torch.arange(width, device=images.device))[:, None, None, :]
            batch = torch.arange(n, device=images.device)[:, None, None, None]
            channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
            out = padded[batch, channel, rows, cols]
        if self.flip:
            flipped = torch.rand(n, device=images.device) < self.flip
            out = torch.where(flipped[:, None, None, None], out.flip(-1), out)
        return out.contiguous()


@torch.no_grad()
def _cached_features(model: MultiExitModel, inputs: Any, batch: int) -> list[Tensor]:
    """Per-exit features of a frozen backbone, computed once (heads are all that train)."""
    parts: list[list[Tensor]] = [[] for _ in range(model.num_exits)]
    for start in range(0, rows_in(inputs), batch):
        state = take_rows(inputs, slice(start, start + batch))
        for e in range(model.num_exits):
            state = model.run_block(e, state)
            parts[e].append(model.features(state))
    return [torch.cat(p) for p in parts]


@torch.no_grad()
def exit_accuracy(model: MultiExitModel, data: Data, batch_size: int = 256) -> list[float]:
    """Accuracy of every exit on ``(inputs, labels)``."""
    inputs, labels, top_label = _check_data(data, "data")
    batch_size = count(batch_size, "batch_size", low=1)
    was_training = model.training
    model.eval()
    device = model.check_devices()
    correct = torch.zeros(model.num_exits, dtype=torch.long)
    for start in range(0, rows_in(inputs), batch_size):
        rows = slice(start, start + batch_size)
        batch = to_device(take_rows(inputs, rows), device)
        target = labels[rows].to(device)
        for e, logits in enumerate(model.iter_exits(batch)):
            _check_classes(e, logits, top_label, "data")
            correct[e] += int((prediction(logits) == target).sum())
    model.train(was_training)
    return (correct.double() / labels.numel()).tolist()


def train_exits(
    model: MultiExitModel,
    train: Data,
    val: Data | None = None,
    *,
    mode: Literal["frozen", "joint"] = "frozen",
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    loss_weights: Sequence[float] | None = None,
    distillation: float = 0.0,
    temperature: float = 2.0,
    patience: int | None = None,
    seed: int = 0,
    progress: bool = True,
    label_smoothing: float = 0.0,
    schedule: Literal["cosine", "onecycle"] = "cosine",
    augment: Callable[[Any], Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train the exit heads, with the backbone frozen (default) or jointly.

    Frozen: the blocks and the feature function keep their weights (and batch-norm statistics);
    their features are computed once and every head trains on them. Joint: every parameter
    trains on the weighted sum of per-exit losses. With validation data, the weights of the
    epoch with the best mean exit accuracy are kept, and training returns early when that has
    not improved for ``patience`` epochs.

    Args:
        model: the multi-exit model (modified in place).
        train: ``(inputs, labels)``; inputs a tensor or a dict/tuple of tensors.
        val: held-out ``(inputs, labels)`` for per-exit validation accuracy.
        mode: ``"frozen"`` or ``"joint"``.
        epochs: passes over ``train``.
        batch_size: examples per step.
        lr: AdamW learning rate: the start of the cosine schedule, the peak of the one-cycle.
        weight_decay: AdamW weight decay.
        loss_weights: weight of each exit's loss (default: all 1).
        distillation: share of each early exit's loss that matches the last exit's softened
            predictions (knowledge distillation, 0 to turn off).
        temperature: softening temperature for distillation.
        patience: epochs without improvement before returning early (None: never).
        seed: seeds initial shuffling and dropout.
        progress: show a progress bar.
        label_smoothing: share of each target spread over all classes (0 to turn off).
        schedule: ``"cosine"`` (from ``lr`` to 0 over every step) or ``"onecycle"`` (a warm-up
            to ``lr`` over the first 30 % of the steps, then cosine to almost 0).
        augment: applied to the inputs of every training batch, e.g. `RandomCropFlip`; joint
            mode only (frozen mode computes the features once).
        on_epoch: called after every epoch with that epoch's record of ``history`` (to log
            progress where a progress bar cannot show, e.g. in a worker process).

    Raises:
        ValidationError: an argument out of range; data that is not ``(inputs, labels)`` with
            one int64 label per input; a label outside 0..C-1; NaN or inf in the inputs; or a
            training loss that became NaN or inf (the message names the epoch; the model's
            weights are then no longer usable).
    """
    options = _Options.checked(
        model,
        mode=mode,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        loss_weights=loss_weights,
        distillation=distillation,
        temperature=temperature,
        patience=patience,
        seed=seed,
        progress=progress,
        label_smoothing=label_smoothing,
    )
    epochs, batch_size, lr, seed = options.epochs, options.batch_size, options.lr, options.seed
    patience = options.patience
    weights = options.loss_weights
    _check_recipe(mode, schedule, augment)
    inputs, labels, top_label = _check_data(train, "training data")
    val_data = None if val is None else _check_data(val, "validation data")[:2]
    device = model.check_devices()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    forward = _ExitForward(model, inputs, mode, device, batch_size, augment)
    optimizer = torch.optim.AdamW(forward.parameters(), lr=lr, weight_decay=options.weight_decay)
    n = labels.numel()
    steps = max(epochs * ((n + batch_size - 1) // batch_size), 1)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loss_of = functools.partial(
        _loss,
        weights=weights,
        distillation=options.distillation,
        temperature=options.temperature,
        top_label=top_label,
        label_smoothing=options.label_smoothing,
    )

    result = TrainResult(val_accuracy=None)
    best = _BestEpoch()
    bar = tqdm(
        range(epochs), desc=f"train exits ({mode})", disable=not options.progress, unit="epoch"
    )
    for epoch in bar:
        order = torch.randperm(n, generator=generator)
        loss = _train_epoch(forward, labels, order, batch_size, loss_of, optimizer, scheduler)
        if not math.isfinite(loss):
            raise ValidationError(
                f"expected a finite training loss, got a mean loss of {loss} in epoch {epoch} of "
                f"0..{epochs - 1}: training diverged and the weights are no longer usable. "
                f"Lower the learning rate (lr={lr}), check the inputs for extreme values, or "
                "check that the model's logits are finite on them."
            )
        record: dict[str, Any] = {"epoch": epoch, "loss": loss}
        if val_data is not None:
            accuracy = exit_accuracy(model, val_data, batch_size=max(batch_size, 256))
            record["val_accuracy"] = accuracy
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{sum(accuracy) / len(accuracy):.3f}")
            if best.update(model, accuracy):
                result.val_accuracy, result.best_epoch = accuracy, epoch
        else:
            bar.set_postfix(loss=f"{loss:.3f}")
            result.best_epoch = epoch
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if patience is not None and best.stale >= patience:
            break
    if best.state is not None:
        model.load_state_dict(best.state)
    model.eval()
    return result


@dataclass(frozen=True)
class _Options:
    """The numeric options of `train_exits`, checked (`adaptix.scalars`) and normalised."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    loss_weights: list[float]
    distillation: float
    temperature: float
    patience: int | None
    seed: int
    progress: bool
    label_smoothing: float

    @classmethod
    def checked(
        cls,
        model: MultiExitModel,
        *,
        mode: str,
        loss_weights: Sequence[float] | None,
        patience: int | None,
        **values: Any,
    ) -> _Options:
        """Raise a `ValidationError` naming every option out of range, or return them checked.

        Args:
            model: the model (its exits size ``loss_weights``).
            mode: ``"frozen"`` or ``"joint"``.
            loss_weights: one weight per exit, or None (all 1).
            patience: an integer >= 1, or None.
            values: the other options of `train_exits`, by name.
        """
        choice(mode, "mode", ("frozen", "joint"))
        checks: dict[str, Callable[[], Any]] = {
            "epochs": lambda: count(values["epochs"], "epochs", low=1),
            "batch_size": lambda: count(values["batch_size"], "batch_size", low=1),
            "lr": lambda: real(values["lr"], "lr", low=0.0, open_low=True),
            "weight_decay": lambda: real(values["weight_decay"], "weight_decay", low=0.0),
            "distillation": lambda: real(
                values["distillation"], "distillation", low=0.0, high=1.0, open_high=True
            ),
            "temperature": lambda: real(
                values["temperature"], "temperature", low=0.0, open_low=True
            ),
            "patience": lambda: None if patience is None else count(patience, "patience", low=1),
            "seed": lambda: integer(values["seed"], "seed"),
            "progress": lambda: flag(values["progress"], "progress"),
            "label_smoothing": lambda: real(
                values["label_smoothing"], "label_smoothing", low=0.0, high=1.0, open_high=True
            ),
            "loss_weights": lambda: _loss_weights(loss_weights, model.num_exits),
        }
        checked: dict[str, Any] = {}
        problems: list[str] = []
        for name, check in checks.items():
            try:
                checked[name] = check()
            except ValidationError as err:
                problems.append(str(err).rstrip("."))
        if problems:
            raise ValidationError("; ".join(problems) + ".")
        return cls(**checked)


def _loss_weights(loss_weights: Sequence[float] | None, num_exits: int) -> list[float]:
    """One finite, non-negative weight per exit (all 1 when None)."""
    if loss_weights is None:
        return [1.0] * num_exits
    weights = list(loss_weights) if isinstance(loss_weights, Sequence) else None
    if weights is None or isinstance(loss_weights, str) or len(weights) != num_exits:
        raise ValidationError(
            f"expected loss_weights to be {num_exits} finite, non-negative numbers (one per "
            f"exit), got {loss_weights!r}."
        )
    return [real(w, f"loss_weights[{e}]", low=0.0) for e, w in enumerate(weights)]


def _check_recipe(mode: str, schedule: str, augment: Callable[[Any], Any] | None) -> None:
    """Raise unless the recipe options of `train_exits` are in range and fit ``mode``."""
    choice(schedule, "schedule", ("cosine", "onecycle"))
    if augment is not None and not callable(augment):
        raise ValidationError(
            f"expected augment to be a callable on a batch of inputs, got {type(augment).__name__}."
        )
    if augment is not None and mode == "frozen":
        raise ValidationError(
            "augment needs mode='joint': in the frozen mode the backbone's features are computed "
            "once, so an augmentation would never reach them."
        )


class _ExitForward:
    """Per-exit logits of a batch of training rows, in the frozen or the joint mode.

    Frozen: the backbone's features are computed once, here, and only the heads train. Joint:
    every batch runs the whole model.
    """

    def __init__(
        self,
        model: MultiExitModel,
        inputs: Any,
        mode: str,
        device: torch.device,
        batch: int,
        augment: Callable[[Any], Any] | None = None,
    ) -> None:
        self.model, self.inputs, self.device, self.augment = model, inputs, device, augment
        self.frozen = mode == "frozen"
        self.features: list[Tensor] = []
        if self.frozen:
            model.eval()
            self.features = _cached_features(model, to_device(inputs, device), batch)

    def parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates."""
        module = self.model.heads if self.frozen else self.model
        return list(module.parameters())

    def train(self) -> None:
        """Training mode for what trains (the frozen backbone stays in evaluation mode)."""
        (self.model.heads if self.frozen else self.model).train()

    def __call__(self, rows: Tensor) -> list[Tensor]:
        if self.frozen:
            heads = zip(self.model.heads, self.features, strict=True)
            return [head(f[rows.to(f.device)]) for head, f in heads]
        batch = to_device(take_rows(self.inputs, rows), self.device)
        if self.augment is not None:
            batch = self.augment(batch)
        return list(self.model.iter_exits(batch))


def _train_epoch(
    forward: _ExitForward,
    labels: Tensor,
    order: Tensor,
    batch_size: int,
    loss_of: Callable[[Sequence[Tensor], Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> float:
    """One pass over the rows in ``order``; the mean training loss (NaN or inf once a step's
    loss was). The loss is summed on the device and read once, at the end of the epoch."""
    forward.train()
    total = torch.zeros((), dtype=torch.float64, device=forward.device)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        loss = loss_of(forward(rows), labels[rows].to(forward.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.detach() * rows.numel()
    return float(total) / len(order)


@dataclass
class _BestEpoch:
    """The weights of the epoch with the best mean validation accuracy so far.

    Attributes:
        score: that mean accuracy (-1 before any epoch).
        state: a copy of the model's weights then (None before any epoch).
        stale: epochs since it last improved.
    """

    score: float = -1.0
    state: dict[str, Any] | None = None
    stale: int = 0

    def update(self, model: nn.Module, accuracy: list[float]) -> bool:
        """Record an epoch's per-exit accuracy; True (weights copied) if it is the new best."""
        score = sum(accuracy) / len(accuracy)
        if score > self.score:
            self.score, self.stale, self.state = score, 0, copy.deepcopy(model.state_dict())
            return True
        self.stale += 1
        return False
