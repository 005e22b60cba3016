"""Statistics of the benchmark: bootstrap intervals over held-out episodes for the headline
differences, and means of per-seed tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["HEADLINE_DIFFERENCES", "bootstrap_interval", "headline_intervals", "mean_tables"]

HEADLINE_DIFFERENCES = (
    ("revisit", "hybrid", "cdit"),
    ("revisit", "hybrid", "long_context"),
    ("revisit", "hybrid", "ctx_memory"),
    ("revisit", "hybrid", "ctx_memory_pose"),
    ("revisit", "hybrid", "copy_top"),
    ("revisit", "hybrid", "copy_last"),
    ("revisit", "cdit", "copy_last"),
    ("novel", "hybrid", "cdit"),
    ("novel", "cdit", "copy_last"),
    ("middle", "hybrid", "cdit"),
    ("middle", "cdit", "copy_last"),
    ("all", "hybrid", "cdit"),
    ("all", "cdit", "copy_last"),
    ("revisit", "hybrid_noisy_poses", "cdit"),
    ("novel", "hybrid_noisy_poses", "cdit"),
)
"""``(band, a, b)``: PSNR of ``a`` minus PSNR of ``b`` on ``band`` targets (``hybrid_noisy_poses``:
the hybrid with corrupted memory poses, in runs with ``--pose-jitter`` / ``--pose-drift``)."""


def bootstrap_interval(
    values: Tensor,
    episode: Tensor,
    n_episodes: int,
    *,
    strata: Tensor | None = None,
    weights: Sequence[float] = (1.0,),
    draws: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over targets, resampling episodes.

    Each draw picks ``n_episodes`` episodes with replacement (an episode drawn twice counts its
    targets twice) and computes the mean of ``values`` over the drawn targets; with ``strata``,
    the ``weights``-weighted sum of the per-stratum means. Draws in which a stratum has no
    target are dropped.

    Args:
        values: ``(M,)`` per-target values.
        episode: ``(M,)`` long, each target's episode in ``[0, n_episodes)``.
        strata: optional ``(M,)`` long, each target's stratum in ``[0, len(weights))``.
        weights: the strata's weights.
        level: the interval's coverage.
        seed: seed of the resampling.

    Returns:
        ``(low, high)``, the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles.
    """
    if values.shape != episode.shape or values.dim() != 1:
        raise ValueError(
            f"values and episode must be (M,) of one shape, got {tuple(values.shape)} and "
            f"{tuple(episode.shape)}"
        )
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if strata is None:
        strata = torch.zeros_like(episode)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, n_episodes, (draws, n_episodes), generator=gen)
    counts = torch.zeros(draws, n_episodes, dtype=torch.float64)
    counts.scatter_add_(1, pick, torch.ones(pick.shape, dtype=torch.float64))
    estimate = torch.zeros(draws, dtype=torch.float64)
    for s, weight in enumerate(weights):
        sel = strata == s
        sums = torch.zeros(n_episodes, dtype=torch.float64)
        sums.index_add_(0, episode[sel], values[sel].double())
        num = torch.zeros(n_episodes, dtype=torch.float64)
        num.index_add_(0, episode[sel], torch.ones(int(sel.sum()), dtype=torch.float64))
        estimate += weight * (counts @ sums) / (counts @ num)
    estimate = estimate[torch.isfinite(estimate)]
    if estimate.numel() == 0:
        raise ValueError("no bootstrap draw has targets in every stratum")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(estimate, q).tolist()
    return float(low), float(high)


def headline_intervals(
    psnr: Mapping[str, Tensor],
    episode: Tensor,
    bands: Mapping[str, Tensor],
    weights: Mapping[str, float],
    n_episodes: int,
    *,
    draws: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean and 95% interval of every :data:`HEADLINE_DIFFERENCES` entry whose predictors are
    in ``psnr``: ``{band}_psnr_gain_{a}_vs_{b}`` and its ``_ci_low`` / ``_ci_high``, and
    ``revisit_gain_ci_low`` / ``_high`` for the hybrid minus the CDiT on revisits.

    Args:
        psnr: name -> ``(M,)`` per-target PSNR.
        episode: ``(M,)`` long.
        bands: band name -> ``(M,)`` bool membership (``revisit``, ``novel``, ``middle``).
        weights: band -> share of all held-out frames (``all`` weights the band means).
    """
    out: dict[str, float] = {}
    names = list(bands)
    stratum = torch.full_like(episode, -1)
    for i, band in enumerate(names):
        stratum[bands[band]] = i
    for band, a, b in HEADLINE_DIFFERENCES:
        if a not in psnr or b not in psnr:
            continue
        diff = psnr[a] - psnr[b]
        if band == "all":
            keep = stratum >= 0
            if not all(bool(bands[n].any()) for n in names):
                continue
            strata: Tensor | None = stratum[keep]
            band_weights = [weights[n] for n in names]
        else:
            keep = bands[band]
            if not bool(keep.any()):
                continue
            strata, band_weights = None, [1.0]
        low, high = bootstrap_interval(
            diff[keep], episode[keep], n_episodes,
            strata=strata, weights=band_weights, draws=draws, seed=seed,
        )  # fmt: skip
        if band == "all":
            mean = sum(weights[n] * float(diff[bands[n]].mean()) for n in names)
        else:
            mean = float(diff[keep].mean())
        key = f"{band}_psnr_gain_{a}_vs_{b}"
        out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"] = mean, low, high
    if "revisit_psnr_gain_hybrid_vs_cdit" in out:
        out["revisit_gain_ci_low"] = out["revisit_psnr_gain_hybrid_vs_cdit_ci_low"]
        out["revisit_gain_ci_high"] = out["revisit_psnr_gain_hybrid_vs_cdit_ci_high"]
    return out


def mean_tables(tables: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """The cell-wise mean of tables ``{row: {column: value}}`` with the same rows and columns
    (one table a training seed)."""
    if not tables:
        raise ValueError("tables must hold at least one table, got none")
    shape = {row: set(cols) for row, cols in tables[0].items()}
    for i, table in enumerate(tables[1:], start=1):
        if {row: set(cols) for row, cols in table.items()} != shape:
            raise ValueError(f"tables[{i}] has other rows or columns than tables[0]")
    return {
        row: {col: sum(float(t[row][col]) for t in tables) / len(tables) for col in cols}
        for row, cols in tables[0].items()
    }
