"""Memory guidance: scale what memory changes in a :class:`HybridCDiT`'s prediction.

Classifier-free guidance with memory as the condition. A hybrid trained with memory withheld
from part of its samples predicts both with and without memory, and a sampler may extrapolate
from one to the other:

    out = f(x | context) + scale * (f(x | context, memory) - f(x | context))

``scale`` 1 is the plain forward, 0 ignores memory, above 1 strengthens what memory adds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..memory import MemoryContext
from .hybrid import HybridCDiT

__all__ = ["memory_guided_forward"]


def memory_guided_forward(
    model: HybridCDiT,
    x: Tensor,
    t: Tensor,
    y: Tensor,
    x_cond: Tensor,
    rel_t: Tensor,
    memory: MemoryContext,
    scale: float,
) -> Tensor:
    """The model's output with memory's contribution scaled by ``scale``.

    Only samples whose memory is active (:meth:`HybridCDiT.active_samples`) run a second forward
    without memory; every other sample, and every sample at ``scale == 1``, gets exactly
    ``model(x, t, y, x_cond, rel_t, memory=memory)``. Guidance applies to the first ``C`` output
    channels (the noise or ``v`` prediction); the learned variance of a ``learn_sigma`` model
    (channels ``C:2C``) is the memory forward's.

    Args:
        model: a :class:`HybridCDiT`.
        x, t, y, x_cond, rel_t: as :meth:`HybridCDiT.forward` (``x`` ``(N, C, H, W)``).
        memory: retrieved memory for the batch (``N`` samples).
        scale: guidance scale, a finite number ``>= 0``.

    Returns:
        ``(N, 2C, H, W)`` with ``learn_sigma``, else ``(N, C, H, W)``.
    """
    if not isinstance(model, HybridCDiT):
        raise TypeError(f"model must be a HybridCDiT, got {type(model).__name__}")
    if not isinstance(memory, MemoryContext):
        raise TypeError(f"memory must be a MemoryContext, got {type(memory).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    out: Tensor = model(x, t, y, x_cond, rel_t, memory=memory)
    if scale == 1 or not model.memory_enabled:
        return out
    active = model.active_samples(memory).to(x.device)
    if not bool(active.any()):
        return out
    plain: Tensor = model(x[active], t[active], y[active], x_cond[active], rel_t[active])
    c = x.shape[1]
    guided = plain[:, :c] + scale * (out[active, :c] - plain[:, :c])
    rows = active.nonzero().squeeze(1)
    return out.index_put((rows,), torch.cat([guided, out[active, c:]], dim=1))
