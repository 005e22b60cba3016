"""The content re-ranking study of the Memory Maze benchmark (``benchmarks.maze.content_retrieval``)
on synthetic episodes (no MuJoCo, no model)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from benchmarks.maze import content_retrieval as cr
from benchmarks.maze import protocol as mmem
from benchmarks.maze import worlds as mt

from tests.test_maze_baselines import TINY

pytest_plugins = ("tests.maze_fixtures",)  # the episodes and one_thread fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


def _rerank_reference(
    indices: list[int], mask: list[bool], score: list[float], k: int
) -> tuple[list[int], list[bool]]:
    usable = sorted((i for i in range(len(indices)) if mask[i]), key=lambda i: (-score[i], i))
    rest = [i for i in range(len(indices)) if not mask[i]]
    picked = (usable + rest)[:k]
    return [indices[i] for i in picked], [mask[i] for i in picked]


def test_rerank_keeps_the_best_usable_slots_in_order() -> None:
    gen = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 100, (64, 9), generator=gen)
    mask = torch.rand(64, 9, generator=gen) < 0.7
    score = torch.randint(0, 4, (64, 9), generator=gen).float()  # many ties
    for k in (1, 4, 9):
        kept, kept_mask = cr.rerank(indices, mask, score, k)
        assert kept.shape == kept_mask.shape == (64, k)
        for b in range(64):
            ref, ref_mask = _rerank_reference(
                indices[b].tolist(), mask[b].tolist(), score[b].tolist(), k
            )
            usable = int(kept_mask[b].sum())
            assert kept[b, :usable].tolist() == ref[:usable], b
            assert kept_mask[b].tolist() == ref_mask, b
    with pytest.raises(ValueError, match=r"k must be in \[1, 9\], got 10"):
        cr.rerank(indices, mask, score, 10)


def _hit_rate(data: mmem.Data, schedule: mmem.MemorySchedule) -> float:
    """The revisit criterion by hand: some usable slot within 1 cell and 45 degrees."""
    hits, total = 0, 0
    for e, t in data.revisit.nonzero().tolist():
        total += 1
        target = data.poses[e, t].tolist()
        for slot, usable in zip(
            schedule.indices[e, t].tolist(), schedule.mask[e, t].tolist(), strict=True
        ):
            x, y, yaw = data.poses[e, slot].tolist()
            turn = (yaw - target[2] + math.pi) % (2 * math.pi) - math.pi
            if (
                usable
                and math.hypot(x - target[0], y - target[1]) <= 1
                and abs(turn) <= math.pi / 4
            ):
                hits += 1
                break
    return hits / total


def test_rows_figures_and_command_line(
    episodes: list[mt.Episode],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flags = [*TINY, "--settings", "jitter:0.5,15", "drift:0.1,2"]
    args = cr.parse_args(flags)
    summary = cr.run(args, episodes)
    rows = summary["rows"]
    assert isinstance(rows, list)
    assert [r["setting"] for r in rows] == [
        "exact",
        "jitter 0.5 cell / 15 deg",
        "drift 10% / 2 deg",
    ]
    data = mmem.Data(episodes, args.stride, args.size, mmem.settings_from(args))
    assert summary["revisit_targets"] == int(data.revisit.sum()) > 0
    exact, jitter, _ = rows
    assert exact["revisit_pose_hit_rate"] == pytest.approx(_hit_rate(data, data.schedule))
    assert jitter["revisit_pose_hit_rate"] < exact["revisit_pose_hit_rate"]
    for row in rows:
        for band in ("revisit", "novel"):
            for name in ("pose", "pool", "pixel", "warp"):
                for figure in ("hit_rate", "active"):
                    assert 0.0 <= row[f"{band}_{name}_{figure}"] <= 1.0
            # a re-ranking keeps k slots of the pool: never a hit the pool lacks
            for name in ("pixel", "warp"):
                assert row[f"{band}_{name}_hit_rate"] <= row[f"{band}_pool_hit_rate"]
        assert row["novel_pose_hit_rate"] == 0.0  # nothing truly near a novel target

    # a pool of exactly the pose retrieval: re-ranking keeps the same slots
    same = cr.run(
        cr.parse_args([*flags, "--pool", str(args.top_k), "--pool-threshold", str(args.threshold)]),
        episodes,
    )["rows"]
    assert isinstance(same, list)
    for row in same:
        for band in ("revisit", "novel"):
            for name in ("pool", "pixel", "warp"):
                for figure in ("hit_rate", "active"):
                    key = f"{band}_{name}_{figure}"
                    assert row[key] == pytest.approx(row[f"{band}_pose_{figure}"]), key

    # a confidence only exact matches reach: the warp re-ranking keeps fewer slots
    strict = cr.run(cr.parse_args([*flags, "--min-confidence", "1e9"]), episodes)["rows"]
    assert isinstance(strict, list)
    for row, loose in zip(strict, rows, strict=True):
        assert row["revisit_warp_active"] <= loose["revisit_warp_active"]
    assert strict[0]["revisit_warp_active"] < exact["revisit_warp_active"]

    monkeypatch.setattr(cr, "held_out_episodes", lambda args: episodes)
    capsys.readouterr()
    cr.main([*TINY, "--settings", "drift:0.05,1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert "revisit hit: warp" in "\n".join(out)
    last = json.loads(out[-1])
    assert [r["setting"] for r in last["rows"]] == ["exact", "drift 5% / 1 deg"]
    assert last["rows"][0]["revisit_pose_hit_rate"] == pytest.approx(exact["revisit_pose_hit_rate"])


def test_flags_are_checked() -> None:
    with pytest.raises(SystemExit):
        cr.parse_args([*TINY, "--pool", "1", "--top-k", "4"])
    with pytest.raises(SystemExit):
        cr.parse_args([*TINY, "--pool-threshold", "1.5"])
    with pytest.raises(SystemExit):
        cr.parse_args([*TINY, "--min-confidence", "-1"])
    with pytest.raises(SystemExit):
        cr.parse_args([*TINY, "--pose-jitter", "0.1,3"])
    args = cr.parse_args(TINY)
    assert args.pool == 16 and args.pool_threshold == 0.3 and args.min_confidence == 0.0
    assert len(args.settings) == 6
