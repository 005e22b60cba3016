"""World adapters of the benchmark: the episode type, Memory Maze's environment, a scripted
corridor explorer, a MuJoCo-free synthetic world, parallel generation and an npz cache.

DeepMind's Memory Maze (Pasukonis et al., 2022; ``pip install -e ".[bench]"``) renders a 3-D
maze from an agent's camera. This module turns it into datasets of episodes: camera images,
poses ``(x, y, yaw)`` and discrete actions, generated once and cached on disk, so a second run
never touches the environment. :class:`Episode` is the benchmark's input from any world: images
and poses are required, actions and a maze layout optional (a user's recorded trajectories fit
it as they are).

Only :class:`MazeEnv` (the environment adapter) imports MuJoCo, lazily; everything else here is
plain numpy and is tested without it: the explorer (:class:`Explorer`, a pure controller over the
maze layout and the current pose), the convention checks (:func:`check_conventions`), the labels
(:func:`revisit_labels`) and the cache (:func:`load_episodes` with a custom ``generate``).

Conventions. ``agent_pos`` is in maze cells, ``(0, 0)`` the bottom-left corner of the free area;
``maze_layout[y, x]`` is 1 on free cells; a pose is ``(x, y, yaw)`` with
``yaw = atan2(dir_y, dir_x)`` (radians, counter-clockwise from ``+x``): the library's pose
convention. Memory Maze's discrete actions are ``0`` no-op, ``1`` forward, ``2`` turn left,
``3`` turn right, ``4`` forward+left, ``5`` forward+right; forward moves along the heading and a
left turn increases ``yaw``, which :func:`check_conventions` verifies on every generated episode.

The explorer walks breadth-first shortest paths between cell centres, to goals chosen among the
cells it has not seen for the longest time (never-visited cells first): trajectories cover the
maze, then come back to places after long absences, usually along another path and so from
another direction. At a goal it sometimes turns on the spot, which shows the place from new
headings too.
"""

from __future__ import annotations

import importlib
import math
import os
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ACTION_NAMES",
    "CACHE_VERSION",
    "DATASET_STRIDE",
    "GAP_BINS",
    "SPLITS",
    "TEST_DATASET",
    "TRAINING_DATASETS",
    "VALIDATION_DATASET",
    "Episode",
    "Explorer",
    "MazeEnv",
    "bfs_path",
    "cache_path",
    "check_conventions",
    "check_training_dataset",
    "default_cache_dir",
    "episode_seeds",
    "gap_bin_name",
    "generate_episode",
    "held_out_dataset",
    "last_seen_gap",
    "load_episodes",
    "long_return_labels",
    "revisit_labels",
    "synthetic_episode",
]

NOOP, FORWARD, LEFT, RIGHT, FORWARD_LEFT, FORWARD_RIGHT = range(6)
ACTION_NAMES = ("noop", "forward", "left", "right", "forward_left", "forward_right")
"""Memory Maze's discrete actions, by index."""

CACHE_VERSION = 1
"""Bumped whenever the explorer or the file layout changes, so old cache files are not reused."""

MAZE_SIZES = (9, 11, 13, 15)
"""Maze sizes Memory Maze provides (``memory_maze_{n}x{n}``)."""

FloatArray = NDArray[np.float32]


@dataclass(frozen=True)
class Episode:
    """One episode of any world: what the benchmark needs is images and poses.

    Attributes:
        images: ``(T, H, W, 3)`` uint8 camera frames.
        poses: ``(T, 3)`` float32 ``(x, y, yaw)``; positions in the world's unit (Memory Maze:
            cells; the revisit labels' distances are in that unit), yaw in radians,
            counter-clockwise from ``+x``.
        actions: optional ``(T - 1,)`` int64, action ``t`` leads from frame ``t`` to ``t + 1``.
        layout: optional ``(S, S)`` uint8 maze layout, ``layout[y, x] == 1`` on free cells.
    """

    images: NDArray[np.uint8]
    poses: FloatArray
    actions: NDArray[np.int64] | None = None
    layout: NDArray[np.uint8] | None = None

    def __post_init__(self) -> None:
        t = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (T, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if self.poses.shape != (t, 3):
            raise ValueError(f"poses must have shape (T={t}, 3), got {self.poses.shape}")
        if not np.isfinite(self.poses).all():
            raise ValueError("poses must be finite, got NaN or inf")
        if self.actions is not None and self.actions.shape != (t - 1,):
            raise ValueError(f"actions must have shape (T-1={t - 1},), got {self.actions.shape}")
        if self.layout is not None and (
            self.layout.ndim != 2 or self.layout.shape[0] != self.layout.shape[1]
        ):
            raise ValueError(f"layout must be square (S, S), got {self.layout.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ------------------------------------------------------------------------------- explorer


def wrap(angle: float) -> float:
    """``angle`` wrapped to ``[-pi, pi)``."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def bfs_path(
    layout: NDArray[np.uint8], start: tuple[int, int], goal: tuple[int, int]
) -> list[tuple[int, int]]:
    """Shortest 4-connected path of free cells ``(x, y)`` from ``start`` to ``goal``, both
    included; ``[]`` when ``goal`` cannot be reached."""
    size_y, size_x = layout.shape
    previous: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            path = [cell]
            while (step := previous[path[-1]]) is not None:
                path.append(step)
            return path[::-1]
        x, y = cell
        for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if (
                0 <= nx < size_x
                and 0 <= ny < size_y
                and layout[ny, nx]
                and (nx, ny) not in previous
            ):
                previous[(nx, ny)] = cell
                queue.append((nx, ny))
    return []


class Explorer:
    """Scripted corridor explorer: BFS paths between cell centres to least-recently-seen goals.

    A pure controller: :meth:`act` maps the current pose to one of Memory Maze's discrete
    actions, and keeps its own plan. Goals are drawn among the free cells whose last visit is
    oldest (never-visited first), at least ``min_goal_distance`` cells away when possible.

    Args:
        layout: ``(S, S)`` maze layout, 1 on free cells.
        seed: seed of the goal choices and the turns on the spot.
        spin_probability: chance of a full turn on the spot on reaching a goal.
        turn_threshold: heading error (radians) above which the explorer turns on the spot.
        steer_threshold: heading error above which it moves forward while turning.
        reach: distance (cells) to a waypoint's centre at which it counts as reached.
    """

    def __init__(
        self,
        layout: NDArray[np.uint8],
        seed: int,
        *,
        spin_probability: float = 0.3,
        turn_threshold: float = math.radians(35),
        steer_threshold: float = math.radians(10),
        reach: float = 0.3,
        min_goal_distance: int = 3,
    ) -> None:
        self.layout = np.asarray(layout, dtype=np.uint8)
        self.rng = np.random.default_rng(seed)
        self.spin_probability = spin_probability
        self.turn_threshold = turn_threshold
        self.steer_threshold = steer_threshold
        self.reach = reach
        self.min_goal_distance = min_goal_distance
        self.free = [(int(x), int(y)) for y, x in zip(*np.nonzero(self.layout), strict=True)]
        if not self.free:
            raise ValueError("layout must have at least one free cell, got none")
        self.last_visit = np.full(self.layout.shape, -1, dtype=np.int64)
        self.step = 0
        self.path: list[tuple[int, int]] = []
        self.spin_left = 0
        self.spin_direction = LEFT
        self.stuck = 0
        self.last_position = (math.inf, math.inf)

    def _cell(self, x: float, y: float) -> tuple[int, int]:
        size_y, size_x = self.layout.shape
        return min(max(int(x), 0), size_x - 1), min(max(int(y), 0), size_y - 1)

    def _plan(self, cell: tuple[int, int]) -> None:
        """Pick a goal among the least recently visited free cells and plan the path to it."""
        far = [
            c
            for c in self.free
            if abs(c[0] - cell[0]) + abs(c[1] - cell[1]) >= self.min_goal_distance
        ]
        candidates = far or [c for c in self.free if c != cell] or [cell]
        ages = np.array([self.last_visit[y, x] for x, y in candidates])
        oldest = np.flatnonzero(ages <= np.quantile(ages, 0.25))
        for choice in self.rng.permutation(oldest):
            path = bfs_path(self.layout, cell, candidates[int(choice)])
            if len(path) > 1:
                self.path = path[1:]
                return
        self.path = []

    def act(self, pose: Sequence[float] | FloatArray) -> int:
        """The action to take at ``pose = (x, y, yaw)`` (cells, radians)."""
        x, y, yaw = (float(v) for v in pose)
        cell = self._cell(x, y)
        self.last_visit[cell[1], cell[0]] = self.step
        self.step += 1
        moved = math.hypot(x - self.last_position[0], y - self.last_position[1])
        self.last_position = (x, y)
        self.stuck = self.stuck + 1 if moved < 0.01 and self.spin_left == 0 else 0
        if self.stuck > 12:  # against a wall: re-plan from where it stands
            self.stuck = 0
            self.path = []
            return int(self.rng.choice([LEFT, RIGHT]))
        if self.spin_left > 0:
            self.spin_left -= 1
            return self.spin_direction
        while self.path:
            wx, wy = self.path[0][0] + 0.5, self.path[0][1] + 0.5
            if math.hypot(wx - x, wy - y) > self.reach:
                break
            self.path.pop(0)
            if not self.path and self.rng.random() < self.spin_probability:
                self.spin_left = int(self.rng.integers(12, 20))  # about one full turn
                self.spin_direction = int(self.rng.choice([LEFT, RIGHT]))
                return NOOP
        if not self.path:
            self._plan(cell)
            if not self.path:
                return LEFT
        wx, wy = self.path[0][0] + 0.5, self.path[0][1] + 0.5
        error = wrap(math.atan2(wy - y, wx - x) - yaw)
        if abs(error) > self.turn_threshold:
            return LEFT if error > 0 else RIGHT
        if abs(error) > self.steer_threshold:
            return FORWARD_LEFT if error > 0 else FORWARD_RIGHT
        return FORWARD


# ------------------------------------------------------------------------------ checks


def check_conventions(
    poses: FloatArray, actions: NDArray[np.int64], *, min_share: float = 0.9
) -> None:
    """Verify that forward steps move along the heading and left turns increase yaw.

    Over the episode's plain ``forward`` steps that move (more than 0.02 cells), at least
    ``min_share`` must move within 45 degrees of the heading; over its plain ``left`` / ``right``
    turns, at least ``min_share`` must increase / decrease ``yaw``.

    Raises:
        RuntimeError: naming the convention that fails and the measured share.
    """
    delta = np.diff(poses, axis=0)
    yaw = poses[:-1, 2]
    heading = np.stack([np.cos(yaw), np.sin(yaw)], axis=1)
    step = np.linalg.norm(delta[:, :2], axis=1)
    cos_move = (delta[:, :2] * heading).sum(1) / np.maximum(step, 1e-9)
    dyaw = (delta[:, 2] + np.pi) % (2 * np.pi) - np.pi
    checks = {
        "forward moves along the heading": cos_move[(actions == FORWARD) & (step > 0.02)]
        > math.cos(math.pi / 4),
        "left turns increase yaw": dyaw[actions == LEFT] > 0,
        "right turns decrease yaw": dyaw[actions == RIGHT] < 0,
    }
    for name, ok in checks.items():
        if ok.size == 0:
            continue
        share = float(ok.mean())
        if share < min_share:
            raise RuntimeError(
                f"pose convention check failed: {name} in {share:.0%} of {ok.size} steps "
                f"(expected at least {min_share:.0%})"
            )


def _pairs(
    poses: FloatArray, distance: float, angle: float
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """``(T, T)`` (target, source) position distances, and whether the source frame shows the
    target's view: within ``distance`` cells and ``angle`` radians, not the identical pose."""
    p = np.asarray(poses, dtype=np.float64)
    dist = np.linalg.norm(p[:, None, :2] - p[None, :, :2], axis=-1)
    turn = np.abs((p[:, None, 2] - p[None, :, 2] + np.pi) % (2 * np.pi) - np.pi)
    identical = (dist == 0) & (turn == 0)
    return dist, (dist <= distance) & (turn <= angle) & ~identical


def revisit_labels(
    poses: FloatArray,
    context: int,
    *,
    revisit_distance: float = 1.0,
    revisit_angle: float = math.pi / 4,
    novel_distance: float = 2.0,
    min_gap: int | None = None,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Revisit and novel labels of every frame of a pose sequence (vectorised).

    Frame ``t`` is a *revisit* when some frame ``s < t - context`` (before the context window of
    ``t``; before ``t - min_gap`` when ``min_gap`` is larger) lies within ``revisit_distance``
    cells and ``revisit_angle`` radians of its pose, without being the identical pose. It is
    *novel* when no frame before the context window (``s < t - context``) lies within
    ``novel_distance`` cells: with continuous motion the previous frame is always near, so
    "no earlier frame at all" would leave no novel frame but the first ones.

    Args:
        poses: ``(T, 3)`` ``(x, y, yaw)``.
        context: context frames of the model.

    Returns:
        ``(revisit, novel)``, two ``(T,)`` bool arrays; never both True.
    """
    dist, close = _pairs(poses, revisit_distance, revisit_angle)
    gap = context if min_gap is None else max(context, min_gap)
    src = np.arange(dist.shape[0])
    history = src[None, :] < (src[:, None] - gap)
    before_window = src[None, :] < (src[:, None] - context)
    revisit = np.asarray((close & history).any(1), dtype=np.bool_)
    novel = np.asarray(~((dist <= novel_distance) & before_window).any(1), dtype=np.bool_)
    return revisit, novel & ~revisit


def long_return_labels(
    poses: FloatArray,
    context: int,
    gap: int,
    *,
    revisit_distance: float = 1.0,
    revisit_angle: float = math.pi / 4,
) -> NDArray[np.bool_]:
    """``(T,)`` bool: frames that return to a view after a long absence (vectorised).

    Frame ``t`` is a long return when some frame ``s < t - context`` lies within
    ``revisit_distance`` cells and ``revisit_angle`` radians of its pose (the revisit rule of
    :func:`revisit_labels`, identical poses excluded) and the latest such frame is at least
    ``gap`` frames before ``t``: the view was last seen ``gap`` or more frames ago.
    """
    if gap < 1:
        raise ValueError(f"gap must be >= 1, got {gap}")
    since = last_seen_gap(
        poses, context, revisit_distance=revisit_distance, revisit_angle=revisit_angle
    )
    return since >= gap


def last_seen_gap(
    poses: FloatArray,
    context: int,
    *,
    revisit_distance: float = 1.0,
    revisit_angle: float = math.pi / 4,
) -> NDArray[np.int64]:
    """``(T,)`` int64: frames since each frame's view was last seen before its context window
    (``t - s`` for the latest ``s < t - context`` within ``revisit_distance`` and
    ``revisit_angle``, the revisit rule of :func:`revisit_labels`); -1 where never seen."""
    _, close = _pairs(poses, revisit_distance, revisit_angle)
    src = np.arange(close.shape[0])
    close &= src[None, :] < (src[:, None] - context)
    latest = np.where(close, src[None, :], -1).max(1)
    return np.where(latest >= 0, src - latest, -1).astype(np.int64)


GAP_BINS = ((3, 10), (10, 30), (30, 100), (100, None))
"""Bins of :func:`last_seen_gap` for revisit PSNR: ``[lo, hi)`` frames, ``None`` unbounded."""


def gap_bin_name(lo: int, hi: int | None) -> str:
    """``"3_10"``, ..., ``"100_plus"``: the summary key suffix of a gap bin."""
    return f"{lo}_{hi}" if hi is not None else f"{lo}_plus"


# --------------------------------------------------------------------------- environment


class MazeEnv:
    """Thin adapter over ``memory_maze.tasks.memory_maze_{n}x{n}`` (imported lazily).

    ``reset()`` / ``step(action)`` return ``(image (64, 64, 3) uint8, pose (3,) float32,
    layout (n, n) uint8)``. The task's target-colour border (a cue of the RL task, not part of
    the 3-D world) is off.

    Args:
        maze_size: 9, 11, 13 or 15.
        seed: the maze seed (layout, textures, start).
    """

    def __init__(self, maze_size: int, seed: int) -> None:
        if maze_size not in MAZE_SIZES:
            raise ValueError(f"maze_size must be one of {MAZE_SIZES}, got {maze_size!r}")
        os.environ.setdefault("MUJOCO_GL", "egl")
        tasks = importlib.import_module("memory_maze.tasks")
        make = getattr(tasks, f"memory_maze_{maze_size}x{maze_size}")
        self.env = make(global_observables=True, seed=seed, target_color_in_image=False)

    @staticmethod
    def _unpack(
        obs: dict[str, NDArray[np.generic]],
    ) -> tuple[NDArray[np.uint8], FloatArray, NDArray[np.uint8]]:
        direction = np.asarray(obs["agent_dir"], dtype=np.float64)
        x, y = np.asarray(obs["agent_pos"], dtype=np.float64)
        pose = np.array([x, y, math.atan2(direction[1], direction[0])], dtype=np.float32)
        image = np.asarray(obs["image"], dtype=np.uint8)
        return image, pose, np.asarray(obs["maze_layout"], dtype=np.uint8)

    def reset(self) -> tuple[NDArray[np.uint8], FloatArray, NDArray[np.uint8]]:
        return self._unpack(self.env.reset().observation)

    def step(self, action: int) -> tuple[NDArray[np.uint8], FloatArray, NDArray[np.uint8]]:
        return self._unpack(self.env.step(action).observation)


def generate_episode(maze_size: int, seed: int, steps: int) -> Episode:
    """Run the explorer for ``steps`` frames in the maze of ``seed`` and check the conventions."""
    env = MazeEnv(maze_size, seed)
    image, pose, layout = env.reset()
    explorer = Explorer(layout, seed)
    images, poses, actions = [image], [pose], []
    for _ in range(steps - 1):
        action = explorer.act(pose)
        image, pose, _ = env.step(action)
        images.append(image)
        poses.append(pose)
        actions.append(action)
    moves = np.asarray(actions, dtype=np.int64)
    episode = Episode(
        images=np.stack(images), poses=np.stack(poses).astype(np.float32), actions=moves,
        layout=layout,
    )  # fmt: skip
    check_conventions(episode.poses, moves)
    return episode


def random_layout(size: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    """A connected ``(size, size)`` layout: a depth-first-search maze on the odd cells, plus a few
    extra openings (loops)."""
    layout = np.zeros((size, size), dtype=np.uint8)
    stack = [(0, 0)]
    layout[0, 0] = 1
    while stack:
        x, y = stack[-1]
        options = [
            (x + dx, y + dy, dx, dy)
            for dx, dy in ((2, 0), (-2, 0), (0, 2), (0, -2))
            if 0 <= x + dx < size and 0 <= y + dy < size and not layout[y + dy, x + dx]
        ]
        if not options:
            stack.pop()
            continue
        nx, ny, dx, dy = options[int(rng.integers(len(options)))]
        layout[y + dy // 2, x + dx // 2] = 1
        layout[ny, nx] = 1
        stack.append((nx, ny))
    walls = np.argwhere(layout == 0)
    for y, x in walls[rng.permutation(len(walls))[: max(1, size // 2)]]:
        layout[y, x] = 1
    return layout


def synthetic_episode(maze_size: int, seed: int, steps: int, image_size: int = 16) -> Episode:
    """A MuJoCo-free stand-in for :func:`generate_episode`, for tests.

    A point agent in a random layout (:func:`random_layout`) follows the same :class:`Explorer`:
    forward moves 0.22 cells along the heading (a move into a wall is cancelled), turns rotate
    by 20 degrees, forward+turn does both at half the turn. The image shows a fixed random
    ``4 x 4`` colour pattern per (cell, nearest axis heading), upsampled to ``image_size``: a
    revisit of a place and heading shows the same image.
    """
    rng = np.random.default_rng(seed)
    layout = random_layout(maze_size, rng)
    patterns = rng.integers(0, 256, (maze_size, maze_size, 4, 4, 4, 3), dtype=np.uint8)
    repeat = image_size // 4
    x, y, yaw = 0.5, 0.5, float(rng.uniform(-math.pi, math.pi))
    explorer = Explorer(layout, seed)
    turn = math.radians(20)
    poses, images, actions = [], [], []
    for step in range(steps):
        poses.append((x, y, yaw))
        cx, cy = min(int(x), maze_size - 1), min(int(y), maze_size - 1)
        quadrant = round(yaw / (math.pi / 2)) % 4
        images.append(patterns[cy, cx, quadrant].repeat(repeat, 0).repeat(repeat, 1))
        if step == steps - 1:
            break
        action = explorer.act((x, y, yaw))
        actions.append(action)
        if action in (LEFT, RIGHT):
            yaw = wrap(yaw + (turn if action == LEFT else -turn))
        elif action in (FORWARD_LEFT, FORWARD_RIGHT):
            yaw = wrap(yaw + (turn / 2 if action == FORWARD_LEFT else -turn / 2))
        if action in (FORWARD, FORWARD_LEFT, FORWARD_RIGHT):
            nx, ny = x + 0.22 * math.cos(yaw), y + 0.22 * math.sin(yaw)
            if 0 <= nx < maze_size and 0 <= ny < maze_size and layout[int(ny), int(nx)]:
                x, y = nx, ny
    return Episode(
        images=np.stack(images),
        poses=np.asarray(poses, dtype=np.float32),
        actions=np.asarray(actions, dtype=np.int64),
        layout=layout,
    )


# --------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$HYBRID_CDIT_CACHE/memory_maze`` or ``~/.cache/hybrid-cdit/memory_maze``."""
    root = os.environ.get("HYBRID_CDIT_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "hybrid-cdit"
    return base / "memory_maze"


DATASET_STRIDE = 1009
"""Maze seeds of dataset ``s`` are ``s * DATASET_STRIDE + i``: at most this many episodes each."""

TRAINING_DATASETS = range(0, 1000)
"""Dataset seeds of training mazes (the benchmark's ``--seed``)."""

TEST_DATASET = 1000
"""Dataset seed of the test mazes: only the reported tables evaluate on them."""

VALIDATION_DATASET = 2000
"""Dataset seed of the validation mazes: every design decision (ablations, memory report,
recall and eviction studies, learnability) evaluates on them."""

SPLITS = {"test": TEST_DATASET, "validation": VALIDATION_DATASET}
"""Held-out split name -> dataset seed."""


def held_out_dataset(split: str) -> int:
    """Dataset seed of the held-out ``split`` (``"test"`` or ``"validation"``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def check_training_dataset(seed: int) -> None:
    """Raise ``ValueError`` unless ``seed`` is a training dataset seed (disjoint from the
    held-out mazes by the rule of :func:`episode_seeds`)."""
    if seed not in TRAINING_DATASETS:
        raise ValueError(
            f"seed must be a training dataset seed in [{TRAINING_DATASETS.start}, "
            f"{TRAINING_DATASETS.stop}), got {seed}"
        )


def episode_seeds(seed: int, episodes: int) -> list[int]:
    """Maze seeds of a dataset: ``seed * DATASET_STRIDE + i`` for ``i < episodes``
    (``episodes <= DATASET_STRIDE``), so datasets with distinct ``seed`` use distinct maze
    seeds: training (:data:`TRAINING_DATASETS`), test and validation mazes never meet."""
    if not 1 <= episodes <= DATASET_STRIDE:
        raise ValueError(f"episodes must be in [1, {DATASET_STRIDE}], got {episodes}")
    if not 0 <= seed * DATASET_STRIDE + episodes < 2**32:
        raise ValueError(f"seed must give maze seeds in [0, 2**32), got seed={seed}")
    return [seed * DATASET_STRIDE + i for i in range(episodes)]


def cache_path(cache_dir: Path, maze_size: int, maze_seed: int, steps: int) -> Path:
    """File of one cached episode."""
    return cache_dir / f"v{CACHE_VERSION}_{maze_size}x{maze_size}_seed{maze_seed}_T{steps}.npz"


def _save(path: Path, episode: Episode) -> None:
    if episode.actions is None or episode.layout is None:
        raise ValueError("cached episodes need actions and a layout, got an episode without")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp,
        images=episode.images,
        poses=episode.poses,
        actions=episode.actions,
        layout=episode.layout,
    )
    os.replace(tmp, path)  # atomic: a reader never sees a half-written file


def _load(path: Path) -> Episode | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return Episode(
                images=data["images"],
                poses=data["poses"].astype(np.float32),
                actions=data["actions"].astype(np.int64),
                layout=data["layout"].astype(np.uint8),
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # missing or damaged: regenerate


Generator = Callable[[int, int, int], Episode]


def _generate_and_save(job: tuple[Generator, int, int, int, str]) -> str:
    generate, maze_size, maze_seed, steps, path = job
    os.environ.setdefault("LP_NUM_THREADS", "1")  # Mesa's software rasteriser: one thread
    _save(Path(path), generate(maze_size, maze_seed, steps))
    return path


def load_episodes(
    maze_size: int,
    seed: int,
    episodes: int,
    steps: int,
    *,
    cache_dir: Path | None = None,
    workers: int = 2,
    generate: Generator = generate_episode,
    progress: Callable[[str], None] | None = print,
) -> list[Episode]:
    """``episodes`` episodes of ``steps`` frames on the mazes of :func:`episode_seeds`.

    Cached episodes are read from ``cache_dir`` (default :func:`default_cache_dir`); missing
    ones are generated by ``generate(maze_size, maze_seed, steps)`` in ``workers`` processes
    and written there first.
    """
    if maze_size not in MAZE_SIZES:
        raise ValueError(f"maze_size must be one of {MAZE_SIZES}, got {maze_size!r}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    seeds = episode_seeds(seed, episodes)
    paths = [cache_path(root, maze_size, s, steps) for s in seeds]
    loaded = [_load(p) if p.exists() else None for p in paths]
    jobs = [
        (generate, maze_size, s, steps, str(p))
        for s, p, e in zip(seeds, paths, loaded, strict=True)
        if e is None
    ]
    if jobs:
        if progress is not None:
            progress(
                f"generating {len(jobs)} Memory Maze {maze_size}x{maze_size} episodes of "
                f"{steps} steps in {min(workers, len(jobs))} processes -> {root}"
            )
        if workers == 1 or len(jobs) == 1:
            done = [_generate_and_save(job) for job in jobs]
        else:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                done = []
                for path in pool.imap_unordered(_generate_and_save, jobs):
                    done.append(path)
                    if progress is not None:
                        progress(f"  episode {len(done)}/{len(jobs)} -> {Path(path).name}")
        loaded = [_load(p) for p in paths]
    missing = [str(p) for p, e in zip(paths, loaded, strict=True) if e is None]
    if missing:
        raise RuntimeError(f"episodes could not be generated or read: {missing}")
    return [e for e in loaded if e is not None]
