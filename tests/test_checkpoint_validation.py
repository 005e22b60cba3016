"""Weights and configs that must be refused before any model is built or changed: integer
weights where floats belong, NaN/inf weights, and ``config.json`` fields of the wrong type,
range, or contradicting the weights."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import hybrid_cdit.checkpoint.pretrained as pretrained
from hybrid_cdit.checkpoint import (
    CheckpointError,
    from_pretrained,
    load_cdit_checkpoint,
    read_checkpoint,
    read_checkpoint_info,
)
from hybrid_cdit.checkpoint.values import is_finite, nonfinite_count
from hybrid_cdit.cli import main
from hybrid_cdit.models import CDiT, HybridCDiT

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "nwm_cdit_tiny.pth.tar"
PRETRAINED = DATA / "hybrid_0_1_0"
KEY = "blocks.1.mlp.fc1.weight"


@pytest.fixture(scope="module")
def ema() -> dict[str, torch.Tensor]:
    return read_checkpoint(CHECKPOINT)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------ integer weights


@pytest.fixture(scope="module")
def int_file(tmp_path_factory: pytest.TempPathFactory, ema) -> Path:
    weights = dict(ema)
    weights[KEY] = weights[KEY].round().to(torch.int32)
    path = tmp_path_factory.mktemp("int") / "int.pt"
    torch.save({"ema": weights}, path)
    return path


def test_an_int32_weight_is_named_with_its_dtype(int_file):
    with pytest.raises(CheckpointError, match=rf"tensor {KEY} has dtype torch\.int32") as info:
        HybridCDiT.from_cdit_checkpoint(int_file, num_heads=4)
    assert not isinstance(info.value, RuntimeError)


def test_an_int32_weight_leaves_a_built_model_unchanged(int_file, nwm_config):
    # a model with real parameters would copy the integers in, silently converted
    model = CDiT(**nwm_config)
    before = _snapshot(model)
    with pytest.raises(CheckpointError, match=rf"{KEY} has dtype torch\.int32"):
        load_cdit_checkpoint(model, int_file)
    assert _same(before, _snapshot(model))


def test_cli_convert_of_an_int32_weight_prints_one_line(int_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(int_file), str(out), "--num-heads", "4"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("hybrid-cdit: error: ") and f"{KEY} has dtype torch.int32" in err
    assert not out.exists()


# ------------------------------------------------------------------------ non-finite weights


@pytest.fixture(scope="module", params=["nan", "inf"])
def bad_value(request: pytest.FixtureRequest) -> float:
    return float(request.param)


@pytest.fixture(scope="module")
def nonfinite_files(tmp_path_factory: pytest.TempPathFactory, ema, bad_value) -> dict[str, Path]:
    weights = {k: v.clone() for k, v in ema.items()}
    weights[KEY][3, :5] = bad_value  # 5 values
    tmp = tmp_path_factory.mktemp("nonfinite")
    torch.save({"ema": weights, "model": ema}, tmp / "bad.pth.tar")
    save_file(weights, str(tmp / "bad.safetensors"))
    return {"torch": tmp / "bad.pth.tar", "safetensors": tmp / "bad.safetensors"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_value_check_is_exact_when_a_finite_sum_overflows(dtype):
    big = torch.finfo(dtype).max / 2
    values = torch.full((9_000_000,), big, dtype=dtype)  # sums to inf; every value is finite
    assert not math.isfinite(float(values.sum()))
    assert is_finite(values) and nonfinite_count(values) == 0
    bad = torch.tensor([float("nan"), float("inf"), -float("inf")]).to(dtype)
    values[[4, 4_500_000, -1]] = bad  # columns 4, 1_500_000 and 2_999_999 of 3 rows
    assert not is_finite(values) and nonfinite_count(values) == 3
    assert nonfinite_count(values.view(3, -1)[:, ::2]) == 2  # strided: the odd column is skipped
    assert is_finite(torch.arange(10)) and nonfinite_count(torch.arange(10)) == 0


NAMED = rf"tensor {KEY} holds 5 non-finite values .*allow_nonfinite=True"


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
@pytest.mark.parametrize("mmap", [False, True])
def test_nonfinite_weights_are_refused_by_every_path_loader(nonfinite_files, fmt, mmap):
    path = nonfinite_files[fmt]
    with pytest.raises(CheckpointError, match=NAMED):
        HybridCDiT.from_cdit_checkpoint(path, num_heads=4, mmap=mmap)
    with pytest.raises(CheckpointError, match=NAMED):
        read_checkpoint(path, mmap=mmap)
    model = HybridCDiT.from_cdit_checkpoint(path, num_heads=4, mmap=mmap, allow_nonfinite=True)
    assert int((~torch.isfinite(model.state_dict()[KEY])).sum()) == 5
    assert int((~torch.isfinite(read_checkpoint(path, allow_nonfinite=True)[KEY])).sum()) == 5


def test_nonfinite_weights_leave_a_built_model_unchanged(nonfinite_files, nwm_config):
    for meta in (False, True):
        if meta:
            with torch.device("meta"):
                model = CDiT(**nwm_config)
        else:
            model = CDiT(**nwm_config)
        before = {k: (v.device, v.shape, v.dtype) for k, v in model.state_dict().items()}
        values = None if meta else _snapshot(model)
        with pytest.raises(CheckpointError, match=NAMED):
            load_cdit_checkpoint(model, nonfinite_files["torch"])
        assert before == {k: (v.device, v.shape, v.dtype) for k, v in model.state_dict().items()}
        if values is not None:
            assert _same(values, _snapshot(model))


def test_nonfinite_in_memory_state_dict_and_other_source(nonfinite_files, ema, nwm_config):
    bad = read_checkpoint(nonfinite_files["torch"], allow_nonfinite=True)
    with pytest.raises(CheckpointError, match=rf"state dict \(state_dict\): tensor {KEY}"):
        HybridCDiT.from_cdit_checkpoint(bad, num_heads=4)
    # the raw weights of the same file are finite and load
    model = CDiT.from_cdit_checkpoint(nonfinite_files["torch"], source="model", num_heads=4)
    assert torch.equal(model.state_dict()[KEY], ema[KEY])


def test_from_pretrained_refuses_nonfinite_weights(tmp_path, bad_value):
    directory = tmp_path / "pre"
    shutil.copytree(PRETRAINED, directory)
    tensors = load_file(directory / "model.safetensors")
    tensors["blocks.1.memory_attn.q_proj.weight"][0, 0] = bad_value
    save_file(tensors, str(directory / "model.safetensors"))
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match=r"q_proj\.weight holds 1 non-finite"):
            from_pretrained(directory, mmap=mmap)
    model = from_pretrained(directory, allow_nonfinite=True)
    weight = model.state_dict()["blocks.1.memory_attn.q_proj.weight"]
    assert not math.isfinite(float(weight[0, 0]))


def test_inspect_reports_nonfinite_tensors(nonfinite_files, capsys):
    info = read_checkpoint_info(nonfinite_files["torch"])
    assert info.nonfinite == {KEY: 5} and info.default_source == "ema"
    assert info.dtypes == {"torch.float32": len(read_checkpoint(CHECKPOINT))}
    assert read_checkpoint_info(nonfinite_files["torch"], scan_values=False).nonfinite is None
    assert read_checkpoint_info(CHECKPOINT).nonfinite == {}
    assert main(["inspect", str(nonfinite_files["safetensors"])]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^non-finite: +1 tensors hold NaN or inf: {KEY} \(5\)$", out, re.M)
    assert main(["inspect", "--json", str(nonfinite_files["torch"])]) == 0
    assert json.loads(capsys.readouterr().out)["nonfinite"] == {KEY: 5}


def test_cli_convert_refuses_nonfinite_unless_allowed(nonfinite_files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["convert", str(nonfinite_files["torch"]), str(out), "--num-heads", "4"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{KEY} holds 5 non-finite values" in err
    assert not out.exists()
    assert main([*argv, "--allow-nonfinite", "--no-verify"]) == 0
    model = from_pretrained(out, allow_nonfinite=True)
    assert int((~torch.isfinite(model.state_dict()[KEY])).sum()) == 5


# ------------------------------------------------------------------------------ config.json


def _pretrained_with(tmp_path: Path, **changes: Any) -> Path:
    directory = tmp_path / "pre"
    shutil.copytree(PRETRAINED, directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if from_pretrained gets as far as building a model."""

    def refuse(factory: Any) -> Any:
        raise AssertionError("a model was built before the config was checked")

    monkeypatch.setattr(pretrained, "build_for_loading", refuse)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("memory_enabled", "false", "true or false"),
        ("learn_sigma", 1, "true or false"),
        ("mlp_ratio", "4", "a finite number > 0"),
        ("mlp_ratio", -4.0, "a finite number > 0"),
        ("depth", 4.0, "a positive integer"),
        ("depth", True, "a positive integer"),
        ("num_heads", 0, "a positive integer"),
        ("memory_layers", [1, "2"], "a list of layer indices"),
        ("memory_layers", [1, 7], r"distinct layer indices in \[0, 1\]"),
        ("retrieval", "nearest", "one of"),
        ("memory_write_policy", 3, "one of"),
        ("spatial_similarity_threshold", 1.5, "<= 1.0"),
        ("camera_fov", 4.0, r"\(0, pi\)"),
        ("memory_dim", "48", "a positive integer or null"),
        ("memory_buffer_size", None, "a positive integer"),
        ("not_a_field", 1, "for HybridCDiT \\(accepted"),
    ],
)
def test_config_fields_are_type_and_range_checked(tmp_path, no_build, field, value, expected):
    directory = _pretrained_with(tmp_path, **{field: value})
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(CheckpointError, match=rf"config\.json: .*'?{field}'?.*{expected}"):
        HybridCDiT.from_pretrained(directory)
    assert before == {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.mark.parametrize(
    ("field", "value", "held"),
    [
        ("depth", 20000, "depth 2"),
        ("hidden_size", 64, "hidden_size 24"),
        ("context_size", 3, "context_size 2"),
        ("input_size", 16, "input_size 8"),
        ("learn_sigma", False, "learn_sigma True"),
        ("mlp_ratio", 2.0, "mlp_ratio 4.0"),
        ("memory_enabled", False, "have memory parameters"),
        ("memory_layers", [0], r"memory_layers \[1\]"),
    ],
)
def test_config_contradicting_the_weights_fails_before_building(
    tmp_path, no_build, field, value, held
):
    directory = _pretrained_with(tmp_path, **{field: value})
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"field '{field}' is .*{held}"):
        from_pretrained(directory)
    assert time.perf_counter() - start < 2.0


def test_a_valid_config_still_loads_exactly(tmp_path):
    directory = _pretrained_with(tmp_path)
    model = from_pretrained(directory)
    stored = load_file(PRETRAINED / "model.safetensors")
    assert set(stored) <= set(model.state_dict())
    assert _same(stored, {k: v for k, v in model.state_dict().items() if k in stored})
