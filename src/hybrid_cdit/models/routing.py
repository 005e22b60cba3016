"""Routing: samples whose memory is inactive go through the CDiT a hybrid was fine-tuned from.

A jointly fine-tuned :class:`HybridCDiT` moves its CDiT weights, so where memory is inactive
(places not seen before) it is no longer exactly the CDiT it started from. Keeping that CDiT
beside the hybrid restores it there, at the cost of holding both models' weights:

    out[n] = hybrid(x[n] | context, memory)   where sample n's memory is active
    out[n] = cdit(x[n] | context)             elsewhere
"""

from __future__ import annotations

from torch import Tensor

from ..memory import MemoryContext
from .cdit import CDiT
from .hybrid import HybridCDiT

__all__ = ["routed_forward"]

_SHAPE = ("input_size", "context_size", "in_channels", "learn_sigma")


def routed_forward(
    model: HybridCDiT,
    fallback: CDiT,
    x: Tensor,
    t: Tensor,
    y: Tensor,
    x_cond: Tensor,
    rel_t: Tensor,
    memory: MemoryContext | None,
) -> Tensor:
    """``model``'s output where memory is active, ``fallback``'s everywhere else.

    Samples whose memory is active (:meth:`HybridCDiT.active_samples`) get exactly
    ``model(x, t, y, x_cond, rel_t, memory=memory)``; every other sample (all of them when
    ``memory`` is None) gets exactly ``fallback(x, t, y, x_cond, rel_t)``, the fallback
    running on those samples only. The hybrid runs on the whole batch whenever a sample is
    active, so that what it caches on ``memory`` serves every denoising step that shares it.

    Args:
        model: a :class:`HybridCDiT`.
        fallback: a :class:`CDiT` with the model's ``input_size``, ``context_size``,
            ``in_channels`` and ``learn_sigma`` (typically the CDiT the hybrid was fine-tuned
            from).
        x, t, y, x_cond, rel_t: as :meth:`HybridCDiT.forward` (``x`` ``(N, C, H, W)``).
        memory: retrieved memory for the batch (``N`` samples), or None.

    Returns:
        ``(N, 2C, H, W)`` with ``learn_sigma``, else ``(N, C, H, W)``.

    Raises:
        ValueError: when ``model`` or ``fallback`` is of the wrong type or their shapes differ,
            or ``memory`` is not a :class:`MemoryContext`.
    """
    if not isinstance(model, HybridCDiT):
        raise ValueError(f"model must be a HybridCDiT, got {type(model).__name__}")
    if not isinstance(fallback, CDiT):
        raise ValueError(f"fallback must be a CDiT, got {type(fallback).__name__}")
    for name in _SHAPE:
        if getattr(fallback, name) != getattr(model, name):
            raise ValueError(
                f"fallback must have the model's {name} {getattr(model, name)!r}, "
                f"got {getattr(fallback, name)!r}"
            )
    if memory is not None and not isinstance(memory, MemoryContext):
        raise ValueError(f"memory must be a MemoryContext or None, got {type(memory).__name__}")
    if memory is None or not model.memory_enabled:
        plain: Tensor = fallback(x, t, y, x_cond, rel_t)
        return plain
    inactive = ~model.active_samples(memory).to(x.device)
    if bool(inactive.all()):
        every: Tensor = fallback(x, t, y, x_cond, rel_t)
        return every
    out: Tensor = model(x, t, y, x_cond, rel_t, memory=memory)
    if not bool(inactive.any()):
        return out
    rest: Tensor = fallback(
        x[inactive], t[inactive], y[inactive], x_cond[inactive], rel_t[inactive]
    )
    rows = inactive.nonzero().squeeze(1)
    return out.index_put((rows,), rest.to(out.dtype))
