"""Attention layers: NWM's context cross-attention and the selective memory attention."""

from .context import ContextCrossAttention
from .functional import merge_heads, multihead_attention, split_heads
from .memory import KVCache, SelectiveMemoryAttention, memory_key_mask

__all__ = [
    "ContextCrossAttention",
    "KVCache",
    "SelectiveMemoryAttention",
    "memory_key_mask",
    "merge_heads",
    "multihead_attention",
    "split_heads",
]
