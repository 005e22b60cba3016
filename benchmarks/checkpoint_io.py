"""Time and peak memory of reading NWM-size checkpoints: inspect, load, convert, from_pretrained.

Makes once, in a cache folder outside the repository, an NWM ``train.py``-layout checkpoint of
``CDiT-<variant>`` (``context_size`` 4, ``input_size`` 28 as NWM's released XL/2; float32
``model`` and ``ema`` state dicts with distinct values, ``args``, ``epoch``, ``train_steps``; with
``--with-opt`` a second file that also holds AdamW state under ``opt``). The file is written from
tensors backed by a scratch file, so making it needs little anonymous memory.

Each operation then runs in a fresh Python process, which samples its own ``RssAnon`` (anonymous
memory, what an out-of-memory kill counts) from ``/proc/self/status`` every 20 ms and reads
``VmHWM`` (peak resident memory, file pages included) at the end:

- ``inspect``: ``hybrid-cdit inspect FILE``;
- ``from_cdit`` / ``from_cdit_mmap``: ``HybridCDiT.from_cdit_checkpoint(FILE)`` copying the
  tensors / keeping them memory-mapped (``mmap=True``); ``from_cdit_opt`` on the file with
  optimiser state (``--with-opt``);
- ``convert``: ``hybrid-cdit convert FILE DIR --model HybridCDiT-<variant>`` (verification on);
- ``from_pretrained`` / ``from_pretrained_mmap``: ``HybridCDiT.from_pretrained(DIR)``.

Ratios divide by the bytes of the ``HybridCDiT`` model itself (``model_gb``). The last line is
JSON. Usage::

    python benchmarks/checkpoint_io.py --variant B     # quick (~1 GB of files)
    python benchmarks/checkpoint_io.py                 # XL/2: an 8.1 GB file, 4.36 GB model
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from hybrid_cdit import CDiT, HybridCDiT, create_model
from hybrid_cdit.registry import VARIANTS

REPO = Path(__file__).resolve().parents[1]
SHAPE = {"context_size": 4, "input_size": 28}
GB = 1e9
OPERATIONS = (
    "inspect",
    "from_cdit",
    "from_cdit_mmap",
    "from_cdit_opt",
    "convert",
    "from_pretrained",
    "from_pretrained_mmap",
)


# ------------------------------------------------------------------------------ the files


def make_checkpoint(
    path: Path, variant: str, *, with_opt: bool, arch: dict[str, int] | None = None
) -> None:
    """Write an NWM ``train.py``-layout checkpoint of ``CDiT-<variant>`` to ``path``
    (``arch``, when given, overrides the variant's and :data:`SHAPE`'s arguments).

    Every tensor is its own storage (as in a real file), backed by a shared mapping of a
    scratch file, so the pages are file pages that the kernel writes back and reclaims.
    """
    config = {**VARIANTS[variant], **SHAPE, **(arch or {})}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CDiT(**config).state_dict().items()}
    copies = 4 if with_opt else 2  # model, ema (+ exp_avg, exp_avg_sq)
    numel = sum(s.numel() for s in shapes.values())
    scratch = path.with_name(path.name + ".scratch")
    with scratch.open("w+b") as handle:
        handle.truncate(numel * 4 * copies)
        view = mmap.mmap(handle.fileno(), numel * 4 * copies)
    offset = 0

    def tensor(shape: torch.Size) -> torch.Tensor:
        nonlocal offset
        out = torch.frombuffer(view, dtype=torch.float32, count=shape.numel(), offset=offset)
        offset += shape.numel() * 4
        return out.view(shape)

    gen = torch.Generator().manual_seed(0)
    model = {k: tensor(s).normal_(0.0, 0.02, generator=gen) for k, s in shapes.items()}
    ema = {
        k: tensor(s).copy_(v).mul_(0.999)
        for (k, s), v in zip(shapes.items(), model.values(), strict=True)
    }
    entries: dict[str, Any] = {
        "model": model,
        "ema": ema,
        "args": argparse.Namespace(model=f"CDiT-{variant}", context_size=4, image_size=224),
        "epoch": 12,
        "train_steps": 100000,
    }
    if with_opt:
        state = {
            i: {
                "step": torch.tensor(100000.0),
                "exp_avg": tensor(s).copy_(model[k]).mul_(1e-3),
                "exp_avg_sq": tensor(s).copy_(model[k]).square_(),
            }
            for i, (k, s) in enumerate(shapes.items())
        }
        groups = [{"lr": 1e-4, "weight_decay": 0.0, "params": list(range(len(shapes)))}]
        entries["opt"] = {"state": state, "param_groups": groups}
    partial = path.with_name(path.name + ".partial")
    torch.save(entries, partial)
    os.replace(partial, path)
    del entries, model, ema
    scratch.unlink()


def model_bytes(variant: str) -> int:
    with torch.device("meta"):
        model = create_model(f"HybridCDiT-{variant}", **SHAPE)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# ------------------------------------------------------------------------ measurement


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


class AnonSampler:
    """Peak ``RssAnon`` of this process, sampled every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _status("RssAnon"))

    def __enter__(self) -> AnonSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


def run_operation(name: str, files: dict[str, str], variant: str) -> dict[str, float]:
    """Run one operation in this process; its time and memory figures."""
    from hybrid_cdit.cli import main

    def quiet_cli(argv: list[str]) -> None:
        with open(os.devnull, "w") as sink:
            stdout, sys.stdout = sys.stdout, sink
            try:
                status = main(argv)
            finally:
                sys.stdout = stdout
        if status != 0:
            raise SystemExit(f"{argv[0]} failed with status {status}")

    actions = {
        "inspect": lambda: quiet_cli(["inspect", files["plain"]]),
        "from_cdit": lambda: HybridCDiT.from_cdit_checkpoint(files["plain"]),
        "from_cdit_mmap": lambda: HybridCDiT.from_cdit_checkpoint(files["plain"], mmap=True),
        "from_cdit_opt": lambda: HybridCDiT.from_cdit_checkpoint(files["opt"]),
        "convert": lambda: quiet_cli(
            ["convert", files["plain"], files["pretrained"], "--model", f"HybridCDiT-{variant}"]
        ),
        "from_pretrained": lambda: HybridCDiT.from_pretrained(files["pretrained"]),
        "from_pretrained_mmap": lambda: HybridCDiT.from_pretrained(files["pretrained"], mmap=True),
    }
    baseline = _status("RssAnon")
    with AnonSampler() as sampler:
        start = time.perf_counter()
        result = actions[name]()
        seconds = time.perf_counter() - start
    del result
    return {
        "seconds": seconds,
        "peak_anon": sampler.peak,
        "baseline_anon": baseline,
        "hwm": _status("VmHWM"),
    }


def measure(name: str, files: dict[str, str], variant: str) -> dict[str, float]:
    """Run ``name`` in a fresh Python process."""
    argv = [sys.executable, __file__, "--worker", name, "--variant", variant]
    argv += ["--files", json.dumps(files)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


# -------------------------------------------------------------------------------- main


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hybrid-cdit-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=("XL/2", "L/2", "B/2", "XL", "L", "B"), default="XL")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the files are kept")
    parser.add_argument("--with-opt", action="store_true", help="also load a file with AdamW state")
    parser.add_argument("--delete", action="store_true", help="delete the files afterwards")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=OPERATIONS,
        help="run these operations only (from_pretrained "
        "needs the directory an earlier convert wrote)",
    )
    parser.add_argument("--worker", choices=OPERATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    variant = args.variant if "/" in args.variant else f"{args.variant}/2"
    if args.worker:
        figures = run_operation(args.worker, json.loads(args.files), variant)
        print(json.dumps(figures))
        return

    cache = (args.cache_dir or default_cache()).resolve()
    if cache.is_relative_to(REPO):
        raise SystemExit(f"--cache-dir must be outside the repository ({REPO}), got {cache}")
    cache.mkdir(parents=True, exist_ok=True)
    tag = variant.replace("/", "")
    files = {
        "plain": str(cache / f"nwm_cdit_{tag}.pth.tar"),
        "opt": str(cache / f"nwm_cdit_{tag}_opt.pth.tar"),
        "pretrained": str(cache / f"hybrid_{tag}"),
    }
    wanted = [("plain", False)] + ([("opt", True)] if args.with_opt else [])
    for key, with_opt in wanted:
        if not Path(files[key]).exists():
            start = time.perf_counter()
            make_checkpoint(Path(files[key]), variant, with_opt=with_opt)
            size = Path(files[key]).stat().st_size / GB
            print(f"made {files[key]} ({size:.2f} GB) in {time.perf_counter() - start:.0f} s")
    operations = [
        name for name in (args.only or OPERATIONS) if name != "from_cdit_opt" or args.with_opt
    ]
    if "convert" in operations:
        shutil.rmtree(files["pretrained"], ignore_errors=True)

    model = model_bytes(variant)
    file_gb = Path(files["plain"]).stat().st_size / GB
    print(f"HybridCDiT-{variant}: {model / GB:.2f} GB of weights; file {file_gb:.2f} GB")
    head = f"{'operation':<22}{'time s':>8}{'peak anon GB':>14}{'/model':>8}"
    print(f"{head}{'VmHWM GB':>10}{'/model':>8}")
    report: dict[str, Any] = {"variant": variant, "model_gb": model / GB, "file_gb": file_gb}
    for name in operations:
        fig = measure(name, files, variant)
        peak, hwm = fig["peak_anon"], fig["hwm"]
        print(
            f"{name:<22}{fig['seconds']:>8.1f}{peak / GB:>14.2f}{peak / model:>8.2f}"
            f"{hwm / GB:>10.2f}{hwm / model:>8.2f}"
        )
        report[f"{name}_s"] = fig["seconds"]
        report[f"{name}_peak_gb"] = peak / GB
        report[f"{name}_peak_ratio"] = peak / model
        report[f"{name}_hwm_gb"] = hwm / GB
        report[f"{name}_hwm_ratio"] = hwm / model
        report[f"{name}_baseline_anon_gb"] = fig["baseline_anon"] / GB
    if args.with_opt:
        opt_gb = Path(files["opt"]).stat().st_size / GB
        report["opt_file_gb"] = opt_gb
        print(f"file with optimiser state: {opt_gb:.2f} GB")
    if args.delete:
        for key in ("plain", "opt"):
            Path(files[key]).unlink(missing_ok=True)
        shutil.rmtree(files["pretrained"], ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
