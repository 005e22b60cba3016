"""Attention layers: NWM's context cross-attention and the selective memory attention."""

from .context import ContextCrossAttention
from .functional import merge_heads, multihead_attention, split_heads

__all__ = ["ContextCrossAttention", "merge_heads", "multihead_attention", "split_heads"]
