"""The lens models a camera file may name, and the OpenCV calls for each, in one place.

``plumb_bob`` (k1 k2 p1 p2 k3) and ``rational_polynomial`` (k1 k2 p1 p2 k3 k4 k5 k6) are OpenCV's
standard model; it bends a ray's pinhole radius ``tan(theta)``, which grows without bound towards
90 degrees, so it fits lenses up to roughly 120 degrees across. ``equidistant`` (k1 k2 k3 k4, ROS's
name for OpenCV's ``cv2.fisheye``) maps the angle itself, ``r = f * theta * (1 + k1 theta^2 + ...)``,
and fits the 140-190 degree lenses of many dashcams. Names are ROS ``sensor_msgs/CameraInfo``'s.
"""

from __future__ import annotations

import cv2
import numpy as np

from calibration.camera import FISHEYE

UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)


def undistort_points(points: np.ndarray, K: np.ndarray, model: str, coefficients: np.ndarray,
                     rectified_K: np.ndarray) -> np.ndarray:
    """N x 1 x 2 raw pixels -> the same points as pixels of the rectified camera ``rectified_K``."""
    if model == FISHEYE:
        return cv2.fisheye.undistortPoints(points, K, coefficients, None, None, rectified_K, UNDISTORT_CRITERIA)
    return cv2.undistortPoints(points, K, coefficients, None, None, rectified_K, UNDISTORT_CRITERIA)


def rectify_maps(K: np.ndarray, model: str, coefficients: np.ndarray, rectified_K: np.ndarray,
                 size: tuple[int, int], kind: int) -> tuple[np.ndarray, np.ndarray]:
    """For each rectified pixel, where to sample the raw image (``cv2.remap`` maps of ``kind``)."""
    if model == FISHEYE:
        return cv2.fisheye.initUndistortRectifyMap(K, coefficients, np.eye(3), rectified_K, size, kind)
    return cv2.initUndistortRectifyMap(K, coefficients, None, rectified_K, size, kind)


def project_points(object_points: np.ndarray, rvec: np.ndarray, tvec: np.ndarray, K: np.ndarray, model: str,
                   coefficients: np.ndarray) -> np.ndarray:
    """N x 3 points of a board at pose (rvec, tvec) -> N x 2 raw pixels."""
    if model == FISHEYE:
        projected, _ = cv2.fisheye.projectPoints(object_points.reshape(1, -1, 3).astype(np.float64), rvec, tvec, K,
                                                 coefficients)
    else:
        projected, _ = cv2.projectPoints(object_points, rvec, tvec, K, coefficients)
    return projected.reshape(-1, 2)


def rectified_camera(K: np.ndarray, model: str, coefficients: np.ndarray, size: tuple[int, int],
                     alpha: float | None) -> np.ndarray:
    """The pinhole camera of the undistorted images: ``K`` itself (``alpha`` None), else from 0 (only
    valid pixels) to 1 (every source pixel kept; for a fisheye, OpenCV's ``balance``)."""
    if alpha is None:
        return K.copy()
    if model == FISHEYE:
        return cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, coefficients, size, np.eye(3),
                                                                      balance=alpha)
    return cv2.getOptimalNewCameraMatrix(K, coefficients, size, alpha, size)[0]
