"""The :class:`Selection` of slots retrieval returns, and top-k selection over scores.

:func:`select_top_k` ranks by score, breaks ties by the more recent step (when steps are given)
and then by the lower slot index, and masks slots scored under ``threshold``. Shapes as in
:mod:`.retrieval`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import check_positive_int, check_shape
from ._checks import check_data, check_steps, check_threshold, check_valid

__all__ = ["Selection", "pad_selection", "secondary_order", "select_top_k"]


class Selection(NamedTuple):
    """The slots chosen for each sample.

    Attributes:
        indices: ``(B, k)`` long slot indices into the memory's ``M`` axis (0 for slots padded
            beyond ``M``).
        scores: ``(B, k)`` their scores in ``[0, 1]`` (0 where padded or empty).
        mask: ``(B, k)`` bool, True for slots that hold a frame scored at or above the
            threshold.
    """

    indices: Tensor
    scores: Tensor
    mask: Tensor


def secondary_order(steps: Tensor | None, b: int, m: int, device: torch.device) -> Tensor:
    """``(B, M)`` slot indices ordered by step descending, then slot ascending: the tie-break
    order every strategy uses."""
    if steps is None:
        return torch.arange(m, device=device).expand(b, m)
    return torch.argsort(steps.to(device), dim=1, descending=True, stable=True)


def pad_selection(selection: Selection, k: int) -> Selection:
    """``selection`` widened to ``k`` slots with masked padding (index 0, score 0)."""
    extra = k - selection.indices.shape[1]
    if extra <= 0:
        return selection
    idx, scores, mask = selection
    b = idx.shape[0]
    return Selection(
        torch.cat([idx, idx.new_zeros(b, extra)], dim=1),
        torch.cat([scores, scores.new_zeros(b, extra)], dim=1),
        torch.cat([mask, mask.new_zeros(b, extra)], dim=1),
    )


def select_top_k(
    scores: Tensor,
    valid: Tensor | None,
    k: int,
    threshold: float = 0.0,
    *,
    steps: Tensor | None = None,
) -> Selection:
    """The ``k`` highest-scoring valid slots of each sample.

    Ties are broken by the more recent step when ``steps`` is given, then by the lower slot
    index, so the result does not depend on how equal-scored frames happen to be laid out.
    ``k`` may exceed ``M``: the extra slots come back masked with index 0 and score 0. Slots
    that are empty or scored under ``threshold`` are masked.

    Args:
        scores: ``(B, M)`` floating scores (only valid slots must be finite).
        valid: ``(B, M)`` bool or None (all valid).
        k: number of slots to return, ``>= 1``.
        threshold: slots scored strictly under it are masked.
        steps: optional ``(B, M)`` integer steps (timestamps) for tie-breaking.

    Returns:
        :class:`Selection` with ``(B, k)`` indices (sorted by decreasing score), scores, mask.
    """
    scores = check_data("scores", check_shape("scores", scores, [("B", None), ("M", None)]))
    b, m = scores.shape
    if m < 1:
        raise ValueError(f"scores must hold at least one slot (M >= 1), got shape {(b, m)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must have a floating-point dtype, got {scores.dtype}")
    k = check_positive_int("k", k)
    threshold = check_threshold(threshold)
    mask = check_valid(valid, b, m, scores.device)
    if steps is not None:
        steps = check_steps("steps", steps, b, m)
    if not bool((torch.isfinite(scores) | ~mask).all()):
        raise ValueError("scores must be finite in valid slots, got NaN or inf")
    return _top_k(scores, mask, k, threshold, steps)


_NARROW_FROM = 256
"""Slot count above which selection first narrows to the candidates (below it a full sort is as
fast)."""


def _top_k(
    scores: Tensor, valid: Tensor, k: int, threshold: float, steps: Tensor | None
) -> Selection:
    if scores.shape[1] > max(4 * k, _NARROW_FROM):
        return _top_k_large(scores, valid, k, threshold, steps)
    return _top_k_sorted(scores, valid, k, threshold, steps)


def _top_k_large(
    scores: Tensor, valid: Tensor, k: int, threshold: float, steps: Tensor | None
) -> Selection:
    """:func:`_top_k_sorted` over the candidates only: the slots scored at least the ``k``-th
    best valid score (ties included), found with ``topk`` in time linear in ``M``. The true top
    ``k`` are among them, and the candidates keep their slot order, so the result is the same."""
    key = torch.where(valid, scores, -math.inf)
    kth = key.topk(k, dim=1).values[:, -1:]
    candidates = valid & (key >= kth)
    width = int(candidates.sum(1).max())
    if width * 2 > scores.shape[1]:  # ties everywhere: nothing to narrow
        return _top_k_sorted(scores, valid, k, threshold, steps)
    top = torch.where(candidates, key, -math.inf).topk(max(width, 1), dim=1).indices
    slots = torch.sort(top, dim=1).values  # candidates in slot order (ties keep lower slot)
    picked = _top_k_sorted(
        scores.gather(1, slots),
        candidates.gather(1, slots),
        k,
        threshold,
        None if steps is None else steps.to(scores.device).gather(1, slots),
    )
    indices = slots.gather(1, picked.indices.clamp(max=slots.shape[1] - 1))
    return Selection(indices, picked.scores, picked.mask)


def _top_k_sorted(
    scores: Tensor, valid: Tensor, k: int, threshold: float, steps: Tensor | None
) -> Selection:
    b, m = scores.shape
    order = secondary_order(steps, b, m, scores.device)
    key = torch.where(valid, scores, -math.inf).gather(1, order)
    order = order.gather(1, torch.argsort(key, dim=1, descending=True, stable=True))
    top = order[:, : min(k, m)]
    top_scores = torch.where(valid, scores, 0.0).gather(1, top)
    top_mask = valid.gather(1, top) & (top_scores >= threshold)
    return pad_selection(Selection(top, top_scores, top_mask), k)
