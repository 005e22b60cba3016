"""Report stage of the Memory Maze benchmark: the printed tables and the rollout figure."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from benchmarks.maze.evaluation import to_unit
from benchmarks.side_by_side import format_table

__all__ = ["print_tables", "rollout_figure"]


def print_tables(result: dict[str, object]) -> None:
    """Print the PSNR, noise-prediction error and memory informativeness tables of a summary."""
    rows = []
    for split in ("revisit", "novel"):
        for name in ("cdit", "hybrid", "hybrid_no_memory"):
            rows.append([split, name, float(result[f"{split}_psnr_{name}"])])  # type: ignore[arg-type]
    rows.append(["rollout revisit", "cdit", float(result["rollout_revisit_psnr_cdit"])])  # type: ignore[arg-type]
    rows.append(["rollout revisit", "hybrid", float(result["rollout_revisit_psnr_hybrid"])])  # type: ignore[arg-type]
    rows.append(
        [
            "rollout revisit",
            "hybrid_no_memory",
            float(result["rollout_revisit_psnr_hybrid_no_memory"]),  # type: ignore[arg-type]
        ]
    )
    for name in ("cdit", "lru", "coverage", "coverage_route", "whole_episode"):
        key = f"long_rollout_revisit_psnr_{name}"
        if key in result:
            hit = result.get(f"long_rollout_hit_rate_{name}")
            label = name if hit is None else f"{name} (memory hit rate {float(hit):.2f})"  # type: ignore[arg-type]
            rows.append(["long-return rollout", label, float(result[key])])  # type: ignore[arg-type]
    print(format_table(["PSNR (dB)", "model", "value"], rows))
    eps = result["eps_mse"]
    assert isinstance(eps, dict)
    levels = [k for k in eps["revisit_cdit"] if k != "mean"]
    rows = []
    for key, values in eps.items():
        split, name = key.split("_", 1)
        base = eps[f"{split}_cdit"]["mean"]
        rows.append(
            [split, name, *(values[lv] for lv in levels), values["mean"], values["mean"] / base]
        )
    print(format_table(["eps MSE", "model", *levels, "mean", "/cdit"], rows))
    info = result["informativeness"]
    assert isinstance(info, dict)
    print(format_table(["memory informativeness (revisit targets)", "value"], list(info.items())))


def rollout_figure(
    truth: Tensor, cdit: Tensor, hybrid: Tensor, revisit: Tensor, path: Path, *, scale: int = 2
) -> None:
    """Rows ground truth / CDiT / HybridCDiT of one rollout ``(L, C, H, W)`` (model scale);
    revisit frames ``revisit (L,)`` get a green border in every row. Written with
    ``torchvision.utils.save_image``."""
    from torchvision.utils import save_image

    rows = torch.stack([truth, cdit, hybrid]).clone()  # (3, L, C, H, W)
    images = to_unit(rows)
    if scale > 1:
        images = images.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    border = max(1, images.shape[-1] // 32)
    green = torch.tensor([0.1, 0.9, 0.2])[:, None, None]
    for i in torch.nonzero(revisit).flatten().tolist():
        img = images[:, i]
        img[..., :border, :] = green
        img[..., -border:, :] = green
        img[..., :, :border] = green
        img[..., :, -border:] = green
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.flatten(0, 1), path, nrow=rows.shape[1], padding=2, pad_value=1.0)
