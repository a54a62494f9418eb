"""PyTorch eager backend: fp16 on CUDA, bf16 (where the CPU has it) or fp32 on CPU.

Resize, normalisation, upsampling and argmax all run on the model's device;
only a uint8 mask per frame comes back to the host.

A model whose card lists the drivable-road layer (``card.has_road``: a 19-class Cityscapes
:class:`~models.networks.category_head.CategoryFold`) runs
:meth:`~models.networks.category_head.CategoryFold.forward_native_layers` instead: the 8
category logits plus one road-margin channel, upsampled together, once, to each frame's size;
:func:`~models.networks.category_head.split_layers` then gives the same argmax over the 8
categories as the category-only forward (bit-identical masks) and the road layer (flat AND
margin > 0), which comes back as an HxW bool mask per frame in ``BatchOutput.road``
(``provides_road`` True).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.backends.base import BackendTimings, BatchOutput, check_images
from models.backends.common import (
    BackendBase,
    BackendError,
    Device,
    Precision,
    cpu_has_native_bf16,
    group_by_shape,
    ms_since,
    parse_device,
    parse_precision,
)
from models.classes import NUM_CLASSES
from models.networks.category_head import inference_forward, road_layer_forward, split_layers

DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}
TORCH_PRECISIONS = (Precision.AUTO, Precision.FP32, Precision.BF16, Precision.FP16)


def resolve_device(device: Device | str) -> Device:
    """``auto`` -> CUDA when torch sees a GPU, else the CPU; BackendError for CUDA without one."""
    wanted = parse_device(device, "torch", tuple(Device))
    if wanted is Device.AUTO:
        return Device.CUDA if torch.cuda.is_available() else Device.CPU
    if wanted is Device.CUDA and not torch.cuda.is_available():
        raise BackendError("device 'cuda' requested but torch sees no CUDA GPU")
    return wanted


def resolve_precision(precision: Precision | str, device: Device | str) -> Precision:
    """``auto`` -> fp16 on CUDA, bf16 on a CPU with native bf16, else fp32."""
    wanted = parse_precision(precision, "torch", TORCH_PRECISIONS)
    if wanted is Precision.AUTO:
        if device == Device.CUDA:
            return Precision.FP16
        return Precision.BF16 if cpu_has_native_bf16() else Precision.FP32
    if wanted is Precision.FP16 and device == Device.CPU:
        raise BackendError("precision fp16 is for CUDA; on CPU use bf16 or fp32")
    return wanted


class TorchBackend(BackendBase):
    name = "torch"
    PRECISIONS = TORCH_PRECISIONS
    # Whether this class runs the road layer's forward for a model that has one (card.has_road).
    ROAD_LAYER: ClassVar[bool] = True

    def _load(self, model: nn.Module, device: Device, precision: Precision, options: dict[str, object]) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self._torch_device = torch.device(self.device)
        self._model = model.eval().to(self._torch_device).to(memory_format=torch.channels_last)
        layers = road_layer_forward(self._model) if self.ROAD_LAYER and self.card.has_road else None
        # None for a card without the road layer, or a network without a Cityscapes road class
        # (e.g. RoadPreference under a road card): the category-only forward, as before.
        self.provides_road = layers is not None
        self._net_forward = layers if layers is not None else inference_forward(self._model)
        spec = self.card.input
        std = torch.tensor(spec.std, dtype=torch.float32)
        # (x * scale - mean) / std folded into one multiply-add per pixel.
        self._gain = (spec.scale / std).view(1, 3, 1, 1).to(self._torch_device)
        self._bias = (-torch.tensor(spec.mean) / std).view(1, 3, 1, 1).to(self._torch_device)
        self._bgr = spec.channel_order == "BGR"

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self._torch_device.type, dtype=DTYPES[self.precision])

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _release(self) -> None:
        """Drop the model and its buffers (GPU memory comes back)."""
        self._net_forward = None  # type: ignore[assignment]
        self._model = None  # type: ignore[assignment]

    def infer(self, images: Sequence[np.ndarray]) -> BatchOutput:
        self._check_open()
        check_images(images)
        with torch.inference_mode():
            start = time.monotonic_ns()
            groups = list(group_by_shape(images))
            batch = torch.cat([self._preprocess([images[i] for i in idx]) for _, idx in groups])
            self._sync()
            preprocess_ms = ms_since(start)

            start = time.monotonic_ns()
            with self._autocast():
                logits = self._net_forward(batch)
            self._sync()
            inference_ms = ms_since(start)

            start = time.monotonic_ns()
            masks, valid, road = self._postprocess(logits, groups, len(images))
            postprocess_ms = ms_since(start)
        return BatchOutput(masks, valid, BackendTimings(preprocess_ms, inference_ms, postprocess_ms), road)

    def _preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        host = pinned_stack(images) if self.device == "cuda" else torch.from_numpy(np.stack(images))
        x = host.to(self._torch_device, non_blocking=True).permute(0, 3, 1, 2).float()
        if self._bgr:
            x = x.flip(1)
        if tuple(x.shape[-2:]) != self.input_hw:
            x = F.interpolate(x, size=self.input_hw, mode="bilinear", align_corners=False, antialias=True)
        x = x * self._gain + self._bias
        return x.contiguous(memory_format=torch.channels_last)

    def _postprocess(
        self, logits: torch.Tensor, groups: list[tuple[tuple[int, ...], list[int]]], count: int
    ) -> tuple[list[np.ndarray], list[bool], list[np.ndarray | None] | None]:
        """Masks, finite flags and (when ``provides_road``) road layers, in input order, from the
        network's output: the category logits, or with the road layer the category logits and the
        road margin (:data:`~models.networks.category_head.LAYER_CHANNELS` channels)."""
        masks: list[np.ndarray] = [np.empty(0, np.uint8)] * count
        road: list[np.ndarray | None] | None = [None] * count if self.provides_road else None
        # The finite flag judges the categories only, as without the road layer.
        categories = logits[:, :NUM_CLASSES] if self.provides_road else logits
        finite = torch.isfinite(categories).flatten(1).all(dim=1).tolist()
        offset = 0
        for shape, indices in groups:
            part = logits[offset : offset + len(indices)]
            offset += len(indices)
            if tuple(part.shape[-2:]) != shape[:2]:
                # Upsample scores, not labels: smoother, more accurate boundaries. With the road layer
                # the margin is one more channel of the same upsampling.
                part = F.interpolate(part.float(), size=shape[:2], mode="bilinear", align_corners=False)
            if road is None:
                labels = part.argmax(dim=1).to(torch.uint8).cpu().numpy()
            else:
                category_ids, drivable = split_layers(part)
                labels = category_ids.to(torch.uint8).cpu().numpy()
                roads = drivable.cpu().numpy()
                for j, index in enumerate(indices):
                    road[index] = roads[j]
            for j, index in enumerate(indices):
                masks[index] = labels[j]
        return masks, [bool(v) for v in finite], road


def pinned_stack(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-shaped uint8 images stacked straight into page-locked memory, ready for a
    non-blocking upload: one host copy, where ``np.stack`` then ``pin_memory()`` makes two
    (at 8 x 2048x1024 that is 50 MB a batch). torch's caching host allocator recycles the
    buffer once the copy that reads it has finished."""
    host = torch.empty((len(images), *images[0].shape), dtype=torch.uint8, pin_memory=True)
    np.stack(images, out=host.numpy())
    return host
