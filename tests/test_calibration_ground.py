"""The ground plane in the ISO 8855 vehicle frame: from the camera's pose it is exact; from point
pairs with a calibrated (not perfect) camera, a rendered ground point 10 m ahead maps to its metres
within 5 cm; bad input is refused with a reason."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from calibration.camera import CameraModel, Pose
from calibration.ground import (
    GroundError,
    extrinsics,
    ground_from_points,
    ground_from_pose,
    ground_to_image,
    image_to_ground,
    read_point_pairs,
    undistort_points,
)
from calibration.intrinsics import calibrate
from tests.calibration_render import BOARD, SIZE, TRUE_DIST, TRUE_K, render_plane, write_board_images

# A camera 1.42 m up, looking 4 degrees down, rolled and yawed a little, 1.8 m ahead of the vehicle origin.
POSE = Pose(height_m=1.42, pitch_deg=4.0, roll_deg=0.6, yaw_deg=1.5, x_m=1.8, y_m=0.3)
# Markers measured on the road (x forward, y left), as a fitter would lay them out.
MARKERS = np.array([[6.8, -2.5], [6.8, 2.5], [9.8, 0.0], [14.8, -3.0], [14.8, 3.0], [21.8, 1.0], [26.8, -2.0]])
TRUE_CAMERA = CameraModel(SIZE[0], SIZE[1], TRUE_K, "plumb_bob", TRUE_DIST, TRUE_K)


@pytest.fixture(scope="module")
def camera(tmp_path_factory) -> CameraModel:
    return calibrate(write_board_images(tmp_path_factory.mktemp("boards")), BOARD).camera


def _raw_pixels(xy: np.ndarray) -> np.ndarray:
    """Where the true camera (lens included) shows these road points."""
    R, t = extrinsics(POSE)
    points = np.column_stack([xy, np.zeros(len(xy))])
    uv, _ = cv2.projectPoints(points, cv2.Rodrigues(R)[0], t, TRUE_K, TRUE_DIST)
    return uv.reshape(-1, 2)


def test_pose_conventions_iso_8855():
    plane = ground_from_pose(TRUE_CAMERA, Pose(1.5))
    (u, v), = ground_to_image(plane, np.array([[10.0, 0.0]]))[0]
    assert u == pytest.approx(TRUE_K[0, 2]) and v == pytest.approx(TRUE_K[1, 2] + TRUE_K[1, 1] * 1.5 / 10)
    (u_left, _), = ground_to_image(plane, np.array([[10.0, 2.0]]))[0]
    assert u_left < u  # y is to the left
    (_, v_down), = ground_to_image(ground_from_pose(TRUE_CAMERA, Pose(1.5, pitch_deg=3)), np.array([[10.0, 0.0]]))[0]
    assert v_down < v  # looking down moves the road up in the image
    (u_yaw, _), = ground_to_image(ground_from_pose(TRUE_CAMERA, Pose(1.5, yaw_deg=5)), np.array([[10.0, 0.0]]))[0]
    assert u_yaw > u  # turned left, the road ahead moves right
    # Behind the camera and above the horizon are not ground.
    assert not ground_to_image(plane, np.array([[-3.0, 0.0]]))[1][0]
    assert not image_to_ground(plane, np.array([[TRUE_K[0, 2], 10.0]]))[1][0]


def test_pose_plane_is_exact_with_the_true_camera():
    plane = ground_from_pose(TRUE_CAMERA, POSE)
    points = np.array([[11.8, 0.7], [5.0, -2.0], [30.0, 3.0]])
    xy, ok = image_to_ground(plane, undistort_points(TRUE_CAMERA, _raw_pixels(points)))
    assert ok.all() and np.abs(xy - points).max() < 1e-6


def test_a_rendered_ground_point_10_m_ahead_maps_within_5_cm(camera):
    """Point pairs clicked in raw images, a calibrated camera; then a target drawn on the road 10 m ahead
    of the camera is found in the rendered image (sub-pixel) and mapped back to metres."""
    plane = ground_from_points(camera, _raw_pixels(MARKERS), MARKERS)
    assert plane.rms_m is not None and plane.rms_m < 0.02
    target, side, px = np.array([POSE.x_m + 10.0, 0.7]), 1.0, 200
    texture = np.full((2 * px, 2 * px), 40, np.uint8)  # a 2 x 2 checker on the road, its centre at the target
    texture[:px, :px] = 220
    texture[px:, px:] = 220
    metres = side / px
    to_plane = np.array([[metres, 0, target[0] - side + 0.5 * metres], [0, metres, target[1] - side + 0.5 * metres],
                         [0, 0, 1]])
    R, t = extrinsics(POSE)
    image = render_plane(texture, to_plane, cv2.Rodrigues(R)[0], t, seed=5)
    guess = _raw_pixels(target[None]) + np.array([[1.5, -1.0]])  # near it: a detector's first estimate
    found = cv2.cornerSubPix(image, guess.astype(np.float32).reshape(-1, 1, 2), (3, 3), (-1, -1),
                             (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-4)).reshape(-1, 2)
    xy, ok = image_to_ground(plane, undistort_points(camera, found))
    assert ok.all()
    assert np.linalg.norm(xy[0] - target) < 0.05


def test_bad_point_pairs_are_refused():
    pixels, ground = _raw_pixels(MARKERS), MARKERS
    with pytest.raises(GroundError, match="at least 4"):
        ground_from_points(TRUE_CAMERA, pixels[:3], ground[:3])
    with pytest.raises(GroundError, match="in pairs"):
        ground_from_points(TRUE_CAMERA, pixels[:5], ground[:4])
    line = np.array([[5.0, 0.0], [10.0, 0.0], [15.0, 0.0], [20.0, 0.0]])
    with pytest.raises(GroundError, match="one line"):
        ground_from_points(TRUE_CAMERA, _raw_pixels(line), line)
    with pytest.raises(GroundError, match="above the road"):
        ground_from_pose(TRUE_CAMERA, Pose(0.0))


def test_point_file(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# u v x y\n100, 200, 5.0, 1.0\n300 220 6 -1  # right\n\n")
    image, ground = read_point_pairs(str(path))
    assert image.tolist() == [[100, 200], [300, 220]] and ground.tolist() == [[5, 1], [6, -1]]
    path.write_text("100 200 5\n")
    with pytest.raises(GroundError, match="line 1: expected 'u v x y'"):
        read_point_pairs(str(path))
