"""The scripts in ``examples/`` run with their defaults and print what they promise.

Each script runs in this process as ``__main__`` (``runpy``, ``sys.argv`` patched), which saves
a torch import per script; one test also runs a script as a real ``python`` process, as a user
would. Thread count and global RNG state are restored after each in-process run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hybrid_cdit import HybridCDiT

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CHECKPOINT = ROOT / "tests" / "data" / "nwm_cdit_tiny.pth.tar"
NUM = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
"""A number as the examples print it."""
SCRIPTS = ("quickstart", "training_step", "rollout_with_memory", "convert_checkpoint")


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def run_example(name: str, *args: str) -> str:
    """Run ``examples/{name}.py`` as ``__main__`` with ``args``; return its stdout."""
    path = EXAMPLES / f"{name}.py"
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [str(path), *args]
    try:
        with _isolated(), contextlib.redirect_stdout(out):
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv
    return out.getvalue()


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in output:\n{text}"
    return float(match.group(1))


def test_every_example_is_tested() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.py")} == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_example(name, "--help")
    assert exit_info.value.code == 0


def test_quickstart() -> None:
    out = run_example("quickstart")
    assert "active [True, False]" in out
    assert number(rf"max \|hybrid - CDiT\| = {NUM} with memory", out) == 0.0
    moved = re.search(rf"per sample: {NUM}, {NUM} ", out)
    assert moved is not None, out
    assert float(moved.group(1)) > 0.0  # sample 0 uses its memory once the branch is non-zero
    assert float(moved.group(2)) == 0.0  # sample 1 has none above the threshold


def test_quickstart_with_an_nwm_checkpoint() -> None:
    out = run_example("quickstart", "--checkpoint", str(CHECKPOINT), "--num-heads", "4")
    assert number(rf"max \|hybrid - CDiT\| = {NUM} with memory", out) == 0.0


@pytest.mark.parametrize("strategy", ["distance", "fov"])
def test_training_step(strategy: str) -> None:
    out = run_example("training_step", "--strategy", strategy)
    assert number(rf"memory active for {NUM}/", out) > 0
    assert number(rf"loss {NUM}", out) > 0
    assert number(rf"update: memory {NUM},", out) > 0
    assert number(rf"CDiT {NUM}\n", out) > 0
    assert number(rf"blocks\.\d+ max {NUM}", out) > 0  # the zero-initialised gates moved


@pytest.mark.parametrize("flags", [[], ["--own-buffer"]], ids=["memory=", "own-buffer"])
def test_rollout_reuses_memory_keys_values(flags: list[str]) -> None:
    out = run_example("rollout_with_memory", "--steps", "14", "--denoise-steps", "4", *flags)
    attended = number(rf"memory attention ran {NUM} times", out)
    computed = number(rf"computed {NUM} times", out)
    assert attended > 0
    assert computed * 4 == attended  # once per frame and layer, reused in 3 of 4 steps
    assert number(rf"{NUM} forwards", out) == 14 * 4


def test_convert_checkpoint(tmp_path: Path) -> None:
    out_dir = tmp_path / "hybrid"
    out = run_example(
        "convert_checkpoint", str(CHECKPOINT), str(out_dir), "--num-heads", "4",
        "--memory-layers", "0", "1",
    )  # fmt: skip
    assert "identical to the checkpoint's: True" in out
    assert number(rf"with a memory of 2 frames: {NUM}", out) == 0.0
    model = HybridCDiT.from_pretrained(out_dir)
    assert model.memory_layers == [0, 1]


def test_convert_checkpoint_default() -> None:
    out = run_example("convert_checkpoint")
    assert "identical to the checkpoint's: True" in out
    assert "'ema' state dict" in out


def test_quickstart_runs_as_a_script() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "function preservation: max |hybrid - CDiT| = 0.000e+00" in result.stdout
