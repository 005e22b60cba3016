"""Checks of a checkpoint's tensor values and dtypes, tensor by tensor.

Non-finite weights (NaN, inf) are refused by default, naming the tensor; floating-point
parameters given integer (or boolean) tensors are refused naming the tensor and its dtype.
A tensor is first summed (one pass, no temporary tensor): a finite sum proves every value
finite, since a NaN or an infinity makes any sum NaN or infinite. Only a tensor whose sum is
not finite (non-finite values, or finite ones whose sum overflows) is scanned value by value,
in chunks, so a check never allocates more than a few megabytes on top of the tensor itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from .errors import CheckpointError

_CHUNK = 1 << 22
"""Elements checked at once: a 4 MB boolean mask at most."""


def nonfinite_count(tensor: Tensor) -> int:
    """Number of NaN or infinite values of a floating-point tensor; 0 for other dtypes."""
    if _sums_to_finite(tensor):
        return 0
    total = 0
    for chunk in _chunks(tensor):
        total += int((~torch.isfinite(chunk)).sum())
    return total


def is_finite(tensor: Tensor) -> bool:
    """True when a tensor holds no NaN or infinite value (always for non-float dtypes)."""
    if _sums_to_finite(tensor):
        return True
    return all(bool(torch.isfinite(chunk).all()) for chunk in _chunks(tensor))


def _sums_to_finite(tensor: Tensor) -> bool:
    """True when the tensor cannot hold NaN or inf: not floating point, on ``meta``, or its
    sum is finite (about 0.1 s per GB on one CPU thread)."""
    if not tensor.is_floating_point() or tensor.device.type == "meta":
        return True
    return math.isfinite(float(tensor.sum()))


def _chunks(tensor: Tensor) -> tuple[Tensor, ...]:
    """Views of the flattened tensor, at most :data:`_CHUNK` elements each."""
    return torch.split(tensor.reshape(-1), _CHUNK)


def nonfinite_error(origin: str, key: str, tensor: Tensor) -> CheckpointError:
    """The error for a tensor with non-finite values: its name, how many, how to opt out."""
    count = nonfinite_count(tensor)
    return CheckpointError(
        f"{origin}: tensor {key} holds {count} non-finite values (NaN or inf) out of "
        f"{tensor.numel()}; refusing to load it (pass allow_nonfinite=True to load it anyway; "
        "CLI: --allow-nonfinite)"
    )


def check_finite_tensor(origin: str, key: str, tensor: Tensor) -> None:
    """Raise :class:`CheckpointError` naming ``key`` when ``tensor`` holds NaN or inf."""
    if not is_finite(tensor):
        raise nonfinite_error(origin, key, tensor)


def check_dtypes(
    origin: str, state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> None:
    """Refuse checkpoint tensors that are not floating point where the model's are.

    Args:
        origin: the file or state dict, for the message.
        state_dict: the checkpoint's tensors (metadata only is read).
        expected: the model's state dict (a ``meta`` model works).

    Raises:
        CheckpointError: naming the first such tensor, its dtype and the model's.
    """
    wrong = [
        key
        for key, target in expected.items()
        if key in state_dict
        and target.is_floating_point()
        and not state_dict[key].is_floating_point()
    ]
    if wrong:
        key = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"{origin}: tensor {key} has dtype {state_dict[key].dtype}, expected a floating-point "
            f"dtype (the model's is {expected[key].dtype}){more}"
        )


def scan_nonfinite(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """``{name: number of NaN/inf values}`` of the tensors that hold any."""
    counts = {key: nonfinite_count(tensor) for key, tensor in state_dict.items()}
    return {key: count for key, count in counts.items() if count}
