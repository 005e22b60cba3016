"""Benchmarks of hybrid-cdit: scripts (``python benchmarks/<name>.py``) and the Memory Maze
benchmark package (``python -m benchmarks.maze``), run from the repository root."""
