"""Retrieval strategies and top-k selection as pure, batched functions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_cdit.memory import (
    STRATEGIES,
    FovParams,
    MemoryContext,
    distance_scores,
    fov_scores,
    fov_select,
    pose_scores,
    retrieve,
    select_memory,
    select_top_k,
    to_pose5,
)
from hybrid_cdit.memory import fov as fov_module


def random_poses(gen: torch.Generator, b: int, m: int, p: int, spread: float = 8.0):
    poses = torch.randn(b, m, p, generator=gen, dtype=torch.float64) * spread
    query = torch.randn(b, p, generator=gen, dtype=torch.float64) * spread
    poses[..., -1] = torch.rand(b, m, generator=gen, dtype=torch.float64) * 2 * math.pi - math.pi
    query[..., -1] = torch.rand(b, generator=gen, dtype=torch.float64) * 2 * math.pi - math.pi
    if p == 5:
        poses[..., 3] = torch.rand(b, m, generator=gen, dtype=torch.float64) - 0.5
        query[..., 3] = torch.rand(b, generator=gen, dtype=torch.float64) - 0.5
    return poses, query


def pose(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- scores


@pytest.mark.parametrize("p", [3, 5])
def test_distance_scores_equal_the_seed_formula(p):
    gen = torch.Generator().manual_seed(p)
    poses, query = random_poses(gen, 3, 7, p)
    valid = torch.rand(3, 7, generator=gen) > 0.3
    got = distance_scores(poses, query, valid, scale=4.0)
    n = 2 if p == 3 else 3
    for b in range(3):
        for m in range(7):
            d = math.sqrt(sum((float(poses[b, m, i]) - float(query[b, i])) ** 2 for i in range(n)))
            want = math.exp(-d / 4.0) if bool(valid[b, m]) else 0.0
            assert float(got[b, m]) == pytest.approx(want, abs=1e-12)


def test_distance_ignores_heading_and_default_scale_is_ten():
    poses = torch.stack([pose(3.0, 4.0, 0.0), pose(3.0, 4.0, 3.0)])[None]
    got = distance_scores(poses, pose(0.0, 0.0, 1.0)[None])
    torch.testing.assert_close(got, torch.full((1, 2), math.exp(-0.5), dtype=torch.float64))


def test_pose_scores_formula_for_planar_poses():
    gen = torch.Generator().manual_seed(0)
    poses, query = random_poses(gen, 2, 6, 3)
    got = pose_scores(poses, query)
    dyaw = poses[..., 2] - query[:, None, 2]
    want = distance_scores(poses, query) * (1 + torch.cos(dyaw)) / 2
    torch.testing.assert_close(got, want)


def test_pose_prefers_the_same_heading_over_a_nearer_frame_facing_away():
    query = pose(0.0, 0.0, 0.0)[None]
    memory = torch.stack([pose(2.0, 0.0, 0.1), pose(0.5, 0.0, math.pi)])[None]
    scores = pose_scores(memory, query)
    assert float(scores[0, 0]) > 0.7 > float(scores[0, 1])
    assert float(scores[0, 1]) == pytest.approx(0.0, abs=1e-12)  # same place, facing away
    assert distance_scores(memory, query)[0, 1] > distance_scores(memory, query)[0, 0]
    selection = select_memory(memory, query, 1, strategy="pose", threshold=0.0)
    assert int(selection.indices[0, 0]) == 0


def test_pose_scores_use_pitch_for_five_d_poses():
    query = pose(0.0, 0.0, 0.0, 0.0, 0.0)[None]
    memory = torch.stack([pose(0, 0, 0, 0, 0), pose(0, 0, 0, math.pi / 2, 0)])[None]
    torch.testing.assert_close(pose_scores(memory, query), pose(1.0, 0.5)[None])


def test_scores_lie_in_unit_interval_and_are_zero_for_invalid_slots():
    gen = torch.Generator().manual_seed(3)
    poses, query = random_poses(gen, 4, 9, 5)
    valid = torch.rand(4, 9, generator=gen) > 0.5
    poses[~valid] = float("nan")  # the content of empty slots is never read
    for scores in (
        distance_scores(poses, query, valid),
        pose_scores(poses, query, valid),
        fov_scores(poses, query, valid),
    ):
        assert bool(((scores >= 0) & (scores <= 1)).all())
        assert bool((scores[~valid] == 0).all())


# ----------------------------------------------------------------------------- fov


def worldmem_in_view(points, cams, half_h, half_v):
    """WorldMem's angle test (azimuth and elevation differences), here in radians."""
    vec = points[:, None] - cams[:, :, None, :3]
    azimuth = torch.atan2(vec[..., 1], vec[..., 0])
    elevation = torch.atan2(vec[..., 2], torch.hypot(vec[..., 0], vec[..., 1]))
    d_az = (azimuth - cams[..., 4, None]).abs() % (2 * math.pi)
    d_az = torch.where(d_az > math.pi, 2 * math.pi - d_az, d_az)
    return (d_az < half_h) & ((elevation - cams[..., 3, None]).abs() < half_v)


@pytest.mark.parametrize("p", [3, 5])
def test_fov_in_view_test_equals_worldmem_angle_test(p):
    gen = torch.Generator().manual_seed(10 + p)
    poses, query = random_poses(gen, 3, 20, p)
    params = FovParams()
    points = fov_module._query_view_points(query, params, None)
    n = 2 if p == 3 else 3
    cams = poses.clone()
    cams[..., :n] -= query[:, None, :n]
    ours = fov_module._in_view(points, cams, params)
    reference = worldmem_in_view(points, to_pose5(cams), params.half_fov_h, params.half_fov_v)
    assert torch.equal(ours, reference)
    # Every sampled point lies in the query's own view.
    own = to_pose5(query)[:, None].clone()
    own[..., :3] = 0
    assert bool(worldmem_in_view(points, own, params.half_fov_h, params.half_fov_v).all())


def test_fov_prefers_a_frame_facing_the_view_over_a_nearer_frame_facing_away():
    query = pose(0.0, 0.0, 0.0)[None]
    memory = torch.stack([pose(-3.0, 0.0, 0.0), pose(0.5, 0.0, math.pi)])[None]
    scores = fov_scores(memory, query)
    assert float(scores[0, 0]) > 0.7
    assert float(scores[0, 1]) < 0.05
    selection = select_memory(memory, query, 2, strategy="fov", threshold=0.5)
    assert selection.indices[0].tolist() == [0, 1]
    assert selection.mask[0].tolist() == [True, False]


def test_fov_identical_pose_scores_one():
    gen = torch.Generator().manual_seed(4)
    _, query = random_poses(gen, 3, 1, 5)
    assert torch.equal(fov_scores(query[:, None], query), torch.ones(3, 1, dtype=torch.float64))


def test_fov_greedy_selection_covers_different_parts_of_the_view():
    half = math.radians(30)
    query = pose(0.0, 0.0, 0.0)[None]
    left, right = pose(0.0, 0.0, half), pose(0.0, 0.0, -half)
    memory = torch.stack([left, left, right])[None]
    steps = torch.tensor([[2, 1, 0]])
    selection = fov_select(memory, query, None, 2, steps=steps)
    assert sorted(selection.indices[0].tolist()) == [0, 2]  # not the duplicate of slot 0
    by_score = select_top_k(fov_scores(memory, query), None, 2, steps=steps)
    assert sorted(by_score.indices[0].tolist()) == [0, 1]  # plain top-k takes the duplicate


def test_fov_recency_penalty():
    query = pose(0.0, 0.0, 0.0)[None]
    memory = torch.stack([pose(0.0, 0.0, 0.0), pose(0.0, 0.0, math.radians(15))])[None]
    steps = torch.tensor([[0, 10]])
    overlap = fov_scores(memory, query)[0]
    assert float(overlap[0]) > float(overlap[1]) > float(overlap[0]) - 0.2
    query_step = torch.tensor([11])
    recent = fov_select(memory, query, None, 1, steps=steps, query_step=query_step)
    assert int(recent.indices[0, 0]) == 1
    params = FovParams(recency_weight=0.0)
    best = fov_select(memory, query, None, 1, steps=steps, query_step=query_step, params=params)
    assert int(best.indices[0, 0]) == 0


def test_fov_is_deterministic_given_a_generator():
    gen = torch.Generator().manual_seed(5)
    poses, query = random_poses(gen, 4, 12, 5)
    runs = [fov_scores(poses, query, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = fov_scores(poses, query, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)
    assert torch.equal(fov_scores(poses, query), fov_scores(poses, query))  # default seed
    a = fov_select(poses, query, None, 4, generator=torch.Generator().manual_seed(1))
    b = fov_select(poses, query, None, 4, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_fov_overlap_estimate_is_accurate():
    gen = torch.Generator().manual_seed(6)
    poses, query = random_poses(gen, 2, 16, 5)
    coarse = fov_scores(poses, query)
    fine = fov_scores(poses, query, params=FovParams(num_points=16384))
    assert float((coarse - fine).abs().max()) < 0.06


# ----------------------------------------------------------------------------- selection


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    m=st.integers(1, 8),
    k=st.integers(1, 10),
    threshold=st.sampled_from([0.0, 0.3, 0.7]),
    seed=st.integers(0, 2**16),
)
def test_select_top_k_matches_a_sorted_reference(b, m, k, threshold, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(b, m, generator=gen, dtype=torch.float64).round(decimals=1)  # ties
    valid = torch.rand(b, m, generator=gen) > 0.3
    steps = torch.randint(0, 5, (b, m), generator=gen)
    got = select_top_k(scores, valid, k, threshold, steps=steps)
    assert got.indices.shape == got.scores.shape == got.mask.shape == (b, k)
    for row in range(b):
        slots = [j for j in range(m) if valid[row, j]]
        # score descending, then more recent step, then lower slot
        slots.sort(key=lambda j: (-float(scores[row, j]), -int(steps[row, j]), j))
        want = slots[:k]
        n = len(want)
        assert got.indices[row, :n].tolist() == want
        assert got.scores[row, :n].tolist() == [float(scores[row, j]) for j in want]
        assert got.mask[row, :n].tolist() == [float(scores[row, j]) >= threshold for j in want]
        assert not bool(got.mask[row, n:].any())


def test_select_top_k_masks_extra_slots_when_k_exceeds_storage():
    scores = torch.tensor([[0.9, 0.8]])
    got = select_top_k(scores, None, 5, 0.5)
    assert got.indices.tolist() == [[0, 1, 0, 0, 0]]
    assert got.mask.tolist() == [[True, True, False, False, False]]
    assert got.scores.tolist()[0][2:] == [0.0, 0.0, 0.0]


def test_select_top_k_tie_breaking_without_steps_prefers_lower_slot():
    got = select_top_k(torch.full((1, 4), 0.5), None, 4)
    assert got.indices.tolist() == [[0, 1, 2, 3]]
    steps = torch.tensor([[1, 3, 3, 2]])
    assert select_top_k(torch.full((1, 4), 0.5), None, 4, steps=steps).indices.tolist() == [
        [1, 2, 3, 0]
    ]


def test_threshold_and_empty_slots_are_masked():
    poses = torch.stack([pose(1.0, 0.0, 0.0), pose(50.0, 0.0, 0.0), pose(2.0, 0.0, 0.0)])[None]
    valid = torch.tensor([[True, True, False]])
    got = select_memory(poses, pose(0.0, 0.0, 0.0)[None], 3, valid=valid)
    assert got.indices[0].tolist()[:2] == [0, 1]
    assert got.mask[0].tolist() == [True, False, False]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("p", [3, 5])
def test_permuting_stored_frames_does_not_change_what_is_retrieved(strategy, p):
    gen = torch.Generator().manual_seed(20 + p)
    b, m, k = 3, 10, 4
    poses, query = random_poses(gen, b, m, p, spread=3.0)
    steps = torch.stack([torch.randperm(m, generator=gen) for _ in range(b)])
    ids = torch.arange(b * m).reshape(b, m)
    perm = torch.stack([torch.randperm(m, generator=gen) for _ in range(b)])
    rows = torch.arange(b)[:, None]
    kwargs = {"strategy": strategy, "threshold": 0.2}
    a = select_memory(poses, query, k, steps=steps, **kwargs)
    c = select_memory(poses[rows, perm], query, k, steps=steps[rows, perm], **kwargs)
    for row in range(b):
        got_a = {
            (int(ids[row, j]), round(float(s), 9))
            for j, s in zip(a.indices[row], a.scores[row], strict=True)
        }
        got_c = {
            (int(ids[row, perm[row, j]]), round(float(s), 9))
            for j, s in zip(c.indices[row], c.scores[row], strict=True)
        }
        assert got_a == got_c
        assert a.mask[row].sum() == c.mask[row].sum()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_sample_depends_only_on_its_own_memory(strategy):
    gen = torch.Generator().manual_seed(30)
    poses, query = random_poses(gen, 4, 9, 5, spread=3.0)
    steps = torch.randint(0, 20, (4, 9), generator=gen)
    full = select_memory(poses, query, 5, steps=steps, strategy=strategy, threshold=0.1)
    other, _ = random_poses(gen, 4, 9, 5)
    other[2] = poses[2]
    mixed = select_memory(other, query, 5, steps=steps, strategy=strategy, threshold=0.1)
    alone = select_memory(
        poses[2:3], query[2:3], 5, steps=steps[2:3], strategy=strategy, threshold=0.1
    )
    for x, y, z in zip(full, mixed, alone, strict=True):
        assert torch.equal(x[2], y[2]) and torch.equal(x[2], z[0])


def test_retrieve_builds_a_memory_context():
    gen = torch.Generator().manual_seed(9)
    b, m, k = 2, 5, 7
    frames = torch.randn(b, m, 3, 2, 2, generator=gen)
    poses, query = random_poses(gen, b, m, 3, spread=1.0)
    poses, query = poses.float(), query.float()
    valid = torch.tensor([[True, True, False, True, False], [False] * 5])
    frames[~valid] = float("nan")  # never read
    ctx = retrieve(frames, poses, query, k, valid=valid, threshold=0.0)
    assert isinstance(ctx, MemoryContext)
    assert ctx.frames.shape == (b, k, 3, 2, 2) and ctx.poses.shape == (b, k, 3)
    assert ctx.mask.sum(1).tolist() == [3, 0]
    sel = select_memory(poses, query, k, valid=valid, threshold=0.0)
    for j in range(3):
        assert torch.equal(ctx.frames[0, j], frames[0, sel.indices[0, j]])
        assert torch.equal(ctx.poses[0, j], poses[0, sel.indices[0, j]])
    assert bool(torch.isfinite(ctx.frames).all())
    torch.testing.assert_close(ctx.query_pose, query)


# ----------------------------------------------------------------------------- validation


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"strategy must be one of \('distance', 'fov', 'pose'\)"):
        select_memory(torch.zeros(1, 2, 3), torch.zeros(1, 3), strategy="nearest")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: distance_scores(torch.zeros(1, 2, 4), torch.zeros(1, 4)), "memory_poses"),
        (lambda: distance_scores(torch.zeros(1, 2, 3), torch.zeros(1, 5)), "query_pose"),
        (lambda: distance_scores(torch.zeros(1, 2, 3), torch.zeros(2, 3)), "query_pose"),
        (lambda: distance_scores(torch.zeros(2, 3), torch.zeros(2, 3)), "memory_poses"),
        (lambda: distance_scores(torch.zeros(1, 0, 3), torch.zeros(1, 3)), "memory_poses"),
        (
            lambda: distance_scores(torch.full((1, 2, 3), float("nan")), torch.zeros(1, 3)),
            "memory_poses must be finite",
        ),
        (
            lambda: pose_scores(torch.zeros(1, 2, 3), torch.tensor([[0.0, float("inf"), 0.0]])),
            "query_pose must be finite",
        ),
        (
            lambda: distance_scores(torch.zeros(1, 2, 3), torch.zeros(1, 3), torch.ones(1, 2)),
            "valid",
        ),
        (lambda: distance_scores(torch.zeros(1, 2, 3), torch.zeros(1, 3), scale=0.0), "scale"),
        (lambda: select_top_k(torch.zeros(1, 2), None, 0), "k"),
        (lambda: select_top_k(torch.zeros(1, 2), None, 1, float("nan")), "threshold"),
        (lambda: select_top_k(torch.zeros(1, 2), None, 1, steps=torch.zeros(1, 2)), "steps"),
        (lambda: select_memory(torch.zeros(1, 2, 3), torch.zeros(1, 3), 0), "k"),
        (lambda: fov_select(torch.zeros(1, 2, 3), torch.zeros(1, 3), None, 0), "k"),
        (lambda: FovParams(half_fov_h=4.0), "half_fov_h"),
        (lambda: FovParams(half_fov_v=0.0), "half_fov_v"),
        (lambda: FovParams(num_points=0), "num_points"),
        (lambda: FovParams(recency_weight=-1.0), "recency_weight"),
        (
            lambda: select_memory(torch.zeros(1, 2, 3), torch.zeros(1, 3), fov={"radius": 3.0}),
            "fov must be a FovParams or None, got dict",
        ),
        (
            lambda: fov_select(torch.zeros(1, 2, 3), torch.zeros(1, 3), None, 1, params={}),
            "params must be a FovParams or None, got dict",
        ),
        (
            lambda: fov_scores(torch.zeros(1, 2, 3), torch.zeros(1, 3), params=30.0),
            "params must be a FovParams or None, got float",
        ),
        (
            lambda: select_memory(torch.zeros(1, 2, 3), torch.zeros(1, 3), generator=0),
            "generator must be a torch.Generator or None, got int",
        ),
        (
            lambda: fov_scores(torch.zeros(1, 2, 3), torch.zeros(1, 3), generator="seed"),
            "generator must be a torch.Generator or None, got str",
        ),
        (
            lambda: distance_scores(torch.zeros(1, 2, 3), torch.zeros(1, 3, device="meta")),
            "query_pose must hold data, got a tensor on the meta device",
        ),
        (
            lambda: pose_scores(torch.zeros(1, 2, 3, device="meta"), torch.zeros(1, 3)),
            "memory_poses must hold data",
        ),
        (
            lambda: distance_scores(
                torch.zeros(1, 2, 3),
                torch.zeros(1, 3),
                torch.ones(1, 2, dtype=torch.bool).to_sparse(),
            ),
            "valid must be a dense",
        ),
        (
            lambda: select_top_k(
                torch.zeros(1, 2), None, 1, steps=torch.zeros(1, 2, device="meta")
            ),
            "steps must hold data",
        ),
        (
            lambda: fov_select(
                torch.zeros(1, 2, 3),
                torch.zeros(1, 3),
                None,
                1,
                query_step=torch.zeros(1, dtype=torch.long, device="meta"),
            ),
            "query_step must hold data",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
