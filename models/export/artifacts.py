"""The one door from the backends into export tooling: :func:`backend_artifact`.

Backends run files that ``roadseg export`` writes (an ONNX "frames" graph for ONNX Runtime and
OpenVINO, a TensorRT engine) but never import the exporters themselves: they ask this
function for the file, so how exports are named, cached, checked and (for ONNX) made is
export's business alone, and a change there cannot reach into a backend module. The frames
graph's input and output names, which a backend feeds and reads, come from here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import ArtifactError
from models.export.fingerprint import model_fingerprint
from models.export.onnx_graph import FINITE, IMAGES, MASKS, ROAD

__all__ = ["FINITE", "IMAGES", "MASKS", "ROAD", "ArtifactKind", "backend_artifact"]

if TYPE_CHECKING:
    from torch import nn

    from models.store.checkpoint import ModelCard


class ArtifactKind(StrEnum):
    ONNX_FRAMES = "onnx-frames"  # exported into the cache when missing or stale (a few seconds)
    TENSORRT_ENGINE = "tensorrt-engine"  # built beforehand with `roadseg export`, never on the fly


def backend_artifact(
    kind: ArtifactKind,
    model: nn.Module,
    card: ModelCard,
    input_hw: tuple[int, int],
    *,
    precision: str,
    options: Mapping[str, object],
    refresh: bool = False,
) -> Path:
    """The file a backend runs for ``model`` (weights + ``card``) at ``input_hw`` (height, width).

    ``ONNX_FRAMES``: ``options["onnx_path"]`` when given, checked to be a frames graph of these
    weights, card, size and ``precision``; else the cached export under ``options["cache_dir"]``
    (default: the zoo cache), exported there first when missing, stale, or ``refresh``.

    ``TENSORRT_ENGINE``: ``options["engine_path"]`` when given; else the cached engine for these
    weights, this GPU, TensorRT version and ``precision`` (``options["max_batch"]`` picks one
    batch size, default the largest); ``options["model_name"]`` spells the "build it with" hint.

    Raises :class:`ArtifactError` (what is wrong and how to make the right file)."""
    height, width = input_hw
    size = (width, height)
    if kind is ArtifactKind.ONNX_FRAMES:
        from models.export.onnx_export import frames_graph

        return frames_graph(model, card, size, precision=precision, options=options, refresh=refresh)
    if kind is ArtifactKind.TENSORRT_ENGINE:
        from models.export.tensorrt_cache import engine_for

        return engine_for(model_fingerprint(model, card, size), card, size, precision=precision, options=options)
    raise ArtifactError(f"unknown artifact kind {kind!r}; valid: {', '.join(ArtifactKind)}")
