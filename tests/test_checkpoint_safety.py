"""Untrusted and broken checkpoint files: refused with a clear error, never executed."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from hybrid_cdit.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    build_from_cdit_checkpoint,
    load_cdit_checkpoint,
    open_checkpoint,
    read_checkpoint,
    read_checkpoint_info,
)
from hybrid_cdit.models import CDiT, HybridCDiT

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "nwm_cdit_tiny.pth.tar"


class RunsCode:
    """Unpickling this object runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class Harmless:
    """A custom class: not allowed by safe loading, fine to unpickle when trusted."""

    def __init__(self) -> None:
        self.value = 3


def write_malicious(path: Path, marker: Path, how: str, ema: dict[str, torch.Tensor]) -> None:
    payload = {"ema": ema, "args": RunsCode(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "torch.save legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle)


@pytest.mark.parametrize("how", ["torch.save", "torch.save legacy", "pickle.dump"])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, how, nwm_checkpoint):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    write_malicious(path, marker, how, nwm_checkpoint["ema"])
    for attempt in (
        lambda: read_checkpoint(path),
        lambda: read_checkpoint_info(path),
        lambda: load_cdit_checkpoint(CDiT(input_size=8, hidden_size=48, depth=2), path),
        lambda: build_from_cdit_checkpoint(HybridCDiT, path, num_heads=4),
    ):
        with pytest.raises(CheckpointError) as info:
            attempt()
        message = str(info.value)
        assert str(path) in message
        assert "system" in message and "trust_checkpoint=True" in message
    assert not marker.exists()


def test_trusting_a_checkpoint_is_an_explicit_opt_in(tmp_path, nwm_checkpoint):
    path = tmp_path / "custom.pt"
    torch.save({"ema": nwm_checkpoint["ema"], "extra": Harmless()}, path)
    with pytest.raises(CheckpointError, match=r"Harmless.*trust_checkpoint=True"):
        read_checkpoint(path)
    state_dict = read_checkpoint(path, trust_checkpoint=True)
    assert state_dict.keys() == nwm_checkpoint["ema"].keys()


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_checkpoint(tmp_path, keep):
    data = CHECKPOINT.read_bytes()
    path = tmp_path / "truncated.pth.tar"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"truncated\.pth\.tar.*corrupt or truncated"):
        read_checkpoint(path)


def test_truncated_legacy_checkpoint(tmp_path, nwm_checkpoint):
    full = tmp_path / "legacy.pt"
    torch.save(nwm_checkpoint["ema"], full, _use_new_zipfile_serialization=False)
    path = tmp_path / "legacy_cut.pt"
    path.write_bytes(full.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"legacy_cut\.pt"):
        read_checkpoint(path)


def test_truncated_safetensors(tmp_path, nwm_checkpoint):
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in nwm_checkpoint["ema"].items()}, full)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(full.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*not a readable safetensors"):
        read_checkpoint(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: the file is empty \(0 bytes\)"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"run_name: not a checkpoint\n", "not a PyTorch or safetensors checkpoint"),
        (bytes(range(256)) * 4, "not a PyTorch or safetensors checkpoint"),
    ],
)
def test_non_checkpoint_files(tmp_path, content, reason):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"notes\.pth: {reason}"):
        read_checkpoint(path)


def test_torch_files_without_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: holds a list"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 3, "opt": {"lr": 1.0}}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match=r"meta\.pt: holds no state dict.*'epoch', 'opt'"):
        read_checkpoint(tmp_path / "meta.pt")


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.pth.tar"
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoint not found: .*nowhere") as info:
        read_checkpoint(path)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, CheckpointError)


def test_a_directory_without_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a directory without model\.safetensors"):
        open_checkpoint(tmp_path)
