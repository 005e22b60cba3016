"""The CDiT block of NWM: self-attention, context cross-attention and MLP under adaLN-Zero."""

from __future__ import annotations

from typing import NamedTuple

from timm.layers.mlp import Mlp
from timm.models.vision_transformer import Attention
from torch import Tensor, nn

from ..attention import ContextCrossAttention
from ..embeddings import gated_residual, modulate


class BlockModulation(NamedTuple):
    """The eleven ``(N, D)`` adaLN chunks of a CDiT block, in NWM's order (views, no copies)."""

    shift_msa: Tensor
    scale_msa: Tensor
    gate_msa: Tensor
    shift_context: Tensor
    scale_context: Tensor
    shift_ca: Tensor
    scale_ca: Tensor
    gate_ca: Tensor
    shift_mlp: Tensor
    scale_mlp: Tensor
    gate_mlp: Tensor


class TanhGELU(nn.GELU):
    """GELU with the tanh approximation, as in DiT and NWM."""

    def __init__(self) -> None:
        super().__init__(approximate="tanh")


class CDiTBlock(nn.Module):
    """One CDiT layer.

    With ``m = adaLN_modulation(c)`` split into eleven chunks and ``LN`` a layer norm without
    affine parameters::

        x = x + g_msa * Attn(mod(LN(x), m_msa))
        ctx = mod(LN(x_cond), m_context)
        x = x + g_ca * CrossAttn(mod(LN(x), m_ca), ctx)
        x = x + g_mlp * MLP(mod(LN(x), m_mlp))

    ``LN(x_cond)`` is the same in every block, so the model computes it once per forward and
    passes it in as ``context``, followed by one placeholder row where the cross-attention writes
    its learned key/value token (see :meth:`ContextCrossAttention.project_kv`).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.cttn = ContextCrossAttention(hidden_size, num_heads)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 11 * hidden_size, bias=True)
        )
        self.norm3 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size,
            hidden_features=int(hidden_size * mlp_ratio),
            act_layer=TanhGELU,
            drop=0,
        )

    def modulation(self, c: Tensor) -> BlockModulation:
        """``c (N, D)`` -> the eleven ``(N, D)`` modulation chunks."""
        return BlockModulation(*self.adaLN_modulation(c).chunk(11, dim=1))

    def attend(self, x: Tensor, m: BlockModulation, context: Tensor) -> Tensor:
        """Self-attention and context cross-attention residuals.

        Args:
            x: ``(N, L, D)`` target-frame tokens.
            m: this block's modulation.
            context: ``(N, context_size * L + 1, D)`` layer-normed context tokens and a
                placeholder row.
        """
        x = gated_residual(
            x, m.gate_msa, self.attn(modulate(self.norm1(x), m.shift_msa, m.scale_msa))
        )
        ctx = modulate(context, m.shift_context, m.scale_context)
        query = modulate(self.norm2(x), m.shift_ca, m.scale_ca)
        return gated_residual(x, m.gate_ca, self.cttn(query, ctx, has_slot=True))

    def feed_forward(self, x: Tensor, m: BlockModulation) -> Tensor:
        """MLP residual on ``x (N, L, D)``."""
        return gated_residual(
            x, m.gate_mlp, self.mlp(modulate(self.norm3(x), m.shift_mlp, m.scale_mlp))
        )

    def forward(self, x: Tensor, c: Tensor, context: Tensor) -> Tensor:
        """``x (N, L, D)``, ``c (N, D)``, ``context (N, Lc + 1, D)`` (see ``attend``)."""
        m = self.modulation(c)
        return self.feed_forward(self.attend(x, m, context), m)
