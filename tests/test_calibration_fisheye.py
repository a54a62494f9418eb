"""Fisheye (equidistant) lenses: `roadseg calibrate intrinsics --model equidistant` on boards rendered
through a known fisheye recovers K within 1 %, the camera file keeps the model, undistortion (remap and
grid_sample) straightens a bent edge, and raw pixels go to the rectified image by the same lens model
as the maps (the ground plane's points)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.camera import CameraFileError, CameraModel, camera_from_json, load_camera
from calibration.ground import undistort_points
from calibration.undistort import CpuUndistorter, TorchUndistorter, undistort_maps
from stream.cli import main
from tests.calibration_render import SIZE, TRUE_FISHEYE, TRUE_K, edge_columns, straight_edge_image, write_board_images

ROWS = range(60, 300)  # where the edge lies inside the undistorted frame


@pytest.fixture(scope="module")
def camera(tmp_path_factory) -> CameraModel:
    folder = tmp_path_factory.mktemp("fisheye")
    write_board_images(folder / "boards", dist=TRUE_FISHEYE)
    out = folder / "front.json"
    code = main(["calibrate", "intrinsics", "--images", str(folder / "boards"), "--board", "9x6", "--square", "0.025",
                 "--model", "equidistant", "--out", str(out)])
    assert code == 0
    return load_camera(out)


def _deviation(columns: np.ndarray) -> float:
    rows = np.array(ROWS, np.float64)
    return float(np.abs(columns - np.polyval(np.polyfit(rows, columns, 1), rows)).max())


def test_the_cli_calibrates_a_fisheye_within_one_percent(camera):
    assert camera.distortion_model == "equidistant" and camera.distortion.shape == (4,)
    names = {"fx": (0, 0), "fy": (1, 1), "cx": (0, 2), "cy": (1, 2)}
    errors = {name: abs(camera.K[i] / TRUE_K[i] - 1) for name, i in names.items()}
    assert max(errors.values()) < 0.01, errors
    assert camera.calibration is not None and camera.calibration["rms_px"] < 0.3


def test_a_fisheye_edge_comes_out_straight_by_remap_and_grid_sample(camera):
    raw = straight_edge_image(45.0, dist=TRUE_FISHEYE)
    assert _deviation(edge_columns(raw, ROWS)) > 2.0  # the lens bends it by pixels
    image = np.dstack([raw] * 3)
    for undistorter in (CpuUndistorter(camera), TorchUndistorter(camera, "cpu")):
        assert _deviation(edge_columns(undistorter.image(image)[..., 0], ROWS)) < 0.5, undistorter


def test_raw_pixels_reach_the_rectified_image_by_the_same_model_as_the_maps(camera):
    # The ground plane's marked points are raw pixels: each must land where the maps sample it from.
    raw = np.array([[40.0, 30.0], [240.0, 180.0], [430.0, 320.0], [100.0, 300.0]])
    rectified = undistort_points(camera, raw)
    mapx, mapy = undistort_maps(camera, fixed_point=False)
    for (u, v), (x, y) in zip(raw, rectified, strict=True):
        col, row = round(float(x)), round(float(y))
        assert 0 <= col < SIZE[0] and 0 <= row < SIZE[1]
        back = np.array([mapx[row, col], mapy[row, col]])  # the raw pixel the map samples there
        assert np.abs(back - (u, v)).max() < 1.5, (u, v, back)  # within the rounding to a map pixel


def test_the_camera_file_keeps_the_model_and_refuses_a_wrong_coefficient_count(camera, tmp_path):
    saved = tmp_path / "copy.json"
    camera.save(saved)
    again = load_camera(saved)
    assert again.distortion_model == "equidistant" and np.array_equal(again.distortion, camera.distortion)
    broken = json.loads(saved.read_text())
    broken["distortion"]["coefficients"].append(0.0)
    with pytest.raises(CameraFileError, match=r"distortion\.coefficients"):
        camera_from_json(broken, "broken.json")


def test_a_fisheye_with_zero_coefficients_is_still_undistorted(camera):
    # r = f * theta is not the pinhole's f * tan(theta): skipping it would leave the image bent.
    plain = CameraModel(camera.width, camera.height, camera.K, "equidistant", np.zeros(4), camera.K)
    assert plain.distorted
    raw = np.array([[40.0, 30.0]])
    assert np.abs(undistort_points(plain, raw) - raw).max() > 5.0  # a corner pixel moves outwards
