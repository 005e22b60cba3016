"""Input validation shared by the retrieval modules (:mod:`.scores`, :mod:`.fov`,
:mod:`.selection`): real parameters, ``(B, M, P)`` memory poses with their query and mask, and
integer steps; tensors that hold data and devices that exist."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_shape
from .poses import POSE_DIMS

__all__ = [
    "check_data",
    "check_device",
    "check_generator",
    "check_memory",
    "check_real",
    "check_steps",
    "check_threshold",
]


def check_real(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float if it is a finite real number (``> 0`` when ``positive``), else
    raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def check_data(name: str, tensor: Tensor) -> Tensor:
    """Return ``tensor`` if it is a dense tensor that holds data, else raise ``ValueError``
    naming ``name`` (a meta tensor has no values to store or compare; a sparse one has no
    dense layout to index)."""
    if tensor.is_meta:
        raise ValueError(f"{name} must hold data, got a tensor on the meta device")
    if tensor.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}")
    return tensor


def check_device(name: str, device: object) -> torch.device:
    """``torch.device(device)`` if tensors can be stored there, else raise ``ValueError``
    naming ``name``: not a device, the meta device (no data), or a device this process cannot
    use (``"cuda"`` without CUDA, a GPU index past the last GPU)."""
    try:
        target: torch.device = torch.device(device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"{name} must be a torch.device or device string, got {device!r}"
        ) from error
    if target.type == "cpu":
        return target
    if target.type == "meta":
        raise ValueError(f"{name} must be a device that holds data, got {device!r} (meta)")
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} must be an available device, got {device!r}: no CUDA device")
        count = torch.cuda.device_count()
        if target.index is not None and target.index >= count:
            raise ValueError(
                f"{name} must be an available device, got {device!r}: {count} CUDA device(s)"
            )
        return target
    try:  # other backends (mps, xpu, ...): ask for an empty tensor there
        torch.empty(0, device=target)
    except (RuntimeError, AssertionError, NotImplementedError) as error:
        raise ValueError(f"{name} must be an available device, got {device!r}: {error}") from error
    return target


def check_generator(generator: object) -> torch.Generator | None:
    """``generator`` if it is None or a ``torch.Generator``, else raise ``ValueError``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return generator


def check_threshold(threshold: object) -> float:
    """A selection threshold as a float: any finite real number."""
    return check_real("threshold", threshold)


def check_memory(
    memory_poses: object, query_pose: object, valid: object
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate ``(B, M, P)`` poses, ``(B, P)`` query and ``(B, M)`` mask; zero invalid slots.

    Returns:
        The poses with invalid slots zeroed, the query in the poses' device and dtype, and the
        ``(B, M)`` bool mask (all True when ``valid`` is None) on the poses' device.
    """
    poses = check_shape("memory_poses", memory_poses, [("B", None), ("M", None), ("P", None)])
    check_data("memory_poses", poses)
    b, m, p = poses.shape
    if p not in POSE_DIMS:
        raise ValueError(
            f"memory_poses must have pose dimension 3 (x, y, yaw) or 5 (x, y, z, pitch, yaw), "
            f"got shape {tuple(poses.shape)}"
        )
    if m < 1:
        raise ValueError(f"memory_poses must hold at least one slot (M >= 1), got M={m}")
    if not poses.is_floating_point():
        raise ValueError(f"memory_poses must have a floating-point dtype, got {poses.dtype}")
    query = check_data("query_pose", check_shape("query_pose", query_pose, [("B", b), ("P", p)]))
    if not query.is_floating_point():
        raise ValueError(f"query_pose must have a floating-point dtype, got {query.dtype}")
    if not bool(torch.isfinite(query).all()):
        raise ValueError("query_pose must be finite, got non-finite values (NaN or inf)")
    mask = check_valid(valid, b, m, poses.device)
    if not bool((torch.isfinite(poses).all(-1) | ~mask).all()):
        raise ValueError("memory_poses must be finite in valid slots, got NaN or inf")
    clean = torch.where(mask.unsqueeze(-1), poses, torch.zeros((), dtype=poses.dtype))
    return clean, query.to(device=poses.device, dtype=poses.dtype), mask


def check_valid(valid: object, b: int, m: int, device: torch.device) -> Tensor:
    """``(B, M)`` bool slot mask on ``device``; all True when ``valid`` is None."""
    if valid is None:
        return torch.ones(b, m, dtype=torch.bool, device=device)
    mask = check_data("valid", check_shape("valid", valid, [("B", b), ("M", m)]))
    if mask.dtype != torch.bool:
        raise ValueError(f"valid must have dtype torch.bool, got {mask.dtype}")
    return mask.to(device)


def check_steps(name: str, steps: object, b: int, m: int) -> Tensor:
    """Validate ``(B, M)`` integer steps (timestamps) and return them as a tensor."""
    tensor = check_data(name, check_shape(name, steps, [("B", b), ("M", m)]))
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {tensor.dtype}")
    return tensor
