"""Learned slot-pose refinement: ``SlotPoseRefiner``, ``refine_poses`` and ``relative_pose_loss``
against per-slot references written with explicit trigonometry."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from hybrid_cdit.memory import (
    MemoryContext,
    SlotPoseRefiner,
    refine_poses,
    relative_pose_loss,
)


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _relative(pose: list[float], ref: list[float]) -> list[float]:
    dx, dy = pose[0] - ref[0], pose[1] - ref[1]
    c, s = math.cos(ref[2]), math.sin(ref[2])
    return [c * dx + s * dy, -s * dx + c * dy, _wrap(pose[2] - ref[2])]


def _compose(ref: list[float], rel: list[float]) -> list[float]:
    c, s = math.cos(ref[2]), math.sin(ref[2])
    return [ref[0] + c * rel[0] - s * rel[1], ref[1] + s * rel[0] + c * rel[1],
            _wrap(ref[2] + rel[2])]  # fmt: skip


def _memory(b: int, k: int, seed: int, channels: int = 3, size: int = 8) -> MemoryContext:
    gen = torch.Generator().manual_seed(seed)
    poses = torch.cat(
        [torch.randn(b, k, 2, generator=gen) * 3, (torch.rand(b, k, 1, generator=gen) * 2 - 1) * 3],
        dim=-1,
    )
    mask = torch.rand(b, k, generator=gen) < 0.7
    mask[:, 0] = True
    return MemoryContext(
        frames=torch.randn(b, k, channels, size, size, generator=gen),
        poses=poses,
        scores=torch.rand(b, k, generator=gen),
        mask=mask,
        query_pose=torch.randn(b, 3, generator=gen),
        steps=torch.randint(0, 50, (b, k), generator=gen),
    )


def _reference(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random reference frames ``(b, 3, 8, 8)`` and their poses ``(b, 3)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, generator=gen), torch.randn(b, 3, generator=gen)


def _trained_like(seed: int, channels: int = 3) -> SlotPoseRefiner:
    """A refiner whose output layer is not zero (so it moves poses), in eval mode."""
    torch.manual_seed(seed)
    refiner = SlotPoseRefiner(in_channels=channels, width=4, hidden=16)
    last = refiner.head[-1]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.normal_(last.weight, std=0.2)
    torch.nn.init.normal_(last.bias, std=0.2)
    return refiner.eval()


def test_an_untrained_refiner_returns_the_prior() -> None:
    memory = _memory(3, 4, seed=0)
    gen = torch.Generator().manual_seed(1)
    reference = torch.randn(3, 3, 8, 8, generator=gen)
    reference_pose = torch.randn(3, 3, generator=gen)
    out = refine_poses(memory, reference, reference_pose, SlotPoseRefiner(width=4).eval())
    torch.testing.assert_close(out.poses, memory.poses, atol=1e-5, rtol=0)
    for field in ("frames", "scores", "mask", "query_pose", "steps"):
        assert getattr(out, field) is getattr(memory, field), field
    assert torch.equal(out.poses[~memory.mask], memory.poses[~memory.mask])


def test_refine_poses_matches_a_per_slot_reference() -> None:
    b, k = 3, 4
    memory = _memory(b, k, seed=2)
    reference, reference_pose = _reference(b, seed=3)
    refiner = _trained_like(0)
    out = refine_poses(memory, reference, reference_pose, refiner)
    moved = 0
    for i in range(b):
        ref = reference_pose[i].tolist()
        for j in range(k):
            if not memory.mask[i, j]:
                assert torch.equal(out.poses[i, j], memory.poses[i, j])
                continue
            prior = torch.tensor([_relative(memory.poses[i, j].tolist(), ref)])
            with torch.no_grad():
                rel = refiner(reference[i : i + 1], memory.frames[i, j : j + 1], prior)[0]
            want = torch.tensor(_compose(ref, rel.tolist()))
            got = out.poses[i, j]
            torch.testing.assert_close(got[:2], want[:2], atol=1e-5, rtol=0)
            assert abs(_wrap(float(got[2] - want[2]))) < 1e-5
            moved += int((got - memory.poses[i, j]).abs().max() > 1e-3)
    assert moved > 0  # the reference is not trivially the prior


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), b=st.integers(2, 4), k=st.integers(1, 3))
def test_samples_do_not_see_each_other(seed: int, b: int, k: int) -> None:
    memory = _memory(b, k, seed=seed)
    reference, reference_pose = _reference(b, seed=seed + 1)
    refiner = _trained_like(seed % 7)
    out = refine_poses(memory, reference, reference_pose, refiner)
    other = _memory(b, k, seed=seed + 99)
    changed = dataclasses.replace(
        memory,
        frames=torch.cat([memory.frames[:1], other.frames[1:]]),
        poses=torch.cat([memory.poses[:1], other.poses[1:]]),
        mask=torch.cat([memory.mask[:1], other.mask[1:]]),
    )
    other_reference, other_pose = _reference(b, seed=seed + 2)
    reference2 = torch.cat([reference[:1], other_reference[1:]])
    pose2 = torch.cat([reference_pose[:1], other_pose[1:]])
    out2 = refine_poses(changed, reference2, pose2, refiner)
    torch.testing.assert_close(out2.poses[0], out.poses[0], atol=1e-6, rtol=0)


def test_the_refiner_learns_a_correction_the_frames_carry() -> None:
    """Frames whose pixels hold the prior's error: a few hundred steps must learn to remove
    most of it."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    refiner = SlotPoseRefiner(in_channels=3, width=8, hidden=32, scale=1.0)
    optimizer = torch.optim.Adam(refiner.parameters(), lr=3e-3)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        true = torch.randn(n, 3, generator=gen) * torch.tensor([1.0, 1.0, 0.5])
        error = torch.randn(n, 3, generator=gen) * torch.tensor([0.4, 0.4, 0.2])
        frames = error[:, :, None, None].expand(n, 3, 8, 8).clone()
        return torch.zeros(n, 3, 8, 8), frames, true + error, true

    refiner.train()
    for _ in range(300):
        reference, frames, prior, true = batch(64)
        loss = relative_pose_loss(refiner(reference, frames, prior), true)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    refiner.eval()
    reference, frames, prior, true = batch(512)
    with torch.no_grad():
        refined = refiner(reference, frames, prior)
    before = (prior[:, :2] - true[:, :2]).norm(dim=1).median()
    after = (refined[:, :2] - true[:, :2]).norm(dim=1).median()
    assert after < 0.3 * before, (float(before), float(after))


def test_relative_pose_loss_against_hand_values() -> None:
    estimate = torch.tensor([[0.0, 0.0, 3.1], [1.0, 0.05, 0.0]])
    target = torch.tensor([[0.0, 0.0, -3.1], [0.0, 0.0, 0.0]])
    # positions: smooth L1 (beta 0.1) per element, mean over 4: |1| -> 0.95, 0.05 -> 0.0125
    position = (0.95 + 0.05**2 / (2 * 0.1)) / 4
    turn = 2 * math.pi - 6.2  # the wrapped difference of the first row, 0.0832
    heading = (turn - 0.025) / 2  # beta 0.05: |d| - beta / 2, mean over 2 rows
    got = relative_pose_loss(estimate, target)
    assert float(got) == pytest.approx(position + heading, rel=1e-5)
    with pytest.raises(ValueError, match=r"estimate must be a \(N, 3\) tensor"):
        relative_pose_loss(estimate[:, :2], target)
    with pytest.raises(ValueError, match="target must have estimate's shape"):
        relative_pose_loss(estimate, target[:1])


def test_saved_weights_give_the_same_poses(tmp_path: Path) -> None:
    refiner = _trained_like(4)
    path = tmp_path / "refiner.safetensors"
    save_file({k: v.contiguous() for k, v in refiner.state_dict().items()}, str(path))
    loaded = SlotPoseRefiner(width=4, hidden=16)
    loaded.load_state_dict(load_file(str(path)), strict=True)
    memory = _memory(2, 3, seed=5)
    reference, pose = torch.randn(2, 3, 8, 8), torch.randn(2, 3)
    a = refine_poses(memory, reference, pose, refiner)
    b = refine_poses(memory, reference, pose, loaded.eval())
    assert torch.equal(a.poses, b.poses)


def test_float64_memory_keeps_its_dtype() -> None:
    memory = _memory(2, 2, seed=6)
    memory = dataclasses.replace(
        memory, poses=memory.poses.double(), query_pose=memory.query_pose.double(),
        scores=memory.scores.double(), frames=memory.frames.double(),
    )  # fmt: skip
    out = refine_poses(memory, torch.randn(2, 3, 8, 8).double(), torch.randn(2, 3).double(),
                       _trained_like(1))  # fmt: skip
    assert out.poses.dtype == torch.float64


def test_bad_arguments_raise_naming_them() -> None:
    memory = _memory(2, 3, seed=7)
    reference, pose = torch.randn(2, 3, 8, 8), torch.randn(2, 3)
    refiner = SlotPoseRefiner(width=4)
    before = memory.poses.clone()
    with pytest.raises(ValueError, match="memory must be a MemoryContext"):
        refine_poses("memory", reference, pose, refiner)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="refiner must be a SlotPoseRefiner, got Linear"):
        refine_poses(memory, reference, pose, torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"reference must have shape \(2, 3, 8, 8\), got"):
        refine_poses(memory, reference[:, :, :4], pose, refiner)
    with pytest.raises(ValueError, match=r"reference_pose must have shape \(2, 3\), got \(1, 3\)"):
        refine_poses(memory, reference, pose[:1], refiner)
    with pytest.raises(ValueError, match="reference_pose"):
        refine_poses(memory, reference, torch.full((2, 3), math.nan), refiner)
    with pytest.raises(ValueError, match=r"refiner\.in_channels = 4 channels, got 3"):
        refine_poses(memory, reference, pose, SlotPoseRefiner(in_channels=4, width=4))
    five = dataclasses.replace(memory, poses=torch.zeros(2, 3, 5), query_pose=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"memory.poses must be \(x, y, yaw\) poses \(P = 3\)"):
        refine_poses(five, reference, pose, refiner)
    assert torch.equal(memory.poses, before)
    for name, kwargs in (("in_channels", {"in_channels": 0}), ("width", {"width": 1.5}),
                         ("hidden", {"hidden": True})):  # fmt: skip
        with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
            SlotPoseRefiner(**kwargs)  # type: ignore[arg-type]


def test_corrections_below_the_gate_are_not_applied() -> None:
    b, k = 3, 4
    memory = _memory(b, k, seed=8)
    reference, reference_pose = _reference(b, seed=9)
    refiner = _trained_like(2)
    full = refine_poses(memory, reference, reference_pose, refiner)
    min_shift, min_turn = 0.2, 0.15
    gated = refine_poses(
        memory, reference, reference_pose, refiner, min_shift=min_shift, min_turn=min_turn
    )
    kept = applied = 0
    for i in range(b):
        ref = reference_pose[i].tolist()
        for j in range(k):
            before = _relative(memory.poses[i, j].tolist(), ref)
            after = _relative(full.poses[i, j].tolist(), ref)
            shift = math.hypot(after[0] - before[0], after[1] - before[1])
            turn = abs(_wrap(after[2] - before[2]))
            if memory.mask[i, j] and (shift >= min_shift or turn >= min_turn):
                assert torch.equal(gated.poses[i, j], full.poses[i, j])
                applied += 1
            else:
                assert torch.equal(gated.poses[i, j], memory.poses[i, j])
                kept += int(bool(memory.mask[i, j]))
    assert applied > 0 and kept > 0  # both sides of the gate are exercised
    with pytest.raises(ValueError, match=r"min_shift must be >= 0, got -0\.1"):
        refine_poses(memory, reference, reference_pose, refiner, min_shift=-0.1)
    with pytest.raises(ValueError, match="min_turn must be a finite real number"):
        refine_poses(memory, reference, reference_pose, refiner, min_turn=math.inf)


def test_the_refiner_refuses_mismatched_inputs() -> None:
    refiner = SlotPoseRefiner(width=4).eval()
    ref, frames, prior = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.zeros(2, 3)
    assert refiner(ref, frames, prior).shape == (2, 3)
    with pytest.raises(ValueError, match=r"reference must be a \(N, 3, H, W\) tensor, got"):
        refiner(torch.zeros(2, 4, 8, 8), frames, prior)
    with pytest.raises(ValueError, match=r"frames must have reference's shape \(2, 3, 8, 8\)"):
        refiner(ref, torch.zeros(2, 3, 4, 4), prior)
    with pytest.raises(ValueError, match=r"prior must have shape \(2, 3\), got \(2, 2\)"):
        refiner(ref, frames, prior[:, :2])
