"""``hybrid-cdit`` command line: ``inspect``, ``convert`` and ``demo`` (whose rollout lives in
:mod:`hybrid_cdit.demo`).

Exit status: 0 on success, 2 on a usage error, 1 on a failure, reported as one line
``hybrid-cdit: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    CheckpointInfo,
    HubOptions,
    infer_cdit_config,
    read_checkpoint_info,
    save_pretrained,
)
from .checkpoint.files import WEIGHTS_NAME
from .checkpoint.hub import resolve_hub_path
from .checkpoint.loading import cdit_kwargs, load_state_dict_checked, resolve_checkpoint
from .checkpoint.materialize import build_for_loading
from .config import HybridCDiTConfig, build_model, parse_model_name
from .demo import DemoError
from .demo import run_demo as _run_demo
from .memory import MemoryContext
from .models import CDiT, HybridCDiT
from .registry import create_model

PROG = "hybrid-cdit"


class CommandError(Exception):
    """A failure reported as one line, without a traceback."""


# ------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The ``hybrid-cdit`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="NWM CDiT checkpoints and the memory-augmented HybridCDiT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    inspect = commands.add_parser(
        "inspect", help="describe a checkpoint", description="Describe a checkpoint file."
    )
    inspect.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="checkpoint file, pretrained dir, hf-hub:ORG/REPO/FILE or hf-hub:ORG/REPO",
    )
    inspect.add_argument("--json", action="store_true", help="print the description as JSON")
    inspect.add_argument(
        "--no-scan",
        action="store_true",
        help="read metadata only: do not scan the values for NaN or inf",
    )
    _add_trust(inspect)
    _add_hub(inspect)
    inspect.set_defaults(run=run_inspect)

    convert = commands.add_parser(
        "convert",
        help="convert a CDiT checkpoint to a HybridCDiT pretrained directory",
        description=(
            "Load a CDiT checkpoint into a HybridCDiT (or the model NAME / YAML describes), check "
            "that it reproduces the CDiT's output, and write a from_pretrained directory."
        ),
    )
    convert.add_argument(
        "checkpoint", metavar="CKPT", help="CDiT checkpoint file or hf-hub:ORG/REPO/FILE"
    )
    convert.add_argument("out_dir", metavar="OUT_DIR", help="directory to write")
    target = convert.add_mutually_exclusive_group()
    target.add_argument("--model", metavar="NAME", help="registry name, e.g. HybridCDiT-XL/2")
    target.add_argument("--config", metavar="YAML", help="NWM-style YAML config with memory keys")
    convert.add_argument(
        "--memory-layers", metavar="L", type=int, nargs="+", help="memory layer indices"
    )
    _add_source(convert)
    convert.add_argument("--num-heads", metavar="N", type=int, help="attention heads")
    convert.add_argument("--no-verify", action="store_true", help="skip the output comparison")
    convert.add_argument("--seed", type=int, default=0, help="seed of the new memory weights (0)")
    convert.add_argument(
        "--allow-nonfinite", action="store_true", help="load weights holding NaN or inf"
    )
    _add_trust(convert)
    _add_hub(convert)
    convert.set_defaults(run=run_convert)

    demo = commands.add_parser(
        "demo",
        help="autoregressive rollout with memory along a looping trajectory",
        description=(
            "Roll a HybridCDiT out along a square loop that revisits places, writing each "
            "finished frame to memory and retrieving by pose; compares with the CDiT."
        ),
    )
    demo.add_argument(
        "--checkpoint",
        metavar="CKPT",
        help="CDiT checkpoint file or hf-hub:ORG/REPO/FILE (default: a random model)",
    )
    demo.add_argument("--steps", type=_positive, default=24, help="frames to generate (24)")
    demo.add_argument("--denoise-steps", type=_positive, default=4, help="DDIM steps a frame (4)")
    demo.add_argument("--device", default="cpu", help="torch device (cpu)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument(
        "--threads",
        type=_positive,
        help="CPU threads (default: 1 for the small random model, torch's default otherwise)",
    )
    demo.add_argument("--num-heads", metavar="N", type=int, help="attention heads of CKPT")
    _add_source(demo)
    _add_trust(demo)
    _add_hub(demo)
    demo.set_defaults(run=run_demo)
    return parser


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        metavar="SOURCE",
        default="ema",
        help="state dict to read: ema (default), model, auto, or a top-level key of the file",
    )


def _add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow unrestricted unpickling (runs code from the file: trusted files only)",
    )


def _add_hub(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "model hub (hf-hub: names; the token comes from HF_TOKEN or `hf auth login`)"
    )
    group.add_argument("--revision", metavar="REV", help="branch, tag or commit (main)")
    group.add_argument("--cache-dir", metavar="DIR", help="hub cache (HF_HUB_CACHE)")
    group.add_argument(
        "--local-files-only", action="store_true", help="read the hub cache only, no network"
    )


def _hub_options(args: argparse.Namespace) -> HubOptions:
    return HubOptions(
        revision=args.revision, cache_dir=args.cache_dir, local_files_only=args.local_files_only
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hybrid-cdit`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (CommandError, CheckpointError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------- inspect


def run_inspect(args: argparse.Namespace) -> int:
    """``hybrid-cdit inspect CKPT``."""
    location = resolve_hub_path(
        args.checkpoint,
        _hub_options(args),
        directory_files=(WEIGHTS_NAME,),
        optional_files=(CONFIG_NAME,),
    )
    info = read_checkpoint_info(
        location, trust_checkpoint=args.trust_checkpoint, scan_values=not args.no_scan
    )
    pretrained = _pretrained_config(location)
    if args.json:
        data = _info_dict(info)
        if pretrained is not None:
            data["pretrained_config"] = pretrained
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(format_info(info))
    if pretrained is not None:
        fields = ", ".join(f"{k} {v}" for k, v in pretrained.items() if k != "model_class")
        print(f"pretrained:    {pretrained.get('model_class')} ({fields})")
    return 0


def _pretrained_config(path: Path) -> dict[str, Any] | None:
    """``config.json`` of a ``save_pretrained`` directory, when ``path`` is one."""
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        return None
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not a readable JSON config: {exc}") from exc
    return data if isinstance(data, dict) else None


def _info_dict(info: CheckpointInfo) -> dict[str, Any]:
    data = {name: getattr(info, name) for name in info.__dataclass_fields__}
    data["num_parameters"] = info.num_parameters
    return data


def format_info(info: CheckpointInfo) -> str:
    """Human-readable description of a checkpoint."""
    held = ", ".join(f"{name} ({n:,} parameters)" for name, n in info.state_dicts.items())
    rows = [
        ("file", f"{info.path} ({info.format}, {info.file_size / 1e6:.2f} MB)"),
        ("state dicts", f"{held}; reads {info.default_source!r} by default"),
    ]
    training = [
        f"{name} {value}"
        for name, value in (("epoch", info.epoch), ("step", info.train_steps))
        if value is not None
    ]
    rows.append(("training", ", ".join(training) if training else "not recorded"))
    if info.args:
        rows.append(("args", ", ".join(f"{k}={v}" for k, v in info.args.items())))
    if info.other_keys:
        rows.append(("other entries", ", ".join(info.other_keys)))
    config = info.config
    if config is None:
        rows.append(("architecture", f"not a CDiT state dict: {info.config_error}"))
    else:
        variant = config.get("variant")
        heads = config.get("num_heads")
        rows += [
            (
                "variant",
                f"CDiT-{variant}"
                if variant
                else f"none (hidden_size {config['hidden_size']}, depth {config['depth']} "
                "match no NWM variant)",
            ),
            ("context size", str(config["context_size"])),
            ("input size", f"{config['input_size']} (latent; {config['input_size'] * 8} px)"),
            ("patch size", str(config["patch_size"])),
            ("in channels", str(config["in_channels"])),
            ("hidden size", str(config["hidden_size"])),
            ("depth", str(config["depth"])),
            ("num heads", str(heads) if heads else "not inferable (pass --num-heads)"),
            ("mlp ratio", str(config["mlp_ratio"])),
            ("learn_sigma", str(config["learn_sigma"])),
        ]
    rows.append(("parameters", f"{info.num_parameters:,} ({info.default_source})"))
    rows.append(("dtypes", ", ".join(f"{n} {d}" for d, n in info.dtypes.items())))
    rows.append(("non-finite", _nonfinite_text(info.nonfinite)))
    rows.append(
        (
            "memory",
            f"{info.memory_tensors} memory tensors (a HybridCDiT state dict)"
            if info.memory_tensors
            else "none (a plain CDiT state dict)",
        )
    )
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in rows)


def _nonfinite_text(counts: Mapping[str, int] | None) -> str:
    if counts is None:
        return "not scanned (--no-scan)"
    if not counts:
        return "none (every value is finite)"
    listed = ", ".join(f"{key} ({n:,})" for key, n in list(counts.items())[:5])
    more = f" and {len(counts) - 5} more" if len(counts) > 5 else ""
    return f"{len(counts)} tensors hold NaN or inf: {listed}{more}"


# ----------------------------------------------------------------------------------- convert


def run_convert(args: argparse.Namespace) -> int:
    """``hybrid-cdit convert CKPT OUT_DIR``."""
    resolved = resolve_checkpoint(
        args.checkpoint,
        source=args.source,
        trust_checkpoint=args.trust_checkpoint,
        hub=_hub_options(args),
    )
    state_dict, source, path = resolved.state_dict, resolved.source, resolved.path
    inferred = infer_cdit_config(state_dict)
    # Built with its parameters on the meta device; the checkpoint's tensors are assigned
    # without a copy (memory-mapped), and only the new memory parameters are allocated.
    model = build_for_loading(lambda: _conversion_target(args, inferred))
    with torch.random.fork_rng():  # the new memory weights: the same file on every run
        torch.manual_seed(args.seed)
        report = load_state_dict_checked(
            model,
            state_dict,
            source=source,
            path=path,
            mmap=True,
            mapped=resolved.mapped,
            allow_nonfinite=args.allow_nonfinite,
        )
    name = type(model).__name__
    print(f"loaded {len(report.loaded)} tensors ({source!r} of {path}) into {name}")
    if report.initialized:
        print(
            f"memory parameters left in their function-preserving state: {len(report.initialized)}"
        )
    if not args.no_verify:
        _verify_conversion(model, state_dict)  # the checkpoint's tensors, shared by the model
    out = save_pretrained(model, args.out_dir)
    print(f"wrote {out}/config.json and {out}/model.safetensors")
    print(f"load with: {name}.from_pretrained({str(out)!r})")
    return 0


def _conversion_target(args: argparse.Namespace, inferred: dict[str, Any]) -> nn.Module:
    """The model ``convert`` loads the checkpoint into."""
    shapes = {
        key: inferred[key]
        for key in ("input_size", "context_size", "in_channels", "mlp_ratio", "learn_sigma")
    }
    memory: dict[str, Any] = {}
    if args.memory_layers is not None:
        memory["memory_layers"] = list(args.memory_layers)
    if args.config is not None:
        config = HybridCDiTConfig.from_yaml(args.config)
        if memory:
            config = replace(config, memory_layers=tuple(memory["memory_layers"]))
        if args.num_heads is not None:
            raise CommandError(
                "--num-heads cannot be combined with --config (the model name sets it)"
            )
        return build_model(config)
    if args.model is not None:
        family, _ = parse_model_name(args.model)
        if family == "CDiT" and memory:
            raise CommandError(
                f"--memory-layers needs a HybridCDiT model, got --model {args.model}"
            )
        heads = {} if args.num_heads is None else {"num_heads": args.num_heads}
        return create_model(args.model, **shapes, **heads, **memory)
    kwargs = {k: v for k, v in inferred.items() if k != "variant"}
    if args.num_heads is not None:
        kwargs["num_heads"] = args.num_heads
    if "num_heads" not in kwargs:
        raise CommandError(
            f"num_heads cannot be inferred: hidden_size {inferred['hidden_size']} and depth "
            f"{inferred['depth']} match no NWM variant; pass --num-heads N"
        )
    return HybridCDiT(**kwargs, **memory)


def _random_memory(x: Tensor, pose: Tensor, k: int) -> MemoryContext:
    """``k`` valid slots of random frames at the query pose (scores 1)."""
    frames = torch.randn(x.shape[0], k, *x.shape[1:], dtype=x.dtype)
    return MemoryContext(
        frames=frames,
        poses=pose[:, None].expand(-1, k, -1).clone(),
        scores=torch.ones(x.shape[0], k),
        mask=torch.ones(x.shape[0], k, dtype=torch.bool),
        query_pose=pose,
    )


def _verify_conversion(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Run the CDiT and the converted model on one random input; print the largest difference.

    The reference CDiT is built on the meta device and given ``state_dict``'s tensors
    themselves (no copy), so verifying costs no second model in memory.
    """
    config: dict[str, Any] = getattr(model, "get_config", dict)()
    reference = build_for_loading(lambda: CDiT(**cdit_kwargs(config)))
    reference.load_state_dict(dict(state_dict), strict=True, assign=True)
    model.eval()
    reference.eval()
    gen = torch.Generator().manual_seed(0)
    size, channels, context = config["input_size"], config["in_channels"], config["context_size"]
    x = torch.randn(1, channels, size, size, generator=gen)
    x_cond = torch.randn(1, context, channels, size, size, generator=gen)
    t = torch.tensor([500])
    y = torch.randn(1, 3, generator=gen)
    rel_t = torch.ones(1)
    with torch.no_grad():
        expected = reference(x, t, y, x_cond, rel_t)
        outputs = {"no memory": model(x, t, y, x_cond, rel_t)}
        if isinstance(model, HybridCDiT) and model.memory_enabled:
            pose = torch.zeros(1, 3)
            memory = _random_memory(x, pose, k=2)
            outputs["random memory of 2 frames"] = model(
                x, t, y, x_cond, rel_t, memory=memory, current_pose=pose
            )
    diffs = {name: float((out - expected).abs().max()) for name, out in outputs.items()}
    shown = ", ".join(f"{d:.3e} ({name})" for name, d in diffs.items())
    print(f"largest difference from the CDiT on a random input: {shown}")
    # Exact: the hybrid runs the CDiT's own operations, and its memory branch adds a zero-gated
    # term, so any difference at all is an error.
    worst = max(diffs.values())
    if not worst == 0.0:
        raise CommandError(
            f"the converted {type(model).__name__} does not reproduce the CDiT exactly: largest "
            f"difference {worst:.3e}, expected 0"
        )


# -------------------------------------------------------------------------------------- demo


def run_demo(args: argparse.Namespace) -> int:
    """``hybrid-cdit demo``: :func:`hybrid_cdit.demo.run_demo` with the parsed options."""
    try:
        _run_demo(
            checkpoint=args.checkpoint,
            steps=args.steps,
            denoise_steps=args.denoise_steps,
            device=args.device,
            seed=args.seed,
            threads=args.threads,
            num_heads=args.num_heads,
            source=args.source,
            trust_checkpoint=args.trust_checkpoint,
            hub=_hub_options(args),
        )
    except DemoError as exc:
        raise CommandError(str(exc)) from exc
    return 0
