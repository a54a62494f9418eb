"""``STREAM=PATH`` options (``--void-mask``, ``--camera``): one parser, so every per-stream file
option reports a malformed or repeated item the same way."""

from __future__ import annotations

from collections.abc import Sequence


def per_stream_paths(specs: Sequence[str], option: str, example: str,
                     error: type[ValueError] = ValueError) -> dict[str, str]:
    """``STREAM=PATH`` items -> {stream: path}; ``error`` naming the item for a malformed one or a
    stream given twice (``example`` shows the expected form, e.g. ``front=bonnet.png``)."""
    paths: dict[str, str] = {}
    for spec in specs:
        stream_id, sep, path = spec.partition("=")
        if not sep or not stream_id or not path:
            raise error(f"{option} {spec!r}: expected STREAM=PATH, e.g. {example}")
        if stream_id in paths:
            raise error(f"{option} {spec!r}: stream {stream_id!r} is given twice")
        paths[stream_id] = path
    return paths
