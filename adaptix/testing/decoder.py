"""A tiny decoder LM in plain torch, with the Llama anatomy of `adaptix.components.DecoderParts`.

For tests and contract checks of token exits and KV strategies without transformers: random
weights, RMS norms, rotary positions, grouped-query attention, a gated MLP.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adaptix.components import DecoderParts


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, computed in float32 (as Llama's)."""

    weight: nn.Parameter

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x32 = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        scaled = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return scaled.to(dtype) * self.weight


class Rotary(nn.Module):
    """``rotary(x, position_ids) -> (cos, sin)``, ``[*position_ids.shape, head_dim]``."""

    inv_freq: Tensor

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        freqs = position_ids[..., None].double() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


class Attention(nn.Module):
    """The projections of grouped-query attention (adaptix runs the attention itself)."""

    def __init__(self, hidden: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        head_dim = hidden // heads
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)


class MLP(nn.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, 2 * hidden, bias=False)
        self.up_proj = nn.Linear(hidden, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(2 * hidden, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    """One decoder layer's modules, under the Llama names."""

    def __init__(self, hidden: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden)
        self.self_attn = Attention(hidden, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(hidden)
        self.mlp = MLP(hidden)


def tiny_decoder(
    *,
    layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> DecoderParts:
    """A randomly initialised decoder as `DecoderParts` (float64 by default, so that exact
    comparisons are not at the mercy of rounding). Token 2 is its end-of-sequence token."""
    generator = torch.Generator().manual_seed(seed)
    blocks = nn.ModuleList(Layer(hidden, heads, kv_heads) for _ in range(layers))
    embed = nn.Embedding(vocab, hidden)
    norm = RMSNorm(hidden)
    lm_head = nn.Linear(hidden, vocab, bias=False)
    modules = nn.ModuleList([blocks, embed, norm, lm_head])
    with torch.no_grad():
        for parameter in modules.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    modules.to(dtype).eval()
    head_dim = hidden // heads
    return DecoderParts(
        blocks=blocks,
        embed=embed,
        norm=norm,
        lm_head=lm_head,
        rotary=Rotary(head_dim),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        attention_scale=head_dim**-0.5,
        vocab_size=vocab,
        eos_token_id=(2,),
        feature=norm,
        feature_dims=(hidden,) * layers,
        example_input=torch.tensor([[1, 5, 7, 9]]),
    )


__all__ = ["tiny_decoder"]
