"""``--route-inactive`` of the Memory Maze benchmark: at evaluation the CDiT trained beside the
hybrid answers where the hybrid's memory is inactive (:func:`hybrid_cdit.routed_forward`), so
novel targets get exactly the CDiT's figures and active revisits exactly the hybrid's
(synthetic episodes, tiny models)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.maze import pipeline as bench
from benchmarks.maze import worlds as mt

from tests.test_maze_baselines import TINY

pytest_plugins = ("tests.maze_fixtures",)  # the episodes and one_thread fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


def test_routing_gives_inactive_samples_to_the_cdit(
    episodes: list[mt.Episode], tmp_path: Path
) -> None:
    flags = [*TINY, "--steps", "6", "--lr", "5e-3", "--out", str(tmp_path / "free")]
    free = bench.run(bench.parse_args(flags), episodes[:1], episodes[1:])
    again = [*TINY, "--models-from", str(tmp_path / "free"), "--route-inactive"]
    routed = bench.run(bench.parse_args(again), None, episodes[1:])
    assert routed["route_inactive"] is True and free["route_inactive"] is False
    assert routed["params_hybrid_routed"] == routed["params_hybrid"] + routed["params_cdit"]
    assert "params_hybrid_routed" not in free
    # jointly trained, the hybrid without memory is no longer the CDiT
    assert free["novel_psnr_hybrid"] != free["novel_psnr_cdit"]
    # routed, a novel target (memory never active) is the CDiT's, bit for bit
    assert routed["novel_psnr_hybrid"] == routed["novel_psnr_cdit"] == free["novel_psnr_cdit"]
    assert routed["novel_eps_mse_ratio"] == 1.0
    # where memory is active the hybrid answers, as without routing
    assert routed["revisit_active_psnr_hybrid"] == free["revisit_active_psnr_hybrid"]
    assert routed["revisit_psnr_hybrid_no_memory"] == free["revisit_psnr_hybrid_no_memory"]


def test_routing_refuses_memory_guidance() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args([*TINY, "--route-inactive", "--memory-guidance", "2"])
