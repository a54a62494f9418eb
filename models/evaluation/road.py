"""The drivable-road layer in ``roadseg eval``: which models have one, and how eval obtains it.

Road IoU is the Cityscapes benchmark's IoU of its road class (labelId 7), road vs not road:
truth pixels of every ``ignoreInEval`` label (void, parking, rail track, ...) count nowhere
(:func:`models.classes.label_ids_to_road`). The predicted road layer is
:func:`models.drivable.road_mask` of the backend's own category mask and the road margin
(:mod:`models.networks.category_head`), so it is always inside the flat pixels eval scores.

A backend that emits the road layer itself (``provides_road``: the torch backend, and ONNX
Runtime and OpenVINO from the frames graph's ``road`` output, for a model whose card lists it)
is scored on its own ``BatchOutput.road``, what ``roadseg run`` publishes; its cost is part of
the backend's run and of images/s (the CUDA-graph backend too, when its capture took the road
layer). The others (TensorRT; CUDA graphs that fell back to the categories) return
category masks only, so the margin comes from a second pass over the same network:
:class:`RoadReference` runs :class:`~models.networks.category_head.RoadPreference` through the
torch backend, with the same input size and, where torch offers them, the same device and
precision as the backend under test. Its time is reported apart and left out of images/s.
Both read the same margin, upsampled the same way: on the 10 shared val frames (fp32) the two
give the same road confusion, and they agreed on every pixel of the frames checked in bf16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from models.backends.base import InferenceBackend
    from models.store.checkpoint import ModelCard

ROAD_PREFERRED = 1  # RoadPreference's label where road outscores sidewalk


def road_unavailable(card: ModelCard, model: nn.Module) -> str | None:
    """Why the model has no road layer to score (printed by eval), or None when it has one."""
    from models.networks.category_head import CategoryFold

    if not card.has_road:
        return f"model {card.model_id} has no road class (its card lists no 'road' layer)"
    if not (isinstance(model, CategoryFold) and model.has_road):
        return f"model {card.model_id}: its card lists a 'road' layer, but the network has no Cityscapes road class"
    return None


def reference_settings(device: str, precision: str) -> tuple[str, str]:
    """The torch device and precision closest to a backend's: the same where torch runs them,
    else the CPU and fp32 (e.g. an OpenVINO device, or TensorRT int8)."""
    torch_device = device if device in ("cpu", "cuda") else "cpu"
    valid = ("fp32", "bf16") if torch_device == "cpu" else ("fp32", "bf16", "fp16")
    return torch_device, precision if precision in valid else "fp32"


class RoadReference:
    """Where road outscores sidewalk, per pixel of each frame (HxW bool at the frame's size)."""

    def __init__(self, model: nn.Module, card: ModelCard, engine: InferenceBackend,
                 input_size: tuple[int, int] | None) -> None:
        from models.backends.torch_backend import TorchBackend
        from models.networks.category_head import CategoryFold, RoadPreference

        assert isinstance(model, CategoryFold)  # road_unavailable() said so
        self.device, self.precision = reference_settings(str(engine.device), str(engine.precision))
        self._backend = TorchBackend(RoadPreference(model), card, device=self.device, precision=self.precision,
                                     input_size=input_size)

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        self._backend.warmup(batch_sizes)

    def preferred(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [mask == ROAD_PREFERRED for mask in self._backend.infer(images).masks]

    def close(self) -> None:
        self._backend.close()
