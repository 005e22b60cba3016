"""``hybrid-cdit`` command line: ``inspect``, ``convert`` and ``demo``.

Exit status: 0 on success, 2 on a usage error, 1 on a failure, reported as one line
``hybrid-cdit: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    CheckpointInfo,
    build_from_cdit_checkpoint,
    infer_cdit_config,
    read_checkpoint_info,
    save_nwm_checkpoint,
    save_pretrained,
)
from .checkpoint.loading import (
    cdit_kwargs,
    check_fit,
    load_state_dict_checked,
    resolve_state_dict,
)
from .config import HybridCDiTConfig, build_model, parse_model_name
from .memory import MemoryContext, poses_from_actions, select_memory
from .models import CDiT, HybridCDiT
from .registry import create_model

PROG = "hybrid-cdit"
_CONVERT_ATOL = 1e-4


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
    inspect.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or pretrained dir")
    inspect.add_argument("--json", action="store_true", help="print the description as JSON")
    _add_trust(inspect)
    inspect.set_defaults(run=run_inspect)

    convert = commands.add_parser(
        "convert",
        help="convert a CDiT checkpoint to a HybridCDiT pretrained directory",
        description=(
            "Load a CDiT checkpoint into a HybridCDiT (or the model NAME / YAML describes), check "
            "that it reproduces the CDiT's output, and write a from_pretrained directory."
        ),
    )
    convert.add_argument("checkpoint", metavar="CKPT", help="CDiT checkpoint file")
    convert.add_argument("out_dir", metavar="OUT_DIR", help="directory to write")
    target = convert.add_mutually_exclusive_group()
    target.add_argument("--model", metavar="NAME", help="registry name, e.g. HybridCDiT-XL/2")
    target.add_argument("--config", metavar="YAML", help="NWM-style YAML config with memory keys")
    convert.add_argument(
        "--memory-layers", metavar="L", type=int, nargs="+", help="memory layer indices"
    )
    convert.add_argument("--source", choices=("ema", "model", "auto"), default="ema")
    convert.add_argument("--num-heads", metavar="N", type=int, help="attention heads")
    convert.add_argument("--no-verify", action="store_true", help="skip the output comparison")
    _add_trust(convert)
    convert.set_defaults(run=run_convert)

    demo = commands.add_parser(
        "demo",
        help="autoregressive rollout with memory along a looping trajectory",
        description=(
            "Roll a HybridCDiT out along a square loop that revisits places, writing each "
            "finished frame to memory and retrieving by pose; compares with the CDiT."
        ),
    )
    demo.add_argument("--checkpoint", metavar="CKPT", help="CDiT checkpoint (default: random)")
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
    demo.add_argument("--source", choices=("ema", "model", "auto"), default="ema")
    _add_trust(demo)
    demo.set_defaults(run=run_demo)
    return parser


def _add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow unrestricted unpickling (runs code from the file: trusted files only)",
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
    info = read_checkpoint_info(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
    pretrained = _pretrained_config(Path(args.checkpoint))
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


# ----------------------------------------------------------------------------------- convert


def run_convert(args: argparse.Namespace) -> int:
    """``hybrid-cdit convert CKPT OUT_DIR``."""
    state_dict, source, path = resolve_state_dict(
        args.checkpoint, source=args.source, trust_checkpoint=args.trust_checkpoint
    )
    inferred = infer_cdit_config(state_dict)
    with torch.device("meta"):  # check the fit before building full-size weights
        check_fit(_conversion_target(args, inferred), state_dict, source=source, path=path)
    model = _conversion_target(args, inferred)
    report = load_state_dict_checked(model, state_dict, source=source, path=path)
    name = type(model).__name__
    print(f"loaded {len(report.loaded)} tensors ({source!r} of {path}) into {name}")
    if report.initialized:
        print(
            f"memory parameters left in their function-preserving state: {len(report.initialized)}"
        )
    if not args.no_verify:
        _verify_conversion(model, state_dict)
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


def _verify_conversion(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Run the CDiT and the converted model on one random input; print the largest difference."""
    config: dict[str, Any] = getattr(model, "get_config", dict)()
    reference = CDiT(**cdit_kwargs(config))
    load_state_dict_checked(reference, state_dict, source="reference")
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
    scale = max(1.0, float(expected.abs().max()))
    diffs = {name: float((out - expected).abs().max()) for name, out in outputs.items()}
    shown = ", ".join(f"{d:.3e} ({name})" for name, d in diffs.items())
    print(f"largest difference from the CDiT on a random input: {shown}")
    worst = max(diffs.values())
    if not worst <= _CONVERT_ATOL * scale:
        raise CommandError(
            f"the converted {type(model).__name__} does not reproduce the CDiT: largest "
            f"difference {worst:.3e} exceeds {_CONVERT_ATOL * scale:.1e}"
        )


# -------------------------------------------------------------------------------------- demo


DEMO_ARCH: dict[str, Any] = {
    "input_size": 8,
    "context_size": 2,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 64,
    "depth": 4,
    "num_heads": 4,
}
"""The random CDiT the demo builds without ``--checkpoint``."""

STEP_LENGTH = 4.0
"""Metres per step of the demo trajectory (retrieval scores ``exp(-d / 10)``, masked under 0.7:
the previous frame, 4 m away, scores 0.67 and is not retrieved; a revisited place scores 1)."""

SIDE_STEPS = 3
"""Steps per side of the demo's square loop (12 steps a lap)."""


def loop_actions(steps: int, side: int = SIDE_STEPS, length: float = STEP_LENGTH) -> Tensor:
    """``(steps, 3)`` NWM actions ``(dx, dy, dyaw)`` driving square laps (left turn each side)."""
    actions = torch.zeros(steps, 3)
    actions[:, 0] = length
    actions[side - 1 :: side, 2] = math.pi / 2
    return actions


def ddim_sample(
    denoise: Callable[[Tensor, Tensor], Tensor],
    noise: Tensor,
    steps: int,
    *,
    clip: float = 3.0,
) -> Tensor:
    """A short deterministic DDIM loop over a 1000-step linear beta schedule.

    ``denoise(x, t)`` returns the model output; its first ``C`` channels are the predicted
    noise. The clean estimate is clipped to ``[-clip, clip]`` at each step.
    """
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas = torch.cumprod(1.0 - betas, dim=0)
    times = torch.linspace(999, 0, steps).round().long().tolist()
    x = noise
    channels = noise.shape[1]
    for i, step in enumerate(times):
        a = float(alphas[step])
        a_prev = float(alphas[times[i + 1]]) if i + 1 < len(times) else 1.0
        t = torch.full((noise.shape[0],), float(step), device=noise.device)
        eps = denoise(x, t)[:, :channels]
        x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-clip, clip)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def _demo_models(args: argparse.Namespace, workdir: Path) -> tuple[CDiT, HybridCDiT, str]:
    """The CDiT and its converted HybridCDiT, and a line saying where they came from."""
    if args.checkpoint is not None:
        state_dict, source, path = resolve_state_dict(
            args.checkpoint, source=args.source, trust_checkpoint=args.trust_checkpoint
        )
        inferred = infer_cdit_config(state_dict)
        heads = inferred.get("num_heads") if args.num_heads is None else args.num_heads
        if heads is None:
            raise CommandError(
                f"num_heads cannot be inferred: hidden_size {inferred['hidden_size']} and depth "
                f"{inferred['depth']} match no NWM variant; pass --num-heads N"
            )
        cdit = build_from_cdit_checkpoint(CDiT, state_dict, num_heads=heads)
        hybrid = build_from_cdit_checkpoint(HybridCDiT, state_dict, num_heads=heads)
        return cdit, hybrid, f"CDiT checkpoint {path} ({source})"
    torch.manual_seed(args.seed)
    cdit = CDiT(**DEMO_ARCH)
    with torch.no_grad():
        for param in cdit.parameters():  # random everywhere: adaLN-Zero would output zeros
            param.normal_(0.0, 0.05)
    saved = save_nwm_checkpoint(cdit, workdir / "cdit_demo.pth.tar", args={"demo": True})
    cdit = build_from_cdit_checkpoint(CDiT, saved, num_heads=DEMO_ARCH["num_heads"])
    hybrid = build_from_cdit_checkpoint(HybridCDiT, saved, num_heads=DEMO_ARCH["num_heads"])
    arch = ", ".join(f"{k} {v}" for k, v in DEMO_ARCH.items())
    return cdit, hybrid, f"random CDiT ({arch}), saved as an NWM train.py checkpoint and reloaded"


def _denoiser(
    model: nn.Module, y: Tensor, x_cond: Tensor, rel_t: Tensor, **memory: Any
) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x, t) -> model(x, t, y, x_cond, rel_t, **memory)`` for :func:`ddim_sample`."""

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        out: Tensor = model(x, t, y, x_cond, rel_t, **memory)
        return out

    return denoise


def _peek_retrieval(model: HybridCDiT, pose: Tensor) -> tuple[int, float, bool]:
    """What the model's own retrieval finds for ``pose``: ``(frames, best score, active)``,
    read from the buffer without refreshing it."""
    buffer = model.memory_buffer
    if buffer is None:
        return 0, 0.0, False
    state = buffer.state_dict()
    selection = select_memory(
        state["poses"],
        pose.to(state["poses"]),
        model.memory_top_k,
        valid=state["valid"],
        steps=state["steps"],
        strategy=model.retrieval,
        threshold=model.spatial_similarity_threshold,
    )
    k = selection.mask.shape[1]
    context = MemoryContext(
        frames=torch.zeros(1, k, 1, 1, 1),
        poses=state["poses"][:, :1].expand(-1, k, -1).clone(),
        scores=selection.scores,
        mask=selection.mask,
        query_pose=pose.to(state["poses"]),
    )
    count = int(selection.mask.sum())
    best = float(selection.scores.masked_fill(~selection.mask, 0).max()) if count else 0.0
    return count, best, bool(model.active_samples(context).all())


def _format_pose(pose: Tensor) -> str:
    """``( x, y, yaw°)`` with yaw in ``(-180, 180]`` and no negative zeros."""
    x, y, yaw = (float(v) for v in pose[:3])
    degrees = -math.degrees(math.remainder(-yaw, 2 * math.pi))
    return f"({round(x, 1) + 0.0:6.1f}, {round(y, 1) + 0.0:6.1f}, {round(degrees) + 0:4d}°)"


def run_demo(args: argparse.Namespace) -> int:
    """``hybrid-cdit demo``."""
    threads = args.threads or (1 if args.checkpoint is None else None)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # one thread is fastest for the small random model
    try:
        return _demo(args)
    finally:
        torch.set_num_threads(before)


def _demo(args: argparse.Namespace) -> int:
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise CommandError(f"--device {args.device!r} is not a torch device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {args.device}: CUDA is not available on this machine")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hybrid-cdit-demo-") as tmp:
        cdit, hybrid, origin = _demo_models(args, Path(tmp))
    cdit = cdit.to(device).eval()
    hybrid = hybrid.to(device).eval()
    hybrid.reset_memory()
    if not hybrid.memory_enabled:
        raise CommandError("the demo needs a HybridCDiT with memory_enabled=True")
    print(f"model: {origin}")
    print(
        f"converted to HybridCDiT: memory layers {hybrid.memory_layers}, retrieval "
        f"{hybrid.retrieval!r}, top-k {hybrid.memory_top_k}, similarity threshold "
        f"{hybrid.spatial_similarity_threshold}, activation threshold "
        f"{hybrid.memory_activation_threshold}"
    )
    lap = 4 * SIDE_STEPS
    print(
        f"trajectory: square loop of {SIDE_STEPS} steps of {STEP_LENGTH:g} m a side "
        f"({lap} steps a lap), {args.steps} steps, {args.denoise_steps} denoising steps a frame"
    )
    _rollout(args, cdit, hybrid, device, started)
    return 0


@dataclass
class _Step:
    """One generated frame of the demo rollout."""

    revisit: bool
    retrieved: int
    best: float
    active: bool
    hybrid_s: float
    cdit_s: float


def _timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    tick = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - tick


def _rollout(
    args: argparse.Namespace, cdit: CDiT, hybrid: HybridCDiT, device: torch.device, started: float
) -> None:
    gen = torch.Generator().manual_seed(args.seed)
    c, size, context_size = hybrid.in_channels, hybrid.input_size, hybrid.context_size
    actions = loop_actions(args.steps)
    poses = poses_from_actions(actions)
    start = torch.zeros(1, 3)
    frames = [torch.randn(1, c, size, size, generator=gen) for _ in range(context_size)]
    hybrid.update_memory(frames[-1].to(device), start.to(device))  # the observed start frame
    visited = [start[0]]
    steps: list[_Step] = []
    largest = 0.0
    print(
        f"{'step':>6}  {'pose (x, y, yaw)':<22} {'retrieved':>9} {'best':>6}  {'memory':<8} "
        f"{'hybrid ms':>9} {'cdit ms':>8}"
    )
    for i in range(args.steps):
        pose = poses[i : i + 1]
        x_cond = torch.stack(frames[-context_size:], dim=1).to(device)
        y = actions[i : i + 1].to(device)
        rel_t = torch.ones(1, device=device)
        noise = torch.randn(1, c, size, size, generator=gen).to(device)
        count, best, active = _peek_retrieval(hybrid, pose)
        hybrid_fn = _denoiser(hybrid, y, x_cond, rel_t, current_pose=pose.to(device))
        cdit_fn = _denoiser(cdit, y, x_cond, rel_t)
        with torch.inference_mode():
            runs = [
                ("hybrid", partial(ddim_sample, hybrid_fn, noise, args.denoise_steps)),
                ("cdit", partial(ddim_sample, cdit_fn, noise, args.denoise_steps)),
            ]
            if i % 2:  # alternate which model runs first, so neither always finds warm caches
                runs.reverse()
            results = {name: _timed(run) for name, run in runs}
        frame, hybrid_s = results["hybrid"]
        plain, cdit_s = results["cdit"]
        largest = max(largest, float((frame - plain).abs().max()))
        revisit = min(float((pose[0, :2] - p[:2]).norm()) for p in visited) < STEP_LENGTH / 2
        steps.append(_Step(revisit, count, best, active, hybrid_s, cdit_s))
        hybrid.update_memory(frame, pose.to(device))
        frames.append(frame.cpu())
        visited.append(pose[0])
        score = f"{best:.2f}" if count else "-"
        state = "active" if active else "inactive"
        tag = "  revisit" if revisit else ""
        print(
            f"{i + 1:>3}/{args.steps:<3} {_format_pose(pose[0]):<22} {count:>9} {score:>6}  "
            f"{state:<8} {hybrid_s * 1e3:>9.1f} {cdit_s * 1e3:>8.1f}{tag}",
            flush=True,
        )
    _print_summary(steps, largest, time.perf_counter() - started)


def _overhead(steps: list[_Step]) -> str:
    if not steps:
        return "n/a"
    hybrid = sum(s.hybrid_s for s in steps) / len(steps)
    cdit = sum(s.cdit_s for s in steps) / len(steps)
    return f"{1e3 * hybrid:.1f} vs {1e3 * cdit:.1f} ms ({100 * (hybrid / cdit - 1):+.1f}%)"


def _print_summary(steps: list[_Step], largest: float, total_s: float) -> None:
    revisits = [s for s in steps if s.revisit]
    first = [s for s in steps if not s.revisit]
    print("summary:")
    print(
        f"  memory active on {sum(s.active for s in revisits)}/{len(revisits)} revisits and on "
        f"{sum(s.active for s in first)}/{len(first)} first visits"
    )
    active = [s for s in steps if s.active]
    inactive = [s for s in steps if not s.active]
    print(
        f"  time a frame, HybridCDiT vs CDiT side by side: {_overhead(steps)} overall; "
        f"memory active {_overhead(active)}; inactive {_overhead(inactive)}"
    )
    print(
        f"  largest |HybridCDiT - CDiT| over the rollout: {largest:.3e} "
        "(memory output gates start at zero: the converted model is the CDiT until trained)"
    )
    print(f"  total time {total_s:.1f} s")
