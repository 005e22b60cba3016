"""Measure the float32 error of the computations whose outputs tests/data records (the basis of
the tolerances in tests/tolerances.py).

Each recorded computation runs in float32 with 1, 2 and 4 threads under each
``ATEN_CPU_CAPABILITY`` (``default``, ``avx2``, ``avx512``; a capability the CPU lacks falls back
to the best it has), each in a fresh process, and once in float64; it prints, per computation,
``max |out|``, the spread of the float32 paths, the largest float32 error against float64 and
the recorded outputs' own error. Run from the repository root::

    PYTHONPATH=src python tests/data/measure_float32_error.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DATA = Path(__file__).parent
ROOT = DATA.parents[1]


def _outputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(ROOT))
    from tests.test_hybrid_time_rays import OLD_DIR, _old_io

    from hybrid_cdit import CDiT, HybridCDiT

    def cast(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.to(dtype) if t.is_floating_point() else t for t in tensors]

    config = json.loads((DATA / "nwm_cdit_tiny.json").read_text())
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(DATA / "nwm_cdit_tiny.pth.tar", weights_only=True)
    io = load_file(DATA / "nwm_cdit_tiny_io.safetensors")
    inputs = cast([io[k] for k in ("x", "t", "y", "x_cond", "rel_t")])
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for source in ("ema", "model"):
            cdit = CDiT(**config).eval()
            state = {k.removeprefix("_orig_mod."): v for k, v in checkpoint[source].items()}
            cdit.load_state_dict(state)
            out[f"out_{source}"] = cdit.to(dtype)(*inputs).double()
        _, old_inputs, memory = _old_io()
        hybrid = HybridCDiT.from_pretrained(OLD_DIR).eval().to(dtype)
        memory = replace(memory.to(None, dtype), steps=memory.steps, query_step=memory.query_step)
        out["out_memory"] = hybrid(*cast(list(old_inputs)), memory=memory).double()
        out["out_plain"] = hybrid(*cast(list(old_inputs))).double()
    return out


def main() -> None:
    if len(sys.argv) == 4:  # one path, in this fresh process
        torch.set_num_threads(int(sys.argv[1]))
        save_file(_outputs(getattr(torch, sys.argv[2])), sys.argv[3])
        return
    recorded = {
        **load_file(DATA / "nwm_cdit_tiny_io.safetensors"),
        **load_file(DATA / "hybrid_0_1_0_io.safetensors"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, dict[str, torch.Tensor]] = {}
        runs = [("float64", "default", 1)] + [
            ("float32", cap, n) for cap in ("default", "avx2", "avx512") for n in (1, 2, 4)
        ]
        for dtype, cap, threads in runs:
            file = f"{tmp}/{dtype}_{cap}_{threads}.safetensors"
            env = {**os.environ, "ATEN_CPU_CAPABILITY": cap}
            subprocess.run(
                [sys.executable, __file__, str(threads), dtype, file], env=env, check=True
            )
            paths[f"{dtype} {cap} {threads}"] = load_file(file)
    exact = paths.pop("float64 default 1")
    for name, reference in exact.items():
        runs32 = torch.stack([p[name] for p in paths.values()])
        error = float((runs32 - reference).abs().max())
        print(
            f"{name}: max |out| {float(reference.abs().max()):.3g}, "
            f"spread of float32 paths {float((runs32 - runs32[0]).abs().max()):.3g}, "
            f"float32 error {error:.3g}, "
            f"recorded error {float((recorded[name].double() - reference).abs().max()):.3g}, "
            f"largest path - recorded {float((runs32 - recorded[name]).abs().max()):.3g}"
        )


if __name__ == "__main__":
    main()
