"""Per-slot pose uncertainty: ``MemoryContext.ray_std``, ``ray_angle_std`` and
``alignment_softening``."""

from __future__ import annotations

import math

import pytest
import torch

from hybrid_cdit import HybridCDiT
from hybrid_cdit.memory import MemoryContext, alignment_softening, ray_angle_std

from .hybrid_helpers import TINY, make_inputs, make_memory, trained_like_hybrid
from .hybrid_helpers import replace as helpers_replace


def context(ray_std: torch.Tensor | None, mask: torch.Tensor | None = None) -> MemoryContext:
    return MemoryContext(
        frames=torch.zeros(2, 3, 4, 2, 2),
        poses=torch.zeros(2, 3, 3),
        scores=torch.ones(2, 3),
        mask=torch.ones(2, 3, dtype=torch.bool) if mask is None else mask,
        query_pose=torch.zeros(2, 3),
        ray_std=ray_std,
    )


@pytest.mark.parametrize(
    ("ray_std", "match"),
    [
        (torch.zeros(2, 2), "ray_std"),
        (torch.zeros(2, 3, dtype=torch.long), "floating"),
        (torch.full((2, 3), float("nan")), "ray_std must be >= 0"),
        (-torch.ones(2, 3), "ray_std must be >= 0"),
    ],
)
def test_ray_std_is_validated(ray_std: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        context(ray_std)


def test_ray_std_moves_with_the_geometry_and_unknown_slots_are_masked() -> None:
    std = torch.tensor([[0.0, float("inf"), 0.2], [0.1, 0.1, 0.1]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    ctx = context(std, mask)
    moved = ctx.to(dtype=torch.bfloat16, geometry_dtype=torch.float64)
    assert moved.ray_std is not None and moved.ray_std.dtype == torch.float64
    assert moved.frames.dtype == torch.bfloat16
    assert not ctx.is_placed(torch.device("cpu"), torch.float32, torch.float64)
    known = ctx.with_known_poses()
    assert known.mask.tolist() == [[True, False, False], [True, False, True]]
    assert known.ray_std is not None
    torch.testing.assert_close(known.ray_std, torch.tensor([[0.0, 0.0, 0.2], [0.1, 0.1, 0.1]]))
    assert ctx.mask.tolist() == mask.tolist()  # the original is untouched
    exact = context(torch.zeros(2, 3))
    assert exact.with_known_poses() is exact
    assert context(None).with_known_poses().ray_std is None


def test_ray_angle_std_matches_sampled_ray_errors() -> None:
    """Turn the camera by a heading error and shift it sideways by a position error; the angle
    under which a point ``depth`` ahead is seen changes by an amount whose s.d. the formula
    gives (small errors)."""
    gen = torch.Generator().manual_seed(0)
    n, depth, pos_sd, head_sd = 200_000, 2.0, 0.02, 0.01
    heading = head_sd * torch.randn(n, generator=gen, dtype=torch.float64)
    lateral = pos_sd * torch.randn(n, generator=gen, dtype=torch.float64)
    forward = pos_sd * torch.randn(n, generator=gen, dtype=torch.float64)
    seen = torch.atan2(-lateral, depth - forward) - heading  # bearing of the point (depth, 0)
    expected = ray_angle_std(
        torch.tensor(pos_sd, dtype=torch.float64), torch.tensor(head_sd, dtype=torch.float64), depth
    )
    assert float(seen.std()) == pytest.approx(float(expected), rel=0.01)
    assert float(expected) == pytest.approx(math.hypot(head_sd, pos_sd / depth))
    unknown = ray_angle_std(torch.tensor([float("inf")]), torch.tensor([0.0]), 1.0)
    assert torch.isinf(unknown).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 0.0}, "depth"),
        ({"position_std": torch.tensor([-1.0])}, "position_std"),
        ({"heading_std": torch.tensor([float("nan")])}, "heading_std"),
        ({"heading_std": torch.tensor([1])}, "heading_std"),
    ],
)
def test_ray_angle_std_refuses_bad_input(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "position_std": torch.tensor([0.1]),
        "heading_std": torch.tensor([0.1]),
        "depth": 1.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ray_angle_std(**args)  # type: ignore[arg-type]


def test_alignment_softening_by_hand() -> None:
    std = torch.tensor([[0.0, 0.1, 0.3, float("inf")]])
    torch.testing.assert_close(alignment_softening(std, 0.1), torch.tensor([[1.0, 0.5, 0.1, 0.0]]))


# ----------------------------------------------------------------- in a HybridCDiT's forward


def _model_and_inputs() -> tuple[HybridCDiT, dict[str, torch.Tensor], MemoryContext]:
    model = trained_like_hybrid(memory_patch_size=TINY["patch_size"])
    return model, make_inputs(n=3), make_memory(n=3, k=4)


def test_exact_poses_keep_the_output_and_the_distance_is_softened_per_slot() -> None:
    model, inputs, memory = _model_and_inputs()
    with torch.no_grad():
        plain = model(**inputs, memory=memory)
        zero = model(**inputs, memory=helpers_replace(memory, ray_std=torch.zeros(3, 4)))
        assert torch.equal(plain, zero)
        std = torch.tensor([[0.0, 0.1, 0.3, 1.0]]).expand(3, 4).contiguous()
        soft = helpers_replace(memory, ray_std=std)
        distance = model.ray_distance(memory)
        softened = model.ray_distance(soft)
        side = TINY["input_size"] // TINY["patch_size"]
        s = model.camera_fov / side
        factor = torch.tensor([s**2 / (s**2 + v**2) for v in (0.0, 0.1, 0.3, 1.0)])
        expected = distance.view(3, side * side, 4, -1) * factor[None, None, :, None]
        torch.testing.assert_close(softened, expected.view_as(distance))
        assert not torch.allclose(model(**inputs, memory=soft), plain)


def test_a_very_uncertain_slot_has_no_alignment_prior() -> None:
    """With ray_std far above the token spacing the bias vanishes: the output is that of the
    same model with every ray strength 0."""
    model, inputs, memory = _model_and_inputs()
    with torch.no_grad():
        vague = model(**inputs, memory=helpers_replace(memory, ray_std=torch.full((3, 4), 1e4)))
        strengths = [p for n, p in model.named_parameters() if n.endswith("ray_strength")]
        assert strengths
        for strength in strengths:
            strength.zero_()
        no_prior = model(**inputs, memory=memory)
    torch.testing.assert_close(vague, no_prior, atol=1e-5, rtol=1e-5)


def test_unknown_poses_are_masked_and_a_sample_without_any_gets_the_cdit() -> None:
    model, inputs, memory = _model_and_inputs()
    std = torch.zeros(3, 4)
    std[0] = float("inf")  # sample 0: no known pose
    std[1, 2] = float("inf")  # sample 1: slot 2 unknown
    with torch.no_grad():
        out = model(**inputs, memory=helpers_replace(memory, ray_std=std))
        cdit = model(**inputs)
        mask = memory.mask.clone()
        mask[0] = False
        mask[1, 2] = False
        masked = model(**inputs, memory=helpers_replace(memory, mask=mask))
    assert torch.equal(out[0], cdit[0])
    torch.testing.assert_close(out, masked, atol=1e-5, rtol=1e-5)
    assert model.active_samples(helpers_replace(memory, ray_std=std)).tolist() == [
        False,
        True,
        True,
    ]
