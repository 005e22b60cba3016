"""Pose corruption of the Memory Maze benchmark (``benchmarks/maze/noise.py``): the noise models
against hand values, a plain loop and Monte Carlo; the flags."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from benchmarks.maze import noise as mn

from hybrid_cdit import MemoryContext


def _walk(n: int, t_len: int, seed: int) -> torch.Tensor:
    """Random walks ``(n, t_len, 3)``: steps of 0 to 0.3 cells along the heading, turns of up to
    0.4 rad, some pure turns."""
    gen = torch.Generator().manual_seed(seed)
    turn = (torch.rand(n, t_len, generator=gen) - 0.5) * 0.8
    yaw = 0.3 + turn.cumsum(1)
    step = torch.rand(n, t_len, generator=gen) * 0.3
    step[:, ::7] = 0  # turns on the spot
    xy = torch.stack([step * yaw.cos(), step * yaw.sin()], -1).cumsum(1) + 2.0
    return torch.cat([xy, torch.atan2(yaw.sin(), yaw.cos())[..., None]], -1).float()


def _drift_reference(poses: torch.Tensor, eps: torch.Tensor, f: float, deg: float) -> torch.Tensor:
    """Dead reckoning written out frame by frame for one episode ``(T, 3)``, ``eps (T-1, 3)``."""
    p = poses.double().tolist()
    x, y, h = p[0]
    out = [[x, y, h]]
    for t in range(1, len(p)):
        (x0, y0, h0), (x1, y1, h1) = p[t - 1], p[t]
        c, s = math.cos(h0), math.sin(h0)
        fwd = c * (x1 - x0) + s * (y1 - y0)
        lat = -s * (x1 - x0) + c * (y1 - y0)
        turn = math.remainder(h1 - h0, 2 * math.pi)
        length = math.hypot(fwd, lat)
        fwd += f * length * float(eps[t - 1, 0])
        lat += f * length * float(eps[t - 1, 1])
        turn += math.radians(deg) * float(eps[t - 1, 2])
        x += math.cos(h) * fwd - math.sin(h) * lat
        y += math.sin(h) * fwd + math.cos(h) * lat
        h += turn
        out.append([x, y, math.remainder(h, 2 * math.pi)])
    return torch.tensor(out, dtype=torch.float64)


def test_jitter_is_zero_mean_with_the_given_deviation() -> None:
    poses = _walk(40, 250, 0)
    noise = mn.PoseNoise("jitter", 0.25, 7.5)
    noisy = mn.corrupt(poses, noise, torch.Generator().manual_seed(3))
    assert noisy.shape == poses.shape and noisy.dtype == poses.dtype
    err = noisy.double() - poses.double()
    err[..., 2] = torch.remainder(err[..., 2] + math.pi, 2 * math.pi) - math.pi
    # 10,000 draws per axis: the mean's s.e. is 1% of the s.d., the s.d.'s 0.7%
    for axis, sd in ((0, 0.25), (1, 0.25), (2, math.radians(7.5))):
        values = err[..., axis].flatten()
        assert abs(float(values.mean())) < 0.04 * sd
        assert float(values.std()) == pytest.approx(sd, rel=0.03)
    # x and y independent
    corr = torch.corrcoef(torch.stack([err[..., 0].flatten(), err[..., 1].flatten()]))[0, 1]
    assert abs(float(corr)) < 0.04
    assert bool((noisy[..., 2] >= -math.pi).all() and (noisy[..., 2] < math.pi).all())


def test_noise_free_drift_is_exact_and_the_same_seed_the_same_draw() -> None:
    poses = _walk(3, 250, 1)
    still = mn.corrupt(poses, mn.PoseNoise("drift", 0.0, 0.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(still, poses, atol=1e-5, rtol=0)
    for noise in (mn.PoseNoise("drift", 0.05, 1.0), mn.PoseNoise("jitter", 0.1, 3.0)):
        a = mn.corrupt(poses, noise, torch.Generator().manual_seed(7))
        b = mn.corrupt(poses, noise, torch.Generator().manual_seed(7))
        c = mn.corrupt(poses, noise, torch.Generator().manual_seed(8))
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)


def test_drift_integration_matches_a_frame_by_frame_loop() -> None:
    poses = _walk(2, 30, 2)
    f, deg = 0.1, 2.0
    got = mn.corrupt(poses, mn.PoseNoise("drift", f, deg), torch.Generator().manual_seed(5))
    # the same draw: corrupt takes (N, T-1, 3) standard normals from the generator
    eps = torch.randn((2, 29, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for i in range(2):
        expected = _drift_reference(poses[i], eps[i], f, deg)
        torch.testing.assert_close(got[i].double(), expected, atol=1e-5, rtol=0)
    assert torch.equal(got[:, 0], poses[:, 0])  # the true first pose


def test_drift_errors_grow_along_the_path() -> None:
    poses = _walk(64, 250, 3)
    noisy = mn.corrupt(poses, mn.PoseNoise("drift", 0.05, 1.0), torch.Generator().manual_seed(1))
    position, heading = mn.pose_errors(noisy, poses)
    assert float(position[:, 0].abs().max()) == 0.0 and float(heading[:, 0].max()) == 0.0
    assert float(position[:, 200].median()) > float(position[:, 20].median()) > 0
    assert float(heading[:, 200].median()) > float(heading[:, 20].median()) > 0
    # heading error is a random walk of 1 degree steps: its s.d. at frame t is sqrt(t) degrees
    drift = torch.remainder(noisy[:, 100, 2] - poses[:, 100, 2] + math.pi, 2 * math.pi) - math.pi
    assert float(drift.std()) == pytest.approx(math.radians(10.0), rel=0.25)


def test_pose_errors_by_hand() -> None:
    truth = torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    noisy = torch.tensor([[3.0, 4.0, -3.0], [1.0, 1.0, 0.5]])
    position, heading = mn.pose_errors(noisy, truth)
    torch.testing.assert_close(position, torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(heading, torch.tensor([2 * math.pi - 6.0, 0.5]))


def _relative_errors(
    poses: torch.Tensor, noise: mn.PoseNoise, slot: int, query: int, draws: int
) -> tuple[float, float]:
    """Monte Carlo: per-axis RMS position error and heading s.d. of the slot's pose relative to
    the query over ``draws`` corruptions of one episode ``(1, T, 3)``."""
    from hybrid_cdit.memory import relative_pose

    many = poses.expand(draws, -1, -1).contiguous()
    noisy = mn.corrupt(many, noise, torch.Generator().manual_seed(11)).double()
    true_rel = relative_pose(poses[:, slot].double(), poses[:, query].double())
    rel = relative_pose(noisy[:, slot], noisy[:, query])
    err = rel - true_rel
    err[:, 2] = torch.remainder(err[:, 2] + math.pi, 2 * math.pi) - math.pi
    return float(err[:, :2].square().sum(1).mean().div(2).sqrt()), float(err[:, 2].std())


@pytest.mark.parametrize(
    ("noise", "curved"),
    [
        (mn.PoseNoise("jitter", 0.2, 5.0), False),
        (mn.PoseNoise("drift", 0.05, 0.0), True),
        (mn.PoseNoise("drift", 0.0, 1.0), False),
        (mn.PoseNoise("drift", 0.05, 1.0), False),
    ],
)
def test_nominal_std_matches_monte_carlo(noise: mn.PoseNoise, curved: bool) -> None:
    if curved:
        poses = _walk(1, 60, 4)
    else:  # a straight corridor, 0.25 cells a step, heading 0.7 rad
        along = 0.25 * torch.arange(60.0)
        poses = torch.stack(
            [1 + along * math.cos(0.7), 1 + along * math.sin(0.7), torch.full((60,), 0.7)], -1
        )[None]
    slots, query = torch.tensor([[5, 30, 50]]), torch.tensor([55])
    position, heading = mn.nominal_std(noise, poses, torch.tensor([0]), slots, query)
    assert position.shape == heading.shape == (1, 3)
    for j, slot in enumerate(slots[0].tolist()):
        mc_pos, mc_head = _relative_errors(poses, noise, slot, 55, 4000)
        assert float(position[0, j]) == pytest.approx(mc_pos, rel=0.08), (slot, mc_pos)
        assert float(heading[0, j]) == pytest.approx(mc_head, rel=0.08, abs=1e-9), slot


def test_nominal_std_by_hand() -> None:
    # a straight path of steps 1, 2, 3 (frames at 0, 1, 3, 6); no turns
    poses = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [6, 0, 0]]])
    ep, slot, query = torch.tensor([0]), torch.tensor([[0, 2]]), torch.tensor([3])
    position, heading = mn.nominal_std(mn.PoseNoise("drift", 0.1, 2.0), poses, ep, slot, query)
    s = math.radians(2.0)
    # slot 0: l^2 = 1 + 4 + 9; levers (P_s - P_0) = 1, 3, 6
    assert float(position[0, 0]) == pytest.approx(math.sqrt(0.01 * 14 + s**2 / 2 * 46), rel=1e-6)
    assert float(heading[0, 0]) == pytest.approx(s * math.sqrt(3), rel=1e-6)
    # slot 2: one step of 3, lever 3
    assert float(position[0, 1]) == pytest.approx(math.sqrt(0.01 * 9 + s**2 / 2 * 9), rel=1e-6)
    assert float(heading[0, 1]) == pytest.approx(s, rel=1e-6)
    position, heading = mn.nominal_std(mn.PoseNoise("jitter", 0.1, 2.0), poses, ep, slot, query)
    expected = [math.sqrt(0.02 + s**2 * 36 / 2), math.sqrt(0.02 + s**2 * 9 / 2)]
    torch.testing.assert_close(position[0], torch.tensor(expected))
    torch.testing.assert_close(heading[0], torch.full((2,), math.sqrt(2) * s))
    with pytest.raises(ValueError, match="must be"):
        mn.nominal_std(mn.PoseNoise("jitter", 0.1, 2.0), poses, ep, slot[0], query)


@pytest.mark.parametrize(
    "text", ["0.1", "0.1,2,3", "a,2", "-0.1,2", "0.1,-2", "nan,1", "0.1,inf", "", "0.1;2"]
)
def test_bad_flag_values_name_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match=r"--pose-drift expects F,DEG.*got '"):
        mn.PoseNoise.parse(text, "drift", "--pose-drift")
    parser = argparse.ArgumentParser()
    parser.add_argument("--pose-jitter", type=mn.noise_flag("jitter", "--pose-jitter"))
    with pytest.raises(argparse.ArgumentTypeError, match="--pose-jitter expects XY,DEG"):
        mn.noise_flag("jitter", "--pose-jitter")(text)


def test_flag_values_parse() -> None:
    assert mn.PoseNoise.parse("0.25,7.5", "jitter", "--x") == mn.PoseNoise("jitter", 0.25, 7.5)
    assert mn.noise_flag("drift", "--y")("0.05,1") == mn.PoseNoise("drift", 0.05, 1.0)
    assert mn.PoseNoise("drift", 0.05, 1.0).label() == "drift 5% / 1 deg"
    with pytest.raises(ValueError, match="kind must be one of"):
        mn.PoseNoise("gauss", 0.1, 1.0)
    with pytest.raises(ValueError, match="poses must be a"):
        mn.corrupt(torch.zeros(4, 3), mn.PoseNoise("jitter", 0.1, 1.0), torch.Generator())


def _memory() -> MemoryContext:
    return MemoryContext(
        frames=torch.zeros(2, 3, 3, 4, 4),
        poses=torch.zeros(2, 3, 3),
        scores=torch.ones(2, 3),
        mask=torch.ones(2, 3, dtype=torch.bool),
        query_pose=torch.zeros(2, 3),
    )


def test_ray_std_from_position_and_heading_std() -> None:
    std = torch.full((2, 3), 0.5)
    out = mn.with_ray_std(_memory(), std, 2 * std, depth=2.0)
    assert out.ray_std is not None
    torch.testing.assert_close(out.ray_std, torch.full((2, 3), math.hypot(1.0, 0.25)))
    with pytest.raises(ValueError, match="must have shape"):
        mn.with_ray_std(_memory(), std[:1], std, depth=1.0)
