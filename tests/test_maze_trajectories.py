"""Memory Maze trajectory module without MuJoCo: explorer, labels, convention checks, cache."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmarks.maze import worlds as mt


def _brute_labels(
    poses: np.ndarray, context: int, min_gap: int = 0
) -> tuple[list[bool], list[bool]]:
    revisit, novel = [], []
    for t in range(len(poses)):
        r, near = False, False
        for s in range(t):
            d = math.dist(poses[t, :2], poses[s, :2])
            a = abs(math.remainder(float(poses[t, 2] - poses[s, 2]), 2 * math.pi))
            identical = d == 0 and a == 0
            if s < t - max(context, min_gap) and d <= 1.0 and a <= math.pi / 4 and not identical:
                r = True
            if s < t - context and d <= 2.0:
                near = True
        revisit.append(r)
        novel.append(not near and not r)
    return revisit, novel


@pytest.mark.parametrize("min_gap", [None, 6])
def test_revisit_labels_match_brute_force(min_gap: int | None) -> None:
    rng = np.random.default_rng(0)
    poses = np.concatenate(
        [rng.uniform(0, 5, (40, 2)), rng.uniform(-math.pi, math.pi, (40, 1))], axis=1
    ).astype(np.float32)
    poses[30] = poses[5]  # identical pose: never a revisit by itself
    poses[31] = poses[6] + np.array([0.5, 0.0, 0.3], dtype=np.float32)  # a genuine revisit
    revisit, novel = mt.revisit_labels(poses, 2, min_gap=min_gap)
    ref_r, ref_n = _brute_labels(poses, 2, min_gap or 0)
    assert revisit.tolist() == ref_r
    assert novel.tolist() == ref_n
    assert revisit[31]
    assert 0 < revisit.sum() < 40 and novel.sum() > 0


@pytest.mark.parametrize("gap", [1, 5, 12])
def test_long_return_labels_match_brute_force(gap: int) -> None:
    rng = np.random.default_rng(1)
    poses = np.concatenate(
        [rng.uniform(0, 4, (60, 2)), rng.uniform(-math.pi, math.pi, (60, 1))], axis=1
    ).astype(np.float32)
    poses[50] = poses[10] + np.array([0.2, 0.1, 0.1], dtype=np.float32)  # seen 40 frames ago
    expected = []
    for t in range(len(poses)):
        latest = -1
        for s in range(t - 2):
            d = math.dist(poses[t, :2], poses[s, :2])
            a = abs(math.remainder(float(poses[t, 2] - poses[s, 2]), 2 * math.pi))
            if d <= 1.0 and a <= math.pi / 4 and not (d == 0 and a == 0):
                latest = s
        expected.append(latest >= 0 and t - latest >= gap)
    got = mt.long_return_labels(poses, 2, gap)
    assert got.tolist() == expected
    revisit, _ = mt.revisit_labels(poses, 2)
    assert not (got & ~revisit).any()  # every long return is a revisit
    assert got.sum() > 0
    if gap == 12:
        assert got.sum() < revisit.sum()
    with pytest.raises(ValueError, match="gap"):
        mt.long_return_labels(poses, 2, 0)


def test_identical_pose_alone_is_not_a_revisit() -> None:
    poses = np.array([[0, 0, 0], [5, 5, 0], [9, 9, 0], [0, 0, 0]], dtype=np.float32)
    revisit, novel = mt.revisit_labels(poses, 1)
    assert revisit.tolist() == [False] * 4
    assert novel.tolist() == [True, True, True, False]


def test_bfs_path_is_a_shortest_free_path() -> None:
    layout = np.array(
        [[1, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=np.uint8
    )  # layout[y, x]
    path = mt.bfs_path(layout, (0, 0), (0, 3))
    assert path[0] == (0, 0) and path[-1] == (0, 3)
    assert len(path) == 10  # along row 0, down column 3, back along row 2, down to (0, 3)
    for (x0, y0), (x1, y1) in itertools.pairwise(path):
        assert abs(x0 - x1) + abs(y0 - y1) == 1 and layout[y1, x1] == 1
    assert mt.bfs_path(layout, (0, 0), (1, 3)) == []


def test_explorer_covers_the_maze_and_returns_after_long_absences() -> None:
    episode = mt.synthetic_episode(9, seed=3, steps=1000)
    cells = {(int(x), int(y)) for x, y, _ in episode.poses}
    assert all(episode.layout[y, x] for x, y in cells)
    assert len(cells) >= 0.85 * int(episode.layout.sum())
    frames = episode.poses[::4]
    revisit, novel = mt.revisit_labels(frames, 2)
    late, _ = mt.revisit_labels(frames, 2, min_gap=30)
    assert late.sum() >= 0.5 * revisit.sum() > 20
    assert novel.sum() > 0


def test_conventions_hold_on_synthetic_episodes_and_catch_a_mirror() -> None:
    episode = mt.synthetic_episode(9, seed=1, steps=400)
    mt.check_conventions(episode.poses, episode.actions)
    mirrored = episode.poses * np.array([1, -1, -1], dtype=np.float32)  # y and yaw flipped
    with pytest.raises(RuntimeError, match="left turns increase yaw"):
        mt.check_conventions(mirrored, episode.actions)
    backwards = episode.poses.copy()
    backwards[:, 2] = mt.np.arctan2(-np.sin(backwards[:, 2]), -np.cos(backwards[:, 2]))
    with pytest.raises(RuntimeError, match="forward moves along the heading"):
        mt.check_conventions(backwards, episode.actions)


def test_episode_rejects_inconsistent_arrays() -> None:
    images = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    poses = np.zeros((5, 3), dtype=np.float32)
    layout = np.ones((9, 9), dtype=np.uint8)
    with pytest.raises(ValueError, match="actions must have shape"):
        mt.Episode(images, poses, np.zeros(5, dtype=np.int64), layout)
    with pytest.raises(ValueError, match="images must be uint8"):
        mt.Episode(images.astype(np.float32), poses, np.zeros(4, dtype=np.int64), layout)  # type: ignore[arg-type]


def _refuse(maze_size: int, seed: int, steps: int) -> mt.Episode:
    raise AssertionError("the cache should have been used")


def test_load_episodes_generates_in_parallel_then_reads_the_cache(tmp_path: Path) -> None:
    first = mt.load_episodes(
        9, 5, 3, 60, cache_dir=tmp_path, workers=2, generate=mt.synthetic_episode, progress=None
    )
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 3
    again = mt.load_episodes(9, 5, 3, 60, cache_dir=tmp_path, generate=_refuse, progress=None)
    for a, b, s in zip(first, again, mt.episode_seeds(5, 3), strict=True):
        ref = mt.synthetic_episode(9, s, 60)
        for x, y, z in ((a.images, b.images, ref.images), (a.poses, b.poses, ref.poses)):
            np.testing.assert_array_equal(x, z)
            np.testing.assert_array_equal(y, z)
        np.testing.assert_array_equal(b.actions, ref.actions)
        np.testing.assert_array_equal(b.layout, ref.layout)
    held_out = mt.load_episodes(
        9, 6, 1, 60, cache_dir=tmp_path, workers=1, generate=mt.synthetic_episode, progress=None
    )
    assert not np.array_equal(held_out[0].layout, first[0].layout)


def test_damaged_cache_file_is_regenerated(tmp_path: Path) -> None:
    (episode,) = mt.load_episodes(
        9, 0, 1, 40, cache_dir=tmp_path, workers=1, generate=mt.synthetic_episode, progress=None
    )
    path = mt.cache_path(tmp_path, 9, mt.episode_seeds(0, 1)[0], 40)
    path.write_bytes(b"not a zip file")
    (again,) = mt.load_episodes(
        9, 0, 1, 40, cache_dir=tmp_path, workers=1, generate=mt.synthetic_episode, progress=None
    )
    np.testing.assert_array_equal(again.images, episode.images)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"maze_size": 10}, "maze_size"), ({"steps": 1}, "steps"), ({"workers": 0}, "workers")],
)
def test_load_episodes_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict[str, int], match: str
) -> None:
    args = {"maze_size": 9, "seed": 0, "episodes": 1, "steps": 10, "workers": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        mt.load_episodes(cache_dir=tmp_path, generate=_refuse, progress=None, **args)


def test_training_validation_and_test_maze_seeds_never_meet() -> None:
    stride = mt.DATASET_STRIDE
    train = np.arange(mt.TRAINING_DATASETS.stop * stride)  # every training dataset, full size
    assert train[-1] == (mt.TRAINING_DATASETS.stop - 1) * stride + stride - 1
    test = set(mt.episode_seeds(mt.TEST_DATASET, stride))
    validation = set(mt.episode_seeds(mt.VALIDATION_DATASET, stride))
    assert min(test) > int(train.max()) and not test & validation
    assert not np.isin(train, list(test | validation)).any()
    assert mt.episode_seeds(3, 2) == [3 * stride, 3 * stride + 1]
    with pytest.raises(ValueError, match=r"episodes must be in \[1, 1009\], got 1010"):
        mt.episode_seeds(0, stride + 1)
    with pytest.raises(ValueError, match=r"seed must be a training dataset seed .* got 1000"):
        mt.check_training_dataset(mt.TEST_DATASET)
    assert mt.held_out_dataset("test") == 1000 and mt.held_out_dataset("validation") == 2000
    with pytest.raises(ValueError, match="split must be one of"):
        mt.held_out_dataset("train")


def test_synthetic_layouts_of_the_three_splits_are_disjoint() -> None:
    def layouts(dataset: int, count: int) -> set[bytes]:
        seeds = mt.episode_seeds(dataset, count)
        return {mt.synthetic_episode(9, s, 2).layout.tobytes() for s in seeds}  # type: ignore[union-attr]

    train = set().union(*(layouts(d, 8) for d in range(3)))
    test, validation = layouts(mt.TEST_DATASET, 8), layouts(mt.VALIDATION_DATASET, 8)
    assert len(train) == 24 and len(test) == len(validation) == 8
    assert not train & test and not train & validation and not test & validation


def test_benchmarks_evaluate_on_the_split_they_are_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import eviction_study, memory_recall
    from benchmarks.maze import pipeline

    loaded: list[int] = []

    def fake_load(size: int, seed: int, episodes: int, steps: int, **_: object) -> list[mt.Episode]:
        loaded.append(seed)
        return [mt.synthetic_episode(size, s, 40) for s in mt.episode_seeds(seed, episodes)]

    monkeypatch.setattr(pipeline, "load_episodes", fake_load)
    threads = str(torch.get_num_threads())  # run() sets torch's thread count: keep it
    small = ["--eval-episodes", "1", "--size", "16", "--stride", "2", "--threads", threads]
    pipeline.run(pipeline.parse_args([*small, "--memory-report-only"]))
    assert loaded == [mt.VALIDATION_DATASET]  # design decisions: validation mazes
    tiny = [
        "--steps", "1", "--pretrain-steps", "0", "--batch", "2", "--hidden", "16", "--depth", "2",
        "--heads", "2", "--patch-size", "4", "--ddim-steps", "1", "--max-revisit-targets", "2",
        "--no-long-rollouts", "--no-outback", "--no-baselines", "--rollout-length", "2",
        "--rollout-min-start", "4", "--train-episodes", "1", "--seed", "3", "--curve-every", "1",
        "--bootstrap-draws", "10", "--eval-t", "500",
    ]  # fmt: skip
    loaded.clear()
    pipeline.run(pipeline.parse_args([*small, *tiny]))
    # the reported tables: test mazes; the learning curves: validation mazes; training: dataset 3
    assert loaded == [mt.TEST_DATASET, mt.VALIDATION_DATASET, 3]
    assert pipeline.parse_args([]).split == "test"  # the reported tables: test mazes
    with pytest.raises(SystemExit):
        pipeline.parse_args(["--seed", "1000"])  # a training seed never names held-out mazes
    assert memory_recall.parse_args([]).seed == mt.VALIDATION_DATASET
    assert eviction_study.parse_args([]).seed == mt.VALIDATION_DATASET


def test_default_training_length() -> None:
    """The documented lengths: 2000 + 4000 steps by default (chosen on validation mazes),
    300 + 400 with --quick; explicit flags win."""
    from benchmarks.maze import pipeline

    default, quick = pipeline.parse_args([]), pipeline.parse_args(["--quick"])
    assert (default.pretrain_steps, default.steps) == (2000, 4000)
    assert (quick.pretrain_steps, quick.steps) == (300, 400)
    given = pipeline.parse_args(["--steps", "7", "--pretrain-steps", "0"])
    assert (given.pretrain_steps, given.steps) == (0, 7)
