"""Checkpoint I/O: NWM / safetensors checkpoints in, CDiT -> HybridCDiT mapping, pretrained dirs.

- :func:`read_checkpoint` / :func:`open_checkpoint` / :func:`read_checkpoint_info`: read NWM
  ``train.py`` checkpoints, bare state dicts and safetensors files, safely.
- :func:`infer_cdit_config`: the CDiT configuration behind a state dict.
- :func:`load_cdit_checkpoint`, :func:`build_from_cdit_checkpoint`: CDiT weights into a ``CDiT``
  or ``HybridCDiT``, validated before the model is touched; :func:`build_for_loading` builds a
  model with its parameters on the ``meta`` device, for loading without a throw-away
  initialisation.
- :func:`save_pretrained` / :func:`from_pretrained`: ``config.json`` + ``model.safetensors``.
- ``"hf-hub:ORG/REPO/FILE"`` / ``"hf-hub:ORG/REPO"`` wherever a path is read, through
  ``huggingface_hub``'s cache (:class:`HubOptions`).
- :func:`to_cdit_state_dict`, :func:`save_nwm_checkpoint`: back to NWM's plain CDiT.
"""

from .errors import CheckpointAccessError, CheckpointError, CheckpointNotFoundError
from .files import (
    EMA_KEYS,
    MODEL_KEYS,
    SOURCES,
    CheckpointContents,
    open_checkpoint,
    read_checkpoint,
)
from .hub import HUB_PREFIX, HubOptions, parse_hub_name
from .infer import describe_config, infer_cdit_config, infer_memory_config
from .info import CheckpointInfo, read_checkpoint_info
from .loading import (
    LoadReport,
    build_from_cdit_checkpoint,
    check_fit,
    load_cdit_checkpoint,
    save_nwm_checkpoint,
    to_cdit_state_dict,
    unwrap_model,
)
from .materialize import build_for_loading
from .pretrained import CONFIG_NAME, MODEL_CLASSES, from_pretrained, save_pretrained

__all__ = [
    "CONFIG_NAME",
    "EMA_KEYS",
    "HUB_PREFIX",
    "MODEL_CLASSES",
    "MODEL_KEYS",
    "SOURCES",
    "CheckpointAccessError",
    "CheckpointContents",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "HubOptions",
    "LoadReport",
    "build_for_loading",
    "build_from_cdit_checkpoint",
    "check_fit",
    "describe_config",
    "from_pretrained",
    "infer_cdit_config",
    "infer_memory_config",
    "load_cdit_checkpoint",
    "open_checkpoint",
    "parse_hub_name",
    "read_checkpoint",
    "read_checkpoint_info",
    "save_nwm_checkpoint",
    "save_pretrained",
    "to_cdit_state_dict",
    "unwrap_model",
]
