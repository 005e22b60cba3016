"""A checkpoint's metadata in one object: what ``hybrid-cdit inspect`` prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.hybrid import is_memory_key
from .errors import CheckpointError
from .files import PathArg, open_checkpoint
from .infer import infer_cdit_config


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

    @property
    def num_parameters(self) -> int:
        """Parameters of :attr:`default_source`."""
        return self.state_dicts[self.default_source]


def read_checkpoint_info(path: PathArg, *, trust_checkpoint: bool = False) -> CheckpointInfo:
    """Read a checkpoint's metadata: state dicts held, training step, arguments, architecture.

    Raises:
        CheckpointError: when the file cannot be read (see :func:`read_checkpoint`).
    """
    contents = open_checkpoint(path, trust_checkpoint=trust_checkpoint)
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
    )
