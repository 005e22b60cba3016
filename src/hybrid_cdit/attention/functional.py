"""Multi-head attention on ``(N, L, D)`` tokens with ``F.scaled_dot_product_attention``."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(N, L, H*d)`` -> ``(N, H, L, d)``."""
    return rearrange(x, "n l (h d) -> n h l d", h=num_heads)


def merge_heads(x: Tensor) -> Tensor:
    """``(N, H, L, d)`` -> ``(N, L, H*d)``."""
    return rearrange(x, "n h l d -> n l (h d)")


def multihead_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    num_heads: int,
    key_mask: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Scaled dot-product attention over heads.

    Args:
        q: ``(N, Lq, D)`` queries.
        k, v: ``(N, Lk, D)`` keys and values; ``k`` may also be given already split as
            ``(N, H, Lk, d)`` together with ``v`` in the same layout.
        num_heads: ``H``; ``D`` must be divisible by it.
        key_mask: optional ``(N, Lk)`` bool, True where a key may be attended.
        bias: optional ``(N, H, Lq, Lk)`` (or broadcastable) float added to the attention
            logits; keys outside ``key_mask`` stay excluded.

    Returns:
        ``(N, Lq, D)``.
    """
    qh = split_heads(q, num_heads)
    kh = k if k.dim() == 4 else split_heads(k, num_heads)
    vh = v if v.dim() == 4 else split_heads(v, num_heads)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if bias is not None:
        bias = bias.to(qh.dtype)
        if mask is not None:
            bias = bias.masked_fill(~mask, float("-inf"))
        mask = bias
    return merge_heads(F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask))
