"""``--tie-backbone`` of the Memory Maze benchmark: the hybrid's CDiT weights are the CDiT's
throughout training, so without memory it is exactly the CDiT (synthetic episodes, tiny models,
whose function-preserving memory branch stays closed in a few steps either way)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from benchmarks.maze import pipeline as bench
from benchmarks.maze import training
from benchmarks.maze import worlds as mt
from safetensors.torch import load_file

from tests.test_maze_baselines import TINY

pytest_plugins = ("tests.maze_fixtures",)  # the episodes and one_thread fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


def _saved(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "models" / "seed0" / f"{name}.safetensors"))


def test_tied_hybrid_is_the_cdit_without_memory(episodes: list[mt.Episode], tmp_path: Path) -> None:
    flags = [*TINY, "--steps", "6", "--no-outback"]
    tied = bench.run(
        bench.parse_args([*flags, "--tie-backbone", "--out", str(tmp_path / "tied")]),
        episodes[:1],
        episodes[1:],
    )
    free = bench.run(
        bench.parse_args([*flags, "--out", str(tmp_path / "free")]), episodes[:1], episodes[1:]
    )
    assert tied["tie_backbone"] is True and free["tie_backbone"] is False
    for folder, equal in ((tmp_path / "tied", True), (tmp_path / "free", False)):
        cdit, hybrid = _saved(folder, "cdit"), _saved(folder, "hybrid")
        assert set(cdit) < set(hybrid)
        same = all(torch.equal(hybrid[key], value) for key, value in cdit.items())
        assert same is equal, folder
    # the CDiT trains the same either way; without memory the tied hybrid is exactly it
    assert tied["novel_psnr_cdit"] == free["novel_psnr_cdit"]
    assert tied["revisit_psnr_hybrid_no_memory"] == tied["revisit_psnr_cdit"]
    assert tied["novel_psnr_hybrid"] == tied["novel_psnr_cdit"]  # memory is never active there


def test_follow_cdit_copies_only_cdit_weights() -> None:
    args = bench.parse_args(TINY)
    cdit, hybrid = training.build_models(args)
    memory_before = {n: p.clone() for n, p in hybrid.named_parameters() if "memory" in n}
    assert memory_before
    with torch.no_grad():
        for p in cdit.parameters():
            p.add_(1.0)
    training.follow_cdit(hybrid, cdit)
    hybrid_params = dict(hybrid.named_parameters())
    for name, value in cdit.named_parameters():
        assert torch.equal(hybrid_params[name], value), name
    for name, value in memory_before.items():
        assert torch.equal(hybrid_params[name], value), name
    other = training.build_models(bench.parse_args([*TINY, "--depth", "3"]))[0]
    with pytest.raises(RuntimeError, match="CDiT parameters the hybrid lacks"):
        training.follow_cdit(hybrid, other)
