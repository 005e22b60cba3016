"""The CDiT configuration that a state dict was built with, read from its tensors' shapes."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..registry import VARIANTS
from .errors import CheckpointError
from .files import clean_keys

ARCHITECTURE_KEYS: tuple[str, ...] = (
    "hidden_size",
    "depth",
    "patch_size",
    "in_channels",
    "input_size",
    "context_size",
    "learn_sigma",
    "mlp_ratio",
)
"""Configuration entries compared between a checkpoint and a model, in reporting order."""

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
_REQUIRED = (
    "pos_embed",
    "x_embedder.proj.weight",
    "final_layer.linear.weight",
    "blocks.0.mlp.fc1.weight",
)


def _shape(state_dict: Mapping[str, Tensor], key: str, rank: int) -> tuple[int, ...]:
    shape = tuple(state_dict[key].shape)
    if len(shape) != rank:
        raise CheckpointError(
            f"not a CDiT state dict: {key} must have {rank} dimensions, got shape {shape}"
        )
    return shape


def infer_cdit_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Infer CDiT constructor arguments from a CDiT (or HybridCDiT) state dict's shapes.

    Returns ``hidden_size``, ``depth``, ``patch_size``, ``in_channels``, ``input_size``,
    ``context_size``, ``learn_sigma`` and ``mlp_ratio``. When ``hidden_size`` and ``depth`` match
    an NWM variant of :data:`~hybrid_cdit.registry.VARIANTS`, also ``num_heads`` and, when the
    patch size matches too, ``variant`` (``"XL/2"``...). ``num_heads`` cannot be read from shapes:
    for other sizes it is absent and must be passed by the caller. ``variant`` is informative and
    is not a constructor argument.

    Keys may carry ``module.`` / ``_orig_mod.`` prefixes; memory-only keys are ignored.

    Raises:
        CheckpointError: when a key a CDiT always has is missing or has an impossible shape.
    """
    sd = clean_keys(state_dict)
    missing = [key for key in _REQUIRED if key not in sd]
    if missing:
        sample = ", ".join(list(sd)[:6])
        raise CheckpointError(
            f"not a CDiT state dict: missing {', '.join(missing)} (its keys start: {sample})"
        )
    frames, num_patches, hidden = _shape(sd, "pos_embed", 3)
    proj_out, in_channels, patch, patch_w = _shape(sd, "x_embedder.proj.weight", 4)
    side = math.isqrt(num_patches)
    if proj_out != hidden or patch != patch_w or side * side != num_patches:
        raise CheckpointError(
            "not a CDiT state dict: pos_embed shape "
            f"{tuple(sd['pos_embed'].shape)} does not fit x_embedder.proj.weight shape "
            f"{tuple(sd['x_embedder.proj.weight'].shape)}"
        )
    indices = sorted({int(m.group(1)) for key in sd if (m := _BLOCK_KEY.match(key))})
    if indices != list(range(len(indices))):
        raise CheckpointError(f"not a CDiT state dict: block indices are not 0..N-1: {indices}")
    fc1_out = _shape(sd, "blocks.0.mlp.fc1.weight", 2)[0]
    out_features = _shape(sd, "final_layer.linear.weight", 2)[0]
    out_channels, remainder = divmod(out_features, patch * patch)
    if remainder or out_channels not in (in_channels, 2 * in_channels):
        raise CheckpointError(
            f"not a CDiT state dict: final_layer.linear.weight has {out_features} outputs, "
            f"expected patch_size**2 * in_channels = {patch * patch * in_channels} or twice that"
        )
    config: dict[str, Any] = {
        "input_size": side * patch,
        "context_size": frames - 1,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": hidden,
        "depth": len(indices),
        "mlp_ratio": fc1_out / hidden,
        "learn_sigma": out_channels == 2 * in_channels,
    }
    for name, spec in VARIANTS.items():
        if spec["hidden_size"] == hidden and spec["depth"] == len(indices):
            config["num_heads"] = spec["num_heads"]
            if spec["patch_size"] == patch:
                config["variant"] = name
    return config


def describe_config(config: Mapping[str, Any], family: str = "CDiT") -> str:
    """Short description, e.g. ``CDiT-XL/2 (context_size 4, input_size 32)``."""
    variant = config.get("variant")
    sizes = f"context_size {config.get('context_size')}, input_size {config.get('input_size')}"
    if variant is not None:
        return f"{family}-{variant} ({sizes})"
    return (
        f"a {family} with hidden_size {config.get('hidden_size')}, depth {config.get('depth')}, "
        f"patch_size {config.get('patch_size')} ({sizes}; no NWM variant)"
    )


def variant_of(config: Mapping[str, Any]) -> str | None:
    """The NWM variant name (``"L/2"``...) whose architecture ``config`` has, or None."""
    for name, spec in VARIANTS.items():
        if all(config.get(key) == spec[key] for key in ("hidden_size", "depth", "patch_size")):
            return name
    return None


def config_differences(checkpoint: Mapping[str, Any], model: Mapping[str, Any]) -> list[str]:
    """``["checkpoint has context_size 4, model has 3", ...]`` for architecture entries."""
    return [
        f"checkpoint has {key} {checkpoint[key]}, model has {model[key]}"
        for key in ARCHITECTURE_KEYS
        if key in checkpoint and key in model and checkpoint[key] != model[key]
    ]


_MEMORY_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.memory")
_PRESENCE_OPTIONS: tuple[tuple[re.Pattern[str], str, object, object], ...] = (
    (re.compile(r"^memory_time_embedder\."), "memory_time_embedding", True, False),
    (re.compile(r"^memory_ray_embedder\."), "memory_pose_encoding", "rays", "frame"),
    (re.compile(r"\.memory_attn\.ray_strength$"), "memory_ray_alignment", True, False),
)
"""Options read from the presence of the keys they add: (key pattern, option, value when some
key matches, value when none does)."""


def infer_memory_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """The memory hyper-parameters that shape a ``HybridCDiT`` state dict's tensors; empty for a
    plain CDiT state dict.

    - ``memory_layers``: the blocks with ``blocks.N.memory*`` keys;
    - ``memory_dim``: the output width of the memory attention's query projection
      (``blocks.N.memory_attn.q_proj.weight`` is ``(memory_dim, r*r*hidden_size)``);
    - ``memory_patch_size``: the memory patch embedding's kernel (present for coarse memory
      tokens), else the CDiT patch size (full-resolution memory tokens);
    - ``memory_time_embedding`` and ``memory_pose_encoding`` (``"rays"`` or ``"frame"``): whether
      the embedders those options add are present;
    - ``memory_ray_alignment``: whether the memory layers have ray strengths
      (``blocks.N.memory_attn.ray_strength``).

    Options that shape no tensor (``memory_top_k``, thresholds, ``retrieval``,
    ``memory_buffer_size``, ``camera_fov``...) cannot be read from a state dict: pass them.

    Raises:
        CheckpointError: when the memory tensors contradict each other.
    """
    cleaned = clean_keys(state_dict)
    layers = sorted({int(m.group(1)) for k in cleaned if (m := _MEMORY_BLOCK_KEY.match(k))})
    if not layers:
        return {}
    embedder = cleaned.get("memory_embedder.proj.weight")
    patch = cleaned["x_embedder.proj.weight"] if embedder is None else embedder
    widths = {
        index: int(cleaned[key].shape[0])
        for index in layers
        if (key := f"blocks.{index}.memory_attn.q_proj.weight") in cleaned
    }
    config: dict[str, Any] = {"memory_layers": layers, "memory_patch_size": int(patch.shape[-1])}
    if widths:
        if len(set(widths.values())) > 1:
            raise CheckpointError(
                "not a HybridCDiT state dict: memory layers have different memory attention "
                f"widths (blocks.N.memory_attn.q_proj.weight rows by layer: {widths})"
            )
        config["memory_dim"] = next(iter(widths.values()))
    for pattern, option, present, absent in _PRESENCE_OPTIONS:
        config[option] = present if any(pattern.search(k) for k in cleaned) else absent
    return config
