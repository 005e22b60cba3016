"""Model registry: names, variant defaults, overrides and helpful errors."""

from __future__ import annotations

import pytest
import torch

from hybrid_cdit import CDiT, CDiT_models, create_model, list_models


def test_cdit_variants_are_registered():
    assert {"CDiT-XL/2", "CDiT-L/2", "CDiT-B/2", "CDiT-S/2"} <= set(list_models())
    assert list_models("CDiT-*") == sorted(CDiT_models)
    assert list_models("nothing*") == []


@pytest.mark.parametrize(
    ("name", "depth", "hidden", "heads", "context"),
    [
        ("CDiT-XL/2", 28, 1152, 16, 4),
        ("CDiT-L/2", 24, 1024, 16, 3),
        ("CDiT-B/2", 12, 768, 12, 3),
        ("CDiT-S/2", 12, 384, 6, 3),
    ],
)
def test_variant_architecture(name, depth, hidden, heads, context):
    with torch.device("meta"):
        model = CDiT_models[name](input_size=8)
    assert isinstance(model, CDiT)
    assert (model.depth, model.hidden_size, model.num_heads, model.context_size) == (
        depth,
        hidden,
        heads,
        context,
    )
    assert model.patch_size == 2


def test_context_size_is_overridable_by_keyword():
    with torch.device("meta"):
        model = create_model("CDiT-XL/2", context_size=2, input_size=8)
        from_dict = CDiT_models["CDiT-S/2"](context_size=1, input_size=8)
    assert model.context_size == 2
    assert from_dict.context_size == 1
    assert model.pos_embed.shape[0] == 3


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model name 'CDiT-XL/4'.*'CDiT-XL/2'"):
        create_model("CDiT-XL/4")
    with pytest.raises(ValueError, match="did you mean"):
        create_model("cdit-b/2")
