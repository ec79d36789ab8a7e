"""Built-in backbone ``msdnet``: a multi-scale dense-style CNN whose early exits are strong.

After MSDNet (Huang et al., 2018): the first block already computes features at every scale, so
the first exit reads coarse, semantic features instead of the low-level ones a plain CNN has
after one block; later blocks refine every scale with information flowing from fine to coarse,
and drop the finest scales once they no longer feed anything. Differences from the paper, for
cost on small images: residual sums instead of dense concatenation, three scales, and exit
features are the global average of the coarsest scale.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from adaptix.components import Backbone, BackboneParts, ParamsModel
from adaptix.errors import ValidationError
from adaptix.hookspecs import hookimpl
from adaptix.plugins import Registrar


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Stem(nn.Module):
    """Block 0's first part: features at every scale from the image."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers = [_conv(in_channels, channels[0])]
        layers += [_conv(channels[s - 1], channels[s], 2) for s in range(1, len(channels))]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        scales = []
        for layer in self.layers:
            x = layer(x)
            scales.append(x)
        return tuple(scales)


class MultiScaleLayer(nn.Module):
    """Refine scales ``first..S-1`` with information flowing from fine to coarse.

    Residual (``growth`` None): x_s + conv(x_s) + strided conv(refined x_{s-1}). Dense (MSDNet's
    connectivity): concatenate x_s with g_s new channels, conv(x_s) + strided conv(refined
    x_{s-1}), so the width grows with depth while early blocks stay cheap. Scales finer than
    ``keep_from`` are dropped from the output (they no longer feed any exit).
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        first: int,
        keep_from: int,
        growth: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.first, self.keep_from, self.dense = first, keep_from, growth is not None
        scales = range(first, len(channels))
        out = [growth[s] if growth else channels[s] for s in scales]
        refined = [channels[s] + (growth[s] if growth else 0) for s in scales]
        self.same = nn.ModuleList(_conv(channels[s], o) for s, o in zip(scales, out, strict=True))
        self.down = nn.ModuleList(_conv(refined[i - 1], out[i], 2) for i in range(1, len(out)))
        self.out_channels = tuple(
            (channels[s] + growth[s]) if growth else channels[s] for s in range(len(channels))
        )

    def forward(self, scales: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        offset = len(scales) - len(self.same)
        refined: list[Tensor] = []
        for i, conv in enumerate(self.same):
            x = scales[offset + i]
            update = conv(x)
            if i > 0:
                update = update + self.down[i - 1](refined[-1])
            refined.append(torch.cat([x, update], dim=1) if self.dense else x + update)
        return tuple(refined[self.keep_from - self.first :])


MSDNET_SIZES: dict[str, tuple[int, int]] = {
    # size: (base channels, blocks = exits); channels double at each coarser scale. The sizes
    # share their first block, so a larger model's first exit costs less than a smaller model.
    "small": (8, 3),
    "medium": (8, 6),
    "large": (8, 10),
}


class MSDNetParams(ParamsModel):
    """A named ``size`` or explicit ``base_channels``/``blocks``; ``scales``; input format."""

    size: Literal["small", "medium", "large"] | None = "small"
    base_channels: int | None = Field(default=None, ge=1)
    blocks: int | None = Field(default=None, ge=1)
    scales: int = Field(default=3, ge=1, le=4)
    widen: int = Field(
        default=2,
        ge=1,
        le=4,
        description="channels multiply by this at each coarser scale (2: 8, 16, 32 for base 8)",
    )
    growth: int | None = Field(
        default=None,
        ge=1,
        description="dense growth per layer at the finest scale (None: residual)",
    )
    in_channels: int = Field(default=1, ge=1)
    image_size: int = Field(default=28, ge=8)
    pool: int = Field(
        default=1,
        ge=1,
        le=4,
        description="exit features: the coarsest scale averaged to a pool × pool grid, "
        "flattened (1: global average; more keeps where in the image a feature fired)",
    )


class MSDNet(Backbone):
    """Multi-scale multi-exit CNN (MSDNet-style); exits read the coarsest scale."""

    name = "msdnet"
    description = "multi-scale CNN with strong early exits (MSDNet-style), small/medium/large"
    Params = MSDNetParams
    params: MSDNetParams

    def build(self, source: Any = None) -> BackboneParts:
        if source is not None:
            raise ValidationError("backbone 'msdnet' builds its own network: pass no source.")
        base, depth = MSDNET_SIZES[self.params.size or "small"]
        base = self.params.base_channels or base
        depth = self.params.blocks or depth
        num_scales = self.params.scales
        channels = tuple(base * self.params.widen**s for s in range(num_scales))
        # Scale s is refined up to block (s + 1) * depth / S, then dropped (coarse scales last).
        last_use = [max(1, round((s + 1) * depth / num_scales)) - 1 for s in range(num_scales)]
        last_use[-1] = depth - 1

        def first_scale(block: int) -> int:
            return min(s for s in range(num_scales) if last_use[s] >= block)

        growth = (
            None
            if self.params.growth is None
            else tuple(self.params.growth * self.params.widen**s for s in range(num_scales))
        )
        blocks: list[nn.Module] = []
        dims = []
        width = channels
        for b in range(depth):
            keep = first_scale(b + 1) if b + 1 < depth else num_scales - 1
            layer = MultiScaleLayer(width, first_scale(b), keep, growth)
            width = layer.out_channels
            dims.append(width[-1] * self.params.pool**2)
            blocks.append(
                nn.Sequential(Stem(self.params.in_channels, channels), layer) if b == 0 else layer
            )
        shape = (self.params.in_channels, self.params.image_size, self.params.image_size)
        return BackboneParts(
            blocks=nn.ModuleList(blocks),
            feature=CoarsestPool(self.params.pool),
            feature_dims=tuple(dims),
            input_shape=shape,
            example_input=torch.randn(2, *shape),
        )


class CoarsestPool(nn.Module):
    """Exit features: the coarsest scale averaged to a ``grid`` × ``grid`` grid, flattened
    (``grid`` 1: the global average)."""

    def __init__(self, grid: int = 1) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, scales: tuple[Tensor, ...]) -> Tensor:
        coarsest = scales[-1]
        if self.grid == 1:
            return coarsest.mean(dim=(2, 3))
        return nn.functional.adaptive_avg_pool2d(coarsest, self.grid).flatten(1)


@hookimpl
def adaptix_register_backbones(registry: Registrar[Backbone]) -> None:
    """Register the MSDNet-style backbone."""
    registry.add(MSDNet)
