"""Loading reads only what is asked for: every tensor operation during a load is watched, and
any that touches the state dict not asked for or the optimiser state fails the test.

The file is NWM ``train.py``'s layout (``model``, ``ema``, ``opt`` with AdamW state, ``args``).
The tensors ``torch.load`` returns are recorded as it returns them (``torch_load`` is wrapped);
a ``TorchDispatchMode`` then sees every aten operation and the memory its tensor arguments
cover. Memory-mapped tensors that nobody operates on are never read from disk.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import hybrid_cdit.checkpoint.files as files
import hybrid_cdit.checkpoint.pretrained as pretrained
from hybrid_cdit.checkpoint import (
    build_for_loading,
    from_pretrained,
    load_cdit_checkpoint,
    read_checkpoint,
    read_checkpoint_info,
    save_pretrained,
)
from hybrid_cdit.cli import main
from hybrid_cdit.models import CDiT, HybridCDiT

CONFIG = {"input_size": 8, "context_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 2}


def _ranges(obj: Any) -> list[tuple[int, int]]:
    return [
        (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
        for t in tree_leaves(obj)
        if isinstance(t, torch.Tensor) and t.numel() and t.device.type == "cpu"
    ]


@dataclass
class Watch(TorchDispatchMode):
    """Records, for each watched entry of the file, the aten operations that read its tensors."""

    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    ops: dict[str, Counter[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()

    def watch(self, name: str, obj: Any) -> None:
        self.ranges[name] = _ranges(obj)
        self.ops[name] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        for lo, hi in _ranges((args, kwargs)):
            for name, spans in self.ranges.items():
                if any(lo < end and hi > start for start, end in spans):
                    self.ops[name][func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def watching(monkeypatch: pytest.MonkeyPatch) -> Iterator[Watch]:
    """Watch the ``model``, ``ema`` and ``opt`` entries of whatever file the block loads."""
    watch = Watch()
    real_load, real_file = files.torch_load, pretrained.load_file

    def torch_load(*args: Any, **kwargs: Any) -> Any:
        obj = real_load(*args, **kwargs)
        for name in ("model", "ema", "opt"):
            if isinstance(obj, dict) and name in obj:
                watch.watch(name, obj[name])
        return obj

    def load_file(*args: Any, **kwargs: Any) -> Any:
        tensors = real_file(*args, **kwargs)
        watch.watch("weights", tensors)
        return tensors

    monkeypatch.setattr(files, "torch_load", torch_load)
    monkeypatch.setattr(pretrained, "load_file", load_file)
    with watch:
        yield watch


@pytest.fixture(scope="module")
def train_py_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint as NWM's ``train.py`` saves it, with AdamW state after two steps."""
    torch.manual_seed(0)
    model, ema = CDiT(**CONFIG), CDiT(**CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = (
        torch.randn(2, 4, 8, 8),
        torch.tensor([3, 700]),
        torch.randn(2, 3),
        torch.randn(2, 2, 4, 8, 8),
        torch.ones(2),
    )
    for _ in range(2):
        optimizer.zero_grad()
        model(*inputs).square().mean().backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("io") / "0000002.pth.tar"
    torch.save(
        {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "opt": optimizer.state_dict(),
            "args": argparse.Namespace(model="CDiT-tiny"),
            "epoch": 0,
            "train_steps": 2,
        },
        path,
    )
    return path


def _expect_untouched(watch: Watch, *names: str) -> None:
    assert set(names) <= set(watch.ops), f"not watched: {names}"
    for name in names:
        assert not watch.ops[name], f"{name} was read: {dict(watch.ops[name])}"


@pytest.mark.parametrize("cls", [CDiT, HybridCDiT])
def test_loading_copies_the_selected_state_dict_once_and_nothing_else(
    monkeypatch, train_py_file, cls
):
    with watching(monkeypatch) as watch:
        model = cls.from_cdit_checkpoint(train_py_file, source="ema", num_heads=2)
    _expect_untouched(watch, "model", "opt")
    tensors = len(torch.load(train_py_file, weights_only=False)["ema"])
    assert watch.ops["ema"] == Counter({"_to_copy": tensors})  # one copy of each tensor
    ema = read_checkpoint(train_py_file, mmap=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ema.items())


def test_mmap_loading_copies_nothing(monkeypatch, train_py_file):
    with watching(monkeypatch) as watch:
        model = HybridCDiT.from_cdit_checkpoint(
            train_py_file, source="model", mmap=True, num_heads=2
        )
        spans = list(watch.ranges["model"])
    _expect_untouched(watch, "ema", "opt")
    # read only to derive the memory branch's initial state (patch and position embeddings)
    assert not {"_to_copy", "clone"} & set(watch.ops["model"])
    for name, param in model.named_parameters():
        inside = any(lo <= param.data_ptr() < hi for lo, hi in spans)
        assert inside == ("memory" not in name), name  # CDiT weights: the file's own pages


def test_reading_and_inspecting_read_only_what_is_asked(monkeypatch, train_py_file, capsys):
    with watching(monkeypatch) as watch:
        read_checkpoint(train_py_file, source="model")
    _expect_untouched(watch, "ema", "opt")
    assert watch.ops["model"]
    with watching(monkeypatch) as watch:
        info = read_checkpoint_info(train_py_file, scan_values=False)
        assert main(["inspect", "--no-scan", str(train_py_file)]) == 0
    _expect_untouched(watch, "model", "ema", "opt")  # shapes and metadata only
    assert info.other_keys == ("opt",) and info.state_dicts["ema"] == info.num_parameters
    assert "other entries: opt" in capsys.readouterr().out
    with watching(monkeypatch) as watch:  # the value scan reads the default state dict only
        assert read_checkpoint_info(train_py_file).nonfinite == {}
    _expect_untouched(watch, "model", "opt")
    assert watch.ops["ema"] and "_to_copy" not in watch.ops["ema"]


def test_load_into_a_meta_model_assigns(monkeypatch, train_py_file):
    model = build_for_loading(lambda: HybridCDiT(**CONFIG))
    assert all(p.device.type == "meta" for p in model.parameters())
    with watching(monkeypatch) as watch:
        report = load_cdit_checkpoint(model, train_py_file, dtype=torch.bfloat16)
    _expect_untouched(watch, "model", "opt")
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in model.parameters())
    assert report.initialized and all("memory" in k for k in report.initialized)
    pos = read_checkpoint(train_py_file)["pos_embed"]
    assert torch.equal(model.pos_embed, pos.to(torch.bfloat16))


def test_convert_and_from_pretrained_copy_at_most_once(monkeypatch, train_py_file, tmp_path):
    out = tmp_path / "hybrid"
    with watching(monkeypatch) as watch:
        assert main(["convert", str(train_py_file), str(out), "--num-heads", "2"]) == 0
    _expect_untouched(watch, "model", "opt")
    assert not {"_to_copy", "clone"} & set(watch.ops["ema"])  # shared by the reference CDiT
    with watching(monkeypatch) as watch:
        model = from_pretrained(out)
    spans = watch.ranges["weights"]
    assert all(any(lo <= p.data_ptr() < hi for lo, hi in spans) for p in model.parameters())
    assert not {"_to_copy", "clone"} & set(watch.ops["weights"])  # read once, then assigned
    with watching(monkeypatch) as watch:
        doubled = from_pretrained(out, dtype=torch.float64)
    count = len(model.state_dict())
    assert watch.ops["weights"] == Counter({"_to_copy": count})  # converted tensor by tensor
    assert all(
        torch.equal(v, model.state_dict()[k].double()) for k, v in doubled.state_dict().items()
    )
    with watching(monkeypatch) as watch:
        mapped = from_pretrained(out, mmap=True)
    assert not {"_to_copy", "clone"} & set(watch.ops["weights"])
    reference = model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in mapped.state_dict().items())
    save_pretrained(mapped, tmp_path / "again")  # a mapped model saves like any other
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        out / "model.safetensors"
    ).read_bytes()
    with torch.no_grad():
        mapped.pos_embed.add_(1.0)  # writes stay private: the file keeps its values
    assert torch.equal(from_pretrained(out, mmap=True).pos_embed, reference["pos_embed"])


@pytest.mark.parametrize("mmap", [False, True])
def test_memory_branch_of_a_meta_built_hybrid_derives_from_the_loaded_weights(train_py_file, mmap):
    model = HybridCDiT.from_cdit_checkpoint(train_py_file, num_heads=2, mmap=mmap)
    ema = read_checkpoint(train_py_file)
    assert model.memory_ratio == 2 and not any(p.is_meta for p in model.parameters())
    side, r = CONFIG["input_size"] // 2, 2
    target = ema["pos_embed"][CONFIG["context_size"]].reshape(side, side, -1)
    pooled = torch.stack(
        [
            target[i * r : (i + 1) * r, j * r : (j + 1) * r].mean(dim=(0, 1))
            for i in range(side // r)
            for j in range(side // r)
        ]
    )
    assert torch.allclose(model.memory_pos_embed, pooled, atol=1e-7)
    fine = ema["x_embedder.proj.weight"]  # (D, C, 2, 2) -> coarse (D, C, 4, 4), mean-preserving
    coarse = model.memory_embedder.proj.weight
    for i in range(4):
        for j in range(4):
            assert torch.allclose(coarse[:, :, i, j], fine[:, :, i % 2, j % 2] / 4, atol=1e-7)
    assert torch.equal(model.memory_embedder.proj.bias, ema["x_embedder.proj.bias"])
    for block in model.hybrid_blocks():
        if block.enable_memory:
            gate = block.memory_adaLN_modulation[-1]
            assert not gate.weight.any() and not gate.bias.any()
            assert block.memory_attn.q_proj.weight.std() > 0  # initialised, not left empty


def test_bad_dtype_or_device_is_refused_before_reading(train_py_file):
    with pytest.raises(ValueError, match=r"dtype must be a floating torch.dtype.*got torch.int8"):
        HybridCDiT.from_cdit_checkpoint(train_py_file, num_heads=2, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"device must be a valid torch device, got 'gpu0'"):
        HybridCDiT.from_cdit_checkpoint(train_py_file, num_heads=2, device="gpu0")
    with pytest.raises(ValueError, match=r"dtype must be a floating torch.dtype.*got 'bf16'"):
        from_pretrained(train_py_file.parent, dtype="bf16")  # type: ignore[arg-type]
    model = CDiT.from_cdit_checkpoint(train_py_file, num_heads=2, dtype=torch.float64, device="cpu")
    ema = read_checkpoint(train_py_file)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(torch.equal(v, ema[k].double()) for k, v in model.state_dict().items())
