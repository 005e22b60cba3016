"""``HybridCDiTBlock``: a CDiT block with an optional, zero-gated memory attention branch."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..attention import KVCache, SelectiveMemoryAttention
from ..embeddings import gated_residual, linear_at, modulate, zero_linear
from .cdit import CDiTBlock


class MemoryInputs(NamedTuple):
    """What a memory layer needs, built once per forward by the model.

    Attributes:
        tokens: ``(N, M, D)`` layer-normed memory tokens (``M = k * tokens per frame``).
        key_mask: ``(N, M)`` bool, True for tokens of valid memory frames.
        gate: ``(N,)`` 1 for samples whose memory is active, 0 otherwise (dtype of the tokens).
        cache: where keys/values are kept across forwards, or None (no caching).
        cache_key: identifies ``tokens``; a cached entry under another key is stale.
        ray_distance: ``(N, S'*S', M)`` view-ray distances between query cells and memory
            tokens, for blocks with ray alignment (see :class:`SelectiveMemoryAttention`).
    """

    tokens: Tensor
    key_mask: Tensor
    gate: Tensor
    cache: KVCache | None = None
    cache_key: Any = None
    ray_distance: Tensor | None = None


class HybridCDiTBlock(CDiTBlock):
    """A :class:`CDiTBlock`, plus, with ``enable_memory``, memory attention between the context
    cross-attention and the MLP::

        shift, scale, gate = memory_adaLN_modulation(c)        # zero-initialised
        x = x + gate * active * MemAttn(mod(LN(x), shift, scale), memory)

    The CDiT parameters keep NWM's names; the memory branch's parameter names all contain
    ``memory``. With the gate at zero the block computes exactly the CDiT block.

    Args:
        hidden_size, num_heads, mlp_ratio: as :class:`CDiTBlock`.
        enable_memory: build the memory branch.
        grid_size: hidden tokens per side ``S``.
        memory_ratio: how much coarser the memory token grid is (see
            :class:`SelectiveMemoryAttention`).
        memory_dim: width of the memory attention (``hidden_size`` when None).
        memory_ray_alignment: bias memory attention towards memory tokens whose view rays
            match the query's (see :class:`SelectiveMemoryAttention`).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        enable_memory: bool = False,
        grid_size: int = 1,
        memory_ratio: int = 1,
        memory_dim: int | None = None,
        memory_ray_alignment: bool = False,
    ) -> None:
        super().__init__(hidden_size, num_heads, mlp_ratio)
        self.enable_memory = enable_memory
        if enable_memory:
            self.memory_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.memory_attn = SelectiveMemoryAttention(
                hidden_size, num_heads, grid_size, memory_ratio, memory_dim, memory_ray_alignment
            )
            self.memory_adaLN_modulation = nn.Sequential(
                nn.SiLU(), nn.Linear(hidden_size, 3 * hidden_size, bias=True)
            )
            self.reset_memory_parameters()

    def reset_memory_parameters(self) -> None:
        """Xavier attention weights and a zero modulation: the branch starts switched off."""
        if self.enable_memory:
            self.memory_attn.reset_parameters()
            zero_linear(linear_at(self.memory_adaLN_modulation, -1))

    def memory_keys_values(self, memory: MemoryInputs) -> tuple[Tensor, Tensor]:
        """Keys and values of ``memory.tokens``, from ``memory.cache`` when it holds them."""
        attn = self.memory_attn
        if memory.cache is None:
            return attn.keys_values(memory.tokens)
        key = (memory.cache_key, attn.kv_proj.weight._version, attn.kv_proj.bias._version)
        kv: tuple[Tensor, Tensor] | None = memory.cache.cached(attn, key)
        if kv is None:
            kv = attn.keys_values(memory.tokens)
            memory.cache.store(attn, key, kv)
        return kv

    def memory_attention_mask(self, memory: MemoryInputs, dtype: torch.dtype) -> Tensor:
        """The memory attention's logit mask or bias in ``dtype`` (the keys'; SDPA needs the
        queries' and keys' dtypes equal) (:meth:`SelectiveMemoryAttention.attention_mask`), from
        ``memory.cache`` when it holds one made from the same memory, ray strengths and dtype."""
        attn = self.memory_attn
        if memory.cache is None:
            return attn.attention_mask(memory.key_mask, memory.ray_distance, dtype)
        strength = attn.ray_strength
        key = (memory.cache_key, dtype, None if strength is None else strength._version)
        mask: Tensor | None = memory.cache.cached(self, key)
        if mask is None:
            mask = attn.attention_mask(memory.key_mask, memory.ray_distance, dtype)
            memory.cache.store(self, key, mask)
        return mask

    def memory_residual(self, x: Tensor, c: Tensor, memory: MemoryInputs) -> Tensor:
        """``x (N, L, D)`` plus the gated memory attention branch."""
        shift, scale, gate = self.memory_adaLN_modulation(c).chunk(3, dim=1)
        keys, values = self.memory_keys_values(memory)
        query = modulate(self.memory_norm(x), shift, scale)
        mask = self.memory_attention_mask(memory, keys.dtype)
        branch = self.memory_attn(
            query, keys, values, memory.key_mask, memory.ray_distance, attn_mask=mask
        )
        return gated_residual(x, gate * memory.gate[:, None], branch)

    def forward(
        self, x: Tensor, c: Tensor, context: Tensor, memory: MemoryInputs | None = None
    ) -> Tensor:
        """``x (N, L, D)``, ``c (N, D)``, ``context (N, Lc + 1, D)``, memory -> ``(N, L, D)``."""
        m = self.modulation(c)
        x = self.attend(x, m, context)
        if self.enable_memory:
            if memory is not None:
                x = self.memory_residual(x, c, memory)
            elif self.training and torch.is_grad_enabled():
                x = x + self.memory_parameter_anchor().to(x.dtype)
        return self.feed_forward(x, m)

    def memory_parameter_anchor(self) -> Tensor:
        """``0 * sum(memory branch parameters)``, a scalar zero.

        Added to the hidden tokens when a training forward has no memory, it keeps every memory
        parameter in the autograd graph (with zero gradient), so DDP needs no
        ``find_unused_parameters`` and FSDP2 reduces the same gradients on every rank when memory
        is present on some ranks and absent on others. It is computed inside the block's
        forward, where FSDP2 has gathered the block's parameters.
        """
        params = [p for name, p in self.named_parameters() if "memory" in name]
        return torch.stack([p.sum() for p in params]).sum() * 0.0
