"""Write the HybridCDiT fixture of version 0.1.0.dev0 (commit 1301ff6), with recorded outputs.

Run with that version's sources on the path (the files in tests/data/ were made this way)::

    git worktree add /tmp/prev 1301ff6
    PYTHONPATH=/tmp/prev/src python tests/data/make_hybrid_0_1_0.py tests/data

Writes ``hybrid_0_1_0/`` (``save_pretrained``: config.json + model.safetensors),
``hybrid_0_1_0.pth.tar`` (NWM ``train.py`` layout with the hybrid's full state dict under
``model`` and ``ema``) and ``hybrid_0_1_0_io.safetensors`` (inputs, memory and the outputs).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from hybrid_cdit import HybridCDiT, MemoryContext

CONFIG = {
    "input_size": 8,
    "context_size": 2,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 24,
    "depth": 2,
    "num_heads": 2,
    "mlp_ratio": 4.0,
    "learn_sigma": True,
    "memory_layers": [1],
}


def main() -> None:
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    model = HybridCDiT(**CONFIG).eval()  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-like: every parameter, memory gates included, non-zero
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    g = torch.Generator().manual_seed(2)
    n, k, c, s = 3, 4, 4, 8
    poses = torch.randn(n, k, 5, generator=g)
    poses[..., 3] = poses[..., 3].clamp(-1.0, 1.0)
    poses[..., 4] = poses[..., 4].remainder(2 * math.pi) - math.pi
    io = {
        "x": torch.randn(n, c, s, s, generator=g),
        "t": torch.randint(0, 1000, (n,), generator=g),
        "y": torch.randn(n, 3, generator=g),
        "x_cond": torch.randn(n, 2, c, s, s, generator=g),
        "rel_t": torch.rand(n, generator=g),
        "frames": torch.randn(n, k, c, s, s, generator=g),
        "poses": poses,
        "scores": torch.tensor([[0.9, 0.8, 0.75, 0.2]] * 2 + [[0.1, 0.1, 0.1, 0.1]]),
        "mask": torch.tensor([[True, True, True, False]] * 2 + [[True, False, False, False]]),
        "query_pose": torch.tensor(
            [[0.3, -0.2, 0.1, 0.2, 1.0], [0.0] * 5, [1.0, 1.0, 0.0, 0.0, 3.0]]
        ),
    }
    memory = MemoryContext(io["frames"], io["poses"], io["scores"], io["mask"], io["query_pose"])
    with torch.no_grad():
        inputs = (io["x"], io["t"], io["y"], io["x_cond"], io["rel_t"])
        io["out_memory"] = model(*inputs, memory=memory)
        io["out_plain"] = model(*inputs)
    model.save_pretrained(out / "hybrid_0_1_0")
    weights = {k_: v.detach().clone() for k_, v in model.state_dict().items()}
    torch.save(
        {
            "model": weights,
            "ema": weights,
            "args": argparse.Namespace(model="HybridCDiT", context_size=2),
            "epoch": 1,
            "train_steps": 10,
        },
        out / "hybrid_0_1_0.pth.tar",
    )
    save_file(
        {k_: v.contiguous() for k_, v in io.items()},
        str(out / "hybrid_0_1_0_io.safetensors"),
        metadata={"hybrid_cdit_version": "0.1.0.dev0", "commit": "1301ff6"},
    )


if __name__ == "__main__":
    main()
