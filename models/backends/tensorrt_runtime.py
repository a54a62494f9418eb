"""TensorRT at run time: importing it, its version, its logger, the GPU, and the uint8 resize.

Shared by the TensorRT backend and the engine builder (:mod:`models.export.tensorrt_build`),
which imports them from here: nothing in this module needs TensorRT or a GPU until called.
"""

from __future__ import annotations

from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SUPPORTED_TRT_MAJOR = 10  # the API this code is written against (INT8 calibrators and flags changed in 11)


class TensorRTError(ValueError):
    """TensorRT missing, no GPU, an unusable ONNX graph or a failed build; the message says what to do."""


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` or a TensorRTError saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTError(
            f"TensorRT is not installed ({exc}): install NVIDIA's wheels matching your CUDA, "
            "e.g. `pip install tensorrt` (TensorRT 10), on a machine with an NVIDIA GPU"
        ) from exc
    return tensorrt


def trt_version(trt: ModuleType) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def check_trt_version(trt: ModuleType) -> str:
    """The TensorRT version, or a TensorRTError unless it is the major version this code is written for."""
    version = trt_version(trt)
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) != SUPPORTED_TRT_MAJOR:
        raise TensorRTError(
            f"TensorRT {version} found; roadseg's TensorRT support is written for TensorRT {SUPPORTED_TRT_MAJOR} "
            "(INT8 calibrators and precision flags changed in 11)"
        )
    return version


def cuda_gpu_name() -> str:
    """The current CUDA device's name, or a TensorRTError when torch sees no GPU."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTError("TensorRT needs a CUDA GPU and torch sees none (check the driver, CUDA_VISIBLE_DEVICES)")
    return str(torch.cuda.get_device_name(torch.cuda.current_device()))


@cache
def trt_logger(trt: ModuleType) -> Any:
    """One TensorRT logger per process (builder and runtime share it)."""
    return trt.Logger(trt.Logger.WARNING)


def resize_nhwc_uint8(batch: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 NHWC images -> uint8 NHWC at ``size_hw``, on the tensor's device.

    Same filter as the torch backend (bilinear, antialiased, half-pixel
    centres), then rounded back to uint8 because the graph takes uint8."""
    import torch
    import torch.nn.functional as F

    if tuple(batch.shape[1:3]) == tuple(size_hw):
        return batch.contiguous()
    x = batch.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
