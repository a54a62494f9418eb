"""Model errors, importable without torch (the CLI reports them before torch is loaded)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class DatasetError(Exception):
    """A dataset folder, file or layout that cannot be used; the message names it."""


class UnreadableImage(Exception):
    """One image or frame could not be decoded (or was refused); readers skip it and count ``cause``."""

    def __init__(self, name: str, reason: str, cause: str = "decode_error") -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
        self.cause = cause


class ArtifactError(ValueError):
    """An exported file a backend asked for (ONNX graph, TensorRT engine) is missing, foreign or
    stale; the message says which and what to run. Backends re-raise it as their BackendError."""
