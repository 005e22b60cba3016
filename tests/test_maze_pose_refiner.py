"""The Memory Maze benchmark's slot-pose refiner: its training pairs, priors and command, on
synthetic episodes (no MuJoCo)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from benchmarks.maze import pose_refiner as pr
from benchmarks.maze import protocol as mmem
from benchmarks.maze import worlds as mt
from benchmarks.maze.noise import PoseNoise

from hybrid_cdit.memory import SlotPoseRefiner, relative_pose
from tests.test_maze_baselines import TINY

pytest_plugins = ("tests.maze_fixtures",)  # the episodes and one_thread fixtures
pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = mmem.MemorySettings(context=2, capacity=40, top_k=3, threshold=0.5, scale=4.0)


def test_training_pairs_are_every_close_pair_apart_in_time() -> None:
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 25, 2, generator=gen) * 3
    poses = torch.cat([xy, (torch.rand(2, 25, 1, generator=gen) * 2 - 1) * 3], dim=-1)
    got = pr.training_pairs(poses, distance=1.0, turn=math.radians(50), gap=2)
    want = set()
    for n in range(2):
        for i in range(25):
            for j in range(25):
                d = float((poses[n, i, :2] - poses[n, j, :2]).norm())
                turn = abs((float(poses[n, i, 2] - poses[n, j, 2]) + math.pi) % (2 * math.pi)
                           - math.pi)  # fmt: skip
                if d <= 1.0 and turn <= math.radians(50) and abs(i - j) > 2:
                    want.add((n, i, j))
    assert {tuple(r) for r in got.tolist()} == want
    assert len(want) > 10


def test_priors_are_the_true_relative_poses_plus_the_drawn_noise(
    episodes: list[mt.Episode],
) -> None:
    data = mmem.Data(episodes, stride=4, size=8, settings=SETTINGS)
    pairs = pr.training_pairs(data.poses)[:64]
    n, ref, other = pairs.unbind(1)
    true = relative_pose(data.poses[n, other].double(), data.poses[n, ref].double()).float()
    none = PoseNoise("jitter", 0.0, 0.0)
    reference, frames, prior, got_true = pr.draw_pairs(
        data.frames, data.poses, pairs, none, torch.Generator().manual_seed(0), mirror=False
    )
    assert torch.equal(reference, data.frames[n, ref])
    assert torch.equal(frames, data.frames[n, other])
    torch.testing.assert_close(got_true, true)
    torch.testing.assert_close(prior, true)
    # mirrored pairs: both frames flipped left to right, y and yaw negated
    _, frames_m, _, true_m = pr.draw_pairs(
        data.frames, data.poses, pairs, none, torch.Generator().manual_seed(1)
    )
    flipped = (true_m[:, 1] != true[:, 1]) | (true_m[:, 2] != true[:, 2])
    assert 0 < int(flipped.sum()) < 64
    sign = torch.tensor([1.0, -1.0, -1.0])
    torch.testing.assert_close(true_m[flipped], true[flipped] * sign)
    torch.testing.assert_close(frames_m[flipped], data.frames[n, other][flipped].flip(-1))
    # noise: per pair a scale in [0, 1) times the given s.d.
    noise = PoseNoise("jitter", 0.5, 10.0)
    _, _, noisy, clean = pr.draw_pairs(
        data.frames, data.poses, pr.training_pairs(data.poses), noise,
        torch.Generator().manual_seed(2), mirror=False,
    )  # fmt: skip
    error = noisy - clean
    assert 0.1 < float(error[:, 0].std()) < 0.5
    assert float(error[:, :2].abs().max()) < 0.5 * 6


def test_the_command_trains_saves_and_scores_one_refiner_per_seed(
    episodes: list[mt.Episode],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(pr, "load_episodes", lambda *a, **k: episodes[:1])
    monkeypatch.setattr(pr, "held_out_episodes", lambda args: episodes[1:])
    pr.main([*TINY, "--models-from", str(tmp_path), "--seeds", "0,1", "--refiner-steps", "3"])
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["steps"] == 3 and set(summary["seeds"]) == {"0", "1"}
    for seed in (0, 1):
        refiner = pr.load_refiner(tmp_path, seed)
        assert isinstance(refiner, SlotPoseRefiner) and not refiner.training
        figures = summary["seeds"][str(seed)]
        assert figures["prior_position_error"] > 0
        assert math.isfinite(figures["refined_heading_error_deg"])
    first = pr.load_refiner(tmp_path, 0).state_dict()
    second = pr.load_refiner(tmp_path, 1).state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)  # seeded per seed
    with pytest.raises(FileNotFoundError, match="no refiner at"):
        pr.load_refiner(tmp_path, 2)
    with pytest.raises(SystemExit):
        pr.parse_args(["--models-from", str(tmp_path), "--refiner-steps", "0"])
    with pytest.raises(SystemExit):
        pr.parse_args(["--models-from", str(tmp_path), "--prior-noise", "0.5"])
