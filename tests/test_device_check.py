"""The GPU check script (benchmarks/device_check.py) on the CPU: its smoke run writes every key
the full run declares, and its time budget skips what would overrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from hybrid_cdit import HybridCDiT

from .benchmark_helpers import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"
BACKENDS = {"flash_cpu", "flash", "efficient", "cudnn", "math", "overrideable"}


@pytest.fixture(scope="module")
def dc() -> ModuleType:
    return load_benchmark("device_check")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The smoke run as a user starts it: a fresh process, on the CPU (budgets scaled up so
    that no unit is skipped on a loaded machine: budgets are tested below)."""
    out = tmp_path_factory.mktemp("device_check")
    src = str(Path(__file__).resolve().parents[1] / "src")
    argv = ["--smoke", "--device", "cpu", "--budget-scale", "100", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "device_check.json").read_text()), out


def key_set(results: dict[str, dict[str, Any]]) -> set[tuple[str, str]]:
    return {(part, key) for part, rec in results.items() for key in rec}


def test_smoke_run_writes_every_declared_key(dc: ModuleType, smoke: Any) -> None:
    results, out = smoke
    declared = {(part, key) for part, keys in dc.SCHEMA.items() for key in keys}
    assert key_set(results) == declared
    assert results["meta"]["errors"] == [] and results["meta"]["smoke"] is True
    assert results["meta"]["elapsed_s"] < 60
    table = (out / "device_check.md").read_text()
    for part in dc.PARTS:
        assert f"| {part} |" in table


def test_smoke_forward_figures(dc: ModuleType, smoke: Any) -> None:
    fwd = smoke[0]["forward"]
    assert fwd["skipped"] is None and fwd["units_skipped"] == []
    for mode in dc.MODES:
        for batch in dc.BATCHES:
            for workload in dc.WORKLOADS:
                key = f"{mode}_b{batch}_{workload}"
                h, c = fwd[f"{key}_hybrid_ms"], fwd[f"{key}_cdit_ms"]
                assert h > 0 and c > 0
                # a ratio of the two medians (each rounded to a microsecond)
                assert fwd[f"{key}_ratio"] == pytest.approx(h / c, rel=1e-3, abs=2e-3 / c)
    for label in ("self", "context", "memory"):
        assert fwd[f"backend_{label}"] in BACKENDS
    for variant in ("bias", "key_mask", "no_mask"):
        assert fwd[f"memory_attention_{variant}_ms"] > 0
        assert fwd[f"memory_attention_{variant}_backend"] in BACKENDS
    # flex_attention runs eagerly on the CPU and computes the same attention as the bias
    # (bf16 outputs of order 1: a few units of bf16 rounding)
    assert fwd["flex_error"] is None
    assert fwd["memory_attention_flex_backend"] == "flex_attention (eager)"
    assert 0 <= fwd["flex_max_abs_diff"] < 0.05
    # the tiny model's first memory layer: 4 heads of 16 (memory_dim 64), a 2 x 2 query grid
    # (4 x 4 tokens in 2 x 2 groups), 8 frames of 2 x 2 memory tokens
    assert fwd["memory_attention_shape"] == "batch 16, heads 4, head dim 16, 4 queries, 32 keys"


def test_smoke_train_and_load_figures(dc: ModuleType, smoke: Any) -> None:
    train, load = smoke[0]["train"], smoke[0]["load"]
    model = HybridCDiT(**dc.SMOKE.arch)
    everything = sum(p.numel() for p in model.parameters())
    memory = sum(p.numel() for p in model.memory_parameters())
    assert train["plain_trainable_parameters"] == everything
    assert train["checkpointed_trainable_parameters"] == everything
    assert train["memory_only_trainable_parameters"] == memory < everything
    assert train["batch"] == dc.SMOKE.train_batch
    for setting in dc.TRAIN_SETTINGS:
        assert train[f"{setting}_step_ms"] > 0
        assert train[f"{setting}_max_memory_gib"] is None  # a CUDA figure
    ratio = train["checkpointed_step_ms"] / train["plain_step_ms"]
    assert train["checkpointed_time_ratio"] == pytest.approx(ratio, rel=1e-3)
    assert train["checkpointed_memory_ratio"] is None

    assert load["skipped"] is None
    assert load["load_s"] > 0 and load["make_s"] > 0 and load["file_gb"] > 0
    bf16_bytes = 2 * sum(t.numel() for t in model.state_dict().values())
    assert load["model_gib"] == pytest.approx(bf16_bytes / 2**30, abs=1e-3)
    side, channels = dc.SMOKE.arch["input_size"], dc.SMOKE.arch["in_channels"]
    assert load["transfer_mib"] == pytest.approx(16 * 8 * channels * side * side * 4 / 2**20)
    assert load["retrieve_ms"] > 0
    assert load["pinned_copy_ms"] is None and load["pageable_copy_ms"] is None
    assert load["pinned_skipped"] == "pinned memory needs CUDA"


def test_smoke_maze_part_is_run_or_skipped_with_its_reason(dc: ModuleType, smoke: Any) -> None:
    maze = smoke[0]["maze"]
    assert maze["flags"].startswith(" ".join(dc.MAZE_SMOKE_FLAGS))
    reason = dc.maze_available()
    if reason is None:
        assert maze["skipped"] is None and maze["returncode"] == 0
        assert isinstance(maze["summary"], dict)
    else:
        assert maze["skipped"] == reason and reason.endswith("is not importable")
        assert maze["returncode"] is None and maze["summary"] is None


def test_zero_budget_skips_every_part_and_keeps_every_key(dc: ModuleType, tmp_path: Path) -> None:
    argv = ["--smoke", "--device", "cpu", "--budget-scale", "0", "--out", str(tmp_path)]
    threads = torch.get_num_threads()
    assert dc.main(argv) == 0
    assert torch.get_num_threads() == threads  # the smoke run's one thread is undone
    results = json.loads((tmp_path / "device_check.json").read_text())
    declared = {(part, key) for part, keys in dc.SCHEMA.items() for key in keys}
    assert key_set(results) == declared
    for part in ("forward", "train", "load"):
        rec = results[part]
        assert rec["skipped"] == "time budget: nothing fitted in 0.0 s"
        assert rec["units_skipped"] and rec["budget_s"] == 0.0
    assert results["forward"]["units_skipped"] == ["models"]
    assert results["train"]["units_skipped"] == list(dc.TRAIN_SETTINGS)
    assert results["load"]["units_skipped"] == ["make_file", "transfers"]
    assert results["maze"]["skipped"] is not None
    figures = [
        results["forward"]["bf16_b16_fresh_ratio"],
        results["train"]["plain_step_ms"],
        results["load"]["load_s"],
        results["load"]["retrieve_ms"],
    ]
    assert figures == [None] * 4


class StepClock:
    """A clock that reads ``times`` in turn, then stays at the last."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


def test_budget_allows_a_unit_only_when_it_ends_before_the_deadline(dc: ModuleType) -> None:
    budget = dc.Budget(10.0, clock=StepClock(0.0, 2.0, 2.0, 9.0, 9.0))
    assert budget.allows("a", 7.9)  # 2 + 7.9 < 10
    assert not budget.allows("b", 8.0)  # 2 + 8 reaches the deadline
    assert not budget.allows("c", 1.0)  # 9 + 1
    assert budget.allows("d", 0.5)  # 9 + 0.5
    assert budget.skipped == ["b", "c"]
    assert not dc.Budget(0.0).allows("e", 0.0)


def test_train_part_skips_settings_that_would_overrun(dc: ModuleType, tmp_path: Path) -> None:
    args = dc.parse_args(["--smoke", "--out", str(tmp_path)])
    run = dc.Run(dc.SMOKE, torch.device("cpu"), args)
    rec = dc.empty_results()["train"]
    # the first setting starts at once; by the second the clock has passed the deadline
    budget = dc.Budget(10.0, clock=StepClock(0.0, 0.0, 100.0))
    dc.part_train(run, rec, budget)
    assert budget.skipped == ["checkpointed", "memory_only"]
    assert rec["plain_step_ms"] > 0
    assert rec["checkpointed_step_ms"] is None and rec["memory_only_step_ms"] is None
    assert rec["checkpointed_time_ratio"] is None


def test_a_failing_part_is_recorded_and_the_others_still_run(
    dc: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(dc.PART_FUNCTIONS, "forward", broken)
    argv = ["--smoke", "--device", "cpu", "--parts", "forward", "load", "--out", str(tmp_path)]
    assert dc.main(argv) == 1
    results = json.loads((tmp_path / "device_check.json").read_text())
    assert results["forward"]["skipped"] == "error: RuntimeError: boom"
    assert results["meta"]["errors"] == ["forward"]
    assert results["train"]["skipped"] == "not requested (--parts)"
    assert results["load"]["skipped"] is None and results["load"]["retrieve_ms"] > 0


def test_budget_scale_is_checked(dc: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        dc.parse_args(["--out", str(tmp_path), "--budget-scale", "-1"])


def test_process_age_counts_the_start_up(dc: ModuleType) -> None:
    import time

    before = dc.process_age_s()
    time.sleep(0.2)
    after = dc.process_age_s()
    assert before > 0  # this process started before the test (imports at the least)
    assert after - before == pytest.approx(0.2, abs=0.05)  # /proc counts in 10 ms ticks
