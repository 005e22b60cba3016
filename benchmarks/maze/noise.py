"""Pose corruption of the Memory Maze benchmark: poses as a user's odometry gives them.

Two noise models of the poses ``(x, y, yaw)`` (cells, radians) that the memory sees:

* **jitter** ``XY,DEG``: every frame's pose independently off by Gaussian noise, standard
  deviation ``XY`` cells on each of ``x`` and ``y`` (isotropic, per axis) and ``DEG`` degrees on
  the heading;
* **drift** ``F,DEG``: every step's motion, the pose of frame ``t`` in the body frame of frame
  ``t - 1`` (forward and lateral displacement, turn), off by Gaussian noise of standard deviation
  ``F`` times the step's length on each displacement axis and ``DEG`` degrees on the turn; the
  noisy steps are integrated from the true first pose, so errors grow along the path (dead
  reckoning).

:func:`corrupt` draws the corrupted poses, :func:`nominal_std` the standard deviation of the
relative-pose error between a memory slot and the query that a noise model implies, and
:func:`with_ray_std` hands it to a :class:`~hybrid_cdit.MemoryContext` as ``ray_std``
(:func:`hybrid_cdit.memory.ray_angle_std`). :func:`causal_fused` gives jittered poses (a
localiser's) fused with odometry whose steps carry drift-model noise
(:func:`hybrid_cdit.memory.fuse_odometry`), as a user could fuse them at each frame.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hybrid_cdit import MemoryContext
from hybrid_cdit.memory import fuse_odometry, ray_angle_std, relative_pose, wrap_angle

__all__ = [
    "KINDS",
    "PoseNoise",
    "causal_fused",
    "corrupt",
    "noise_flag",
    "nominal_std",
    "pose_errors",
    "with_ray_std",
]

KINDS = ("jitter", "drift")
"""The noise models."""


@dataclass(frozen=True)
class PoseNoise:
    """A pose noise model.

    Attributes:
        kind: ``"jitter"`` or ``"drift"``.
        position: jitter: the position noise's standard deviation per axis, in cells; drift:
            the fraction ``F`` of each step's length that is the standard deviation of its
            displacement noise per axis.
        degrees: the standard deviation of the heading noise (jitter, per frame) or of the turn
            noise (drift, per step), in degrees.
    """

    kind: str
    position: float
    degrees: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("position", "degrees"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    @property
    def radians(self) -> float:
        """:attr:`degrees` in radians."""
        return math.radians(self.degrees)

    @classmethod
    def parse(cls, text: str, kind: str, flag: str) -> PoseNoise:
        """The noise of a flag's value ``"A,DEG"`` (two finite numbers >= 0); a bad value
        raises ``ValueError`` naming ``flag``, the expected form and the value received."""
        form = "XY,DEG" if kind == "jitter" else "F,DEG"
        parts = text.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            position, degrees = (float(p) for p in parts)
            return cls(kind, position, degrees)
        except ValueError:
            raise ValueError(
                f"{flag} expects {form}, two finite numbers >= 0 separated by a comma "
                f"(e.g. 0.25,7.5), got {text!r}"
            ) from None

    def label(self) -> str:
        """A short name: ``jitter 0.25 cell / 7.5 deg`` or ``drift 5% / 1 deg``."""
        if self.kind == "jitter":
            return f"jitter {self.position:g} cell / {self.degrees:g} deg"
        return f"drift {100 * self.position:g}% / {self.degrees:g} deg"


def noise_flag(kind: str, flag: str) -> Callable[[str], PoseNoise]:
    """An ``argparse`` ``type`` for ``flag`` that parses :class:`PoseNoise` of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def parse(text: str) -> PoseNoise:
        try:
            return PoseNoise.parse(text, kind, flag)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = flag
    return parse


def _check_poses(poses: Tensor) -> None:
    if not isinstance(poses, Tensor) or poses.dim() != 3 or poses.shape[-1] != 3:
        shape = tuple(poses.shape) if isinstance(poses, Tensor) else type(poses).__name__
        raise ValueError(f"poses must be a (N, T, 3) tensor (x, y, yaw), got {shape}")
    if not poses.is_floating_point() or not bool(torch.isfinite(poses).all()):
        raise ValueError("poses must be finite floating-point values")


def corrupt(poses: Tensor, noise: PoseNoise, generator: torch.Generator) -> Tensor:
    """The poses ``(N, T, 3)`` with ``noise`` drawn from ``generator`` (see the module's
    docstring for the models); yaw wrapped to ``[-pi, pi)``; dtype and shape of ``poses``.

    Drift composes the noisy steps in float64: headings by a cumulative sum of turns from the
    true first heading, positions by a cumulative sum of the steps rotated by the noisy heading
    they start from, so frame 0 keeps its true pose.
    """
    _check_poses(poses)
    exact = poses.double()
    n, t_len, _ = poses.shape
    if noise.kind == "jitter":
        eps = torch.randn((n, t_len, 3), generator=generator, dtype=torch.float64)
        scale = torch.tensor([noise.position, noise.position, noise.radians], dtype=torch.float64)
        noisy = exact + eps * scale
    else:
        noisy_steps, _ = _noisy_steps(exact, noise, generator)
        heading = exact[:, :1, 2] + torch.cat(
            [torch.zeros_like(noisy_steps[:, :1, 2]), noisy_steps[..., 2].cumsum(1)], dim=1
        )  # (N, T): heading of each frame
        start = heading[:, :-1]  # the heading each step starts from
        fwd, lat = noisy_steps[..., 0], noisy_steps[..., 1]
        world = torch.stack(
            [fwd * start.cos() - lat * start.sin(), fwd * start.sin() + lat * start.cos()], -1
        )
        xy = exact[:, :1, :2] + torch.cat([torch.zeros_like(world[:, :1]), world.cumsum(1)], 1)
        noisy = torch.cat([xy, heading[..., None]], dim=-1)
    noisy[..., 2] = wrap_angle(noisy[..., 2])
    return noisy.to(poses.dtype)


def _noisy_steps(
    exact: Tensor, noise: PoseNoise, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Drift-model steps of float64 poses ``(N, T, 3)``: the noisy steps ``(N, T-1, 3)`` and each
    step's true length ``(N, T-1)``."""
    steps = relative_pose(exact[:, 1:], exact[:, :-1])  # (N, T-1, 3) forward, lateral, turn
    n, t_len, _ = exact.shape
    eps = torch.randn((n, t_len - 1, 3), generator=generator, dtype=torch.float64)
    length = steps[..., :2].norm(dim=-1, keepdim=True)
    scale = torch.cat(
        [noise.position * length.expand(-1, -1, 2), torch.full_like(length, noise.radians)],
        dim=-1,
    )
    return steps + eps * scale, length[..., 0]


def causal_fused(
    poses: Tensor,
    jitter: PoseNoise,
    odometry: PoseNoise,
    generator: torch.Generator,
    chunk: int = 32,
) -> Tensor:
    """What a user who fuses a localiser with odometry knows at each frame: ``(N, T, T, 3)``,
    row ``t`` the whole trajectory fused from the observed poses of frames ``0 .. t-1`` (frame
    ``t`` and later follow the odometry; frame 0 is observed in row 0) and every odometry step.

    The observed poses are ``poses`` corrupted by ``jitter``, drawn from ``generator`` as
    :func:`corrupt` draws them (the same draws as the unfused row); the odometry is the true
    steps with ``odometry``'s drift-model noise, drawn next. The fusion weighs each source by its
    nominal standard deviation (``jitter``'s per frame; ``odometry``'s ``F`` times each step's
    length, and ``DEG``). Rows are solved ``chunk`` at a time."""
    if jitter.kind != "jitter" or odometry.kind != "drift":
        raise ValueError(
            f"causal_fused needs a jitter and a drift noise model, got {jitter.kind!r} and "
            f"{odometry.kind!r}"
        )
    observed = corrupt(poses, jitter, generator).double()
    steps, length = _noisy_steps(poses.double(), odometry, generator)
    n, t_len, _ = poses.shape
    frame = torch.arange(t_len)
    out = torch.empty((n, t_len, t_len, 3), dtype=torch.float64)
    for lo in range(0, t_len, chunk):
        times = torch.arange(lo, min(lo + chunk, t_len))
        c = times.shape[0]
        known = frame[None, :] <= (times[:, None] - 1).clamp(min=0)  # (c, T)
        out[:, times] = fuse_odometry(
            observed[:, None].expand(n, c, t_len, 3),
            steps[:, None].expand(n, c, t_len - 1, 3),
            position_std=jitter.position,
            heading_std=jitter.radians,
            action_position_std=(odometry.position * length)[:, None].expand(n, c, t_len - 1),
            action_heading_std=odometry.radians,
            known=known[None].expand(n, c, t_len),
        )
    return out.to(poses.dtype)


def pose_errors(noisy: Tensor, poses: Tensor) -> tuple[Tensor, Tensor]:
    """Per frame, the position error in cells and the absolute heading error in radians of
    ``noisy`` against ``poses`` (both ``(..., 3)``)."""
    position = (noisy[..., :2] - poses[..., :2]).norm(dim=-1)
    heading = wrap_angle(noisy[..., 2] - poses[..., 2]).abs()
    return position, heading


def nominal_std(
    noise: PoseNoise, poses: Tensor, episode: Tensor, steps: Tensor, query_step: Tensor
) -> tuple[Tensor, Tensor]:
    """The standard deviation of the error of each memory slot's pose relative to the query
    that ``noise`` implies, from the poses the memory sees.

    ``position_std`` is the root-mean-square error per axis of the slot's position in the
    query's frame, ``sqrt(E|error|^2 / 2)``; ``heading_std`` that of the relative yaw. With
    ``sigma`` the heading noise in radians and ``d`` the distance between slot and query:

    * jitter: heading ``sqrt(2) sigma``; position ``sqrt(2 XY^2 + sigma^2 d^2 / 2)`` (the two
      frames' position noise, and the query's heading noise turning the offset);
    * drift, over the ``n`` steps of lengths ``l_s`` between the slot's frame and the query's:
      heading ``sigma sqrt(n)``; position ``sqrt(F^2 sum l_s^2 + sigma^2 / 2 sum_s R_s^2)``:
      the turn noise of step ``s`` turns the query's frame against everything before the
      step's end, so the slot moves by the turn times its distance from that end, which
      ``R_s``, the path length from the slot's frame to the step's end, stands for (exact on
      a straight path, an upper bound otherwise). Step lengths are those of the poses the
      memory sees.

    Args:
        noise: the noise model.
        poses: ``(N, T, 3)`` the poses the memory sees.
        episode: ``(B,)`` long, each sample's episode.
        steps: ``(B, k)`` long, each slot's frame index.
        query_step: ``(B,)`` long, the query's frame index.

    Returns:
        ``position_std (B, k)`` in the poses' unit and ``heading_std (B, k)`` in radians
        (float32).
    """
    _check_poses(poses)
    if steps.dim() != 2 or episode.shape != query_step.shape or steps.shape[0] != episode.shape[0]:
        raise ValueError(
            "episode, steps and query_step must be (B,), (B, k) and (B,), got "
            f"{tuple(episode.shape)}, {tuple(steps.shape)} and {tuple(query_step.shape)}"
        )
    sigma = noise.radians
    if noise.kind == "jitter":
        own = poses[episode].double()
        slot = own.gather(1, steps[..., None].expand(-1, -1, 3))
        d2 = (slot[..., :2] - poses[episode, query_step][:, None, :2].double()).square().sum(-1)
        position = (2 * noise.position**2 + sigma**2 * d2 / 2).sqrt()
        heading = torch.full_like(position, math.sqrt(2) * sigma)
        return position.float(), heading.float()
    path = poses[episode].double()
    length = (path[:, 1:, :2] - path[:, :-1, :2]).norm(dim=-1)  # (B, T-1), step s = frame s+1
    zero = torch.zeros_like(length[:, :1])
    sq = torch.cat([zero, length.square().cumsum(1)], 1)  # (B, T): sum of l^2 up to frame t
    cum = torch.cat([zero, length.cumsum(1)], 1)  # (B, T): path length P_t to frame t
    s1 = torch.cat([zero, cum.cumsum(1)], 1)  # (B, T+1): sum of P_j for j < t
    s2 = torch.cat([zero, cum.square().cumsum(1)], 1)  # sum of P_j^2 for j < t
    q = query_step[:, None].expand_as(steps)
    lo, hi = torch.minimum(steps, q), torch.maximum(steps, q)
    n = (hi - lo).double()
    length_sq = sq.gather(1, hi) - sq.gather(1, lo)
    p_lo = cum.gather(1, lo)
    # sum over the turns of steps s = lo+1 .. hi of (P_s - P_lo)^2
    sum_p = s1.gather(1, hi + 1) - s1.gather(1, lo + 1)
    sum_p2 = s2.gather(1, hi + 1) - s2.gather(1, lo + 1)
    lever = (sum_p2 - 2 * p_lo * sum_p + n * p_lo.square()).clamp(min=0)
    position = (noise.position**2 * length_sq + sigma**2 * lever / 2).sqrt()
    heading = sigma * n.sqrt()
    return position.float(), heading.float()


def with_ray_std(
    memory: MemoryContext, position: Tensor, heading: Tensor, depth: float
) -> MemoryContext:
    """``memory`` with ``ray_std`` ``(B, k)`` from each slot's relative-pose std: ``position``
    (the poses' unit) and ``heading`` (radians), both ``(B, k)``, and the typical viewing
    ``depth`` (:func:`hybrid_cdit.memory.ray_angle_std`)."""
    expected = tuple(memory.mask.shape)
    if position.shape != expected or heading.shape != expected:
        raise ValueError(
            f"position and heading must have shape {expected}, got {tuple(position.shape)} "
            f"and {tuple(heading.shape)}"
        )
    std = ray_angle_std(position.double(), heading.double(), depth)
    return dataclasses.replace(memory, ray_std=std.to(memory.poses.dtype))
