"""Report stage of the Memory Maze benchmark: the printed tables and the rollout figure."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from benchmarks.maze.evaluation import to_unit
from benchmarks.maze.stats import HEADLINE_DIFFERENCES
from benchmarks.maze.worlds import GAP_BINS, gap_bin_name
from benchmarks.side_by_side import format_table

__all__ = [
    "PREDICTORS",
    "cost_table",
    "curve_table",
    "gap_table",
    "interval_table",
    "one_step_table",
    "pose_noise_table",
    "print_tables",
    "rollout_figure",
]


PREDICTORS = (
    "cdit",
    "hybrid",
    "hybrid_no_memory",
    "long_context",
    "ctx_memory",
    "ctx_memory_pose",
    "copy_last",
    "copy_top",
    "hybrid_noisy_poses",
    "ctx_memory_noisy_poses",
    "ctx_memory_pose_noisy_poses",
    "copy_top_noisy_poses",
)
"""Rows of the one-step table, in order (those the summary has; ``_noisy_poses``: scored with
corrupted memory poses)."""


def _get(result: dict[str, object], key: str) -> object:
    value = result.get(key)
    return "-" if value is None else value


def one_step_table(result: dict[str, object]) -> str:
    """One-step PSNR and SSIM of every predictor on every band."""
    columns = [(b, m) for m in ("psnr", "ssim") for b in ("revisit", "novel", "middle", "all")]
    rows = [
        [name, *(_get(result, f"{b}_{m}_{name}") for b, m in columns)]
        for name in PREDICTORS
        if f"revisit_psnr_{name}" in result
    ]
    header = ["one-step", *(f"{b} {m.upper()}" for b, m in columns)]
    return format_table(header, rows)


def gap_table(result: dict[str, object]) -> str:
    """Revisit PSNR of every predictor by frames since the view was last seen."""
    bins = [gap_bin_name(lo, hi) for lo, hi in GAP_BINS]
    rows = [
        [name, *(_get(result, f"revisit_psnr_{name}_gap_{b}") for b in bins)]
        for name in PREDICTORS
        if f"revisit_psnr_{name}" in result
    ]
    rows.append(["targets", *(_get(result, f"revisit_targets_gap_{b}") for b in bins)])
    return format_table(["revisit PSNR by gap (frames)", *bins], rows)


def interval_table(result: dict[str, object]) -> str:
    """Headline differences with their 95% bootstrap intervals over held-out episodes (the
    out-and-back ones over windows, one per episode)."""
    rows = []
    for band, a, b in HEADLINE_DIFFERENCES:
        key = f"{band}_psnr_gain_{a}_vs_{b}"
        if key in result:
            rows.append(
                [
                    f"{band}: {a} - {b}",
                    result[key],
                    result[f"{key}_ci_low"],
                    result[f"{key}_ci_high"],
                ]
            )
    for key, label in (
        ("outback_self_gain", "out and back, vs own first visit: hybrid - cdit"),
        ("outback_gain", "out and back, vs truth: hybrid - cdit"),
    ):
        if key in result:
            rows.append([label, result[key], result[f"{key}_ci_low"], result[f"{key}_ci_high"]])
    return format_table(["PSNR difference (dB)", "mean", "95% low", "95% high"], rows)


def pose_noise_table(result: dict[str, object]) -> str:
    """What corrupted memory poses cost (runs with ``--pose-jitter`` / ``--pose-drift``)."""
    keys = (
        "pose_noise",
        "pose_error_median",
        "heading_error_median_deg",
        "hit_rate",
        "hit_rate_noisy_poses",
        "revisit_psnr_gain_hybrid_vs_cdit",
        "revisit_gain_noisy_poses",
        "revisit_gain_noisy_poses_ci_low",
        "revisit_gain_noisy_poses_ci_high",
        "gain_share_noisy_poses",
    )
    return format_table(["memory poses corrupted", "value"], [[k, _get(result, k)] for k in keys])


def cost_table(result: dict[str, object]) -> str:
    """Parameters and operations per forward (one sample) of every learned model."""
    names = [k.removeprefix("params_") for k in result if k.startswith("params_")]
    rows = [[n, result[f"params_{n}"], _get(result, f"flops_{n}")] for n in names]
    return format_table(["learned model", "parameters", "FLOPs / forward"], rows)


def curve_table(curve: list[dict[str, float]]) -> str:
    """Held-out DDPM loss of every learned model over training steps."""
    names = [k for k in curve[0] if k != "step"]
    rows = [[int(row["step"]), *(row[n] for n in names)] for row in curve]
    return format_table(["step (held-out loss)", *names], rows)


def print_tables(result: dict[str, object]) -> None:
    """Print the one-step (bands, baselines, gap bins, intervals), rollout, cost, learning
    curve, noise-prediction error and memory informativeness tables of a summary."""
    print(one_step_table(result))
    print(gap_table(result))
    print(interval_table(result))
    if "pose_error_median" in result:
        print(pose_noise_table(result))
    rows = []
    for name in ("cdit", "hybrid", "hybrid_no_memory"):
        rows.append(["rollout revisit", name, _get(result, f"rollout_revisit_psnr_{name}")])
    for name in ("cdit", "lru", "coverage", "coverage_route", "whole_episode"):
        key = f"long_rollout_revisit_psnr_{name}"
        if key in result:
            hit = result.get(f"long_rollout_hit_rate_{name}")
            label = name if hit is None else f"{name} (memory hit rate {float(hit):.2f})"  # type: ignore[arg-type]
            rows.append(["long-return rollout", label, result[key]])
    for name in ("cdit", "hybrid"):
        if f"outback_psnr_{name}" in result:
            rows.append(["out and back, vs truth", name, result[f"outback_psnr_{name}"]])
            rows.append(
                ["out and back, vs own first visit", name, result[f"outback_self_psnr_{name}"]]
            )
    if "outback_self_psnr_truth" in result:
        rows.append(
            ["out and back, vs own first visit", "truth", result["outback_self_psnr_truth"]]
        )
    print(format_table(["rollout PSNR (dB)", "model", "value"], rows))
    print(cost_table(result))
    curves = result.get("curve")
    if isinstance(curves, list) and curves:
        for curve in curves if isinstance(curves[0], list) else [curves]:
            print(curve_table(curve))
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
    from torchvision.utils import save_image  # type: ignore[import-untyped]

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
