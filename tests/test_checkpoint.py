"""Checkpoint I/O against the NWM reference checkpoint: loading, inference, export, round trips."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from hybrid_cdit.checkpoint import (
    CheckpointError,
    LoadReport,
    build_from_cdit_checkpoint,
    from_pretrained,
    infer_cdit_config,
    load_cdit_checkpoint,
    open_checkpoint,
    read_checkpoint,
    read_checkpoint_info,
    save_nwm_checkpoint,
    save_pretrained,
    to_cdit_state_dict,
)
from hybrid_cdit.memory import MemoryContext
from hybrid_cdit.models import CDiT, HybridCDiT, is_memory_key
from hybrid_cdit.registry import VARIANTS

from .tolerances import NWM_TINY_ATOL

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "nwm_cdit_tiny.pth.tar"
ATOL = NWM_TINY_ATOL  # nwm_io was recorded on another machine: basis in tests/tolerances.py


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference outputs were recorded with one thread
    yield
    torch.set_num_threads(threads)


def run(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], **kwargs: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(*inputs, **kwargs)
    return out


def random_memory(inputs: tuple[torch.Tensor, ...], k: int = 3) -> MemoryContext:
    x = inputs[0]
    n = x.shape[0]
    gen = torch.Generator().manual_seed(3)
    pose = torch.zeros(n, 3)
    return MemoryContext(
        frames=torch.randn(n, k, *x.shape[1:], generator=gen),
        poses=pose[:, None].repeat(1, k, 1),
        scores=torch.ones(n, k),
        mask=torch.ones(n, k, dtype=torch.bool),
        query_pose=pose,
    )


# ------------------------------------------------------------------------------ reading


def test_plain_weights_only_load_needs_the_namespace_allowlist():
    with pytest.raises(Exception, match="Namespace"):
        torch.load(CHECKPOINT, weights_only=True)


def test_default_safe_loading_reads_the_ema_weights(nwm_checkpoint):
    ema, raw = nwm_checkpoint["ema"], nwm_checkpoint["model"]
    differ = [k for k, v in ema.items() if not torch.equal(v, raw[f"_orig_mod.{k}"])]
    assert len(differ) == len(ema)  # every tensor tells EMA from raw weights apart
    state_dict = read_checkpoint(CHECKPOINT)
    assert state_dict.keys() == ema.keys()
    for key, value in ema.items():
        assert torch.equal(state_dict[key], value)


def test_model_weights_lose_the_compile_prefix(nwm_checkpoint):
    state_dict = read_checkpoint(CHECKPOINT, source="model")
    assert all(key.startswith("_orig_mod.") for key in nwm_checkpoint["model"])
    assert set(state_dict) == set(nwm_checkpoint["ema"])
    for key, value in state_dict.items():
        assert torch.equal(value, nwm_checkpoint["model"][f"_orig_mod.{key}"])


def test_metadata_of_the_training_checkpoint():
    contents = open_checkpoint(CHECKPOINT)
    assert set(contents.state_dicts) == {"model", "ema"}
    assert (contents.epoch, contents.train_steps) == (3, 1234)
    assert contents.args is not None and contents.args["config"] == "config/nwm_cdit.yaml"
    assert contents.other_keys == ("opt",)
    info = read_checkpoint_info(CHECKPOINT)
    assert info.default_source == "ema"
    assert info.config is not None and info.config["context_size"] == 2
    assert info.memory_tensors == 0
    assert (
        info.state_dicts["ema"]
        == info.num_parameters
        == sum(p.numel() for p in read_checkpoint(CHECKPOINT).values())
    )


def test_unknown_source_is_a_value_error():
    with pytest.raises(ValueError, match=r"source must be one of ema, model, auto or .*got 3"):
        read_checkpoint(CHECKPOINT, source=3)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"no state dict for source='best'.*pass source="):
        read_checkpoint(CHECKPOINT, source="best")


@pytest.mark.parametrize("source", ["ema", "model", "auto", "other"])
def test_state_dicts_under_unrecognised_keys_are_named_not_recursed(tmp_path, source):
    sd = {"a.weight": torch.ones(2)}
    path = tmp_path / "ambiguous.pt"
    torch.save({"foo": sd, "bar": {"a.weight": torch.zeros(2)}, "epoch": 1}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, source=source)
    message = str(info.value)
    assert "foo (1 tensors), bar (1 tensors)" in message
    assert message.endswith("pass source='foo' or source='bar'")
    with pytest.raises(CheckpointError, match="pass source='foo' or source='bar'"):
        open_checkpoint(path).resolve(source)
    assert torch.equal(read_checkpoint(path, source="foo")["a.weight"], torch.ones(2))
    assert torch.equal(read_checkpoint(path, source="bar")["a.weight"], torch.zeros(2))


def test_missing_ema_lists_what_the_file_holds(tmp_path, nwm_checkpoint):
    path = tmp_path / "no_ema.pth.tar"
    torch.save({"model": nwm_checkpoint["model"], "opt": {}, "epoch": 1}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "source='ema'" in message
    assert "model (59 tensors)" in message and "opt" in message
    assert "source='model'" in message
    assert read_checkpoint(path, source="auto").keys() == nwm_checkpoint["ema"].keys()


def same_values(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


def test_other_wrappers(tmp_path, nwm_checkpoint):
    ema = nwm_checkpoint["ema"]
    raw = {k.removeprefix("_orig_mod."): v for k, v in nwm_checkpoint["model"].items()}
    assert not any(torch.equal(v, raw[k]) for k, v in ema.items())
    torch.save({"state_dict": raw}, tmp_path / "lightning.ckpt")
    assert same_values(read_checkpoint(tmp_path / "lightning.ckpt", source="model"), raw)
    torch.save({"state_dict": raw, "model_ema": ema}, tmp_path / "timm.pth")
    assert same_values(read_checkpoint(tmp_path / "timm.pth"), ema)
    assert same_values(read_checkpoint(tmp_path / "timm.pth", source="auto"), ema)
    assert same_values(read_checkpoint(tmp_path / "timm.pth", source="model"), raw)
    torch.save(dict(ema), tmp_path / "bare.pt")
    for source in ("ema", "model", "auto"):
        assert same_values(read_checkpoint(tmp_path / "bare.pt", source=source), ema)


def test_ddp_and_compile_prefixes_are_removed(tmp_path, nwm_checkpoint, nwm_io, nwm_inputs):
    ema = nwm_checkpoint["ema"]
    torch.save({"ema": {f"module.{k}": v for k, v in ema.items()}}, tmp_path / "ddp.pt")
    torch.save({f"_orig_mod.module.{k}": v for k, v in ema.items()}, tmp_path / "both.pt")
    for name in ("ddp.pt", "both.pt"):
        model = CDiT(**nwm_config_of(ema))
        load_cdit_checkpoint(model, tmp_path / name)
        assert torch.allclose(run(model, nwm_inputs), nwm_io["out_ema"], atol=ATOL)


def nwm_config_of(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    config = infer_cdit_config(state_dict)
    config.pop("variant", None)
    return {**config, "num_heads": 4}


def test_safetensors_input(tmp_path, nwm_checkpoint, nwm_config, nwm_io, nwm_inputs):
    ema = {k: v.contiguous() for k, v in nwm_checkpoint["ema"].items()}
    save_file(ema, tmp_path / "ema.safetensors")
    save_file(ema, tmp_path / "ema.bin")  # recognised by content, not by name
    for name in ("ema.safetensors", "ema.bin"):
        assert open_checkpoint(tmp_path / name).format == "safetensors"
        model = CDiT(**nwm_config)
        report = load_cdit_checkpoint(model, tmp_path / name)
        assert report.source == "weights"
        assert torch.allclose(run(model, nwm_inputs), nwm_io["out_ema"], atol=ATOL)


# ----------------------------------------------------------------------- configuration


def test_infer_config_recovers_the_fixture(nwm_checkpoint, nwm_config):
    for source in ("ema", "model"):
        config = infer_cdit_config(nwm_checkpoint[source])
        expected = {k: v for k, v in nwm_config.items() if k != "num_heads"}
        assert config == expected  # hidden 48 / depth 2 is no NWM variant: no num_heads


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_infer_config_names_nwm_variants(variant):
    spec = VARIANTS[variant]
    with torch.device("meta"):
        model = CDiT(**{**spec, "input_size": 28, "context_size": 4})
    config = infer_cdit_config(model.state_dict())
    assert config["variant"] == variant
    assert config["num_heads"] == spec["num_heads"]
    assert (config["input_size"], config["context_size"], config["learn_sigma"]) == (28, 4, True)


def test_infer_config_rejects_other_state_dicts():
    with pytest.raises(CheckpointError, match="not a CDiT state dict: missing pos_embed"):
        infer_cdit_config({"fc.weight": torch.zeros(2, 2)})


def test_num_heads_must_be_passed_when_not_inferable(nwm_io, nwm_inputs):
    with pytest.raises(CheckpointError, match=r"num_heads cannot be inferred.*pass num_heads"):
        build_from_cdit_checkpoint(CDiT, CHECKPOINT)
    model = build_from_cdit_checkpoint(CDiT, CHECKPOINT, num_heads=4)
    assert torch.allclose(run(model, nwm_inputs), nwm_io["out_ema"], atol=ATOL)


# ------------------------------------------------------------------------------ loading


def test_ema_by_default_reproduces_out_ema(nwm_config, nwm_io, nwm_inputs):
    model = CDiT(**nwm_config)
    report = load_cdit_checkpoint(model, CHECKPOINT)
    assert isinstance(report, LoadReport)
    assert report.source == "ema" and report.path == str(CHECKPOINT)
    assert len(report.loaded) == 59 and report.initialized == () and report.ignored == ()
    assert torch.allclose(run(model, nwm_inputs), nwm_io["out_ema"], atol=ATOL)


def test_model_source_reproduces_out_model(nwm_config, nwm_io, nwm_inputs):
    model = CDiT(**nwm_config)
    assert load_cdit_checkpoint(model, CHECKPOINT, source="model").source == "model"
    out = run(model, nwm_inputs)
    assert torch.allclose(out, nwm_io["out_model"], atol=ATOL)
    assert not torch.allclose(out, nwm_io["out_ema"], atol=ATOL)


def test_hybrid_from_cdit_checkpoint_is_the_cdit(nwm_io, nwm_inputs):
    model = build_from_cdit_checkpoint(HybridCDiT, CHECKPOINT, num_heads=4)
    assert isinstance(model, HybridCDiT) and model.memory_enabled
    expected = nwm_io["out_ema"]
    assert torch.allclose(run(model, nwm_inputs), expected, atol=ATOL)
    n = nwm_inputs[0].shape[0]
    empty = MemoryContext.empty(n, 4, (4, 8, 8), pose_dim=3)
    assert torch.allclose(run(model, nwm_inputs, memory=empty), expected, atol=ATOL)
    memory = random_memory(nwm_inputs)
    out = run(model, nwm_inputs, memory=memory, current_pose=memory.query_pose)
    assert torch.allclose(out, expected, atol=ATOL)


def test_load_into_hybrid_reports_memory_keys_initialised(nwm_config):
    model = HybridCDiT(**nwm_config)
    report = load_cdit_checkpoint(model, CHECKPOINT)
    memory_keys = {k for k in model.state_dict() if is_memory_key(k)}
    assert memory_keys and set(report.initialized) == memory_keys
    assert set(report.loaded) == set(model.state_dict()) - memory_keys
    assert "left at initialisation" in str(report)


def test_overrides_win_and_contradictions_are_refused():
    model = build_from_cdit_checkpoint(
        HybridCDiT, CHECKPOINT, num_heads=2, memory_layers=[0, 1], memory_top_k=3
    )
    assert (model.num_heads, model.memory_layers, model.memory_top_k) == (2, [0, 1], 3)
    with pytest.raises(CheckpointError, match="checkpoint has context_size 2, model has 3"):
        build_from_cdit_checkpoint(CDiT, CHECKPOINT, num_heads=4, context_size=3)


def small_cdit(**kwargs: Any) -> CDiT:
    config = {"input_size": 8, "hidden_size": 32, "depth": 2, "num_heads": 2, **kwargs}
    return CDiT(**config)


def test_other_context_size_is_named(tmp_path):
    path = save_nwm_checkpoint(small_cdit(context_size=4), tmp_path / "ctx4.pth.tar")
    model = small_cdit(context_size=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_cdit_checkpoint(model, path)
    message = str(info.value)
    assert "checkpoint has context_size 4, model has 3" in message
    assert "pos_embed: checkpoint shape (5, 16, 32), model shape (4, 16, 32)" in message
    assert str(path) in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_other_variant_is_named():
    with torch.device("meta"):
        small = CDiT(**{**VARIANTS["S/2"], "input_size": 28, "context_size": 4}).state_dict()
        model = HybridCDiT(**{**VARIANTS["B/2"], "input_size": 28, "context_size": 4})
    with pytest.raises(CheckpointError) as info:
        load_cdit_checkpoint(model, small)
    message = str(info.value)
    assert "checkpoint has hidden_size 384, model has 768" in message
    assert "looks like CDiT-S/2 (context_size 4, input_size 28)" in message
    assert "the model is HybridCDiT-B/2" in message
    assert "x_embedder.proj.weight: checkpoint shape (384, 4, 2, 2)" in message


def test_unexpected_key_raises_before_anything_loads(nwm_checkpoint, nwm_config):
    model = CDiT(**nwm_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    polluted = {**nwm_checkpoint["ema"], "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected in the checkpoint: extra\.weight"):
        load_cdit_checkpoint(model, polluted)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    report = load_cdit_checkpoint(model, polluted, strict=False)
    assert report.ignored == ("extra.weight",) and report.source == "state_dict"


def test_missing_cdit_key_raises_unless_not_strict(nwm_checkpoint, nwm_config):
    partial = {k: v for k, v in nwm_checkpoint["ema"].items() if k != "pos_embed"}
    with pytest.raises(CheckpointError, match="missing from the checkpoint: pos_embed"):
        load_cdit_checkpoint(HybridCDiT(**nwm_config), partial)
    report = load_cdit_checkpoint(CDiT(**nwm_config), partial, strict=False)
    assert report.initialized == ("pos_embed",)


def test_plain_cdit_refuses_a_hybrid_state_dict(nwm_config):
    hybrid = HybridCDiT(**nwm_config)
    with pytest.raises(CheckpointError, match="memory parameters of a HybridCDiT"):
        load_cdit_checkpoint(CDiT(**nwm_config), hybrid.state_dict())


# ------------------------------------------------------------------------------- export


def test_to_cdit_state_dict_matches_the_nwm_layout(nwm_checkpoint):
    hybrid = build_from_cdit_checkpoint(HybridCDiT, CHECKPOINT, num_heads=4)
    exported = to_cdit_state_dict(hybrid)
    ema = nwm_checkpoint["ema"]
    assert set(exported) == set(ema)
    assert all(torch.equal(exported[k], v) for k, v in ema.items())
    CDiT(**nwm_config_of(ema)).load_state_dict(exported, strict=True)


def test_save_nwm_checkpoint_round_trips(tmp_path, nwm_io, nwm_inputs):
    hybrid = build_from_cdit_checkpoint(HybridCDiT, CHECKPOINT, num_heads=4)
    path = save_nwm_checkpoint(hybrid, tmp_path / "out.pth.tar", epoch=5, train_steps=10)
    contents = open_checkpoint(path)
    assert (contents.epoch, contents.train_steps) == (5, 10)
    assert not any(is_memory_key(k) for k in contents.state_dicts["ema"])
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "ema", "args", "epoch", "train_steps"}
    model = build_from_cdit_checkpoint(CDiT, path, num_heads=4)
    assert torch.allclose(run(model, nwm_inputs), nwm_io["out_ema"], atol=ATOL)


# --------------------------------------------------------------------------- pretrained


def perturb(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("cls", [CDiT, HybridCDiT])
def test_save_and_load_pretrained_is_exact(tmp_path, cls, nwm_config, nwm_inputs):
    model = cls(**nwm_config)
    perturb(model)
    directory = save_pretrained(model, tmp_path / "pretrained")
    config = json.loads((directory / "config.json").read_text())
    assert config["model_class"] == cls.__name__
    assert {k: config[k] for k in model.get_config()} == model.get_config()
    loaded = from_pretrained(directory)
    assert type(loaded) is cls and loaded.get_config() == model.get_config()
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert torch.equal(run(loaded, nwm_inputs), run(model, nwm_inputs))
    assert type(from_pretrained(directory, cls)) is cls


def test_from_pretrained_class_rules(tmp_path, nwm_config, nwm_io, nwm_inputs):
    cdit = build_from_cdit_checkpoint(CDiT, CHECKPOINT, num_heads=4)
    save_pretrained(cdit, tmp_path / "cdit")
    hybrid = from_pretrained(tmp_path / "cdit", HybridCDiT)
    assert isinstance(hybrid, HybridCDiT)
    assert torch.allclose(run(hybrid, nwm_inputs), nwm_io["out_ema"], atol=ATOL)
    save_pretrained(hybrid, tmp_path / "hybrid")
    with pytest.raises(CheckpointError, match="holds a HybridCDiT"):
        from_pretrained(tmp_path / "hybrid", CDiT)


def test_from_pretrained_errors_name_the_path(tmp_path, nwm_config):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        from_pretrained(tmp_path / "missing_dir")
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match=r"half.*missing config\.json and model\.safetensors"):
        from_pretrained(tmp_path / "half")
    save_pretrained(CDiT(**nwm_config), tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text('{"model_class": "Nope"}')
    with pytest.raises(CheckpointError, match="unknown model_class 'Nope'"):
        from_pretrained(tmp_path / "bad")


def test_a_pretrained_directory_reads_as_a_checkpoint(tmp_path, nwm_config):
    model = HybridCDiT(**nwm_config)
    save_pretrained(model, tmp_path / "pretrained")
    info = read_checkpoint_info(tmp_path / "pretrained")
    assert info.format == "safetensors"
    assert info.memory_tensors == sum(1 for k in model.state_dict() if is_memory_key(k))
    assert info.config is not None and info.config["depth"] == 2


def test_hybrid_state_dict_rebuilds_with_its_memory_geometry(tmp_path):
    from hybrid_cdit.checkpoint import infer_memory_config

    torch.manual_seed(0)
    trained = HybridCDiT(
        input_size=8,
        context_size=2,
        hidden_size=48,
        depth=4,
        num_heads=4,
        memory_layers=[1, 3],
        memory_patch_size=4,
    )
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    assert infer_memory_config(state) == {
        "memory_layers": [1, 3],
        "memory_patch_size": 4,
        "memory_dim": 48,
        "memory_time_embedding": False,
        "memory_pose_encoding": "rays",
        "memory_ray_alignment": True,
    }
    assert (
        infer_memory_config(CDiT(input_size=8, hidden_size=48, depth=1, num_heads=4).state_dict())
        == {}
    )
    rebuilt = HybridCDiT.from_cdit_checkpoint(state, num_heads=4)
    assert rebuilt.memory_layers == [1, 3] and rebuilt.memory_patch_size == 4
    for key, value in trained.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def _train_like(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter (memory gates included) away from its initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(
    "geometry",
    [
        {"input_size": 8, "memory_layers": [0, 3], "memory_patch_size": 2, "memory_dim": 32},
        {"input_size": 16, "memory_layers": [1], "memory_patch_size": 8, "memory_dim": 16},
    ],
)
def test_trained_hybrid_saved_by_nwm_train_py_loads_back(tmp_path, geometry):
    torch.manual_seed(0)
    config = {"context_size": 2, "hidden_size": 64, "depth": 4, "num_heads": 4, **geometry}
    model = HybridCDiT(**config)
    defaults = HybridCDiT(**{k: v for k, v in config.items() if not k.startswith("memory")})
    for key in ("memory_layers", "memory_patch_size", "memory_dim"):
        assert getattr(model, key) != getattr(defaults, key), key  # all non-default
    _train_like(model, seed=1)
    ema = HybridCDiT(**config)
    ema.load_state_dict(model.state_dict())
    _train_like(ema, seed=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(*_inputs(config)).square().mean().backward()
    optimizer.step()
    size = config["input_size"]
    gen = torch.Generator().manual_seed(4)
    pose = torch.zeros(2, 3)
    memory = MemoryContext(
        frames=torch.randn(2, 3, 4, size, size, generator=gen),
        poses=torch.randn(2, 3, 3, generator=gen),
        scores=torch.ones(2, 3),
        mask=torch.ones(2, 3, dtype=torch.bool),
        query_pose=pose,
    )
    inputs = _inputs(config)
    recorded = {
        name: run(net, inputs, memory=memory, current_pose=pose)
        for name, net in (("model", model), ("ema", ema))
    }
    assert not torch.allclose(recorded["model"], recorded["ema"], atol=1e-3)
    path = tmp_path / "0100000.pth.tar"
    torch.save(  # NWM train.py: model.module.state_dict() of a DDP model, ema.state_dict()
        {
            "model": {f"module.{k}": v for k, v in model.state_dict().items()},
            "ema": ema.state_dict(),
            "opt": optimizer.state_dict(),
            "args": argparse.Namespace(model="CDiT-XS", context_size=2),
            "epoch": 3,
            "train_steps": 100000,
        },
        path,
    )
    for source in ("ema", "model"):
        loaded = HybridCDiT.from_cdit_checkpoint(path, source=source, num_heads=4)
        for key in ("memory_layers", "memory_patch_size", "memory_dim"):
            assert getattr(loaded, key) == getattr(model, key), key
        out = run(loaded, inputs, memory=memory, current_pose=pose)
        assert torch.allclose(out, recorded[source], atol=1e-5), source


def _inputs(config: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(5)
    size, n = config["input_size"], 2
    return (
        torch.randn(n, 4, size, size, generator=gen),
        torch.tensor([10, 500]),
        torch.randn(n, 3, generator=gen),
        torch.randn(n, config["context_size"], 4, size, size, generator=gen),
        torch.ones(n),
    )
