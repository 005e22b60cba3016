"""The SDPA context cross-attention equals ``nn.MultiheadAttention(add_bias_kv=True)``."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hybrid_cdit.attention import ContextCrossAttention


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    q_len=st.integers(1, 9),
    kv_len=st.integers(1, 12),
    heads=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([1, 4, 8]),
    seed=st.integers(0, 2**16),
)
def test_matches_multihead_attention(batch, q_len, kv_len, heads, head_dim, seed):
    torch.manual_seed(seed)
    dim = heads * head_dim
    reference = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=True, batch_first=True)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_()
    ours = ContextCrossAttention(dim, heads)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.double()
    ours.double()
    x = torch.randn(batch, q_len, dim, dtype=torch.float64)
    context = torch.randn(batch, kv_len, dim, dtype=torch.float64)
    expected = reference(x, context, context, need_weights=False)[0]
    torch.testing.assert_close(ours(x, context), expected, atol=1e-10, rtol=1e-10)


def test_matches_multihead_attention_in_float32():
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(48, 4, bias=True, add_bias_kv=True, batch_first=True)
    ours = ContextCrossAttention(48, 4)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x, context = torch.randn(3, 16, 48), torch.randn(3, 32, 48)
    expected = reference(x, context, context, need_weights=False)[0]
    torch.testing.assert_close(ours(x, context), expected, atol=1e-5, rtol=1e-5)


def test_parameter_names_match_multihead_attention():
    reference = nn.MultiheadAttention(16, 4, bias=True, add_bias_kv=True, batch_first=True)
    ours = ContextCrossAttention(16, 4)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


def test_gradients_flow_to_learned_key_value_token():
    layer = ContextCrossAttention(8, 2)
    layer(torch.randn(2, 3, 8), torch.randn(2, 5, 8)).sum().backward()
    assert layer.bias_k.grad is not None and layer.bias_k.grad.abs().sum() > 0
    assert layer.bias_v.grad is not None and layer.bias_v.grad.abs().sum() > 0


def test_learned_key_value_token_gradients_have_the_parameters_strides():
    """DDP copies each gradient into a bucket view with the parameter's strides and warns
    ("Grad strides do not match bucket view strides") when they differ."""
    layer = ContextCrossAttention(8, 2)
    for has_slot in (False, True):
        layer.zero_grad(set_to_none=True)
        context = torch.randn(2, 5 + has_slot, 8)
        layer(torch.randn(2, 3, 8), context, has_slot=has_slot).sum().backward()
        for p in layer.parameters():
            assert p.grad is not None and p.grad.stride() == p.stride()
