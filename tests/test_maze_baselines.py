"""The Memory Maze benchmark's baselines, bands, gap bins, SSIM, intervals and seed aggregation,
on hand-computed expectations and tiny synthetic runs (no MuJoCo)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from benchmarks import side_by_side as sbs
from benchmarks.maze import baselines as bl
from benchmarks.maze import evaluation as me
from benchmarks.maze import pipeline as bench
from benchmarks.maze import protocol as mmem
from benchmarks.maze import stats
from benchmarks.maze import worlds as mt
from safetensors.torch import load_file

from hybrid_cdit import CDiT
from tests.maze_helpers import tiny_pair

pytest_plugins = ("tests.maze_fixtures",)  # the episodes and one_thread fixtures
pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = mmem.MemorySettings(context=2, capacity=40, top_k=3, threshold=0.5, scale=4.0)


def _ssim_reference(a: np.ndarray, b: np.ndarray, window: int, sigma: float) -> float:
    """Wang et al.'s SSIM written out patch by patch (float64), averaged over channels."""
    x = np.arange(window) - (window - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for c in range(a.shape[0]):
        for i in range(a.shape[1] - window + 1):
            for j in range(a.shape[2] - window + 1):
                pa = a[c, i : i + window, j : j + window]
                pb = b[c, i : i + window, j : j + window]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va = (w * (pa - ma) ** 2).sum()
                vb = (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                values.append(
                    (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
                )
    return float(np.mean(values))


def test_ssim_matches_the_formula_and_hand_values() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    b = (a + 0.2 * torch.rand(2, 3, 6, 6, generator=gen, dtype=torch.float64)).clamp(0, 1)
    got = sbs.ssim(a, b, window=3, sigma=1.5)
    for i in range(2):
        expected = _ssim_reference(a[i].numpy(), b[i].numpy(), 3, 1.5)
        assert float(got[i]) == pytest.approx(expected, rel=1e-9)
    # an 11 window on 6 x 6 images shrinks to 5
    whole = sbs.ssim(a, b)
    assert float(whole[0]) == pytest.approx(_ssim_reference(a[0].numpy(), b[0].numpy(), 5, 1.5))
    torch.testing.assert_close(sbs.ssim(a, a), torch.ones(2, dtype=torch.float64))
    # constant black against constant white: c1 c2 / ((1 + c1) c2) = c1 / (1 + c1)
    black, white = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    assert float(sbs.ssim(black, white)[0]) == pytest.approx(1e-4 / (1 + 1e-4), rel=1e-4)
    with pytest.raises(ValueError, match="a and b must be"):
        sbs.ssim(a, b[:, :2])


def test_bootstrap_interval_over_episodes_by_hand() -> None:
    # episodes {0: [1, 1], 1: [3]}: a draw is (0, 0) -> 1, (1, 1) -> 3, mixed -> 5/3
    values, episode = torch.tensor([1.0, 1.0, 3.0]), torch.tensor([0, 0, 1])
    low, high = stats.bootstrap_interval(values, episode, 2, draws=4000, seed=1)
    assert (low, high) == (pytest.approx(1.0), pytest.approx(3.0))
    low, high = stats.bootstrap_interval(values, episode, 2, draws=4000, seed=1, level=0.2)
    assert low == pytest.approx(5 / 3) and high == pytest.approx(5 / 3)  # the central draws
    # two strata weighted 1/2: episode 0 has (0, 2), episode 1 has (2, 4) -> 1, 2 or 3
    values = torch.tensor([0.0, 2.0, 2.0, 4.0])
    episode, strata = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    low, high = stats.bootstrap_interval(
        values, episode, 2, strata=strata, weights=(0.5, 0.5), draws=4000
    )
    assert (low, high) == (pytest.approx(1.0), pytest.approx(3.0))
    with pytest.raises(ValueError, match="values and episode must be"):
        stats.bootstrap_interval(values, episode[:2], 2)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got 1.5"):
        stats.bootstrap_interval(values, episode, 2, level=1.5)


def test_headline_intervals_name_the_gain_and_weight_all() -> None:
    psnr = {"hybrid": torch.tensor([12.0, 14.0, 10.0, 9.0]), "cdit": torch.tensor([10.0] * 4)}
    episode = torch.tensor([0, 1, 0, 1])
    bands = {
        "revisit": torch.tensor([True, True, False, False]),
        "novel": torch.tensor([False, False, True, False]),
        "middle": torch.tensor([False, False, False, True]),
    }
    weights = {"revisit": 0.5, "novel": 0.25, "middle": 0.25}
    out = stats.headline_intervals(psnr, episode, bands, weights, 2, draws=2000)
    assert out["revisit_psnr_gain_hybrid_vs_cdit"] == pytest.approx(3.0)
    assert (out["revisit_gain_ci_low"], out["revisit_gain_ci_high"]) == (
        pytest.approx(2.0),
        pytest.approx(4.0),
    )
    assert out["all_psnr_gain_hybrid_vs_cdit"] == pytest.approx(0.5 * 3 + 0.25 * 0 - 0.25 * 1)
    assert "revisit_psnr_gain_hybrid_vs_copy_top" not in out  # no such predictor given


def test_outback_intervals_over_windows_by_hand() -> None:
    # window 0 has two return frames, window 1 one; self-consistency gains 1, 1 and 3 dB,
    # against the truth -1 everywhere
    outback = {
        "window": torch.tensor([0, 0, 1]),
        "windows": 2,
        "self_hybrid": torch.tensor([18.0, 19.0, 20.0]),
        "self_cdit": torch.tensor([17.0, 18.0, 17.0]),
        "truth_hybrid": torch.tensor([15.0, 15.0, 16.0]),
        "truth_cdit": torch.tensor([16.0, 16.0, 17.0]),
    }
    out = bench.outback_intervals(outback, draws=4000)
    assert out["outback_self_gain"] == pytest.approx(5 / 3)
    assert (out["outback_self_gain_ci_low"], out["outback_self_gain_ci_high"]) == (
        pytest.approx(1.0),
        pytest.approx(3.0),
    )
    assert out["outback_gain"] == pytest.approx(-1.0)
    assert out["outback_gain_ci_low"] == pytest.approx(-1.0)
    assert out["outback_gain_ci_high"] == pytest.approx(-1.0)


def test_mean_tables_by_hand() -> None:
    a = {"revisit_cdit": {"t=500": 1.0, "mean": 2.0}, "novel_cdit": {"mean": 4.0}}
    b = {"revisit_cdit": {"t=500": 3.0, "mean": 6.0}, "novel_cdit": {"mean": 0.0}}
    assert stats.mean_tables([a, b]) == {
        "revisit_cdit": {"t=500": 2.0, "mean": 4.0},
        "novel_cdit": {"mean": 2.0},
    }
    assert stats.mean_tables([a]) == a
    with pytest.raises(ValueError, match=r"tables\[1\] has other rows or columns"):
        stats.mean_tables([a, {"revisit_cdit": {"mean": 1.0}, "novel_cdit": {"mean": 1.0}}])
    with pytest.raises(ValueError, match="at least one table"):
        stats.mean_tables([])


def test_last_seen_gap_and_its_bins() -> None:
    far = [(3.0 * i, 0.0, 0.0) for i in range(1, 8)]
    poses = np.array([(0.0, 0.0, 0.0), *far, (0.5, 0.0, 0.1), (3.2, 0.0, 0.0)], np.float32)
    gap = mt.last_seen_gap(poses, 2)
    # frame 8 sees frame 0's view (8 frames ago); frame 9 sees frame 1's (8 ago); others never
    assert gap.tolist() == [-1] * 8 + [8, 8]
    assert mt.long_return_labels(poses, 2, 8).tolist() == [False] * 8 + [True, True]
    assert not mt.long_return_labels(poses, 2, 9).any()
    assert [mt.gap_bin_name(lo, hi) for lo, hi in mt.GAP_BINS] == [
        "3_10", "10_30", "30_100", "100_plus",
    ]  # fmt: skip


def test_band_scores_by_hand() -> None:
    revisit = torch.tensor([[False, False, True, True, False, False]])
    novel = torch.tensor([[False, False, False, False, True, False]])
    middle = torch.tensor([[False, False, False, False, False, True]])
    gap = torch.tensor([[-1, -1, 5, 40, -1, -1]])
    data = SimpleNamespace(revisit=revisit, novel=novel, middle=middle, gap=gap)
    episode, target = torch.zeros(4, dtype=torch.long), torch.tensor([2, 3, 4, 5])
    scores = {"psnr": {"m": torch.tensor([10.0, 20.0, 30.0, 40.0])}}
    out = me.band_scores(data, episode, target, scores, 2)  # type: ignore[arg-type]
    assert out["revisit_psnr_m"] == 15.0 and out["novel_psnr_m"] == 30.0
    assert out["middle_psnr_m"] == 40.0
    assert out["all_psnr_m"] == pytest.approx(0.5 * 15 + 0.25 * 30 + 0.25 * 40)
    assert out["revisit_psnr_m_gap_3_10"] == 10.0 and out["revisit_psnr_m_gap_30_100"] == 20.0
    assert out["revisit_targets_gap_3_10"] == 1 and "revisit_psnr_m_gap_10_30" not in out


def _constant_frames(poses: torch.Tensor) -> torch.Tensor:
    """Frame ``t`` of every episode is the constant ``-1 + t / 100`` (model scale)."""
    n, t_len = poses.shape[:2]
    level = -1 + torch.arange(t_len, dtype=torch.float32) / 100
    return level.view(1, t_len, 1, 1, 1).expand(n, t_len, 3, 4, 4).clone()


def test_copy_baselines_and_the_batch_of_every_learner(episodes: list[mt.Episode]) -> None:
    _, poses = mmem.episode_tensors(episodes, stride=4, size=8)
    frames = _constant_frames(poses)
    schedule = mmem.replay_memory(poses, SETTINGS)
    episode = torch.tensor([0, 1, 2, 0, 2])
    target = torch.tensor([40, 50, 59, 3, 30])
    scores = me.one_step_samples(
        [], frames, poses, schedule, episode, target, sbs.Diffusion(), SETTINGS,
        ddim_steps=1, seed=0,
    )  # fmt: skip
    # copying frame t - 1: a level error of 1/100 in [-1, 1], 1/200 in [0, 1] RGB
    torch.testing.assert_close(scores["psnr"]["copy_last"], torch.full((5,), 20 * math.log10(200)))
    for i in range(5):
        e, t = int(episode[i]), int(target[i])
        src = int(schedule.indices[e, t, 0]) if bool(schedule.mask[e, t, 0]) else t - 1
        expected = 20 * math.log10(200 / (t - src))
        assert float(scores["psnr"]["copy_top"][i]) == pytest.approx(expected, rel=1e-5)
    assert bool(schedule.mask[episode, target, 0].any())  # some copy_top frames are retrieved
    batch = mmem.batch_for(frames, poses, schedule, episode, target, 2)
    k = SETTINGS.top_k
    for i in range(5):
        e, t = int(episode[i]), int(target[i])
        long_src = [max(0, s) for s in range(t - 2 - k, t)]
        assert torch.equal(batch.long_cond[i], frames[e, long_src])
        assert torch.equal(batch.retrieved_cond[i, k:], frames[e, t - 2 : t])
        for j in range(k):
            slot = k - 1 - j  # the top slot sits next to the recent frames
            usable = bool(schedule.mask[e, t, slot])
            src = int(schedule.indices[e, t, slot]) if usable else t - 2
            assert torch.equal(batch.retrieved_cond[i, j], frames[e, src])
            x, y, yaw = poses[e, src].tolist()
            qx, qy, qyaw = poses[e, t].tolist()
            dx, dy = x - qx, y - qy
            rel = [
                math.cos(qyaw) * dx + math.sin(qyaw) * dy,
                -math.sin(qyaw) * dx + math.cos(qyaw) * dy,
                math.cos(yaw - qyaw),
                math.sin(yaw - qyaw),
            ]
            np.testing.assert_allclose(batch.retrieved_pose[i, j].numpy(), rel, atol=1e-5)


def test_wider_context_models_start_from_the_cdit() -> None:
    arch = {
        "input_size": 8, "context_size": 2, "patch_size": 2, "in_channels": 3,
        "hidden_size": 32, "depth": 2, "num_heads": 2, "learn_sigma": False,
    }  # fmt: skip
    torch.manual_seed(0)
    cdit = CDiT(**arch)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # open DiT's zero-initialised gates and output layer
        for p in cdit.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    posed = bl.PosedContextCDiT(extra=3, **{**arch, "context_size": 5})
    before = {k: v.clone() for k, v in posed.state_dict().items()}
    bl.load_wider_context(posed, cdit)
    state = posed.state_dict()
    old = cdit.pos_embed.detach()
    assert torch.equal(state["pos_embed"][3:], old)
    assert all(torch.equal(state["pos_embed"][i], old[0]) for i in range(3))
    assert torch.equal(
        state["blocks.0.attn.qkv.weight"], cdit.state_dict()["blocks.0.attn.qkv.weight"]
    )
    assert torch.equal(
        state["context_pose_embedder.0.weight"], before["context_pose_embedder.0.weight"]
    )
    x, t = torch.randn(2, 3, 8, 8, generator=gen), torch.tensor([10, 900])
    y, cond = torch.randn(2, 3, generator=gen), torch.randn(2, 5, 3, 8, 8, generator=gen)
    pose = torch.randn(2, 3, 4, generator=gen)
    with torch.no_grad():
        plain = posed(x, t, y, cond, torch.ones(2))
        torch.testing.assert_close(posed(x, t, y, cond, torch.ones(2), context_pose=pose), plain)
        posed.context_pose_embedder[2].weight.normal_(0, 0.5, generator=gen)
        moved = posed(x, t, y, cond, torch.ones(2), context_pose=pose)
        assert not torch.allclose(moved, plain)
        torch.testing.assert_close(posed(x, t, y, cond, torch.ones(2)), plain)
    with pytest.raises(ValueError, match=r"context_pose must have shape \(2, 3, 4\), got"):
        posed(x, t, y, cond, torch.ones(2), context_pose=pose[:, :2])
    with pytest.raises(ValueError, match="model context must be >= 5, got 2"):
        bl.load_wider_context(cdit, posed)


TINY = [
    "--steps", "4", "--pretrain-steps", "2", "--batch", "8", "--hidden", "32", "--depth", "2",
    "--heads", "2", "--patch-size", "2", "--size", "8", "--ddim-steps", "2", "--threads", "1",
    "--stride", "2", "--max-revisit-targets", "12", "--rollout-length", "5",
    "--rollout-min-start", "20", "--rollouts-per-episode", "1", "--log-every", "2",
    "--curve-every", "2", "--no-long-rollouts", "--bootstrap-draws", "200",
]  # fmt: skip


def test_seeds_aggregate_on_the_same_targets(episodes: list[mt.Episode]) -> None:
    summary = bench.run(bench.parse_args([*TINY, "--seeds", "0,1"]), episodes[:1], episodes[1:])
    for key in bench.SUMMARY_KEYS:
        assert key in summary, key
    assert summary["seed"] == [0, 1]
    for key in ("revisit_psnr_cdit", "middle_psnr_hybrid", "revisit_psnr_ctx_memory_pose"):
        per_seed = summary[f"{key}_seeds"]
        assert isinstance(per_seed, list) and len(per_seed) == 2
        assert summary[key] == pytest.approx(sum(per_seed) / 2, rel=1e-6)
    low, high = summary["revisit_gain_ci_low"], summary["revisit_gain_ci_high"]
    gain = summary["revisit_psnr_gain_hybrid_vs_cdit"]
    assert low <= gain <= high  # type: ignore[operator]
    assert gain == pytest.approx(summary["revisit_psnr_hybrid"] - summary["revisit_psnr_cdit"])  # type: ignore[operator]
    curves = summary["curve"]
    assert isinstance(curves, list) and len(curves) == 2
    assert [row["step"] for row in curves[0]] == [0, 2, 4]
    assert set(curves[0][0]) == {"step", "cdit", "hybrid", *bl.BASELINES}
    # all five learned models start from the same pretrained CDiT: one held-out loss at step 0
    start = [curves[0][0][n] for n in ("cdit", "hybrid", *bl.BASELINES)]
    assert max(start) - min(start) < 1e-6
    assert summary["params_hybrid"] > summary["params_cdit"] > 0  # type: ignore[operator]
    assert summary["flops_ctx_memory"] > summary["flops_cdit"] > 0  # type: ignore[operator]
    assert summary["outback_rollouts"] >= 1  # type: ignore[operator]
    assert summary["outback_frames"] > 0  # type: ignore[operator]
    # the out-and-back gains are the seed means' differences, inside their intervals
    for key, a, b in (
        ("outback_self_gain", "outback_self_psnr_hybrid", "outback_self_psnr_cdit"),
        ("outback_gain", "outback_psnr_hybrid", "outback_psnr_cdit"),
    ):
        assert summary[key] == pytest.approx(summary[a] - summary[b], abs=1e-4)  # type: ignore[operator]
        assert summary[f"{key}_ci_low"] <= summary[key] <= summary[f"{key}_ci_high"]  # type: ignore[operator]
    assert not any(key.startswith("_") for key in summary)


def test_outback_windows_by_hand() -> None:
    # T = 12, context 2; frame 9 last saw its view at frame 4, frame 11 at frame 1
    gap = torch.full((2, 12), -1)
    gap[0, 9], gap[0, 11] = 5, 10
    episode, start, returns, first = me.outback_windows(gap, 6, 2)
    # windows of 6 frames from s in [2, 6]: frame 9 returns for s in (3, 4]: s = 4 only
    assert episode.tolist() == [0] and start.tolist() == [4]
    assert returns[0].tolist() == [False] * 5 + [True]  # frame 9 = window index 5
    assert first[0, 5] == 0  # its first visit, frame 4, is the window's first frame
    with pytest.raises(ValueError, match="too short"):
        me.outback_windows(gap, 11, 2)


def test_outback_memory_holds_only_generated_frames(episodes: list[mt.Episode]) -> None:
    frames, poses = mmem.episode_tensors(episodes, stride=4, size=8)
    frames = frames * 2 - 1
    _, hybrid = tiny_pair(open_cdit=True)
    diff = sbs.Diffusion()
    episode, start, length = torch.tensor([0, 2]), torch.tensor([30, 36]), 8
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    kwargs = {"ddim_steps": 2, "seed": 1, "use_memory": True}
    out = me.rollout(
        hybrid, frames, poses, episode, start, length, diff, SETTINGS, generated_only=True,
        on_memory=lambda t, ctx: seen.append((t, ctx.mask.clone(), ctx.steps.clone())),  # type: ignore[union-attr]
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    used = 0
    for _, mask, steps in seen:
        assert bool((steps[mask] >= start[:, None].expand_as(steps)[mask]).all())
        used += int(mask.sum())
    assert used > 0  # generated frames came back from memory
    # the truth before each rollout's context is never read; with the true history it is
    spoiled = frames.clone()
    for i in range(2):
        spoiled[episode[i], : start[i] - 2] = 0.5
    again = me.rollout(
        hybrid, spoiled, poses, episode, start, length, diff, SETTINGS, generated_only=True,
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    torch.testing.assert_close(again, out)
    history = me.rollout(hybrid, frames, poses, episode, start, length, diff, SETTINGS, **kwargs)  # type: ignore[arg-type]
    spoiled_history = me.rollout(
        hybrid,
        spoiled,
        poses,
        episode,
        start,
        length,
        diff,
        SETTINGS,
        **kwargs,  # type: ignore[arg-type]
    )
    assert not torch.allclose(history, spoiled_history)


def test_saved_models_evaluate_to_the_same_figures(
    episodes: list[mt.Episode], tmp_path: Path
) -> None:
    """--out saves every learned model; --models-from evaluates them without training and
    gives the trained run's figures; a missing file names the model."""
    train, held_out = episodes[:1], episodes[1:]
    trained = bench.run(bench.parse_args([*TINY, "--out", str(tmp_path)]), train, held_out)
    names = {p.stem for p in (tmp_path / "models" / "seed0").iterdir()}
    assert names == {"cdit", "hybrid", *bl.BASELINES}
    from_saved = bench.parse_args([*TINY, "--models-from", str(tmp_path)])
    loaded = bench.run(from_saved, train, held_out)
    for key in ("revisit_psnr_hybrid", "novel_psnr_cdit", "revisit_psnr_ctx_memory_pose"):
        assert loaded[key] == pytest.approx(trained[key], abs=1e-6), key
    assert loaded["train_seconds"] == 0.0
    (tmp_path / "models" / "seed0" / "hybrid.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="hybrid"):
        bench.run(from_saved, train, held_out)


def test_init_from_continues_training_from_saved_weights(
    episodes: list[mt.Episode], tmp_path: Path
) -> None:
    """--init-from starts every learned model from a run's saved weights: its held-out losses
    at step 0 are the saved run's at its last step, without pretraining; it then trains on."""
    train, held_out = episodes[:1], episodes[1:]
    first = bench.run(bench.parse_args([*TINY, "--out", str(tmp_path)]), train, held_out)
    more = bench.run(bench.parse_args([*TINY, "--init-from", str(tmp_path)]), train, held_out)
    start, last = more["curve"][0], first["curve"][-1]  # type: ignore[index]
    assert start["step"] == 0 and last["step"] == 4
    for name in ("cdit", "hybrid", *bl.BASELINES):
        assert start[name] == pytest.approx(last[name], rel=1e-6), name
        assert more["curve"][-1][name] != pytest.approx(start[name], rel=1e-6), name  # type: ignore[index]
    assert more["pretrain_steps"] == 0 and more["init_from"] == str(tmp_path)
    assert first["pretrain_steps"] == 2 and first["init_from"] is None
    with pytest.raises(SystemExit):
        bench.parse_args([*TINY, "--init-from", str(tmp_path), "--models-from", str(tmp_path)])


def test_a_subset_of_baselines_trains_as_it_would_beside_the_others(
    episodes: list[mt.Episode], tmp_path: Path
) -> None:
    """--baseline-models keeps some baselines; each has the parameters, training and figures
    it has in a run with all three (saved weights compared bit for bit)."""
    train, held_out = episodes[:1], episodes[1:]
    every = bench.run(bench.parse_args([*TINY, "--out", str(tmp_path / "all")]), train, held_out)
    flags = [*TINY, "--baseline-models", "ctx_memory_pose", "--out", str(tmp_path / "one")]
    one = bench.run(bench.parse_args(flags), train, held_out)
    folder = tmp_path / "one" / "models" / "seed0"
    assert {p.stem for p in folder.iterdir()} == {"cdit", "hybrid", "ctx_memory_pose"}
    saved = load_file(str(folder / "ctx_memory_pose.safetensors"))
    full = tmp_path / "all" / "models" / "seed0"
    reference = load_file(str(full / "ctx_memory_pose.safetensors"))
    assert all(torch.equal(saved[k], reference[k]) for k in reference)
    assert one["revisit_psnr_ctx_memory_pose"] == every["revisit_psnr_ctx_memory_pose"]
    assert "revisit_psnr_long_context" not in one and "revisit_psnr_ctx_memory" not in one
    for bad in ("ctx_memory,nope", ""):
        with pytest.raises(SystemExit):
            bench.parse_args([*TINY, "--baseline-models", bad])


def test_baselines_only_trains_them_as_beside_the_saved_models(
    episodes: list[mt.Episode], tmp_path: Path
) -> None:
    """--baselines-only with --models-from pretrains the CDiT, trains only the named baselines
    (their saved weights bit for bit those of the full run) and scores them beside the saved
    CDiT and hybrid (the full run's figures); it needs --models-from and --baselines."""
    train, held_out = episodes[:1], episodes[1:]
    every = bench.run(bench.parse_args([*TINY, "--out", str(tmp_path / "all")]), train, held_out)
    flags = [
        *TINY, "--baseline-models", "ctx_memory_pose", "--baselines-only",
        "--models-from", str(tmp_path / "all"), "--out", str(tmp_path / "one"),
    ]  # fmt: skip
    one = bench.run(bench.parse_args(flags), train, held_out)
    full, folder = tmp_path / "all" / "models" / "seed0", tmp_path / "one" / "models" / "seed0"
    assert {p.stem for p in folder.iterdir()} == {"cdit", "hybrid", "ctx_memory_pose"}
    for name in ("cdit", "hybrid", "ctx_memory_pose"):
        saved = load_file(str(folder / f"{name}.safetensors"))
        reference = load_file(str(full / f"{name}.safetensors"))
        assert saved.keys() == reference.keys(), name
        assert all(torch.equal(saved[k], reference[k]) for k in reference), name
    for key in ("revisit_psnr_cdit", "revisit_psnr_hybrid", "revisit_psnr_ctx_memory_pose"):
        assert one[key] == every[key], key
    curve = one["curve"]
    assert [set(row) for row in curve] == [{"step", "ctx_memory_pose"}] * len(curve)  # type: ignore[union-attr]
    for bad in (
        [*TINY, "--baselines-only"],
        [*TINY, "--baselines-only", "--no-baselines", "--models-from", str(tmp_path / "all")],
        [*TINY, "--baselines-only", "--init-from", str(tmp_path / "all")],
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
