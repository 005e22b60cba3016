"""``memory_ray_alignment``: the attention bias from view-ray agreement, checked against
independent geometry and softmax references, plus its compatibility guarantees."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from hybrid_cdit import HybridCDiT
from hybrid_cdit.attention import SelectiveMemoryAttention
from hybrid_cdit.attention.functional import multihead_attention
from hybrid_cdit.models.memory_reader import MemoryReader

from .hybrid_helpers import TINY, make_inputs, make_memory, trained_like_hybrid


def _reference_attention(q, k, v, heads, key_mask, bias):
    """Per-head softmax(q k^T / sqrt(d) + bias) v, written out with numpy."""
    q, k, v = (t.double().numpy() for t in (q, k, v))
    n, lq, dim = q.shape
    d = dim // heads
    out = np.zeros((n, lq, dim))
    for b in range(n):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            logits = q[b, :, cols] @ k[b, :, cols].T / math.sqrt(d) + bias[b, h].double().numpy()
            logits[:, ~key_mask[b].numpy()] = -np.inf
            weights = np.exp(logits - logits.max(1, keepdims=True))
            weights /= weights.sum(1, keepdims=True)
            out[b, :, cols] = weights @ v[b, :, cols]
    return torch.from_numpy(out)


def test_attention_bias_adds_to_the_logits_and_respects_the_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 8, generator=g, dtype=torch.float64) for n in (5, 7, 7))
    bias = torch.randn(2, 2, 5, 7, generator=g, dtype=torch.float64) * 3
    key_mask = torch.ones(2, 7, dtype=torch.bool)
    key_mask[0, 2] = key_mask[1, 5:] = False
    out = multihead_attention(q, k, v, 2, key_mask, bias)
    torch.testing.assert_close(out, _reference_attention(q, k, v, 2, key_mask, bias))


def _camera_direction(u: float, v: float, fov: float, yaw: float, pitch: float) -> np.ndarray:
    """World direction of the ray at image coordinates ``u, v`` in ``[-1, 1]`` (right, down)."""
    t = math.tan(fov / 2)
    local = np.array([1.0, -u * t, -v * t])  # forward, left, up
    local /= np.linalg.norm(local)
    cp, sp, cy, sy = math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    forward = np.array([cp * cy, cp * sy, sp])
    left = np.array([-sy, cy, 0.0])
    up = np.cross(forward, left)
    return local[0] * forward + local[1] * left + local[2] * up


def _reference_ray_distance(query: np.ndarray, poses: np.ndarray, grid: int, fov: float):
    """``(G*G, k*G*G)`` distances for one sample, cell by cell."""
    centres = [(2 * i + 1) / grid - 1 for i in range(grid)]
    cells = [(u, v) for v in centres for u in centres]  # row-major: v is the row
    spacing = 1 - math.cos(fov / grid)

    def pitch_yaw(p: np.ndarray) -> tuple[float, float]:
        return (float(p[3]), float(p[4])) if p.shape[0] == 5 else (0.0, float(p[2]))

    qp, qy = pitch_yaw(query)
    out = np.zeros((grid * grid, len(poses) * grid * grid))
    for i, (u, v) in enumerate(cells):
        dq = _camera_direction(u, v, fov, qy, qp)
        for j, pose in enumerate(poses):
            mp, my = pitch_yaw(pose)
            for c, (mu, mv) in enumerate(cells):
                cos = float(dq @ _camera_direction(mu, mv, fov, my, mp))
                out[i, j * grid * grid + c] = (1 - cos) / spacing
    return out


@pytest.mark.parametrize("pose_dim", [3, 5])
def test_ray_distance_matches_camera_geometry(pose_dim):
    model = HybridCDiT(**TINY, memory_ray_alignment=True, camera_fov=1.3)
    memory = make_memory(n=2, k=3, pose_dim=pose_dim, seed=4)
    g = torch.Generator().manual_seed(5)
    query = torch.randn(2, pose_dim, generator=g) * 0.5
    memory = replace(memory, query_pose=query)
    got = model.ray_distance(memory)
    grid = TINY["input_size"] // model.memory_patch_size
    assert got.shape == (2, grid * grid, 3 * grid * grid)
    for b in range(2):
        expected = _reference_ray_distance(
            query[b].double().numpy(), memory.poses[b].double().numpy(), grid, 1.3
        )
        np.testing.assert_allclose(got[b].numpy(), expected, atol=2e-4)


def test_same_camera_gives_zero_on_the_diagonal_and_one_spacing_apart_about_one():
    model = HybridCDiT(**TINY, memory_patch_size=2, memory_ray_alignment=True)
    memory = make_memory(n=1, k=1)
    memory = replace(memory, poses=memory.query_pose[:, None].clone())
    distance = model.ray_distance(memory)[0]
    grid = TINY["input_size"] // 2
    torch.testing.assert_close(distance.diagonal(), torch.zeros(grid * grid), atol=1e-5, rtol=0)
    # neighbours in a row: about one mean token spacing, wider at the centre of a pinhole image
    row = distance.reshape(grid, grid, grid, grid)[1, 1, 1]
    assert 0.9 < float(row[0]) < 1.1 and 1.1 < float(row[2]) < 1.6 and float(row[3]) > 3.0


def test_a_strong_alignment_attends_to_the_token_looking_the_same_way():
    """With learned logits at zero, identity values and output, the output of query cell ``i``
    is its attention row: it peaks on the memory token whose ray is nearest to its own."""
    grid = 4
    cells = grid * grid
    attn = SelectiveMemoryAttention(cells, 1, grid, ray_alignment=True)
    with torch.no_grad():
        for layer in (attn.q_proj, attn.kv_proj, attn.out_proj):
            layer.weight.zero_()
            layer.bias.zero_()
        attn.kv_proj.weight[cells:] = torch.eye(cells)
        attn.out_proj.weight.copy_(torch.eye(cells))
        attn.ray_strength.fill_(30.0)
    model = HybridCDiT(**TINY, memory_patch_size=2, memory_ray_alignment=True)
    memory = make_memory(n=1, k=1)
    poses = memory.query_pose[:, None].clone()
    poses[..., -1] = 0.35  # the memory camera is turned left
    distance = model.ray_distance(replace(memory, poses=poses))
    tokens = torch.eye(cells)[None]  # memory token j is the one-hot vector j
    keys, values = attn.keys_values(tokens)
    everything = torch.ones(1, cells, dtype=torch.bool)
    with torch.no_grad():
        weights = attn(torch.zeros(1, cells, cells), keys, values, everything, distance)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, cells))
    chosen = weights[0].argmax(-1)
    torch.testing.assert_close(chosen, distance[0].argmin(-1))
    assert float(weights[0].amax(-1).min()) > 0.5
    # what a cell sees lies further right in the turned camera's image, in the same row
    query_cell = torch.arange(cells)
    assert torch.equal(chosen // grid, query_cell // grid)
    assert bool((chosen % grid >= query_cell % grid).all())
    assert bool((chosen % grid > query_cell % grid).any())


def test_fresh_alignment_starts_at_strength_one_and_learns():
    model = trained_like_hybrid(memory_ray_alignment=True).train()
    fresh = HybridCDiT(**TINY, memory_ray_alignment=True)
    for block in fresh.hybrid_blocks():
        if block.enable_memory:
            assert torch.equal(block.memory_attn.ray_strength, torch.ones(TINY["num_heads"]))
    model(**make_inputs(), memory=make_memory()).square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.endswith("memory_attn.ray_strength")]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_alignment_changes_outputs_and_zero_strength_is_no_alignment():
    aligned = trained_like_hybrid(memory_ray_alignment=True)
    plain = HybridCDiT(**TINY, memory_ray_alignment=False).eval()
    plain.load_state_dict(aligned.state_dict(), strict=False)
    inputs, memory = make_inputs(), make_memory()
    with torch.no_grad():
        a, b = aligned(**inputs, memory=memory), plain(**inputs, memory=memory)
        assert (a - b).abs().amax() > 1e-4
        for block in aligned.hybrid_blocks():
            if block.enable_memory:
                block.memory_attn.ray_strength.zero_()
        torch.testing.assert_close(aligned(**inputs, memory=memory), b, atol=1e-6, rtol=0)


def test_loading_a_branch_trained_without_alignment_zeroes_only_the_strengths():
    trained = trained_like_hybrid(memory_ray_alignment=False)
    model = HybridCDiT(**TINY, memory_ray_alignment=True).eval()
    report = model.load_state_dict(trained.state_dict(), strict=False)
    assert sorted(report.missing_keys) == [
        f"blocks.{i}.memory_attn.ray_strength" for i in model.memory_layers
    ]
    inputs, memory = make_inputs(), make_memory()
    with torch.no_grad():
        torch.testing.assert_close(
            model(**inputs, memory=memory), trained(**inputs, memory=memory), atol=1e-6, rtol=0
        )


def test_ray_distance_is_cached_across_denoising_steps(monkeypatch):
    model = trained_like_hybrid(memory_ray_alignment=True)
    inputs, memory = make_inputs(), make_memory()
    calls = []
    original = MemoryReader.ray_distance

    def counting(reader, m):
        calls.append(1)
        return original(reader, m)

    monkeypatch.setattr(MemoryReader, "ray_distance", counting)
    with torch.no_grad():
        first = model(**inputs, memory=memory)
        second = model(**inputs, memory=memory)
    assert len(calls) == 1 and torch.equal(first, second)
