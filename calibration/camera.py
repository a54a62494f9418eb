"""The camera file: one camera's intrinsics, lens distortion and ground plane, as strict JSON.

Written by ``roadseg calibrate intrinsics`` (K, distortion, the calibration's errors) and completed by
``roadseg calibrate ground`` (the ground homography); read once by ``roadseg run --camera STREAM=FILE``.
Every field is checked on load and an error names the file and the field. Its :attr:`CameraModel.hash`
(SHA-256 of the canonical JSON, :meth:`CameraModel.canonical_json`) is what the mask messages name, so
a subscriber can tell which camera model a mask was made with and fetch it (SCHEMA.md section 15).

Layout (``version`` 1; all keys required, ``calibration`` and ``ground`` may be null)::

    {"schema": "roadseg.camera", "version": 1,
     "image_size": [width, height],                      # px, of the images the camera delivers
     "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],          # px, OpenCV convention: pixel centres at integers
     "distortion": {"model": "plumb_bob" | "rational_polynomial", "coefficients": [k1, k2, p1, p2, k3(, k4, k5, k6)]}
                 | {"model": "equidistant", "coefficients": [k1, k2, k3, k4]},   # fisheye (calibration.lens)
     "rectified_K": [[...]],                              # the pinhole camera of the undistorted images
     "calibration": null | {"rms_px", "board", "images": [{"file", "rms_px"}], "rejected": [{"file", "reason"}]},
     "ground": null | {"method": "pose" | "points", "H": 3x3, "H_inv": 3x3, "pose": {...} | null,
                       "points": [{"image": [u, v], "ground": [x, y]}] | null, "rms_m": number | null}}

``ground.H`` maps a point of the ground in the vehicle frame (ISO 8855: x forward, y left, z up, metres,
z = 0 the road) to the rectified image: ``[u, v, w] = H [x, y, 1]``, pixel ``(u/w, v/w)``, and ``w > 0``
exactly for ground points in front of the camera. ``H_inv`` is its inverse (a rectified pixel below the
horizon to the ground point; the third coordinate is > 0 there).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.atomic import atomic_path

SCHEMA_NAME = "roadseg.camera"
SCHEMA_VERSION = 1
# Distortion models by their ROS sensor_msgs/CameraInfo names, with their coefficient counts (OpenCV
# order); what each means and the OpenCV calls for it: calibration.lens.
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}
FISHEYE = "equidistant"
MAX_SIDE = 16384
MAX_FILE_BYTES = 4 * 1024 * 1024  # per-image errors of a few thousand images fit easily
GROUND_METHODS = ("pose", "points")
# H @ H_inv must be this close to a multiple of the identity (relative), or the file was edited by hand.
INVERSE_TOLERANCE = 1e-4


class CameraFileError(ValueError):
    """A camera file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Pose:
    """The camera's mounting in the vehicle frame (ISO 8855: x forward, y left, z up; angles in degrees,
    z-y'-x'' order: yaw about z, then pitch about the new y, then roll about the new x). Positive pitch
    looks down at the road, positive roll lowers the right side, positive yaw turns to the left."""

    height_m: float
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    yaw_deg: float = 0.0
    x_m: float = 0.0  # the camera's position ahead of the vehicle origin
    y_m: float = 0.0  # and to its left

    def to_json(self) -> dict[str, float]:
        return {"height_m": self.height_m, "pitch_deg": self.pitch_deg, "roll_deg": self.roll_deg,
                "yaw_deg": self.yaw_deg, "x_m": self.x_m, "y_m": self.y_m}


@dataclass(frozen=True)
class GroundPlane:
    method: str  # "pose" (from height and angles) or "points" (from image <-> ground pairs)
    H: np.ndarray  # 3x3, vehicle ground (x, y, 1) -> rectified image (u, v, w); w > 0 in front
    H_inv: np.ndarray  # 3x3, the inverse
    pose: Pose | None = None
    points: tuple[tuple[tuple[float, float], tuple[float, float]], ...] | None = None  # ((u, v), (x, y))
    rms_m: float | None = None  # of the points, mapped image -> ground, against their ground positions

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "H": _matrix_json(self.H), "H_inv": _matrix_json(self.H_inv),
                "pose": None if self.pose is None else self.pose.to_json(),
                "points": None if self.points is None else [{"image": list(i), "ground": list(g)}
                                                            for i, g in self.points],
                "rms_m": self.rms_m}


@dataclass(frozen=True)
class CameraModel:
    """A calibrated camera. Frozen; arrays are read-only."""

    width: int
    height: int
    K: np.ndarray  # 3x3 float64
    distortion_model: str
    distortion: np.ndarray  # the model's coefficients, OpenCV order
    rectified_K: np.ndarray  # 3x3: the camera of the undistorted images (the pipeline's masks)
    calibration: Mapping[str, Any] | None = None  # how it was calibrated: RMS, board, per-image errors
    ground: GroundPlane | None = None
    source: str = field(default="", compare=False)  # the file it came from, for messages

    def __post_init__(self) -> None:
        for name in ("K", "distortion", "rectified_K"):
            array = np.array(getattr(self, name), dtype=np.float64)
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.width, self.height

    @property
    def distorted(self) -> bool:
        """Whether undistortion changes anything: non-zero coefficients, a different rectified camera, or a
        fisheye (its model maps angles, not tangents: it bends lines even with every coefficient zero)."""
        return bool(self.distortion_model == FISHEYE or np.any(self.distortion != 0)
                    or not np.array_equal(self.K, self.rectified_K))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_NAME, "version": SCHEMA_VERSION,
            "image_size": [self.width, self.height],
            "K": _matrix_json(self.K),
            "distortion": {"model": self.distortion_model, "coefficients": [float(c) for c in self.distortion]},
            "rectified_K": _matrix_json(self.rectified_K),
            "calibration": None if self.calibration is None else dict(self.calibration),
            "ground": None if self.ground is None else self.ground.to_json(),
        }

    def canonical_json(self) -> bytes:
        """The model as compact JSON with sorted keys (ASCII): what :attr:`hash` covers and what the
        ``camera/<stream>`` message carries, so a subscriber checks it with one SHA-256."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")

    @property
    def hash(self) -> str:
        """``sha256:`` + hex digest of :meth:`canonical_json` (a reformatted file keeps its hash)."""
        return "sha256:" + hashlib.sha256(self.canonical_json()).hexdigest()

    def with_ground(self, ground: GroundPlane | None) -> CameraModel:
        return replace(self, ground=ground)

    def check_size(self, width: int, height: int, where: str) -> None:
        """CameraFileError unless the camera delivers ``width`` x ``height`` frames (``where``: whose)."""
        if (width, height) != (self.width, self.height):
            raise CameraFileError(
                f"camera file {self.source or '(unsaved)'} is for {self.width}x{self.height} images, but {where} "
                f"delivers {width}x{height} frames: calibrate the camera at the resolution it streams")

    def save(self, path: Path) -> None:
        """Write atomically (a reader never sees half a file), pretty-printed."""
        text = json.dumps(self.to_json(), indent=1, allow_nan=False)
        # Arrays of numbers (matrix rows, coefficients, sizes, points) on one line each.
        text = re.sub(r"\[\s+([-+\d.eE,\s]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
        text += "\n"
        with atomic_path(Path(path)) as temporary:
            temporary.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------- loading


def load_camera(path: str | Path) -> CameraModel:
    """Read and check a camera file; CameraFileError names the file and what is wrong."""
    path = Path(path)
    where = f"camera file {path}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CameraFileError(f"{where}: no such file") from None
    except OSError as exc:
        raise CameraFileError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CameraFileError(f"{where}: {len(raw)} bytes, more than a camera file can be ({MAX_FILE_BYTES})")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CameraFileError(f"{where}: not valid JSON ({exc})") from None
    return camera_from_json(obj, str(path))


def camera_from_json(obj: Any, source: str = "(camera JSON)") -> CameraModel:
    r = _Reader(f"camera file {source}")
    obj = r.object(obj, "")
    schema = r.take(obj, "schema", str)
    if schema != SCHEMA_NAME:
        raise r.error("schema", f"must be {SCHEMA_NAME!r}, got {schema!r} (is this a camera file?)")
    version = r.take(obj, "version", int)
    if version != SCHEMA_VERSION:
        raise r.error("version", f"{version} is not supported (this roadseg reads version {SCHEMA_VERSION})")
    size = r.numbers(obj, "image_size", 2, integer=True)
    width, height = int(size[0]), int(size[1])
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise r.error("image_size", f"must be [width, height] in 1..{MAX_SIDE}, got {size}")
    K = r.intrinsic(obj, "K", width, height)
    distortion = r.object(r.take(obj, "distortion", dict), "distortion")
    model = r.take(distortion, "model", str, where="distortion.")
    if model not in DISTORTION_MODELS:
        raise r.error("distortion.model", f"{model!r} is not supported (supported: {', '.join(DISTORTION_MODELS)})")
    coefficients = r.numbers(distortion, "coefficients", DISTORTION_MODELS[model], where="distortion.",
                             what=f"for the {model} model")
    rectified = r.intrinsic(obj, "rectified_K", width, height)
    calibration = r.take(obj, "calibration", dict, nullable=True)
    ground_obj = r.take(obj, "ground", dict, nullable=True)
    ground = None if ground_obj is None else _ground_from_json(r, ground_obj)
    return CameraModel(width, height, K, model, np.array(coefficients), rectified, calibration, ground, source)


def _ground_from_json(r: _Reader, obj: Mapping[str, Any]) -> GroundPlane:
    method = r.take(obj, "method", str, where="ground.")
    if method not in GROUND_METHODS:
        raise r.error("ground.method", f"must be one of {', '.join(GROUND_METHODS)}, got {method!r}")
    H = r.matrix(obj, "H", where="ground.")
    H_inv = r.matrix(obj, "H_inv", where="ground.")
    product = H @ H_inv
    scale = product[2, 2]
    if not scale or not np.allclose(product / scale, np.eye(3), atol=INVERSE_TOLERANCE, rtol=0):
        raise r.error("ground.H_inv", "is not the inverse of ground.H (edited by hand? run `roadseg calibrate "
                                      "ground` again)")
    pose_obj = r.take(obj, "pose", dict, nullable=True, where="ground.")
    pose = None
    if pose_obj is not None:
        values = {name: r.take(pose_obj, name, float, where="ground.pose.")
                  for name in ("height_m", "pitch_deg", "roll_deg", "yaw_deg", "x_m", "y_m")}
        pose = Pose(**values)
    points_list = r.take(obj, "points", list, nullable=True, where="ground.")
    points = None
    if points_list is not None:
        pairs = []
        for i, item in enumerate(points_list):
            item = r.object(item, f"ground.points[{i}]")
            image = r.numbers(item, "image", 2, where=f"ground.points[{i}].")
            ground = r.numbers(item, "ground", 2, where=f"ground.points[{i}].")
            pairs.append(((image[0], image[1]), (ground[0], ground[1])))
        points = tuple(pairs)
    rms = r.take(obj, "rms_m", float, nullable=True, where="ground.")
    return GroundPlane(method, H, H_inv, pose, points, rms)


class _Reader:
    """Strict typed access to parsed JSON; every error names the file and the field's path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def error(self, field_path: str, text: str) -> CameraFileError:
        return CameraFileError(f"{self.where}: field {field_path} {text}")

    def object(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise CameraFileError(f"{self.where}: {('field ' + path) if path else 'the file'} must be a JSON "
                                  f"object, got {type(value).__name__}")
        return value

    def take(self, obj: Mapping[str, Any], name: str, kind: type, *, nullable: bool = False, where: str = "") -> Any:
        if name not in obj:
            raise CameraFileError(f"{self.where}: missing field {where}{name}")
        value = obj[name]
        if value is None and nullable:
            return None
        if not _is(value, kind):
            raise self.error(where + name, f"must be {_KIND_NAMES[kind]}{' or null' if nullable else ''}, "
                                           f"got {value!r:.60}")
        return float(value) if kind is float else value

    def numbers(self, obj: Mapping[str, Any], name: str, count: int, *, integer: bool = False, where: str = "",
                what: str = "") -> list[float]:
        values = self.take(obj, name, list, where=where)
        kind = int if integer else float
        if len(values) != count or not all(_is(v, kind) for v in values):
            raise self.error(where + name, f"must be {count} {_KIND_NAMES[kind]}s{' ' + what if what else ''}, "
                                           f"got {values!r:.80}")
        return [float(v) for v in values]

    def matrix(self, obj: Mapping[str, Any], name: str, where: str = "") -> np.ndarray:
        rows = self.take(obj, name, list, where=where)
        if len(rows) != 3 or not all(isinstance(row, list) and len(row) == 3 and all(_is(v, float) for v in row)
                                     for row in rows):
            raise self.error(where + name, f"must be a 3x3 list of numbers, got {rows!r:.80}")
        matrix = np.array(rows, dtype=np.float64)
        if abs(np.linalg.det(matrix)) < 1e-12:
            raise self.error(where + name, "is singular")
        return matrix

    def intrinsic(self, obj: Mapping[str, Any], name: str, width: int, height: int) -> np.ndarray:
        K = self.matrix(obj, name)
        if K[1, 0] or K[2, 0] or K[2, 1] or K[2, 2] != 1:
            raise self.error(name, f"must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got {K.tolist()}")
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise self.error(name, f"must have positive focal lengths, got fx={K[0, 0]}, fy={K[1, 1]}")
        if not (-width <= K[0, 2] <= 2 * width and -height <= K[1, 2] <= 2 * height):
            raise self.error(name, f"has its principal point ({K[0, 2]}, {K[1, 2]}) far outside the "
                                   f"{width}x{height} image")
        return K


_KIND_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}


def _is(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _matrix_json(matrix: np.ndarray | Sequence[Sequence[float]]) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(matrix, dtype=np.float64)]
