"""``benchmarks/memory_recall.py`` and ``benchmarks/memory_capacity.py`` at a tiny size, on the
MuJoCo-free synthetic world."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
    # With hindsight one frame of the way out (e.g. x=4.5) holds at most 4 targets (x=3.6, 4.1,
    # 4.6 and 5.1 lie within one cell of it), and enough frames hold all 20.
    numpy_poses, numpy_revisit = poses[0].numpy(), revisit[0].numpy()
    assert recall.hindsight_held(numpy_poses, numpy_revisit, 1, args.context) == 4
    assert recall.hindsight_held(numpy_poses, numpy_revisit, 60, args.context) == 20


def test_end_to_end_synthetic(recall: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--world", "synthetic", "--episodes", "2", "--steps", "400", "--capacity", "20"]
    assert recall.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = ("recall_lru", "recall_policy", "recall_unlimited", "held_hindsight", "capacity")
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
