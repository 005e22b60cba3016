"""The README's quickstart code runs as written, on a tiny checkpoint of NWM's layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from hybrid_cdit import HybridCDiT

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = Path(__file__).parent / "data" / "nwm_cdit_tiny.pth.tar"


def quickstart_code() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)
    assert len(blocks) == 1
    return str(blocks[0])


def test_quickstart_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[HybridCDiT] = []
    original = HybridCDiT.from_cdit_checkpoint

    def from_cdit_checkpoint(path: str) -> HybridCDiT:
        # the README's file is an NWM XL/2 checkpoint; the tiny one stands in for it, and as
        # its width matches no NWM variant its head count is given here
        assert path.endswith(".pth.tar")
        model = original(CHECKPOINT, num_heads=4)
        loaded.append(model)
        return model

    monkeypatch.setattr(HybridCDiT, "from_cdit_checkpoint", from_cdit_checkpoint)
    g = torch.Generator().manual_seed(0)
    b, t, side = 2, 5, 8
    history_poses = torch.zeros(b, t, 3)
    history_poses[:, :, 0] = torch.arange(t, dtype=torch.float32)  # 1 m apart along x
    names = {
        "B": b,
        "T": t,
        "H": side,
        "W": side,
        "frame_latent": torch.randn(b, 4, side, side, generator=g),
        "pose": torch.zeros(b, 3),
        "x_t": torch.randn(b, 4, side, side, generator=g),
        "t": torch.tensor([500, 20]),
        "y": torch.randn(b, 3, generator=g),
        "x_cond": torch.randn(b, 2, 4, side, side, generator=g),
        "rel_t": torch.ones(b),
        "next_pose": torch.tensor([[4.0, 0.0, 0.0], [0.5, 0.0, 0.0]]),
        "history_latents": torch.randn(b, t, 4, side, side, generator=g),
        "history_poses": history_poses,
    }
    exec(compile(quickstart_code(), "README.md", "exec"), names)

    (model,) = loaded
    buffer = names["buffer"]
    assert buffer.counts.tolist() == [t, t]  # every history frame of every sample stored
    memory = names["memory"]
    # both ways of bringing memory retrieve the same frames: those within 3.57 m of the query
    from_buffer = buffer.retrieve(names["next_pose"], k=8)
    assert memory.mask.sum(1).tolist() == from_buffer.mask.sum(1).tolist() == [4, 5]
    with torch.no_grad():
        expected = model(*(names[k] for k in ("x_t", "t", "y", "x_cond", "rel_t")), memory=memory)
    torch.testing.assert_close(names["out"], expected, atol=1e-6, rtol=0)
