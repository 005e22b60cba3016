"""Loading CDiT weights into ``CDiT`` / ``HybridCDiT`` models, and exporting them back.

Every check runs before the model is touched: a checkpoint that does not fit leaves the model as
it was and raises :class:`CheckpointError` naming the key, both shapes and what the checkpoint
looks like (variant, context size, input size).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..models.cdit import CDiT
from ..models.hybrid import HybridCDiT, is_memory_key
from ..registry import VARIANTS
from .errors import CheckpointError
from .files import PathArg, check_source, clean_keys, open_checkpoint
from .infer import (
    config_differences,
    describe_config,
    infer_cdit_config,
    infer_memory_config,
    variant_of,
)

ModelT = TypeVar("ModelT", bound=nn.Module)

CheckpointArg = PathArg | Mapping[str, Tensor]
"""A checkpoint path, or a state dict already in memory."""

_SHOWN = 5
_CDIT_ARGS = tuple(name for name in inspect.signature(CDiT.__init__).parameters if name != "self")


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_cdit_checkpoint` did.

    Attributes:
        source: the state dict used: ``"ema"``, ``"model"`` (or another top-level key of the
            file), ``"weights"`` for a bare state dict file, ``"state_dict"`` for an in-memory one.
        loaded: model keys set from the checkpoint.
        initialized: model keys left at their initialisation (the memory parameters of a
            HybridCDiT, put in their function-preserving state; with ``strict=False`` also
            missing CDiT keys).
        ignored: checkpoint keys the model has no use for (only with ``strict=False``).
        path: the file read, or None for an in-memory state dict.
    """

    source: str
    loaded: tuple[str, ...]
    initialized: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    path: str | None = None

    def __str__(self) -> str:
        origin = f"{self.source!r} of {self.path}" if self.path else repr(self.source)
        text = f"loaded {len(self.loaded)} tensors from {origin}"
        if self.initialized:
            text += f"; {len(self.initialized)} left at initialisation"
        if self.ignored:
            text += f"; {len(self.ignored)} checkpoint tensors ignored"
        return text


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile``."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
            continue
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        return model


def model_config(model: nn.Module) -> dict[str, Any] | None:
    """``model.get_config()`` when the model has one, else None."""
    get_config = getattr(unwrap_model(model), "get_config", None)
    if not callable(get_config):
        return None
    config = get_config()
    return dict(config) if isinstance(config, Mapping) else None


def resolve_state_dict(
    checkpoint: CheckpointArg, *, source: str = "ema", trust_checkpoint: bool = False
) -> tuple[dict[str, Tensor], str, str | None]:
    """``(state_dict, source used, path or None)`` for a path or an in-memory state dict."""
    check_source(source)
    if isinstance(checkpoint, Mapping):
        return clean_keys(checkpoint), "state_dict", None
    contents = open_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
    used, state_dict = contents.select(source)
    return state_dict, used, contents.path


def _variant_sizes() -> str:
    return ", ".join(
        f"{name}: hidden_size {spec['hidden_size']}, depth {spec['depth']}"
        for name, spec in VARIANTS.items()
    )


def _listing(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _describe_model(model: nn.Module) -> tuple[dict[str, Any] | None, str]:
    config = model_config(model)
    name = type(unwrap_model(model)).__name__
    if config is None:
        return None, f"a {name}"
    variant = variant_of(config)
    shown = {**config, "variant": variant} if variant else config
    return config, describe_config(shown, family=name)


def _fit_error(
    state_dict: Mapping[str, Tensor], model: nn.Module, origin: str, problems: list[str]
) -> CheckpointError:
    try:
        ckpt_config: dict[str, Any] | None = infer_cdit_config(state_dict)
        ckpt_text = describe_config(ckpt_config or {})
    except CheckpointError as exc:
        ckpt_config, ckpt_text = None, f"not a CDiT ({exc})"
    config, model_text = _describe_model(model)
    differences = config_differences(ckpt_config or {}, config or {})
    headline = ": " + "; ".join(differences) if differences else ""
    return CheckpointError(
        f"{origin} does not fit the {type(unwrap_model(model)).__name__}{headline}. "
        f"The checkpoint looks like {ckpt_text}; the model is {model_text}. " + "; ".join(problems)
    )


def check_fit(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str = "state_dict",
    path: str | None = None,
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Check that ``state_dict`` loads into ``model`` without touching it (a model on the
    ``meta`` device works: only names and shapes are compared).

    Memory-only model keys (see :func:`hybrid_cdit.models.is_memory_key`) may always be missing;
    the model re-initialises them. ``strict`` also requires every other model key and allows no
    unexpected checkpoint key; shape mismatches always raise.

    Returns:
        ``(missing model keys, unexpected checkpoint keys)`` that are allowed.

    Raises:
        CheckpointError: naming keys, both shapes, and both configurations.
    """
    expected = unwrap_model(model).state_dict()
    missing = [k for k in expected if k not in state_dict]
    missing_required = [k for k in missing if not is_memory_key(k)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint shape {tuple(state_dict[k].shape)}, model shape {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = list(mismatched[:_SHOWN])
    if len(mismatched) > _SHOWN:
        problems.append(f"{len(mismatched) - _SHOWN} more shape mismatches")
    if strict and missing_required:
        problems.append(f"missing from the checkpoint: {_listing(missing_required)}")
    if strict and unexpected:
        hint = (
            " (memory parameters of a HybridCDiT: load into a HybridCDiT, or export with "
            "to_cdit_state_dict)"
            if any(is_memory_key(k) for k in unexpected)
            else ""
        )
        problems.append(f"unexpected in the checkpoint: {_listing(unexpected)}{hint}")
    if problems:
        origin = f"checkpoint {path} ({source})" if path else f"state dict ({source})"
        raise _fit_error(state_dict, model, origin, problems)
    return missing, unexpected


def load_state_dict_checked(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str,
    path: str | None = None,
    strict: bool = True,
) -> LoadReport:
    """:func:`check_fit`, then load: nothing is modified unless every check passes."""
    _, unexpected = check_fit(model, state_dict, source=source, path=path, strict=strict)
    target = unwrap_model(model)
    ignored = set(unexpected)
    usable = {k: v for k, v in state_dict.items() if k not in ignored}
    result = target.load_state_dict(usable, strict=False)
    return LoadReport(
        source=source,
        loaded=tuple(usable),
        initialized=tuple(result.missing_keys),
        ignored=tuple(unexpected),
        path=path,
    )


def load_cdit_checkpoint(
    model: nn.Module,
    checkpoint: CheckpointArg,
    *,
    source: str = "ema",
    strict: bool = True,
    trust_checkpoint: bool = False,
) -> LoadReport:
    """Load CDiT weights (a checkpoint path or a state dict) into a ``CDiT`` or ``HybridCDiT``.

    Every CDiT tensor must load. For a ``HybridCDiT`` only the memory parameters may be missing:
    the model puts them in their function-preserving state, so it returns the CDiT's outputs.

    Args:
        model: the model to fill (``DistributedDataParallel`` / compiled wrappers are unwrapped).
        checkpoint: a file path (see :func:`read_checkpoint`) or an in-memory state dict; key
            prefixes ``module.`` and ``_orig_mod.`` are removed.
        source: ``"ema"``, ``"model"``, ``"auto"`` or a top-level key, for files holding
            several state dicts (see :func:`read_checkpoint`).
        strict: require every non-memory model key and no unexpected checkpoint key. With
            False, missing keys keep their values and unexpected keys are ignored (both
            reported). Shape mismatches raise either way.
        trust_checkpoint: see :func:`read_checkpoint`.

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointError: when the checkpoint cannot be read or does not fit; the model is then
            left unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    state_dict, used, path = resolve_state_dict(
        checkpoint, source=source, trust_checkpoint=trust_checkpoint
    )
    return load_state_dict_checked(model, state_dict, source=used, path=path, strict=strict)


def build_from_cdit_checkpoint(
    cls: type[ModelT],
    checkpoint: CheckpointArg,
    *,
    source: str = "ema",
    trust_checkpoint: bool = False,
    **overrides: Any,
) -> ModelT:
    """Build ``cls`` with the configuration inferred from a CDiT checkpoint, then load it.

    Backs ``CDiT.from_cdit_checkpoint`` and ``HybridCDiT.from_cdit_checkpoint``. A hybrid built
    from a hybrid's state dict takes its memory layers, memory width and memory patch size from
    the tensors (:func:`~hybrid_cdit.checkpoint.infer.infer_memory_config`). ``overrides``
    win over the inferred configuration (memory options of a hybrid, or ``num_heads`` where the
    checkpoint matches no NWM variant); overriding an architecture entry the weights contradict
    raises :class:`CheckpointError`.

    Raises:
        CheckpointError: unreadable or unfitting checkpoint, or ``num_heads`` not inferable and
            not given.
    """
    state_dict, used, path = resolve_state_dict(
        checkpoint, source=source, trust_checkpoint=trust_checkpoint
    )
    config = infer_cdit_config(state_dict)
    config.pop("variant", None)
    if issubclass(cls, HybridCDiT):
        config.update(infer_memory_config(state_dict))
    kwargs = {**config, **overrides}
    if "num_heads" not in kwargs:
        raise CheckpointError(
            f"num_heads cannot be inferred from {path or 'the state dict'}: hidden_size "
            f"{config['hidden_size']} and depth {config['depth']} match no NWM variant "
            f"({_variant_sizes()}); pass num_heads=..."
        )
    with torch.device("meta"):
        check_fit(cls(**kwargs), state_dict, source=used, path=path)
    model = cls(**kwargs)
    load_state_dict_checked(model, state_dict, source=used, path=path, strict=True)
    return model


def cdit_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``config`` that ``CDiT.__init__`` accepts."""
    return {key: config[key] for key in _CDIT_ARGS if key in config}


def to_cdit_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A plain CDiT state dict of ``model`` (a ``HybridCDiT``'s memory keys dropped).

    The result has exactly the keys and shapes of NWM's ``CDiT`` for the same configuration,
    so NWM's ``CDiT.load_state_dict(strict=True)`` accepts it. Tensors share storage with the
    model's parameters; clone them to keep a snapshot while training goes on.

    Raises:
        CheckpointError: when the remaining keys are not those of a CDiT.
    """
    target = unwrap_model(model)
    state_dict = {k: v for k, v in clean_keys(target.state_dict()).items() if not is_memory_key(k)}
    config = model_config(target)
    if config is None:
        return state_dict
    with torch.device("meta"):
        reference = CDiT(**cdit_kwargs(config)).state_dict()
    extra = [k for k in state_dict if k not in reference]
    absent = [k for k in reference if k not in state_dict]
    wrong = [
        f"{k}: {tuple(state_dict[k].shape)} instead of {tuple(v.shape)}"
        for k, v in reference.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if extra or absent or wrong:
        raise CheckpointError(
            f"{type(target).__name__} does not reduce to a CDiT state dict: "
            + "; ".join(
                text
                for text in (
                    f"keys a CDiT lacks: {_listing(extra)}" if extra else "",
                    f"CDiT keys absent: {_listing(absent)}" if absent else "",
                    f"shapes: {_listing(wrong)}" if wrong else "",
                )
                if text
            )
        )
    return state_dict


def save_nwm_checkpoint(
    model: nn.Module,
    path: PathArg,
    *,
    ema: nn.Module | None = None,
    epoch: int = 0,
    train_steps: int = 0,
    args: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a checkpoint in NWM ``train.py``'s layout.

    The file holds ``model`` and ``ema`` (``ema``'s weights, or the model's again), plain CDiT
    state dicts (see :func:`to_cdit_state_dict`), ``args`` as an ``argparse.Namespace``,
    ``epoch`` and ``train_steps``. It has no optimiser state (``opt``).

    Returns:
        The path written.
    """
    weights = {k: v.detach().cpu() for k, v in to_cdit_state_dict(model).items()}
    ema_weights = (
        weights
        if ema is None
        else {k: v.detach().cpu() for k, v in to_cdit_state_dict(ema).items()}
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": weights,
            "ema": ema_weights,
            "args": argparse.Namespace(**dict(args or {})),
            "epoch": epoch,
            "train_steps": train_steps,
        },
        out,
    )
    return out
