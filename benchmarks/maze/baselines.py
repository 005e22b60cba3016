"""Learned models of the benchmark and what each one is given: the CDiT, the HybridCDiT, and the
matched learned baselines, all from the same (pretrained) CDiT weights.

* ``long_context``: a CDiT whose context is the ``context + k`` most recent frames;
* ``ctx_memory``: a CDiT whose context is the hybrid's ``k`` retrieved frames followed by the
  ``context`` recent frames ("context as memory"), no pose information;
* ``ctx_memory_pose``: the same, each retrieved frame's context tokens plus an embedding of its
  pose relative to the target (a zero-initialised MLP over ``(dx, dy, cos dyaw, sin dyaw)``, as
  Context-as-Memory tells its model where each memory frame was taken).

The wider-context CDiTs take the pretrained CDiT's weights; their extra context positions start
from the oldest context position's embedding (:func:`load_wider_context`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.maze.protocol import Batch
from benchmarks.side_by_side import predict
from hybrid_cdit import CDiT

__all__ = [
    "BASELINES",
    "Learner",
    "PosedContextCDiT",
    "build_baselines",
    "forward_flops",
    "load_wider_context",
]

BASELINES = ("long_context", "ctx_memory", "ctx_memory_pose")
"""Names of the learned baselines, in table order."""


class PosedContextCDiT(CDiT):
    """A CDiT whose first ``extra`` context frames' tokens get an added embedding of the frame's
    pose relative to the target (zero-initialised output layer: it starts as the CDiT).

    Args:
        extra: how many leading context frames carry a pose; ``**arch`` as :class:`CDiT`.
    """

    def __init__(self, *, extra: int, **arch: object) -> None:
        super().__init__(**arch)  # type: ignore[arg-type]
        if not 0 < extra <= self.context_size:
            raise ValueError(f"extra must be in [1, {self.context_size}], got {extra}")
        self.extra = extra
        out = nn.Linear(self.hidden_size, self.hidden_size)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.context_pose_embedder = nn.Sequential(nn.Linear(4, self.hidden_size), nn.SiLU(), out)
        self._context_pose: Tensor | None = None

    def embed_frames(self, x: Tensor, x_cond: Tensor) -> tuple[Tensor, Tensor]:
        tokens, context = super().embed_frames(x, x_cond)
        if self._context_pose is None:
            return tokens, context
        emb = self.context_pose_embedder(self._context_pose)  # (N, extra, D)
        emb = nn.functional.pad(emb, (0, 0, 0, self.context_size - self.extra))
        n, _, dim = context.shape
        per_frame = context.view(n, self.context_size, -1, dim) + emb[:, :, None]
        return tokens, per_frame.flatten(1, 2)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        x_cond: Tensor,
        rel_t: Tensor,
        *,
        context_pose: Tensor | None = None,
    ) -> Tensor:
        """:meth:`CDiT.forward`, with ``context_pose (N, extra, 4)`` ``(dx, dy, cos dyaw, sin
        dyaw)`` of the leading context frames relative to the target (None: no embedding)."""
        if context_pose is not None and context_pose.shape != (x.shape[0], self.extra, 4):
            raise ValueError(
                f"context_pose must have shape ({x.shape[0]}, {self.extra}, 4), got "
                f"{tuple(context_pose.shape)}"
            )
        self._context_pose = context_pose
        try:
            out: Tensor = super().forward(x, t, y, x_cond, rel_t)
        finally:
            self._context_pose = None
        return out


def load_wider_context(model: CDiT, cdit: CDiT) -> None:
    """Give ``model`` (context ``cdit.context_size + e``) the weights of ``cdit``: the same
    tensors, the position embeddings of the recent frames and the target at their places, and
    the ``e`` extra leading context positions starting from the oldest one's. Parameters only
    ``model`` has (a pose embedder) keep their initial values; anything else raises."""
    state = cdit.state_dict()
    old = state["pos_embed"]  # (context + 1, L, D)
    extra = model.context_size - cdit.context_size
    if extra < 0:
        raise ValueError(f"model context must be >= {cdit.context_size}, got {model.context_size}")
    state["pos_embed"] = torch.cat([old[:1].expand(extra, -1, -1), old], dim=0)
    result = model.load_state_dict(state, strict=False)
    wrong = [k for k in result.missing_keys if "context_pose" not in k]
    if wrong or result.unexpected_keys:
        raise RuntimeError(f"CDiT weights did not map: {wrong + list(result.unexpected_keys)}")


@dataclass(frozen=True)
class Learner:
    """A learned model and what it is given.

    Attributes:
        name: its name in the tables.
        model: the network.
        kind: ``"recent"`` (the recent context only), ``"memory"`` (plus the hybrid's memory),
            ``"long"`` (:attr:`Batch.long_cond`), ``"retrieved"`` (:attr:`Batch.retrieved_cond`)
            or ``"retrieved_pose"`` (that and :attr:`Batch.retrieved_pose`).
        fallback: for a ``"memory"`` learner, the CDiT that answers where its memory is
            inactive (:func:`hybrid_cdit.routed_forward`), or None.
    """

    name: str
    model: CDiT
    kind: str
    fallback: CDiT | None = None

    def output(self, x_t: Tensor, t: Tensor, batch: Batch, guidance: float = 1.0) -> Tensor:
        """The network's prediction ``(B, C, H, W)`` for the noised targets ``x_t``; a
        ``"memory"`` learner's with memory guidance ``guidance`` (1: none)."""
        if self.kind in ("recent", "memory"):
            memory = batch.memory if self.kind == "memory" else None
            fallback = self.fallback if self.kind == "memory" else None
            return predict(
                self.model, x_t, t, batch.y, batch.x_cond, batch.rel_t, memory, guidance, fallback
            )
        if self.kind == "long":
            out: Tensor = self.model(x_t, t, batch.y, batch.long_cond, batch.rel_t)
        elif self.kind == "retrieved":
            out = self.model(x_t, t, batch.y, batch.retrieved_cond, batch.rel_t)
        elif self.kind == "retrieved_pose":
            out = self.model(
                x_t, t, batch.y, batch.retrieved_cond, batch.rel_t,
                context_pose=batch.retrieved_pose,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown learner kind {self.kind!r}")
        return out[:, : x_t.shape[1]]


def build_baselines(args: argparse.Namespace, arch: dict[str, object]) -> list[Learner]:
    """The learned baselines ``args.baseline_models`` names (untrained;
    :func:`load_wider_context` gives them the CDiT's weights), their own parameters drawn from
    ``args.seed``: all three are drawn, in :data:`BASELINES` order, so each has the same
    parameters whichever are kept."""
    wide = {**arch, "context_size": args.context + args.top_k}
    torch.manual_seed(args.seed + 3)
    long_context = CDiT(**wide)
    ctx_memory = CDiT(**wide)
    ctx_memory_pose = PosedContextCDiT(extra=args.top_k, **wide)
    every = [
        Learner("long_context", long_context, "long"),
        Learner("ctx_memory", ctx_memory, "retrieved"),
        Learner("ctx_memory_pose", ctx_memory_pose, "retrieved_pose"),
    ]
    return [learner for learner in every if learner.name in args.baseline_models]


def forward_flops(learner: Learner, batch: Batch) -> int:
    """Floating-point operations of one forward of ``learner`` on one sample of ``batch`` (the
    first with usable memory, if any; torch's ``FlopCounterMode``: matrix products and
    attention)."""
    row = int(batch.memory.mask.any(1).int().argmax())
    one = batch.rows(torch.tensor([row]))
    x_t = torch.zeros_like(one.x0)
    t = torch.full((1,), 500, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    was_training = learner.model.training
    learner.model.eval()
    with counter, torch.no_grad():
        learner.output(x_t, t, one)
    learner.model.train(was_training)
    return int(counter.get_total_flops())
