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
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from ..models.cdit import CDiT
from ..models.hybrid import HybridCDiT, is_memory_key
from ..registry import VARIANTS
from .errors import CheckpointError
from .files import PathArg, check_source, clean_keys, open_checkpoint
from .hub import HubOptions
from .infer import (
    config_differences,
    describe_config,
    infer_cdit_config,
    infer_memory_config,
    variant_of,
)
from .materialize import (
    assign_state_dict,
    build_for_loading,
    check_device,
    check_dtype,
    materialize,
    release_pages,
)
from .values import check_dtypes, check_finite_tensor

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


class ResolvedStateDict(NamedTuple):
    """A state dict chosen from a checkpoint, with where it came from."""

    state_dict: dict[str, Tensor]
    source: str
    path: str | None
    mapped: bool
    """The tensors are memory-mapped views of the file, made for this load."""


def resolve_checkpoint(
    checkpoint: CheckpointArg,
    *,
    source: str = "ema",
    trust_checkpoint: bool = False,
    hub: HubOptions | None = None,
) -> ResolvedStateDict:
    """The state dict ``source`` selects from a path or ``hf-hub:`` name (memory-mapped where
    the format allows; nothing else in the file is read), or an in-memory state dict with
    cleaned keys."""
    check_source(source)
    if isinstance(checkpoint, Mapping):
        return ResolvedStateDict(clean_keys(checkpoint), "state_dict", None, False)
    contents = open_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint, hub=hub)
    used, state_dict = contents.select(source)
    return ResolvedStateDict(state_dict, used, contents.path, contents.memory_mapped)


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
        CheckpointError: naming keys, both shapes, and both configurations; or naming a
            tensor that is not floating point where the model's is, and its dtype.
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
    origin = f"checkpoint {path} ({source})" if path else f"state dict ({source})"
    if problems:
        raise _fit_error(state_dict, model, origin, problems)
    check_dtypes(origin, state_dict, expected)
    return missing, unexpected


def has_meta_parameters(model: nn.Module) -> bool:
    """True for a model built for loading (parameters on the ``meta`` device)."""
    return any(p.device.type == "meta" for p in unwrap_model(model).parameters())


def load_state_dict_checked(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str,
    path: str | None = None,
    strict: bool = True,
    mmap: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    mapped: bool = False,
    allow_nonfinite: bool = False,
) -> LoadReport:
    """:func:`check_fit`, then load: nothing is modified unless every check passes.

    Unless ``allow_nonfinite``, every floating-point tensor is checked for NaN and inf before
    the model is touched (each as it is copied, or read in place), naming the first offender.

    A model with parameters on the ``meta`` device (built by
    :func:`~hybrid_cdit.checkpoint.materialize.build_for_loading`) gets the tensors assigned:
    the memory-mapped ones themselves with ``mmap`` (unless ``dtype``/``device`` convert
    them), else one copy each; its missing memory parameters are then allocated and put in
    their function-preserving state, derived from the loaded CDiT weights. A model with real
    parameters has the tensors copied into them (``mmap``, ``dtype`` and ``device`` do not
    apply: the model's own dtype and device are kept).
    """
    _, unexpected = check_fit(model, state_dict, source=source, path=path, strict=strict)
    target = unwrap_model(model)
    ignored = set(unexpected)
    usable = {k: v for k, v in state_dict.items() if k not in ignored}
    origin = f"checkpoint {path} ({source})" if path else f"state dict ({source})"
    if not has_meta_parameters(target):
        if not allow_nonfinite:
            for key, tensor in usable.items():
                check_finite_tensor(origin, key, tensor)
                if mapped:
                    release_pages(tensor)
        result = target.load_state_dict(usable, strict=False)
        return LoadReport(
            source=source,
            loaded=tuple(usable),
            initialized=tuple(result.missing_keys),
            ignored=tuple(unexpected),
            path=path,
        )
    absent = [k for k, p in target.named_parameters() if k not in usable and not is_memory_key(k)]
    if absent:
        raise CheckpointError(
            f"{type(target).__name__} on the meta device needs every CDiT parameter from the "
            f"checkpoint ({source}), missing: {_listing(absent)}; build the model on a real "
            "device to keep its own values"
        )
    tensors = materialize(
        usable,
        mmap=mmap,
        dtype=dtype,
        device=device,
        mapped=mapped,
        allow_nonfinite=allow_nonfinite,
        origin=origin,
    )
    # the hybrid's load hook derives the memory branch from the assigned CDiT weights
    fresh = assign_state_dict(target, tensors, dtype=dtype, device=device)
    return LoadReport(
        source=source,
        loaded=tuple(usable),
        initialized=tuple(fresh),
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
    mmap: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    allow_nonfinite: bool = False,
    hub: HubOptions | None = None,
) -> LoadReport:
    """Load CDiT weights (a checkpoint path or a state dict) into a ``CDiT`` or ``HybridCDiT``.

    Every CDiT tensor must load. For a ``HybridCDiT`` only the memory parameters may be missing:
    the model puts them in their function-preserving state, so it returns the CDiT's outputs.
    Only the selected state dict is read from the file.

    Args:
        model: the model to fill (``DistributedDataParallel`` / compiled wrappers are unwrapped).
            A model built with its parameters on the ``meta`` device (e.g. under
            ``torch.device("meta")``) gets the loaded tensors assigned, with no throw-away
            initialisation; a model with real parameters gets them copied in.
        checkpoint: a file path (see :func:`read_checkpoint`) or an in-memory state dict; key
            prefixes ``module.`` and ``_orig_mod.`` are removed.
        source: ``"ema"``, ``"model"``, ``"auto"`` or a top-level key, for files holding
            several state dicts (see :func:`read_checkpoint`).
        strict: require every non-memory model key and no unexpected checkpoint key. With
            False, missing keys keep their values and unexpected keys are ignored (both
            reported). Shape mismatches raise either way.
        trust_checkpoint: see :func:`read_checkpoint`.
        mmap, dtype, device: for a ``meta`` model, see :meth:`CDiT.from_cdit_checkpoint`;
            ignored for a model with real parameters.
        allow_nonfinite: load tensors holding NaN or inf; False (default) refuses them,
            naming the tensor, before the model is touched.
        hub: download options for ``hf-hub:`` names (see :func:`read_checkpoint`).

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointError: when the checkpoint cannot be read or does not fit; the model is then
            left unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    options = (check_dtype(dtype), check_device(device))
    resolved = resolve_checkpoint(
        checkpoint, source=source, trust_checkpoint=trust_checkpoint, hub=hub
    )
    return load_state_dict_checked(
        model,
        resolved.state_dict,
        source=resolved.source,
        path=resolved.path,
        strict=strict,
        mmap=mmap,
        dtype=options[0],
        device=options[1],
        mapped=resolved.mapped,
        allow_nonfinite=allow_nonfinite,
    )


def build_from_cdit_checkpoint(
    cls: type[ModelT],
    checkpoint: CheckpointArg,
    *,
    source: str = "ema",
    trust_checkpoint: bool = False,
    mmap: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    allow_nonfinite: bool = False,
    hub: HubOptions | None = None,
    **overrides: Any,
) -> ModelT:
    """Build ``cls`` with the configuration inferred from a CDiT checkpoint, then load it.

    Backs ``CDiT.from_cdit_checkpoint`` and ``HybridCDiT.from_cdit_checkpoint``. A hybrid built
    from a hybrid's state dict takes its memory layers, memory width and memory patch size from
    the tensors (:func:`~hybrid_cdit.checkpoint.infer.infer_memory_config`). ``overrides``
    win over the inferred configuration (memory options of a hybrid, or ``num_heads`` where the
    checkpoint matches no NWM variant); overriding an architecture entry the weights contradict
    raises :class:`CheckpointError`.

    The model is built with its parameters on the ``meta`` device (no throw-away random
    initialisation) and the checkpoint's tensors are assigned to it: only the selected state
    dict is read, and each tensor is copied once (``mmap=False``) or not at all (``mmap=True``).
    A hybrid's memory parameters are then allocated and derived from the loaded CDiT weights.

    Args:
        mmap: keep the model's tensors memory-mapped to the file (zip and safetensors files;
            no copy, the fastest and smallest load: pages are read from disk on first use and
            can be dropped by the OS under memory pressure). The file must stay in place and
            unchanged while the model lives; training writes go to private copies of the
            touched pages. With False (default), the tensors are copied into memory once.
            Ignored for tensors that ``dtype`` or ``device`` convert (they are new tensors).
        dtype: floating-point dtype of the model's floating tensors (``torch.bfloat16``...),
            converted tensor by tensor, with no float32 copy of the model; None keeps the file's.
        device: device of the model (``"cuda"``...): each tensor is copied from the file
            straight to it, with no CPU copy of the model; None for the CPU.
        allow_nonfinite: load tensors holding NaN or inf; False (default) refuses them,
            naming the tensor (each checked as it is copied or mapped).
        hub: download options for ``hf-hub:`` names (see :func:`read_checkpoint`).

    Raises:
        ValueError: for a ``dtype`` that is not a floating ``torch.dtype``, or an invalid
            ``device``.
        CheckpointError: unreadable or unfitting checkpoint, or ``num_heads`` not inferable and
            not given.
    """
    dtype_, device_ = check_dtype(dtype), check_device(device)
    resolved = resolve_checkpoint(
        checkpoint, source=source, trust_checkpoint=trust_checkpoint, hub=hub
    )
    state_dict, used, path = resolved.state_dict, resolved.source, resolved.path
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
    model = build_for_loading(lambda: cls(**kwargs))
    load_state_dict_checked(
        model,
        state_dict,
        source=used,
        path=path,
        strict=True,
        mmap=mmap,
        dtype=dtype_,
        device=device_,
        mapped=resolved.mapped,
        allow_nonfinite=allow_nonfinite,
    )
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
