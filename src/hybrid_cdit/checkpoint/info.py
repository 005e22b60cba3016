"""A checkpoint's metadata in one object: what ``hybrid-cdit inspect`` prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.hybrid import is_memory_key
from .errors import CheckpointError
from .files import PathArg, open_checkpoint
from .hub import HubOptions
from .infer import infer_cdit_config
from .materialize import release_pages
from .values import nonfinite_count


@dataclass(frozen=True)
class CheckpointInfo:
    """Summary of a checkpoint file.

    Attributes:
        path: the file read.
        format: ``"torch"`` or ``"safetensors"``.
        file_size: bytes on disk.
        state_dicts: number of parameters (tensor elements) of each state dict held.
        default_source: the state dict that ``source="auto"`` reads (EMA when present).
        epoch: training epoch, if stored.
        train_steps: training step, if stored.
        args: training arguments, if stored (NWM's ``argparse.Namespace`` as a dict).
        other_keys: other top-level entries (``opt``...).
        config: CDiT configuration inferred from ``default_source`` (see
            :func:`infer_cdit_config`), or None when it is not a CDiT state dict.
        config_error: why ``config`` is None.
        memory_tensors: tensors of ``default_source`` under memory-only keys (a HybridCDiT).
        dtypes: number of tensors of ``default_source`` of each dtype (``"torch.float32"``...).
        nonfinite: tensors of ``default_source`` holding NaN or inf, with how many such values
            each; None when values were not scanned.
    """

    path: str
    format: str
    file_size: int
    state_dicts: dict[str, int]
    default_source: str
    epoch: int | None
    train_steps: int | None
    args: dict[str, Any] | None
    other_keys: tuple[str, ...]
    config: dict[str, Any] | None
    config_error: str | None
    memory_tensors: int
    dtypes: dict[str, int] = field(default_factory=dict)
    nonfinite: dict[str, int] | None = None

    @property
    def num_parameters(self) -> int:
        """Parameters of :attr:`default_source`."""
        return self.state_dicts[self.default_source]


def read_checkpoint_info(
    path: PathArg,
    *,
    trust_checkpoint: bool = False,
    scan_values: bool = True,
    hub: HubOptions | None = None,
) -> CheckpointInfo:
    """Read a checkpoint's metadata: state dicts held, training step, arguments, architecture,
    dtypes, and (``scan_values``) the tensors holding NaN or inf.

    Args:
        path: a checkpoint file, a pretrained directory or an ``hf-hub:`` name (see
            :func:`read_checkpoint`).
        trust_checkpoint: see :func:`read_checkpoint`.
        scan_values: read the values of :attr:`CheckpointInfo.default_source`, tensor by
            tensor, to count non-finite ones (the only part that reads tensor data); False
            reads metadata only.
        hub: download options for ``hf-hub:`` names.

    Raises:
        CheckpointError: when the file cannot be read (see :func:`read_checkpoint`).
    """
    contents = open_checkpoint(path, trust_checkpoint=trust_checkpoint, hub=hub)
    name, state_dict = contents.select("auto")
    config: dict[str, Any] | None
    try:
        config, error = infer_cdit_config(state_dict), None
    except CheckpointError as exc:
        config, error = None, str(exc)
    return CheckpointInfo(
        path=contents.path,
        format=contents.format,
        file_size=Path(contents.path).stat().st_size,
        state_dicts={
            key: sum(t.numel() for t in sd.values()) for key, sd in contents.state_dicts.items()
        },
        default_source=name,
        epoch=contents.epoch,
        train_steps=contents.train_steps,
        args=contents.args,
        other_keys=contents.other_keys,
        config=config,
        config_error=error,
        memory_tensors=sum(1 for key in state_dict if is_memory_key(key)),
        dtypes=dict(Counter(str(t.dtype) for t in state_dict.values())),
        nonfinite=_scan(state_dict, contents.memory_mapped) if scan_values else None,
    )


def _scan(state_dict: dict[str, Any], mapped: bool) -> dict[str, int]:
    """Non-finite counts by tensor; a mapped tensor's pages are released once scanned."""
    counts: dict[str, int] = {}
    for key, tensor in state_dict.items():
        count = nonfinite_count(tensor)
        if count:
            counts[key] = count
        if mapped:
            release_pages(tensor)
    return counts
