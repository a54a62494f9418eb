"""Undistortion with the maps of a calibrated camera: a straight edge comes out straight (within
0.5 px) where the lens bent it by pixels; labels stay labels; the grid_sample path agrees with
cv2.remap (run here on the CPU; on CUDA it is the same code on another device)."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.camera import CameraFileError, CameraModel
from calibration.intrinsics import calibrate
from calibration.undistort import CpuUndistorter, TorchUndistorter, make_undistorter
from tests.calibration_render import BOARD, SIZE, edge_columns, straight_edge_image, write_board_images

ROWS = range(60, 300)  # where the edge lies inside the undistorted frame


@pytest.fixture(scope="module")
def camera(tmp_path_factory) -> CameraModel:
    return calibrate(write_board_images(tmp_path_factory.mktemp("boards")), BOARD).camera


def _deviation(columns: np.ndarray) -> float:
    rows = np.array(ROWS, np.float64)
    return float(np.abs(columns - np.polyval(np.polyfit(rows, columns, 1), rows)).max())


def test_an_undistorted_straight_edge_is_straight_within_half_a_pixel(camera):
    raw = straight_edge_image(45.0)
    assert _deviation(edge_columns(raw, ROWS)) > 2.0  # the lens bends it by pixels
    rectified = CpuUndistorter(camera).image(np.dstack([raw] * 3))[..., 0]
    assert _deviation(edge_columns(rectified, ROWS)) < 0.5


def test_grid_sample_agrees_with_remap(camera):
    torch = pytest.importorskip("torch")
    raw = np.dstack([straight_edge_image(45.0), straight_edge_image(300.0), straight_edge_image(150.0)])
    cpu = CpuUndistorter(camera).image(raw).astype(np.int16)
    gpu_path = TorchUndistorter(camera, "cuda" if torch.cuda.is_available() else "cpu").image(raw).astype(np.int16)
    assert np.abs(cpu - gpu_path).max() <= 2  # remap's fixed-point weights are 1/32 pixel
    assert np.abs(cpu - gpu_path).mean() < 0.05
    assert _deviation(edge_columns(gpu_path[..., 0].astype(np.uint8), ROWS)) < 0.5


def test_labels_are_remapped_nearest(camera):
    ids = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    ids[:, SIZE[0] // 2:] = 7
    ids[SIZE[1] // 2:, :] += 1
    for undistorter in (CpuUndistorter(camera), TorchUndistorter(camera, "cpu")):
        out = undistorter.labels(ids)
        assert set(np.unique(out)) <= {0, 1, 7, 8}  # no blend of ids; 0 outside the source image


def test_a_frame_of_another_size_is_refused_naming_the_camera_file(camera):
    undistorter = make_undistorter(camera, "cpu")
    with pytest.raises(CameraFileError, match=r"is for 480x360 images, but stream front delivers 640x360 frames"):
        undistorter.image(np.zeros((360, 640, 3), np.uint8), "stream front")


def test_an_undistorted_camera_changes_nothing():
    K = np.array([[400.0, 0, 240], [0, 400, 180], [0, 0, 1]])
    plain = CameraModel(480, 360, K, "plumb_bob", np.zeros(5), K)
    assert not plain.distorted
    image = np.random.default_rng(0).integers(0, 255, (360, 480, 3), dtype=np.uint8)
    assert np.array_equal(CpuUndistorter(plain).image(image), image)
