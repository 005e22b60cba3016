"""``MemoryBuffer``: per-sample storage, the write policies (LRU and coverage) against a
plain-Python reference, retrieval, state and input validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hybrid_cdit.memory import CoveragePolicy, MemoryBuffer, MemoryContext

FRAME = (1, 2, 2)
PATTERN = torch.arange(4, dtype=torch.float32).reshape(FRAME) / 4


def frames_for(values: list[float]) -> torch.Tensor:
    """``(B, 1, 2, 2)`` frames whose content encodes ``values`` (exact in float32)."""
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None] + PATTERN


def value_of(frame: torch.Tensor) -> float:
    return float(frame.reshape(-1)[0])


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- reference model


RADIUS, MAX_ANGLE = 1.0, math.pi / 4


def reference_view_distance(a: list[float], b: list[float]) -> float:
    """The documented view distance, in float64:
    ``max(position / radius, sin(angle / 2) / sin(max_angle / 2))``."""
    n = 2 if len(a) == 3 else 3
    position = math.sqrt(sum((a[i] - b[i]) ** 2 for i in range(n)))

    def direction(p: list[float]) -> list[float]:
        pitch = 0.0 if len(p) == 3 else p[3]
        return [
            math.cos(pitch) * math.cos(p[-1]),
            math.cos(pitch) * math.sin(p[-1]),
            math.sin(pitch),
        ]

    cos = sum(u * v for u, v in zip(direction(a), direction(b), strict=True))
    angle = math.acos(max(-1.0, min(1.0, cos)))
    return max(position / RADIUS, math.sin(angle / 2) / math.sin(MAX_ANGLE / 2))


class ReferenceMemory:
    """Plain-Python memory with the documented rules, one list of slots per sample."""

    def __init__(self, batch: int, capacity: int, policy: str = "lru") -> None:
        """``policy``: ``"lru"``, or ``"keep"`` / ``"replace"`` for coverage with that
        ``same_view``."""
        self.batch, self.capacity, self.policy = batch, capacity, policy
        self.slots: list[list[dict | None]] = [[None] * capacity for _ in range(batch)]
        self.next_step = [0] * batch
        self.clock = 0

    def nearest(self, b: int, j: int, extra: list[float] | None = None) -> float:
        """View distance from slot ``j`` to its nearest other stored frame (and ``extra``)."""
        row = self.slots[b]
        pose = row[j]["pose"]
        others = [s["pose"] for i, s in enumerate(row) if s is not None and i != j]
        others += [] if extra is None else [extra]
        return min((reference_view_distance(pose, o) for o in others), default=math.inf)

    def choose_slot(self, b: int, pose: list[float]) -> tuple[int, bool]:
        """The slot for a frame at ``pose``, and whether the frame is stored there."""
        row = self.slots[b]
        stored = [j for j, s in enumerate(row) if s is not None]
        empty = [j for j, s in enumerate(row) if s is None]
        if self.policy == "lru":
            return (empty[0] if empty else min(stored, key=lambda j: row[j]["used"])), True
        same = [j for j in stored if reference_view_distance(row[j]["pose"], pose) <= 1.0]
        if same:  # the nearest stored frame of the same view is kept or replaced
            j = min(same, key=lambda j: (reference_view_distance(row[j]["pose"], pose), j))
            return j, self.policy == "replace"
        if empty:
            return empty[0], True
        # Full: evict the most redundant frame, then the least recently used.
        return min(stored, key=lambda j: (self.nearest(b, j, pose), row[j]["used"], j)), True

    def choose_with_route(self, b: int, pose: list[float], route: list) -> tuple[int, bool]:
        """The documented rule with upcoming poses ``route`` (None entries do not count): no
        merging; when full, drop the candidate (stored or new) needed last; a candidate is
        needed by an upcoming pose when it alone shows that view; never-needed ones first,
        then the most redundant, the least recently used (the new frame last), the lower
        slot."""
        row = self.slots[b]
        empty = [j for j, s in enumerate(row) if s is None]
        if empty:
            return empty[0], True
        candidates = [*range(self.capacity), -1]  # -1: the new frame

        def pose_of(c: int) -> list[float]:
            return pose if c == -1 else row[c]["pose"]

        def next_use(c: int) -> int:
            for j, u in enumerate(route):
                if u is None:
                    continue
                showing = [d for d in candidates if reference_view_distance(pose_of(d), u) <= 1]
                if showing == [c]:
                    return j
            return len(route)

        def key(c: int) -> tuple:
            if c == -1:
                near = min(reference_view_distance(pose, s["pose"]) for s in row)
                return (-next_use(c), near, math.inf, c)
            return (-next_use(c), self.nearest(b, c, pose), row[c]["used"], c)

        drop = min(candidates, key=key)
        return drop, drop != -1

    def add(self, values, poses, steps, where, route=None) -> None:
        self.clock += 1
        for b in range(self.batch):
            if not where[b]:
                continue
            step = self.next_step[b] if steps is None else steps[b]
            self.next_step[b] = step + 1
            if route is None:
                j, store = self.choose_slot(b, poses[b])
            else:
                j, store = self.choose_with_route(b, poses[b], route[b])
                if not store:
                    continue
            if not store:
                self.slots[b][j]["used"] = self.clock
                continue
            self.slots[b][j] = {
                "value": values[b],
                "pose": poses[b],
                "step": step,
                "used": self.clock,
            }

    def reset(self, where) -> None:
        for b in range(self.batch):
            if where[b]:
                self.slots[b] = [None] * self.capacity
                self.next_step[b] = 0

    def retrieve(self, query, k, threshold, scale=10.0):
        """Per sample: ranked ``(slot, score, unmasked)`` for at most ``k`` stored frames."""
        out = []
        for b in range(self.batch):
            n = 2 if len(query[b]) == 3 else 3
            ranked = []
            for j, s in enumerate(self.slots[b]):
                if s is None:
                    continue
                d = math.sqrt(sum((s["pose"][i] - query[b][i]) ** 2 for i in range(n)))
                ranked.append((j, math.exp(-d / scale), s["step"]))
            ranked.sort(key=lambda r: (-r[1], -r[2], r[0]))
            picks = [(j, score, score >= threshold) for j, score, _ in ranked[:k]]
            for rank, (j, _, unmasked) in enumerate(picks):
                if unmasked:
                    self.slots[b][j]["used"] = self.clock + (k - rank)
            out.append(picks)
        self.clock += k
        return out


class MemoryBufferMachine(RuleBasedStateMachine):
    """Random add / retrieve / reset sequences against :class:`ReferenceMemory`."""

    POLICY = "lru"

    @initialize(
        batch=st.integers(1, 3), capacity=st.integers(2, 4), pose_dim=st.sampled_from([3, 5])
    )
    def setup(self, batch, capacity, pose_dim):
        policy = self.POLICY
        if policy != "lru":
            policy = CoveragePolicy(RADIUS, MAX_ANGLE, same_view=self.POLICY)
        self.buffer = MemoryBuffer(
            batch, capacity, frame_shape=FRAME, pose_dim=pose_dim, write_policy=policy
        )
        self.ref = ReferenceMemory(batch, capacity, self.POLICY)
        self.batch, self.capacity, self.pose_dim = batch, capacity, pose_dim
        self.serial = 0
        self.version = self.buffer.version

    def draw_poses(self, data):
        coordinate = st.integers(-2, 2)
        yaw = st.sampled_from([0.0, 1.5, -3.0])
        n = 2 if self.pose_dim == 3 else 3
        rows = []
        for _ in range(self.batch):
            position = [float(data.draw(coordinate)) for _ in range(n)]
            angles = [data.draw(yaw)] if self.pose_dim == 3 else [0.0, data.draw(yaw)]
            rows.append(position + angles)
        return rows

    def draw_where(self, data):
        if data.draw(st.booleans()):
            return None
        return data.draw(st.lists(st.booleans(), min_size=self.batch, max_size=self.batch))

    @rule(data=st.data())
    def add(self, data):
        where = self.draw_where(data)
        poses = self.draw_poses(data)
        values = []
        for b in range(self.batch):
            self.serial += 1
            values.append(float(b * 1000 + self.serial))
        mode = data.draw(st.sampled_from(["counter", "int", "tensor"]))
        writing = where or [True] * self.batch
        # A writing sample's step is at least its last written step; other rows are ignored.
        lows = [max(0, n - 1) for n in self.ref.next_step]
        if mode == "counter":
            step, ref_steps = None, None
        elif mode == "int":
            low = max((lows[b] for b in range(self.batch) if writing[b]), default=0)
            step = data.draw(st.integers(low, low + 20))
            ref_steps = [step] * self.batch
        else:
            ref_steps = [
                data.draw(st.integers(lows[b], lows[b] + 20) if writing[b] else st.integers(-9, 9))
                for b in range(self.batch)
            ]
            step = torch.tensor(ref_steps)
        mask = None if where is None else torch.tensor(where)
        route = upcoming = upcoming_mask = None
        if self.POLICY != "lru" and data.draw(st.booleans()):  # a rollout along a known route
            length = data.draw(st.integers(1, 3))
            upcoming_rows = [self.draw_poses(data) for _ in range(length)]
            upcoming = torch.tensor(upcoming_rows).transpose(0, 1)  # (B, L, P)
            counted = [[True] * length for _ in range(self.batch)]
            if data.draw(st.booleans()):
                counted = [
                    data.draw(st.lists(st.booleans(), min_size=length, max_size=length))
                    for _ in range(self.batch)
                ]
                upcoming_mask = torch.tensor(counted)
                upcoming = upcoming.masked_fill(~upcoming_mask[..., None], math.nan)
            route = [
                [upcoming_rows[j][b] if counted[b][j] else None for j in range(length)]
                for b in range(self.batch)
            ]
        self.buffer.add(
            frames_for(values),
            torch.tensor(poses),
            step=step,
            where=mask,
            upcoming=upcoming,
            upcoming_mask=upcoming_mask,
        )
        self.ref.add(values, poses, ref_steps, where or [True] * self.batch, route)
        self.version += 1

    @rule(data=st.data())
    def retrieve(self, data):
        query = self.draw_poses(data)
        k = data.draw(st.integers(1, self.capacity + 2))
        threshold = data.draw(st.sampled_from([0.0, 0.75, 0.9]))
        ctx = self.buffer.retrieve(torch.tensor(query), k, threshold=threshold)
        expected = self.ref.retrieve(query, k, threshold)
        assert ctx.frames.shape == (self.batch, k, *FRAME)
        for b, picks in enumerate(expected):
            assert ctx.mask[b].tolist() == [u for _, _, u in picks] + [False] * (k - len(picks))
            for rank, (j, score, _) in enumerate(picks):
                slot = self.ref.slots[b][j]
                assert torch.equal(ctx.frames[b, rank], frames_for([slot["value"]])[0])
                assert ctx.poses[b, rank].tolist() == slot["pose"]
                assert float(ctx.scores[b, rank]) == pytest.approx(score, abs=1e-6)
            for rank in range(k):  # no sample ever sees another's frames
                if ctx.mask[b, rank]:
                    assert int(value_of(ctx.frames[b, rank])) // 1000 == b

    @rule(data=st.data())
    def add_backwards(self, data):
        """A write whose step goes back before a writing sample's last step is refused."""
        behind = [b for b in range(self.batch) if self.ref.next_step[b] >= 2]
        if not behind:
            return
        b = data.draw(st.sampled_from(behind))
        back = data.draw(st.integers(0, self.ref.next_step[b] - 2))
        steps = [self.ref.next_step[i] for i in range(self.batch)]
        steps[b] = back
        as_int = data.draw(st.booleans())
        step = back if as_int else torch.tensor(steps)
        before = self.buffer.state_dict()
        match = "step must not go back" + ("" if as_int else f".*sample {b}")
        with pytest.raises(ValueError, match=match):
            self.buffer.add(
                frames_for([0.0] * self.batch), torch.zeros(self.batch, self.pose_dim), step=step
            )
        assert_state_equal(self.buffer.state_dict(), before)

    @rule()
    def reload(self):
        """A fresh buffer loaded with the state carries on exactly like the original."""
        fresh = MemoryBuffer(
            self.batch,
            self.capacity,
            frame_shape=FRAME,
            pose_dim=self.pose_dim,
            write_policy=self.buffer.write_policy,
        )
        state = self.buffer.state_dict()
        fresh.load_state_dict(state)
        assert_state_equal(fresh.state_dict(), state)
        self.buffer, self.version = fresh, fresh.version

    @rule(data=st.data())
    def reset(self, data):
        where = self.draw_where(data)
        self.buffer.reset(None if where is None else torch.tensor(where))
        self.ref.reset(where or [True] * self.batch)
        self.version += 1

    @invariant()
    def same_contents(self):
        if not hasattr(self, "buffer"):
            return
        state = self.buffer.state_dict()
        counts = self.buffer.counts
        assert int(counts.max()) <= self.capacity
        assert self.buffer.version == self.version
        for b in range(self.batch):
            row = self.ref.slots[b]
            assert int(counts[b]) == sum(s is not None for s in row)
            assert state["valid"][b].tolist() == [s is not None for s in row]
            for j, s in enumerate(row):
                if s is None:
                    continue
                assert value_of(state["frames"][b, j]) == s["value"]
                assert int(s["value"]) // 1000 == b
                assert state["poses"][b, j].tolist() == s["pose"]
                assert int(state["steps"][b, j]) == s["step"]
            # Same least-recently-used order, hence the same future evictions.
            used = [(s["used"], j) for j, s in enumerate(row) if s is not None]
            got = [(int(state["last_used"][b, j]), j) for _, j in used]
            assert [j for _, j in sorted(used)] == [j for _, j in sorted(got)]
            assert int(state["next_step"][b]) == self.ref.next_step[b]
            if self.POLICY != "lru":  # the incremental bookkeeping equals a fresh count
                for j, s in enumerate(row):
                    if s is not None:
                        expected = self.ref.nearest(b, j)
                        got_near = math.sqrt(float(self.buffer._coverage.nearest[b, j]))
                        assert got_near == pytest.approx(expected, rel=1e-4, abs=1e-3)


class CoverageBufferMachine(MemoryBufferMachine):
    """The same sequences with the coverage-keeping write policy (``same_view="keep"``)."""

    POLICY = "keep"


class CoverageReplaceBufferMachine(MemoryBufferMachine):
    """The coverage policy with ``same_view="replace"``."""

    POLICY = "replace"


MemoryBufferMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
CoverageBufferMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None
)
CoverageReplaceBufferMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None
)
TestMemoryBufferAgainstReference = MemoryBufferMachine.TestCase
TestCoverageBufferAgainstReference = CoverageBufferMachine.TestCase
TestCoverageReplaceBufferAgainstReference = CoverageReplaceBufferMachine.TestCase


# ----------------------------------------------------------------------------- behaviour


def filled_buffer(batch: int = 2, capacity: int = 4, pose_dim: int = 3) -> MemoryBuffer:
    gen = torch.Generator().manual_seed(0)
    buffer = MemoryBuffer(batch, capacity, frame_shape=FRAME, pose_dim=pose_dim)
    for i in range(capacity + 2):
        poses = torch.randn(batch, pose_dim, generator=gen)
        buffer.add(frames_for([b * 1000.0 + i for b in range(batch)]), poses)
    return buffer


def test_lru_eviction_refreshed_by_retrieval():
    buffer = MemoryBuffer(1, 2, frame_shape=FRAME, pose_dim=3)
    buffer.add(frames_for([1.0]), torch.tensor([[0.0, 0.0, 0.0]]))
    buffer.add(frames_for([2.0]), torch.tensor([[50.0, 0.0, 0.0]]))
    ctx = buffer.retrieve(torch.tensor([[0.0, 0.0, 0.0]]), 1)  # uses frame 1
    assert value_of(ctx.frames[0, 0]) == 1.0
    buffer.add(frames_for([3.0]), torch.tensor([[9.0, 0.0, 0.0]]))  # evicts frame 2
    stored = sorted(value_of(f) for f in buffer.state_dict()["frames"][0])
    assert stored == [1.0, 3.0]


def test_masked_retrievals_do_not_refresh():
    buffer = MemoryBuffer(1, 2, frame_shape=FRAME, pose_dim=3)
    buffer.add(frames_for([1.0]), torch.tensor([[0.0, 0.0, 0.0]]))
    buffer.add(frames_for([2.0]), torch.tensor([[50.0, 0.0, 0.0]]))
    ctx = buffer.retrieve(torch.tensor([[100.0, 0.0, 0.0]]), 2, threshold=0.5)
    assert not bool(ctx.mask.any())
    buffer.add(frames_for([3.0]), torch.tensor([[0.0, 0.0, 0.0]]))  # evicts the oldest, 1
    assert sorted(value_of(f) for f in buffer.state_dict()["frames"][0]) == [2.0, 3.0]


def test_where_and_step_counter_are_per_sample():
    buffer = MemoryBuffer(3, 4, frame_shape=FRAME, pose_dim=3)
    poses = torch.zeros(3, 3)
    buffer.add(frames_for([0.0, 1000.0, 2000.0]), poses, where=torch.tensor([True, False, True]))
    buffer.add(frames_for([1.0, 1001.0, 2001.0]), poses, where=torch.tensor([True, True, False]))
    buffer.add(frames_for([2.0, 1002.0, 2002.0]), poses, step=torch.tensor([7, 8, 9]))
    buffer.add(frames_for([3.0, 1003.0, 2003.0]), poses)
    assert buffer.counts.tolist() == [4, 3, 3]
    state = buffer.state_dict()
    assert state["steps"].tolist() == [[0, 1, 7, 8], [0, 8, 9, 0], [0, 9, 10, 0]]
    assert state["next_step"].tolist() == [9, 10, 11]
    buffer.add(frames_for([4.0, 1004.0, 2004.0]), poses, step=20)
    assert buffer.state_dict()["next_step"].tolist() == [21, 21, 21]


def test_stored_frames_are_detached_copies():
    buffer = MemoryBuffer(1, 2, frame_shape=FRAME, pose_dim=3)
    frames = frames_for([5.0]).requires_grad_()
    poses = torch.zeros(1, 3, requires_grad=True)
    buffer.add(frames, poses)
    with torch.no_grad():
        frames.add_(1.0)
        poses.add_(1.0)
    state = buffer.state_dict()
    assert value_of(state["frames"][0, 0]) == 5.0 and float(state["poses"][0, 0, 0]) == 0.0
    ctx = buffer.retrieve(torch.zeros(1, 3), 1)
    assert not ctx.frames.requires_grad and not state["frames"].requires_grad


def test_version_changes_on_content_changes_only():
    buffer = filled_buffer()
    v = buffer.version
    buffer.retrieve(torch.zeros(2, 3), 3)
    assert buffer.version == v
    buffer.add(frames_for([0.0, 1.0]), torch.zeros(2, 3))
    assert buffer.version > v
    v = buffer.version
    buffer.reset(torch.tensor([True, False]))
    assert buffer.version > v and buffer.counts.tolist() == [0, 4]
    v = buffer.version
    buffer.load_state_dict(buffer.state_dict())
    assert buffer.version > v
    v = buffer.version
    buffer.to("cpu")
    assert buffer.version == v


def test_empty_buffer_retrieves_nothing():
    buffer = MemoryBuffer(2, 3, frame_shape=FRAME)
    ctx = buffer.retrieve(torch.zeros(2, 5), 4, strategy="fov")
    assert isinstance(ctx, MemoryContext)
    assert ctx.frames.shape == (2, 4, *FRAME) and not bool(ctx.mask.any())


@pytest.mark.parametrize("strategy", ["distance", "pose", "fov"])
def test_state_dict_round_trip_restores_identical_retrievals(strategy):
    source = filled_buffer(batch=3, capacity=5, pose_dim=5)
    saved = source.state_dict()
    query = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    restored = MemoryBuffer(3, 5, frame_shape=FRAME, pose_dim=5)
    restored.load_state_dict(saved)
    assert_state_equal(restored.state_dict(), saved)
    for step in range(4):
        a = source.retrieve(query, 3, strategy=strategy, threshold=0.0)
        b = restored.retrieve(query, 3, strategy=strategy, threshold=0.0)
        for name in ("frames", "poses", "scores", "mask", "query_pose"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        new = frames_for([float(step)] * 3)
        source.add(new, query)
        restored.add(new, query)
        assert_state_equal(restored.state_dict(), source.state_dict())


def test_retrieve_moves_context_to_device_and_to_returns_self():
    buffer = filled_buffer()
    ctx = buffer.retrieve(torch.zeros(2, 3, dtype=torch.float64), 2, device="cpu")
    assert ctx.frames.device.type == "cpu" and ctx.poses.dtype == torch.float32
    assert buffer.to("cpu") is buffer
    assert buffer.device == torch.device("cpu")


def test_properties_and_repr():
    buffer = MemoryBuffer(2, frame_shape=(4, 8, 8))
    assert (buffer.batch_size, buffer.capacity, buffer.frame_shape, buffer.pose_dim) == (
        2,
        50,
        (4, 8, 8),
        5,
    )
    assert buffer.counts.dtype == torch.long and buffer.counts.tolist() == [0, 0]
    assert "capacity=50" in repr(buffer)


def test_rows_that_do_not_write_may_hold_anything():
    buffer = MemoryBuffer(2, 2, frame_shape=FRAME, pose_dim=3)
    frames = frames_for([1.0, float("nan")])
    poses = torch.tensor([[0.0, 0.0, 0.0], [float("inf"), 0.0, 0.0]])
    buffer.add(frames, poses, where=torch.tensor([True, False]))
    assert buffer.counts.tolist() == [1, 0]


# ----------------------------------------------------------------------------- validation


BAD_CALLS = {
    "add frames rank": (lambda m: m.add(torch.zeros(2, 2, 2), torch.zeros(2, 3)), "frames"),
    "add frames size": (lambda m: m.add(torch.zeros(2, 1, 2, 3), torch.zeros(2, 3)), "frames"),
    "add batch": (lambda m: m.add(torch.zeros(3, *FRAME), torch.zeros(3, 3)), "frames"),
    "add pose dim": (lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 5)), "poses"),
    "add nan frames": (
        lambda m: m.add(torch.full((2, *FRAME), float("nan")), torch.zeros(2, 3)),
        "frames must be finite",
    ),
    "add inf pose": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.tensor([[0, 0, 0], [math.inf, 0, 0]])),
        "poses must be finite",
    ),
    "add int frames": (
        lambda m: m.add(torch.zeros(2, *FRAME, dtype=torch.long), torch.zeros(2, 3)),
        "frames",
    ),
    "add where length": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), where=torch.ones(3) > 0),
        "where",
    ),
    "add where dtype": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), where=torch.ones(2)),
        "where",
    ),
    "add step shape": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), step=torch.zeros(3).long()),
        "step",
    ),
    "add step dtype": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), step=torch.zeros(2)),
        "step",
    ),
    "add step type": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), step=1.5),
        "step",
    ),
    "retrieve k": (lambda m: m.retrieve(torch.zeros(2, 3), 0), "k"),
    "retrieve strategy": (
        lambda m: m.retrieve(torch.zeros(2, 3), strategy="nearest"),
        r"one of \('distance', 'fov', 'pose'\)",
    ),
    "retrieve pose dim": (lambda m: m.retrieve(torch.zeros(2, 5)), "query_pose"),
    "retrieve batch": (lambda m: m.retrieve(torch.zeros(3, 3)), "query_pose"),
    "retrieve nan": (
        lambda m: m.retrieve(torch.tensor([[0.0, 0, 0], [math.nan, 0, 0]])),
        "query_pose must be finite",
    ),
    "retrieve threshold": (
        lambda m: m.retrieve(torch.zeros(2, 3), threshold=math.nan),
        "threshold",
    ),
    "retrieve fov query_step": (
        lambda m: m.retrieve(torch.zeros(2, 3), strategy="fov", query_step=torch.zeros(2)),
        "query_step",
    ),
    "retrieve device": (lambda m: m.retrieve(torch.zeros(2, 3), device="nowhere"), "device"),
    # retrieve: every argument is checked before the LRU clock or last_used move
    "retrieve query_step shape": (
        lambda m: m.retrieve(torch.zeros(2, 3), query_step=torch.zeros(2, 1, dtype=torch.long)),
        r"query_step must have shape \(B=2\), got \(2, 1\)",
    ),
    "retrieve query_step nan": (
        lambda m: m.retrieve(torch.zeros(2, 3), query_step=torch.tensor([math.nan, 0.0])),
        "query_step must have an integer dtype, got torch.float32",
    ),
    "retrieve query_step bool": (
        lambda m: m.retrieve(torch.zeros(2, 3), query_step=torch.tensor([True, False])),
        "query_step must have an integer dtype, got torch.bool",
    ),
    "retrieve query_step float": (
        lambda m: m.retrieve(torch.zeros(2, 3), query_step=2.0),
        "query_step must be None, an int or a",
    ),
    "retrieve query_step huge int": (
        lambda m: m.retrieve(torch.zeros(2, 3), query_step=2**70),
        r"query_step must be in \[0, 2\*\*62\), got 1180591620717411303424",
    ),
    "retrieve query_step negative int": (
        lambda m: m.retrieve(torch.zeros(2, 3), strategy="fov", query_step=-1),
        r"query_step must be in \[0, 2\*\*62\), got -1",
    ),
    "retrieve query_step meta": (
        lambda m: m.retrieve(
            torch.zeros(2, 3), query_step=torch.zeros(2, dtype=torch.long, device="meta")
        ),
        "query_step must hold data",
    ),
    "retrieve query_pose meta": (
        lambda m: m.retrieve(torch.zeros(2, 3, device="meta")),
        "query_pose must hold data",
    ),
    "retrieve query_pose int": (
        lambda m: m.retrieve(torch.zeros(2, 3, dtype=torch.long)),
        "query_pose must have a floating-point dtype",
    ),
    "retrieve device unavailable": (
        lambda m: m.retrieve(torch.zeros(2, 3), device="cuda:99"),
        "device must be an available device, got 'cuda:99'",
    ),
    "retrieve device meta": (
        lambda m: m.retrieve(torch.zeros(2, 3), device="meta"),
        "device must be a device that holds data",
    ),
    "retrieve fov dict": (
        lambda m: m.retrieve(torch.zeros(2, 3), strategy="fov", fov={"radius": 3.0}),
        "fov must be a FovParams or None, got dict",
    ),
    "retrieve fov dict unused": (
        lambda m: m.retrieve(torch.zeros(2, 3), fov={"radius": 3.0}),
        "fov must be a FovParams or None, got dict",
    ),
    "retrieve generator": (
        lambda m: m.retrieve(torch.zeros(2, 3), strategy="fov", generator=7),
        "generator must be a torch.Generator or None, got int",
    ),
    "retrieve k bool": (lambda m: m.retrieve(torch.zeros(2, 3), True), "k must be a positive"),
    "retrieve k past clock limit": (
        lambda m: m.retrieve(torch.zeros(2, 3), 2**62),
        r"k=4611686018427387904 would move the LRU clock",
    ),
    "retrieve scale": (lambda m: m.retrieve(torch.zeros(2, 3), scale=-1.0), "scale"),
    # add: steps never go back nor overflow; tensors must hold data
    "add step 2**70": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), step=2**70),
        r"step must be in \[0, 2\*\*62\), got 1180591620717411303424",
    ),
    "add step 2**62": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), step=2**62),
        r"step must be in \[0, 2\*\*62\)",
    ),
    "add step negative": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), step=-1),
        r"step must be in \[0, 2\*\*62\), got -1",
    ),
    "add step bool": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), step=True),
        "step must be None, an int",
    ),
    "add step back int": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), step=4),
        "step must not go back before a writing sample's last written step: sample 0 wrote "
        "step 5, got 4",
    ),
    "add step back tensor": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), step=torch.tensor([6, 3])),
        "step must not go back .*sample 1 wrote step 5, got 3",
    ),
    "add step tensor negative": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), step=torch.tensor([6, -3])),
        r"step must be in \[0, 2\*\*62\) for writing samples, got -3 for sample 1",
    ),
    "add step tensor overflow": (
        lambda m: m.add(
            torch.zeros(2, *FRAME), torch.zeros(2, 3), step=torch.tensor([2**63 - 1, 6])
        ),
        r"step must be in \[0, 2\*\*62\) for writing samples, got 9223372036854775807",
    ),
    "add step meta": (
        lambda m: m.add(
            torch.zeros(2, *FRAME),
            torch.zeros(2, 3),
            step=torch.zeros(2, dtype=torch.long, device="meta"),
        ),
        "step must hold data",
    ),
    "add frames meta": (
        lambda m: m.add(torch.zeros(2, *FRAME, device="meta"), torch.zeros(2, 3)),
        "frames must hold data, got a tensor on the meta device",
    ),
    "add poses meta": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3, device="meta")),
        "poses must hold data",
    ),
    "add frames sparse": (
        lambda m: m.add(torch.zeros(2, *FRAME).to_sparse(), torch.zeros(2, 3)),
        "frames must be a dense",
    ),
    "add where meta": (
        lambda m: m.add(
            torch.zeros(2, *FRAME),
            torch.zeros(2, 3),
            where=torch.ones(2, dtype=torch.bool, device="meta"),
        ),
        "where must hold data",
    ),
    "add where int": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), where=torch.ones(2).long()),
        "where must have dtype torch.bool",
    ),
    "add upcoming with lru": (
        lambda m: m.add(torch.zeros(2, *FRAME), torch.zeros(2, 3), upcoming=torch.zeros(2, 1, 3)),
        "upcoming needs the coverage write policy",
    ),
    "reset where": (lambda m: m.reset(torch.ones(2)), "where"),
    "reset where meta": (
        lambda m: m.reset(torch.ones(2, dtype=torch.bool, device="meta")),
        "where must hold data",
    ),
    "to unavailable": (lambda m: m.to("cuda:99"), "device must be an available device"),
    "to index unavailable": (
        lambda m: m.to("cpu", index_device="cuda:99"),
        "index_device must be an available device",
    ),
    "to meta": (lambda m: m.to("meta"), "device must be a device that holds data"),
    "load missing key": (
        lambda m: m.load_state_dict({k: v for k, v in m.state_dict().items() if k != "clock"}),
        "missing",
    ),
    "load shape": (
        lambda m: m.load_state_dict({**m.state_dict(), "frames": torch.zeros(2, 4, 1, 2, 3)}),
        "frames",
    ),
    "load nan": (
        lambda m: m.load_state_dict({**m.state_dict(), "poses": torch.full((2, 4, 3), math.nan)}),
        "poses",
    ),
    "load valid dtype": (
        lambda m: m.load_state_dict({**m.state_dict(), "valid": torch.ones(2, 4)}),
        "valid",
    ),
    "load clock": (
        lambda m: m.load_state_dict({**m.state_dict(), "clock": torch.tensor(0)}),
        "clock",
    ),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_and_leaves_the_buffer_unchanged(name):
    call, match = BAD_CALLS[name]
    buffer = filled_buffer()
    before, version = buffer.state_dict(), buffer.version
    with pytest.raises(ValueError, match=match):
        call(buffer)
    assert_state_equal(buffer.state_dict(), before)
    assert buffer.version == version


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0, "frame_shape": FRAME}, "batch_size"),
        ({"batch_size": 1, "capacity": 0, "frame_shape": FRAME}, "capacity"),
        ({"batch_size": 1, "frame_shape": (1, 2)}, "frame_shape"),
        ({"batch_size": 1, "frame_shape": (1, 0, 2)}, "frame_shape"),
        ({"batch_size": 1, "frame_shape": FRAME, "pose_dim": 4}, "pose_dim"),
        ({"batch_size": 1, "frame_shape": FRAME, "dtype": torch.long}, "dtype"),
        ({"batch_size": 1, "frame_shape": FRAME, "device": "meta"}, "device must be a device"),
        ({"batch_size": 1, "frame_shape": FRAME, "device": "cuda:99"}, "device must be an avail"),
        (
            {"batch_size": 1, "frame_shape": FRAME, "index_device": "cuda:99"},
            "index_device must be an available device",
        ),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemoryBuffer(**kwargs)
