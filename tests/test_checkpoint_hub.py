"""``hf-hub:`` names, loaded offline from a hub cache laid out on disk (no network).

The cache follows ``huggingface_hub``'s documented layout:
``models--ORG--REPO/{blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>,
refs/<revision>}``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from huggingface_hub import errors
from safetensors.torch import load_file

from hybrid_cdit.checkpoint import (
    CheckpointAccessError,
    CheckpointNotFoundError,
    HubOptions,
    parse_hub_name,
    read_checkpoint,
)
from hybrid_cdit.cli import main
from hybrid_cdit.models import CDiT, HybridCDiT

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "nwm_cdit_tiny.pth.tar"
PRETRAINED = DATA / "hybrid_0_1_0"
COMMIT = "a" * 40
OTHER_COMMIT = "b" * 40


def add_to_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str, ref: str) -> None:
    """Put ``files`` (name in the repo -> local file) in ``cache`` as revision ``ref``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    add_to_cache(root, "facebook/nwm", {"cdit_tiny.pth.tar": CHECKPOINT}, COMMIT, "main")
    pretrained = {n: PRETRAINED / n for n in ("config.json", "model.safetensors")}
    add_to_cache(root, "org/hybrid", pretrained, COMMIT, "main")
    # revision v2: a raw state dict under the same file name
    raw = root.parent / "raw.pt"
    torch.save(read_checkpoint(CHECKPOINT, source="model"), raw)
    add_to_cache(root, "facebook/nwm", {"cdit_tiny.pth.tar": raw}, OTHER_COMMIT, "v2")
    return root


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def offline(cache: Path) -> dict[str, Any]:
    return {"cache_dir": cache, "local_files_only": True}


def test_hub_names_parse():
    assert parse_hub_name("hf-hub:facebook/nwm/cdit_xl_100000.pth.tar") == (
        "facebook/nwm",
        "cdit_xl_100000.pth.tar",
    )
    assert parse_hub_name("hf-hub:org/repo/sub/dir/w.safetensors") == (
        "org/repo",
        "sub/dir/w.safetensors",
    )
    assert parse_hub_name("hf-hub:org/repo") == ("org/repo", None)
    for bad in ("hf-hub:nwm", "hf-hub:", "hf-hub:org//file", "org/repo"):
        with pytest.raises(ValueError, match="'hf-hub:ORG/REPO'"):
            parse_hub_name(bad)


def test_hub_options_are_checked():
    with pytest.raises(ValueError, match="revision must be a non-empty string or None, got 3"):
        HubOptions(revision=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local_files_only must be True or False, got 'yes'"):
        HubOptions(local_files_only="yes")  # type: ignore[arg-type]


def test_from_cdit_checkpoint_by_hub_name(cache, nwm_io, nwm_inputs):
    model = HybridCDiT.from_cdit_checkpoint(
        "hf-hub:facebook/nwm/cdit_tiny.pth.tar", num_heads=4, **offline(cache)
    )
    expected = read_checkpoint(CHECKPOINT)  # EMA weights
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    with torch.no_grad():
        out = model.eval()(*nwm_inputs)
    assert torch.allclose(out, nwm_io["out_ema"], atol=1e-5)


def test_a_revision_selects_its_snapshot(cache):
    model = CDiT.from_cdit_checkpoint(
        "hf-hub:facebook/nwm/cdit_tiny.pth.tar", num_heads=4, revision="v2", **offline(cache)
    )
    raw = read_checkpoint(CHECKPOINT, source="model")
    ema = read_checkpoint(CHECKPOINT, source="ema")
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(raw[key], ema[key])
    assert torch.equal(model.state_dict()[key], raw[key])


def test_from_pretrained_by_hub_repo(cache):
    model = HybridCDiT.from_pretrained("hf-hub:org/hybrid", **offline(cache))
    stored = load_file(PRETRAINED / "model.safetensors")
    ours = model.state_dict()
    assert set(stored) <= set(ours) and model.memory_layers == [1]
    assert all(torch.equal(ours[k], v) for k, v in stored.items())


def test_cli_inspect_and_convert_by_hub_name(cache, tmp_path, capsys):
    hub = ["--cache-dir", str(cache), "--local-files-only"]
    assert main(["inspect", "hf-hub:facebook/nwm/cdit_tiny.pth.tar", *hub]) == 0
    out = capsys.readouterr().out
    assert "state dicts:   model (178,832 parameters), ema (178,832 parameters)" in out
    assert f"snapshots/{COMMIT}/cdit_tiny.pth.tar" in out
    assert main(["inspect", "hf-hub:org/hybrid", *hub]) == 0
    assert "pretrained:    HybridCDiT" in capsys.readouterr().out
    target = tmp_path / "converted"
    argv = ["convert", "hf-hub:facebook/nwm/cdit_tiny.pth.tar", str(target), "--num-heads", "4"]
    assert main([*argv, *hub]) == 0
    converted = HybridCDiT.from_pretrained(target)
    expected = read_checkpoint(CHECKPOINT)
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in expected.items())


def test_cli_demo_by_hub_name_and_revision(cache, capsys):
    hub = ["--cache-dir", str(cache), "--local-files-only"]
    name = "hf-hub:facebook/nwm/cdit_tiny.pth.tar"
    argv = ["demo", "--checkpoint", name, "--num-heads", "4", "--steps", "2"]
    argv += ["--denoise-steps", "1", "--threads", "1", *hub]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"snapshots/{COMMIT}/cdit_tiny.pth.tar (ema)" in out
    assert "largest |HybridCDiT - CDiT| over the rollout: 0.000e+00" in out
    assert main([*argv, "--revision", "v2"]) == 0
    assert f"snapshots/{OTHER_COMMIT}/cdit_tiny.pth.tar" in capsys.readouterr().out
    # without the cache, offline: a one-line error, nothing downloaded
    assert main([*argv[:-3], "--local-files-only", "--cache-dir", str(cache / "none")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_missing_file_offline_says_how_to_get_it(cache, capsys):
    name = "hf-hub:facebook/nwm/cdit_xl_100000.pth.tar"
    with pytest.raises(CheckpointNotFoundError) as info:
        HybridCDiT.from_cdit_checkpoint(name, **offline(cache))
    message = str(info.value)
    assert "\n" not in message and message.startswith(name)
    for hint in (
        "hf download facebook/nwm cdit_xl_100000.pth.tar",
        "accept the licence",
        "https://huggingface.co/facebook/nwm",
        "hf auth login",
        "HF_TOKEN",
    ):
        assert hint in message
    hub = ["--cache-dir", str(cache), "--local-files-only"]
    assert main(["inspect", name, *hub]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "HF_TOKEN" in err


def _http_error(cls: type[Exception], status: int) -> Exception:
    http = importlib.import_module(errors.Response.__module__.split(".")[0])
    request = http.Request("GET", "https://huggingface.co/facebook/nwm/resolve/main/x")
    response = http.Response(status, request=request)
    return cls(f"{status} Client Error", response=response)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("cls", "status", "expected"),
    [
        (errors.GatedRepoError, 403, "facebook/nwm is a gated repository"),
        (errors.RepositoryNotFoundError, 401, "not authorised (HTTP 401)"),
    ],
)
def test_gated_or_unauthorised_gives_access_steps(
    monkeypatch, tmp_path, capsys, cls, status, expected
):
    def raise_it(*args: Any, **kwargs: Any) -> str:
        raise _http_error(cls, status)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", raise_it)
    name = "hf-hub:facebook/nwm/cdit_xl_100000.pth.tar"
    with pytest.raises(CheckpointAccessError) as info:
        HybridCDiT.from_cdit_checkpoint(name)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert "accept the licence on the model page (https://huggingface.co/facebook/nwm)" in message
    assert "`hf auth login` or the HF_TOKEN environment variable" in message
    out = tmp_path / "out"
    assert main(["convert", name, str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and not out.exists()


def test_cli_reads_the_offline_cache_from_the_environment(cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    env.pop("HF_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "hybrid_cdit", "inspect", "--no-scan", "hf-hub:org/hybrid"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert f"snapshots/{COMMIT}/model.safetensors" in result.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "hybrid_cdit", "inspect", "hf-hub:org/absent/w.safetensors"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "hf auth login" in missing.stderr
