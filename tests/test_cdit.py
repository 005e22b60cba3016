"""CDiT: parity with NWM's public implementation, parameter layout and input validation."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_cdit import CDiT, create_model

from .tolerances import NWM_TINY_ATOL, assert_close_to_recorded, assert_float32_error_within


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def test_ema_weights_reproduce_nwm_output(nwm_config, nwm_checkpoint, nwm_io, nwm_inputs):
    model = CDiT(**nwm_config).eval()
    model.load_state_dict(nwm_checkpoint["ema"], strict=True)
    with torch.no_grad():
        out = model(*nwm_inputs)
    assert_close_to_recorded(out, nwm_io["out_ema"], NWM_TINY_ATOL)


def test_model_weights_reproduce_nwm_output(nwm_config, nwm_checkpoint, nwm_io, nwm_inputs):
    model = CDiT(**nwm_config).eval()
    model.load_state_dict(_strip(nwm_checkpoint["model"], "_orig_mod."), strict=True)
    with torch.no_grad():
        out = model(*nwm_inputs)
    assert_close_to_recorded(out, nwm_io["out_model"], NWM_TINY_ATOL)
    assert not torch.allclose(out, nwm_io["out_ema"], atol=1e-5)


@pytest.mark.parametrize("source", ["ema", "model"])
def test_float32_error_within_the_recorded_tolerance(
    nwm_config, nwm_checkpoint, nwm_inputs, source
):
    model = CDiT(**nwm_config).eval()
    model.load_state_dict(_strip(nwm_checkpoint[source], "_orig_mod."), strict=True)
    wide = [v.double() if v.is_floating_point() else v for v in nwm_inputs]
    with torch.no_grad():
        out = model(*nwm_inputs)
        exact = model.double()(*wide)
    assert_float32_error_within(out, exact, NWM_TINY_ATOL, f"NWM tiny CDiT ({source})")


def test_state_dict_matches_nwm_layout(nwm_config, nwm_checkpoint):
    state = CDiT(**nwm_config).state_dict()
    ema = nwm_checkpoint["ema"]
    assert set(state) == set(ema)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in ema.items()
    }


def test_output_shape_without_learn_sigma():
    model = CDiT(
        input_size=8, context_size=1, hidden_size=24, depth=1, num_heads=2, learn_sigma=False
    )
    out = model(
        torch.randn(2, 4, 8, 8),
        torch.tensor([1, 2]),
        torch.randn(2, 3),
        torch.randn(2, 1, 4, 8, 8),
        torch.rand(2),
    )
    assert out.shape == (2, 4, 8, 8)


def test_fresh_model_is_adaln_zero():
    """As in NWM, a freshly built CDiT predicts zeros: adaLN and output layers start at zero."""
    model = CDiT(input_size=8, context_size=2, hidden_size=24, depth=2, num_heads=2)
    out = model(
        torch.randn(2, 4, 8, 8),
        torch.tensor([1, 2]),
        torch.randn(2, 3),
        torch.randn(2, 2, 4, 8, 8),
        torch.rand(2),
    )
    assert out.shape == (2, 8, 8, 8)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CDiT-XL/2", 1_011_959_456),
        ("CDiT-L/2", 686_307_702),
        ("CDiT-B/2", 195_134_240),
        ("CDiT-S/2", 49_152_416),
    ],
)
def test_parameter_counts_match_nwm(name: str, expected: int):
    with torch.device("meta"):
        model = create_model(name, input_size=28)
    assert sum(p.numel() for p in model.parameters()) == expected


def _valid_inputs(cfg: dict[str, Any], n: int = 2) -> dict[str, torch.Tensor]:
    c, s, k = cfg["in_channels"], cfg["input_size"], cfg["context_size"]
    return {
        "x": torch.randn(n, c, s, s),
        "t": torch.randint(0, 1000, (n,)),
        "y": torch.randn(n, 3),
        "x_cond": torch.randn(n, k, c, s, s),
        "rel_t": torch.rand(n),
    }


SMALL = {
    "input_size": 8,
    "context_size": 2,
    "in_channels": 4,
    "hidden_size": 24,
    "depth": 1,
    "num_heads": 2,
}


@settings(max_examples=60, deadline=None)
@given(
    arg=st.sampled_from(["x", "t", "y", "x_cond", "rel_t"]),
    data=st.data(),
)
def test_invalid_shapes_raise_value_error_naming_the_argument(arg: str, data: st.DataObject):
    model = CDiT(**SMALL).eval()
    inputs = _valid_inputs(SMALL)
    shape = list(inputs[arg].shape)
    kind = data.draw(st.sampled_from(["drop", "add", "change"]))
    if kind == "drop":
        del shape[data.draw(st.integers(0, len(shape) - 1))]
    elif kind == "add":
        shape.insert(data.draw(st.integers(0, len(shape))), data.draw(st.integers(1, 3)))
    else:
        i = data.draw(st.integers(0, len(shape) - 1))
        shape[i] = data.draw(st.integers(1, 10).filter(lambda v, old=shape[i]: v != old))
    inputs[arg] = torch.zeros(shape, dtype=inputs[arg].dtype)
    if arg == "x" and len(shape) == 4 and shape[1:] == [4, 8, 8]:
        # x sets the batch size N; the first argument that disagrees with it is named.
        pattern = r"^t must have shape \(N=\d+\), got \(2,\)$"
    else:
        pattern = rf"^{arg} must have shape \(.*\), got {re.escape(str(tuple(shape)))}$"
    with pytest.raises(ValueError, match=pattern):
        model(**inputs)


def test_shape_error_message_names_expected_and_received():
    model = CDiT(**SMALL)
    inputs = _valid_inputs(SMALL)
    inputs["x_cond"] = torch.zeros(2, 3, 4, 8, 8)
    with pytest.raises(ValueError) as info:
        model(**inputs)
    assert str(info.value) == (
        "x_cond must have shape (N=2, context_size=2, C=4, H=8, W=8), got (2, 3, 4, 8, 8)"
    )


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"input_size": 9}, "input_size"),
        ({"num_heads": 5}, "hidden_size"),
        ({"depth": 0}, "depth"),
        ({"context_size": -1}, "context_size"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ],
)
def test_invalid_constructor_arguments(kwargs: dict[str, Any], needle: str):
    with pytest.raises(ValueError, match=needle):
        CDiT(**{**SMALL, **kwargs})
