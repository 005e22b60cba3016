"""Builders shared by the HybridCDiT tests."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from hybrid_cdit import HybridCDiT, MemoryContext

TINY: dict[str, Any] = {
    "input_size": 8,
    "context_size": 2,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 48,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 4.0,
    "learn_sigma": True,
}


def randomise(model: torch.nn.Module, *, memory_only: bool = False, std: float = 0.2) -> None:
    """Move parameters away from their (partly zero) initialisation."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if memory_only and "memory" not in name:
                continue
            p.add_(torch.randn(p.shape, generator=generator) * std)


def make_inputs(n: int = 3, seed: int = 0, cfg: dict[str, Any] = TINY) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c, s, k = cfg["in_channels"], cfg["input_size"], cfg["context_size"]
    return {
        "x": torch.randn(n, c, s, s, generator=g),
        "t": torch.randint(0, 1000, (n,), generator=g),
        "y": torch.randn(n, 3, generator=g),
        "x_cond": torch.randn(n, k, c, s, s, generator=g),
        "rel_t": torch.rand(n, generator=g),
    }


def make_memory(
    n: int = 3, k: int = 4, seed: int = 0, cfg: dict[str, Any] = TINY, pose_dim: int = 3
) -> MemoryContext:
    """A full, active memory: every slot valid with a high score."""
    g = torch.Generator().manual_seed(seed + 100)
    c, s = cfg["in_channels"], cfg["input_size"]
    poses = torch.randn(n, k, pose_dim, generator=g)
    poses[..., -1] = poses[..., -1].remainder(2 * math.pi) - math.pi
    return MemoryContext(
        frames=torch.randn(n, k, c, s, s, generator=g),
        poses=poses,
        scores=torch.full((n, k), 0.9),
        mask=torch.ones(n, k, dtype=torch.bool),
        query_pose=torch.zeros(n, pose_dim),
    )


def replace(memory: MemoryContext, **fields: torch.Tensor) -> MemoryContext:
    """A new context with some tensors replaced (every other field, steps included, kept)."""
    return dataclasses.replace(memory, **fields)


def trained_like_hybrid(**kwargs: Any) -> HybridCDiT:
    """A tiny hybrid with every parameter, memory gates included, away from zero."""
    torch.manual_seed(0)
    model = HybridCDiT(**{**TINY, **kwargs}).eval()
    randomise(model)
    return model
