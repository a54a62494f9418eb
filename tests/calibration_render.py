"""Images of planes through a known camera, for the calibration tests: a textured plane drawn by a
pinhole camera (the plane's homography, checked against ``cv2.projectPoints``), then the lens
distortion applied by ``cv2.remap`` (each output pixel samples the pinhole image where the
undistorted ray of that pixel lands). A four-coefficient ``dist`` is the equidistant (fisheye) model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from calibration.intrinsics import Board

SIZE = (480, 360)  # width, height: small, so detection stays fast on a loaded 2-core machine
TRUE_K = np.array([[420.0, 0.0, 243.7], [0.0, 417.0, 176.2], [0.0, 0.0, 1.0]])
TRUE_DIST = np.array([-0.28, 0.09, 0.0008, -0.0006, -0.012])  # barrel, like a wide dashcam lens
TRUE_FISHEYE = np.array([-0.05, 0.01, 0.002, -0.001])  # equidistant k1..k4 (a four-coefficient lens is a fisheye)
BOARD = Board("checkerboard", 9, 6, 0.025)
PAD = 96  # the pinhole image extends this far beyond the frame: barrel corners look further out
SUPERSAMPLE = 4  # the pinhole image is drawn this much finer, then averaged down (no aliasing)
BACKGROUND = 128


def _distortion_map(K: np.ndarray, dist: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel of the distorted image, the pinhole image pixel it shows (in the padded canvas)."""
    width, height = size
    grid = np.stack(np.meshgrid(np.arange(width), np.arange(height)), axis=-1).reshape(-1, 1, 2).astype(np.float64)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-9)
    if len(dist) == 4:  # equidistant (fisheye): four coefficients
        pinhole = cv2.fisheye.undistortPoints(grid, K, np.asarray(dist, np.float64), None, None, K, criteria)
    else:
        pinhole = cv2.undistortPoints(grid, K, dist, None, None, K, criteria)
    pinhole = pinhole.reshape(height, width, 2) + PAD
    return pinhole[..., 0].astype(np.float32), pinhole[..., 1].astype(np.float32)


_MAPS: dict[tuple[bytes, bytes, tuple[int, int]], tuple[np.ndarray, np.ndarray]] = {}


def distortion_map(K: np.ndarray, dist: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    key = (K.tobytes(), np.asarray(dist, np.float64).tobytes(), size)
    if key not in _MAPS:
        _MAPS[key] = _distortion_map(K, dist, size)
    return _MAPS[key]


def render_plane(texture: np.ndarray, texture_to_plane: np.ndarray, rvec: np.ndarray, tvec: np.ndarray, *,
                 K: np.ndarray = TRUE_K, dist: np.ndarray = TRUE_DIST, size: tuple[int, int] = SIZE,
                 noise: float = 2.0, seed: int = 0) -> np.ndarray:
    """The plane z = 0 (texture pixel -> plane metres: ``texture_to_plane``, 3x3) at pose (rvec, tvec),
    through K and then the distortion ``dist``; grey uint8."""
    R, _ = cv2.Rodrigues(np.asarray(rvec, np.float64))
    plane_to_image = K @ np.column_stack([R[:, 0], R[:, 1], np.asarray(tvec, np.float64).ravel()])
    # Pixel centres at integers at both scales: fine = (coarse + 0.5) * S - 0.5.
    n = SUPERSAMPLE
    fine = np.array([[n, 0.0, (PAD + 0.5) * n - 0.5], [0.0, n, (PAD + 0.5) * n - 0.5], [0.0, 0.0, 1.0]])
    width, height = size
    canvas = (width + 2 * PAD, height + 2 * PAD)
    pinhole = cv2.warpPerspective(texture, fine @ plane_to_image @ texture_to_plane, (canvas[0] * n, canvas[1] * n),
                                  flags=cv2.INTER_LINEAR, borderValue=BACKGROUND)
    pinhole = cv2.resize(pinhole, canvas, interpolation=cv2.INTER_AREA)
    mapx, mapy = distortion_map(K, dist, size)
    image = cv2.remap(pinhole, mapx, mapy, cv2.INTER_LINEAR, borderValue=BACKGROUND)
    image = cv2.GaussianBlur(image, (0, 0), 0.6)
    if noise:
        image = np.clip(image + np.random.default_rng(seed).normal(0, noise, image.shape), 0, 255)
    return image.astype(np.uint8)


def checker_texture(board: Board = BOARD, px_per_square: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The board's squares with a white margin, and texture pixel -> board metres (the first inner
    corner at the origin, as ``Board.object_points``)."""
    squares_x, squares_y, margin = board.cols + 1, board.rows + 1, 1
    texture = np.full(((squares_y + 2 * margin) * px_per_square, (squares_x + 2 * margin) * px_per_square), 235,
                      np.uint8)
    for j in range(squares_y):
        for i in range(squares_x):
            if (i + j) % 2 == 0:
                y, x = (j + margin) * px_per_square, (i + margin) * px_per_square
                texture[y:y + px_per_square, x:x + px_per_square] = 25
    metres = board.square_m / px_per_square
    offset = -(margin + 1) * board.square_m  # the first inner corner is one square in from the board's edge
    # Texture pixel (tx, ty) covers [tx, tx + 1): its centre tx + 0.5 is at offset + (tx + 0.5) * metres.
    to_plane = np.array([[metres, 0.0, offset + 0.5 * metres], [0.0, metres, offset + 0.5 * metres], [0, 0, 1]])
    return texture, to_plane


class View(NamedTuple):
    """Where a board is: its centre shows at pixel (u, v), ``depth`` metres away, tilted (degrees)."""

    u: float
    v: float
    depth: float
    tilt_x: float
    tilt_y: float
    spin: float = 0.0


def board_pose(view: View, board: Board = BOARD, K: np.ndarray = TRUE_K) -> tuple[np.ndarray, np.ndarray]:
    """(rvec, tvec) of a board seen as ``view`` says."""
    u, v, depth = view.u, view.v, view.depth
    rx, ry, rz = (math.radians(a) for a in (view.tilt_x, view.tilt_y, view.spin))
    R = (cv2.Rodrigues(np.array([rx, 0.0, 0.0]))[0] @ cv2.Rodrigues(np.array([0.0, ry, 0.0]))[0]
         @ cv2.Rodrigues(np.array([0.0, 0.0, rz]))[0])
    centre_obj = np.array([(board.cols - 1) / 2 * board.square_m, (board.rows - 1) / 2 * board.square_m, 0.0])
    centre_cam = depth * np.linalg.solve(K, np.array([u, v, 1.0]))
    return cv2.Rodrigues(R)[0].ravel(), centre_cam - R @ centre_obj


# Board views spread over the frame (corners included, where the distortion shows), tilted both ways.
VIEWS = [View(*v) for v in (
    (240, 180, 0.62, 0, 0, 3), (120, 95, 0.55, 20, -25, -5), (360, 95, 0.55, 20, 25, 8),
    (120, 265, 0.55, -22, -20, 4), (360, 265, 0.55, -20, 22, -6), (240, 100, 0.6, 30, 0, 0),
    (240, 260, 0.6, -30, 0, 10), (110, 180, 0.58, 0, -35, -3), (370, 180, 0.58, 0, 35, 5),
    (240, 180, 0.5, 15, 15, 30), (170, 140, 0.7, -10, 25, -20), (310, 220, 0.7, 10, -25, 15),
)]


def write_board_images(folder: Path, views: list[View] = VIEWS, *, K: np.ndarray = TRUE_K,
                       dist: np.ndarray = TRUE_DIST, size: tuple[int, int] = SIZE) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    texture, to_plane = checker_texture()
    paths = []
    for i, view in enumerate(views):
        rvec, tvec = board_pose(view, K=K)
        path = folder / f"board_{i:02d}.png"
        cv2.imwrite(str(path), render_plane(texture, to_plane, rvec, tvec, K=K, dist=dist, size=size, seed=i))
        paths.append(path)
    return paths


def straight_edge_image(u_edge: float = 45.0, *, K: np.ndarray = TRUE_K, dist: np.ndarray = TRUE_DIST,
                        size: tuple[int, int] = SIZE) -> np.ndarray:
    """A plane facing the camera, dark left of the pinhole column ``u_edge`` and light right of it: a
    straight vertical edge for a pinhole camera, bent by the lens."""
    depth = 2.0
    texture = np.full((400, 400), 230, np.uint8)
    texture[:, :200] = 30
    metres = 0.01  # 4 m x 4 m
    # Texture column 200 (the edge, between pixels 199 and 200) lies at the plane's x = x_edge.
    x_edge = (u_edge - K[0, 2]) / K[0, 0] * depth
    to_plane = np.array([[metres, 0.0, x_edge - 200 * metres], [0.0, metres, -2.0 + 0.5 * metres], [0, 0, 1]])
    return render_plane(texture, to_plane, np.zeros(3), np.array([0.0, 0.0, depth]), K=K, dist=dist, size=size,
                        noise=0.0)


def edge_columns(image: np.ndarray, rows: range) -> np.ndarray:
    """Per row, the sub-pixel column where the dark-to-light edge crosses mid-grey."""
    columns = []
    for r in rows:
        profile = image[r].astype(np.float64)
        level = (30 + 230) / 2
        above = np.flatnonzero((profile[:-1] < level) & (profile[1:] >= level))
        c = above[0]
        columns.append(c + (level - profile[c]) / (profile[c + 1] - profile[c]))
    return np.array(columns)
