"""hybrid-cdit: NWM's Conditional Diffusion Transformer with long-term, pose-indexed memory."""

from .models import CDiT
from .registry import CDiT_models, create_model, list_models, register_model

__version__ = "0.1.0.dev0"

__all__ = [
    "CDiT",
    "CDiT_models",
    "__version__",
    "create_model",
    "list_models",
    "register_model",
]
