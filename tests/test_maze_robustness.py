"""Corrupted memory poses in the Memory Maze benchmark: the protocol's split between true and
memory poses, the noisy evaluation pass, noisy training batches, and the robustness command, on
synthetic episodes with tiny models (no MuJoCo)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from benchmarks import side_by_side as sbs
from benchmarks.maze import noise as mn
from benchmarks.maze import pipeline as bench
from benchmarks.maze import pose_refiner as pr
from benchmarks.maze import protocol as mmem
from benchmarks.maze import robustness as rb
from benchmarks.maze import training
from benchmarks.maze import worlds as mt
from safetensors.torch import load_file, save_file

from hybrid_cdit import MemoryContext
from hybrid_cdit.memory import SlotPoseRefiner, fuse_odometry, refine_poses, relative_pose
from tests.test_maze_baselines import TINY

pytest_plugins = ("tests.maze_fixtures",)  # the episodes and one_thread fixtures
pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = mmem.MemorySettings(context=2, capacity=40, top_k=3, threshold=0.5, scale=4.0)
JITTER = mn.PoseNoise("jitter", 0.5, 15.0)


def _noisy(data: mmem.Data, seed: int = 0) -> mmem.Data:
    poses = mn.corrupt(data.poses, JITTER, torch.Generator().manual_seed(seed))
    return data.with_memory_poses(poses, SETTINGS)


def test_memory_poses_feed_the_memory_and_true_poses_the_actions(
    episodes: list[mt.Episode],
) -> None:
    data = mmem.Data(episodes, stride=4, size=8, settings=SETTINGS)
    assert data.memory_poses is data.poses
    noisy = _noisy(data)
    assert noisy.poses is data.poses and noisy.frames is data.frames
    assert noisy.revisit is data.revisit and noisy.gap is data.gap  # labels stay true
    expected = mmem.replay_memory(noisy.memory_poses, SETTINGS)
    assert torch.equal(noisy.schedule.indices, expected.indices)
    assert torch.equal(noisy.schedule.mask, expected.mask)
    assert not torch.equal(noisy.schedule.indices, data.schedule.indices)
    assert data.schedule is not noisy.schedule and data.memory_poses is data.poses
    with pytest.raises(ValueError, match=r"memory_poses must have shape \(3, 60, 3\), got"):
        data.with_memory_poses(noisy.memory_poses[:, :5], SETTINGS)

    episode, target = torch.tensor([0, 1, 2, 2]), torch.tensor([40, 50, 55, 59])
    b = mmem.batch_for(
        data.frames, data.poses, noisy.schedule, episode, target, SETTINGS.context,
        memory_poses=noisy.memory_poses,
    )  # fmt: skip
    exact = mmem.batch_for(data.frames, data.poses, data.schedule, episode, target, 2)
    torch.testing.assert_close(b.y, exact.y)  # the action: true poses
    torch.testing.assert_close(b.x_cond, exact.x_cond)
    for i, (e, t) in enumerate(zip(episode.tolist(), target.tolist(), strict=True)):
        idx = noisy.schedule.indices[e, t]
        mask = noisy.schedule.mask[e, t]
        torch.testing.assert_close(b.memory.query_pose[i], noisy.memory_poses[e, t])
        for j in range(idx.shape[0]):
            if mask[j]:
                torch.testing.assert_close(b.memory.poses[i, j], noisy.memory_poses[e, idx[j]])
                torch.testing.assert_close(b.memory.frames[i, j], data.frames[e, idx[j]])
        # the retrieved-context poses: slot k-1 first, each relative to the noisy query
        k = idx.shape[0]
        for j in range(k):
            slot = k - 1 - j
            src = idx[slot] if mask[slot] else t - SETTINGS.context
            rel = relative_pose(noisy.memory_poses[e, src], noisy.memory_poses[e, t])
            want = torch.stack([rel[0], rel[1], rel[2].cos(), rel[2].sin()])
            torch.testing.assert_close(b.retrieved_pose[i, j], want)


def test_noisy_training_memory_is_fresh_each_epoch_and_seeded(
    episodes: list[mt.Episode],
) -> None:
    data = mmem.Data(episodes, stride=4, size=8, settings=SETTINGS)
    plain = training.NoisyMemory(data, SETTINGS, None, seed=0, every=3)
    assert plain.at(1)[0] is data.poses and plain.at(4)[1] is data.schedule
    a = training.NoisyMemory(data, SETTINGS, JITTER, seed=5, every=3)
    b = training.NoisyMemory(data, SETTINGS, JITTER, seed=5, every=3)
    draws = [a.at(step)[0] for step in range(1, 8)]
    again = [b.at(step)[0] for step in range(1, 8)]
    assert all(torch.equal(x, y) for x, y in zip(draws, again, strict=True))
    assert draws[0] is draws[1] is draws[2] and draws[3] is draws[5]
    assert not torch.equal(draws[0], draws[3]) and not torch.equal(draws[3], draws[6])
    assert not torch.equal(draws[0], data.poses)
    expected = mn.corrupt(data.poses, JITTER, torch.Generator().manual_seed(5))
    torch.testing.assert_close(draws[0], expected)
    schedule = a.at(7)[1]
    assert torch.equal(schedule.indices, mmem.replay_memory(draws[6], SETTINGS).indices)
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        training.NoisyMemory(data, SETTINGS, JITTER, seed=5, every=0)


def test_training_pose_noise_reaches_only_what_reads_memory(episodes: list[mt.Episode]) -> None:
    argv = [
        "--steps", "3", "--pretrain-steps", "1", "--batch", "6", "--hidden", "32", "--depth",
        "2", "--heads", "2", "--patch-size", "2", "--size", "8", "--stride", "4",
        "--log-every", "3", "--top-k", "3",
    ]  # fmt: skip
    states = []
    for extra in ([], ["--train-pose-jitter", "0.5,15"]):
        args = bench.parse_args([*argv, *extra])
        settings = mmem.settings_from(args)
        data = mmem.Data(episodes[:2], args.stride, args.size, settings)
        cdit, hybrid = training.build_models(args)
        training.train(args, data, cdit, hybrid, sbs.Diffusion(), settings)
        states.append((cdit.state_dict(), hybrid.state_dict()))
    (cdit_a, hybrid_a), (cdit_b, hybrid_b) = states
    assert all(torch.equal(cdit_a[k], cdit_b[k]) for k in cdit_a)  # same batches and noise
    changed = [k for k in hybrid_a if not torch.equal(hybrid_a[k], hybrid_b[k])]
    assert any("memory" in k for k in changed)  # the hybrid trained on other memory poses


def _open_memory(folder: Path) -> None:
    """Perturb the saved models so that their outputs depend on their inputs and the hybrid's
    on its memory (a few training steps leave DiT's zero-initialised gates near zero): every
    CDiT weight by the same draw in the CDiT and the hybrid, the memory-only weights too."""
    models = folder / "models" / "seed0"
    cdit = load_file(str(models / "cdit.safetensors"))
    hybrid = load_file(str(models / "hybrid.safetensors"))
    gen = torch.Generator().manual_seed(3)
    for key, value in cdit.items():
        if value.is_floating_point():
            cdit[key] = value + 0.1 * torch.randn(value.shape, generator=gen)
            hybrid[key] = cdit[key].clone()
    for key, value in hybrid.items():
        if key not in cdit and value.is_floating_point():
            hybrid[key] = value + 0.1 * torch.randn(value.shape, generator=gen)
    save_file(cdit, str(models / "cdit.safetensors"))
    save_file(hybrid, str(models / "hybrid.safetensors"))


@pytest.fixture(scope="module")
def saved(episodes: list[mt.Episode], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run's saved models, the hybrid's memory branch opened."""
    saved_one = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("pose_models")
    bench.run(bench.parse_args([*TINY, "--out", str(folder)]), episodes[:1], episodes[1:])
    _open_memory(folder)
    torch.set_num_threads(saved_one)
    return folder


def test_noisy_pass_adds_keys_and_leaves_the_exact_figures(
    episodes: list[mt.Episode], saved: Path
) -> None:
    base = [*TINY, "--models-from", str(saved), "--no-outback"]
    exact = bench.run(bench.parse_args(base), episodes[:1], episodes[1:])
    noisy = bench.run(
        bench.parse_args([*base, "--pose-jitter", "0.5,15"]), episodes[:1], episodes[1:]
    )
    unchanged = [
        "revisit_psnr_hybrid", "novel_psnr_hybrid", "revisit_psnr_cdit", "revisit_psnr_copy_top",
        "rollout_revisit_psnr_hybrid", "revisit_gain_ci_low",
    ]  # fmt: skip
    for key in unchanged:
        assert noisy[key] == exact[key], key
    for key in ("revisit_psnr_hybrid_noisy_poses", "novel_psnr_hybrid_noisy_poses",
                "middle_psnr_hybrid_noisy_poses", "all_psnr_hybrid_noisy_poses",
                "revisit_psnr_copy_top_noisy_poses", "revisit_psnr_ctx_memory_pose_noisy_poses",
                "revisit_gain_noisy_poses", "revisit_gain_noisy_poses_ci_low",
                "gain_share_noisy_poses", "hit_rate", "hit_rate_noisy_poses",
                "pose_error_median", "heading_error_median_deg"):  # fmt: skip
        assert key in noisy, key
        assert key not in exact, key
    assert noisy["revisit_psnr_hybrid_noisy_poses"] != exact["revisit_psnr_hybrid"]
    gain = float(noisy["revisit_psnr_hybrid_noisy_poses"]) - float(exact["revisit_psnr_cdit"])  # type: ignore[arg-type]
    assert noisy["revisit_gain_noisy_poses"] == pytest.approx(gain, abs=1e-5)
    low, high = noisy["revisit_gain_noisy_poses_ci_low"], noisy["revisit_gain_noisy_poses_ci_high"]
    assert low <= noisy["revisit_gain_noisy_poses"] <= high  # type: ignore[operator]
    exact_gain = float(exact["revisit_psnr_hybrid"]) - float(exact["revisit_psnr_cdit"])  # type: ignore[arg-type]
    assert noisy["gain_share_noisy_poses"] == pytest.approx(gain / exact_gain, rel=1e-4)
    assert noisy["pose_noise"] == "jitter 0.5 cell / 15 deg" and exact["pose_noise"] is None
    # the pose error of 0.5-cell jitter: the median of a Rayleigh(0.5) is 0.5 sqrt(2 ln 2)
    assert noisy["pose_error_median"] == pytest.approx(0.5 * (2 * 0.6931) ** 0.5, rel=0.1)
    assert noisy["hit_rate"] == exact["informativeness"]["revisit_hit_rate"]  # type: ignore[index]
    with pytest.raises(SystemExit):
        bench.parse_args([*base, "--pose-jitter", "0.5"])
    with pytest.raises(SystemExit):
        bench.parse_args([*base, "--pose-jitter", "0.5,1", "--pose-drift", "0.1,1"])


def test_robustness_rows_repeat_the_runs_figures(
    episodes: list[mt.Episode],
    saved: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = [*TINY, "--models-from", str(saved), "--no-outback"]
    run_noisy = bench.run(
        bench.parse_args([*base, "--pose-jitter", "0.5,15"]), episodes[:1], episodes[1:]
    )
    args = rb.parse_args([*TINY, "--models-from", str(saved), "--settings", "jitter:0.5,15",
                          "drift:0.1,2"])  # fmt: skip
    assert args.baselines is False and args.settings[1] == mn.PoseNoise("drift", 0.1, 2.0)
    summary = rb.run(args, episodes[1:])
    rows = summary["rows"]
    assert isinstance(rows, list) and [r["setting"] for r in rows] == [
        "exact", "jitter 0.5 cell / 15 deg", "drift 10% / 2 deg",
    ]  # fmt: skip
    exact, jitter, drift = rows
    for key in ("revisit_psnr_cdit", "novel_psnr_cdit"):
        assert summary[key] == pytest.approx(run_noisy[key], abs=1e-4), key
    for key in ("revisit_psnr_hybrid", "novel_psnr_hybrid", "revisit_psnr_copy_top"):
        assert exact[key] == pytest.approx(run_noisy[key], abs=1e-4), key
        assert jitter[key] == pytest.approx(run_noisy[f"{key}_noisy_poses"], abs=1e-4), key
    assert exact["revisit_gain"] == pytest.approx(run_noisy["revisit_psnr_gain_hybrid_vs_cdit"])
    assert exact["gain_share"] == pytest.approx(1.0)
    assert jitter["hit_rate"] == pytest.approx(run_noisy["hit_rate_noisy_poses"])
    assert exact["hit_rate"] == pytest.approx(run_noisy["hit_rate"])
    assert jitter["pose_error_median"] == pytest.approx(run_noisy["pose_error_median"])
    assert exact["pose_error_median"] == 0.0
    assert exact["slot_heading_error_median_deg"] == pytest.approx(0.0, abs=1e-4)
    assert exact["slots_refined"] == jitter["slots_refined"] == 0.0
    assert jitter["slot_heading_error_median_deg"] > 1.0
    for row in (jitter, drift):
        assert row["revisit_psnr_hybrid"] != exact["revisit_psnr_hybrid"]
        assert row["pose_error_median"] > 0 and row["heading_error_median_deg"] > 0
        assert row["revisit_gain_ci_low"] <= row["revisit_gain"] <= row["revisit_gain_ci_high"]
        share = (row["revisit_gain"]) / exact["revisit_gain"]
        assert row["gain_share"] == pytest.approx(share)
    assert summary["revisit_targets"] == run_noisy["revisit_targets"]
    assert summary["novel_targets"] == run_noisy["novel_targets"]
    # the command line (on the same episodes): the table, then one JSON line
    monkeypatch.setattr(rb, "held_out_episodes", lambda args: episodes[1:])
    capsys.readouterr()
    rb.main([*TINY, "--models-from", str(saved), "--settings", "drift:0.05,1", "--baselines"])
    out = capsys.readouterr().out.strip().splitlines()
    assert "share of exact gain" in "\n".join(out)
    last = json.loads(out[-1])
    assert [r["setting"] for r in last["rows"]] == ["exact", "drift 5% / 1 deg"]
    assert last["rows"][0]["revisit_psnr_hybrid"] == pytest.approx(exact["revisit_psnr_hybrid"])
    # --baselines: the retrieved-context baselines too, the exact row as in the run
    for name in ("ctx_memory", "ctx_memory_pose"):
        key = f"revisit_psnr_{name}"
        assert last["rows"][0][key] == pytest.approx(run_noisy[key], abs=1e-4), key
        assert f"novel_psnr_{name}" in last["rows"][1]
    assert "revisit_psnr_long_context" not in last["rows"][0]


def test_robustness_flags_and_the_uncertainty_hook(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        rb.parse_args(["--models-from", str(saved), "--settings", "jitter=0.1,3"])
    with pytest.raises(argparse.ArgumentTypeError, match="--settings expects jitter:XY,DEG"):
        rb.parse_setting("gauss:0.1,3")
    with pytest.raises(argparse.ArgumentTypeError, match="expects F,DEG"):
        rb.parse_setting("drift:0.1")
    with pytest.raises(SystemExit):
        rb.parse_args(["--models-from", str(saved), "--pose-jitter", "0.1,3"])
    assert rb.parse_args(["--models-from", str(saved)]).settings == list(rb.DEFAULT_SETTINGS)
    with pytest.raises(SystemExit):
        rb.parse_args(["--models-from", str(saved), "--view-depth", "0"])
    gen = torch.Generator().manual_seed(0)
    poses = torch.cat([torch.rand(2, 30, 2, generator=gen) * 5, torch.zeros(2, 30, 1)], -1)
    steps = torch.tensor([[3, 10], [0, 20]])
    memory = MemoryContext(
        frames=torch.zeros(2, 2, 3, 4, 4), poses=torch.zeros(2, 2, 3), scores=torch.ones(2, 2),
        mask=torch.ones(2, 2, dtype=torch.bool), query_pose=torch.zeros(2, 3), steps=steps,
    )  # fmt: skip
    noise = mn.PoseNoise("drift", 0.1, 2.0)
    episode, target = torch.tensor([1, 0]), torch.tensor([25, 29])
    out = rb.uncertainty(noise, poses, 2.0)(memory, episode, target)
    position, heading = mn.nominal_std(noise, poses, episode, steps, target)
    assert out.ray_std is not None
    torch.testing.assert_close(out.ray_std, torch.hypot(heading, position / 2.0))


def test_memory_subsets_keep_every_per_sample_field() -> None:
    @dataclasses.dataclass(eq=False)
    class WithStd(MemoryContext):
        pose_std: torch.Tensor | None = None

    gen = torch.Generator().manual_seed(0)
    memory = WithStd(
        frames=torch.randn(4, 2, 3, 4, 4, generator=gen), poses=torch.randn(4, 2, 3, generator=gen),
        scores=torch.rand(4, 2, generator=gen), mask=torch.rand(4, 2, generator=gen) > 0.5,
        query_pose=torch.randn(4, 3, generator=gen), steps=torch.arange(8).view(4, 2),
        query_step=torch.arange(4), pose_std=torch.rand(4, 2, 2, generator=gen),
    )  # fmt: skip
    rows = torch.tensor([3, 1])
    sub = mmem.subset_memory(memory, rows)
    assert isinstance(sub, WithStd)
    for name in ("frames", "poses", "scores", "mask", "query_pose", "steps", "query_step",
                 "pose_std"):  # fmt: skip
        assert torch.equal(getattr(sub, name), getattr(memory, name)[rows]), name
    plain = MemoryContext(frames=memory.frames, poses=memory.poses, scores=memory.scores,
                          mask=memory.mask, query_pose=memory.query_pose)  # fmt: skip
    sub = mmem.subset_memory(plain, rows)
    assert sub.steps is None and sub.query_step is None
    assert torch.equal(sub.frames, plain.frames[rows])


def test_heading_refinement_hook_and_slot_pose_errors(
    episodes: list[mt.Episode], saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        rb.parse_args(["--models-from", str(saved), "--refine-headings", "0.5"])
    assert rb.parse_args(["--models-from", str(saved)]).refine_headings is None
    data = mmem.Data(episodes, stride=4, size=8, settings=SETTINGS)
    noisy = _noisy(data)
    episode, target = torch.tensor([0, 1, 2]), torch.tensor([40, 50, 59])
    memory = mmem.memory_for(noisy.frames, noisy.memory_poses, noisy.schedule, episode, target)
    seen: dict[str, torch.Tensor] = {}

    def record(
        memory: MemoryContext, reference: torch.Tensor, reference_pose: torch.Tensor, fov: float,
        *, min_confidence: float,
    ) -> tuple[MemoryContext, torch.Tensor]:  # fmt: skip
        seen.update(reference=reference, reference_pose=reference_pose)
        assert fov == pytest.approx(torch.pi / 2) and min_confidence == 3.0
        return memory, memory.mask

    monkeypatch.setattr(rb, "refine_headings", record)
    out = rb.heading_refinement(data, 3.0, 90.0)(memory, episode, target)
    assert out is memory
    assert torch.equal(seen["reference"], data.frames[episode, target - 1])
    # the reference sits where the true action says, seen from the memory's (noisy) query pose
    action = relative_pose(data.poses[episode, target], data.poses[episode, target - 1])
    from_reference = relative_pose(memory.query_pose, seen["reference_pose"])
    torch.testing.assert_close(from_reference, action.to(from_reference.dtype))
    # slot heading errors: none with exact poses, the noise's with noisy ones
    rev = torch.nonzero(data.revisit, as_tuple=True)
    exact = rb.slot_pose_errors(data, data, *rev, SETTINGS.context)
    assert exact == pytest.approx((0, 0, 0), abs=1e-5)
    jitter, position, changed = rb.slot_pose_errors(data, noisy, *rev, SETTINGS.context)
    assert 5.0 < jitter < 40.0 and changed == 0  # two 15-degree errors: median about 14
    assert 0.2 < position < 3.0  # two 0.5-cell errors, and the query's heading error

    def turn_first(memory: MemoryContext, episode: torch.Tensor, t: torch.Tensor) -> MemoryContext:
        poses = memory.poses.clone()
        poses[:, 0, 2] += 0.5
        return dataclasses.replace(memory, poses=poses)

    # true headings: no heading error left, the positions as the memory sees them
    fixed, _, changed = rb.slot_pose_errors(
        data, noisy, *rev, SETTINGS.context, rb.true_slot_poses(data, "heading")
    )
    assert fixed == pytest.approx(0.0, abs=1e-4) and changed > 0.9
    noisy_memory = mmem.memory_for(noisy.frames, noisy.memory_poses, noisy.schedule, *rev)
    moved = rb.true_slot_poses(data, "heading")(noisy_memory, *rev)
    assert torch.equal(moved.poses[..., :2], noisy_memory.poses[..., :2])
    # the whole pose: each valid slot relative to the query as the truth has it
    whole = rb.true_slot_poses(data, "pose")(noisy_memory, *rev)
    true_pose = rb.true_slot_poses(data, "pose")
    errors = rb.slot_pose_errors(data, noisy, *rev, SETTINGS.context, true_pose)
    assert errors[:2] == pytest.approx((0, 0), abs=1e-4) and errors[2] > 0.9
    exact_memory = mmem.memory_for(data.frames, data.poses, noisy.schedule, *rev)
    valid = whole.mask
    torch.testing.assert_close(
        relative_pose(whole.poses, whole.query_pose[:, None])[valid],
        relative_pose(exact_memory.poses, exact_memory.query_pose[:, None])[valid],
    )
    with pytest.raises(ValueError, match="part must be 'heading' or 'pose', got 'yaw'"):
        rb.true_slot_poses(data, "yaw")
    with pytest.raises(SystemExit):
        rb.parse_args(
            ["--models-from", str(saved), "--refine-headings", "2", "--true-slot-poses", "pose"]
        )
    # shrunk offsets: positions towards the query's, headings and masked slots kept
    half = rb.shrink_offsets(0.5)(noisy_memory, *rev)
    expected = (noisy_memory.poses[..., :2] + noisy_memory.query_pose[:, None, :2]) / 2
    torch.testing.assert_close(half.poses[..., :2][valid], expected[valid])
    assert torch.equal(half.poses[..., 2], noisy_memory.poses[..., 2])
    assert torch.equal(half.poses[~valid], noisy_memory.poses[~valid])
    with pytest.raises(SystemExit):
        rb.parse_args(["--models-from", str(saved), "--shrink-offsets", "1.5"])
    # the flags' chain: the true poses first, then the shrink, then the caller's transform
    flags = rb.parse_args(
        ["--models-from", str(saved), "--true-slot-poses", "pose", "--shrink-offsets", "0.5"]
    )
    chained = rb.heading_transform(flags, data, then=turn_first)
    assert chained is not None
    expected_poses = turn_first(rb.shrink_offsets(0.5)(whole, *rev), *rev).poses
    assert torch.equal(chained(noisy_memory, *rev).poses, expected_poses)
    assert rb.heading_transform(rb.parse_args(["--models-from", str(saved)]), data) is None
    _, _, changed = rb.slot_pose_errors(data, data, *rev, SETTINGS.context, turn_first)
    masks = mmem.memory_for(data.frames, data.poses, data.schedule, *rev).mask
    assert changed == pytest.approx(float(masks[:, 0].sum() / masks.sum()))


def test_fused_rows_give_the_memory_causally_fused_poses(
    episodes: list[mt.Episode], saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = [*TINY, "--models-from", str(saved), "--settings", "jitter:0.5,15"]
    plain = rb.run(rb.parse_args(flags), episodes[1:])
    exact_odometry = rb.run(rb.parse_args([*flags, "--fuse-odometry", "0,0"]), episodes[1:])
    assert exact_odometry["fuse_odometry"] == "drift 0% / 0 deg" and plain["fuse_odometry"] is None
    rows_plain, rows_fused = plain["rows"], exact_odometry["rows"]
    assert isinstance(rows_plain, list) and isinstance(rows_fused, list)
    assert rows_fused[1]["setting"] == "jitter 0.5 cell / 15 deg + odometry 0% / 0 deg, fused"
    assert rows_fused[0] == rows_plain[0]  # the exact row is untouched
    # exact odometry recovers every relative heading; no slot counts as refined
    assert rows_plain[1]["slot_heading_error_median_deg"] > 5.0
    assert rows_fused[1]["slot_heading_error_median_deg"] < 0.5
    assert rows_fused[1]["slots_refined"] == 0.0
    assert rows_fused[1]["hit_rate"] > rows_plain[1]["hit_rate"]
    # row t of the poses is the library's fusion of the same jitter draws observed up to t - 1
    seen: list[torch.Tensor] = []
    real = rb.causal_fused

    def spy(*a: object, **k: object) -> torch.Tensor:
        out = real(*a, **k)  # type: ignore[arg-type]
        seen.append(out)
        return out

    monkeypatch.setattr(rb, "causal_fused", spy)
    rb.run(rb.parse_args([*flags, "--fuse-odometry", "0.02,0.5"]), episodes[1:])
    assert len(seen) == 1
    args = rb.parse_args(flags)
    settings = mmem.settings_from(args)
    data = mmem.Data(episodes[1:], args.stride, args.size, settings)
    gen = torch.Generator().manual_seed(0)
    observed = mn.corrupt(data.poses, JITTER, gen).double()
    steps = relative_pose(data.poses[:, 1:].double(), data.poses[:, :-1].double())
    length = steps[..., :2].norm(dim=-1)
    eps = torch.randn(steps.shape, generator=gen, dtype=torch.float64)
    turn = 0.5 * torch.pi / 180
    odometry = steps + eps * torch.stack(
        [0.02 * length, 0.02 * length, torch.full_like(length, turn)], -1
    )
    t_len = data.poses.shape[1]
    for t in (1, 17, t_len - 1):
        known = (torch.arange(t_len) <= t - 1).expand(data.poses.shape[0], -1)
        want = fuse_odometry(
            observed, odometry, position_std=0.5, heading_std=15 * torch.pi / 180,
            action_position_std=0.02 * length, action_heading_std=turn, known=known,
        ).to(data.poses.dtype)  # fmt: skip
        torch.testing.assert_close(seen[0][:, t], want, rtol=0, atol=1e-5)
    # each frame's retrieval, slots and query come from its own row
    noisy, slot_poses = rb.per_frame_poses(data, seen[0], settings)
    for t in (5, 23, t_len - 1):
        replayed = mmem.replay_memory(seen[0][:, t, : t + 1], settings)
        assert torch.equal(noisy.schedule.indices[:, t], replayed.indices[:, t])
        assert torch.equal(noisy.schedule.mask[:, t], replayed.mask[:, t])
        torch.testing.assert_close(noisy.memory_poses[:, t], seen[0][:, t, t])
    episode, target = torch.tensor([0, 1]), torch.tensor([30, t_len - 1])
    batch = mmem.batch_for(
        noisy.frames, data.poses, noisy.schedule, episode, target, settings.context,
        memory_poses=noisy.memory_poses,
    )  # fmt: skip
    memory = slot_poses(batch.memory, episode, target)
    assert memory.steps is not None and bool(memory.mask.any())
    for i in range(2):
        e, t = int(episode[i]), int(target[i])
        for j in range(memory.mask.shape[1]):
            if bool(memory.mask[i, j]):
                step = int(memory.steps[i, j])
                torch.testing.assert_close(memory.poses[i, j], seen[0][e, t, step])
        torch.testing.assert_close(memory.query_pose[i], seen[0][e, t, t])
    with pytest.raises(SystemExit):
        rb.parse_args([*flags, "--settings", "drift:0.05,1", "--fuse-odometry", "0,0"])
    with pytest.raises(SystemExit):
        rb.parse_args([*flags, "--fuse-odometry", "0.02"])


def test_refine_poses_hook_and_flag(
    episodes: list[mt.Episode], saved: Path, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit):
        rb.parse_args(["--models-from", str(saved), "--refine-poses", "--true-slot-poses", "pose"])
    data = mmem.Data(episodes, stride=4, size=8, settings=SETTINGS)
    noisy = _noisy(data)
    rev = torch.nonzero(data.revisit, as_tuple=True)
    memory = mmem.memory_for(noisy.frames, noisy.memory_poses, noisy.schedule, *rev)
    torch.manual_seed(0)
    refiner = SlotPoseRefiner(width=4, hidden=8)
    last = refiner.head[-1]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.normal_(last.bias, std=0.3)
    refiner.eval()
    out = rb.pose_refinement(data, refiner)(memory, *rev)
    reference, reference_pose = rb.last_context_frame(data, memory, *rev)
    assert torch.equal(reference, data.frames[rev[0], rev[1] - 1])
    action = relative_pose(data.poses[rev], data.poses[rev[0], rev[1] - 1])
    torch.testing.assert_close(
        relative_pose(memory.query_pose, reference_pose), action.to(reference_pose.dtype)
    )
    want = refine_poses(memory, reference, reference_pose, refiner)
    assert torch.equal(out.poses, want.poses)
    gate = mn.PoseNoise("jitter", 0.3, 20.0)
    gated = rb.pose_refinement(data, refiner, gate)(memory, *rev)
    want = refine_poses(
        memory, reference, reference_pose, refiner, min_shift=0.3, min_turn=gate.radians
    )
    assert torch.equal(gated.poses, want.poses)
    with pytest.raises(SystemExit):
        rb.parse_args(["--models-from", str(saved), "--min-correction", "0.1,2"])
    flags = rb.parse_args(["--models-from", str(saved), "--refine-poses", "--min-correction",
                           "0.1,2"])  # fmt: skip
    assert flags.min_correction == mn.PoseNoise("jitter", 0.1, 2.0)
    assert not torch.allclose(out.poses[out.mask], memory.poses[out.mask])
    # the flag: the seed's saved refiner in every row; an untrained one changes no figure
    args = [*TINY, "--models-from", str(tmp_path), "--settings", "drift:0.05,1"]
    for name in ("cdit", "hybrid"):
        (tmp_path / "models" / "seed0").mkdir(parents=True, exist_ok=True)
        shutil.copy(saved / "models" / "seed0" / f"{name}.safetensors",
                    tmp_path / "models" / "seed0" / f"{name}.safetensors")  # fmt: skip
    plain = rb.run(rb.parse_args(args), episodes[1:])
    with pytest.raises(FileNotFoundError, match="no refiner at"):
        rb.run(rb.parse_args([*args, "--refine-poses"]), episodes[1:])
    untrained = {k: v.contiguous() for k, v in SlotPoseRefiner().state_dict().items()}
    shifted = {**untrained, "head.4.bias": torch.tensor([0.4, -0.3, 0.3])}
    for moved, state in ((False, untrained), (True, shifted)):
        save_file(state, str(bench.weights_path(tmp_path, 0, pr.NAME)))
        refined = rb.run(rb.parse_args([*args, "--refine-poses"]), episodes[1:])
        for row, base in zip(refined["rows"], plain["rows"], strict=True):  # type: ignore[call-overload]
            base_psnr = base["revisit_psnr_hybrid"]
            same = row["revisit_psnr_hybrid"] == pytest.approx(base_psnr, abs=1e-4)
            assert same is not moved, (moved, row["setting"])
