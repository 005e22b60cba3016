"""Argument checks shared by the library: one clear ``ValueError`` per bad input.

Every check runs before any computation or state change, and every message names the
argument, what was expected and what was received.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Dim = tuple[str, int | None]
"""A named dimension: ``("N", 4)`` must equal 4, ``("N", None)`` is free."""


def _format_dims(dims: Sequence[Dim]) -> str:
    parts = [name if size is None else f"{name}={size}" for name, size in dims]
    return "(" + ", ".join(parts) + ")"


def check_tensor(name: str, value: object) -> Tensor:
    """Return ``value`` if it is a tensor, else raise ``TypeError`` naming ``name``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_shape(name: str, value: object, dims: Sequence[Dim]) -> Tensor:
    """Check rank and sizes of ``value`` against named ``dims``.

    Raises:
        ValueError: naming ``name``, the expected shape and the received shape.
    """
    tensor = check_tensor(name, value)
    shape = tuple(tensor.shape)
    ok = len(shape) == len(dims) and all(
        size is None or got == size for got, (_, size) in zip(shape, dims, strict=True)
    )
    if not ok:
        raise ValueError(f"{name} must have shape {_format_dims(dims)}, got {shape}")
    return tensor


def check_finite(name: str, tensor: Tensor) -> Tensor:
    """Raise ``ValueError`` if ``tensor`` holds NaN or infinite values.

    The check reads the values (a device sync), so it is skipped while ``torch.compile`` traces.
    """
    if torch.compiler.is_compiling():
        return tensor
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite, got non-finite values (NaN or inf)")
    return tensor


def all_finite(tensor: Tensor) -> bool:
    """Whether every element of ``tensor`` is finite, at the cost of one reduction.

    A sum is finite when every term is (NaN and inf propagate); only when it is not (which also
    happens when finite values overflow) does the exact elementwise test run.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` >= 1, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
