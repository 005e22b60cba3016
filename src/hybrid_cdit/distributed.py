"""Training at scale on ``torch.distributed``: FSDP2 sharding and checkpoints of sharded models.

- :func:`fully_shard_model`: ``torch.distributed.fsdp.fully_shard`` on every transformer block,
  then on the root (the pattern of PyTorch's own large-model recipes).
- :func:`get_full_state_dict` / :func:`save_pretrained_distributed`: gather the full state dict
  on rank 0 and write a :func:`~hybrid_cdit.save_pretrained` directory from it.
- :func:`save_sharded_checkpoint` / :func:`load_sharded_checkpoint`: sharded model and optimizer
  state with ``torch.distributed.checkpoint`` (each rank writes and reads its own shards).

This module sits on top of ``models/`` and ``checkpoint/``; neither imports it. Nothing here
shards or communicates by hand: FSDP2, DCP and ``torch.distributed.checkpoint.state_dict`` do.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from .checkpoint import save_pretrained
from .checkpoint.loading import model_config, unwrap_model

ModelT = TypeVar("ModelT", bound=nn.Module)

__all__ = [
    "fully_shard_model",
    "get_full_state_dict",
    "load_sharded_checkpoint",
    "save_pretrained_distributed",
    "save_sharded_checkpoint",
]


def _transformer_blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(
            "model must have a non-empty nn.ModuleList `blocks` (a CDiT or HybridCDiT), "
            f"got {type(model).__name__}"
        )
    return list(blocks)


def fully_shard_model(
    model: ModelT,
    *,
    mesh: DeviceMesh | None = None,
    reshard_after_forward: bool = True,
    mp_policy: MixedPrecisionPolicy | None = None,
) -> ModelT:
    """Shard a ``CDiT`` / ``HybridCDiT`` with FSDP2: each block, then the root.

    Every block becomes one all-gather / reduce-scatter unit (its memory branch included); the
    root unit holds the embeddings, the memory token embeddings and the final layer. Memory that
    is present on some ranks and absent on others needs nothing special: every memory block
    keeps its memory parameters in the graph (with zero gradient) when it gets no memory, so all
    ranks gather and reduce the same parameters.

    Call it after :meth:`~hybrid_cdit.HybridCDiT.freeze_cdit` and
    :meth:`~hybrid_cdit.CDiT.set_grad_checkpointing` if you use them (either order works for
    checkpointing), on a model whose parameters are on this rank's device (or on the meta
    device, then ``model.to_empty(device=...)`` and initialise or load). Build the optimizer
    afterwards, over ``model.parameters()`` (now ``DTensor`` shards).

    Args:
        model: the model, modified in place (its class becomes an ``FSDPModule`` subclass).
        mesh: a 1-D ``DeviceMesh`` to shard over; None shards over the default process group.
        reshard_after_forward: free each block's gathered parameters after its forward and
            gather them again in the backward (less memory, one more all-gather per block).
        mp_policy: FSDP2's ``MixedPrecisionPolicy``, e.g.
            ``MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)``.
            Memory frames follow the compute dtype inside the model. With
            ``cast_forward_inputs`` (FSDP2's default) and a ``param_dtype``, the root casts only
            the frames ``x`` and ``x_cond`` to ``param_dtype``: FSDP2 would cast every floating
            tensor of the forward's arguments, ``current_pose`` and the poses and scores of a
            ``memory`` context included (quantising positions of hundreds of units to whole
            units in bfloat16), and ``t``, ``y`` and ``rel_t`` are embedded in float32 anyway.
            Blocks keep the policy as given.

    Returns:
        ``model``.

    Raises:
        ValueError: when the model has no ``blocks`` list, or ``torch.distributed`` is not
            initialised and no mesh is given.
    """
    blocks = _transformer_blocks(model)
    if mesh is None and not dist.is_initialized():
        raise ValueError(
            "fully_shard_model needs an initialised process group "
            "(torch.distributed.init_process_group) or mesh=, got neither"
        )
    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        options["mp_policy"] = mp_policy
    for block in blocks:
        fully_shard(block, **options)
    frames_dtype = None
    if mp_policy is not None and mp_policy.cast_forward_inputs and mp_policy.param_dtype:
        frames_dtype = mp_policy.param_dtype
        options["mp_policy"] = replace(mp_policy, cast_forward_inputs=False)
    fully_shard(model, **options)
    if frames_dtype is not None:
        model.register_forward_pre_hook(_FrameCast(frames_dtype), with_kwargs=True)
    return model


class _FrameCast:
    """Forward pre-hook of the root: ``x`` and ``x_cond`` (positional or keyword, NWM's order
    ``x, t, y, x_cond, rel_t``) cast to ``dtype``; every other argument left as it is."""

    _POSITIONS = (("x", 0), ("x_cond", 3))

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def _cast(self, value: Any) -> Any:
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.to(self.dtype)
        return value

    def __call__(
        self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        positional = list(args)
        for name, index in self._POSITIONS:
            if index < len(positional):
                positional[index] = self._cast(positional[index])
            elif name in kwargs:
                kwargs = {**kwargs, name: self._cast(kwargs[name])}
        return tuple(positional), kwargs


def get_full_state_dict(model: nn.Module, *, cpu_offload: bool = True) -> dict[str, Tensor]:
    """The full (unsharded) state dict of a sharded model. A collective: call on every rank.

    With ``cpu_offload`` (the default) the tensors are gathered to the CPU of rank 0 only and
    the other ranks get an empty dict, so no rank but one holds the whole model.
    Keys are the model's own (no wrapper prefixes): they load into an unsharded model.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)
    state = get_model_state_dict(unwrap_model(model), options=options)
    return {key: value for key, value in state.items() if isinstance(value, Tensor)}


def save_pretrained_distributed(model: nn.Module, directory: str | Path) -> Path | None:
    """:func:`~hybrid_cdit.save_pretrained` for a sharded model. A collective: call on every rank.

    The full state dict is gathered to rank 0's CPU, loaded into a copy of the model built on
    the meta device (no second initialisation), and written there.

    Returns:
        The directory on rank 0, None on the other ranks.

    Raises:
        ValueError: when the model has no ``get_config()``.
    """
    target = unwrap_model(model)
    config = model_config(target)
    if config is None:
        raise ValueError(
            f"model must have a get_config() method (CDiT, HybridCDiT), got {type(target).__name__}"
        )
    state = get_full_state_dict(target, cpu_offload=True)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    cls = _unsharded_class(type(target))
    with torch.device("meta"):
        copy = cls(**config)
    copy.load_state_dict(state, strict=True, assign=True)
    return save_pretrained(copy, directory)


def _unsharded_class(cls: type[nn.Module]) -> type[nn.Module]:
    """FSDP2 swaps a module's class for a subclass ``FSDP<Name>``; this is the original."""
    from torch.distributed.fsdp import FSDPModule

    if issubclass(cls, FSDPModule):
        for base in cls.__mro__[1:]:
            if not issubclass(base, FSDPModule) and issubclass(base, nn.Module):
                return base
    return cls


def save_sharded_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write model (and optimizer) state with ``torch.distributed.checkpoint``, each rank its own
    shards, in parallel. A collective: call on every rank. Load it back with
    :func:`load_sharded_checkpoint`, on the same or another number of ranks."""
    dcp_save(_dcp_state(model, optimizer), checkpoint_id=os.fspath(directory))


def load_sharded_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Load a :func:`save_sharded_checkpoint` directory into ``model`` (and ``optimizer``) in
    place. A collective: call on every rank, after sharding the model and building the
    optimizer as when it was saved."""
    state = _dcp_state(model, optimizer)
    dcp_load(state, checkpoint_id=os.fspath(directory))
    target = unwrap_model(model)
    if optimizer is None:
        set_model_state_dict(target, state["model"])
    else:
        set_state_dict(
            target,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    target = unwrap_model(model)
    if optimizer is None:
        return {"model": get_model_state_dict(target)}
    model_state, optim_state = get_state_dict(target, optimizer)
    return {"model": model_state, "optimizer": optim_state}
