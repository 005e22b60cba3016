"""``HybridCDiT``: NWM's CDiT with pose-indexed memory attention in its later layers."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers.patch_embed import PatchEmbed
from torch import Tensor, nn

from .._validation import check_finite, check_positive_int, check_shape
from ..blocks import HybridCDiTBlock, MemoryInputs
from ..embeddings import MemoryAgeEmbedder, RayEmbedder, RelativePoseEmbedder
from ..memory import (
    STRATEGIES,
    WRITE_POLICIES,
    MemoryBuffer,
    MemoryContext,
    check_write_policy,
)
from ..memory._checks import check_real
from .cdit import CDiT
from .memory_reader import MemoryReader, geometry_dtype
from .own_memory import OwnMemory

POSE_ENCODINGS: tuple[str, ...] = ("frame", "rays")
"""Values of ``memory_pose_encoding``."""

DEFAULT_CAMERA_FOV: float = math.pi / 2
"""Default ``camera_fov``: a 90-degree horizontal field of view."""


def is_memory_key(key: str) -> bool:
    """True for state-dict keys of memory-only parameters (no CDiT key contains ``memory``)."""
    return "memory" in key


def default_memory_layers(depth: int) -> list[int]:
    """Every second layer of the second half: ``[14, 16, ..., 26]`` for depth 28."""
    return list(range(depth // 2, depth, 2))


class HybridCDiT(CDiT):
    """A :class:`CDiT` whose later layers also attend to retrieved memory frames.

    The CDiT parameters keep NWM's names and shapes, so a CDiT checkpoint loads with only the
    memory parameters missing; those start function-preserving (zero output gates), and a
    freshly loaded model returns the CDiT's output for any memory until the branch is trained.

    Memory comes either as a :class:`MemoryContext` (``memory=``; from any source, e.g. built from
    trajectory history in a training ``collate_fn``) or, when only ``current_pose`` is given,
    from the model's own :class:`MemoryBuffer`, filled with clean frames by
    :meth:`update_memory`. With neither, the model is exactly a CDiT.

    Memory tokens (once per forward, or once per context across denoising steps when gradients
    are off): each retrieved frame is patch-embedded on a grid ``memory_patch_size`` coarse, gets a
    learned memory position embedding and an embedding of its pose relative to the query pose,
    and is layer-normed. Each memory layer attends to them with
    :class:`~hybrid_cdit.attention.SelectiveMemoryAttention`.

    Activation, per sample: ``activation = max`` of the retrieval scores over the valid (unmasked)
    slots, 0 with none. A sample is active when ``activation >= memory_activation_threshold``;
    an inactive sample's memory contribution is exactly zero, and when no sample of a batch is
    active eager inference skips the memory computation.

    Args:
        input_size ... learn_sigma: as :class:`CDiT`.
        memory_enabled: build the memory branch; False gives a CDiT in this class.
        memory_layers: indices of memory layers; None means every second layer of the second half.
        memory_buffer_size: capacity of the model's own buffer (frames per sample).
        memory_write_policy: write policy of the model's own buffer, ``"lru"`` or
            ``"coverage"`` (:class:`~hybrid_cdit.memory.MemoryBuffer`); :meth:`update_memory`
            writes with it.
        memory_top_k: frames retrieved from the model's own buffer.
        memory_activation_threshold: minimum activation for a sample to use memory; above 1 turns
            memory off.
        spatial_similarity_threshold: retrieval score under which a frame is masked.
        memory_retrieval_scale: distance scale of the ``"distance"`` and ``"pose"`` scores of
            the model's own buffer: the distance at which a frame's score falls to ``1/e``
            (``exp(-d / scale)``), in the units of the poses; a finite number > 0, unused by
            ``"fov"``. It depends on the world's units: with ``spatial_similarity_threshold``
            0.7, a frame more than ``0.36 * scale`` away is masked.
        retrieval: strategy of the model's own buffer, one of ``"distance"``, ``"fov"``, ``"pose"``.
        memory_patch_size: side of the latent patch one memory token covers. Equal to
            ``patch_size`` means full resolution; a multiple ``r * patch_size`` gives memory frames
            their own patch embedding with ``r*r`` fewer tokens, and memory attention gathers each
            ``r x r`` group of hidden tokens into one query and spreads its output back. None picks
            ``2 * patch_size`` when it divides ``input_size``, else ``patch_size``.
        memory_dim: width of the memory attention's queries, keys and values. None picks
            ``hidden_size // 2`` for hidden sizes of 512 and more (the NWM variants but S/2), which
            halves the memory branch's cost, and ``hidden_size`` for narrower models, where a
            narrower attention measurably learns less (``benchmarks/revisit.py``).
        memory_time_embedding: add to each memory frame's tokens an embedding of its age
            ``query_step - steps`` when the :class:`MemoryContext` carries both (parameters
            ``memory_time_embedder.*``, output layer zero-initialised).
        memory_pose_encoding: ``"frame"``: one embedding of the frame's pose relative to the
            query for all its tokens; ``"rays"``: also, per memory token, an embedding of the
            Plücker ray through its patch centre from the memory camera, in the query camera's
            frame (:func:`~hybrid_cdit.memory.plucker_rays`; parameters
            ``memory_ray_embedder.*``, output layer zero-initialised).
        camera_fov: horizontal field of view of the (square, pinhole) camera in radians, in
            ``(0, pi)``, used by ``"rays"`` and ``memory_ray_alignment``.
        memory_ray_alignment: add to the memory attention's logits, per head,
            ``-strength * (1 - cos a) / (1 - cos(camera_fov / G))``, ``a`` the angle between
            the view ray of a query cell (from the query camera) and that of a memory token
            (from the memory camera), ``G`` memory tokens per side: tokens looking the way the
            query cell looks are preferred, one token spacing off costs 1 at strength 1.
            Strengths (``memory_attn.ray_strength``) are learned and start at 1 in a new
            branch, at 0 when a trained branch without them is loaded.
    """

    def __init__(
        self,
        input_size: int = 32,
        context_size: int = 2,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        learn_sigma: bool = True,
        *,
        memory_enabled: bool = True,
        memory_layers: Sequence[int] | None = None,
        memory_buffer_size: int = 50,
        memory_write_policy: str = "lru",
        memory_top_k: int = 8,
        memory_activation_threshold: float = 0.3,
        spatial_similarity_threshold: float = 0.7,
        memory_retrieval_scale: float = 10.0,
        retrieval: str = "distance",
        memory_patch_size: int | None = None,
        memory_dim: int | None = None,
        memory_time_embedding: bool = False,
        memory_pose_encoding: str = "rays",
        camera_fov: float = DEFAULT_CAMERA_FOV,
        memory_ray_alignment: bool = True,
    ) -> None:
        check_positive_int("depth", depth)
        check_positive_int("patch_size", patch_size)
        check_positive_int("input_size", input_size)
        check_positive_int("memory_buffer_size", memory_buffer_size)
        check_positive_int("memory_top_k", memory_top_k)
        check_positive_int("num_heads", num_heads)
        self.memory_enabled = bool(memory_enabled)
        self.memory_layers = _check_memory_layers(memory_layers, depth)
        self.memory_buffer_size = memory_buffer_size
        if memory_write_policy not in WRITE_POLICIES:
            raise ValueError(
                f"memory_write_policy must be one of {WRITE_POLICIES}, got {memory_write_policy!r}"
            )
        self.memory_write_policy = memory_write_policy
        self.memory_top_k = memory_top_k
        self.memory_activation_threshold = _check_unit(
            "memory_activation_threshold", memory_activation_threshold, upper=None
        )
        self.spatial_similarity_threshold = _check_unit(
            "spatial_similarity_threshold", spatial_similarity_threshold, upper=1.0
        )
        self.memory_retrieval_scale = check_real(
            "memory_retrieval_scale", memory_retrieval_scale, positive=True
        )
        if retrieval not in STRATEGIES:
            raise ValueError(f"retrieval must be one of {sorted(STRATEGIES)}, got {retrieval!r}")
        self.retrieval = retrieval
        self.memory_patch_size = _check_memory_patch_size(memory_patch_size, patch_size, input_size)
        self.memory_dim = _check_memory_dim(memory_dim, hidden_size, num_heads)
        if not isinstance(memory_time_embedding, bool):
            raise ValueError(f"memory_time_embedding must be a bool, got {memory_time_embedding!r}")
        self.memory_time_embedding = memory_time_embedding
        if memory_pose_encoding not in POSE_ENCODINGS:
            raise ValueError(
                f"memory_pose_encoding must be one of {POSE_ENCODINGS}, "
                f"got {memory_pose_encoding!r}"
            )
        self.memory_pose_encoding = memory_pose_encoding
        self.camera_fov = _check_fov(camera_fov)
        if not isinstance(memory_ray_alignment, bool):
            raise ValueError(f"memory_ray_alignment must be a bool, got {memory_ray_alignment!r}")
        self.memory_ray_alignment = memory_ray_alignment
        super().__init__(
            input_size,
            context_size,
            patch_size,
            in_channels,
            hidden_size,
            depth,
            num_heads,
            mlp_ratio,
            learn_sigma,
        )
        self.own_memory = OwnMemory()
        if self.memory_enabled:
            if self.memory_ratio > 1:
                self.memory_embedder = PatchEmbed(
                    input_size, self.memory_patch_size, in_channels, hidden_size, bias=True
                )
            tokens = (input_size // self.memory_patch_size) ** 2
            self.memory_pos_embed = nn.Parameter(torch.zeros(tokens, hidden_size))
            self.memory_pose_embedder = RelativePoseEmbedder(hidden_size)
            if self.memory_time_embedding:
                self.memory_time_embedder = MemoryAgeEmbedder(hidden_size)
            if self.memory_pose_encoding == "rays":
                self.memory_ray_embedder = RayEmbedder(hidden_size)
            self.reset_memory_parameters()
        self.register_load_state_dict_post_hook(_reinit_missing_memory)  # type: ignore[no-untyped-call]

    # ----------------------------------------------------------------- construction helpers

    @property
    def memory_ratio(self) -> int:
        """How many times coarser the memory token grid is than the hidden token grid."""
        return self.memory_patch_size // self.patch_size

    @property
    def memory_tokens_per_frame(self) -> int:
        """Memory tokens per retrieved frame."""
        return (self.input_size // self.memory_patch_size) ** 2

    def _make_blocks(self) -> list[nn.Module]:
        grid = self.input_size // self.patch_size
        return [
            HybridCDiTBlock(
                self.hidden_size,
                self.num_heads,
                self.mlp_ratio,
                enable_memory=self.memory_enabled and i in self.memory_layers,
                grid_size=grid,
                memory_ratio=self.memory_ratio,
                memory_dim=self.memory_dim,
                memory_ray_alignment=self.memory_ray_alignment,
            )
            for i in range(self.depth)
        ]

    def hybrid_blocks(self) -> list[HybridCDiTBlock]:
        """The transformer blocks, typed."""
        return [block for block in self.blocks if isinstance(block, HybridCDiTBlock)]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "memory_enabled": self.memory_enabled,
            "memory_layers": list(self.memory_layers),
            "memory_buffer_size": self.memory_buffer_size,
            "memory_write_policy": self.memory_write_policy,
            "memory_top_k": self.memory_top_k,
            "memory_activation_threshold": self.memory_activation_threshold,
            "spatial_similarity_threshold": self.spatial_similarity_threshold,
            "memory_retrieval_scale": self.memory_retrieval_scale,
            "retrieval": self.retrieval,
            "memory_patch_size": self.memory_patch_size,
            "memory_dim": self.memory_dim,
            "memory_time_embedding": self.memory_time_embedding,
            "memory_pose_encoding": self.memory_pose_encoding,
            "camera_fov": self.camera_fov,
            "memory_ray_alignment": self.memory_ray_alignment,
        }

    def memory_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the memory branch (for a separate learning rate, or freezing the rest)."""
        return (p for name, p in self.named_parameters() if is_memory_key(name))

    def cdit_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that a plain CDiT has."""
        return (p for name, p in self.named_parameters() if not is_memory_key(name))

    def freeze_cdit(self, frozen: bool = True) -> None:
        """Memory-only fine-tuning: ``frozen=True`` turns ``requires_grad`` off for every CDiT
        parameter and on for every memory parameter; ``frozen=False`` makes all trainable.

        Call it before wrapping the model in ``DistributedDataParallel`` or
        :func:`hybrid_cdit.distributed.fully_shard_model` (both register trainable parameters
        once) and before building the optimizer. Frozen parameters get no gradient, so an
        optimizer over ``model.parameters()`` keeps state only for the memory parameters.

        Raises:
            ValueError: when the model has no memory branch and ``frozen`` is True.
        """
        if frozen and not self.memory_enabled:
            raise ValueError(
                "freeze_cdit(frozen=True) needs memory_enabled=True (nothing would train), "
                "got a model without memory"
            )
        for name, p in self.named_parameters():
            p.requires_grad_(not frozen or is_memory_key(name))

    @torch.no_grad()
    def reset_memory_parameters(self, keys: Iterable[str] | None = None) -> None:
        """Put memory parameters in their function-preserving initial state.

        The memory patch embedding starts as the mean of the CDiT's patch embeddings it covers and
        the memory position embedding as the target frame's, pooled to the memory grid, so memory
        tokens begin in the space of the hidden tokens; output gates start at zero. Called at
        construction and after loading a CDiT checkpoint (then only for the missing ``keys``).
        A loaded branch missing only its ray strengths (trained without ``memory_ray_alignment``)
        gets strengths of 0, which keep its outputs.
        """
        if not self.memory_enabled:
            return
        wanted = None if keys is None else set(keys)

        def due(prefix: str) -> bool:
            return wanted is None or any(k.startswith(prefix) for k in wanted)

        for index, block in enumerate(self.hybrid_blocks()):
            prefix = f"blocks.{index}.memory"
            strength = block.memory_attn.ray_strength if block.enable_memory else None
            if wanted is not None and strength is not None:
                missing = {k for k in wanted if k.startswith(prefix)}
                if missing == {f"{prefix}_attn.ray_strength"}:
                    # a branch trained without ray alignment keeps its function
                    strength.zero_()
                    continue
            if block.enable_memory and due(prefix):
                block.reset_memory_parameters()
        r, p = self.memory_ratio, self.patch_size
        if due("memory_pos_embed"):
            side = self.input_size // p
            grid = rearrange(self.pos_embed[self.context_size], "(h w) d -> d h w", h=side)
            pooled = F.avg_pool2d(grid, r) if r > 1 else grid
            self.memory_pos_embed.copy_(rearrange(pooled, "d h w -> (h w) d"))
        if r > 1 and due("memory_embedder"):
            fine = self.x_embedder.proj
            self.memory_embedder.proj.weight.copy_(fine.weight.repeat(1, 1, r, r) / (r * r))
            if fine.bias is not None and self.memory_embedder.proj.bias is not None:
                self.memory_embedder.proj.bias.copy_(fine.bias)
        if due("memory_pose_embedder"):
            self.memory_pose_embedder.reset_parameters()
        for name in ("memory_time_embedder", "memory_ray_embedder"):
            embedder = getattr(self, name, None)
            if embedder is not None and due(name):
                embedder.reset_parameters()

    # ----------------------------------------------------------------------- memory buffer

    def update_memory(
        self,
        frame_latent: Tensor,
        pose: Tensor,
        *,
        step: int | Tensor | None = None,
        where: Tensor | None = None,
        upcoming: Tensor | None = None,
        upcoming_mask: Tensor | None = None,
    ) -> None:
        """Write clean frames into the model's own memory buffer (created on first use, with
        :attr:`memory_write_policy`; frames on the CPU, poses on ``frame_latent``'s device).

        Args:
            frame_latent: ``(B, C, H, W)`` clean latents: observed frames or finished generated
                frames, never a noised diffusion input.
            pose: ``(B, P)`` their absolute poses, ``P`` 3 or 5.
            step: optional time step of the frames (int or ``(B,)``).
            where: optional ``(B,)`` bool, the samples that write.
            upcoming: optional ``(B, L, P)`` poses the rollout will be asked for next (the rest
                of its route), for the ``coverage`` policy: a full buffer then drops the frame
                the route needs last (:meth:`MemoryBuffer.add`).
            upcoming_mask: optional ``(B, L)`` bool, the entries of ``upcoming`` that count.
        """
        if not self.memory_enabled:
            raise ValueError("update_memory needs memory_enabled=True, got a model without memory")
        size = self.input_size
        check_shape(
            "frame_latent",
            frame_latent,
            [("B", None), ("C", self.in_channels), ("H", size), ("W", size)],
        )
        check_shape("pose", pose, [("B", frame_latent.shape[0]), ("P", None)])
        self.own_memory.write(
            frame_latent,
            pose,
            capacity=self.memory_buffer_size,
            write_policy=check_write_policy(self.memory_write_policy),
            step=step,
            where=where,
            upcoming=upcoming,
            upcoming_mask=upcoming_mask,
        )

    @property
    def memory_buffer(self) -> MemoryBuffer | None:
        """The model's own :class:`MemoryBuffer` (``own_memory.buffer``), None before the first
        :meth:`update_memory` and after :meth:`reset_memory`."""
        return self.own_memory.buffer

    @memory_buffer.setter
    def memory_buffer(self, buffer: MemoryBuffer | None) -> None:
        self.own_memory.buffer = buffer

    def reset_memory(self) -> None:
        """Forget the model's own memory buffer and any pending ``update_memory=True`` write."""
        self.own_memory.reset()

    def _commit_previous_frame(self, x_cond: Tensor, current_pose: Tensor | None) -> None:
        """``update_memory=True``: store the newest context frame at the previous target's pose."""
        if self.training:
            warnings.warn(
                "update_memory=True is ignored in training mode: a training batch is not a "
                "rollout. Pass memory=MemoryContext(...) built from each sample's history.",
                UserWarning,
                stacklevel=3,
            )
            return
        if current_pose is None:
            raise ValueError("update_memory=True needs current_pose of shape (N, P), got None")
        pose = current_pose.detach().to(geometry_dtype(current_pose.dtype))
        due = self.own_memory.due_write(pose)
        if due is not None:
            pending, changed = due
            self.update_memory(x_cond[:, -1], pending, where=changed)
        self.own_memory.pending_pose = pose.clone()

    def _retrieve_own(self, current_pose: Tensor, device: torch.device) -> MemoryContext | None:
        """Retrieval from the model's own buffer with its retrieval options."""
        return self.own_memory.retrieve(
            current_pose,
            device,
            top_k=self.memory_top_k,
            strategy=self.retrieval,
            threshold=self.spatial_similarity_threshold,
            scale=self.memory_retrieval_scale,
        )

    # ---------------------------------------------------------------------- memory tokens

    def check_memory(self, memory: MemoryContext, batch: int) -> None:
        """Raise ``ValueError`` when ``memory`` does not fit this model and batch."""
        if not isinstance(memory, MemoryContext):
            raise TypeError(f"memory must be a MemoryContext, got {type(memory).__name__}")
        size = self.input_size
        check_shape(
            "memory.frames",
            memory.frames,
            [("N", batch), ("k", None), ("C", self.in_channels), ("H", size), ("W", size)],
        )

    @property
    def memory_reader(self) -> MemoryReader:
        """What turns a :class:`MemoryContext` into the memory layers' inputs
        (:class:`~hybrid_cdit.models.memory_reader.MemoryReader`)."""
        return MemoryReader(self)

    def activation(self, memory: MemoryContext) -> Tensor:
        """Per-sample activation score ``(N,)``: the best valid retrieval score, 0 with none;
        in ``[0, 1]`` because :class:`MemoryContext` refuses scores outside it."""
        return self.memory_reader.activation(memory)

    def active_samples(self, memory: MemoryContext) -> Tensor:
        """``(N,)`` bool: samples whose memory is used."""
        return self.memory_reader.active_samples(memory)

    def memory_tokens(self, memory: MemoryContext) -> tuple[Tensor, Tensor]:
        """Layer-normed memory tokens ``(N, k*M, D)`` and their key mask ``(N, k*M)``.

        Masked slots are zeroed (frames) and put at the query pose (poses) first, so their
        content never reaches the output. Each token is its patch embedding + the memory position
        embedding + the frame's relative-pose embedding (+ its age embedding with
        ``memory_time_embedding`` and a context with ``steps`` and ``query_step``; + its ray
        embedding with ``memory_pose_encoding="rays"``), layer-normed.
        """
        return self.memory_reader.memory_tokens(memory)

    def ray_distance(self, memory: MemoryContext) -> Tensor:
        """``(N, G*G, k*G*G)`` float32 ray distances ``(1 - cos a) / (1 - cos(camera_fov / G))``
        between the view ray of each query cell (``G x G`` memory-grid cells of the query
        camera, row-major) and that of each memory token, ``a`` their angle (see
        ``memory_ray_alignment``)."""
        return self.memory_reader.ray_distance(memory)

    def memory_inputs(self, memory: MemoryContext, x: Tensor) -> MemoryInputs | None:
        """Build what the memory layers need, or None when nothing is to be attended
        (:meth:`MemoryReader.inputs`)."""
        return self.memory_reader.inputs(memory, x)

    def _memory_parameter_anchor(self) -> Tensor:
        """``0 * sum(model-level memory parameters)``, added to the tokens entering the first
        memory layer in every training forward. It keeps those parameters in the autograd graph
        when a step uses no memory, so DDP needs no ``find_unused_parameters``, and it makes the
        inputs of that block and of every later one require gradients on every rank whatever
        the memory (with ``freeze_cdit``, only memory tokens would), so FSDP2 reduces the
        blocks' gradients in the same order on all ranks. Blocks before the first memory layer
        keep inputs without gradients under ``freeze_cdit``, so they save no activations. Each
        memory block anchors its own parameters inside its forward (see
        :meth:`HybridCDiTBlock.forward`), where FSDP2 has gathered them."""
        own = (
            p
            for name, p in self.named_parameters()
            if is_memory_key(name) and not name.startswith("blocks.")
        )
        return sum((p.sum() for p in own), torch.zeros(())) * 0.0

    # ---------------------------------------------------------------------------- forward

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        x_cond: Tensor,
        rel_t: Tensor,
        *,
        memory: MemoryContext | None = None,
        current_pose: Tensor | None = None,
        update_memory: bool = False,
    ) -> Tensor:
        """Denoiser output for the target frame, using memory where it is active.

        Args:
            x, t, y, x_cond, rel_t: as :meth:`CDiT.forward`.
            memory: retrieved memory for this batch; takes precedence over the model's buffer.
            current_pose: ``(N, P)`` pose of the target frame; without ``memory`` the model
                retrieves from its own buffer with it. Pass poses in float32 (or float64)
                whatever the model's dtype: memory geometry is computed in float32 (float64 for
                float64 poses), and a pose rounded to half precision is already quantised.
            update_memory: rollout helper for integration code that calls forward once per
                denoising step: when ``current_pose`` differs from the previous call's, the
                newest context frame ``x_cond[:, -1]`` (by then the finished, clean previous
                frame) is written to the buffer at the previous call's pose. The noised input
                ``x`` is never written. ``current_pose`` keeps its shape until
                :meth:`reset_memory` (another shape raises ``ValueError``). Ignored in training
                mode (with a warning).

        Returns:
            ``(N, 2C, H, W)`` with ``learn_sigma``, else ``(N, C, H, W)``.
        """
        self.check_inputs(x, t, y, x_cond, rel_t)
        n = x.shape[0]
        if current_pose is not None:
            check_shape("current_pose", current_pose, [("N", n), ("P", None)])
            if current_pose.shape[-1] not in (3, 5):
                raise ValueError(
                    f"current_pose must have pose dimension 3 or 5, got {current_pose.shape[-1]}"
                )
            if current_pose.dtype == torch.bool or current_pose.is_complex():
                raise ValueError(
                    f"current_pose must have an integer or floating dtype, got {current_pose.dtype}"
                )
            check_finite("current_pose", current_pose)
        if memory is not None:
            self.check_memory(memory, n)
        if not self.memory_enabled:
            return super().forward(x, t, y, x_cond, rel_t)
        writes = update_memory and not self.training
        if current_pose is not None:
            self.own_memory.check_pose(current_pose, writes=writes, reads=memory is None)
        if update_memory:
            self._commit_previous_frame(x_cond, current_pose)
        if memory is None and current_pose is not None:
            memory = self._retrieve_own(current_pose, x.device)
        inputs = None if memory is None else self.memory_inputs(memory, x)

        tokens, context = self.embed_frames(x, x_cond)
        context = self.normalize_context(context)
        c = self.embed_condition(t, y, rel_t)
        anchor_at = self.memory_layers[0] if self.memory_layers else self.depth
        anchoring = self.training and torch.is_grad_enabled()
        for index, block in enumerate(self.hybrid_blocks()):
            if anchoring and index == anchor_at:
                tokens = tokens + self._memory_parameter_anchor().to(tokens.dtype)
            tokens = self.run_block(block, tokens, c, context, inputs)
        if anchoring and anchor_at == self.depth:
            tokens = tokens + self._memory_parameter_anchor().to(tokens.dtype)
        return self.unpatchify(self.final_layer(tokens, c))


def _check_memory_layers(layers: Sequence[int] | None, depth: int) -> list[int]:
    if layers is None:
        return default_memory_layers(depth)
    chosen = list(layers)
    bad = [i for i in chosen if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth]
    if bad:
        raise ValueError(f"memory_layers must be layer indices in [0, {depth - 1}], got {chosen}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"memory_layers must not repeat a layer, got {chosen}")
    return sorted(chosen)


def _check_unit(name: str, value: float, upper: float | None) -> float:
    number = float(value)
    if not number >= 0.0 or (upper is not None and number > upper):
        bound = f"[0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")
    return number


def _check_memory_patch_size(size: int | None, patch_size: int, input_size: int) -> int:
    if size is None:
        return 2 * patch_size if input_size % (2 * patch_size) == 0 else patch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < patch_size:
        raise ValueError(
            f"memory_patch_size must be an int >= patch_size ({patch_size}), got {size!r}"
        )
    if size % patch_size or input_size % size:
        raise ValueError(
            f"memory_patch_size must be a multiple of patch_size ({patch_size}) that divides "
            f"input_size ({input_size}), got {size}"
        )
    return size


def _check_fov(fov: float) -> float:
    if isinstance(fov, bool) or not isinstance(fov, int | float) or not 0.0 < fov < math.pi:
        raise ValueError(f"camera_fov must be a number of radians in (0, pi), got {fov!r}")
    return float(fov)


def _check_memory_dim(dim: int | None, hidden_size: int, num_heads: int) -> int:
    if dim is None:
        dim = hidden_size // 2 if hidden_size >= 512 else hidden_size
        return dim if dim % num_heads == 0 else hidden_size
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1 or dim % num_heads:
        raise ValueError(
            f"memory_dim must be a positive multiple of num_heads ({num_heads}), got {dim!r}"
        )
    return dim


def _reinit_missing_memory(module: nn.Module, incompatible: Any) -> None:
    """Load hook: memory parameters missing from a loaded state dict (a CDiT checkpoint) are put
    back in their function-preserving state, derived from the CDiT weights just loaded."""
    if isinstance(module, HybridCDiT):
        missing = [k for k in incompatible.missing_keys if is_memory_key(k)]
        if missing:
            module.reset_memory_parameters(missing)
