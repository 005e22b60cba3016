"""Checks of a pretrained directory's ``config.json`` before any model is built.

Every field is checked for its JSON type and range (a bool must be ``true``/``false``, an int
not a bool nor a float, a string one of its allowed values), naming the field, the expected and
the received value. The architecture the fields describe is then compared with the shapes in the
weights file's header (read without reading any tensor data), so a config that contradicts the
weights fails in milliseconds instead of after building the model it describes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from ..memory import STRATEGIES, WRITE_POLICIES
from ..models.hybrid import POSE_ENCODINGS
from .errors import CheckpointError
from .infer import ARCHITECTURE_KEYS, infer_cdit_config, infer_memory_config

Check = Callable[[object], str | None]
"""A field check: None when the value is valid, else what was expected."""


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: object) -> float | None:
    """``value`` as a float when it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _positive_int(value: object) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return None if ok else "a positive integer"


def _optional_positive_int(value: object) -> str | None:
    return None if value is None else _positive_int(value) and "a positive integer or null"


def _flag(value: object) -> str | None:
    return None if isinstance(value, bool) else "true or false (a JSON boolean)"


def _number(low: float, high: float | None, *, open_low: bool = False) -> Check:
    def check(value: object) -> str | None:
        number = _real(value)
        ok = number is not None and (number > low if open_low else number >= low)
        ok = ok and (high is None or (number is not None and number <= high))
        bound = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high else "")
        return None if ok else f"a finite number {bound}"

    return check


def _one_of(options: tuple[str, ...] | frozenset[str] | Mapping[str, Any]) -> Check:
    names = sorted(options)

    def check(value: object) -> str | None:
        return None if isinstance(value, str) and value in names else f"one of {names}"

    return check


def _layers(value: object) -> str | None:
    if value is None or (isinstance(value, list) and all(_integer(i) for i in value)):
        return None
    return "a list of layer indices (integers) or null"


def _fov(value: object) -> str | None:
    number = _real(value)
    ok = number is not None and 0.0 < number < math.pi
    return None if ok else "a number of radians in (0, pi)"


FIELD_CHECKS: dict[str, Check] = {
    "input_size": _positive_int,
    "context_size": _positive_int,
    "patch_size": _positive_int,
    "in_channels": _positive_int,
    "hidden_size": _positive_int,
    "depth": _positive_int,
    "num_heads": _positive_int,
    "mlp_ratio": _number(0.0, None, open_low=True),
    "learn_sigma": _flag,
    "memory_enabled": _flag,
    "memory_layers": _layers,
    "memory_buffer_size": _positive_int,
    "memory_write_policy": _one_of(WRITE_POLICIES),
    "memory_top_k": _positive_int,
    "memory_activation_threshold": _number(0.0, None),
    "spatial_similarity_threshold": _number(0.0, 1.0),
    "memory_retrieval_scale": _number(0.0, None, open_low=True),
    "retrieval": _one_of(STRATEGIES),
    "memory_patch_size": _optional_positive_int,
    "memory_dim": _optional_positive_int,
    "memory_time_embedding": _flag,
    "memory_pose_encoding": _one_of(POSE_ENCODINGS),
    "camera_fov": _fov,
    "memory_ray_alignment": _flag,
}
"""The check of each constructor argument that ``config.json`` may hold."""


def _check_like_default(default: object) -> Check | None:
    """A type check for a constructor argument without an entry in :data:`FIELD_CHECKS`,
    from its default value's type (None when the default says nothing)."""
    if isinstance(default, bool):
        return _flag
    if isinstance(default, int):
        return lambda v: None if _integer(v) else "an integer"
    if isinstance(default, float):
        return lambda v: None if _real(v) is not None else "a finite number"
    if isinstance(default, str):
        return lambda v: None if isinstance(v, str) else "a string"
    return None


def _parameters(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    return {
        name: param
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    }


def validate_config(
    config: Mapping[str, Any], cls: type[nn.Module], config_path: Path
) -> dict[str, Any]:
    """The constructor arguments of ``cls`` in ``config``, each checked for type and range.

    Raises:
        CheckpointError: naming the first bad field, the expected and the received value, or
            a field that ``cls`` does not accept.
    """
    parameters = _parameters(cls)
    unknown = [name for name in config if name not in parameters]
    if unknown:
        raise CheckpointError(
            f"{config_path}: unknown field {unknown[0]!r} for {cls.__name__} (accepted: "
            f"{', '.join(parameters)})"
        )
    for name, value in config.items():
        check = FIELD_CHECKS.get(name) or _check_like_default(parameters[name].default)
        expected = None if check is None else check(value)
        if expected is not None:
            raise CheckpointError(
                f"{config_path}: field {name!r} must be {expected}, got {value!r} "
                f"({type(value).__name__})"
            )
    depth = config.get("depth", parameters["depth"].default if "depth" in parameters else None)
    layers = config.get("memory_layers")
    if isinstance(layers, list) and _integer(depth):
        outside = [i for i in layers if not 0 <= i < depth]
        if outside or len(set(layers)) != len(layers):
            raise CheckpointError(
                f"{config_path}: field 'memory_layers' must be distinct layer indices in "
                f"[0, {depth - 1}] (depth {depth}), got {layers!r}"
            )
    return dict(config)


def header_shapes(weights_path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file as ``meta`` tensors of their shapes and dtypes, read
    from the file's header only.

    Raises:
        CheckpointError: when the header cannot be read.
    """
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118
            return {
                key: torch.empty(
                    tuple(piece.get_shape()), dtype=_DTYPES.get(piece.get_dtype()), device="meta"
                )
                for key, piece in slices.items()
            }
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{weights_path}: not a readable safetensors file (corrupt or truncated?): {exc}"
        ) from exc


_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

_SHAPE_FIELDS = ("memory_layers", "memory_dim", "memory_patch_size")
_MEMORY_FIELDS = (
    "memory_layers",
    "memory_dim",
    "memory_patch_size",
    "memory_time_embedding",
    "memory_pose_encoding",
    "memory_ray_alignment",
)


def check_config_fits_weights(
    config: Mapping[str, Any], shapes: Mapping[str, Tensor], stored_class: str, config_path: Path
) -> None:
    """Compare the architecture in ``config`` with the one the weights' shapes show.

    Raises:
        CheckpointError: naming the field, its value and what the weights hold.
    """
    weights = infer_cdit_config(shapes)
    for key in ARCHITECTURE_KEYS:
        if key in config and config[key] != weights[key]:
            raise CheckpointError(
                f"{config_path}: field {key!r} is {config[key]!r}, but the weights "
                f"({config_path.parent.name}/model.safetensors) have {key} {weights[key]!r}"
            )
    if stored_class != "HybridCDiT":
        return
    memory = infer_memory_config(shapes)
    enabled = config.get("memory_enabled", True)
    if (enabled is not False and config.get("memory_layers") != []) != bool(memory):
        raise CheckpointError(
            f"{config_path}: field 'memory_enabled' is {enabled!r}, but the weights "
            f"{'have' if memory else 'have no'} memory parameters"
        )
    if not memory:
        return
    for key in _MEMORY_FIELDS:
        value = config.get(key)
        # the memory options (time embedding, pose encoding, ray alignment) add parameters
        # that start function-preserving over weights without them: only shapes must agree
        if key not in _SHAPE_FIELDS:
            continue
        if key in memory and value is not None and value != memory[key]:
            raise CheckpointError(
                f"{config_path}: field {key!r} is {value!r}, but the weights have "
                f"{key} {memory[key]!r}"
            )
