"""Long-term memory: per-sample buffers, pose-based retrieval and the ``MemoryContext``."""

from .context import MemoryContext

__all__ = ["MemoryContext"]
