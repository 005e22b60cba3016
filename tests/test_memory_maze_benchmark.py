"""The Memory Maze benchmark without MuJoCo: memory protocol, inputs, metrics, rollouts, figure
and a tiny end-to-end run on synthetic episodes."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmarks import side_by_side as sbs
from benchmarks.maze import evaluation as me
from benchmarks.maze import pipeline as bench
from benchmarks.maze import protocol as mmem
from benchmarks.maze import report, training
from benchmarks.maze import worlds as mt

from hybrid_cdit import MemoryContext
from hybrid_cdit.memory import MemoryBuffer
from tests.maze_helpers import tiny_pair

pytest_plugins = ("tests.maze_fixtures",)  # the episodes and one_thread fixtures
pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = mmem.MemorySettings(context=2, capacity=12, top_k=3, threshold=0.5, scale=4.0)


@pytest.fixture(scope="module")
def data(episodes: list[mt.Episode]) -> tuple[torch.Tensor, torch.Tensor]:
    frames, poses = mmem.episode_tensors(episodes, stride=4, size=8)
    return frames * 2 - 1, poses


def test_episode_tensors_subsample_and_average(episodes: list[mt.Episode]) -> None:
    frames, poses = mmem.episode_tensors(episodes, stride=4, size=8)
    assert frames.shape == (3, 60, 3, 8, 8) and poses.shape == (3, 60, 3)
    ref = episodes[1].images[8].astype(np.float64).reshape(8, 2, 8, 2, 3).mean((1, 3)) / 255
    np.testing.assert_allclose(frames[1, 2].permute(1, 2, 0).numpy(), ref, atol=1e-6)
    np.testing.assert_array_equal(poses[2].numpy(), episodes[2].poses[::4])


@pytest.mark.parametrize("policy", ["lru", "coverage"])
def test_replay_memory_equals_a_buffer_of_frames_and_never_sees_the_future(
    data: tuple[torch.Tensor, torch.Tensor], policy: str
) -> None:
    frames, poses = data
    settings = dataclasses.replace(SETTINGS, write_policy=policy)
    schedule = mmem.replay_memory(poses, settings)
    n, t_len = poses.shape[:2]
    buffer = MemoryBuffer(
        n,
        SETTINGS.capacity,
        frame_shape=(3, 8, 8),
        pose_dim=3,
        write_policy=policy,  # type: ignore[arg-type]
    )
    used = 0
    for t in range(t_len):
        src = t - SETTINGS.context - 1
        ctx = mmem.step_memory(
            buffer,
            t,
            frames[:, src] if src >= 0 else None,
            poses[:, src] if src >= 0 else None,
            poses[:, t],
            settings,
        )
        mask = schedule.mask[:, t]
        assert torch.equal(ctx.mask, mask)
        idx = schedule.indices[:, t]
        assert bool((idx[mask] < t - SETTINGS.context).all())  # before the context window
        expected = frames[torch.arange(n)[:, None], idx]
        assert torch.equal(ctx.frames[mask], expected[mask])
        torch.testing.assert_close(ctx.scores, schedule.scores[:, t])
        used += int(mask.sum())
    assert used > 0
    # LRU capacity: some retrieved frames are older than `capacity` writes ago only if refreshed
    assert int(schedule.mask.sum(-1).max()) <= SETTINGS.top_k


def test_memory_for_gathers_the_schedule_and_withholds_per_sample(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    frames, poses = data
    schedule = mmem.replay_memory(poses, SETTINGS)
    episode, target = torch.tensor([0, 1, 2, 1]), torch.tensor([40, 50, 59, 30])
    withheld = torch.tensor([False, True, False, False])
    memory = mmem.memory_for(frames, poses, schedule, episode, target, withheld)
    assert not bool(memory.mask[1].any())
    for i in (0, 2, 3):
        m = schedule.mask[episode[i], target[i]]
        assert torch.equal(memory.mask[i], m)
        idx = schedule.indices[episode[i], target[i]][m]
        assert torch.equal(memory.frames[i][m], frames[episode[i], idx])
        assert torch.equal(memory.poses[i][m], poses[episode[i], idx])
        assert torch.equal(memory.query_pose[i], poses[episode[i], target[i]])


def test_model_inputs_use_the_two_previous_frames_and_the_relative_pose(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    frames, poses = data
    inputs = mmem.model_inputs(frames, poses, torch.tensor([2]), torch.tensor([17]), 2)
    assert torch.equal(inputs.x0[0], frames[2, 17])
    assert torch.equal(inputs.x_cond[0], frames[2, 15:17])
    x0, y0, a0 = poses[2, 16].tolist()
    x1, y1, a1 = poses[2, 17].tolist()
    dx, dy = x1 - x0, y1 - y0
    expected = [
        math.cos(a0) * dx + math.sin(a0) * dy,
        -math.sin(a0) * dx + math.cos(a0) * dy,
        math.remainder(a1 - a0, 2 * math.pi),
    ]
    np.testing.assert_allclose(inputs.y[0].numpy(), expected, atol=1e-5)


def test_informativeness_matches_brute_force(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    frames, poses = data
    schedule = mmem.replay_memory(poses, SETTINGS)
    pair = mmem.pairwise_mse(frames)
    direct = (frames[1, 20] - frames[1, 7]).square().mean()
    torch.testing.assert_close(pair[1, 20, 7], direct, rtol=1e-4, atol=1e-6)
    episode, target = torch.tensor([0, 2, 1]), torch.tensor([45, 58, 30])
    info = mmem.informativeness(pair, schedule, episode, target, 2)
    assert bool(info["active"].any())
    for i in range(3):
        e, t = int(episode[i]), int(target[i])
        mse = [float((frames[e, t] - frames[e, s]).square().mean()) for s in range(t)]
        m = schedule.mask[e, t]
        picks = [mse[int(s)] for s in schedule.indices[e, t][m]]
        assert math.isclose(float(info["retrieved"][i]), min(picks, default=math.inf), rel_tol=1e-4)
        assert math.isclose(float(info["last_context"][i]), mse[t - 1], rel_tol=1e-4)
        assert math.isclose(float(info["history"][i]), min(mse[: t - 2]), rel_tol=1e-4)
        assert int(info["history_index"][i]) == min(range(t - 2), key=mse.__getitem__)
        top = mse[int(schedule.indices[e, t, 0])] if bool(m[0]) else math.inf
        assert math.isclose(float(info["top"][i]), top, rel_tol=1e-4)
        if bool(m.any()):  # slot 0 holds the highest score
            assert float(schedule.scores[e, t, 0]) == float(schedule.scores[e, t][m].max())


def test_retrieval_hits_match_brute_force(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, poses = data
    schedule = mmem.replay_memory(poses, SETTINGS)
    episode = torch.arange(3).repeat_interleave(57)
    target = torch.arange(3, 60).repeat(3)
    hits = mmem.retrieval_hits(poses, schedule, episode, target)
    for i in range(len(episode)):
        e, t = int(episode[i]), int(target[i])
        expected = False
        for slot in range(SETTINGS.top_k):
            if not bool(schedule.mask[e, t, slot]):
                continue
            p, q = poses[e, int(schedule.indices[e, t, slot])].tolist(), poses[e, t].tolist()
            turn = abs(math.remainder(p[2] - q[2], 2 * math.pi))
            expected |= math.dist(p[:2], q[:2]) <= 1.0 and turn <= math.pi / 4 + 1e-6
        assert bool(hits[i]) == expected
    assert 0 < int(hits.sum()) < len(hits)


def test_ddim_recovers_x0_from_an_exact_denoiser() -> None:
    diff = sbs.Diffusion()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 5, 5, generator=gen) * 1.6 - 0.8

    def exact(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = diff.alpha_bar[t].view(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    out = diff.ddim_sample(exact, torch.randn(x0.shape, generator=gen), 25)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)
    assert diff.ddim_timesteps(25)[0] == 999 and diff.ddim_timesteps(25)[-1] == 0


def test_v_prediction_target_and_its_noise_estimate() -> None:
    diff = sbs.Diffusion(prediction="v")
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 3, 4, 4, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = diff.noise(x0, t, eps)
    v = diff.target(x0, eps, t)
    ab = diff.alpha_bar[t].double().view(-1, 1, 1, 1)
    # Salimans & Ho: x0 = sqrt(ab) x_t - sqrt(1 - ab) v and eps = sqrt(1 - ab) x_t + sqrt(ab) v
    torch.testing.assert_close(
        (ab.sqrt() * x_t - (1 - ab).sqrt() * v).float(), x0, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(diff.eps_from(v, x_t, t), eps, atol=1e-5, rtol=0)
    assert not torch.allclose(v, eps, atol=1e-2)
    plain = sbs.Diffusion()
    assert torch.equal(plain.target(x0, eps, t), eps) and torch.equal(plain.eps_from(v, x_t, t), v)

    def exact_v(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        a = diff.alpha_bar[tt].view(-1, 1, 1, 1)
        return diff.eps_from(
            a.sqrt() * (x - a.sqrt() * x0) / (1 - a).sqrt() - (1 - a).sqrt() * x0, x, tt
        )

    out = diff.ddim_sample(exact_v, torch.randn(x0.shape, generator=gen), 25)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="prediction must be 'eps' or 'v', got 'x0'"):
        sbs.Diffusion(prediction="x0")


def test_psnr_and_table() -> None:
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.1)
    torch.testing.assert_close(sbs.psnr(a, b), torch.full((2,), 20.0))
    table = sbs.format_table(["name", "x"], [["a", 1.5], ["bb", 2]])
    assert table.splitlines()[2].split() == ["a", "1.5000"]


def test_rollout_starts_pick_revisit_rich_windows() -> None:
    revisit = torch.zeros(2, 40, dtype=torch.bool)
    revisit[0, 20:26] = True
    revisit[0, 30:33] = True
    revisit[1, 5:9] = True  # before min_start: ignored
    revisit[1, 35:37] = True
    episode, start = me.rollout_starts(revisit, 6, min_start=10, per_episode=2)
    assert episode.tolist() == [0, 0, 1, 1]
    assert start[0] == 20 and start[1] in (27, 28, 29, 30)
    assert start[2] in range(31, 36)
    with pytest.raises(ValueError, match="too short"):
        me.rollout_starts(revisit, 35, min_start=10)


def test_rollout_writes_generated_frames_to_memory_and_never_reads_ahead(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    frames, poses = data
    _, hybrid = tiny_pair()
    schedule = mmem.replay_memory(poses, SETTINGS)
    diff = sbs.Diffusion()
    episode, start, length = torch.tensor([0, 2]), torch.tensor([30, 36]), 6
    seen: list[tuple[int, MemoryContext]] = []
    kwargs = {"ddim_steps": 2, "seed": 1, "use_memory": True}
    out = me.rollout(
        hybrid, frames, poses, episode, start, length, diff, SETTINGS,
        on_memory=lambda t, ctx: seen.append((t, ctx)), **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    assert out.shape == (2, length, 3, 8, 8) and bool(torch.isfinite(out).all())
    used_generated = 0
    for t, ctx in seen:
        for i in range(2):
            e, s0 = int(episode[i]), int(start[i])
            m = schedule.mask[e, t]
            assert torch.equal(ctx.mask[i], m)
            for slot, src in zip(m.nonzero().flatten(), schedule.indices[e, t][m], strict=True):
                src = int(src)
                expected = out[i, src - s0] if s0 <= src < s0 + length else frames[e, src]
                assert torch.equal(ctx.frames[i, slot], expected)
                used_generated += int(s0 <= src < s0 + length)
    assert used_generated > 0  # generated frames came back from memory
    # the truth at and after each start is never read
    spoiled = frames.clone()
    for i in range(2):
        spoiled[episode[i], start[i] :] = 1e3
    again = me.rollout(hybrid, spoiled, poses, episode, start, length, diff, SETTINGS, **kwargs)  # type: ignore[arg-type]
    torch.testing.assert_close(again, out)


def test_rollout_memory_reaches_the_hybrid_only(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    frames, poses = data
    cdit, hybrid = tiny_pair()
    diff = sbs.Diffusion()
    episode, start = torch.tensor([1]), torch.tensor([40])
    args = (frames, poses, episode, start, 6, diff, SETTINGS)
    seen: list[MemoryContext] = []
    me.rollout(
        hybrid, *args, ddim_steps=2, seed=2, use_memory=True,
        on_memory=lambda t, ctx: seen.append(ctx) if 40 <= t < 46 else None,
    )  # fmt: skip
    assert any(bool(ctx.mask.any()) for ctx in seen)
    memory = next(ctx for ctx in seen if bool(ctx.mask.any()))
    inputs = mmem.model_inputs(frames, poses, episode, start, 2)
    x_t, t = torch.randn(1, 3, 8, 8), torch.tensor([500])
    with torch.no_grad():
        eps = sbs.predict(hybrid, x_t, t, inputs.y, inputs.x_cond, inputs.rel_t, memory)
        plain = sbs.predict(hybrid, x_t, t, inputs.y, inputs.x_cond, inputs.rel_t, None)
        base = sbs.predict(cdit, x_t, t, inputs.y, inputs.x_cond, inputs.rel_t, memory)
    assert not torch.allclose(eps, plain)
    torch.testing.assert_close(base, plain)  # same CDiT weights; the CDiT ignores memory
    with pytest.raises(ValueError, match="HybridCDiT"):
        me.rollout(cdit, *args, ddim_steps=3, seed=2, use_memory=True)


def test_oracle_memory_holds_the_closest_history_frame(
    data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    frames, poses = data
    pair = mmem.pairwise_mse(frames)
    mem = me.oracle_memory(frames, poses, pair, torch.tensor([0]), torch.tensor([50]), 2)
    mse = [float((frames[0, 50] - frames[0, s]).square().mean()) for s in range(48)]
    assert torch.equal(mem.frames[0, 0], frames[0, int(np.argmin(mse))])


def test_rollout_figure_marks_revisit_frames(tmp_path: Path) -> None:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    truth, a, b = (torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1 for _ in range(3))
    revisit = torch.tensor([False, True, False, True])
    path = tmp_path / "fig.png"
    report.rollout_figure(truth, a, b, revisit, path, scale=2)
    with Image.open(path) as png:
        pixels = np.asarray(png.convert("RGB"))
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255  # (3, 56, 74)
    assert image.shape == (3, 56, 74)
    green = torch.tensor([0.1, 0.9, 0.2])
    for col in range(4):
        x = 2 + col * 18
        corner = image[:, 2, x]
        assert torch.allclose(corner, green, atol=0.01) == bool(revisit[col])


def test_pretraining_starts_both_models_from_the_trained_cdit(
    episodes: list[mt.Episode],
) -> None:
    argv = [
        "--steps", "0", "--pretrain-steps", "3", "--batch", "4", "--hidden", "32", "--depth", "2",
        "--heads", "2", "--patch-size", "2", "--size", "8", "--stride", "2", "--log-every", "1",
    ]  # fmt: skip
    args = bench.parse_args(argv)
    settings = mmem.settings_from(args)
    data = mmem.Data(episodes[:2], args.stride, args.size, settings)
    cdit, hybrid = training.build_models(args)
    initial = {k: v.clone() for k, v in cdit.state_dict().items()}
    training.train(args, data, cdit, hybrid, sbs.Diffusion(prediction="v"), settings)
    trained = cdit.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)
    hybrid_state = hybrid.state_dict()
    for key, value in trained.items():
        assert torch.equal(hybrid_state[key], value), key
    # the memory branch starts switched off: with memory the hybrid computes the trained CDiT
    e, t = torch.tensor([0, 1]), torch.tensor([30, 40])
    inputs = mmem.model_inputs(data.frames, data.poses, e, t, settings.context)
    memory = mmem.memory_for(data.frames, data.poses, data.schedule, e, t)
    assert bool(memory.mask.any())
    x_t = torch.randn(inputs.x0.shape, generator=torch.Generator().manual_seed(0))
    tt = torch.tensor([500, 900])
    cdit.eval()
    hybrid.eval()
    with torch.no_grad():
        expected = sbs.predict(cdit, x_t, tt, inputs.y, inputs.x_cond, inputs.rel_t, None)
        got = sbs.predict(hybrid, x_t, tt, inputs.y, inputs.x_cond, inputs.rel_t, memory)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_end_to_end_tiny_on_synthetic_episodes(
    episodes: list[mt.Episode], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--steps", "4", "--pretrain-steps", "2", "--batch", "8", "--hidden", "32", "--depth", "2",
        "--heads", "2", "--patch-size", "2", "--size", "8", "--ddim-steps", "2", "--threads", "1",
        "--stride", "2",
        "--max-revisit-targets", "12", "--rollout-length", "5", "--rollout-min-start", "20",
        "--rollouts-per-episode", "1", "--log-every", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    args = bench.parse_args(argv)
    summary = bench.run(args, episodes[:2], episodes[2:])
    print(json.dumps(summary))
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in bench.SUMMARY_KEYS:
        assert key in last
    assert last["revisit_targets"] > 0 and last["novel_targets"] > 0
    # the hybrid's rollout with memory withheld: 4 steps leave it next to the CDiT's
    withheld = last["rollout_revisit_psnr_hybrid_no_memory"]
    assert abs(withheld - last["rollout_revisit_psnr_cdit"]) < 0.5
    # the memory gate starts at zero and 4 steps move it very little: hybrid == CDiT nearly
    assert abs(last["revisit_psnr_hybrid"] - last["revisit_psnr_cdit"]) < 0.5
    assert (tmp_path / "memory_maze_rollout.png").exists()
    assert 0 <= last["informativeness"]["revisit_hit_rate"] <= 1
    only = bench.run(bench.parse_args([*argv, "--memory-report-only"]), None, episodes[2:])
    assert only["revisit_hit_rate"] == last["informativeness"]["revisit_hit_rate"]
    assert json.loads((tmp_path / "summary.json").read_text())["seconds"] > 0


def test_long_rollouts_compare_write_policies(episodes: list[mt.Episode]) -> None:
    argv = [
        "--hidden", "32", "--depth", "2", "--heads", "2", "--patch-size", "2", "--size", "8",
        "--ddim-steps", "2", "--stride", "2", "--rollout-length", "6", "--rollouts-per-episode",
        "1", "--long-gap", "10", "--long-min-start", "30", "--scale", "4", "--capacity", "200",
        "--long-capacity", "6",
    ]  # fmt: skip
    args = bench.parse_args(argv)
    assert args.long_rollouts
    settings = mmem.settings_from(args)
    data = mmem.Data(episodes, args.stride, args.size, settings)
    cdit, hybrid = training.build_models(args)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a CDiT whose output is not zero (DiT zero-initialises it)
        for p in cdit.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    sbs.load_cdit_weights(hybrid, cdit)
    with torch.no_grad():  # open the memory gates: the hybrid's rollouts then use memory
        for name, p in hybrid.named_parameters():
            if "memory_adaLN" in name:
                p.normal_(0, 0.5, generator=gen)
    diff = sbs.Diffusion(prediction="v")
    small = me.long_rollouts(args, data, cdit, hybrid, diff, settings)
    frames = small["long_rollout_frames"]
    assert isinstance(frames, int) and frames > 0
    for name in ("lru", "coverage", "coverage_route", "whole_episode"):
        assert 0.0 <= small[f"long_rollout_hit_rate_{name}"] <= 1.0  # type: ignore[operator]
    for name in ("cdit", "lru", "coverage", "coverage_route", "whole_episode"):
        assert math.isfinite(small[f"long_rollout_revisit_psnr_{name}"])  # type: ignore[arg-type]
    # an LRU buffer that evicts nothing is the whole-episode buffer: the same rollouts
    large = me.long_rollouts(
        bench.parse_args([*argv, "--long-capacity", "200"]), data, cdit, hybrid, diff, settings
    )
    assert (
        large["long_rollout_revisit_psnr_lru"] == large["long_rollout_revisit_psnr_whole_episode"]
    )
    assert large["long_rollout_hit_rate_lru"] == large["long_rollout_hit_rate_whole_episode"]
    # with 6 slots, LRU has lost views the whole-episode buffer still finds
    assert small["long_rollout_hit_rate_lru"] < small["long_rollout_hit_rate_whole_episode"]  # type: ignore[operator]
    # told the rollout's poses, 6 slots find what the whole episode finds (coverage: 1 in 7)
    route_hits = small["long_rollout_hit_rate_coverage_route"]
    assert route_hits == small["long_rollout_hit_rate_whole_episode"] == 1.0
    assert small["long_rollout_hit_rate_coverage"] < route_hits  # type: ignore[operator]
    # memory matters to these rollouts: the hybrid's differ from the CDiT's
    whole = small["long_rollout_revisit_psnr_whole_episode"]
    assert whole != small["long_rollout_revisit_psnr_cdit"]


@pytest.mark.parametrize("kind", ["oracle", "retrieved"])
def test_learnability_probe_on_synthetic_episodes(episodes: list[mt.Episode], kind: str) -> None:
    from benchmarks import memory_learnability as ml

    own, args = ml.parse_args(
        [
            "--memory", kind, "--finetune-steps", "3", "--eval-every", "2", "--eval-samples", "6",
            "--min-target", "20", "--pretrain-steps", "2", "--batch", "4", "--hidden", "32",
            "--depth", "2", "--heads", "2", "--patch-size", "2", "--size", "8", "--stride", "4",
            "--threads", "1", "--scale", "4", "--capacity", "12",
        ]
    )  # fmt: skip
    summary = ml.run(own, args, episodes[:2], episodes[2:])
    curve = summary["curve"]
    assert isinstance(curve, list)
    assert [row["step"] for row in curve] == [0, 2, 3]
    # before fine-tuning the hybrid is the pretrained CDiT exactly, with or without memory
    assert curve[0]["memory"] == pytest.approx(1.0, abs=1e-6)
    assert curve[0]["withheld"] == pytest.approx(1.0, abs=1e-6)
    # fine-tuning moved the hybrid away from the fixed CDiT
    assert curve[-1]["withheld"] != pytest.approx(1.0, abs=1e-6)
    gain = summary["memory_gain"]
    assert gain == pytest.approx(curve[-1]["withheld"] - curve[-1]["memory"], abs=1e-4)
    assert summary["memory"] == kind and summary["pretrain_steps"] == 2


def test_package_docstring_example_runs_on_synthetic_episodes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import textwrap

    import benchmarks.maze as package

    doc = package.__doc__
    assert doc is not None
    code = textwrap.dedent(doc.split("On your own recorded trajectories::\n\n")[1])
    namespace: dict[str, object] = {}
    exec(compile(code, "benchmarks.maze docstring", "exec"), namespace)
    summary = namespace["summary"]
    assert isinstance(summary, dict)
    for key in package.SUMMARY_KEYS:
        assert key in summary
    printed = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert [float(v) for v in printed] == [
        pytest.approx(summary["revisit_psnr_hybrid"]),
        pytest.approx(summary["novel_psnr_cdit"]),
    ]
