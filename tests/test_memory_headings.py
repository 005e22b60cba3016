"""Content-based heading refinement: fitted turns against views rendered independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_cdit.memory import MemoryContext, heading_offsets, refine_headings

FOV = math.radians(80.0)
SIDE = 48


def _render(yaw: float, side: int = SIDE, fov: float = FOV, phase: float = 0.0) -> torch.Tensor:
    """A ``(3, side, side)`` view from a level pinhole camera at ``yaw`` of a scene at infinity
    whose colour is a smooth function of azimuth and elevation: pixel by pixel, in float64, from
    the camera-frame ray ``(1, -u tan(fov/2), -v tan(fov/2))`` of each pixel centre."""
    t = math.tan(fov / 2)
    out = np.zeros((3, side, side))
    for i in range(side):
        for j in range(side):
            u = (2 * j + 1) / side - 1
            v = (2 * i + 1) / side - 1
            forward, left, up = 1.0, -u * t, -v * t
            azimuth = yaw + math.atan2(left, forward)
            elevation = math.atan2(up, math.hypot(forward, left))
            for c in range(3):
                out[c, i, j] = (
                    math.sin(3 * azimuth + c + phase)
                    + 0.6 * math.cos(5 * azimuth - 2 * c + phase)
                    + 0.5 * math.sin(4 * elevation + c)
                )
    return torch.from_numpy(out).float()


@settings(max_examples=40, deadline=None)
@given(
    ref_yaw=st.floats(-math.pi, math.pi),
    turn=st.floats(-0.4, 0.4),
    prior_error=st.floats(-0.15, 0.15),
)
def test_heading_offsets_recover_a_turn(ref_yaw: float, turn: float, prior_error: float) -> None:
    frame = _render(ref_yaw + turn)[None]
    reference = _render(ref_yaw)[None]
    prior = torch.tensor([turn + prior_error])
    offset, confidence = heading_offsets(frame, reference, prior, FOV)
    error = math.remainder(float(offset[0]) - turn, 2 * math.pi)
    assert abs(error) < math.radians(0.5)
    assert float(confidence[0]) > 5.0


def test_heading_offsets_unrelated_frames_are_not_confident() -> None:
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(8, 3, SIDE, SIDE, generator=gen)
    reference = torch.randn(8, 3, SIDE, SIDE, generator=gen)
    prior = torch.linspace(-1.0, 1.0, 8)
    offset, confidence = heading_offsets(frames, reference, prior, FOV)
    assert bool((confidence < 1.2).all()), confidence
    assert bool(((offset - prior).abs() <= math.radians(30.0) + 1e-5).all())


def test_heading_offsets_without_overlap_keep_the_prior() -> None:
    frame = _render(0.0)[None]
    prior = torch.tensor([math.pi - 0.1])  # facing away: no candidate sees enough
    offset, confidence = heading_offsets(frame, frame, prior, FOV)
    assert float(offset[0]) == pytest.approx(float(prior[0]))
    assert float(confidence[0]) == 0.0


@pytest.mark.parametrize("pose_dim", [3, 5])
def test_refine_headings_replaces_confident_slots_only(pose_dim: int) -> None:
    ref_yaw = torch.tensor([0.3, -2.0])
    turns = torch.tensor([[0.2, -0.25, 0.0], [0.1, 0.0, 0.05]])
    frames = torch.stack(
        [
            torch.stack([_render(float(r + d)) for d in row])
            for r, row in zip(ref_yaw, turns, strict=True)
        ]
    )
    frames[0, 2] = torch.randn(3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[True, True, True], [True, False, True]])
    noisy_yaw = ref_yaw[:, None] + turns + torch.tensor([[0.12, -0.1, 0.05], [-0.08, 0.2, 0.1]])
    poses = torch.zeros(2, 3, pose_dim)
    poses[..., 0] = torch.arange(6.0).view(2, 3)
    poses[..., -1] = noisy_yaw
    if pose_dim == 5:
        poses[..., 2] = 1.5
    reference_pose = torch.zeros(2, pose_dim)
    reference_pose[:, -1] = ref_yaw
    memory = MemoryContext(
        frames=frames,
        poses=poses,
        scores=torch.ones(2, 3),
        mask=mask,
        query_pose=torch.zeros(2, pose_dim),
    )
    before = poses.clone()
    reference = torch.stack([_render(float(r)) for r in ref_yaw])
    refined, changed = refine_headings(memory, reference, reference_pose, FOV)
    assert changed.tolist() == [[True, True, False], [True, False, True]]
    assert torch.equal(memory.poses, before)  # the input is not modified
    fitted = refined.poses[..., -1] - (ref_yaw[:, None] + turns)
    assert bool((fitted[changed].abs() < math.radians(0.5)).all()), fitted
    assert torch.equal(refined.poses[~changed], before[~changed])
    assert torch.equal(refined.poses[..., :-1], before[..., :-1])
    assert refined.frames is memory.frames and torch.equal(refined.mask, mask)


def test_refine_headings_rejects_bad_input() -> None:
    memory = MemoryContext(
        frames=torch.zeros(2, 3, 3, 8, 8),
        poses=torch.zeros(2, 3, 3),
        scores=torch.ones(2, 3),
        mask=torch.ones(2, 3, dtype=torch.bool),
        query_pose=torch.zeros(2, 3),
    )
    ref, pose = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"reference must have shape \(2, 3, 8, 8\), got \(2, 3, 8\)"
    ):
        refine_headings(memory, ref[..., 0], pose, FOV)
    with pytest.raises(ValueError, match=r"reference_pose must have shape \(2, 3\)"):
        refine_headings(memory, ref, pose[:1], FOV)
    with pytest.raises(ValueError, match=r"min_confidence must be >= 1, got 0\.5"):
        refine_headings(memory, ref, pose, FOV, min_confidence=0.5)
    with pytest.raises(ValueError, match="fov must be in"):
        refine_headings(memory, ref, pose, math.pi)
    with pytest.raises(ValueError, match="step must be <= search"):
        refine_headings(memory, ref, pose, FOV, step=1.0, search=0.5)
    with pytest.raises(ValueError, match="min_overlap must be in"):
        refine_headings(memory, ref, pose, FOV, min_overlap=1.5)


def test_cost_benchmark_prints_its_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import refine_headings_cost

    refine_headings_cost.main(
        ["--variant", "S/2", "--input-size", "8", "--batch", "1", "--k", "2", "--repeats", "1",
         "--loop", "2", "--trajectory", "12"]
    )  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    ratios = [float(line.rsplit(maxsplit=1)[-1]) for line in lines[1:]]
    assert len(ratios) == 5 and all(r > 0 for r in ratios)
    assert "refine_poses / one hybrid forward" in lines[3]
    assert lines[5].startswith("close_loops (12 frames, 2 pairs a frame, 4 passes)")
