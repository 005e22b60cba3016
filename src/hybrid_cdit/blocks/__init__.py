"""Transformer blocks: NWM's ``CDiTBlock`` and its memory-augmented ``HybridCDiTBlock``."""

from .cdit import BlockModulation, CDiTBlock

__all__ = ["BlockModulation", "CDiTBlock"]
