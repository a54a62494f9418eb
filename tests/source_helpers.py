"""Helpers for the tests of frame sources (kept free of the pipeline's and the backends' imports)."""

from __future__ import annotations

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
