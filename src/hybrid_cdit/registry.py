"""Named model variants: ``create_model``, ``list_models`` and NWM-style ``CDiT_models``.

Variants follow NWM (``XL/2``, ``L/2``, ``B/2``, ``S/2``) with the default context sizes of the
project's reference configuration. Every keyword, ``context_size`` included, can be overridden::

    model = create_model("CDiT-XL/2", context_size=2, input_size=28)
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from .models import CDiT, HybridCDiT

VARIANTS: dict[str, dict[str, int]] = {
    "XL/2": {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2, "context_size": 4},
    "L/2": {"depth": 24, "hidden_size": 1024, "num_heads": 16, "patch_size": 2, "context_size": 3},
    "B/2": {"depth": 12, "hidden_size": 768, "num_heads": 12, "patch_size": 2, "context_size": 3},
    "S/2": {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 2, "context_size": 3},
}
"""Architecture of each variant, keyed by its suffix."""

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}


def _build(cls: type[nn.Module], variant: str, **kwargs: Any) -> nn.Module:
    return cls(**{**VARIANTS[variant], **kwargs})


def register_model(name: str, factory: ModelFactory) -> ModelFactory:
    """Add ``factory`` to the registry under ``name``; a taken name raises ``ValueError``."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory


def register_family(prefix: str, cls: type[nn.Module]) -> dict[str, ModelFactory]:
    """Register ``{prefix}-{variant}`` for every variant; returns the NWM-style name dict."""
    return {
        f"{prefix}-{variant}": register_model(f"{prefix}-{variant}", partial(_build, cls, variant))
        for variant in VARIANTS
    }


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` override the variant's defaults.

    Raises:
        ValueError: for an unknown name, listing the closest registered names.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown model name {name!r}{hint} (available: {', '.join(list_models())})"
        )
    return _REGISTRY[name](**kwargs)


CDiT_models: dict[str, ModelFactory] = register_family("CDiT", CDiT)
"""NWM-style ``{"CDiT-XL/2": factory, ...}``."""

HybridCDiT_models: dict[str, ModelFactory] = register_family("HybridCDiT", HybridCDiT)
"""NWM-style ``{"HybridCDiT-XL/2": factory, ...}``; memory keywords pass through."""
