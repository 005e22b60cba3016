"""Models: NWM's ``CDiT`` and the memory-augmented ``HybridCDiT``."""

from .cdit import CDiT
from .guidance import memory_guided_forward
from .hybrid import HybridCDiT, default_memory_layers, is_memory_key
from .routing import routed_forward

__all__ = [
    "CDiT",
    "HybridCDiT",
    "default_memory_layers",
    "is_memory_key",
    "memory_guided_forward",
    "routed_forward",
]
