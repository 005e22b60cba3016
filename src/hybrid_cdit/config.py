"""``HybridCDiTConfig``: the seed's NWM-style YAML keys, validated, and ``build_model``.

A config file is an NWM training config (``model: CDiT-XL/2``, ``context_size``, ``image_size``,
datasets, learning rate...) with the memory keys added::

    model: CDiT-L/2
    context_size: 4
    image_size: 224            # pixels; the latent input_size is image_size // 8
    use_hybrid_model: true
    memory_enabled: true
    memory_buffer_size: 50
    memory_write_policy: coverage   # or lru (the default)
    memory_layers: [16, 18, 20, 22]
    memory_activation_threshold: 0.3
    spatial_similarity_threshold: 0.7
    memory_retrieval_scale: 10.0    # pose units at which a distance/pose score is 1/e

Keys this library does not use (NWM's training keys) are ignored; an unknown key that looks like
a misspelt memory key warns with the closest valid key.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .memory import STRATEGIES, WRITE_POLICIES
from .memory._checks import check_real
from .models.hybrid import DEFAULT_CAMERA_FOV, POSE_ENCODINGS
from .registry import VARIANTS, create_model

LATENT_DOWNSAMPLE = 8
"""Pixels per latent cell of NWM's Stable Diffusion VAE: ``input_size = image_size // 8``."""

FAMILIES = ("CDiT", "HybridCDiT")
"""Model families a ``model`` entry may name."""

_MEMORY_HINTS = ("memory", "memor", "retriev", "spatial", "similarity", "activation", "hybrid")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _number(name: str, value: object, low: float, high: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not number >= low or (high is not None and number > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")
    return number


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def parse_model_name(name: object) -> tuple[str, str]:
    """``"CDiT-L/2"`` -> ``("CDiT", "L/2")``; raises ``ValueError`` listing valid names."""
    valid = [f"{family}-{variant}" for family in FAMILIES for variant in VARIANTS]
    if isinstance(name, str) and name in valid:
        family, variant = name.split("-", 1)
        return family, variant
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise ValueError(f"model must be one of {', '.join(valid)}, got {name!r}{hint}")


@dataclass(frozen=True)
class HybridCDiTConfig:
    """Model settings of an NWM-style config file, validated on construction.

    Attributes:
        model: NWM model name, ``"CDiT-XL/2"`` ... ``"CDiT-S/2"`` (``"HybridCDiT-..."`` is
            accepted too); it fixes depth, width, heads and patch size.
        context_size: context frames; None keeps the variant's default.
        image_size: image side in pixels; the latent ``input_size`` is ``image_size // 8``.
        use_hybrid_model: build a ``HybridCDiT``; False builds NWM's plain ``CDiT``.
        memory_enabled: give the hybrid its memory branch.
        memory_buffer_size: frames the model's own memory buffer keeps per sample.
        memory_write_policy: write policy of that buffer, ``"lru"`` or ``"coverage"``.
        memory_layers: layers with memory attention; None takes every second layer of the
            second half.
        memory_activation_threshold: minimum activation for a sample to use memory.
        spatial_similarity_threshold: retrieval score under which a memory frame is masked.
        memory_retrieval_scale: distance at which a ``"distance"`` or ``"pose"`` retrieval
            score falls to ``1/e``, in the units of the poses; a finite number > 0, unused by
            ``"fov"``.
        memory_top_k: frames retrieved per prediction.
        retrieval: retrieval strategy, ``"distance"``, ``"fov"`` or ``"pose"``.
        memory_patch_size: latent patch side of one memory token; None lets the model choose.
        memory_dim: width of the memory attention; None lets the model choose.
        memory_time_embedding: embed each memory frame's age (query step minus its step).
        memory_pose_encoding: ``"frame"`` (one relative-pose embedding per memory frame) or
            ``"rays"`` (also a Plücker-ray embedding per memory token).
        camera_fov: horizontal field of view of the camera in radians, in ``(0, pi)``.
        memory_ray_alignment: bias memory attention towards memory tokens whose view rays
            match the query cell's (see :class:`~hybrid_cdit.HybridCDiT`).

    Raises:
        ValueError: naming the field, the expected and the received value.
    """

    model: str = "CDiT-XL/2"
    context_size: int | None = None
    image_size: int = 224
    use_hybrid_model: bool = True
    memory_enabled: bool = True
    memory_buffer_size: int = 50
    memory_write_policy: str = "lru"
    memory_layers: tuple[int, ...] | None = None
    memory_activation_threshold: float = 0.3
    spatial_similarity_threshold: float = 0.7
    memory_retrieval_scale: float = 10.0
    memory_top_k: int = 8
    retrieval: str = "distance"
    memory_patch_size: int | None = None
    memory_dim: int | None = None
    memory_time_embedding: bool = False
    memory_pose_encoding: str = "rays"
    camera_fov: float = DEFAULT_CAMERA_FOV
    memory_ray_alignment: bool = True

    def __post_init__(self) -> None:
        _, variant = parse_model_name(self.model)
        spec = VARIANTS[variant]
        if self.context_size is not None:
            _positive_int("context_size", self.context_size)
        _positive_int("image_size", self.image_size)
        latent, patch = self.image_size // LATENT_DOWNSAMPLE, spec["patch_size"]
        if self.image_size % LATENT_DOWNSAMPLE or latent % patch:
            raise ValueError(
                f"image_size must be a multiple of {LATENT_DOWNSAMPLE * patch} (the latent is "
                f"image_size // {LATENT_DOWNSAMPLE}, patched by {patch}), got {self.image_size}"
            )
        for name in (
            "use_hybrid_model",
            "memory_enabled",
            "memory_time_embedding",
            "memory_ray_alignment",
        ):
            _flag(name, getattr(self, name))
        _positive_int("memory_buffer_size", self.memory_buffer_size)
        if self.memory_write_policy not in WRITE_POLICIES:
            raise ValueError(
                f"memory_write_policy must be one of {', '.join(WRITE_POLICIES)}, "
                f"got {self.memory_write_policy!r}"
            )
        _positive_int("memory_top_k", self.memory_top_k)
        object.__setattr__(
            self,
            "memory_activation_threshold",
            _number("memory_activation_threshold", self.memory_activation_threshold, 0.0, None),
        )
        object.__setattr__(
            self,
            "spatial_similarity_threshold",
            _number("spatial_similarity_threshold", self.spatial_similarity_threshold, 0.0, 1.0),
        )
        object.__setattr__(
            self,
            "memory_retrieval_scale",
            check_real("memory_retrieval_scale", self.memory_retrieval_scale, positive=True),
        )
        if self.retrieval not in STRATEGIES:
            raise ValueError(
                f"retrieval must be one of {', '.join(STRATEGIES)}, got {self.retrieval!r}"
            )
        if self.memory_pose_encoding not in POSE_ENCODINGS:
            raise ValueError(
                f"memory_pose_encoding must be one of {', '.join(POSE_ENCODINGS)}, "
                f"got {self.memory_pose_encoding!r}"
            )
        fov = _number("camera_fov", self.camera_fov, 0.0, math.pi)
        if not 0.0 < fov < math.pi:
            raise ValueError(f"camera_fov must be a number of radians in (0, pi), got {fov!r}")
        object.__setattr__(self, "camera_fov", fov)
        object.__setattr__(self, "memory_layers", self._checked_layers(spec["depth"]))
        size = self.memory_patch_size
        if size is not None and (
            isinstance(size, bool)
            or not isinstance(size, int)
            or size < patch
            or size % patch
            or latent % size
        ):
            raise ValueError(
                f"memory_patch_size must be a multiple of the patch size ({patch}) that divides "
                f"the latent size ({latent}), or null, got {size!r}"
            )
        dim = self.memory_dim
        if dim is not None and (
            isinstance(dim, bool) or not isinstance(dim, int) or dim < 1 or dim % spec["num_heads"]
        ):
            raise ValueError(
                f"memory_dim must be a positive multiple of num_heads ({spec['num_heads']}), "
                f"or null, got {dim!r}"
            )

    def _checked_layers(self, depth: int) -> tuple[int, ...] | None:
        layers: object = self.memory_layers
        if layers is None:
            return None
        if isinstance(layers, str | bytes) or not isinstance(layers, Sequence):
            raise ValueError(f"memory_layers must be a list of layer indices, got {layers!r}")
        chosen = list(layers)
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth for i in chosen):
            raise ValueError(
                f"memory_layers must be layer indices in [0, {depth - 1}] ({self.model} has "
                f"depth {depth}), got {chosen}"
            )
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"memory_layers must not repeat a layer, got {chosen}")
        return tuple(chosen)

    @property
    def variant(self) -> str:
        """The NWM variant, ``"L/2"``..."""
        return parse_model_name(self.model)[1]

    @property
    def input_size(self) -> int:
        """Latent side: ``image_size // 8``."""
        return self.image_size // LATENT_DOWNSAMPLE

    @property
    def model_name(self) -> str:
        """Registry name of the model to build: ``"HybridCDiT-L/2"`` or ``"CDiT-L/2"``."""
        family = "HybridCDiT" if self.use_hybrid_model else "CDiT"
        return f"{family}-{self.variant}"

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the registry factory of :attr:`model_name`."""
        kwargs: dict[str, Any] = {"input_size": self.input_size}
        if self.context_size is not None:
            kwargs["context_size"] = self.context_size
        if self.use_hybrid_model:
            kwargs.update(
                memory_enabled=self.memory_enabled,
                memory_layers=None if self.memory_layers is None else list(self.memory_layers),
                memory_buffer_size=self.memory_buffer_size,
                memory_write_policy=self.memory_write_policy,
                memory_top_k=self.memory_top_k,
                memory_activation_threshold=self.memory_activation_threshold,
                spatial_similarity_threshold=self.spatial_similarity_threshold,
                memory_retrieval_scale=self.memory_retrieval_scale,
                retrieval=self.retrieval,
                memory_patch_size=self.memory_patch_size,
                memory_dim=self.memory_dim,
                memory_time_embedding=self.memory_time_embedding,
                memory_pose_encoding=self.memory_pose_encoding,
                camera_fov=self.camera_fov,
                memory_ray_alignment=self.memory_ray_alignment,
            )
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain YAML/JSON data."""
        data = asdict(self)
        if self.memory_layers is not None:
            data["memory_layers"] = list(self.memory_layers)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HybridCDiTConfig:
        """Read the model settings of an NWM-style config mapping.

        Unknown keys are ignored; one that looks like a misspelt setting (``memory_layer``)
        warns with the closest valid key (``UserWarning``).

        Raises:
            ValueError: when ``data`` is not a mapping or a setting is invalid.
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"config must be a mapping of keys to values, got {type(data).__name__}"
            )
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                _warn_if_misspelt(str(key), names)
        values = {key: data[key] for key in names if key in data}
        if isinstance(values.get("memory_layers"), list):
            values["memory_layers"] = tuple(values["memory_layers"])
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | PathLike[str]) -> HybridCDiTConfig:
        """Read a YAML config file (see the module docstring).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not YAML, not a mapping, or holds an invalid setting; the
                message names the file.
        """
        file = Path(path)
        text = file.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{file}: not valid YAML: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{file}: expected a YAML mapping of config keys, got {type(data).__name__}"
            )
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{file}: {exc}") from exc


def _warn_if_misspelt(key: str, names: list[str]) -> None:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.8)
    memory_like = any(hint in key.lower() for hint in _MEMORY_HINTS)
    if not close and memory_like:
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if close or memory_like:
        hint = f"; did you mean {close[0]!r}?" if close else ""
        warnings.warn(f"unknown config key {key!r} is ignored{hint}", UserWarning, stacklevel=3)


def build_model(config: HybridCDiTConfig | Mapping[str, Any]) -> nn.Module:
    """Build the model a config describes: a ``HybridCDiT`` (``HybridCDiT-L/2``...) or, with
    ``use_hybrid_model: false``, NWM's plain ``CDiT``.

    Build under ``torch.device("meta")`` to check a large configuration without memory.
    """
    if not isinstance(config, HybridCDiTConfig):
        config = HybridCDiTConfig.from_dict(config)
    return create_model(config.model_name, **config.model_kwargs())
