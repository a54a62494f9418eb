"""Atomic file writes: a reader (or a crash) never sees a half-written checkpoint, engine,
ONNX graph or cache file under its real name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path``: write it inside the block; on success it replaces
    ``path`` in one rename, on any exception it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomically(path: Path, data: Any) -> None:
    """Write a bytes-like object (bytes, memoryview, TensorRT's IHostMemory) atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        file.write(memoryview(data))
