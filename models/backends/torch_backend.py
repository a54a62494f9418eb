"""PyTorch eager backend: fp16 on CUDA, bf16 (where the CPU has it) or fp32 on CPU.

Resize, normalisation, upsampling and argmax all run on the model's device;
only a uint8 mask per frame comes back to the host.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.backends.base import BackendClosed, BackendTimings, BatchOutput, check_images
from models.backends.registry import check_options, model_input_hw
from models.networks.category_head import inference_forward
from models.store.checkpoint import ModelCard

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags under which oneDNN runs bf16 natively (else bf16 is emulated and slower).
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU")
    return device


@cache
def cpu_has_native_bf16() -> bool:
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
        return any(flag in flags for flag in _CPU_BF16_FLAGS)
    return False


def resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ValueError("precision fp16 is for CUDA; on CPU use bf16 or fp32")
    return precision


def _ms_since(start_ns: int) -> float:
    return (time.monotonic_ns() - start_ns) / 1e6


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        *,
        device: str = "auto",
        precision: str = "auto",
        input_size: tuple[int, int] | None = None,
        options: dict[str, object] | None = None,
    ) -> None:
        check_options(self.name, options, ())
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model_id = card.model_id
        self.card = card
        self.input_hw = model_input_hw(card, input_size)
        self._torch_device = torch.device(self.device)
        self._model = model.eval().to(self._torch_device).to(memory_format=torch.channels_last)
        self._net_forward = inference_forward(self._model)
        spec = card.input
        std = torch.tensor(spec.std, dtype=torch.float32)
        # (x * scale - mean) / std folded into one multiply-add per pixel.
        self._gain = (spec.scale / std).view(1, 3, 1, 1).to(self._torch_device)
        self._bias = (-torch.tensor(spec.mean) / std).view(1, 3, 1, 1).to(self._torch_device)
        self._bgr = spec.channel_order == "BGR"

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self._torch_device.type, dtype=_DTYPES[self.precision])

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        height, width = self.input_hw
        for batch in batch_sizes:
            self.infer([np.zeros((height, width, 3), np.uint8)] * batch)

    def close(self) -> None:
        """Drop the model and its buffers (GPU memory comes back); closing twice is harmless."""
        self._closed = True
        self._net_forward = None  # type: ignore[assignment]

    def infer(self, images: Sequence[np.ndarray]) -> BatchOutput:
        if getattr(self, "_closed", False):
            raise BackendClosed(f"{self.name} backend is closed")
        check_images(images)
        with torch.inference_mode():
            start = time.monotonic_ns()
            groups = list(_group_by_shape(images))
            batch = torch.cat([self._preprocess([images[i] for i in idx]) for _, idx in groups])
            self._sync()
            preprocess_ms = _ms_since(start)

            start = time.monotonic_ns()
            with self._autocast():
                logits = self._net_forward(batch)
            self._sync()
            inference_ms = _ms_since(start)

            start = time.monotonic_ns()
            masks, valid = self._postprocess(logits, groups, len(images))
            postprocess_ms = _ms_since(start)
        return BatchOutput(masks, valid, BackendTimings(preprocess_ms, inference_ms, postprocess_ms))

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
    ) -> tuple[list[np.ndarray], list[bool]]:
        masks: list[np.ndarray] = [np.empty(0, np.uint8)] * count
        finite = torch.isfinite(logits).flatten(1).all(dim=1).tolist()
        offset = 0
        for shape, indices in groups:
            part = logits[offset : offset + len(indices)]
            offset += len(indices)
            if tuple(part.shape[-2:]) != shape[:2]:
                # Upsample scores, not labels: smoother, more accurate boundaries.
                part = F.interpolate(part.float(), size=shape[:2], mode="bilinear", align_corners=False)
            labels = part.argmax(dim=1).to(torch.uint8).cpu().numpy()
            for j, index in enumerate(indices):
                masks[index] = labels[j]
        return masks, [bool(v) for v in finite]


def pinned_stack(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-shaped uint8 images stacked straight into page-locked memory, ready for a
    non-blocking upload: one host copy, where ``np.stack`` then ``pin_memory()`` makes two
    (at 8 x 2048x1024 that is 50 MB a batch). torch's caching host allocator recycles the
    buffer once the copy that reads it has finished."""
    host = torch.empty((len(images), *images[0].shape), dtype=torch.uint8, pin_memory=True)
    np.stack(images, out=host.numpy())
    return host


def _group_by_shape(images: Sequence[np.ndarray]) -> Iterator[tuple[tuple[int, ...], list[int]]]:
    """Indices of same-sized images, so each group is one stacked host->device copy."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    yield from groups.items()
