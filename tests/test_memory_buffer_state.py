"""``MemoryBuffer`` invariants: every state the methods reach keeps them, ``load_state_dict``
refuses any state that breaks one (checked against a plain-Python statement of the invariants),
and writes or retrievals that would break one are refused before anything changes."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_cdit.memory import MemoryBuffer

FRAME = (1, 2, 2)
LIMIT = 2**62
KEYS = ("frames", "poses", "steps", "valid", "last_used", "next_step", "clock")


def frames_for(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None] + torch.arange(
        4, dtype=torch.float32
    ).reshape(FRAME)


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def snapshot(buffer: MemoryBuffer) -> tuple[dict[str, torch.Tensor], int]:
    return buffer.state_dict(), buffer.version


def assert_unchanged(buffer: MemoryBuffer, before: tuple[dict[str, torch.Tensor], int]) -> None:
    assert_state_equal(buffer.state_dict(), before[0])
    assert buffer.version == before[1]


def broken_invariants(state: dict[str, torch.Tensor]) -> set[str]:
    """The keys of ``state`` whose documented invariant fails, in plain Python (float32
    storage): stored frames have steps in ``[0, next_step)``, last uses in ``[1, clock]``, and
    finite frames and poses; empty slots hold zeros; ``next_step`` and ``clock`` lie in
    ``[0, 2**62]``."""
    broken: set[str] = set()
    clock = int(state["clock"])
    if not 0 <= clock <= LIMIT:
        broken.add("clock")
    next_step = state["next_step"].tolist()
    if any(not 0 <= n <= LIMIT for n in next_step):
        broken.add("next_step")
    valid = state["valid"].tolist()
    steps, used = state["steps"].tolist(), state["last_used"].tolist()
    frames = state["frames"].flatten(2).tolist()
    poses = state["poses"].tolist()
    for b, row in enumerate(valid):
        for j, stored in enumerate(row):
            if stored:
                if not 0 <= steps[b][j] < next_step[b]:
                    broken.add("steps")
                if not 1 <= used[b][j] <= clock:
                    broken.add("last_used")
                if not all(math.isfinite(v) for v in poses[b][j]):
                    broken.add("poses")
                if not all(math.isfinite(v) for v in frames[b][j]):
                    broken.add("frames")
            else:
                if steps[b][j] != 0:
                    broken.add("steps")
                if used[b][j] != 0:
                    broken.add("last_used")
                if any(v != 0 for v in poses[b][j]):
                    broken.add("poses")
                if any(v != 0 for v in frames[b][j]):
                    broken.add("frames")
    return broken


@st.composite
def real_buffers(draw: st.DrawFn) -> MemoryBuffer:
    """A buffer after a drawn sequence of writes (counter, int and tensor steps, partial
    ``where``), retrievals and resets."""
    policy = draw(st.sampled_from(["lru", "coverage"]))
    batch, capacity = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    buffer = MemoryBuffer(batch, capacity, frame_shape=FRAME, pose_dim=3, write_policy=policy)
    coordinate = st.integers(-2, 2).map(float)
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["add", "add", "add_step", "retrieve", "reset"]))
        poses = torch.tensor([[draw(coordinate), draw(coordinate), 0.0] for _ in range(batch)])
        where = torch.tensor(draw(st.lists(st.booleans(), min_size=batch, max_size=batch)))
        if op == "add":
            values = [float(draw(st.integers(1, 9))) for _ in range(batch)]
            buffer.add(frames_for(values), poses, where=where)
        elif op == "add_step":
            step = int(buffer.state_dict()["next_step"].max()) + draw(st.integers(0, 3))
            buffer.add(frames_for([1.0] * batch), poses, step=step)
        elif op == "retrieve":
            buffer.retrieve(poses, draw(st.integers(1, capacity + 1)), threshold=0.0)
        else:
            buffer.reset(where)
    return buffer


def twin(buffer: MemoryBuffer) -> MemoryBuffer:
    return MemoryBuffer(
        buffer.batch_size,
        buffer.capacity,
        frame_shape=FRAME,
        pose_dim=3,
        write_policy=buffer.write_policy,
    )


@settings(max_examples=60, deadline=None)
@given(buffer=real_buffers())
def test_every_reachable_state_keeps_the_invariants_and_survives_a_round_trip(buffer):
    state = buffer.state_dict()
    assert broken_invariants(state) == set()
    copy = twin(buffer)
    copy.load_state_dict(state)
    assert_state_equal(copy.state_dict(), state)
    query = torch.zeros(buffer.batch_size, 3)
    a, b = buffer.retrieve(query, 2, threshold=0.0), copy.retrieve(query, 2, threshold=0.0)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.mask, b.mask)
    buffer.add(frames_for([7.0] * buffer.batch_size), query)
    copy.add(frames_for([7.0] * buffer.batch_size), query)
    assert_state_equal(copy.state_dict(), buffer.state_dict())


EXTREMES = [LIMIT - 1, LIMIT, LIMIT + 1, 2**63 - 1, -(2**63), -7, -1]
FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 2.5]


@st.composite
def tampered(draw: st.DrawFn) -> tuple[MemoryBuffer, dict[str, torch.Tensor]]:
    """A real buffer and its state with one entry changed."""
    buffer = draw(real_buffers())
    state = buffer.state_dict()
    b = draw(st.integers(0, buffer.batch_size - 1))
    j = draw(st.integers(0, buffer.capacity - 1))
    top = max(int(state["clock"]), int(state["next_step"].max())) + 3
    integer = st.one_of(st.integers(-3, top), st.sampled_from(EXTREMES))
    key = draw(st.sampled_from(KEYS))
    if key in ("steps", "last_used"):
        state[key][b, j] = draw(integer)
    elif key == "next_step":
        state[key][b] = draw(integer)
    elif key == "clock":
        state[key] = torch.tensor(draw(integer))
    elif key == "valid":
        state[key][b, j] = not bool(state[key][b, j])
    elif key == "poses":
        state[key][b, j, draw(st.integers(0, 2))] = draw(st.sampled_from(FLOATS))
    else:
        state[key].view(*state[key].shape[:2], -1)[b, j, draw(st.integers(0, 3))] = draw(
            st.sampled_from(FLOATS)
        )
    return buffer, state


@settings(max_examples=300, deadline=None)
@given(case=tampered())
def test_a_tampered_state_is_refused_exactly_when_it_breaks_an_invariant(case):
    buffer, state = case
    broken = broken_invariants(state)
    before = snapshot(buffer)
    if not broken:
        buffer.load_state_dict(state)
        assert_state_equal(buffer.state_dict(), state)
        return
    names = "|".join(re.escape(f"state['{key}']") for key in sorted(broken))
    with pytest.raises(ValueError, match=names):
        buffer.load_state_dict(state)
    assert_unchanged(buffer, before)


def partly_filled() -> MemoryBuffer:
    """Two samples, four slots: sample 0 holds steps 0 and 1, sample 1 holds step 0."""
    buffer = MemoryBuffer(2, 4, frame_shape=FRAME, pose_dim=3)
    buffer.add(frames_for([1.0, 11.0]), torch.zeros(2, 3))
    buffer.add(frames_for([2.0, 12.0]), torch.ones(2, 3), where=torch.tensor([True, False]))
    return buffer


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        # the cases: each one was accepted, and then lost frames or wrapped around
        ({"last_used": [[-7, -7, 0, 0], [-7, 0, 0, 0]]}, r"state\['last_used'\] must lie in"),
        ({"steps": [[-1, -2, 0, 0], [-1, 0, 0, 0]]}, r"state\['steps'\] must lie in \[0, n"),
        ({"next_step": [-9, 1]}, r"state\['next_step'\] must lie in \[0, 2\*\*62\], got -9"),
        ({"next_step": [2**63 - 1, 1]}, r"state\['next_step'\] must lie in \[0, 2\*\*62\]"),
        ({"clock": -1}, r"state\['clock'\] must lie in \[0, 2\*\*62\], got -1"),
        ({"steps": [[0, 2, 0, 0], [0, 0, 0, 0]]}, r"state\['steps'\] .* got 2 at \(0, 1\)"),
        ({"last_used": [[1, 2, 0, 5], [1, 0, 0, 0]]}, r"state\['last_used'\] must be 0 at empty"),
    ],
)
def test_impossible_counters_are_refused_naming_the_field(edit, match):
    buffer = partly_filled()
    state = buffer.state_dict()
    for key, value in edit.items():
        state[key] = torch.tensor(value)
    before = snapshot(buffer)
    with pytest.raises(ValueError, match=match):
        buffer.load_state_dict(state)
    assert_unchanged(buffer, before)


def test_negative_last_use_can_no_longer_make_a_write_evict_a_stored_frame():
    """With ``last_used = -7`` accepted, the next write took slot 0 of a half-empty sample."""
    buffer = partly_filled()
    state = buffer.state_dict()
    state["last_used"][0, 0] = -7
    with pytest.raises(ValueError, match="last_used"):
        buffer.load_state_dict(state)
    buffer.add(frames_for([3.0, 13.0]), torch.zeros(2, 3))
    stored = buffer.state_dict()
    assert stored["valid"][0].tolist() == [True, True, True, False]
    assert stored["frames"][0, :3, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("frames", torch.zeros(2, 4, *FRAME, device="meta"), "must hold data"),
        ("poses", torch.zeros(2, 4, 3).to_sparse(), "must be a dense"),
        ("steps", torch.zeros(2, 4), "must have an integer dtype, got torch.float32"),
        ("last_used", torch.zeros(2, 4, dtype=torch.bool), "integer dtype, got torch.bool"),
        ("next_step", torch.zeros(2, 1, dtype=torch.long), r"shape \(B=2\), got \(2, 1\)"),
        ("clock", torch.tensor([3]), r"shape \(\), got \(1,\)"),
        ("clock", torch.tensor(3.0), "integer dtype"),
        ("valid", torch.zeros(2, 4, dtype=torch.uint8), "dtype torch.bool"),
        ("valid", torch.zeros(2, 3, dtype=torch.bool), r"shape \(B=2, capacity=4\)"),
        ("frames", torch.zeros(2, 4, *FRAME, dtype=torch.long), "floating-point"),
        ("frames", torch.zeros(2, 4, *FRAME, dtype=torch.complex64), "floating-point"),
    ],
)
def test_malformed_fields_are_refused_naming_the_field(key, value, match):
    buffer = partly_filled()
    state = {**buffer.state_dict(), key: value}
    before = snapshot(buffer)
    with pytest.raises(ValueError, match=re.escape(f"state['{key}']") + ".*" + match):
        buffer.load_state_dict(state)
    assert_unchanged(buffer, before)


def test_frames_must_be_finite_in_the_buffers_dtype():
    buffer = partly_filled()
    state = buffer.state_dict()
    state["frames"] = state["frames"].double()
    state["frames"][0, 0, 0, 0, 0] = 1e300  # finite in float64, inf in float32
    before = snapshot(buffer)
    with pytest.raises(ValueError, match=r"state\['frames'\] must be finite .* at \(0, 0\)"):
        buffer.load_state_dict(state)
    assert_unchanged(buffer, before)


def test_other_integer_dtypes_load_as_long():
    buffer = partly_filled()
    state = buffer.state_dict()
    narrow = {
        k: v.int() if k in ("steps", "last_used", "next_step", "clock") else v
        for k, v in state.items()
    }
    copy = MemoryBuffer(2, 4, frame_shape=FRAME, pose_dim=3)
    copy.load_state_dict(narrow)
    assert_state_equal(copy.state_dict(), state)


def at_counters(next_step: int, clock: int) -> MemoryBuffer:
    """One sample holding a frame of step ``next_step - 1`` last used at ``clock``."""
    buffer = MemoryBuffer(1, 2, frame_shape=FRAME, pose_dim=3)
    buffer.add(frames_for([1.0]), torch.zeros(1, 3))
    state = buffer.state_dict()
    state["steps"][0, 0] = next_step - 1
    state["next_step"][0] = next_step
    state["last_used"][0, 0] = clock
    state["clock"] = torch.tensor(clock)
    buffer.load_state_dict(state)
    return buffer


def test_the_step_counter_stops_at_its_limit_instead_of_wrapping():
    buffer = at_counters(LIMIT - 1, 5)
    buffer.add(frames_for([2.0]), torch.zeros(1, 3))  # step 2**62 - 1, the last one
    assert buffer.state_dict()["next_step"].tolist() == [LIMIT]
    buffer.load_state_dict(buffer.state_dict())  # a reachable state loads
    before = snapshot(buffer)
    for step in (None, torch.tensor([LIMIT])):
        with pytest.raises(ValueError, match="step"):
            buffer.add(frames_for([3.0]), torch.zeros(1, 3), step=step)
        assert_unchanged(buffer, before)
    buffer.add(frames_for([3.0]), torch.zeros(1, 3), where=torch.tensor([False]))
    buffer.reset()
    buffer.add(frames_for([4.0]), torch.zeros(1, 3))
    assert buffer.state_dict()["next_step"].tolist() == [1]


def test_the_clock_stops_at_its_limit():
    buffer = at_counters(3, LIMIT - 2)
    buffer.retrieve(torch.zeros(1, 3), 1)  # clock 2**62 - 1
    before = snapshot(buffer)
    with pytest.raises(ValueError, match="k=2 would move the LRU clock"):
        buffer.retrieve(torch.zeros(1, 3), 2)
    assert_unchanged(buffer, before)
    buffer.add(frames_for([2.0]), torch.zeros(1, 3))  # clock 2**62
    before = snapshot(buffer)
    with pytest.raises(ValueError, match="add would move the LRU clock"):
        buffer.add(frames_for([3.0]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="k=1 would move the LRU clock"):
        buffer.retrieve(torch.zeros(1, 3), 1)
    assert_unchanged(buffer, before)


def test_only_writing_samples_constrain_the_step():
    buffer = MemoryBuffer(2, 3, frame_shape=FRAME, pose_dim=3)
    for _ in range(10):
        buffer.add(frames_for([1.0, 2.0]), torch.zeros(2, 3))
    buffer.reset(torch.tensor([True, False]))  # sample 0 starts over, sample 1 wrote step 9
    before = snapshot(buffer)
    with pytest.raises(ValueError, match="sample 1 wrote step 9, got 3"):
        buffer.add(frames_for([1.0, 2.0]), torch.zeros(2, 3), step=3)
    assert_unchanged(buffer, before)
    buffer.add(frames_for([1.0, 2.0]), torch.zeros(2, 3), step=3, where=torch.tensor([True, False]))
    buffer.add(
        frames_for([1.0, 2.0]),
        torch.zeros(2, 3),
        step=torch.tensor([3, -5]),
        where=torch.tensor([True, False]),
    )  # the same step again; row 1 is ignored
    buffer.add(frames_for([1.0, 2.0]), torch.zeros(2, 3), step=9)
    state = buffer.state_dict()
    assert state["next_step"].tolist() == [10, 10]
    assert sorted(state["steps"][0].tolist()) == [3, 3, 9]


@pytest.mark.parametrize("strategy", ["distance", "fov"])
def test_an_int_query_step_is_the_same_step_for_every_sample(strategy):
    buffer = MemoryBuffer(2, 4, frame_shape=FRAME, pose_dim=3)
    for i in range(4):
        buffer.add(frames_for([float(i), float(i)]), torch.tensor([[i, 0.0, 0], [0, i, 0.0]]))
    copy = twin(buffer)
    copy.load_state_dict(buffer.state_dict())
    query = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    a = buffer.retrieve(query, 3, strategy=strategy, threshold=0.0, query_step=9)
    b = copy.retrieve(query, 3, strategy=strategy, threshold=0.0, query_step=torch.tensor([9, 9]))
    assert a.query_step is not None and a.query_step.tolist() == [9, 9]
    for name in ("frames", "poses", "scores", "mask", "steps", "query_step"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert_state_equal(buffer.state_dict(), copy.state_dict())
