"""Errors raised when a checkpoint cannot be read or does not fit a model."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file or state dict that cannot be read, or does not fit the model.

    Messages name the file (where there is one), what was expected and what was found.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (also a ``FileNotFoundError``)."""
