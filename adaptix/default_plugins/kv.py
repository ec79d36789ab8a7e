"""Built-in KV-cache strategies for decoder exits: ``deferred`` (exact) and ``copy`` (CALM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import Tensor

from adaptix.components import DecoderParts, KVStrategy
from adaptix.hookspecs import hookimpl
from adaptix.plugins import Registrar


class Deferred(KVStrategy):
    """Exact: the layers an exited token skipped run at its row's next step, batched with the
    next token's own layers, so every cache entry equals the full model's before any token
    attends to it. Saves layer passes, not arithmetic: the skipped layers still run."""

    name = "deferred"
    description = "skipped layers run at the row's next step (exact cache)"
    exact: ClassVar[bool] = True
    defers: ClassVar[bool] = True


class Copy(KVStrategy):
    """CALM's state propagation: the exited token's hidden state stands in for the inputs of
    the layers it skipped; their keys and values are its projections through those layers.
    Saves the skipped layers' attention and MLP; the cache differs from the full model's."""

    name = "copy"
    description = "the exit's hidden state fills the skipped layers' keys and values (CALM)"

    def fill(
        self, parts: DecoderParts, exit_layer: int, hidden: Tensor, positions: Tensor
    ) -> Mapping[int, tuple[Tensor, Tensor]]:
        from adaptix.online.decoder import exit_key_value

        return {
            layer: exit_key_value(parts, layer, hidden, positions)
            for layer in range(exit_layer + 1, len(parts.blocks))
        }


@hookimpl
def adaptix_register_kv_strategies(registry: Registrar[KVStrategy]) -> None:
    """Register the built-in KV strategies."""
    registry.add(Deferred)
    registry.add(Copy)
