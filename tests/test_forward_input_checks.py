"""A forward with a bad input raises a ``ValueError`` naming it before anything changes: no frame
is written to the model's buffer and the pending ``update_memory=True`` pose stays."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hybrid_cdit import CDiT

from .hybrid_helpers import TINY, make_inputs, trained_like_hybrid


def _snapshot(model: Any) -> dict[str, Any]:
    buffer = model.memory_buffer
    pending = model.own_memory.pending_pose
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "buffer": None
        if buffer is None
        else {k: v.clone() for k, v in buffer.state_dict().items()},
        "version": None if buffer is None else buffer.version,
        "pending": None if pending is None else pending.clone(),
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["model"].keys() == after["model"].keys()
    assert all(torch.equal(v, after["model"][k]) for k, v in before["model"].items())
    assert (before["buffer"] is None) == (after["buffer"] is None)
    if before["buffer"] is not None:
        assert before["buffer"].keys() == after["buffer"].keys()
        assert all(torch.equal(v, after["buffer"][k]) for k, v in before["buffer"].items())
    assert before["version"] == after["version"]
    assert torch.equal(before["pending"], after["pending"])


def _nan(tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.clone()
    out.view(-1)[1] = float("nan")
    return out


BAD: list[tuple[str, Any, str]] = [
    ("x", lambda v: v.double(), r"x must have dtype torch\.float32.*got torch\.float64"),
    ("x", lambda v: v.half(), r"x must have dtype torch\.float32.*got torch\.float16"),
    ("x", lambda v: v.to("meta"), r"x must be on the model's device cpu, got meta"),
    ("x", _nan, r"x must be finite"),
    ("x_cond", lambda v: v.double(), r"x_cond must have dtype torch\.float32.*float64"),
    ("x_cond", lambda v: v.to("meta"), r"x_cond must be on the model's device cpu, got meta"),
    ("x_cond", lambda v: v.round().long(), r"x_cond must have dtype torch\.float32.*int64"),
    ("x_cond", _nan, r"x_cond must be finite"),
    ("y", lambda v: v > 0, r"y must have an integer or floating dtype, got torch\.bool"),
    ("y", lambda v: v.to(torch.complex64), r"y must have an integer or floating.*complex64"),
    ("y", lambda v: v.to("meta"), r"y must be on the model's device cpu, got meta"),
    ("y", _nan, r"y must be finite"),
    ("t", lambda v: v > 500, r"t must have an integer or floating dtype, got torch\.bool"),
    ("t", lambda v: v.to("meta"), r"t must be on the model's device cpu, got meta"),
    ("rel_t", lambda v: v.to(torch.complex64), r"rel_t must have an integer or floating"),
    ("rel_t", lambda v: v.to("meta"), r"rel_t must be on the model's device cpu, got meta"),
    ("rel_t", lambda v: v / 0.0, r"rel_t must be finite"),
]


@pytest.mark.parametrize(("name", "corrupt", "message"), BAD)
def test_bad_input_changes_no_memory_state(name, corrupt, message):
    model = trained_like_hybrid()
    first, second = torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 0.0]] * 2)
    with torch.no_grad():
        model(**make_inputs(n=2), current_pose=first, update_memory=True)
        model(**make_inputs(n=2, seed=1), current_pose=second, update_memory=True)
    assert model.memory_buffer is not None and model.memory_buffer.counts.tolist() == [1, 1]
    before = _snapshot(model)
    inputs = make_inputs(n=2, seed=2)
    inputs[name] = corrupt(inputs[name])
    # a new pose: a successful call would write the pending frame and move the pending pose
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        model(**inputs, current_pose=torch.tensor([[2.0, 0.0, 0.0]] * 2), update_memory=True)
    _assert_same(before, _snapshot(model))


def test_bad_current_pose_dtype_changes_no_memory_state():
    model = trained_like_hybrid()
    with torch.no_grad():
        model(**make_inputs(n=2), current_pose=torch.zeros(2, 3), update_memory=True)
    before = _snapshot(model)
    for pose, message in [
        (torch.ones(2, 3, dtype=torch.bool), r"current_pose must have an integer or float.*bool"),
        (torch.ones(2, 3, dtype=torch.complex64), r"current_pose must have an integer or.*complex"),
        (torch.full((2, 3), float("nan")), r"current_pose must be finite"),
    ]:
        with torch.no_grad(), pytest.raises(ValueError, match=message):
            model(**make_inputs(n=2), current_pose=pose, update_memory=True)
        _assert_same(before, _snapshot(model))


def test_cdit_checks_dtype_device_and_values_too():
    torch.manual_seed(0)
    model = CDiT(**TINY).eval()
    inputs = make_inputs(n=2)
    with pytest.raises(ValueError, match=r"x must have dtype torch\.float32.*float64"):
        model(**{**inputs, "x": inputs["x"].double()})
    with pytest.raises(ValueError, match=r"x_cond must be finite"):
        model(**{**inputs, "x_cond": _nan(inputs["x_cond"])})
    with torch.no_grad():  # integer and float64 actions and times are accepted as before
        a = model(**inputs)
        b = model(**{**inputs, "t": inputs["t"].double(), "y": inputs["y"].double()})
    assert torch.equal(a, b)


def test_autocast_accepts_frames_in_another_floating_dtype():
    model = trained_like_hybrid()
    inputs = make_inputs(n=2)
    low = {k: v.bfloat16() if k in ("x", "x_cond") else v for k, v in inputs.items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**low)
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())
    with torch.no_grad(), pytest.raises(ValueError, match=r"x must have dtype torch\.float32"):
        model(**low)
