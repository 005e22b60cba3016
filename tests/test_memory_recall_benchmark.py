"""``benchmarks/memory_recall.py`` and ``benchmarks/memory_capacity.py`` at a tiny size, on the
MuJoCo-free synthetic world."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from .benchmark_helpers import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    return load_benchmark(name)


@pytest.fixture(scope="module")
def recall() -> ModuleType:
    return load("memory_recall")


def test_same_place_is_the_revisit_rule(recall: ModuleType) -> None:
    a = torch.tensor([0.0, 0.0, 0.0])
    cases = {
        (1.0, 0.0, 0.0): True,  # 1 cell
        (0.6, 0.8, 0.0): True,
        (1.01, 0.0, 0.0): False,
        (0.0, 0.0, math.pi / 4 - 1e-4): True,
        (0.0, 0.0, -math.pi / 4 - 1e-3): False,
        (0.5, 0.0, 2 * math.pi - 0.1): True,  # yaw wraps
        (0.0, 0.0, 0.0): False,  # the identical pose is no revisit
    }
    for pose, expected in cases.items():
        assert bool(recall.same_place(torch.tensor(pose), a)) == expected, pose


def test_replay_counts_a_return_after_a_long_absence(recall: ModuleType) -> None:
    """Out 15 cells along x and back: LRU with 8 slots holds only the frames that just left
    the context window (2.5 cells and more behind the walker), so it holds nothing of the way
    out; coverage keeps about one frame per 1.5 cells of the way out, the unlimited buffer
    everything."""
    from hybrid_cdit.memory import MemoryBuffer

    out = [(0.5 * i, 0.0, 0.0) for i in range(30)]
    back = [(0.5 * i + 0.1, 0.0, 0.0) for i in range(29, -1, -1)]
    poses = torch.tensor([out + back])
    revisit = torch.zeros(1, 60, dtype=torch.bool)
    revisit[0, 40:] = True  # targets on the way back, x from 9.6 down to 0.1
    args = recall.parse_args(["--world", "synthetic", "--k", "2"])
    buffers = {
        "lru": MemoryBuffer(1, 8, frame_shape=(1, 1, 1), pose_dim=3),
        "policy": MemoryBuffer(1, 8, frame_shape=(1, 1, 1), pose_dim=3, write_policy="coverage"),
        "unlimited": MemoryBuffer(1, 60, frame_shape=(1, 1, 1), pose_dim=3),
    }
    tallies = recall.replay(poses, revisit, buffers, args)
    assert tallies["unlimited"].recalled == tallies["unlimited"].held == 20
    assert tallies["lru"].held == 0
    assert tallies["policy"].held >= 15
    assert all(t.recalled <= t.held for t in tallies.values())
    # Told the route, the coverage buffer keeps frames of the way out for the way back.
    routed = recall.parse_args(["--world", "synthetic", "--k", "2", "--route", "60"])
    for buffer in buffers.values():  # a new replay starts from step 0 with empty buffers
        buffer.reset()
    buffers["policy"] = MemoryBuffer(
        1, 8, frame_shape=(1, 1, 1), pose_dim=3, write_policy="coverage"
    )
    assert recall.replay(poses, revisit, buffers, routed)["policy"].held == 20
    # With hindsight one frame of the way out (e.g. x=4.5) holds at most 4 targets (x=3.6, 4.1,
    # 4.6 and 5.1 lie within one cell of it), and enough frames hold all 20.
    numpy_poses, numpy_revisit = poses[0].numpy(), revisit[0].numpy()
    assert recall.hindsight_held(numpy_poses, numpy_revisit, 1, args.context) == 4
    assert recall.hindsight_held(numpy_poses, numpy_revisit, 60, args.context) == 20


def test_clairvoyant_buffer_changes_its_frames_along_the_journey(recall: ModuleType) -> None:
    """Place A, away, back to A (3 targets), place B, away, back to B (3 targets). One slot
    chosen once holds one place's 3 targets; one slot that knows the future keeps A until
    its return, then takes B: all 6."""
    a = [(0.01 * i, 0.0, 0.0) for i in range(6)]
    away = [(10.0 + 2 * i, 0.0, 0.0) for i in range(10)]
    back_a = [(0.2 + 0.01 * i, 0.0, 0.0) for i in range(3)]
    b = [(30.0 + 0.01 * i, 0.0, 0.0) for i in range(6)]
    away_b = [(50.0 + 2 * i, 0.0, 0.0) for i in range(10)]
    back_b = [(30.2 + 0.01 * i, 0.0, 0.0) for i in range(3)]
    poses = np.array(a + away + back_a + b + away_b + back_b)
    revisit = np.zeros(len(poses), dtype=bool)
    revisit[[16, 17, 18, 35, 36, 37]] = True
    assert recall.hindsight_held(poses, revisit, 1, 4) == 3
    assert recall.clairvoyant_held(poses, revisit, 1, 4) == 6
    assert recall.clairvoyant_held(poses, revisit, 2, 4) == 6


def test_eviction_rules_on_a_small_journey() -> None:
    """Three frames of place 0, then places 5 and 10 fill and overflow two slots; the journey
    returns to 0 and then to 5 (context 0: a frame is written just before the next target).
    Worked out by hand for each rule (distances in cells along x, merge radius 0.8)."""
    study = load("eviction_study")
    poses = np.array([(x, 0.0, 0.0) for x in (0.0, 0.1, 0.2, 5.0, 10.0, 0.3, 5.1)])
    revisit = np.array([False] * 5 + [True, True])
    args = study.parse_args(["--context", "0", "--capacity", "2"])
    expected = {
        "least-visited": 1,  # 0 has 3 visits: 5 goes; 0.3 held, 5.1 not
        "most-recent": 1,  # 5 visited last: goes
        "history": 1,  # 5 alone holds 1 earlier frame, 0 holds 3: 5 goes
        "freeze": 2,  # 10 is left out; both held
        "least-recent": 0,  # 0 goes for 10, 5 goes for 0.3
        "farthest": 1,  # 0 goes for 10 (farthest from it), 10 goes for 0.3; 5.1 held
        "redundant": 0,  # 0 and 5 are the closest pair (first goes), then 5 for 0.3
    }
    for rule, count in expected.items():
        assert study.held(rule, poses, revisit, args) == count, rule


def test_study_features_and_fit() -> None:
    """The online features of two kept frames, worked out by hand, and the logistic fit
    recovering the direction of known weights."""
    study = load("eviction_study")
    poses = np.array([(0.0, 0.0, 0.0), (3.0, 4.0, math.pi / 2), (0.0, 0.0, math.pi / 2)])
    journey = study.Journey(poses, 1.0, math.pi / 4)
    kept = study.Kept([0, 1], visits=[4, 1], last=[1, 1], first=[0, 1])
    got = study.features(journey, poses, kept, 2)  # the agent at the origin, facing +y
    # frame 0: same place, turned 90 degrees: view distance sin(45)/sin(22.5) = 1.848
    # frame 1: 5 cells away along the heading's side (bearing (3, 4) / 5 . (0, 1) = 0.8)
    near0 = math.sin(math.pi / 4) / math.sin(math.pi / 8)
    expected = np.array(
        [
            [math.log(4), math.log(2), math.log(3), near0, math.log(near0), 0.0, 0.0, 0.0],
            [0.0, math.log(2), math.log(2), 5.0, math.log(5.0), 5.0, 1.0, 0.8],
        ]
    )
    np.testing.assert_allclose(got, expected, atol=1e-9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    truth = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    y = (torch.rand(4000, generator=gen, dtype=torch.float64) < torch.sigmoid(x @ truth)).double()
    w = study._logistic(torch.cat([x, torch.ones(4000, 1, dtype=x.dtype)], 1), y)
    assert torch.allclose(w[:3], truth, atol=0.25) and abs(float(w[3])) < 0.25


def test_eviction_study_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    study = load("eviction_study")
    argv = ["--world", "synthetic", "--episodes", "2", "--steps", "300", "--capacity", "15"]
    assert study.main([*argv, "--fit-episodes", "2", "--fit-seed", "7", "--fit-steps", "300"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["capacity"] == 15 and result["episodes"] == 2 and result["revisit_targets"] > 30
    for rule in (*study.RULES, "clairvoyant"):
        assert 0.0 <= result[f"held_{rule}"] <= 1.0, rule


def test_end_to_end_synthetic(recall: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--world", "synthetic", "--episodes", "2", "--steps", "400", "--capacity", "20"]
    assert recall.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = ("recall_lru", "recall_policy", "recall_unlimited", "held_hindsight", "capacity")
    keys += ("held_clairvoyant",)
    for key in (*keys, "episodes"):
        assert key in result
    assert result["capacity"] == 20 and result["episodes"] == 2 and result["revisit_targets"] > 50
    assert result["held_unlimited"] == 1.0
    assert result["recall_policy"] > result["recall_lru"]
    for name in ("lru", "policy", "unlimited"):
        assert 0.0 <= result[f"recall_{name}"] <= result[f"held_{name}"] <= 1.0


def test_capacity_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    capacity = load("memory_capacity")
    argv = [
        "--write-batch", "4", "--write-capacity", "5", "--repeats", "3", "--batch-size", "2",
        "--capacities", "5", "20", "--retrieve-repeats", "2", "--frame-shape", "1", "2", "2",
    ]  # fmt: skip
    assert capacity.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["frame_bytes_per_sample_20"] == 20 * 4 * 4
    # poses (3 float32), steps and last_used (int64), valid (bool) per slot; next_step per sample
    assert result["index_bytes_per_sample_20"] == 20 * (12 + 16 + 1) + 8
    assert result["write_ratio_walk"] > 0 and result["retrieve_ms_5"] > 0
    assert result["write_ratio_route_random"] > 0 and result["route"] == 64
