"""Checkpoints by model hub name: ``"hf-hub:ORG/REPO/FILE"`` and ``"hf-hub:ORG/REPO"``.

Files come through ``huggingface_hub``'s download cache (``hf_hub_download``: token, revision,
``cache_dir``, ``local_files_only``, ``HF_HUB_OFFLINE``), and are then read like local files,
with the library's safe loading. ``huggingface_hub`` is imported only when a hub name is used.
Download failures become one-line errors: :class:`CheckpointAccessError` for gated or private
repositories (with how to get access), :class:`CheckpointNotFoundError` for files that are
neither on the hub nor in the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike, fspath
from pathlib import Path
from typing import Any

from .errors import CheckpointAccessError, CheckpointError, CheckpointNotFoundError

HUB_PREFIX = "hf-hub:"
"""Prefix of a model hub name, as in timm."""

HUB_URL = "https://huggingface.co"

_ACCESS = (
    "accept the licence on the model page ({url}) while logged in, then authenticate here "
    "with `hf auth login` or the HF_TOKEN environment variable"
)


@dataclass(frozen=True)
class HubOptions:
    """How ``hf-hub:`` names are downloaded (``huggingface_hub.hf_hub_download``'s options).

    Attributes:
        revision: branch, tag or commit; None for ``main``.
        token: access token; None uses ``HF_TOKEN`` or the token of ``hf auth login``.
        cache_dir: the hub cache; None uses ``HF_HUB_CACHE`` (``~/.cache/huggingface/hub``).
        local_files_only: read the cache only, never the network (as ``HF_HUB_OFFLINE=1``).

    Raises:
        ValueError: naming an option of the wrong type.
    """

    revision: str | None = None
    token: str | bool | None = None
    cache_dir: str | PathLike[str] | None = None
    local_files_only: bool = False

    def __post_init__(self) -> None:
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision):
            raise ValueError(f"revision must be a non-empty string or None, got {self.revision!r}")
        if self.token is not None and not isinstance(self.token, str | bool):
            raise ValueError(f"token must be a string, a bool or None, got {type(self.token)}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str | PathLike):
            raise ValueError(f"cache_dir must be a path or None, got {self.cache_dir!r}")
        if not isinstance(self.local_files_only, bool):
            raise ValueError(
                f"local_files_only must be True or False, got {self.local_files_only!r}"
            )


def is_hub_name(path: object) -> bool:
    """True for a string starting with ``hf-hub:``."""
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``"hf-hub:ORG/REPO/FILE"`` -> ``("ORG/REPO", "FILE")``; ``"hf-hub:ORG/REPO"`` ->
    ``("ORG/REPO", None)``. ``FILE`` may contain folders.

    Raises:
        ValueError: for a name without ``ORG/REPO``.
    """
    parts = name[len(HUB_PREFIX) :].strip("/").split("/") if is_hub_name(name) else []
    if len(parts) < 2 or not all(parts):
        raise ValueError(
            f"a model hub name must be 'hf-hub:ORG/REPO' or 'hf-hub:ORG/REPO/FILE', got {name!r}"
        )
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:]) or None


def hub_download(repo_id: str, filename: str, options: HubOptions) -> Path:
    """One file of a hub repository through the hub cache; its local path.

    Raises:
        CheckpointAccessError: gated or private repository, or credentials refused.
        CheckpointNotFoundError: no such repository, revision or file, or (offline /
            ``local_files_only``) the file is not in the cache.
        CheckpointError: any other download failure.
    """
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=options.revision,
            token=options.token,
            cache_dir=None if options.cache_dir is None else fspath(options.cache_dir),
            local_files_only=options.local_files_only,
        )
    except Exception as exc:
        raise _download_error(repo_id, filename, options, exc) from exc
    return Path(fspath(path))


def _download_error(
    repo_id: str, filename: str, options: HubOptions, exc: Exception
) -> CheckpointError:
    from huggingface_hub import errors

    name = f"{HUB_PREFIX}{repo_id}/{filename}"
    revision = f" at revision {options.revision!r}" if options.revision else ""
    access = _ACCESS.format(url=f"{HUB_URL}/{repo_id}")
    status = _status(exc)
    if isinstance(exc, errors.GatedRepoError):
        return CheckpointAccessError(f"{name}: {repo_id} is a gated repository: {access}")
    if isinstance(exc, errors.LocalEntryNotFoundError):
        where = f" ({options.cache_dir})" if options.cache_dir is not None else ""
        return CheckpointNotFoundError(
            f"{name}{revision} is not in the local hub cache{where} and downloads are off "
            "(local_files_only / HF_HUB_OFFLINE=1): download it once with "
            f"`hf download {repo_id} {filename}`; for a gated repository first {access}"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return CheckpointNotFoundError(f"{name}: {repo_id} has no revision {options.revision!r}")
    if isinstance(exc, errors.RepositoryNotFoundError) or status in (401, 403):
        return CheckpointAccessError(
            f"{name}: repository {repo_id} not found, or private or gated and this machine is "
            f"not authorised (HTTP {status}): check the name; for a gated or private "
            f"repository {access}"
        )
    if isinstance(exc, errors.EntryNotFoundError):
        return CheckpointNotFoundError(f"{name}: {repo_id}{revision} has no file {filename!r}")
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return CheckpointError(f"{name}: download failed: {type(exc).__name__}: {reason}")


def _status(exc: Exception) -> int | None:
    response: Any = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def resolve_hub_path(
    path: str | PathLike[str],
    options: HubOptions | None = None,
    *,
    directory_files: Sequence[str] = ("model.safetensors",),
    optional_files: Sequence[str] = (),
) -> Path:
    """A local path for ``path``: itself unless it is a hub name.

    ``hf-hub:ORG/REPO/FILE`` gives the cached file; ``hf-hub:ORG/REPO`` gives the cached
    snapshot folder holding ``directory_files`` (all downloaded) and whichever of
    ``optional_files`` the repository has.

    Raises:
        ValueError: a malformed hub name or options.
        CheckpointAccessError, CheckpointNotFoundError, CheckpointError: see
            :func:`hub_download`.
    """
    if not is_hub_name(path):
        return Path(path)
    assert isinstance(path, str)
    options = options or HubOptions()
    repo_id, filename = parse_hub_name(path)
    if filename is not None:
        return hub_download(repo_id, filename, options)
    folders = {hub_download(repo_id, name, options).parent for name in directory_files}
    for name in optional_files:
        try:
            folders.add(hub_download(repo_id, name, options).parent)
        except CheckpointNotFoundError:
            continue
    if len(folders) != 1:
        raise CheckpointError(
            f"{path}: the files {', '.join(directory_files)} came from different snapshots "
            f"({', '.join(sorted(map(str, folders)))}); pass revision= a commit"
        )
    return folders.pop()
