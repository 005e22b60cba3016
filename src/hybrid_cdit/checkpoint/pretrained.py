"""``save_pretrained`` / ``from_pretrained``: a directory with ``config.json`` and safetensors.

``config.json`` holds ``model_class`` and every ``get_config()`` argument; ``model.safetensors``
the full state dict (memory parameters included). The round trip is exact.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, overload

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..models.cdit import CDiT
from ..models.hybrid import HybridCDiT
from .errors import CheckpointError, CheckpointNotFoundError
from .files import WEIGHTS, WEIGHTS_NAME, PathArg
from .hub import HubOptions, resolve_hub_path
from .loading import load_state_dict_checked, model_config, unwrap_model
from .materialize import build_for_loading, check_device, check_dtype
from .pretrained_config import check_config_fits_weights, header_shapes, validate_config

CONFIG_NAME = "config.json"
"""Configuration file of a pretrained directory."""

MODEL_CLASSES: dict[str, type[nn.Module]] = {"CDiT": CDiT, "HybridCDiT": HybridCDiT}
"""Classes ``from_pretrained`` builds from the ``model_class`` field."""

_VERSION_FIELD = "hybrid_cdit_version"
_CLASS_FIELD = "model_class"

ModelT = TypeVar("ModelT", bound=nn.Module)


def _library_version() -> str | None:
    try:
        return metadata.version("hybrid-cdit")
    except metadata.PackageNotFoundError:
        return None


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_pretrained(model: nn.Module, directory: PathArg) -> Path:
    """Write ``model`` to ``directory`` as ``config.json`` + ``model.safetensors``.

    Args:
        model: a model with ``get_config()`` (``CDiT``, ``HybridCDiT``); wrappers such as
            ``DistributedDataParallel`` or ``torch.compile`` are unwrapped.
        directory: created if needed; existing files of the same names are replaced.

    Returns:
        The directory.

    Raises:
        ValueError: when the model has no ``get_config()`` or its config is not JSON data.
    """
    target = unwrap_model(model)
    config = model_config(target)
    if config is None:
        raise ValueError(
            f"model must have a get_config() method returning a dict (CDiT, HybridCDiT), "
            f"got {type(target).__name__}"
        )
    fields: dict[str, Any] = {_CLASS_FIELD: type(target).__name__, **config}
    version = _library_version()
    if version is not None:
        fields[_VERSION_FIELD] = version
    try:
        text = json.dumps(fields, indent=2) + "\n"
    except TypeError as exc:
        raise ValueError(f"model.get_config() must return JSON data, got {config!r}") from exc
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in target.state_dict().items()}
    _write_atomic(
        out / WEIGHTS_NAME,
        lambda p: save_file(tensors, str(p), metadata={"format": "pt"}),
    )
    _write_atomic(out / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    return out


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.exists():
        raise CheckpointNotFoundError(f"pretrained directory not found: {directory}")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: expected a save_pretrained directory, got a file")
    config_path = directory / CONFIG_NAME
    absent = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / n).is_file()]
    if absent:
        raise CheckpointError(
            f"{directory}: not a save_pretrained directory, missing {' and '.join(absent)}"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not a readable JSON config: {exc}") from exc
    if not isinstance(config, dict) or _CLASS_FIELD not in config:
        raise CheckpointError(
            f"{config_path}: expected a JSON object with a {_CLASS_FIELD!r} field, got {config!r}"
        )
    if not isinstance(config[_CLASS_FIELD], str):
        raise CheckpointError(
            f"{config_path}: field {_CLASS_FIELD!r} must be a class name (a string), got "
            f"{config[_CLASS_FIELD]!r}"
        )
    return config


def _choose_class(config_path: Path, stored: str, cls: type[nn.Module] | None) -> type[nn.Module]:
    known = MODEL_CLASSES.get(stored)
    if cls is None:
        if known is None:
            raise CheckpointError(
                f"{config_path}: unknown {_CLASS_FIELD} {stored!r} (known: "
                f"{', '.join(MODEL_CLASSES)}); pass cls= the class to build"
            )
        return known
    if cls.__name__ == stored or (known is not None and issubclass(cls, known)):
        return cls
    raise CheckpointError(
        f"{config_path}: the directory holds a {stored}, which cls={cls.__name__} cannot load"
        + (
            "; build a CDiT from to_cdit_state_dict(HybridCDiT.from_pretrained(...)) instead"
            if stored == "HybridCDiT"
            else ""
        )
    )


@overload
def from_pretrained(
    directory: PathArg,
    cls: None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    mmap: bool = False,
    allow_nonfinite: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: PathArg | None = None,
    local_files_only: bool = False,
) -> nn.Module: ...


@overload
def from_pretrained(
    directory: PathArg,
    cls: type[ModelT],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    mmap: bool = False,
    allow_nonfinite: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: PathArg | None = None,
    local_files_only: bool = False,
) -> ModelT: ...


def from_pretrained(
    directory: PathArg,
    cls: type[nn.Module] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    mmap: bool = False,
    allow_nonfinite: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: PathArg | None = None,
    local_files_only: bool = False,
) -> nn.Module:
    """Rebuild a model written by :func:`save_pretrained`, exactly.

    The model is built with its parameters on the ``meta`` device (no throw-away
    initialisation) and the memory-mapped safetensors tensors are assigned to it, each copied
    once (``mmap=False``) or not at all (``mmap=True``).

    Args:
        directory: the pretrained directory, or a model hub repository holding one,
            ``"hf-hub:ORG/REPO"`` (its ``config.json`` and ``model.safetensors`` come through
            the hub cache).
        cls: the class to build; None takes ``model_class`` from ``config.json``. A subclass of
            the stored class is accepted: ``HybridCDiT`` loads a ``CDiT`` directory with its
            memory parameters in their function-preserving state.
        device: device of the model: each tensor goes from the file straight to it (no CPU copy
            of the model); None for the CPU.
        dtype: floating-point dtype of the model's floating tensors (e.g. ``torch.bfloat16``),
            converted tensor by tensor; None keeps the file's.
        mmap: keep the tensors memory-mapped to ``model.safetensors`` (no copy; the file must
            stay in place and unchanged while the model lives; writes stay private). Ignored for
            tensors that ``dtype`` or ``device`` convert.
        allow_nonfinite: load tensors holding NaN or inf; False (default) refuses them, naming
            the tensor.
        revision, token, cache_dir, local_files_only: for ``hf-hub:`` names, see
            :class:`~hybrid_cdit.checkpoint.hub.HubOptions`.

    ``config.json`` is checked field by field (JSON type and range) and against the shapes in
    the weights file's header before any model is built.

    Raises:
        ValueError: for a ``dtype`` that is not a floating ``torch.dtype``, an invalid
            ``device``, or invalid hub options.
        CheckpointNotFoundError: the directory does not exist (or a hub file is not available).
        CheckpointAccessError: a gated or private hub repository without access.
        CheckpointError: missing or unreadable files, unknown or incompatible class, a
            ``config.json`` field of the wrong type or range or contradicting the weights,
            weights that do not fit the configuration, or non-finite weights.
    """
    dtype_, device_ = check_dtype(dtype), check_device(device)
    hub = HubOptions(
        revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only
    )
    root = resolve_hub_path(directory, hub, directory_files=(CONFIG_NAME, WEIGHTS_NAME))
    config = _read_config(root)
    stored = config.pop(_CLASS_FIELD)
    config.pop(_VERSION_FIELD, None)
    config_path, weights_path = root / CONFIG_NAME, root / WEIGHTS_NAME
    chosen = _choose_class(config_path, stored, cls)
    config = validate_config(config, chosen, config_path)
    check_config_fits_weights(config, header_shapes(weights_path), stored, config_path)
    # A plain copy is read with pread(2) straight into the model's tensors (no file pages
    # mapped); conversions and mmap=True read through a mapping, tensor by tensor.
    converts = dtype_ is not None or (device_ is not None and device_.type != "cpu")
    pread = not mmap and not converts
    try:
        state_dict = _load_safetensors(weights_path, pread=pread)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{weights_path}: not a readable safetensors file (corrupt or truncated?): {exc}"
        ) from exc
    try:
        model = build_for_loading(lambda: chosen(**config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{root / CONFIG_NAME}: cannot build {chosen.__name__}: {exc}"
        ) from exc
    load_state_dict_checked(
        model,
        state_dict,
        source=WEIGHTS,
        path=str(weights_path),
        mmap=mmap or pread,  # pread tensors are already the model's own copies
        dtype=dtype_,
        device=device_,
        mapped=not pread,
        allow_nonfinite=allow_nonfinite,
    )
    return model


def _load_safetensors(path: Path, *, pread: bool) -> dict[str, Tensor]:
    """The file's tensors: read into memory with ``pread`` where safetensors offers it (0.7+),
    else memory-mapped (nothing read until used)."""
    if pread:
        try:
            tensors: dict[str, Tensor] = load_file(path, device="cpu", backend="pread")
            return tensors
        except TypeError:  # an older safetensors without the backend option
            pass
    mapped: dict[str, Tensor] = load_file(path, device="cpu")
    return mapped
