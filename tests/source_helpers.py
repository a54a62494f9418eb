"""Helpers for the tests of frame sources (kept free of the pipeline's and the backends' imports)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from stream.frame import Frame
from stream.sources.base import EndOfStream, FrameSource


async def drain(source: FrameSource, limit: int = 1000) -> list[Frame]:
    """The frames an open ``source`` yields until it ends (``limit`` at most); the source is closed after."""
    frames: list[Frame] = []
    try:
        while len(frames) < limit:
            frames.append(await source.recv())
    except EndOfStream:
        pass
    finally:
        await source.close()
    return frames


def image_folder(folder: Path, count: int, broken: tuple[int, ...] = (), size: tuple[int, int] = (128, 64)) -> Path:
    """``count`` random PNG frames ``f00.png``... of ``size`` (width, height) in ``folder``; the
    indices in ``broken`` are files that do not decode (a source skips them: decode_error)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"f{i:02d}.png"
        if i in broken:
            path.write_bytes(b"not a png")
        else:
            cv2.imwrite(str(path), rng.integers(0, 255, (size[1], size[0], 3), np.uint8))
    return folder
