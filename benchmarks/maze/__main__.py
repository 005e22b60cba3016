"""``python -m benchmarks.maze``: the Memory Maze benchmark (see :mod:`benchmarks.maze`)."""

from benchmarks.maze.pipeline import main

main()
