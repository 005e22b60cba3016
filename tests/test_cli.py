"""The ``hybrid-cdit`` command line, run as a real process (``python -m hybrid_cdit``).

The processes start together (each pays the library's import time once) and the tests read
their results.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from hybrid_cdit.checkpoint import from_pretrained, read_checkpoint
from hybrid_cdit.cli import main
from hybrid_cdit.demo import DEMO_ARCH, ddim_sample, loop_actions
from hybrid_cdit.memory import poses_from_actions
from hybrid_cdit.models import HybridCDiT

from .tolerances import NWM_TINY_ATOL

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "nwm_cdit_tiny.pth.tar"
TIMEOUT = 240


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    tmp = tmp_path_factory.mktemp("cli")
    weights = {"a.weight": torch.zeros(2)}
    torch.save({"foo": weights, "bar": weights}, tmp / "ambiguous.pt")
    commands = {
        "ambiguous": ["inspect", str(tmp / "ambiguous.pt")],
        "inspect": ["inspect", str(CHECKPOINT)],
        "convert": ["convert", str(CHECKPOINT), str(tmp / "converted"), "--num-heads", "4"],
        "demo": ["demo", "--steps", "13", "--denoise-steps", "2", "--seed", "1"],
        "missing": ["inspect", str(tmp / "missing.pth.tar")],
        "usage": ["convert", str(CHECKPOINT)],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "hybrid_cdit", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp,
        )
        for name, argv in commands.items()
    }
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        results[name] = Result(proc.returncode, stdout, stderr)
    results["out_dir"] = Result(0, str(tmp / "converted"), "")
    return results


def test_inspect(runs):
    result = runs["inspect"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        "state dicts:   model (178,832 parameters), ema (178,832 parameters)",
        "training:      epoch 3, step 1234",
        "variant:       none (hidden_size 48, depth 2 match no NWM variant)",
        "context size:  2",
        "input size:    8",
        "learn_sigma:   True",
        "parameters:    178,832 (ema)",
        "memory:        none",
    ):
        assert expected in out


def test_convert_then_from_pretrained(runs, nwm_io, nwm_inputs):
    result = runs["convert"]
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        "largest difference from the CDiT on a random input: 0.000e+00 (no memory), "
        "0.000e+00 (random memory of 2 frames)"
    ) in lines
    model = from_pretrained(runs["out_dir"].stdout)
    assert isinstance(model, HybridCDiT) and model.num_heads == 4
    with torch.no_grad():
        out = model.eval()(*nwm_inputs)
    assert torch.allclose(out, nwm_io["out_ema"], atol=NWM_TINY_ATOL)


ROW = re.compile(
    r"^\s*(\d+)/(\d+)\s+\(\s*(-?[\d.]+),\s*(-?[\d.]+),\s*(-?\d+)°\)\s+(\d+)\s+(\S+)\s+"
    r"(active|inactive)\s+([\d.]+)\s+([\d.]+)(  revisit)?$"
)
SQUARE = [(4, 0), (8, 0), (12, 0), (12, 4), (12, 8), (12, 12), (8, 12), (4, 12), (0, 12), (0, 8)]
SQUARE += [(0, 4), (0, 0)]
"""The demo's loop: 3 steps of 4 m a side, starting at the origin, one lap in 12 steps."""


def demo_rows(out: str) -> list[tuple[float, float, int, str, bool, bool]]:
    """``(x, y, retrieved, best, active, revisit)`` of each printed row, in order."""
    rows = []
    for line in out.splitlines():
        match = ROW.match(line)
        if match:
            assert int(match[1]) == len(rows) + 1
            x, y, count, best = float(match[3]), float(match[4]), int(match[6]), match[7]
            rows.append((x, y, count, best, match[8] == "active", match[11] is not None))
    return rows


def demo_times(out: str) -> list[tuple[bool, float, float]]:
    """``(active, hybrid ms, cdit ms)`` of each printed row, in order."""
    return [
        (match[8] == "active", float(match[9]), float(match[10]))
        for match in map(ROW.match, out.splitlines())
        if match
    ]


SUMMARY_TIMES = re.compile(
    r"mean time a frame, HybridCDiT vs CDiT side by side: (?P<all>.*) overall; "
    r"memory active (?P<active>.*); inactive (?P<inactive>.*)$",
    re.MULTILINE,
)
TIMES = re.compile(r"^([\d.]+) vs ([\d.]+) ms \(([+-][\d.]+) ms\)$")


def check_summary_times(out: str) -> None:
    """The summary's mean times and differences are those of the printed rows (each row
    rounded to 0.05 ms), with no percentage a reader could take for the library's overhead."""
    rows = demo_times(out)
    match = SUMMARY_TIMES.search(out)
    assert match is not None, out
    groups = {"all": rows, "active": [r for r in rows if r[0]]}
    groups["inactive"] = [r for r in rows if not r[0]]
    for name, chosen in groups.items():
        text = match[name]
        if not chosen:
            assert text == "n/a"
            continue
        parsed = TIMES.match(text)
        assert parsed is not None, text
        hybrid, cdit, diff = (float(v) for v in parsed.groups())
        # the printed mean and each printed row are rounded to 0.1 ms: at most 0.05 each way
        assert hybrid == pytest.approx(sum(r[1] for r in chosen) / len(chosen), abs=0.101)
        assert cdit == pytest.approx(sum(r[2] for r in chosen) / len(chosen), abs=0.101)
        assert diff == pytest.approx(hybrid - cdit, abs=0.151)
    assert "%" not in out.split("summary:")[1]


def demo_parameters(**arch: int) -> tuple[float, float]:
    """Parameter counts in millions of a CDiT and of its HybridCDiT, built here."""
    from hybrid_cdit.models import CDiT

    counts = [sum(p.numel() for p in cls(**arch).parameters()) for cls in (CDiT, HybridCDiT)]
    return counts[0] / 1e6, counts[1] / 1e6


def expected_demo_rows(steps: int) -> list[tuple[float, float, int, str, bool, bool]]:
    """The rows worked out from the geometry alone: memory holds the start frame and every
    generated frame; retrieval keeps up to 8 frames scoring ``exp(-d / 10) >= 0.7``; the
    activation threshold (0.3) is under that, so a sample with a frame is active; a revisit
    comes within 2 m of an earlier place."""
    stored = [(0.0, 0.0)]
    rows = []
    for i in range(steps):
        x, y = SQUARE[i % len(SQUARE)]
        scores = sorted((math.exp(-math.dist((x, y), q) / 10) for q in stored), reverse=True)
        kept = [score for score in scores if score >= 0.7][:8]
        best = f"{kept[0]:.2f}" if kept else "-"
        revisit = min(math.dist((x, y), q) for q in stored) < 2
        rows.append((float(x), float(y), len(kept), best, bool(kept), revisit))
        stored.append((x, y))
    return rows


def test_demo(runs):
    result = runs["demo"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    rows = demo_rows(out)
    assert rows == expected_demo_rows(13)
    assert [r[2] for r in rows] == [0] * 11 + [1, 1]  # the two revisits find their frame
    assert "summary:" in out
    assert "memory active on 2/2 revisits and on 0/11 first visits" in out
    assert "largest |HybridCDiT - CDiT| over the rollout: 0.000e+00" in out
    check_summary_times(out)
    cdit_m, hybrid_m = demo_parameters(**DEMO_ARCH)
    assert (
        f"size: hidden 64, depth 4, 16 tokens a frame, 2 context frames; CDiT {cdit_m:.3g} M "
        f"parameters, HybridCDiT {hybrid_m:.3g} M"
    ) in out
    caveat = out.split("what the times mean:")[1]
    assert "2 forwards at batch 1, cpu, 1 thread)" in caveat
    assert "the demo's small random model (16 tokens a frame, hidden 64)" in caveat
    assert "not the library's overhead at NWM's sizes" in caveat
    assert "benchmarks/hybrid_overhead.py" in caveat and "docs/performance.md" in caveat


def test_missing_file_is_one_line_without_traceback(runs):
    result = runs["missing"]
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hybrid-cdit: error: checkpoint not found:")
    assert "missing.pth.tar" in lines[0] and "Traceback" not in result.stderr


def test_ambiguous_file_is_one_line_naming_the_keys(runs):
    result = runs["ambiguous"]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hybrid-cdit: error: ")
    assert lines[0].endswith("pass source='foo' or source='bar'")


def test_usage_error_exits_2(runs):
    result = runs["usage"]
    assert result.returncode == 2
    assert "usage: hybrid-cdit convert" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------ in-process, fast paths


def test_main_returns_exit_codes(capsys, tmp_path):
    assert main(["--version"]) == 0
    assert main([]) == 2
    assert main(["demo", "--steps", "0"]) == 2
    assert main(["inspect", str(tmp_path / "absent.pt")]) == 1
    assert "hybrid-cdit: error:" in capsys.readouterr().err


def test_inspect_json(capsys):
    assert main(["inspect", str(CHECKPOINT), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["default_source"] == "ema" and data["train_steps"] == 1234
    assert data["config"]["context_size"] == 2 and "num_heads" not in data["config"]


def test_convert_options(capsys, tmp_path):
    out_dir = tmp_path / "plain"
    assert main(["convert", str(CHECKPOINT), str(out_dir), "--model", "CDiT-S/2"]) == 1
    assert "checkpoint has hidden_size 48, model has 384" in capsys.readouterr().err
    assert main(["convert", str(CHECKPOINT), str(out_dir)]) == 1
    assert "pass --num-heads N" in capsys.readouterr().err
    argv = ["convert", str(CHECKPOINT), str(out_dir), "--num-heads", "4", "--memory-layers", "0"]
    assert main([*argv, "--source", "model"]) == 0
    model = from_pretrained(out_dir)
    assert isinstance(model, HybridCDiT) and model.memory_layers == [0]
    assert main(["inspect", str(out_dir)]) == 0
    assert "pretrained:    HybridCDiT" in capsys.readouterr().out


def test_demo_from_a_checkpoint(capsys):
    argv = ["demo", "--checkpoint", str(CHECKPOINT), "--steps", "2", "--denoise-steps", "1"]
    assert main(argv) == 1
    assert "pass --num-heads N" in capsys.readouterr().err
    assert main([*argv, "--num-heads", "4", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"model: CDiT checkpoint {CHECKPOINT} (ema)" in out
    assert demo_rows(out) == expected_demo_rows(2)
    assert "memory active on 0/0 revisits and on 0/2 first visits" in out
    assert "largest |HybridCDiT - CDiT| over the rollout: 0.000e+00" in out
    check_summary_times(out)
    assert "2 context frames; CDiT " in out
    caveat = out.split("what the times mean:")[1]
    assert "1 forwards at batch 1, cpu, 1 thread)" in caveat
    assert "small random model" not in caveat and "benchmarks/hybrid_overhead.py" in caveat


def test_demo_trajectory_comes_back():
    poses = poses_from_actions(loop_actions(24))
    assert torch.allclose(poses[11, :2], torch.zeros(2), atol=1e-5)
    assert torch.allclose(poses[12:, :2], poses[:12, :2], atol=1e-4)
    turn = poses[12:, 2] - poses[:12, 2]
    assert torch.allclose(torch.cos(turn), torch.ones(12), atol=1e-6)


def test_ddim_sample_recovers_a_known_clean_frame():
    target = torch.full((1, 4, 2, 2), 0.5)
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = float(alphas[int(t[0])])
        return (x - a**0.5 * target) / (1 - a) ** 0.5

    out = ddim_sample(oracle, torch.randn(1, 4, 2, 2), steps=3)
    assert torch.allclose(out, target, atol=1e-5)


def test_console_script():
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "hybrid-cdit"]
    assert entry.value == "hybrid_cdit.cli:main" and entry.load() is main
    result = subprocess.run(
        [sys.executable, "-m", "hybrid_cdit", "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0 and result.stdout.startswith("hybrid-cdit ")


def test_convert_verification_is_exact(capsys, monkeypatch):
    """A converted model 1e-6 away from the CDiT is refused: the claim is exact equality."""
    from hybrid_cdit import cli

    model = HybridCDiT.from_cdit_checkpoint(CHECKPOINT, num_heads=4)
    state_dict = read_checkpoint(CHECKPOINT)
    cli._verify_conversion(model, state_dict)
    assert "0.000e+00 (no memory), 0.000e+00 (random memory of 2 frames)" in capsys.readouterr().out
    with torch.no_grad():
        model.final_layer.linear.bias.add_(1e-6)
    with pytest.raises(cli.CommandError, match="does not reproduce the CDiT exactly"):
        cli._verify_conversion(model, state_dict)


def test_convert_is_reproducible(tmp_path):
    argv = ["convert", str(CHECKPOINT), "--num-heads", "4", "--no-verify"]
    assert main([argv[0], argv[1], str(tmp_path / "a"), *argv[2:]]) == 0
    assert main([argv[0], argv[1], str(tmp_path / "b"), *argv[2:]]) == 0
    assert main([argv[0], argv[1], str(tmp_path / "c"), *argv[2:], "--seed", "1"]) == 0
    files = [(tmp_path / d / "model.safetensors").read_bytes() for d in "abc"]
    assert files[0] == files[1]
    assert files[0] != files[2]
