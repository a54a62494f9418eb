"""Model errors, importable without torch (the CLI reports them before torch is loaded)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""
