"""Models: NWM's ``CDiT`` and the memory-augmented ``HybridCDiT``."""

from .cdit import CDiT

__all__ = ["CDiT"]
