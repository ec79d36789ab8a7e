"""Built-in backbones: ``sequential`` (adapt any stack of modules) and ``resnet`` (a multi-exit
CNN family with ResNet-style blocks in three sizes)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from adaptix.components import Backbone, BackboneParts, ParamsModel
from adaptix.core.features import FeatureName, feature_module
from adaptix.errors import ValidationError
from adaptix.hookspecs import hookimpl
from adaptix.plugins import Registrar


class SequentialParams(ParamsModel):
    """``boundaries``: end index (exclusive) of each block in the stack (default: every module
    is a block); ``feature``: what heads read from a block's output."""

    boundaries: tuple[int, ...] | None = None
    feature: FeatureName = "identity"


class Sequential(Backbone):
    """Adapts an ``nn.Sequential`` (or a list of modules) into blocks."""

    name = "sequential"
    description = "any nn.Sequential or list of blocks, with an optional feature function"
    Params = SequentialParams
    params: SequentialParams

    def build(self, source: Any = None) -> BackboneParts:
        is_stack = isinstance(source, (nn.Sequential, nn.ModuleList))
        is_list = isinstance(source, (list, tuple)) and all(
            isinstance(m, nn.Module) for m in source
        )
        if is_stack or is_list:
            modules = list(source)
        else:
            raise ValidationError(
                f"backbone 'sequential' expects an nn.Sequential or a list of nn.Module blocks, "
                f"got {type(source).__name__}."
            )
        ends = self.params.boundaries or tuple(range(1, len(modules) + 1))
        if list(ends) != sorted(set(ends)) or ends[0] < 1 or ends[-1] != len(modules):
            raise ValidationError(
                f"backbone 'sequential' expects increasing boundaries ending at {len(modules)} "
                f"(the number of modules), got {list(ends)}."
            )
        starts = (0, *ends[:-1])
        blocks = nn.ModuleList(
            modules[a] if b - a == 1 else nn.Sequential(*modules[a:b])
            for a, b in zip(starts, ends, strict=True)
        )
        return BackboneParts(blocks=blocks, feature=feature_module(self.params.feature))


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convolutions with batch norm and a skip connection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


RESNET_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    # size: (channels of each stage, basic blocks per stage); one exit after every block.
    "small": ((16, 32, 64), (1, 1, 1)),
    "medium": ((32, 64, 128), (1, 2, 2)),
    "large": ((48, 96, 192), (2, 2, 3)),
}


class ResNetParams(ParamsModel):
    """A named ``size`` or explicit ``widths``/``depths``; input channels and image size."""

    size: Literal["small", "medium", "large"] | None = "small"
    widths: tuple[int, ...] | None = None
    depths: tuple[int, ...] | None = None
    in_channels: int = Field(default=1, ge=1)
    image_size: int = Field(default=28, ge=4)

    @model_validator(mode="after")
    def _one_spec(self) -> ResNetParams:
        if (self.widths is None) != (self.depths is None):
            raise ValueError("give both widths and depths, or neither (and a size)")
        if self.widths is not None and self.depths is not None:
            if len(self.widths) != len(self.depths) or not self.widths:
                raise ValueError("widths and depths need the same, non-zero length")
            if min(self.widths) < 1 or min(self.depths) < 1:
                raise ValueError("widths and depths must be >= 1")
        elif self.size is None:
            raise ValueError("give a size or widths and depths")
        return self

    def stages(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(widths, depths) of the stages."""
        if self.widths is not None and self.depths is not None:
            return self.widths, self.depths
        return RESNET_SIZES[self.size or "small"]


class ResNet(Backbone):
    """A multi-exit CNN: ResNet basic blocks in stages (stride 2 between stages), one exit
    after every block, global-average-pooled features."""

    name = "resnet"
    description = "multi-exit ResNet-style CNN (sizes small / medium / large)"
    Params = ResNetParams
    params: ResNetParams

    def build(self, source: Any = None) -> BackboneParts:
        if source is not None:
            raise ValidationError("backbone 'resnet' builds its own network: pass no source.")
        widths, depths = self.params.stages()
        channels = self.params.in_channels
        blocks: list[nn.Module] = []
        for stage, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                block: nn.Module = BasicBlock(channels, width, stride)
                if not blocks:  # the stem runs before the first block
                    stem = nn.Sequential(
                        nn.Conv2d(channels, width, 3, 1, 1, bias=False),
                        nn.BatchNorm2d(width),
                        nn.ReLU(),
                    )
                    block = nn.Sequential(stem, BasicBlock(width, width, 1))
                blocks.append(block)
                channels = width
        dims = tuple(w for w, d in zip(widths, depths, strict=True) for _ in range(d))
        shape = (self.params.in_channels, self.params.image_size, self.params.image_size)
        return BackboneParts(
            blocks=nn.ModuleList(blocks),
            feature=feature_module("avgpool"),
            feature_dims=dims,
            input_shape=shape,
            example_input=torch.randn(2, *shape),
        )


@hookimpl
def adaptix_register_backbones(registry: Registrar[Backbone]) -> None:
    """Register the built-in backbones."""
    registry.add(Sequential)
    registry.add(ResNet)
