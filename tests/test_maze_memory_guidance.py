"""``--memory-guidance`` of the Memory Maze benchmark: the hybrid's one-step samples and
rollouts go through ``memory_guided_forward`` (synthetic episodes, a tiny hybrid whose memory
changes its output)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from benchmarks import side_by_side as sbs
from benchmarks.maze import evaluation as me
from benchmarks.maze import pipeline as bench
from benchmarks.maze import protocol as mmem
from benchmarks.maze import worlds as mt
from benchmarks.maze.baselines import Learner

from hybrid_cdit import memory_guided_forward
from tests.maze_helpers import tiny_pair
from tests.test_maze_baselines import SETTINGS, TINY

pytest_plugins = ("tests.maze_fixtures",)  # the episodes and one_thread fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


def _targets(poses: torch.Tensor, schedule: mmem.MemorySchedule) -> tuple[torch.Tensor, ...]:
    """Every (episode, frame) from frame 10 on whose retrieval has a usable slot."""
    usable = schedule.mask.any(-1)
    usable[:, :10] = False
    episode, target = usable.nonzero(as_tuple=True)
    return episode[:12], target[:12]


def test_one_step_samples_follow_the_guided_forward(episodes: list[mt.Episode]) -> None:
    frames, poses = mmem.episode_tensors(episodes, stride=4, size=8)
    schedule = mmem.replay_memory(poses, SETTINGS)
    episode, target = _targets(poses, schedule)
    assert episode.numel() >= 4
    _, hybrid = tiny_pair()
    learners = [Learner("hybrid", hybrid, "memory"), Learner("plain", hybrid, "recent")]
    diff = sbs.Diffusion()

    def scores(guidance: float) -> dict[str, torch.Tensor]:
        settings = dataclasses.replace(SETTINGS, guidance=guidance)
        out = me.one_step_samples(
            learners, frames, poses, schedule, episode, target, diff, settings,
            ddim_steps=2, seed=0, copy_names=(),
        )  # fmt: skip
        return out["psnr"]

    one, zero, two = scores(1.0), scores(0.0), scores(2.0)
    torch.testing.assert_close(one["plain"], zero["plain"], rtol=0, atol=0)
    assert not torch.allclose(one["hybrid"], one["plain"], atol=1e-3)  # memory matters
    torch.testing.assert_close(zero["hybrid"], zero["plain"], rtol=0, atol=1e-3)  # dB
    # guidance 2, sampled by hand with the library function
    batch = mmem.batch_for(frames, poses, schedule, episode, target, SETTINGS.context)
    noise = me.one_step_noise(episode.shape[0], frames.shape[2:], 0)

    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = memory_guided_forward(
            hybrid, x_t, t, batch.y, batch.x_cond, batch.rel_t, batch.memory, 2.0
        )
        return diff.eps_from(out[:, : x_t.shape[1]], x_t, t)

    want = sbs.psnr(me.to_unit(diff.ddim_sample(eps, noise, 2)), me.to_unit(batch.x0))
    torch.testing.assert_close(two["hybrid"], want, rtol=0, atol=1e-4)
    assert (two["hybrid"] - one["hybrid"]).abs().max() > 1e-3


def test_rollouts_use_the_guidance(episodes: list[mt.Episode]) -> None:
    frames, poses = mmem.episode_tensors(episodes, stride=4, size=8)
    _, hybrid = tiny_pair()
    diff = sbs.Diffusion()
    episode, start = torch.tensor([0, 1]), torch.tensor([30, 35])

    def roll(guidance: float) -> torch.Tensor:
        settings = dataclasses.replace(SETTINGS, guidance=guidance)
        return me.rollout(
            hybrid, frames, poses, episode, start, 4, diff, settings,
            ddim_steps=2, seed=0, use_memory=True,
        )  # fmt: skip

    plain = me.rollout(
        hybrid, frames, poses, episode, start, 4, diff, SETTINGS,
        ddim_steps=2, seed=0, use_memory=False,
    )  # fmt: skip
    torch.testing.assert_close(roll(0.0), plain, rtol=0, atol=1e-4)
    assert (roll(2.0) - roll(1.0)).abs().max() > 1e-3


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_flag_refuses_bad_values(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args([*TINY, "--memory-guidance", value])
    assert "--memory-guidance must be a finite number >= 0" in capsys.readouterr().err


def test_flag_sets_the_memory_settings() -> None:
    args = bench.parse_args([*TINY, "--memory-guidance", "1.5"])
    assert mmem.settings_from(args).guidance == 1.5
    assert bench.parse_args(TINY).memory_guidance == 1.0
