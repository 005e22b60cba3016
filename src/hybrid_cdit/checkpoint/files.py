"""Reading checkpoint files: NWM ``train.py`` checkpoints, bare state dicts and safetensors.

Loading is safe by default: ``torch.load(weights_only=True)`` with ``argparse.Namespace`` (the
``args`` entry of NWM checkpoints) allow-listed. A file that needs any other Python global is
refused with a message naming the globals; ``trust_checkpoint=True`` is the explicit opt-in to
unrestricted unpickling, which can run code stored in the file. There is no silent fallback.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import clean_state_dict
from torch import Tensor

from .errors import CheckpointError, CheckpointNotFoundError
from .hub import HubOptions, resolve_hub_path
from .materialize import materialize
from .safe_load import torch_load
from .values import check_finite_tensor

PathArg = str | PathLike[str]
"""A file system path."""

SOURCES: tuple[str, ...] = ("ema", "model", "auto")
"""Named values of ``source``: EMA weights, raw model weights, or EMA when present. Any other
string names a top-level key of the file (e.g. ``"ema_best"``) and reads the state dict there."""

EMA_KEYS: tuple[str, ...] = ("ema", "model_ema", "state_dict_ema", "ema_state_dict")
"""Top-level keys under which checkpoints store EMA weights, in order of preference."""

MODEL_KEYS: tuple[str, ...] = ("model", "state_dict", "model_state_dict")
"""Top-level keys under which checkpoints store the raw (non-EMA) weights."""

WEIGHTS = "weights"
"""Name given to the only, unlabelled state dict of a bare state dict or safetensors file."""

WEIGHTS_NAME = "model.safetensors"
"""Weights file of a ``save_pretrained`` directory."""

_STEP_KEYS = ("train_steps", "global_step", "step")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = 0x80


def check_source(source: object) -> str:
    """Return ``source`` if it is a non-empty string (one of :data:`SOURCES`, or the top-level
    key of a state dict in the file), else raise ``ValueError``."""
    if not isinstance(source, str) or not source:
        raise ValueError(
            f"source must be one of {', '.join(SOURCES)} or the top-level key of a state dict "
            f"in the file, got {source!r}"
        )
    return source


@dataclass(frozen=True)
class CheckpointContents:
    """Everything a checkpoint file holds, with state-dict keys cleaned of wrapper prefixes.

    Attributes:
        path: the file read.
        format: ``"torch"`` or ``"safetensors"``.
        state_dicts: state dicts by their top-level key (``"ema"``, ``"model"``...), or
            ``{"weights": ...}`` for a file that is one bare state dict.
        epoch: the ``epoch`` entry, if any.
        train_steps: the ``train_steps`` (or ``global_step`` / ``step``) entry, if any.
        args: the ``args`` entry (an ``argparse.Namespace`` in NWM) as a dict, if any.
        other_keys: remaining top-level keys (``opt``...).
        memory_mapped: the tensors are views of a private, read-only use of the file's pages
            (zip checkpoints and safetensors files): nothing is read from disk until a tensor's
            data is used, and copying one reads only its bytes. Legacy (non-zip) ``torch.save``
            files are read whole.
    """

    path: str
    format: str
    state_dicts: dict[str, dict[str, Tensor]]
    epoch: int | None = None
    train_steps: int | None = None
    args: dict[str, Any] | None = None
    other_keys: tuple[str, ...] = field(default=())
    memory_mapped: bool = False

    def describe(self) -> str:
        """One line: the state dicts held (with tensor counts) and the other entries."""
        held = ", ".join(f"{name} ({len(sd)} tensors)" for name, sd in self.state_dicts.items())
        extra = [
            name
            for name, value in (
                ("args", self.args),
                ("epoch", self.epoch),
                ("train_steps", self.train_steps),
            )
            if value is not None
        ]
        others = [*self.other_keys, *extra]
        tail = f"; other entries: {', '.join(others)}" if others else ""
        return f"state dicts: {held}{tail}"

    def _first(self, names: tuple[str, ...]) -> str | None:
        return next((name for name in names if name in self.state_dicts), None)

    def resolve(self, source: str = "ema") -> str:
        """The name of the state dict that ``source`` selects.

        A file holding one unlabelled state dict (bare, safetensors) serves every source. In a
        training checkpoint, ``"ema"`` and ``"model"`` require that entry and ``"auto"`` takes
        EMA weights when present, else the raw weights, else the only state dict. Any other
        ``source`` is the top-level key of the state dict to read.

        Raises:
            ValueError: for a ``source`` that is not a non-empty string.
            CheckpointError: when the file has no state dict for ``source``, listing what it holds
                and the ``source`` values that would select one.
        """
        check_source(source)
        chosen = self._choice(source)
        if chosen is not None:
            return chosen
        if source in SOURCES:
            wanted = {"ema": EMA_KEYS, "model": MODEL_KEYS, "auto": EMA_KEYS + MODEL_KEYS}[source]
            looked = f"looked for {', '.join(wanted)}"
        else:
            looked = "no top-level key of that name"
        known = (*EMA_KEYS, *MODEL_KEYS, source)
        working = [s for s in SOURCES if s != source and self._choice(s) is not None]
        working += [name for name in self.state_dicts if name not in known]
        hint = " or ".join(f"source={s!r}" for s in working)
        ambiguous = (
            f"; {len(self.state_dicts)} state dicts under keys the loader does not recognise "
            "as EMA or raw weights: choose one by its key"
            if source == "auto" and len(self.state_dicts) > 1
            else ""
        )
        raise CheckpointError(
            f"{self.path}: no state dict for source={source!r} ({looked}); the file holds "
            f"{self.describe()}{ambiguous}" + (f"; pass {hint}" if hint else "")
        )

    def _choice(self, source: str) -> str | None:
        """The state dict ``source`` selects, or None (never raises)."""
        if WEIGHTS in self.state_dicts:
            return WEIGHTS
        if source not in SOURCES:
            return source if source in self.state_dicts else None
        ema, raw = self._first(EMA_KEYS), self._first(MODEL_KEYS)
        only = next(iter(self.state_dicts)) if len(self.state_dicts) == 1 else None
        return {"ema": ema, "model": raw, "auto": ema or raw or only}[source]

    def select(self, source: str = "ema") -> tuple[str, dict[str, Tensor]]:
        """``(name, state_dict)`` selected by ``source`` (see :meth:`resolve`)."""
        name = self.resolve(source)
        return name, self.state_dicts[name]


def read_checkpoint(
    path: PathArg,
    *,
    source: str = "ema",
    trust_checkpoint: bool = False,
    mmap: bool = False,
    allow_nonfinite: bool = False,
    hub: HubOptions | None = None,
) -> dict[str, Tensor]:
    """Read one state dict from a checkpoint file, keys cleaned of ``module.``/``_orig_mod.``.

    Reads NWM ``train.py`` checkpoints (``model``, ``ema``, ``opt``, ``args``, ``epoch``,
    ``train_steps``), other wrappers (``state_dict``, ``model_ema``...), bare state dicts,
    ``.safetensors`` files and ``save_pretrained`` directories. Only the selected state dict is
    read from disk: the other one and the optimiser state never are.

    Args:
        path: the checkpoint file (``.pth.tar``, ``.pth``, ``.pt``, ``.safetensors``), a
            ``save_pretrained`` directory, or a model hub name: ``"hf-hub:ORG/REPO/FILE"``, or
            ``"hf-hub:ORG/REPO"`` for the repository's ``model.safetensors`` (downloaded
            through the hub cache, see :class:`~hybrid_cdit.checkpoint.hub.HubOptions`).
        source: ``"ema"`` (default; what NWM's inference loads), ``"model"``, ``"auto"``
            (EMA when present), or the top-level key of the state dict to read (for files that
            store weights under other keys). A file that is one bare state dict serves any
            source.
        trust_checkpoint: allow unrestricted unpickling for files that need Python globals
            beyond tensors, containers and ``argparse.Namespace``. Only for files you trust:
            unpickling can run code stored in them.
        mmap: return tensors that stay memory-mapped to the file (no copy: pages are read
            when used, and shared with the page cache; the file must stay in place while they
            live; writes to them stay private). False (default) copies the selected state dict
            into memory once.
        allow_nonfinite: return tensors holding NaN or inf; False (default) refuses them,
            naming the tensor (checked tensor by tensor as it is read).
        hub: download options for ``hf-hub:`` names; None for the defaults.

    Raises:
        ValueError: for a ``source`` that is not a non-empty string.
        CheckpointNotFoundError: the path does not exist (or a hub file is not available).
        CheckpointAccessError: a gated or private hub repository without access.
        CheckpointError: the file is empty, corrupt, not a checkpoint, needs unsafe globals,
            holds no state dict for ``source``, or holds non-finite values.
    """
    check_source(source)
    contents = open_checkpoint(path, trust_checkpoint=trust_checkpoint, hub=hub)
    state_dict = contents.select(source)[1]
    if mmap or not contents.memory_mapped:
        if not allow_nonfinite:
            for key, tensor in state_dict.items():
                check_finite_tensor(contents.path, key, tensor)
        return state_dict
    return materialize(
        state_dict, mmap=False, mapped=True, allow_nonfinite=allow_nonfinite, origin=contents.path
    )


def open_checkpoint(
    path: PathArg, *, trust_checkpoint: bool = False, hub: HubOptions | None = None
) -> CheckpointContents:
    """Open a checkpoint file: its state dicts and training metadata, without reading tensor
    data.

    Zip checkpoints (``torch.save`` since PyTorch 1.6) and safetensors files are memory-mapped
    (:attr:`CheckpointContents.memory_mapped`): shapes, dtypes and metadata come from the file's
    index, and a tensor's bytes are read from disk only when its data is used, so the unused
    state dict and the optimiser state are never read. The tensors refer to the file: copy the
    ones you keep (:func:`read_checkpoint` does) if the file may change. See
    :func:`read_checkpoint` for the formats, hub names, safety rules and errors. Values are not
    read, so non-finite values are not checked here.
    """
    file = _locate(resolve_hub_path(path, hub))
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(f"{file}: the file is empty (0 bytes), not a checkpoint")
    with file.open("rb") as handle:
        head = handle.read(16)
    if file.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        return _open_safetensors(file)
    zipped = head.startswith(_ZIP_MAGIC)
    if not zipped and head[0] != _PICKLE_PROTOCOL_OPCODE:
        raise CheckpointError(
            f"{file}: not a PyTorch or safetensors checkpoint (the file starts with {head[:8]!r})"
        )
    contents = _contents(file, torch_load(file, zipped=zipped, trust=trust_checkpoint))
    return replace(contents, memory_mapped=zipped)


def _locate(path: Path) -> Path:
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(
                f"{path}: is a directory without {WEIGHTS_NAME}; expected a checkpoint file or a "
                "save_pretrained directory"
            )
        return weights
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    return path


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with its JSON header's length (u64, little endian) and ``{``."""
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def _open_safetensors(path: Path) -> CheckpointContents:
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (corrupt or truncated?): {exc}"
        ) from exc
    if not tensors:
        raise CheckpointError(f"{path}: the safetensors file holds no tensors")
    return CheckpointContents(
        str(path), "safetensors", {WEIGHTS: _clean(tensors)}, memory_mapped=True
    )


def is_state_dict(value: object) -> bool:
    """True for a non-empty mapping of string keys to tensors."""
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())
    )


def _clean(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys without DDP ``module.`` and ``torch.compile`` ``_orig_mod.`` prefixes (timm)."""
    cleaned: dict[str, Tensor] = clean_state_dict(dict(state_dict))
    return cleaned


def clean_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Validate an in-memory state dict and strip wrapper prefixes from its keys.

    Raises:
        CheckpointError: when ``state_dict`` is not a non-empty mapping of names to tensors.
    """
    if not is_state_dict(state_dict):
        kind = type(state_dict).__name__
        raise CheckpointError(
            f"state_dict must be a non-empty mapping of parameter names to tensors, got a {kind}"
            + (" that holds non-tensor values" if isinstance(state_dict, Mapping) else "")
        )
    return _clean(state_dict)


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return None


def _contents(path: Path, obj: object) -> CheckpointContents:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a state dict or a dict of state dicts"
        )
    if is_state_dict(obj):
        return CheckpointContents(str(path), "torch", {WEIGHTS: _clean(obj)})
    state_dicts = {
        key: _clean(value)
        for key, value in obj.items()
        if isinstance(key, str) and is_state_dict(value)
    }
    if not state_dicts:
        keys = ", ".join(repr(k) for k in list(obj)[:12]) or "none"
        raise CheckpointError(
            f"{path}: holds no state dict (a mapping of parameter names to tensors); "
            f"top-level keys: {keys}"
        )
    args = obj.get("args")
    args_dict = (
        dict(vars(args))
        if isinstance(args, argparse.Namespace)
        else dict(args)
        if isinstance(args, Mapping)
        else None
    )
    epoch = _as_int(obj.get("epoch"))
    step_key = next((k for k in _STEP_KEYS if _as_int(obj.get(k)) is not None), None)
    consumed = {*state_dicts, *([] if args_dict is None else ["args"])}
    consumed |= {"epoch"} if epoch is not None else set()
    consumed |= {step_key} if step_key is not None else set()
    return CheckpointContents(
        path=str(path),
        format="torch",
        state_dicts=state_dicts,
        epoch=epoch,
        train_steps=None if step_key is None else _as_int(obj[step_key]),
        args=args_dict,
        other_keys=tuple(str(k) for k in obj if k not in consumed),
    )
