"""Cross-attention from target-frame tokens to context-frame tokens, as in NWM's ``CDiTBlock``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import multihead_attention


class ContextCrossAttention(nn.Module):
    """``nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=True, batch_first=True)``
    computed with ``F.scaled_dot_product_attention``.

    The parameters and their names are those of ``nn.MultiheadAttention`` (``in_proj_weight``,
    ``in_proj_bias``, ``bias_k``, ``bias_v``, ``out_proj``), so NWM checkpoints load unchanged.
    The learned ``bias_k``/``bias_v`` act as one extra key/value token appended to the context.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.bias_k = nn.Parameter(torch.empty(1, 1, dim))
        self.bias_v = nn.Parameter(torch.empty(1, 1, dim))
        self.out_proj = nn.Linear(dim, dim, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.MultiheadAttention``."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)
        nn.init.xavier_normal_(self.bias_k)
        nn.init.xavier_normal_(self.bias_v)

    def project_kv(self, context: Tensor, *, has_slot: bool = False) -> tuple[Tensor, Tensor]:
        """Keys and values of the context tokens followed by the learned key/value token.

        Args:
            context: ``(N, L, D)`` context tokens, or with ``has_slot`` ``(N, L+1, D)`` whose last
                row is a placeholder (its content is ignored). A model passes the slot so the
                learned token is written in place instead of concatenated to the projected
                keys and values in every block.

        Returns:
            Keys and values, two ``(N, L+1, D)`` views.
        """
        if not has_slot:
            context = F.pad(context, (0, 0, 0, 1))
        dim = self.dim
        kv = F.linear(context, self.in_proj_weight[dim:], self.in_proj_bias[dim:])
        # Two writes rather than one of cat([bias_k, bias_v]): the backward of cat hands each
        # parameter a strided slice, which DDP copies with a "Grad strides do not match bucket
        # view strides" warning; here each gradient is its own contiguous (1, 1, D) sum.
        kv[:, -1, :dim] = self.bias_k.reshape(dim)
        kv[:, -1, dim:] = self.bias_v.reshape(dim)
        k, v = kv.chunk(2, dim=-1)
        return k, v

    def forward(self, x: Tensor, context: Tensor, *, has_slot: bool = False) -> Tensor:
        """Attend from ``x (N, Lq, D)`` to ``context``; returns ``(N, Lq, D)``.

        ``context`` is ``(N, L, D)``, or ``(N, L+1, D)`` with a placeholder last row when
        ``has_slot`` (see :meth:`project_kv`).
        """
        dim = self.dim
        q = F.linear(x, self.in_proj_weight[:dim], self.in_proj_bias[:dim])
        k, v = self.project_kv(context, has_slot=has_slot)
        out: Tensor = self.out_proj(multihead_attention(q, k, v, self.num_heads))
        return out
