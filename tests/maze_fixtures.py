"""Fixtures of the Memory Maze benchmark tests (``pytest_plugins = ("tests.maze_fixtures",)``):
synthetic episodes, and one torch thread (``pytest.mark.usefixtures("one_thread")``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from benchmarks.maze import worlds as mt


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is fastest (and robust on a busy machine)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def episodes() -> list[mt.Episode]:
    """Three synthetic episodes of 240 frames."""
    return [mt.synthetic_episode(9, seed, 240) for seed in range(3)]
