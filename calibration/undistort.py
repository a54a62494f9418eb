"""Undistortion with maps computed once per camera: ``cv2.remap`` on the CPU, ``grid_sample`` on a GPU.

The output is the image the rectified camera (``CameraModel.rectified_K``, no distortion) would have
taken, at the same size. Images are interpolated bilinearly; label images (ground truth) take the
nearest pixel, so ids stay ids. Pixels that fall outside the source image are 0 (black, ``void``).
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Protocol

import cv2
import numpy as np

from calibration.camera import CameraModel
from calibration.lens import rectify_maps


class Undistorter(Protocol):
    camera: CameraModel
    device: str

    def image(self, rgb: np.ndarray, where: str = "the image") -> np.ndarray:
        """HxWx3 uint8 -> the rectified HxWx3 uint8 (CameraFileError if its size is not the camera's)."""

    def labels(self, ids: np.ndarray) -> np.ndarray:
        """HxW uint8 ids -> rectified ids (nearest)."""


def undistort_maps(camera: CameraModel, fixed_point: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each rectified pixel, where to sample the raw image: ``CV_16SC2`` fixed-point maps (fast
    ``remap``) or, ``fixed_point=False``, two float maps (x, y)."""
    kind = cv2.CV_16SC2 if fixed_point else cv2.CV_32FC1
    return rectify_maps(camera.K, camera.distortion_model, camera.distortion, camera.rectified_K, camera.size, kind)


class CpuUndistorter:
    device = "cpu"

    def __init__(self, camera: CameraModel) -> None:
        self.camera = camera
        self._map1, self._map2 = undistort_maps(camera)

    def image(self, rgb: np.ndarray, where: str = "the image") -> np.ndarray:
        self.camera.check_size(rgb.shape[1], rgb.shape[0], where)
        return cv2.remap(rgb, self._map1, self._map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)

    def labels(self, ids: np.ndarray) -> np.ndarray:
        self.camera.check_size(ids.shape[1], ids.shape[0], "the label image")
        return cv2.remap(ids, self._map1, self._map2, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)


class TorchUndistorter:
    """The same maps as a ``grid_sample`` grid on a torch device (CUDA; any device works, the tests
    compare it with :class:`CpuUndistorter` on the CPU). Frames go up and come back as numpy arrays."""

    def __init__(self, camera: CameraModel, device: str = "cuda") -> None:
        import torch

        self.camera = camera
        self.device = device
        mapx, mapy = undistort_maps(camera, fixed_point=False)
        width, height = camera.size
        grid = np.stack([mapx / max(width - 1, 1) * 2 - 1, mapy / max(height - 1, 1) * 2 - 1], axis=-1)
        self._torch = torch
        self._grid = torch.from_numpy(grid.astype(np.float32))[None].to(device)
        self._lock = threading.Lock()  # one CUDA stream's worth of work at a time, from any decode thread

    def _sample(self, array: np.ndarray, mode: str) -> np.ndarray:
        torch = self._torch
        functional: Any = torch.nn.functional
        with self._lock, torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)
            planes = tensor.permute(2, 0, 1)[None] if tensor.ndim == 3 else tensor[None, None]
            out = functional.grid_sample(planes.float(), self._grid, mode=mode, padding_mode="zeros",
                                         align_corners=True)
            out = out.round_().clamp_(0, 255).to(torch.uint8)[0]
            out = out.permute(1, 2, 0) if tensor.ndim == 3 else out[0]
            return out.contiguous().cpu().numpy()

    def image(self, rgb: np.ndarray, where: str = "the image") -> np.ndarray:
        self.camera.check_size(rgb.shape[1], rgb.shape[0], where)
        return self._sample(rgb, "bilinear")

    def labels(self, ids: np.ndarray) -> np.ndarray:
        self.camera.check_size(ids.shape[1], ids.shape[0], "the label image")
        return self._sample(ids, "nearest")


def make_undistorter(camera: CameraModel, device: str = "auto") -> Undistorter:
    """``cpu``: cv2.remap; ``cuda``: grid_sample on the GPU; ``auto``: the GPU when torch is already
    loaded (by the model) and sees one, else the CPU."""
    if device == "auto":
        torch = sys.modules.get("torch")
        device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return CpuUndistorter(camera)
    return TorchUndistorter(camera, device)
