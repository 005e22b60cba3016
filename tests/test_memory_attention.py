"""``SelectiveMemoryAttention`` against a slow reference written with explicit loops."""

from __future__ import annotations

import math

import pytest
import torch

from hybrid_cdit.attention import SelectiveMemoryAttention


@torch.no_grad()
def slow_reference(
    attn: SelectiveMemoryAttention, x: torch.Tensor, memory: torch.Tensor, key_mask: torch.Tensor
) -> torch.Tensor:
    """Loops over samples, coarse cells, heads and keys: each ``r x r`` group of hidden tokens
    (row-major ``(a, b)`` order, then channels) is one query; its output is split back in the
    same order. A row with no attendable key attends to every key."""
    n, _, dim = x.shape
    r, side = attn.ratio, attn.grid_size // attn.ratio
    heads, inner = attn.num_heads, attn.inner_dim
    head_dim = inner // heads
    wq, bq = attn.q_proj.weight, attn.q_proj.bias
    wkv, bkv = attn.kv_proj.weight, attn.kv_proj.bias
    wo, bo = attn.out_proj.weight, attn.out_proj.bias
    out = torch.zeros_like(x)
    for s in range(n):
        keys = [wkv[:inner] @ m + bkv[:inner] for m in memory[s]]
        values = [wkv[inner:] @ m + bkv[inner:] for m in memory[s]]
        allowed = [bool(v) for v in key_mask[s]]
        if not any(allowed):
            allowed = [True] * len(allowed)
        for i in range(side):
            for j in range(side):
                rows = [
                    (r * i + a) * attn.grid_size + r * j + b for a in range(r) for b in range(r)
                ]
                query = wq @ torch.cat([x[s, row] for row in rows]) + bq
                attended = []
                for h in range(heads):
                    part = slice(h * head_dim, (h + 1) * head_dim)
                    logits = [
                        float(query[part] @ key[part]) / math.sqrt(head_dim)
                        for key, ok in zip(keys, allowed, strict=True)
                        if ok
                    ]
                    kept = [value[part] for value, ok in zip(values, allowed, strict=True) if ok]
                    top = max(logits)
                    weights = [math.exp(logit - top) for logit in logits]
                    total = sum(weights)
                    attended.append(sum(w / total * v for w, v in zip(weights, kept, strict=True)))
                spread = wo @ torch.cat(attended) + bo
                for g, row in enumerate(rows):
                    out[s, row] = spread[g * dim : (g + 1) * dim]
    return out


@pytest.mark.parametrize(
    ("ratio", "inner_dim", "heads"), [(1, None, 2), (2, None, 2), (2, 4, 4), (4, 6, 3)]
)
def test_matches_the_slow_reference(ratio, inner_dim, heads):
    torch.manual_seed(ratio * 10 + heads)
    dim, grid, n, tokens = 6, 4, 3, 5
    attn = SelectiveMemoryAttention(dim, heads, grid, ratio=ratio, inner_dim=inner_dim).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_()  # biases too: reset_parameters zeroes them
    x = torch.randn(n, grid * grid, dim, dtype=torch.float64)
    memory = torch.randn(n, tokens, dim, dtype=torch.float64)
    key_mask = torch.tensor(
        [[True] * tokens, [True, False, True, False, False], [False] * tokens]  # 3rd: empty
    )
    keys, values = attn.keys_values(memory)
    out = attn(x, keys, values, key_mask)
    expected = slow_reference(attn, x, memory, key_mask)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_masked_keys_do_not_matter():
    torch.manual_seed(0)
    attn = SelectiveMemoryAttention(6, 2, 4, ratio=2).double()
    x = torch.randn(2, 16, 6, dtype=torch.float64)
    memory = torch.randn(2, 5, 6, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True, False]] * 2)
    changed = memory.clone()
    changed[:, ~mask[0]] = 1e3 * torch.randn_like(changed[:, ~mask[0]])
    a = attn(x, *attn.keys_values(memory), mask)
    b = attn(x, *attn.keys_values(changed), mask)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
