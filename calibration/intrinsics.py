"""Intrinsic calibration from images of a checkerboard or a ChArUco board.

Each image is read, its board found (sub-pixel corners), then ``cv2.calibrateCamera`` fits K and the
distortion. Images are rejected, each with its reason, when they cannot be read, differ in size from
the first, show no board (or too little of a ChArUco board), or fit far worse than the others after a
first calibration (a blurred or mis-detected board); the calibration is then repeated without them.

Boards: ``checkerboard`` with ``cols`` x ``rows`` **inner corners** (OpenCV's pattern size: a board of
10 x 7 squares is 9x6); ``charuco`` with ``cols`` x ``rows`` **squares**, its markers ``marker_m`` wide
from an OpenCV ArUco dictionary (OpenCV >= 4.7 has ChArUco in its main modules, no contrib needed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from calibration.camera import DISTORTION_MODELS, FISHEYE, CameraModel
from calibration.lens import project_points, rectified_camera

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_IMAGES = 3  # accepted views; fewer cannot separate focal length from distance and distortion
MIN_CHARUCO_CORNERS = 6
# After the first fit, an image whose RMS error exceeds both of these is re-fitted without.
OUTLIER_FACTOR = 3.0  # x the median image's RMS
OUTLIER_FLOOR_PX = 1.0
CHARUCO_DICTIONARY = "DICT_4X4_50"
SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-4)


class CalibrationError(ValueError):
    """Calibration cannot succeed with these images; the message says why (and which were rejected)."""


@dataclass(frozen=True)
class Board:
    kind: str  # "checkerboard" | "charuco"
    cols: int  # checkerboard: inner corners across; charuco: squares across
    rows: int
    square_m: float
    marker_m: float | None = None  # charuco only
    dictionary: str = CHARUCO_DICTIONARY  # charuco only

    def __post_init__(self) -> None:
        if self.kind not in ("checkerboard", "charuco"):
            raise ValueError(f"board kind must be checkerboard or charuco, got {self.kind!r}")
        low = 2 if self.kind == "checkerboard" else 3
        if self.cols < low or self.rows < low:
            raise ValueError(f"board {self.cols}x{self.rows}: at least {low}x{low} "
                             f"{'inner corners' if self.kind == 'checkerboard' else 'squares'}")
        if not self.square_m > 0:
            raise ValueError(f"board square size must be > 0 m, got {self.square_m}")
        if self.kind == "charuco":
            if self.marker_m is None or not 0 < self.marker_m < self.square_m:
                raise ValueError(f"a ChArUco board needs a marker size between 0 and the square size "
                                 f"({self.square_m} m), got {self.marker_m}")
            if not hasattr(cv2.aruco, self.dictionary):
                raise ValueError(f"unknown ArUco dictionary {self.dictionary!r} (e.g. {CHARUCO_DICTIONARY})")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "cols": self.cols, "rows": self.rows, "square_m": self.square_m}
        if self.kind == "charuco":
            out.update(marker_m=self.marker_m, dictionary=self.dictionary)
        return out

    def charuco(self) -> Any:
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        assert self.marker_m is not None  # checked when made
        return cv2.aruco.CharucoBoard((self.cols, self.rows), self.square_m, self.marker_m, dictionary)

    def object_points(self) -> np.ndarray:
        """Checkerboard: the inner corners on the board plane (z = 0), row by row, in metres."""
        grid = np.mgrid[0:self.cols, 0:self.rows].T.reshape(-1, 2)
        points = np.zeros((len(grid), 3), np.float32)
        points[:, :2] = grid * self.square_m
        return points


def parse_board(text: str, square_m: float, marker_m: float | None = None,
                dictionary: str = CHARUCO_DICTIONARY) -> Board:
    """``9x6`` (checkerboard inner corners) or ``charuco:5x7`` (ChArUco squares)."""
    kind, _, size = text.rpartition(":")
    kind = kind or "checkerboard"
    try:
        cols, rows = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ValueError(f"board {text!r}: expected COLSxROWS (checkerboard inner corners, e.g. 9x6) or "
                         "charuco:COLSxROWS (squares, e.g. charuco:5x7)") from None
    return Board(kind, cols, rows, square_m, marker_m, dictionary)


@dataclass
class Detection:
    file: str
    image_points: np.ndarray  # N x 1 x 2 float32
    object_points: np.ndarray  # N x 3 float32
    rms_px: float = 0.0
    residuals: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # N x 2, detected - projected


@dataclass
class Calibration:
    camera: CameraModel
    accepted: list[Detection]
    rejected: list[tuple[str, str]]  # (file, reason)
    outliers: list[Detection] = field(default_factory=list)  # rejected for their error after the first fit


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CalibrationError(f"image folder {folder}: no such folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise CalibrationError(f"image folder {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def detect(board: Board, gray: np.ndarray, name: str) -> Detection | str:
    """The board's corners in one grayscale image, or why there are none."""
    if board.kind == "checkerboard":
        pattern = (board.cols, board.rows)
        found, corners = cv2.findChessboardCorners(gray, pattern, flags=cv2.CALIB_CB_ADAPTIVE_THRESH
                                                   | cv2.CALIB_CB_NORMALIZE_IMAGE)
        if found and corners is not None:
            # Sub-pixel: a window well inside one square (a wider one reaches the neighbouring corners).
            grid = corners.reshape(board.rows, board.cols, 2)
            spacing = min(np.linalg.norm(np.diff(grid, axis=0), axis=2).min(),
                          np.linalg.norm(np.diff(grid, axis=1), axis=2).min())
            half = int(np.clip(spacing / 3, 2, 11))
            corners = cv2.cornerSubPix(gray, corners, (half, half), (-1, -1), SUBPIX_CRITERIA)
        else:  # the sector-based detector copes with blur and uneven light where the classic one fails
            found, corners = cv2.findChessboardCornersSB(gray, pattern, None, cv2.CALIB_CB_NORMALIZE_IMAGE
                                                         | cv2.CALIB_CB_EXHAUSTIVE)
        if not found or corners is None:
            return f"no {board.cols}x{board.rows} checkerboard (inner corners) found"
        return Detection(name, corners.astype(np.float32).reshape(-1, 1, 2), board.object_points())
    charuco = board.charuco()
    corners, ids, _markers, _marker_ids = cv2.aruco.CharucoDetector(charuco).detectBoard(gray)
    count = 0 if ids is None else len(ids)
    if count < MIN_CHARUCO_CORNERS:
        return f"{count} ChArUco corners found, at least {MIN_CHARUCO_CORNERS} needed"
    if charuco.checkCharucoCornersCollinear(ids):
        return "the ChArUco corners found lie on one line"
    objects, images = charuco.matchImagePoints(corners, ids)
    return Detection(name, images.astype(np.float32).reshape(-1, 1, 2), objects.astype(np.float32).reshape(-1, 3))


def calibrate(paths: Sequence[Path], board: Board, *, model: str = "plumb_bob", rectify_alpha: float | None = None,
              progress: Callable[[Iterable[Path]], Iterable[Path]] | None = None) -> Calibration:
    """Detect, fit, drop outliers, fit again. CalibrationError when fewer than MIN_IMAGES views remain."""
    if model not in DISTORTION_MODELS:
        raise CalibrationError(f"distortion model {model!r}: supported are {', '.join(DISTORTION_MODELS)}")
    rejected: list[tuple[str, str]] = []
    detections: list[Detection] = []
    size: tuple[int, int] | None = None
    for path in (progress or iter)(paths):
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            rejected.append((path.name, "not a readable image"))
            continue
        here = (gray.shape[1], gray.shape[0])
        if size is None:
            size = here
        elif here != size:
            rejected.append((path.name, f"{here[0]}x{here[1]} differs from the first image's {size[0]}x{size[1]}"))
            continue
        found = detect(board, gray, path.name)
        if isinstance(found, str):
            rejected.append((path.name, found))
        else:
            detections.append(found)
    if size is None or len(detections) < MIN_IMAGES:
        raise CalibrationError(_too_few(len(detections), rejected))
    K, dist = _fit(detections, size, model)
    limit = max(OUTLIER_FACTOR * float(np.median([d.rms_px for d in detections])), OUTLIER_FLOOR_PX)
    outliers = [d for d in detections if d.rms_px > limit]
    if len(detections) - len(outliers) < MIN_IMAGES:
        outliers = []  # too few would remain: keep them all (the RMS and the plot show it)
    if outliers:
        for d in outliers:
            rejected.append((d.file, f"reprojection error {d.rms_px:.2f} px, over {limit:.2f} px "
                                      "(blurred, or the board mis-detected)"))
        detections = [d for d in detections if d.rms_px <= limit]
        K, dist = _fit(detections, size, model)
    residuals = np.concatenate([d.residuals for d in detections])
    rms = float(np.sqrt(np.mean(np.sum(residuals**2, axis=1))))
    coefficients = np.asarray(dist, np.float64).ravel()[:DISTORTION_MODELS[model]]
    rectified = rectified_camera(K, model, coefficients, size, rectify_alpha)
    info = {"rms_px": rms, "board": board.to_json(), "rectify_alpha": rectify_alpha,
            "images": [{"file": d.file, "rms_px": d.rms_px} for d in detections],
            "rejected": [{"file": f, "reason": r} for f, r in rejected]}
    camera = CameraModel(size[0], size[1], K, model, coefficients, rectified, info)
    return Calibration(camera, detections, rejected, outliers)


def _fit(detections: list[Detection], size: tuple[int, int], model: str) -> tuple[np.ndarray, np.ndarray]:
    objects = [d.object_points for d in detections]
    images = [d.image_points for d in detections]
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    if model == FISHEYE:
        # cv2.fisheye wants float64 1 x N x 3 / 1 x N x 2 (N x 1 fails); no skew, the pose re-estimated
        # each iteration.
        flags = _fisheye_flag("CALIB_RECOMPUTE_EXTRINSIC") | _fisheye_flag("CALIB_FIX_SKEW")
        _rms, K, dist, rvecs, tvecs = cv2.fisheye.calibrate(
            [o.reshape(1, -1, 3).astype(np.float64) for o in objects],
            [i.reshape(1, -1, 2).astype(np.float64) for i in images], size, np.eye(3), np.zeros(4), flags=flags,
            criteria=criteria)
    else:
        flags = cv2.CALIB_RATIONAL_MODEL if model == "rational_polynomial" else 0
        _rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(objects, images, size, None, None, flags=flags,
                                                          criteria=criteria)
    for d, rvec, tvec in zip(detections, rvecs, tvecs, strict=True):
        projected = project_points(d.object_points, rvec, tvec, K, model, dist)
        d.residuals = (d.image_points.reshape(-1, 2) - projected).astype(np.float64)
        d.rms_px = float(np.sqrt(np.mean(np.sum(d.residuals**2, axis=1))))
    return K, dist


def _fisheye_flag(name: str) -> int:
    """OpenCV 4 has the fisheye flags in cv2.fisheye (their own values); OpenCV 5 has them in cv2."""
    return int(getattr(cv2.fisheye, name, None) or getattr(cv2, name))


def _too_few(found: int, rejected: list[tuple[str, str]]) -> str:
    lines = [f"{found} usable board image(s), at least {MIN_IMAGES} needed"]
    lines += [f"  rejected {name}: {reason}" for name, reason in rejected[:20]]
    if len(rejected) > 20:
        lines.append(f"  ... and {len(rejected) - 20} more")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- error plot

_PLOT_H, _BAR_W, _PAD, _SCATTER = 360, 560, 40, 320
_GREEN, _RED, _GREY, _WHITE, _BLACK = (80, 170, 80), (60, 60, 210), (160, 160, 160), (255, 255, 255), (0, 0, 0)


def error_plot(result: Calibration) -> np.ndarray:
    """A BGR image: per-image RMS reprojection error (bars, the overall RMS as a line; images rejected
    as outliers in red) and every corner's residual (detected - reprojected) as a scatter."""
    canvas = np.full((_PLOT_H + 2 * _PAD, _BAR_W + _SCATTER + 3 * _PAD, 3), 255, np.uint8)
    errors = [(d.file, d.rms_px, True) for d in result.accepted]
    errors += [(d.file, d.rms_px, False) for d in result.outliers]
    top = max([e for _, e, _ in errors] + [1e-6]) * 1.15
    x0, y0 = _PAD, _PAD + _PLOT_H
    cv2.line(canvas, (x0, _PAD), (x0, y0), _BLACK, 1)
    cv2.line(canvas, (x0, y0), (x0 + _BAR_W, y0), _BLACK, 1)
    width = max(2, (_BAR_W - 10) // max(len(errors), 1))
    for i, (_name, err, ok) in enumerate(errors):
        left = x0 + 5 + i * width
        cv2.rectangle(canvas, (left, y0 - round(err / top * _PLOT_H)), (left + max(1, width - 2), y0 - 1),
                      _GREEN if ok else _RED, -1)
    rms = result.camera.calibration["rms_px"] if result.camera.calibration else 0.0
    y_rms = y0 - round(rms / top * _PLOT_H)
    cv2.line(canvas, (x0, y_rms), (x0 + _BAR_W, y_rms), _GREY, 1)
    _text(canvas, f"per-image RMS reprojection error (px); overall {rms:.3f} px", (x0, _PAD - 14))
    _text(canvas, f"{top:.2f}", (2, _PAD + 4))
    _text(canvas, "0", (x0 - 14, y0 + 4))
    _text(canvas, f"{len(result.accepted)} images used, {len(result.rejected)} rejected", (x0, y0 + 24))
    # Residual scatter, centred, +-range px.
    cx0 = x0 + _BAR_W + _PAD + _SCATTER // 2
    cy0 = _PAD + _PLOT_H // 2
    residuals = np.concatenate([d.residuals for d in result.accepted]) if result.accepted else np.zeros((0, 2))
    span = max(float(np.abs(residuals).max()) if len(residuals) else 0.0, 1e-3) * 1.1
    scale = (_SCATTER // 2 - 4) / span
    cv2.rectangle(canvas, (cx0 - _SCATTER // 2, cy0 - _SCATTER // 2), (cx0 + _SCATTER // 2, cy0 + _SCATTER // 2),
                  _GREY, 1)
    cv2.line(canvas, (cx0 - _SCATTER // 2, cy0), (cx0 + _SCATTER // 2, cy0), _GREY, 1)
    cv2.line(canvas, (cx0, cy0 - _SCATTER // 2), (cx0, cy0 + _SCATTER // 2), _GREY, 1)
    for dx, dy in residuals:
        cv2.circle(canvas, (cx0 + round(dx * scale), cy0 + round(dy * scale)), 1, _GREEN, -1)
    _text(canvas, f"corner residuals, +-{span:.2f} px", (cx0 - _SCATTER // 2, _PAD - 14))
    return canvas


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, _BLACK, 1, cv2.LINE_AA)
