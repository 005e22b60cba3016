"""Learned slot-pose refinement: a memory slot's pose relative to a reference frame, corrected
from the two frames' content.

Heading alone can be fitted geometrically (:mod:`.headings`); a slot's position relative to the
query cannot, since a step sideways moves near and far things by different amounts. A small
network learns it instead: :class:`SlotPoseRefiner` reads the reference frame, a slot's frame
and the slot's pose relative to the reference as the poses give it (the prior), and returns a
corrected relative pose, ``prior + correction``. Its last layer starts at zero, so an untrained
refiner returns the prior and changes nothing. :func:`refine_poses` applies it to every valid
slot of a :class:`MemoryContext`; :func:`relative_pose_loss` is the loss to train it on pairs
of frames with known relative poses and a corrupted prior (the library ships no training
loop; ``benchmarks/maze/pose_refiner.py`` is one).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_real
from .context import MemoryContext
from .poses import check_pose, compose_pose, relative_pose, wrap_angle

__all__ = ["SlotPoseRefiner", "refine_poses", "relative_pose_loss"]


def _conv(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride, 1),
        nn.BatchNorm2d(out_channels),
        nn.GELU(),
    ]


class SlotPoseRefiner(nn.Module):
    """Corrects ``(x, y, yaw)`` poses of frames relative to a reference frame from content.

    A convolutional encoder reads each (reference, slot) pair stacked on channels down to a
    ``2 x 2`` grid; an MLP reads those features with the prior ``(x, y, cos yaw, sin yaw)`` and
    returns a correction, added to the prior (yaw wrapped). The correction starts at zero.

    Args:
        in_channels: channels ``C`` of one frame (3 for RGB pixels, 4 for SD-VAE latents).
        width: channels of the first convolution (the encoder widens to ``4 * width``).
        hidden: width of the MLP.
        scale: a factor applied to the frames first (pixels in ``[-1, 1]``: 2 works well).
    """

    def __init__(
        self, in_channels: int = 3, width: int = 64, hidden: int = 256, scale: float = 2.0
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("width", width), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.in_channels = in_channels
        self.scale = float(scale)
        self.encoder = nn.Sequential(
            *_conv(2 * in_channels, width, 1),
            *_conv(width, width, 2),
            *_conv(width, 2 * width, 2),
            *_conv(2 * width, 2 * width, 2),
            *_conv(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(16 * width + 4, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 3),
        )
        last = self.head[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, reference: Tensor, frames: Tensor, prior: Tensor) -> Tensor:
        """Refined relative poses.

        Args:
            reference: ``(N, C, H, W)`` reference frames.
            frames: ``(N, C, H, W)`` the frames whose pose is refined.
            prior: ``(N, 3)`` each frame's ``(x, y, yaw)`` in its reference's frame, as the
                poses give it.

        Returns:
            ``(N, 3)`` the corrected relative poses, yaw wrapped to ``[-pi, pi)``.
        """
        for name, value in (("reference", reference), ("frames", frames)):
            if (
                not isinstance(value, Tensor)
                or value.dim() != 4
                or value.shape[1] != self.in_channels
            ):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"{name} must be a (N, {self.in_channels}, H, W) tensor, got {got}"
                )
        if frames.shape != reference.shape:
            raise ValueError(
                f"frames must have reference's shape {tuple(reference.shape)}, "
                f"got {tuple(frames.shape)}"
            )
        if not isinstance(prior, Tensor) or tuple(prior.shape) != (reference.shape[0], 3):
            got = tuple(prior.shape) if isinstance(prior, Tensor) else type(prior).__name__
            raise ValueError(f"prior must have shape {(reference.shape[0], 3)}, got {got}")
        features = self.encoder(torch.cat([reference, frames], dim=1) * self.scale)
        yaw = prior[:, 2]
        code = torch.stack([prior[:, 0], prior[:, 1], yaw.cos(), yaw.sin()], dim=1)
        step = self.head(torch.cat([features, code.to(features.dtype)], dim=1)).to(prior.dtype)
        return torch.cat([prior[:, :2] + step[:, :2], wrap_angle(yaw + step[:, 2])[:, None]], 1)


def relative_pose_loss(estimate: Tensor, target: Tensor, *, beta: float = 0.1) -> Tensor:
    """Smooth-L1 loss of ``(N, 3)`` relative poses: positions per axis, plus the wrapped yaw
    difference (radians); ``beta`` is the Huber threshold of positions (half of it for yaw)."""
    for name, value in (("estimate", estimate), ("target", target)):
        if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[-1] != 3:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a (N, 3) tensor (x, y, yaw), got {got}")
    if estimate.shape != target.shape:
        raise ValueError(
            f"target must have estimate's shape {tuple(estimate.shape)}, got {tuple(target.shape)}"
        )
    position = F.smooth_l1_loss(estimate[:, :2], target[:, :2], beta=beta)
    turn = wrap_angle(estimate[:, 2] - target[:, 2])
    heading = F.smooth_l1_loss(turn, torch.zeros_like(turn), beta=beta / 2)
    return position + heading


def refine_poses(
    memory: MemoryContext,
    reference: Tensor,
    reference_pose: Tensor,
    refiner: SlotPoseRefiner,
    *,
    min_shift: float = 0.0,
    min_turn: float = 0.0,
) -> MemoryContext:
    """``memory`` with every valid slot's pose corrected by ``refiner`` against a reference.

    The reference is a frame whose pose relative to the query is trusted, typically the last
    context frame (the query pose composed with the inverse of the action). Each valid slot's
    pose relative to the reference is refined and composed back onto ``reference_pose``; masked
    slots and every other field are kept. A correction that moves the slot by less than
    ``min_shift`` and turns it by less than ``min_turn`` is not applied (below the refiner's own
    error, it would only add noise to good poses). Runs under ``torch.no_grad`` in the refiner's
    mode (call ``refiner.eval()`` first for inference).

    Args:
        memory: the context, poses ``(B, k, 3)``.
        reference: ``(B, C, H, W)`` frames of the same kind as ``memory.frames``.
        reference_pose: ``(B, 3)`` the reference's pose in the memory's coordinates.
        refiner: a trained :class:`SlotPoseRefiner` whose ``in_channels`` is ``C``.
        min_shift: the smallest correction of a slot's position that is applied (pose units),
            >= 0.
        min_turn: the smallest correction of its yaw that is applied (radians), >= 0.

    Returns:
        The refined context.
    """
    if not isinstance(memory, MemoryContext):
        raise ValueError(f"memory must be a MemoryContext, got {type(memory).__name__}")
    if not isinstance(refiner, SlotPoseRefiner):
        raise ValueError(f"refiner must be a SlotPoseRefiner, got {type(refiner).__name__}")
    if memory.poses.shape[-1] != 3:
        raise ValueError(
            f"memory.poses must be (x, y, yaw) poses (P = 3), got P = {memory.poses.shape[-1]}"
        )
    min_shift = check_real("min_shift", min_shift)
    min_turn = check_real("min_turn", min_turn)
    for name, value in (("min_shift", min_shift), ("min_turn", min_turn)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    b, k = memory.mask.shape
    frame_shape = tuple(memory.frames.shape[2:])
    if frame_shape[0] != refiner.in_channels:
        raise ValueError(
            f"memory.frames must have refiner.in_channels = {refiner.in_channels} channels, "
            f"got {frame_shape[0]}"
        )
    if not isinstance(reference, Tensor) or tuple(reference.shape) != (b, *frame_shape):
        got = tuple(reference.shape) if isinstance(reference, Tensor) else type(reference).__name__
        raise ValueError(f"reference must have shape {(b, *frame_shape)}, got {got}")
    reference_pose = check_pose("reference_pose", reference_pose, 3)
    if tuple(reference_pose.shape) != (b, 3):
        raise ValueError(
            f"reference_pose must have shape {(b, 3)}, got {tuple(reference_pose.shape)}"
        )
    anchor = reference_pose.to(memory.poses.dtype)[:, None]  # (B, 1, 3)
    prior = relative_pose(memory.poses, anchor)  # (B, k, 3)
    parameter = next(refiner.parameters())
    with torch.no_grad():
        estimate = refiner(
            reference[:, None].expand(-1, k, *frame_shape).flatten(0, 1).to(parameter),
            memory.frames.flatten(0, 1).to(parameter),
            prior.flatten(0, 1).to(parameter),
        ).view(b, k, 3)
    estimate = estimate.to(memory.poses.dtype)
    shift = (estimate[..., :2] - prior[..., :2]).norm(dim=-1)
    turn = wrap_angle(estimate[..., 2] - prior[..., 2]).abs()
    applied = memory.mask & ((shift >= min_shift) | (turn >= min_turn))
    placed = compose_pose(anchor, estimate)
    poses = torch.where(applied[..., None], placed, memory.poses)
    return dataclasses.replace(memory, poses=poses)
