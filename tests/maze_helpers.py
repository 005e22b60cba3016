"""A tiny CDiT / HybridCDiT pair whose gates are open, for the Memory Maze benchmark tests."""

from __future__ import annotations

import torch
from benchmarks import side_by_side as sbs

from hybrid_cdit import CDiT, HybridCDiT


def tiny_pair(*, open_cdit: bool = False) -> tuple[CDiT, HybridCDiT]:
    """A tiny CDiT and a hybrid of its weights, memory parameters perturbed so memory changes
    the output; ``open_cdit`` perturbs every CDiT weight too (DiT zero-initialises its gates),
    else only its output layer. Both in eval mode."""
    arch = {
        "input_size": 8, "context_size": 2, "patch_size": 2, "in_channels": 3,
        "hidden_size": 32, "depth": 2, "num_heads": 2, "learn_sigma": False,
    }  # fmt: skip
    memory = {"memory_top_k": 3, "memory_layers": [1], "retrieval": "pose",
              "spatial_similarity_threshold": 0.5, "memory_activation_threshold": 0.5}  # fmt: skip
    cdit, hybrid = sbs.build_pair(arch, memory, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        opened = cdit.parameters() if open_cdit else cdit.final_layer.parameters()
        for p in opened:
            p.add_((0.1 if open_cdit else 0.05) * torch.randn(p.shape, generator=gen))
        hybrid.load_state_dict(cdit.state_dict(), strict=False)
        for name, p in hybrid.named_parameters():
            if "memory" in name:
                p.add_((0.1 if open_cdit else 0.05) * torch.randn(p.shape, generator=gen))
    return cdit.eval(), hybrid.eval()
