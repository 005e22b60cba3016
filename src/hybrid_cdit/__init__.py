"""hybrid-cdit: NWM's Conditional Diffusion Transformer with long-term, pose-indexed memory."""

from .checkpoint import (
    CheckpointError,
    LoadReport,
    from_pretrained,
    infer_cdit_config,
    load_cdit_checkpoint,
    read_checkpoint,
    save_pretrained,
    to_cdit_state_dict,
)
from .config import HybridCDiTConfig, build_model
from .memory import MemoryContext
from .models import CDiT, HybridCDiT, memory_guided_forward, routed_forward
from .registry import CDiT_models, HybridCDiT_models, create_model, list_models, register_model

__version__ = "0.2.0.dev0"

__all__ = [
    "CDiT",
    "CDiT_models",
    "CheckpointError",
    "HybridCDiT",
    "HybridCDiTConfig",
    "HybridCDiT_models",
    "LoadReport",
    "MemoryContext",
    "__version__",
    "build_model",
    "create_model",
    "from_pretrained",
    "infer_cdit_config",
    "list_models",
    "load_cdit_checkpoint",
    "memory_guided_forward",
    "read_checkpoint",
    "register_model",
    "routed_forward",
    "save_pretrained",
    "to_cdit_state_dict",
]
