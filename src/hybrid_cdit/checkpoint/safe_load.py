"""Safe unpickling of PyTorch checkpoint files.

``torch.load(weights_only=True)`` with ``argparse.Namespace`` allow-listed. A file that needs any
other Python global is refused before anything is unpickled (zip checkpoints are disassembled
statically with ``torch.serialization.get_unsafe_globals_in_checkpoint``; plain pickles with
``pickletools``), naming the globals. Unrestricted unpickling only with ``trust=True``.
"""

from __future__ import annotations

import argparse
import pickle
import pickletools
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
"""Python globals allowed on top of torch's ``weights_only`` defaults."""

_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


def torch_load(path: Path, *, zipped: bool, trust: bool) -> Any:
    """``torch.load`` on the CPU, safely unless ``trust`` and the file needs more."""
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        needs_unsafe = False
        if zipped:
            try:
                unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            except Exception as exc:
                raise _corrupt(path, exc) from exc
            if unsafe and not trust:
                raise _refused(path, unsafe)
            needs_unsafe = bool(unsafe)
        if not needs_unsafe:
            try:
                # mmap: entries that are never used (optimiser state) are never read from disk
                return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
            except pickle.UnpicklingError as exc:
                names = sorted(set(_GLOBAL_IN_MESSAGE.findall(str(exc))))
                names = names or ([] if zipped else _foreign_globals(path))
                if not trust:
                    if names:
                        raise _refused(path, names) from None
                    raise _unreadable(path, exc) from None
            except Exception as exc:
                raise _corrupt(path, exc) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=zipped)
    except Exception as exc:
        raise _corrupt(path, exc) from exc


_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"}
)
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_SAFE_PREFIXES = (
    "torch.",
    "collections.OrderedDict",
    "builtins.",
    "_codecs.",
    "argparse.Namespace",
)


def _foreign_globals(path: Path) -> list[str]:
    """Globals a plain pickle file imports, found by disassembly (nothing is executed).

    Follows ``GLOBAL`` and protocol 4's ``STACK_GLOBAL`` (with its module and name strings,
    memoised or not) in the file's first pickle; names torch allows anyway are left out.
    """
    found: set[str] = set()
    strings: list[str] = []
    memo: dict[int, str | None] = {}
    top: str | None = None
    try:
        with path.open("rb") as handle:
            for op, arg, _ in pickletools.genops(handle):
                name = op.name
                if name == "GLOBAL" and isinstance(arg, str):
                    found.add(arg.replace(" ", "."))
                elif name in _STRING_OPS:
                    top = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
                    strings.append(top)
                    continue
                elif name == "MEMOIZE":
                    memo[len(memo)] = top
                    continue
                elif name in _PUT_OPS and isinstance(arg, int):
                    memo[arg] = top
                    continue
                elif name in _GET_OPS and isinstance(arg, int):
                    top = memo.get(arg)
                    if top is not None:
                        strings.append(top)
                    continue
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.add(f"{strings[-2]}.{strings[-1]}")
                top = None
    except Exception:
        return sorted(found)
    return sorted(n for n in found if not n.startswith(_SAFE_PREFIXES))


def _refused(path: Path, names: list[str]) -> CheckpointError:
    return CheckpointError(
        f"{path}: refusing to load: the file needs Python globals that safe loading "
        f"(torch.load weights_only=True) does not allow: {', '.join(names)}. Unpickling them can "
        "run code stored in the file. If you trust its origin, pass trust_checkpoint=True "
        "(CLI: --trust-checkpoint)"
    )


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    text = str(exc)
    start = text.find("WeightsUnpickler error:")
    end = text.find("Check the documentation")
    if start >= 0:
        reason = " ".join(text[start + len("WeightsUnpickler error:") : end].split())
    else:
        reason = (text.strip().splitlines() or [type(exc).__name__])[0]
    return CheckpointError(
        f"{path}: safe loading (torch.load weights_only=True) cannot read this file: {reason}. "
        "It is corrupt, or a plain pickle rather than a torch.save checkpoint; if you trust its "
        "origin, pass trust_checkpoint=True (CLI: --trust-checkpoint)"
    )


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return CheckpointError(
        f"{path}: cannot be read as a PyTorch checkpoint (corrupt or truncated?): "
        f"{type(exc).__name__}: {reason}"
    )
