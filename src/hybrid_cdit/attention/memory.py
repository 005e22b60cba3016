"""Selective memory attention: target-frame tokens attend to tokens of retrieved memory frames."""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .functional import merge_heads, split_heads


class SelectiveMemoryAttention(nn.Module):
    """Multi-head attention from hidden tokens to memory tokens on a grid ``ratio`` times coarser.

    With ``ratio = r``, each ``r x r`` group of hidden tokens is gathered into one query
    (space-to-depth, width ``r*r*D``), attends to memory tokens laid out on the same coarse grid,
    and the result is spread back to the ``r x r`` tokens by the output projection
    (depth-to-space). Every hidden token thus gets its own slice of the output projection, so
    fine detail in a coarse memory token is not averaged away. ``ratio = 1`` is plain attention.

    Memory keys and values do not depend on the diffusion timestep: :meth:`keys_values` can be
    computed once per memory context and reused across denoising steps.

    Args:
        dim: token width ``D``.
        num_heads: attention heads; must divide ``inner_dim``.
        grid_size: hidden tokens per side ``S``.
        ratio: memory grid coarseness ``r``; must divide ``grid_size``.
        inner_dim: width ``Dm`` of queries, keys and values (``dim`` when None); a narrower
            attention makes the memory branch cheaper.
        ray_alignment: add to each head's logits ``-ray_strength[h] * ray_distance``, where
            ``ray_distance`` ``(N, S'*S', M)`` (given to :meth:`forward`) says how far apart the
            view rays of a query cell and a memory token are; ``ray_strength`` ``(H,)`` is
            learned.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: int,
        ratio: int = 1,
        inner_dim: int | None = None,
        ray_alignment: bool = False,
    ) -> None:
        super().__init__()
        inner = dim if inner_dim is None else inner_dim
        if inner < 1 or inner % num_heads:
            raise ValueError(
                f"inner_dim must be a positive multiple of num_heads ({num_heads}), got {inner}"
            )
        if grid_size % ratio:
            raise ValueError(f"ratio must divide grid_size ({grid_size}), got {ratio}")
        self.dim = dim
        self.inner_dim = inner
        self.num_heads = num_heads
        self.grid_size = grid_size
        self.ratio = ratio
        group = ratio * ratio
        self.q_proj = nn.Linear(group * dim, inner, bias=True)
        self.kv_proj = nn.Linear(dim, 2 * inner, bias=True)
        self.out_proj = nn.Linear(inner, group * dim, bias=True)
        self.ray_strength: nn.Parameter | None = None
        if ray_alignment:
            self.ray_strength = nn.Parameter(torch.ones(num_heads))
        self.kv_computations = 0
        """How many times :meth:`keys_values` ran eagerly (the cache test counts it)."""

    def keys_values(self, memory_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, M, D)`` layer-normed memory tokens -> keys and values ``(N, H, M, Dm/H)``."""
        if not torch.compiler.is_compiling():  # no side effects inside compiled checkpoints
            self.kv_computations += 1
        k, v = self.kv_proj(memory_tokens).chunk(2, dim=-1)
        return split_heads(k, self.num_heads), split_heads(v, self.num_heads)

    def forward(
        self,
        x: Tensor,
        keys: Tensor,
        values: Tensor,
        key_mask: Tensor,
        ray_distance: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from hidden tokens to memory.

        Args:
            x: ``(N, S*S, D)`` modulated hidden tokens, row-major on the ``S x S`` grid.
            keys, values: ``(N, H, M, Dm/H)`` from :meth:`keys_values`.
            key_mask: ``(N, M)`` bool, True where a memory token may be attended. Rows with no
                True entry attend to everything; the caller gates those rows to zero.
            ray_distance: ``(N, S'*S', M)`` with ``ray_alignment`` (``S' = S / ratio``), else
                ignored.
            attn_mask: ``attention_mask(key_mask, ray_distance, keys.dtype)`` computed before
                (kept across denoising steps); used instead of ``key_mask`` and
                ``ray_distance`` when given.

        Returns:
            ``(N, S*S, D)``.
        """
        r, side = self.ratio, self.grid_size // self.ratio
        groups = rearrange(x, "n (h a w b) d -> n (h w) (a b d)", h=side, a=r, w=side, b=r)
        q = split_heads(self.q_proj(groups), self.num_heads)
        if attn_mask is None:
            attn_mask = self.attention_mask(key_mask, ray_distance, q.dtype)
        attended = merge_heads(F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask))
        out: Tensor = rearrange(
            self.out_proj(attended), "n (h w) (a b d) -> n (h a w b) d", h=side, w=side, a=r, b=r
        )
        return out

    def attention_mask(
        self, key_mask: Tensor, ray_distance: Tensor | None, dtype: torch.dtype
    ) -> Tensor:
        """What :meth:`forward` adds to the logits: with ``ray_alignment`` and ``ray_distance``
        the float bias ``-ray_strength[h] * ray_distance`` ``(N, H, S'*S', M)`` in ``dtype``,
        ``-inf`` outside ``key_mask``; else the bool mask ``(N, 1, 1, M)``. Rows of
        ``key_mask`` with no True entry attend to everything. ``dtype`` is the queries' (that
        of the keys). It depends on the memory and the ray strengths only, so it can be kept
        across denoising steps while neither changes."""
        allowed = (key_mask | ~key_mask.any(dim=-1, keepdim=True))[:, None, None, :]
        if self.ray_strength is None or ray_distance is None:
            return allowed
        bias = -self.ray_strength[None, :, None, None] * ray_distance[:, None]
        return bias.to(dtype).masked_fill(~allowed, float("-inf"))

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases and a ray strength of 1."""
        for layer in (self.q_proj, self.kv_proj, self.out_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.ray_strength is not None:
            nn.init.ones_(self.ray_strength)


def memory_key_mask(frame_mask: Tensor, tokens_per_frame: int) -> Tensor:
    """``(N, k)`` frame mask -> ``(N, k * tokens_per_frame)`` token mask."""
    return torch.repeat_interleave(frame_mask, tokens_per_frame, dim=1)


class KVCache(Protocol):
    """Where memory keys/values are kept between forwards (a :class:`MemoryContext` is one)."""

    def cached(self, owner: Any, key: Any) -> Any: ...

    def store(self, owner: Any, key: Any, value: Any) -> None: ...
