"""`MultiExitModel`: a backbone cut into blocks, with an exit head after each block."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from adaptix.components import BackboneParts, DecoderParts, build_params
from adaptix.core.flops import FlopMeter, FlopProfile
from adaptix.core.rows import batch_device, batch_size, take_rows
from adaptix.core.rows import batch_size as batch_size_of
from adaptix.core.trace import Trace
from adaptix.errors import PluginError, ValidationError
from adaptix.plugins import AdaptixPluginManager, call_plugin, resolve_manager
from adaptix.scalars import count, flag


class _Lambda(nn.Module):
    """Wraps a plain callable feature function so it can live in the module tree."""

    def __init__(self, fn: Callable[[Any], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, state: Any) -> Tensor:
        return self.fn(state)


def _first_tensor_slot(module: nn.Module) -> tuple[dict[str, Any], str] | None:
    """The dict and name of ``module``'s first parameter or buffer (None if it has none)."""
    for sub in module.modules():
        for store in (sub._parameters, sub._buffers):
            for name, tensor in store.items():
                if tensor is not None:
                    return store, name
    return None


class MultiExitModel(nn.Module):
    """Blocks with an exit head after each; the last head is the model's final classifier.

    Args:
        blocks: block e maps the state after block e-1 (the input for e = 0) to the state after
            block e. A state is a tensor or a dict/tuple of tensors sharing the batch dimension
            (e.g. hidden states and the attention mask), so everything of a row travels with it.
        heads: head e maps ``feature(state after block e)`` to logits ``[n, C]``.
        feature: the backbone's feature function (pooling, CLS token, ...); identity if None.
        input_shape: the shape of one input (without the batch dimension), checked on every
            call when given.

    Raises:
        ValidationError: blocks and heads are not ModuleLists of equal, non-zero length.
    """

    def __init__(
        self,
        blocks: nn.ModuleList,
        heads: nn.ModuleList,
        feature: nn.Module | Callable[[Any], Tensor] | None = None,
        *,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(blocks, nn.ModuleList) or not isinstance(heads, nn.ModuleList):
            raise ValidationError(
                f"expected blocks and heads as nn.ModuleList, got {type(blocks).__name__} and "
                f"{type(heads).__name__}. Wrap them: nn.ModuleList([...])."
            )
        if len(blocks) != len(heads) or len(blocks) == 0:
            raise ValidationError(
                f"expected as many heads as blocks (at least one), got {len(blocks)} blocks and "
                f"{len(heads)} heads. Head e reads the output of block e."
            )
        self.blocks = blocks
        self.heads = heads
        if feature is None or isinstance(feature, nn.Module):
            self.feature = feature
        elif callable(feature):
            self.feature = _Lambda(feature)
        else:
            raise ValidationError(f"expected a callable feature function, got {feature!r}.")
        self.input_shape = _check_input_shape(input_shape)

    @property
    def num_exits(self) -> int:
        """E, the number of exits (= blocks)."""
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        """The device of the parameters (checked to be the same for blocks and heads)."""
        return self.check_devices()

    def check_devices(self) -> torch.device:
        """The one device of all parameters and buffers; `ValidationError` if they disagree."""
        return self._one_device({t.device for t in (*self.parameters(), *self.buffers())})

    def _one_device(self, devices: set[torch.device]) -> torch.device:
        if len(devices) > 1:
            placement = {
                f"{kind}[{i}]": sorted({str(p.device) for p in module.parameters()})
                for kind, modules in (("block", self.blocks), ("head", self.heads))
                for i, module in enumerate(modules)
            }
            raise ValidationError(
                f"expected every block and head on one device, got {sorted(map(str, devices))}: "
                f"{placement}. Move the whole model: model.to(device)."
            )
        return devices.pop() if devices else torch.device("cpu")

    def _representatives(self) -> tuple[tuple[dict[str, Any], str], ...]:
        """Where one parameter or buffer of each block, head and feature module lives, cached.

        Walking every parameter costs about as much as a small batch's forward pass, so the
        per-batch check (`check_input`) reads one tensor per module, by its slot (the owning
        module's parameter or buffer dict and its name): ``model.to(...)`` and ``head.to(...)``
        update those slots in place, even where they replace the tensor. The cache is keyed on
        the identity of the blocks, heads and feature module, so replacing one is noticed; a
        layer replaced deeper inside on another device fails in its block or head, which
        `run_block` and `head_logits` turn into a `ValidationError`.
        """
        modules = (*self.blocks, *self.heads, *([self.feature] if self.feature is not None else []))
        key = tuple(map(id, modules))
        cached = self.__dict__.get("_adaptix_representatives")
        if cached is None or cached[0] != key:
            slots = (_first_tensor_slot(module) for module in modules)
            cached = (key, tuple(slot for slot in slots if slot is not None))
            self.__dict__["_adaptix_representatives"] = cached
        return cached[1]

    def _quick_device(self) -> torch.device:
        devices = set()
        for store, name in self._representatives():
            tensor = store.get(name)
            if tensor is not None:
                devices.add(tensor.device)
        return self._one_device(devices)

    def check_input(self, inputs: Any) -> int:
        """Validate a batch against the backbone; returns its size.

        Raises:
            ValidationError: a single input without its batch dimension, empty batch, wrong
                per-input shape, or another device.
        """
        shape = self.input_shape
        if isinstance(inputs, Tensor) and (
            inputs.dim() == 0 or (shape is not None and tuple(inputs.shape) == shape)
        ):
            raise ValidationError(
                f"expected a batch of inputs [N, ...], got a single input of shape "
                f"{list(inputs.shape)} without its batch dimension. The model and the runner "
                "take batches: add the batch dimension with inputs.unsqueeze(0)."
            )
        n = batch_size(inputs)
        if n == 0:
            raise ValidationError("expected a batch of at least one input, got an empty batch.")
        if shape is not None and isinstance(inputs, Tensor) and tuple(inputs.shape[1:]) != shape:
            raise ValidationError(
                f"expected inputs of shape [N, {', '.join(map(str, shape))}], got "
                f"{list(inputs.shape)}. Reshape or resize the inputs for this backbone."
            )
        device = self._quick_device()
        if batch_device(inputs) != device:
            raise ValidationError(
                f"expected inputs on {device} like the model, got {batch_device(inputs)}. "
                "Move them with .to(device)."
            )
        return n

    def features(self, state: Any) -> Tensor:
        """What the heads read from a block's output."""
        return state if self.feature is None else self.feature(state)

    def run_block(self, index: int, state: Any) -> Any:
        """Block ``index`` on ``state``; a shape error becomes a `ValidationError`."""
        try:
            return self.blocks[index](state)
        except (RuntimeError, ValueError, IndexError, KeyError, TypeError) as err:
            raise ValidationError(
                f"block {index} failed on its input ({type(err).__name__}: {err}). Check that the "
                "inputs fit the backbone (shape, dtype, keys)."
            ) from err

    def head_logits(self, index: int, state: Any) -> Tensor:
        """Logits ``[n, C]`` of head ``index`` on the output of block ``index``."""
        try:
            return self.heads[index](self.features(state))
        except (RuntimeError, ValueError, IndexError, KeyError, TypeError, AttributeError) as err:
            raise ValidationError(
                f"head {index} failed on the output of block {index} ({type(err).__name__}: "
                f"{err}). Check that the head fits the block's features and sits on the same "
                "device (model.to(device))."
            ) from err

    def check_logits(self, index: int, logits: Tensor, rows: int) -> None:
        """Raise a `ValidationError` unless head ``index`` returned floating logits
        ``[rows, C]``. Reads the shape and dtype only: no host synchronisation."""
        if (
            isinstance(logits, Tensor)
            and logits.dim() == 2
            and logits.shape[0] == rows
            and logits.is_floating_point()
        ):
            return
        if not isinstance(logits, Tensor):
            got, fix = type(logits).__name__, "Make the head return a tensor of logits."
        elif logits.dim() < 2:
            got = f"shape {list(logits.shape)}"
            fix = (
                "The model expects a batch: a single input without its batch dimension gives "
                "this, so add one (inputs.unsqueeze(0)); otherwise make the head return [n, C]."
            )
        else:
            got = f"{logits.dtype} of shape {list(logits.shape)}"
            fix = "Make the head return one row of floating logits per input."
        raise ValidationError(
            f"expected head {index} to return floating logits of shape [n, C] for the n = "
            f"{rows} rows it was given, got {got}. {fix}"
        )

    def iter_exits(self, inputs: Any) -> Iterator[Tensor]:
        """Logits of every exit in order, running each block once."""
        state = inputs
        for e in range(self.num_exits):
            state = self.run_block(e, state)
            yield self.head_logits(e, state)

    def forward(self, inputs: Any) -> list[Tensor]:
        """Logits of every exit: a list of E tensors ``[n, C]``."""
        self.check_input(inputs)
        return list(self.iter_exits(inputs))

    def forward_plain(self, inputs: Any) -> Tensor:
        """The plain model a user would otherwise deploy: every block, then the final head."""
        state = inputs
        for e in range(self.num_exits):
            state = self.run_block(e, state)
        return self.head_logits(self.num_exits - 1, state)

    @torch.inference_mode()
    def trace(
        self,
        inputs: Any,
        labels: Tensor | None = None,
        batch_size: int = 256,
        *,
        progress: bool = False,
        meta: dict[str, str] | None = None,
        flop_batches: int | None = None,
    ) -> Trace:
        """Evaluate every exit on ``inputs`` and record measured cumulative costs.

        Costs are FLOPs per input counted with `torch.utils.flop_counter` on these very inputs
        (averaged), for every block and every head: cost[e] includes the heads 0..e.

        Args:
            inputs: a tensor or a dict/tuple of tensors, ``N`` rows.
            labels: int64 ``[N]`` or None.
            batch_size: rows per forward pass.
            progress: show a progress bar.
            meta: extra metadata for the trace.
            flop_batches: count FLOPs on the first this-many batches only, averaged over their
                rows (None: every batch). Counting costs several times a plain forward pass;
                one batch is exact when every input costs the same (fixed-shape images, text
                padded to one length), but not when cost varies with the input (text padded
                per batch: keep None).
        """
        batch_size = count(batch_size, "batch_size", low=1)
        if flop_batches is not None:
            flop_batches = count(flop_batches, "flop_batches", low=1)
        progress = flag(progress, "progress")
        was_training = self.training
        self.eval()
        try:
            n = self.check_input(inputs)
            logits = []
            zeros = (0.0,) * self.num_exits
            profile = FlopProfile(zeros, zeros)
            counted = 0
            starts = range(0, n, batch_size)
            for index, start in enumerate(
                tqdm(starts, desc="trace", disable=not progress, unit="batch")
            ):
                rows = take_rows(inputs, slice(start, start + batch_size))
                if flop_batches is None or index < flop_batches:
                    batch_logits, batch_profile = self._profiled_exits(rows)
                    profile = profile + batch_profile
                    counted += batch_size_of(rows)
                else:
                    batch_logits = list(self.iter_exits(rows))
                    for e, out in enumerate(batch_logits):
                        self.check_logits(e, out, batch_size_of(rows))
                logits.append(torch.stack(batch_logits, dim=1).float().cpu())
        finally:
            self.train(was_training)
        per_input = profile.scaled(1.0 / counted)
        info = {
            "block_flops": json.dumps(per_input.blocks),
            "head_flops": json.dumps(per_input.heads),
            **(meta or {}),
        }
        return Trace(torch.cat(logits), labels, per_input.exit_costs, info)

    def _profiled_exits(self, inputs: Any) -> tuple[list[Tensor], FlopProfile]:
        n = batch_size(inputs)
        state, logits, blocks, heads = inputs, [], [], []
        for e in range(self.num_exits):
            with FlopMeter() as meter:
                state = self.run_block(e, state)
            blocks.append(float(meter.total))
            with FlopMeter() as meter:
                logits.append(self.head_logits(e, state))
            heads.append(float(meter.total))
            self.check_logits(e, logits[-1], n)
        return logits, FlopProfile(tuple(blocks), tuple(heads))

    @torch.inference_mode()
    def flop_profile(self, inputs: Any, batch_size: int = 256) -> FlopProfile:
        """FLOPs per input of every block and head, measured on ``inputs``."""
        return profile_from_trace(self.trace(inputs, None, batch_size))


def _check_input_shape(shape: object) -> tuple[int, ...] | None:
    """``input_shape`` as a tuple of positive ints (None: not declared)."""
    if shape is None:
        return None
    expected = (
        "expected input_shape as a tuple of positive integers (one input, no batch dimension)"
    )
    fix = "For 28 × 28 grey images: input_shape=(1, 28, 28)."
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise ValidationError(f"{expected}, got {shape!r}. {fix}")
    try:
        return tuple(count(d, f"input_shape[{i}]", low=1) for i, d in enumerate(shape))
    except ValidationError as err:
        raise ValidationError(f"{expected}, got {shape!r}: {err} {fix}") from None


def build_model(
    backbone: str,
    num_classes: int,
    *,
    source: Any = None,
    head: str = "linear",
    backbone_params: dict[str, Any] | None = None,
    head_params: dict[str, Any] | None = None,
    example_input: Any = None,
    plugins: AdaptixPluginManager | None = None,
) -> MultiExitModel:
    """Assemble a `MultiExitModel` from a registered backbone and exit head.

    Args:
        backbone: a registered backbone (``resnet``, ``sequential``, ``transformers``, ...).
        num_classes: C, the classes every head predicts.
        source: the network the backbone adapts (None for backbones that build their own).
        head: a registered exit head (``linear``, ``mlp``, ...), used at every exit.
        backbone_params: the backbone's parameters.
        head_params: the head's parameters.
        example_input: a small batch, to measure feature sizes when the backbone does not
            declare them.
        plugins: the plugin manager (default: the shared one).
    """
    num_classes = count(num_classes, "num_classes", low=1)
    manager = resolve_manager(plugins)
    backbone_entry = manager.backbones.entry(backbone)
    maker = backbone_entry.component(
        build_params(
            backbone_entry.component.Params, backbone_params or {}, f"backbone '{backbone}'"
        )
    )
    parts = call_plugin(backbone_entry, "build", maker.build, source)
    if not isinstance(parts, BackboneParts):
        raise PluginError(
            f"backbone '{backbone}' from plugin '{backbone_entry.plugin}' returned "
            f"{type(parts).__name__}, expected adaptix.components.BackboneParts."
        )
    if isinstance(parts, DecoderParts):
        raise ValidationError(
            f"backbone '{backbone}' is a decoder LM (its exits are per token): build it with "
            f"adaptix.build_decoder('{backbone}', source, exit_layers=...), not build_model."
        )
    dims = parts.feature_dims or _measure_feature_dims(parts, example_input, backbone)
    if len(dims) != len(parts.blocks):
        raise PluginError(
            f"backbone '{backbone}' declared {len(dims)} feature sizes for {len(parts.blocks)} "
            "blocks."
        )
    head_entry = manager.exit_heads.entry(head)
    head_maker = head_entry.component(
        build_params(head_entry.component.Params, head_params or {}, f"exit head '{head}'")
    )
    heads = nn.ModuleList(
        call_plugin(head_entry, "build", head_maker.build, dim, num_classes) for dim in dims
    )
    return MultiExitModel(parts.blocks, heads, parts.feature, input_shape=parts.input_shape)


def _measure_feature_dims(parts: BackboneParts, example: Any, backbone: str) -> tuple[int, ...]:
    example = parts.example_input if example is None else example
    if example is None:
        raise ValidationError(
            f"backbone '{backbone}' does not declare its feature sizes: pass example_input=... "
            "(a small batch) so they can be measured."
        )
    probe = MultiExitModel(
        parts.blocks, nn.ModuleList(nn.Identity() for _ in parts.blocks), parts.feature
    )
    was_training = probe.training
    probe.eval()
    with torch.inference_mode():
        dims = []
        for features in probe.iter_exits(example):
            if not isinstance(features, torch.Tensor):
                raise ValidationError(
                    f"backbone '{backbone}' produces features of type "
                    f"{type(features).__name__}; heads read a tensor [n, d]. Choose a feature "
                    "function that turns the block's output into one (e.g. feature='mean' or "
                    "'cls' for {'hidden': ...} states), or pass MultiExitModel(blocks, heads, "
                    "feature=your_function)."
                )
            if features.dim() != 2:
                raise ValidationError(
                    f"backbone '{backbone}' produces features of shape {list(features.shape)}; "
                    "heads read [n, d]. Choose a feature function (e.g. feature='avgpool')."
                )
            dims.append(int(features.shape[1]))
    probe.train(was_training)
    return tuple(dims)


def profile_from_trace(trace: Trace) -> FlopProfile:
    """The per-block and per-head FLOPs that `MultiExitModel.trace` stored in the trace."""
    try:
        blocks = tuple(float(v) for v in json.loads(trace.meta["block_flops"]))
        heads = tuple(float(v) for v in json.loads(trace.meta["head_flops"]))
    except (KeyError, ValueError, TypeError) as err:
        raise ValidationError(
            "expected a trace made by MultiExitModel.trace (with block_flops and head_flops "
            "metadata)."
        ) from err
    return FlopProfile(blocks, heads)


__all__ = ["MultiExitModel", "build_model", "profile_from_trace"]
