"""``MemoryReader``: what turns a :class:`MemoryContext` into a HybridCDiT's memory-layer inputs.

Memory tokens (patch embedding, memory position, relative pose, age and view rays), the key mask,
the view-ray distances of ray alignment, the per-sample activation, and the cache of all of them
on the context across denoising steps. The parameters stay registered on the model under their
``memory_*`` names; the reader looks them up on the model at each call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import memory_key_mask
from ..blocks import MemoryInputs
from ..memory import (
    MemoryContext,
    alignment_softening,
    patch_directions,
    plucker_rays,
    relative_pose,
    to_pose5,
)

if TYPE_CHECKING:
    from .hybrid import HybridCDiT

_TOKEN_EMBEDDERS = ("memory_time_embedder.", "memory_ray_embedder.")


class MemoryReader:
    """Reads memory for ``model``: a view of its memory options and token parameters.

    Everything it computes for a context without gradients is cached on that context (keyed by
    the model), so a denoising loop that shares the context computes it once; the cached entries
    are keyed by the versions of the parameters and the autocast state they were made from.
    """

    def __init__(self, model: HybridCDiT) -> None:
        self.model = model

    @property
    def grid_side(self) -> int:
        """``G``: memory tokens per side of a frame."""
        return self.model.input_size // self.model.memory_patch_size

    # ------------------------------------------------------------------------ activation

    def activation(self, memory: MemoryContext) -> Tensor:
        """Per-sample activation score ``(N,)``: the best valid retrieval score, 0 with none
        (slots of unknown pose, ``ray_std`` inf, are not valid)."""
        memory = memory.with_known_poses()
        best = torch.where(memory.mask, memory.scores, torch.zeros_like(memory.scores))
        return best.amax(dim=1)

    def active_samples(self, memory: MemoryContext) -> Tensor:
        """``(N,)`` bool: samples with a valid slot and ``activation >= threshold``."""
        memory = memory.with_known_poses()
        valid = memory.mask.any(dim=1)
        return valid & (self.activation(memory) >= self.model.memory_activation_threshold)

    # ---------------------------------------------------------------------------- tokens

    def memory_tokens(self, memory: MemoryContext) -> tuple[Tensor, Tensor]:
        """Layer-normed memory tokens ``(N, k*M, D)`` and their key mask ``(N, k*M)``."""
        model = self.model
        n, k = memory.mask.shape
        keep = memory.mask[:, :, None, None, None]
        frames = torch.where(keep, memory.frames, torch.zeros_like(memory.frames))
        tokens = self._patch_embedder()(frames.flatten(0, 1)) + model.memory_pos_embed
        poses, query = self.slot_poses(memory)
        with _no_autocast(poses):
            rel = relative_pose(poses, query).float()
        tokens = tokens.unflatten(0, (n, k)) + model.memory_pose_embedder(rel)[:, :, None]
        tokens = self._add_age(tokens, memory)
        tokens = self._add_rays(tokens, poses, query)
        normed = F.layer_norm(tokens.flatten(1, 2), (model.hidden_size,), eps=1e-6)
        return normed, memory_key_mask(memory.mask, model.memory_tokens_per_frame)

    def _patch_embedder(self) -> nn.Module:
        model = self.model
        return model.memory_embedder if model.memory_ratio > 1 else model.x_embedder

    @staticmethod
    def slot_poses(memory: MemoryContext) -> tuple[Tensor, Tensor]:
        """5-D slot poses ``(N, k, 5)`` with masked slots put at the query pose, and the query
        pose ``(N, 1, 5)``, in :func:`geometry_dtype` (float32, or float64 for float64 poses)."""
        dtype = geometry_dtype(memory.poses.dtype)
        query = to_pose5(memory.query_pose.to(dtype))[:, None]
        poses = to_pose5(memory.poses.to(dtype))
        return torch.where(memory.mask[..., None], poses, query), query

    def _add_age(self, tokens: Tensor, memory: MemoryContext) -> Tensor:
        """``tokens (N, k, M, D)`` plus, with ``memory_time_embedding``, each frame's age
        embedding (0 for masked slots; nothing when the context carries no time)."""
        model = self.model
        if not model.memory_time_embedding:
            return tokens
        n, k = memory.mask.shape
        ages = memory.ages
        if ages is not None:
            ages = torch.where(memory.mask, ages.to(tokens.device), torch.zeros_like(ages))
            age: Tensor = model.memory_time_embedder(ages.flatten()).unflatten(0, (n, k))
            return tokens + age[:, :, None].to(tokens.dtype)
        if model.training and torch.is_grad_enabled():
            # Unused this step: keep the parameters in the graph for DDP (adds exactly 0).
            params = model.memory_time_embedder.parameters()
            return tokens + sum((p.sum() for p in params), torch.zeros(())) * 0.0
        return tokens

    def _add_rays(self, tokens: Tensor, poses: Tensor, query: Tensor) -> Tensor:
        """``tokens (N, k, M, D)`` plus, with ``memory_pose_encoding="rays"``, the embedding of
        each token's Plücker ray in the query camera's frame; ``poses (N, k, 5)``, ``query
        (N, 1, 5)`` from :meth:`slot_poses`."""
        model = self.model
        if model.memory_pose_encoding != "rays":
            return tokens
        with _no_autocast(poses):
            rays = plucker_rays(poses, query, self.grid_side, model.camera_fov).float()
        embedded: Tensor = model.memory_ray_embedder(rays)
        return tokens + embedded.to(tokens.dtype)

    # ------------------------------------------------------------------------------ rays

    def ray_distance(self, memory: MemoryContext) -> Tensor:
        """``(N, G*G, k*G*G)`` float32 ray distances ``(1 - cos a) / (1 - cos(camera_fov / G))``
        between the view ray of each query cell (``G x G`` memory-grid cells of the query
        camera, row-major) and that of each memory token, ``a`` their angle, times
        :func:`~hybrid_cdit.memory.alignment_softening` of the slot's ``ray_std`` when the
        context has one. The one place the distance is defined; the attention bias is
        ``-strength * ray_distance``."""
        side, fov = self.grid_side, self.model.camera_fov
        poses, query = self.slot_poses(memory)
        with _no_autocast(poses):
            memory_rays = plucker_rays(poses, query, side, fov)[..., :3].float()
            query_rays = patch_directions(side, fov, device=poses.device)
            cos = torch.einsum("qc,nkmc->nqkm", query_rays, memory_rays).flatten(2)
        distance = (1.0 - cos) / (1.0 - math.cos(fov / side))
        if memory.ray_std is None:
            return distance
        soften = alignment_softening(memory.ray_std.float(), fov / side)
        n, q, _ = distance.shape
        k = memory.num_slots
        return (distance.view(n, q, k, -1) * soften[:, None, :, None]).view(n, q, -1)

    # ----------------------------------------------------------------- inputs and caching

    def token_version(self) -> tuple[int, ...]:
        """In-place versions of every parameter the memory tokens are made from."""
        model = self.model
        params = [
            *self._patch_embedder().parameters(),
            model.memory_pos_embed,
            *model.memory_pose_embedder.parameters(),
            *(p for name, p in model.named_parameters() if name.startswith(_TOKEN_EMBEDDERS)),
        ]
        return tuple(p._version for p in params)

    def inputs(self, memory: MemoryContext, x: Tensor) -> MemoryInputs | None:
        """The :class:`MemoryInputs` of one forward on ``x (N, C, H, W)``, or None when, in
        eager evaluation, no sample is active. Without gradients, the context moved to ``x``'s
        device and dtype, the tokens, key mask and ray distances are cached on ``memory``."""
        model = self.model
        caching = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        memory = self._placed(memory, x, caching)
        active = self.active_samples(memory)
        if not model.training and not torch.compiler.is_compiling() and not bool(active.any()):
            return None
        gate = active.to(x.dtype)
        if not caching:
            tokens, key_mask, rays = self.token_inputs(memory)
            return MemoryInputs(tokens, key_mask, gate, ray_distance=rays)
        # Tokens and keys/values computed under autocast differ from those computed without:
        # the autocast state is part of what the cached entries were made from.
        version = (*self.token_version(), *_autocast_state(x))
        entry = memory.cached(model, "tokens")
        if entry is None or entry[0] != version:
            entry = (version, *self.token_inputs(memory))
            memory.store(model, "tokens", entry)
        return MemoryInputs(entry[1], entry[2], gate, memory, version, entry[3])

    def _placed(self, memory: MemoryContext, x: Tensor, caching: bool) -> MemoryContext:
        """``memory`` with frames on ``x``'s device and dtype, geometry in
        :func:`geometry_dtype` and slots of unknown pose masked (the moved copy cached on
        ``memory`` when ``caching``)."""
        geometry = geometry_dtype(memory.poses.dtype)
        unknown = memory.ray_std is not None and bool(torch.isinf(memory.ray_std).any())
        if memory.is_placed(x.device, x.dtype, geometry) and not unknown:
            return memory
        key = ("moved", x.device, x.dtype, geometry)
        moved: MemoryContext | None = memory.cached(self.model, key) if caching else None
        if moved is None:
            moved = memory.to(x.device, x.dtype, geometry_dtype=geometry).with_known_poses()
            if caching:
                memory.store(self.model, key, moved)
        return moved

    def token_inputs(self, memory: MemoryContext) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`memory_tokens` and, with ``memory_ray_alignment``, :meth:`ray_distance`."""
        tokens, key_mask = self.memory_tokens(memory)
        rays = self.ray_distance(memory) if self.model.memory_ray_alignment else None
        return tokens, key_mask, rays


def geometry_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype memory geometry (poses, relative poses, rays, ray distances, scores) is computed
    in for poses of ``dtype``: float64 for float64, float32 for everything else, whatever the
    model's dtype (half precision would quantise positions of hundreds of units to whole units)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_state(like: Tensor) -> tuple[bool, torch.dtype]:
    """Whether autocast is on for ``like``'s device type, and its dtype."""
    kind = like.device.type
    return torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)


def _no_autocast(like: Tensor) -> torch.autocast:
    """A context in which ``torch.autocast`` is off for ``like``'s device type."""
    return torch.autocast(like.device.type, enabled=False)
