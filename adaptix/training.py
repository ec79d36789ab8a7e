"""`train_exits`: train the exit heads of a `MultiExitModel` (backbone frozen or jointly)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from adaptix.errors import ValidationError
from adaptix.model import MultiExitModel
from adaptix.rows import batch_size as rows_in
from adaptix.rows import take_rows, to_device

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


def _check_data(data: object, what: str) -> Data:
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
    return inputs, labels


def _loss(
    logits: Sequence[Tensor],
    labels: Tensor,
    weights: Sequence[float],
    distillation: float,
    temperature: float,
) -> Tensor:
    """Weighted sum of per-exit cross-entropies, optionally distilled from the last exit."""
    teacher = logits[-1].detach() / temperature
    total = logits[0].new_zeros(())
    for e, (out, weight) in enumerate(zip(logits, weights, strict=True)):
        loss = F.cross_entropy(out, labels)
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
    inputs, labels = _check_data(data, "data")
    was_training = model.training
    model.eval()
    device = model.check_devices()
    correct = torch.zeros(model.num_exits, dtype=torch.long)
    for start in range(0, rows_in(inputs), batch_size):
        rows = slice(start, start + batch_size)
        batch = to_device(take_rows(inputs, rows), device)
        target = labels[rows].to(device)
        for e, logits in enumerate(model.iter_exits(batch)):
            correct[e] += int((logits.argmax(dim=-1) == target).sum())
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
        lr: AdamW learning rate (cosine-annealed to 0).
        weight_decay: AdamW weight decay.
        loss_weights: weight of each exit's loss (default: all 1).
        distillation: share of each early exit's loss that matches the last exit's softened
            predictions (knowledge distillation, 0 to turn off).
        temperature: softening temperature for distillation.
        patience: epochs without improvement before returning early (None: never).
        seed: seeds initial shuffling and dropout.
        progress: show a progress bar.
    """
    if mode not in ("frozen", "joint"):
        raise ValidationError(f"expected mode 'frozen' or 'joint', got {mode!r}.")
    if epochs < 1 or batch_size < 1 or lr <= 0 or not 0.0 <= distillation < 1.0:
        raise ValidationError(
            f"expected epochs >= 1, batch_size >= 1, lr > 0 and distillation in [0, 1), got "
            f"{epochs}, {batch_size}, {lr}, {distillation}."
        )
    weights = list(loss_weights) if loss_weights is not None else [1.0] * model.num_exits
    if len(weights) != model.num_exits or min(weights) < 0:
        raise ValidationError(
            f"expected {model.num_exits} non-negative loss weights, got {weights}."
        )
    inputs, labels = _check_data(train, "training data")
    val_data = None if val is None else _check_data(val, "validation data")
    device = model.check_devices()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    frozen = mode == "frozen"
    trainable = list(model.heads.parameters()) if frozen else list(model.parameters())
    if frozen:
        model.eval()
        features = _cached_features(model, to_device(inputs, device), batch_size)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    n = labels.numel()
    steps = epochs * ((n + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))

    result = TrainResult(val_accuracy=None)
    best_score, best_state, stale = -1.0, None, 0
    bar = tqdm(range(epochs), desc=f"train exits ({mode})", disable=not progress, unit="epoch")
    for epoch in bar:
        if frozen:
            model.heads.train()
        else:
            model.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            target = labels[idx].to(device)
            if frozen:
                logits = [
                    head(f[idx.to(f.device)]) for head, f in zip(model.heads, features, strict=True)
                ]
            else:
                logits = list(model.iter_exits(to_device(take_rows(inputs, idx), device)))
            loss = _loss(logits, target, weights, distillation, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * idx.numel()
        record: dict[str, Any] = {"epoch": epoch, "loss": total / n}
        if val_data is not None:
            accuracy = exit_accuracy(model, val_data, batch_size=max(batch_size, 256))
            record["val_accuracy"] = accuracy
            score = sum(accuracy) / len(accuracy)
            bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{score:.3f}")
            if score > best_score:
                best_score, stale = score, 0
                best_state = copy.deepcopy(model.state_dict())
                result.val_accuracy, result.best_epoch = accuracy, epoch
            else:
                stale += 1
        else:
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            result.best_epoch = epoch
        result.history.append(record)
        if patience is not None and stale >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
