"""Write policies of ``MemoryBuffer``: values of the view distance, what each policy keeps on
hand-computed journeys, per-sample isolation, state round trips and the index device."""

from __future__ import annotations

import math

import pytest
import torch

from hybrid_cdit.memory import (
    WRITE_POLICIES,
    CoveragePolicy,
    MemoryBuffer,
    check_write_policy,
    view_distance,
)

FRAME = (1, 2, 2)


def frames_for(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, *FRAME)


def stored_values(buffer: MemoryBuffer, sample: int = 0) -> list[float]:
    state = buffer.state_dict()
    return sorted(
        float(state["frames"][sample, j, 0, 0, 0])
        for j in range(buffer.capacity)
        if state["valid"][sample, j]
    )


def walk(buffer: MemoryBuffer, xs: list[float], yaw: float = 0.0) -> None:
    """Write frames valued ``x`` at poses ``(x, 0, yaw)``, one sample."""
    for x in xs:
        buffer.add(frames_for([x]), torch.tensor([[x, 0.0, yaw]]))


def test_view_distance_values():
    a = torch.tensor([[0.0, 0.0, 0.0]])
    # position term: |(3, 4)| / 2 = 2.5; angle term: sin(0.3) / sin(pi / 8)
    b = torch.tensor([[3.0, 4.0, 0.6]])
    expected = max(2.5, math.sin(0.3) / math.sin(math.pi / 8))
    got = view_distance(a, b, radius=2.0)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # angle-dominated, and symmetric bit for bit
    c = torch.tensor([[0.5, 0.0, 2.0]])
    expected = max(0.5, math.sin(1.0) / math.sin(math.pi / 8))
    assert float(view_distance(a, c)) == pytest.approx(expected, rel=1e-6)
    assert torch.equal(view_distance(a, c), view_distance(c, a))
    # exactly at both tolerances: the same view
    d = torch.tensor([[1.0, 0.0, math.pi / 4]])
    assert float(view_distance(a, d)) == pytest.approx(1.0, abs=1e-6)
    # 5-D poses use z and pitch
    e = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])
    f = torch.tensor([[0.0, 0.0, 0.5, 0.4, 0.0]])
    expected = max(0.5, math.sin(0.2) / math.sin(math.pi / 8))
    assert float(view_distance(e, f)) == pytest.approx(expected, rel=1e-6)


def test_coverage_keeps_the_places_lru_forgets():
    """A walk out to x=10 that lingers there: LRU keeps the last frames only, coverage keeps
    one frame per place (the first) and counts a revisit as a use."""
    xs = [0.0, 5.0, 10.0, 10.5, 11.0, 10.25]
    lru = MemoryBuffer(1, 3, frame_shape=FRAME, pose_dim=3)
    coverage = MemoryBuffer(1, 3, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    walk(lru, xs)
    walk(coverage, xs)
    assert stored_values(lru) == [10.25, 10.5, 11.0]
    # 10.5 and 10.25 show 10's view (kept); 11.0 is 1.0 from 10: the same view too
    assert stored_values(coverage) == [0.0, 5.0, 10.0]
    assert coverage.state_dict()["next_step"].tolist() == [6]


def test_coverage_replace_lets_the_newest_view_win():
    policy = CoveragePolicy(same_view="replace")
    buffer = MemoryBuffer(1, 3, frame_shape=FRAME, pose_dim=3, write_policy=policy)
    walk(buffer, [0.0, 5.0, 10.0, 10.5, 11.0, 10.25])
    assert stored_values(buffer) == [0.0, 5.0, 10.25]


def test_coverage_evicts_the_most_redundant_frame():
    """Full with 10, 0 and 1.5: the pair (0, 1.5) is the most redundant; 0 is the least
    recently used of the pair. LRU would evict 10, the oldest."""
    coverage = MemoryBuffer(1, 3, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    lru = MemoryBuffer(1, 3, frame_shape=FRAME, pose_dim=3)
    for buffer in (coverage, lru):
        walk(buffer, [10.0, 0.0, 1.5, 20.0])
    assert stored_values(coverage) == [1.5, 10.0, 20.0]
    assert stored_values(lru) == [0.0, 1.5, 20.0]
    # A retrieval that uses 0 makes 1.5 the less recently used of the pair.
    coverage = MemoryBuffer(1, 3, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    walk(coverage, [10.0, 0.0, 1.5])
    coverage.retrieve(torch.tensor([[0.0, 0.0, 0.0]]), 1)
    walk(coverage, [20.0])
    assert stored_values(coverage) == [0.0, 10.0, 20.0]


def test_coverage_tells_headings_apart():
    buffer = MemoryBuffer(1, 4, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    for i, yaw in enumerate([0.0, math.pi, math.pi / 2, 0.3]):  # 0.3 rad is 0's view
        buffer.add(frames_for([float(i)]), torch.tensor([[0.0, 0.0, yaw]]))
    assert stored_values(buffer) == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("policy", ["lru", "coverage", CoveragePolicy(same_view="replace")])
def test_samples_are_isolated(policy):
    """Sample 1's memory is the same whatever sample 0 writes, and ``where`` skips samples."""
    gen = torch.Generator().manual_seed(0)
    shared = [torch.rand(1, 3, generator=gen) * 4 for _ in range(12)]
    states = []
    for seed in (1, 2):
        other = torch.Generator().manual_seed(seed)
        buffer = MemoryBuffer(2, 3, frame_shape=FRAME, pose_dim=3, write_policy=policy)
        for i, pose in enumerate(shared):
            poses = torch.cat([torch.rand(1, 3, generator=other) * 4, pose])
            where = torch.tensor([True, i % 3 != 0])
            buffer.add(frames_for([float(seed * 100 + i), float(i)]), poses, where=where)
            buffer.retrieve(torch.cat([torch.rand(1, 3, generator=other) * 4, pose]), 2)
        states.append({k: v[1] for k, v in buffer.state_dict().items() if v.dim()})
        assert int(buffer.counts[0]) >= 1
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    # Sample 1 never stored the frames its mask skipped.
    assert all(int(v) % 3 != 0 for v in stored_values(buffer, 1))


def test_state_round_trip_and_old_state_dicts():
    """A coverage buffer restored from its state dict (or from an LRU buffer's, which has the
    same keys) continues exactly like the original."""
    gen = torch.Generator().manual_seed(3)
    poses = [torch.rand(2, 3, generator=gen) * torch.tensor([6.0, 6.0, 6.0]) for _ in range(40)]
    source = MemoryBuffer(2, 6, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    lru = MemoryBuffer(2, 6, frame_shape=FRAME, pose_dim=3)
    for i, pose in enumerate(poses[:20]):
        source.add(frames_for([float(i), float(i)]), pose)
        lru.add(frames_for([float(i), float(i)]), pose)
    for saved in (source.state_dict(), lru.state_dict()):
        a = MemoryBuffer(2, 6, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
        b = MemoryBuffer(2, 6, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
        a.load_state_dict(saved)
        b.load_state_dict(saved)
        b.load_state_dict(b.state_dict())
        for i, pose in enumerate(poses[20:]):
            a.add(frames_for([float(i), float(i)]), pose)
            b.add(frames_for([float(i), float(i)]), pose)
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the restored source continues like the source itself
    restored = MemoryBuffer(2, 6, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    restored.load_state_dict(source.state_dict())
    for i, pose in enumerate(poses[20:]):
        source.add(frames_for([float(i), float(i)]), pose)
        restored.add(frames_for([float(i), float(i)]), pose)
    s1, s2 = source.state_dict(), restored.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_index_device_and_bytes_per_sample():
    buffer = MemoryBuffer(
        2, 10, frame_shape=(4, 8, 8), pose_dim=3, write_policy="coverage", index_device="cpu"
    )
    assert buffer.index_device == torch.device("cpu") and buffer.device == torch.device("cpu")
    sizes = buffer.nbytes_per_sample
    assert sizes["frames"] == 10 * 4 * 8 * 8 * 4
    # poses 3 + features 4 + nearest 1 floats; steps, last_used, nearest_slot longs; valid
    assert sizes["index"] == 10 * (8 * 4 + 3 * 8 + 1) + 8
    assert buffer.to("cpu", index_device="cpu") is buffer
    assert isinstance(buffer.write_policy, CoveragePolicy)
    assert "CoveragePolicy(radius=1.0" in repr(buffer)


def test_policy_validation():
    assert WRITE_POLICIES == ("lru", "coverage")
    assert check_write_policy("lru") == "lru"
    assert check_write_policy("coverage") == CoveragePolicy()
    with pytest.raises(ValueError, match="write_policy must be one of"):
        MemoryBuffer(1, 2, frame_shape=FRAME, write_policy="fifo")
    with pytest.raises(ValueError, match="radius"):
        CoveragePolicy(radius=0.0)
    with pytest.raises(ValueError, match="max_angle"):
        CoveragePolicy(max_angle=4.0)
    with pytest.raises(ValueError, match="same_view"):
        CoveragePolicy(same_view="newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="index_device"):
        MemoryBuffer(1, 2, frame_shape=FRAME, index_device="nowhere")
    with pytest.raises(ValueError, match="pose dimension"):
        view_distance(torch.zeros(1, 3), torch.zeros(1, 5))


# ----------------------------------------------------------------------------- known routes


def test_a_known_route_keeps_the_place_it_returns_to():
    """Two slots, frames at x = 0, 5, 10, 15; the route then returns to x = 0.2. Without the
    route the coverage policy evicts by redundancy (0 and 5 are the closest pair: 0 goes);
    with it, the frame at 0 is the only one the route needs, so the others go instead."""
    plain = MemoryBuffer(1, 2, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    walk(plain, [0.0, 5.0, 10.0, 15.0])
    assert stored_values(plain) == [10.0, 15.0]
    routed = MemoryBuffer(1, 2, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    back = torch.tensor([[[0.2, 0.0, 0.0]]])
    for x in [0.0, 5.0, 10.0, 15.0]:
        routed.add(frames_for([x]), torch.tensor([[x, 0.0, 0.0]]), upcoming=back)
    assert stored_values(routed) == [0.0, 15.0]  # 5 went for 10, 10 for 15 (never needed)
    # A new frame the route needs later than every stored one is dropped.
    route = torch.tensor([[[0.0, 0.0, 0.0], [15.0, 0.0, 0.0], [7.0, 0.0, 0.0]]])
    routed.add(frames_for([7.0]), torch.tensor([[7.0, 0.0, 0.0]]), upcoming=route)
    assert stored_values(routed) == [0.0, 15.0]
    # No frame merges: x = 0.1 shows the view of x = 0 and both stay candidates; the route's
    # first pose is shown by both, so neither is needed alone; of the two never-needed, equally
    # redundant frames the least recently used goes (the stored one): the newest view wins.
    route = torch.tensor([[[0.0, 0.0, 0.0], [15.0, 0.0, 0.0]]])
    routed.add(frames_for([0.1]), torch.tensor([[0.1, 0.0, 0.0]]), upcoming=route)
    assert stored_values(routed) == pytest.approx([0.1, 15.0])
    # Entries that do not count are ignored: with the route's first pose (x = 30, which only
    # the new frame shows) masked, the new frame is never needed and is dropped; counted, it
    # is needed first and the frame at 0.1 (needed last) goes.
    route = torch.tensor([[[30.0, 0.0, 0.0], [15.0, 0.0, 0.0], [0.1, 0.0, 0.0]]])
    mask = torch.tensor([[False, True, True]])
    state = routed.state_dict()
    routed.add(
        frames_for([30.0]), torch.tensor([[30.0, 0.0, 0.0]]), upcoming=route, upcoming_mask=mask
    )
    assert stored_values(routed) == pytest.approx([0.1, 15.0])
    routed.load_state_dict(state)
    routed.add(frames_for([30.0]), torch.tensor([[30.0, 0.0, 0.0]]), upcoming=route)
    assert stored_values(routed) == [15.0, 30.0]


def test_route_writes_are_per_sample_and_chunk_free():
    """Samples decide on their own routes, and the route's chunking changes nothing."""
    gen = torch.Generator().manual_seed(0)
    a = MemoryBuffer(3, 4, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    for step in range(12):
        poses = torch.rand(3, 3, generator=gen) * torch.tensor([6.0, 6.0, 6.28])
        route = torch.rand(3, 5, 3, generator=gen) * torch.tensor([6.0, 6.0, 6.28])
        where = torch.tensor([True, step % 2 == 0, True])
        before = a.state_dict()
        a.add(frames_for([step, 100 + step, 200 + step]), poses, where=where, upcoming=route)
        after = a.state_dict()
        assert torch.equal(after["frames"][1], before["frames"][1]) or bool(where[1])
        coverage = a._coverage
        assert coverage is not None
        query = coverage.query_features(poses)
        features = coverage.query_features(route)
        full = coverage.choose_upcoming(a._valid, a._last_used, query, features, None)
        tiny = coverage.choose_upcoming(
            a._valid, a._last_used, query, features, None, chunk_elements=1
        )
        for x, y in zip(full, tiny, strict=True):
            assert torch.equal(x, y)
    # sample 0 alone, with the same writes, ends in the same state as in the batch
    gen = torch.Generator().manual_seed(0)
    b = MemoryBuffer(1, 4, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    for step in range(12):
        poses = torch.rand(3, 3, generator=gen) * torch.tensor([6.0, 6.0, 6.28])
        route = torch.rand(3, 5, 3, generator=gen) * torch.tensor([6.0, 6.0, 6.28])
        b.add(frames_for([step]), poses[:1], upcoming=route[:1])
    got, want = a.state_dict(), b.state_dict()
    for key in ("frames", "poses", "valid", "steps"):
        assert torch.equal(got[key][0], want[key][0]), key


def test_route_validation_changes_nothing():
    buffer = MemoryBuffer(2, 3, frame_shape=FRAME, pose_dim=3, write_policy="coverage")
    buffer.add(frames_for([1.0, 2.0]), torch.zeros(2, 3))
    before = buffer.state_dict()
    frames, poses = frames_for([3.0, 4.0]), torch.ones(2, 3)
    route = torch.zeros(2, 4, 3)
    cases = [
        ({"upcoming": torch.zeros(2, 4)}, "upcoming must have shape"),
        ({"upcoming": torch.zeros(2, 4, 5)}, "upcoming must have shape"),
        ({"upcoming": torch.zeros(2, 0, 3)}, "at least one pose"),
        ({"upcoming": route.long()}, "floating-point"),
        ({"upcoming": route.clone().index_fill_(1, torch.tensor([2]), math.nan)}, "finite"),
        ({"upcoming": route, "upcoming_mask": torch.ones(2, 3, dtype=torch.bool)}, "shape"),
        ({"upcoming": route, "upcoming_mask": torch.ones(2, 4)}, "torch.bool"),
        ({"upcoming_mask": torch.ones(2, 4, dtype=torch.bool)}, "needs upcoming"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            buffer.add(frames, poses, **kwargs)
    state = buffer.state_dict()
    assert all(torch.equal(state[k], before[k]) for k in before)
    lru = MemoryBuffer(2, 3, frame_shape=FRAME, pose_dim=3)
    with pytest.raises(ValueError, match="upcoming needs the coverage write policy"):
        lru.add(frames, poses, upcoming=route)
    # non-finite entries that do not count, or in rows that do not write, are fine
    masked = route.clone().index_fill_(1, torch.tensor([2]), math.nan)
    counted = torch.ones(2, 4, dtype=torch.bool).index_fill_(1, torch.tensor([2]), False)
    buffer.add(frames, poses, upcoming=masked, upcoming_mask=counted)
    buffer.add(
        frames,
        poses,
        where=torch.tensor([True, False]),
        upcoming=masked.clone().index_fill_(0, torch.tensor([0]), 0.0),
    )


# ----------------------------------------------------------------------------- the model's buffer


def tiny_hybrid(**kwargs):
    from hybrid_cdit.models import HybridCDiT

    from .hybrid_helpers import TINY

    torch.manual_seed(0)
    return HybridCDiT(**TINY, memory_layers=[1], memory_buffer_size=3, **kwargs).eval()


@pytest.mark.parametrize("policy", ["lru", "coverage"])
def test_update_memory_writes_with_the_models_policy(policy):
    """The model's own buffer evolves exactly like a standalone buffer of its policy, through
    update_memory and through forward(update_memory=True)."""
    model = tiny_hybrid(memory_write_policy=policy)
    assert model.memory_write_policy == policy
    assert model.get_config()["memory_write_policy"] == policy
    reference = MemoryBuffer(2, 3, frame_shape=(4, 8, 8), pose_dim=3, write_policy=policy)
    gen = torch.Generator().manual_seed(0)
    xs = [0.0, 5.0, 10.0, 10.5, 11.0, 10.25]
    for x in xs:
        frame = torch.randn(2, 4, 8, 8, generator=gen)
        pose = torch.tensor([[x, 0.0, 0.0], [x, 1.0, 0.0]])
        model.update_memory(frame, pose)
        reference.add(frame, pose)
    got, want = model.memory_buffer.state_dict(), reference.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert model.memory_buffer.write_policy == reference.write_policy
    # The two policies keep different frames of this journey (see the buffer tests).
    kept = sorted(float(p) for p in got["poses"][0, :, 0])
    assert kept == ([0.0, 5.0, 10.0] if policy == "coverage" else [10.25, 10.5, 11.0])


def test_update_memory_passes_the_route():
    model = tiny_hybrid(memory_write_policy="coverage")
    reference = MemoryBuffer(2, 3, frame_shape=(4, 8, 8), pose_dim=3, write_policy="coverage")
    gen = torch.Generator().manual_seed(1)
    route = torch.tensor([[[0.1, 0.0, 0.0]], [[5.1, 1.0, 0.0]]])
    for x in [0.0, 5.0, 10.0, 15.0, 20.0]:
        frame = torch.randn(2, 4, 8, 8, generator=gen)
        pose = torch.tensor([[x, 0.0, 0.0], [x, 1.0, 0.0]])
        model.update_memory(frame, pose, upcoming=route)
        reference.add(frame, pose, upcoming=route)
    got, want = model.memory_buffer.state_dict(), reference.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert 0.0 in got["poses"][0, :, 0].tolist() and 5.0 in got["poses"][1, :, 0].tolist()
    lru = tiny_hybrid()
    with pytest.raises(ValueError, match="upcoming needs the coverage write policy"):
        lru.update_memory(torch.zeros(2, 4, 8, 8), torch.zeros(2, 3), upcoming=route)
    assert lru.memory_buffer is None


def test_forward_update_memory_uses_the_models_policy():
    from .hybrid_helpers import make_inputs

    model = tiny_hybrid(memory_write_policy="coverage")
    inputs = make_inputs(2)
    x, t, y, x_cond, rel_t = (inputs[k] for k in ("x", "t", "y", "x_cond", "rel_t"))
    reference = MemoryBuffer(2, 3, frame_shape=(4, 8, 8), pose_dim=3, write_policy="coverage")
    previous = None
    with torch.no_grad():
        for x_pos in [0.0, 5.0, 10.0, 10.5, 11.0, 10.25]:
            pose = torch.tensor([[x_pos, 0.0, 0.0]] * 2)
            model(x, t, y, x_cond, rel_t, current_pose=pose, update_memory=True)
            if previous is not None:
                reference.add(x_cond[:, -1], previous)
            previous = pose
    got, want = model.memory_buffer.state_dict(), reference.state_dict()
    for key in ("poses", "valid", "steps", "frames"):
        assert torch.equal(got[key], want[key]), key
    assert sorted(float(p) for p in got["poses"][0, :, 0]) == [0.0, 5.0, 10.0]


def test_config_key_and_saved_config(tmp_path):
    from hybrid_cdit.checkpoint import from_pretrained, save_pretrained
    from hybrid_cdit.config import HybridCDiTConfig, build_model

    config = HybridCDiTConfig.from_dict(
        {"model": "CDiT-S/2", "image_size": 64, "memory_write_policy": "coverage"}
    )
    assert config.model_kwargs()["memory_write_policy"] == "coverage"
    assert config.to_dict()["memory_write_policy"] == "coverage"
    with torch.device("meta"):
        assert build_model(config).memory_write_policy == "coverage"
    assert HybridCDiTConfig().memory_write_policy == "lru"
    with pytest.raises(ValueError, match="memory_write_policy must be one of lru, coverage"):
        HybridCDiTConfig(memory_write_policy="fifo")
    with pytest.raises(ValueError, match="memory_write_policy must be one of"):
        tiny_hybrid(memory_write_policy="fifo")
    model = tiny_hybrid(memory_write_policy="coverage")
    directory = save_pretrained(model, tmp_path / "coverage")
    assert from_pretrained(directory).memory_write_policy == "coverage"
    # A config.json written before the key existed loads with the LRU policy.
    path = directory / "config.json"
    import json

    data = json.loads(path.read_text())
    data.pop("memory_write_policy")
    path.write_text(json.dumps(data))
    assert from_pretrained(directory).memory_write_policy == "lru"


def test_large_memories_select_exactly_like_the_sorted_path():
    """Selection over many slots narrows to the candidates with ``topk`` first (time linear in
    the capacity); ties, steps, empty slots and thresholds come out as in the sorted path."""
    from hybrid_cdit.memory import select_top_k
    from hybrid_cdit.memory.selection import _top_k_sorted

    gen = torch.Generator().manual_seed(0)
    for m, fill in ((300, 1.0), (300, 0.02), (1000, 0.5)):
        scores = torch.rand(4, m, generator=gen).round(decimals=2)  # many ties
        valid = torch.rand(4, m, generator=gen) < fill
        steps = torch.randint(0, 7, (4, m), generator=gen)
        for k in (1, 8, 20):
            got = select_top_k(scores, valid, k, 0.5, steps=steps)
            want = _top_k_sorted(scores, valid, k, 0.5, steps)
            n = valid.sum(1).clamp(max=k)
            for row in range(4):
                r = int(n[row])
                assert got.indices[row, :r].tolist() == want.indices[row, :r].tolist()
                assert torch.equal(got.scores[row], want.scores[row])
                assert torch.equal(got.mask[row], want.mask[row])
