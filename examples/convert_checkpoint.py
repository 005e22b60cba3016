"""Convert a CDiT checkpoint to a HybridCDiT pretrained directory with the Python API.

The twin of ``hybrid-cdit convert CKPT OUT_DIR [--model NAME | --config YAML]``:

1. read the checkpoint safely (``open_checkpoint``: EMA weights by default, ``weights_only``);
2. infer the CDiT configuration from the tensors' shapes (``infer_cdit_config``);
3. build the target (``HybridCDiT(...)``, ``create_model(NAME)`` or ``build_model(config)``)
   and load the CDiT weights into it (``load_cdit_checkpoint`` -> ``LoadReport``);
4. check that it reproduces the CDiT's output, with a random memory attached;
5. ``save_pretrained`` and check the round trips: ``from_pretrained`` gives the same model,
   ``to_cdit_state_dict`` gives back the checkpoint's CDiT tensors.

Without ``CKPT`` a small random CDiT is written in NWM's ``train.py`` layout first
(``save_nwm_checkpoint``); without ``OUT_DIR`` the directory is temporary.

Run: ``python examples/convert_checkpoint.py [CKPT] [OUT_DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hybrid_cdit import (
    CDiT,
    HybridCDiT,
    HybridCDiTConfig,
    MemoryContext,
    build_model,
    create_model,
    from_pretrained,
    infer_cdit_config,
    load_cdit_checkpoint,
    save_pretrained,
    to_cdit_state_dict,
)
from hybrid_cdit.checkpoint import open_checkpoint, save_nwm_checkpoint

TINY: dict[str, Any] = {
    "input_size": 8,
    "context_size": 2,
    "in_channels": 4,
    "hidden_size": 64,
    "depth": 6,
    "num_heads": 4,
}
SHAPE_KEYS = ("input_size", "context_size", "in_channels", "mlp_ratio", "learn_sigma")
"""Configuration entries that come from the checkpoint whatever the target model."""


def write_random_checkpoint(path: Path) -> Path:
    """A random CDiT saved in NWM's ``train.py`` layout (``model``, ``ema``, ``args``...)."""
    torch.manual_seed(0)
    cdit = CDiT(**TINY)
    with torch.no_grad():
        for param in cdit.parameters():
            param.normal_(0.0, 0.05)
    return save_nwm_checkpoint(cdit, path, args={"model": "CDiT-tiny"}, train_steps=1000)


def build_target(args: argparse.Namespace, inferred: dict[str, Any]) -> nn.Module:
    """The model the checkpoint is loaded into: a YAML config, a registry name, or a HybridCDiT
    with the checkpoint's architecture."""
    memory: dict[str, Any] = {}
    if args.memory_layers is not None:
        memory["memory_layers"] = args.memory_layers
    heads = {} if args.num_heads is None else {"num_heads": args.num_heads}
    if args.config is not None:
        config = HybridCDiTConfig.from_yaml(args.config)
        if memory:
            config = dataclasses.replace(config, memory_layers=tuple(args.memory_layers))
        return build_model(config)
    if args.model is not None:
        shapes = {key: inferred[key] for key in SHAPE_KEYS}
        return create_model(args.model, **shapes, **heads, **memory)
    kwargs = {key: value for key, value in inferred.items() if key != "variant"}
    kwargs.update(heads)
    if "num_heads" not in kwargs:
        raise SystemExit(
            f"num_heads cannot be inferred for hidden_size {inferred['hidden_size']}, depth "
            f"{inferred['depth']} (no NWM variant): pass --num-heads"
        )
    return HybridCDiT(**kwargs, **memory)


def random_inputs(model: CDiT) -> tuple[tuple[Tensor, ...], MemoryContext]:
    """``(x, t, y, x_cond, rel_t)`` and a memory of two random frames at the query pose."""
    g = torch.Generator().manual_seed(0)
    c, s, n = model.in_channels, model.input_size, model.context_size
    x = torch.randn(1, c, s, s, generator=g)
    inputs = (
        x,
        torch.tensor([500]),
        torch.randn(1, 3, generator=g),
        torch.randn(1, n, c, s, s, generator=g),
        torch.ones(1),
    )
    pose = torch.zeros(1, 3)
    memory = MemoryContext(
        frames=torch.randn(1, 2, c, s, s, generator=g),  # (B, k, C, H, W)
        poses=pose[:, None].expand(1, 2, 3).clone(),  # (B, k, P)
        scores=torch.ones(1, 2),  # (B, k)
        mask=torch.ones(1, 2, dtype=torch.bool),  # (B, k)
        query_pose=pose,  # (B, P)
    )
    return inputs, memory


def largest_difference(
    a: nn.Module, b: nn.Module, inputs: tuple[Tensor, ...], **kwargs: Any
) -> float:
    with torch.no_grad():
        return float((a(*inputs, **kwargs) - b(*inputs)).abs().max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint",
        nargs="?",
        type=Path,
        metavar="CKPT",
        help="CDiT checkpoint (default: a random one)",
    )
    parser.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        metavar="OUT_DIR",
        help="directory to write (default: a temporary one)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--model", metavar="NAME", help="registry name, e.g. HybridCDiT-XL/2")
    target.add_argument("--config", metavar="YAML", help="NWM-style YAML config")
    parser.add_argument("--memory-layers", metavar="L", type=int, nargs="+")
    parser.add_argument("--source", choices=("ema", "model", "auto"), default="ema")
    parser.add_argument("--num-heads", metavar="N", type=int, help="attention heads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new memory weights (0)")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow unrestricted unpickling (trusted files only)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint is None:
            args.checkpoint = write_random_checkpoint(Path(tmp) / "cdit.pth.tar")
            args.num_heads = args.num_heads or TINY["num_heads"]
        out_dir = args.out_dir or Path(tmp) / "hybrid"

        contents = open_checkpoint(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
        print(f"{contents.path}: {contents.describe()}")
        name, state_dict = contents.select(args.source)
        inferred = infer_cdit_config(state_dict)
        print("inferred: " + ", ".join(f"{k} {v}" for k, v in inferred.items()))

        with torch.random.fork_rng():  # the new memory weights: the same file on every run
            torch.manual_seed(args.seed)
            model = build_target(args, inferred)
            report = load_cdit_checkpoint(model, state_dict)
        print(
            f"loaded the {name!r} state dict: {len(report.loaded)} tensors; "
            f"{len(report.initialized)} memory tensors put in their function-preserving "
            f"state; {len(report.ignored)} ignored"
        )

        reference = CDiT.from_cdit_checkpoint(state_dict, num_heads=model.num_heads).eval()
        model.eval()
        inputs, memory = random_inputs(reference)
        extra = {"memory": memory} if isinstance(model, HybridCDiT) else {}
        diff = largest_difference(model, reference, inputs, **extra)
        print(f"largest |{type(model).__name__} - CDiT| with a memory of 2 frames: {diff:.3e}")
        if diff > 1e-4:
            raise SystemExit("the converted model does not reproduce the CDiT")

        save_pretrained(model, out_dir)
        print(f"wrote {out_dir}: {sorted(p.name for p in out_dir.iterdir())}")
        reloaded = from_pretrained(out_dir).eval()
        same = largest_difference(reloaded, model, inputs)
        print(f"from_pretrained: {type(reloaded).__name__}, largest difference {same:.1e}")

        back = to_cdit_state_dict(model)
        identical = back.keys() == state_dict.keys() and all(
            torch.equal(back[k], state_dict[k]) for k in back
        )
        print(
            f"to_cdit_state_dict: {len(back)} tensors, identical to the checkpoint's: {identical}"
        )
        if same != 0.0 or not identical:
            raise SystemExit("a round trip changed the weights")


if __name__ == "__main__":
    main()
