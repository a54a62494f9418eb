"""The ground plane: a homography between the road (vehicle frame, metres) and the rectified image.

The vehicle frame is ISO 8855's: x forward, y left, z up, origin on the road (z = 0). Two ways in:

* :func:`ground_from_pose`: the camera's height above the road and its pitch/roll/yaw (and position),
  through the rectified camera matrix: ``H = K_rect [m1 m2 -M c]`` where ``M`` turns vehicle axes into
  the camera's optical axes (x right, y down, z forward) and ``c`` is the camera's position. The third
  homogeneous coordinate of ``H [x, y, 1]`` is then the point's depth in metres.
* :func:`ground_from_points`: 4 or more image <-> ground pairs (markers measured on the ground, the
  image points clicked in the camera's raw images and undistorted here), least squares through all of
  them (``cv2.findHomography``, method 0); its RMS error in metres is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from calibration import lens
from calibration.camera import CameraFileError, CameraModel, GroundPlane, Pose

# Vehicle body axes (x forward, y left, z up) -> camera optical axes (x right, y down, z forward).
OPTICAL_FROM_BODY = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
MIN_POINTS = 4


class GroundError(ValueError):
    """The ground plane cannot be computed from what was given; the message says why."""


def body_rotation(pose: Pose) -> np.ndarray:
    """The camera body's axes in the vehicle frame: ``Rz(yaw) Ry(pitch) Rx(roll)`` (ISO 8855 angles)."""
    yaw, pitch, roll = (math.radians(a) for a in (pose.yaw_deg, pose.pitch_deg, pose.roll_deg))
    cz, sz, cy, sy, cx, sx = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll), \
        math.sin(roll)
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return rz @ ry @ rx


def extrinsics(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) with ``p_optical = R p_vehicle + t``."""
    R = OPTICAL_FROM_BODY @ body_rotation(pose).T
    centre = np.array([pose.x_m, pose.y_m, pose.height_m])
    return R, -R @ centre


def ground_from_pose(camera: CameraModel, pose: Pose) -> GroundPlane:
    if not pose.height_m > 0:
        raise GroundError(f"the camera must be above the road: height {pose.height_m} m")
    if not -89.0 < pose.pitch_deg < 89.0:
        raise GroundError(f"pitch {pose.pitch_deg} degrees: a camera that sees the road looks within +-89 degrees "
                          "of the horizon")
    R, t = extrinsics(pose)
    H = camera.rectified_K @ np.column_stack([R[:, 0], R[:, 1], t])
    return GroundPlane("pose", H, np.linalg.inv(H), pose=pose)


def ground_from_points(camera: CameraModel, image_points: np.ndarray | Sequence[Sequence[float]],
                       ground_points: np.ndarray | Sequence[Sequence[float]], *, rectified: bool = False
                       ) -> GroundPlane:
    """``image_points``: pixels of the camera's raw (distorted) images, unless ``rectified``;
    ``ground_points``: the same points' (x, y) on the road in metres, vehicle frame."""
    image = np.asarray(image_points, dtype=np.float64).reshape(-1, 2)
    ground = np.asarray(ground_points, dtype=np.float64).reshape(-1, 2)
    if len(image) != len(ground):
        raise GroundError(f"{len(image)} image points but {len(ground)} ground points: give them in pairs")
    if len(image) < MIN_POINTS:
        raise GroundError(f"{len(image)} point pairs: a ground homography needs at least {MIN_POINTS}")
    if not (np.isfinite(image).all() and np.isfinite(ground).all()):
        raise GroundError("point coordinates must be finite numbers")
    if _collinear(ground):
        raise GroundError("the ground points lie on one line (or fewer than 4 are distinct): spread them over "
                          "the road, left and right, near and far")
    pixels = image if rectified else undistort_points(camera, image)
    H, _ = cv2.findHomography(ground, pixels, 0)
    if H is None or abs(np.linalg.det(H)) < 1e-300:
        raise GroundError("no homography fits these point pairs (degenerate layout)")
    H = H / np.linalg.norm(H)
    w = (H @ np.column_stack([ground, np.ones(len(ground))]).T)[2]
    if np.all(w < 0):
        H = -H
        w = -w
    if not np.all(w > 0):
        raise GroundError("the pairs do not fit one ground plane in front of the camera (some points would be "
                          "behind it): check each image point matches its ground point")
    plane = GroundPlane("points", H, np.linalg.inv(H),
                        points=tuple(((float(u), float(v)), (float(x), float(y)))
                                     for (u, v), (x, y) in zip(image, ground, strict=True)))
    mapped, _valid = image_to_ground(plane, pixels)
    rms = float(np.sqrt(np.mean(np.sum((mapped - ground) ** 2, axis=1))))
    return GroundPlane(plane.method, plane.H, plane.H_inv, points=plane.points, rms_m=rms)


def _collinear(points: np.ndarray) -> bool:
    centred = points - points.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    return len(np.unique(points, axis=0)) < MIN_POINTS or singular[-1] < 1e-6 * max(singular[0], 1e-12)


def undistort_points(camera: CameraModel, pixels: np.ndarray) -> np.ndarray:
    """Raw image pixels -> the same points in the rectified image."""
    points = np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
    if not camera.distorted:
        return points.reshape(-1, 2).copy()
    out = lens.undistort_points(points, camera.K, camera.distortion_model, camera.distortion, camera.rectified_K)
    return out.reshape(-1, 2)


def ground_to_image(plane: GroundPlane, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground points (N x 2, metres) -> (rectified pixels N x 2, in front of the camera: N bool)."""
    return _project(plane.H, xy)


def image_to_ground(plane: GroundPlane, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rectified pixels (N x 2) -> (ground points N x 2 in metres, below the horizon: N bool)."""
    return _project(plane.H_inv, uv)


def _project(H: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """N x 2 points through the homography ``H`` -> (N x 2, NaN where w <= 0; w > 0 as N bool)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    projected = H @ np.column_stack([points, np.ones(len(points))]).T
    valid = projected[2] > 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        return (projected[:2] / np.where(valid, projected[2], np.nan)).T, valid


def read_point_pairs(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A text file of ``u v x y`` lines (commas or spaces; ``#`` comments): image pixel, ground metres."""
    rows = []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()  # noqa: SIM115 - read at once
    except OSError as exc:
        raise GroundError(f"point file {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        try:
            values = [float(v) for v in text]
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise GroundError(f"point file {path}, line {number}: expected 'u v x y' (pixel, then metres), "
                              f"got {line.strip()!r}")
        rows.append(values)
    if not rows:
        raise GroundError(f"point file {path}: no point pairs")
    table = np.array(rows)
    return table[:, :2], table[:, 2:]


__all__ = ["CameraFileError", "GroundError", "body_rotation", "extrinsics", "ground_from_points",
           "ground_from_pose", "ground_to_image", "image_to_ground", "read_point_pairs", "undistort_points"]
