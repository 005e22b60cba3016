"""Errors raised when a checkpoint cannot be read or does not fit a model."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file or state dict that cannot be read, or does not fit the model.

    Messages name the file (where there is one), what was expected and what was found.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (also a ``FileNotFoundError``), or a model hub file
    is neither on the hub nor in the local hub cache."""


class CheckpointAccessError(CheckpointError, PermissionError):
    """A model hub file that this machine is not allowed to download (a gated or private
    repository without accepted licence or credentials); the message says how to get access."""
