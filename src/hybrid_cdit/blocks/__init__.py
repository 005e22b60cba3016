"""Transformer blocks: NWM's ``CDiTBlock`` and its memory-augmented ``HybridCDiTBlock``."""

from .cdit import BlockModulation, CDiTBlock
from .hybrid import HybridCDiTBlock, MemoryInputs

__all__ = ["BlockModulation", "CDiTBlock", "HybridCDiTBlock", "MemoryInputs"]
