"""Building models for loading without a throw-away initialisation, and filling them with
memory-mapped checkpoint tensors, copied once or not at all.

A model for loading is built with its parameters on the ``meta`` device (no memory, no random
initialisation; buffers, which are small and may not be in a state dict, are built for real).
The loaded tensors are then assigned to it (``load_state_dict(assign=True)``): either the
memory-mapped tensors themselves (``mmap=True``) or one copy of each, converted on the way to the
requested dtype and device. Parameters that the state dict lacks (a hybrid's memory branch loaded
from a CDiT checkpoint) are allocated afterwards and put in their initial state by the model.
"""

from __future__ import annotations

import ctypes
import mmap as _mmap
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .values import check_finite_tensor

DeviceArg = torch.device | str | None
"""A device, its name, or None for the CPU."""

ModuleT = TypeVar("ModuleT", bound=nn.Module)

_MADV_DONTNEED = 4
_PAGE = _mmap.PAGESIZE


def check_dtype(dtype: object) -> torch.dtype | None:
    """Return ``dtype`` if it is None or a floating ``torch.dtype``, else raise ``ValueError``."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype must be a floating torch.dtype (torch.float32, torch.bfloat16...) or None, "
            f"got {dtype!r}"
        )
    return dtype


def check_device(device: object) -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None), else raise ``ValueError``."""
    if device is None:
        return None
    if not isinstance(device, torch.device | str):
        raise ValueError(f"device must be a torch.device, a device name or None, got {device!r}")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be a valid torch device, got {device!r}: {exc}") from exc


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Within the block, parameters registered by module constructors live on the ``meta``
    device: constructing a model allocates and initialises no weights. Buffers stay real."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_for_loading(factory: Callable[[], ModuleT]) -> ModuleT:
    """``factory()`` with its parameters on the ``meta`` device (see :func:`parameters_on_meta`)."""
    with parameters_on_meta(), torch.random.fork_rng():
        return factory()


def release_pages(tensor: Tensor) -> None:
    """Drop the resident pages of a tensor that is a read-only view of a private or read-only
    file mapping: the data stays in the file and is read again if the tensor is used again.

    Only for tensors of mappings made by this package and never written to (a private
    mapping's written pages would be lost). A no-op off Linux.
    """
    if not sys.platform.startswith("linux") or tensor.device.type != "cpu":
        return
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes < _PAGE:
        return
    start = tensor.data_ptr()
    first = (start + _PAGE - 1) // _PAGE * _PAGE  # whole pages inside the tensor only
    last = (start + nbytes) // _PAGE * _PAGE
    if last > first:
        _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _LIBC


def materialize(
    state_dict: Mapping[str, Tensor],
    *,
    mmap: bool,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    mapped: bool = False,
    allow_nonfinite: bool = True,
    origin: str = "state dict",
) -> dict[str, Tensor]:
    """The tensors to assign to a model: converted to ``dtype`` (floating tensors only) and
    ``device``, each copied once unless ``mmap`` and no conversion is needed.

    Args:
        state_dict: the loaded tensors (memory-mapped when ``mapped``).
        mmap: keep tensors that need no conversion as they are (mapped to the file).
        dtype: floating-point dtype of the result, or None to keep the file's.
        device: device of the result, or None for the CPU.
        mapped: the tensors are views of a file mapping made for this load; their pages are
            released once copied, so the file's pages and the copy are never resident together.
        allow_nonfinite: False checks each result tensor as it is made (no extra copy) and
            raises :class:`CheckpointError` naming the first one holding NaN or inf.
        origin: the file or state dict, for that message.
    """
    target = device or torch.device("cpu")
    out: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        wanted = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        converts = wanted != tensor.dtype or tensor.device != target
        if mmap and not converts:
            out[key] = tensor
        else:
            out[key] = tensor.to(device=target, dtype=wanted, copy=True)
            if mapped and not mmap:
                release_pages(tensor)
        if not allow_nonfinite:
            check_finite_tensor(origin, key, out[key])
    return out


def assign_state_dict(
    model: nn.Module,
    tensors: Mapping[str, Tensor],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> list[str]:
    """Fill a model built by :func:`build_for_loading`: every parameter on ``meta`` that
    ``tensors`` lacks first gets uninitialised storage of ``dtype`` on ``device``, buffers move
    to ``device`` (floating ones to ``dtype``), then ``tensors`` are assigned with
    ``load_state_dict(assign=True)``. Returns the keys that got new storage.

    The model's load hooks see those keys as missing, as for ``load_state_dict``: a
    ``HybridCDiT`` puts its memory parameters in their initial state there, derived from the
    CDiT weights just assigned.
    """
    target = device or torch.device("cpu")
    fresh: list[str] = []
    for name, param in list(model.named_parameters()):
        if param.device.type != "meta" or name in tensors:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        kind = dtype if dtype is not None and param.is_floating_point() else param.dtype
        storage = torch.empty(param.shape, dtype=kind, device=target)
        setattr(owner, attr, nn.Parameter(storage, requires_grad=param.requires_grad))
        fresh.append(name)
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.device.type == "meta":
                raise CheckpointError(
                    f"buffer {name} of {type(module).__name__} is on the meta device and not in "
                    "the checkpoint: build the model with hybrid_cdit.checkpoint."
                    "build_for_loading(lambda: Model(...)), which keeps buffers real"
                )
            kind = dtype if dtype is not None and buffer.is_floating_point() else buffer.dtype
            module._buffers[name] = buffer.to(device=target, dtype=kind)
    model.load_state_dict(dict(tensors), strict=False, assign=True)
    return fresh
