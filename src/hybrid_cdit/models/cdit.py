"""NWM's Conditional Diffusion Transformer with NWM's parameter names, shapes and numerics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers.patch_embed import PatchEmbed
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._validation import all_finite, check_positive_int, check_shape
from ..blocks import CDiTBlock
from ..embeddings import ActionEmbedder, FinalLayer, TimestepEmbedder, linear_at, zero_linear

ModelT = TypeVar("ModelT", bound="CDiT")


class CDiT(nn.Module):
    """Conditional Diffusion Transformer (Bar et al., *Navigation World Models*, CVPR 2025).

    Predicts the next latent frame ``x`` of a trajectory from ``context_size`` past latent frames
    ``x_cond``, a navigation action ``y = (dx, dy, dyaw)``, the diffusion step ``t`` and the
    relative time ``rel_t`` between the last context frame and the target.

    ``state_dict()`` has exactly the keys and shapes of NWM's ``models.CDiT``, so checkpoints of
    either load into the other with ``strict=True``.

    Args:
        input_size: latent height and width ``H = W``.
        context_size: number of context frames.
        patch_size: patch side ``p``; ``input_size`` must be a multiple of it.
        in_channels: latent channels ``C``.
        hidden_size: token width ``D``.
        depth: number of ``CDiTBlock`` layers.
        num_heads: attention heads; must divide ``hidden_size``.
        mlp_ratio: MLP hidden width over ``hidden_size``.
        learn_sigma: predict the variance too (output ``2C`` channels, as NWM's diffusion wants).
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
    ) -> None:
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("context_size", context_size),
            ("patch_size", patch_size),
            ("in_channels", in_channels),
            ("hidden_size", hidden_size),
            ("depth", depth),
            ("num_heads", num_heads),
        ):
            check_positive_int(name, value)
        if input_size % patch_size:
            raise ValueError(
                f"input_size must be a multiple of patch_size ({patch_size}), got {input_size}"
            )
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size must be divisible by num_heads ({num_heads}), got {hidden_size}"
            )
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
        self.input_size = input_size
        self.context_size = context_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = float(mlp_ratio)
        self.learn_sigma = bool(learn_sigma)
        self.out_channels = in_channels * 2 if learn_sigma else in_channels

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = ActionEmbedder(hidden_size)
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(context_size + 1, num_patches, hidden_size))
        self.blocks = nn.ModuleList(self._make_blocks())
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.time_embedder = TimestepEmbedder(hidden_size)
        self.grad_checkpointing = False
        self.initialize_weights()

    def _make_blocks(self) -> list[nn.Module]:
        return [
            CDiTBlock(self.hidden_size, self.num_heads, self.mlp_ratio) for _ in range(self.depth)
        ]

    @property
    def num_patches(self) -> int:
        """Tokens per frame, ``(input_size / patch_size) ** 2``."""
        return int(self.x_embedder.num_patches)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block (timm's name and meaning).

        While enabled and gradients are on, each block's activations are dropped after its
        forward and recomputed in the backward pass (``torch.utils.checkpoint``, non-reentrant):
        the activation memory of a step falls to about one block's plus the block inputs, for
        about one more forward of compute. Outputs and gradients are those of the plain model.
        """
        self.grad_checkpointing = bool(enable)

    def run_block(self, block: nn.Module, *args: Any) -> Tensor:
        """``block(*args)``, checkpointed when :meth:`set_grad_checkpointing` is on and
        gradients are enabled."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            out: Tensor = checkpoint(block, *args, use_reentrant=False)
            return out
        result: Tensor = block(*args)
        return result

    def cdit_blocks(self) -> list[CDiTBlock]:
        """The transformer blocks, typed."""
        return [block for block in self.blocks if isinstance(block, CDiTBlock)]

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model."""
        return {
            "input_size": self.input_size,
            "context_size": self.context_size,
            "patch_size": self.patch_size,
            "in_channels": self.in_channels,
            "hidden_size": self.hidden_size,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "learn_sigma": self.learn_sigma,
        }

    @classmethod
    def from_cdit_checkpoint(
        cls: type[ModelT],
        path: str | Path | dict[str, Tensor],
        *,
        source: str = "ema",
        trust_checkpoint: bool = False,
        mmap: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        allow_nonfinite: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        **overrides: Any,
    ) -> ModelT:
        """Build this class from a CDiT checkpoint (NWM ``train.py`` file, state dict,
        ``.safetensors``, or a model hub name ``"hf-hub:ORG/REPO/FILE"``): the configuration is
        read from the tensors' shapes, ``overrides`` win (``num_heads`` for non-NWM widths,
        memory settings of a hybrid). Only the selected state dict is read; the model is built
        without a throw-away initialisation and its tensors are memory-mapped to the file
        (``mmap=True``) or copied once, converted to ``dtype`` and ``device`` on the way.
        Tensors holding NaN or inf are refused unless ``allow_nonfinite``. ``revision``,
        ``token``, ``cache_dir`` and ``local_files_only`` apply to hub names (see
        :class:`hybrid_cdit.checkpoint.HubOptions`). See
        :func:`hybrid_cdit.checkpoint.build_from_cdit_checkpoint`."""
        from ..checkpoint import HubOptions, build_from_cdit_checkpoint  # I/O sits above models

        return build_from_cdit_checkpoint(
            cls,
            path,
            source=source,
            trust_checkpoint=trust_checkpoint,
            mmap=mmap,
            dtype=dtype,
            device=device,
            allow_nonfinite=allow_nonfinite,
            hub=HubOptions(
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            ),
            **overrides,
        )

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``; returns it."""
        from ..checkpoint import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        directory: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        mmap: bool = False,
        allow_nonfinite: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
    ) -> ModelT:
        """Load a :meth:`save_pretrained` directory or ``"hf-hub:ORG/REPO"`` (a hybrid also
        loads a CDiT directory); see :func:`hybrid_cdit.checkpoint.from_pretrained` for the
        options."""
        from ..checkpoint import from_pretrained

        return from_pretrained(
            directory,
            cls,
            device=device,
            dtype=dtype,
            mmap=mmap,
            allow_nonfinite=allow_nonfinite,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )

    def initialize_weights(self) -> None:
        """NWM's initialisation: xavier linears, zero adaLN and output layers (adaLN-Zero)."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        nn.init.normal_(self.pos_embed, std=0.02)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
        for embedder in (self.t_embedder, self.time_embedder, *self.y_embedder.embedders()):
            nn.init.normal_(linear_at(embedder.mlp, 0).weight, std=0.02)
            nn.init.normal_(linear_at(embedder.mlp, 2).weight, std=0.02)
        for block in self.cdit_blocks():
            zero_linear(linear_at(block.adaLN_modulation, -1))
        zero_linear(linear_at(self.final_layer.adaLN_modulation, -1))
        zero_linear(self.final_layer.linear)

    def check_inputs(self, x: Tensor, t: Tensor, y: Tensor, x_cond: Tensor, rel_t: Tensor) -> None:
        """Raise ``ValueError`` naming the first argument whose shape, dtype, device or values do
        not fit the model, before anything runs: ``x`` and ``x_cond`` floating, in the model's
        dtype (any floating dtype under ``torch.autocast``); ``t``, ``y``, ``rel_t`` real
        (integer or floating, not bool); all on the model's device; floating ones finite."""
        size, channels = self.input_size, self.in_channels
        check_shape("x", x, [("N", None), ("C", channels), ("H", size), ("W", size)])
        n = x.shape[0]
        check_shape("t", t, [("N", n)])
        check_shape("y", y, [("N", n), ("action", 3)])
        check_shape(
            "x_cond",
            x_cond,
            [
                ("N", n),
                ("context_size", self.context_size),
                ("C", channels),
                ("H", size),
                ("W", size),
            ],
        )
        check_shape("rel_t", rel_t, [("N", n)])
        self._check_dtypes_and_devices(x=x, t=t, y=y, x_cond=x_cond, rel_t=rel_t)

    def _check_dtypes_and_devices(self, **inputs: Tensor) -> None:
        weight = self.x_embedder.proj.weight
        autocast = torch.is_autocast_enabled(weight.device.type)
        for name, value in inputs.items():
            if value.device != weight.device:
                raise ValueError(
                    f"{name} must be on the model's device {weight.device}, got {value.device}"
                )
            if name in ("x", "x_cond"):
                if not value.is_floating_point() or (not autocast and value.dtype != weight.dtype):
                    expected = "a floating dtype" if autocast else f"dtype {weight.dtype}"
                    raise ValueError(
                        f"{name} must have {expected} (the model's), got {value.dtype}"
                    )
            elif value.dtype == torch.bool or value.is_complex():
                raise ValueError(
                    f"{name} must have an integer or floating dtype, got {value.dtype}"
                )
            if not torch.compiler.is_compiling() and not all_finite(value):
                raise ValueError(f"{name} must be finite, got non-finite values (NaN or inf)")

    def embed_frames(self, x: Tensor, x_cond: Tensor) -> tuple[Tensor, Tensor]:
        """Patch-embed target and context frames and add their position embeddings.

        Returns:
            ``(N, L, D)`` target tokens and ``(N, context_size * L, D)`` context tokens.
        """
        tokens = self.x_embedder(x) + self.pos_embed[self.context_size]
        context = self.x_embedder(x_cond.flatten(0, 1)).unflatten(0, x_cond.shape[:2])
        context = context + self.pos_embed[: self.context_size]
        return tokens, context.flatten(1, 2)

    def embed_condition(self, t: Tensor, y: Tensor, rel_t: Tensor) -> Tensor:
        """``c = emb(t) + emb(rel_t) + emb(y)``, ``(N, D)``."""
        c: Tensor = self.t_embedder(t) + self.time_embedder(rel_t) + self.y_embedder(y)
        return c

    def normalize_context(self, context: Tensor) -> Tensor:
        """NWM's ``norm_cond`` (layer norm without affine parameters), once for every block.

        ``(N, Lc, D)`` -> ``(N, Lc + 1, D)``: a trailing placeholder row is added for the
        cross-attention's learned key/value token (see ``ContextCrossAttention.project_kv``).
        """
        normed = F.layer_norm(context, (self.hidden_size,), eps=1e-6)
        return F.pad(normed, (0, 0, 0, 1))

    def unpatchify(self, x: Tensor) -> Tensor:
        """``(N, L, p*p*C_out)`` -> ``(N, C_out, H, W)``."""
        side = self.input_size // self.patch_size
        images: Tensor = rearrange(
            x,
            "n (h w) (p q c) -> n c (h p) (w q)",
            h=side,
            w=side,
            p=self.patch_size,
            q=self.patch_size,
        )
        return images

    def forward(self, x: Tensor, t: Tensor, y: Tensor, x_cond: Tensor, rel_t: Tensor) -> Tensor:
        """Denoiser output for the target frame.

        Args:
            x: ``(N, C, H, W)`` noised target latent.
            t: ``(N,)`` diffusion timesteps.
            y: ``(N, 3)`` action ``(dx, dy, dyaw)``.
            x_cond: ``(N, context_size, C, H, W)`` context latents.
            rel_t: ``(N,)`` relative time of the target.

        Returns:
            ``(N, 2C, H, W)`` with ``learn_sigma`` (noise and variance), else ``(N, C, H, W)``.
        """
        self.check_inputs(x, t, y, x_cond, rel_t)
        tokens, context = self.embed_frames(x, x_cond)
        context = self.normalize_context(context)
        c = self.embed_condition(t, y, rel_t)
        for block in self.blocks:
            tokens = self.run_block(block, tokens, c, context)
        return self.unpatchify(self.final_layer(tokens, c))
