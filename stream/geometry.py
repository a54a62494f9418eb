"""Camera geometry in the pipeline: ``roadseg run --camera STREAM=FILE`` (:mod:`calibration`).

* **Undistortion**, before inference, so the model sees rectified frames: on the source's own decode
  (or reader) thread, through the frame limits every source already applies there
  (:class:`RectifyingLimits`). Ground truth of a replay is remapped too (nearest), so IoU compares
  like with like. The maps are computed once, on the first frame; on a GPU when the model runs on one.
* **Bird's-eye grid**, on the post-processing thread: the final mask (static void applied) and the
  road layer, through a lookup computed once per mask size (:class:`StreamCalibration`).
* **The camera file** on the bridge: its hash in every mask header, the file itself on ``camera/``.

Camera files are loaded and checked when the configuration is built (before the model loads); a
file for a stream that does not exist, or whose image size differs from a stream's frames, is
refused with a message naming both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from calibration.bev import BevGrid, BevProjector, bev_image
from calibration.camera import CameraFileError, CameraModel, load_camera
from calibration.undistort import Undistorter, make_undistorter
from decision_bridge.bev import BevHeader, encode_bev
from decision_bridge.schema import MaskHeader
from models.classes import PALETTE, Category
from models.errors import UnreadableImage
from stream.per_stream import per_stream_paths
from stream.sources import SourceOptions, is_live_spec
from stream.sources.limits import FrameLimits
from stream.void_mask import VoidMask

log = logging.getLogger(__name__)
DROP_CAUSE_CAMERA_SIZE = "camera_size"  # a live camera's frame of another size than its camera file's


@dataclass(frozen=True)
class StreamCamera:
    stream_id: str
    camera: CameraModel


def synthetic_camera(spec: str) -> CameraModel:
    """The camera of a ``synthetic:`` drive, as ``roadseg calibrate`` would write it: K without distortion
    and the ground plane from its mounting height (so ``roadseg demo`` shows a bird's-eye grid with no
    file). Frame 0's horizon: the drive's pitch wobble moves it by a pixel or two, as a real car's does,
    and the road still lands where the renderer put it (road cells within 30 m: IoU 0.95-0.99)."""
    from calibration.camera import Pose
    from calibration.ground import ground_from_pose
    from models.datasets.synthetic_scene import SyntheticDrive
    from models.datasets.synthetic_spec import parse_synthetic_spec

    params = parse_synthetic_spec(spec)
    drive = SyntheticDrive(params["seed"], params["width"], params["height"], params["fps"])
    view = drive.camera(0)
    K = view.K()
    camera = CameraModel(drive.width, drive.height, K, "plumb_bob", np.zeros(5), K, source=f"({spec})")
    return camera.with_ground(ground_from_pose(camera, Pose(view.height_m)))


def parse_camera_specs(specs: Sequence[str]) -> tuple[StreamCamera, ...]:
    """``STREAM=FILE`` items -> loaded, checked camera files; errors (ValueError) name the item."""
    paths = per_stream_paths(specs, "--camera", "front=camera.json", CameraFileError)
    cameras = {stream_id: StreamCamera(stream_id, load_camera(path)) for stream_id, path in paths.items()}
    return tuple(cameras.values())


@dataclass(frozen=True)
class BevOut:
    """One frame's bird's-eye grids, ready to publish and show."""

    classes: np.ndarray  # (cells_y, cells_x) uint8: category ids, 255 unknown
    road: np.ndarray | None  # 0/1/255, when the backend gave a road layer
    known_fraction: float
    grid: BevGrid
    camera_hash: str


class StreamCalibration:
    """One stream's camera on the post-processing thread: its hash, and its BEV projector when the
    camera file has a ground plane. Keeps the newest grid for the viewer."""

    def __init__(self, camera: CameraModel, grid: BevGrid, void: VoidMask | None) -> None:
        self.camera = camera
        self.camera_hash = camera.hash
        blind = None if void is None else void.for_shape
        self.projector = BevProjector(camera, grid, blind) if camera.ground is not None else None
        self.latest: BevOut | None = None

    def project(self, mask: np.ndarray, road: np.ndarray | None) -> BevOut | None:
        """Blocking (post thread): the grids of one final mask (and its road layer)."""
        if self.projector is None:
            return None
        classes = self.projector.project(mask)
        road_grid = None
        if road is not None:
            road_grid = self.projector.project((road & (mask == Category.FLAT)).view(np.uint8))
        known = self.projector.lookup(mask.shape[:2]).known_fraction
        out = self.latest = BevOut(classes, road_grid, known, self.projector.grid, self.camera_hash)
        return out


class Rectifier:
    """One stream's undistortion on its decode thread; the maps are made on the first frame."""

    def __init__(self, stream_id: str, camera: CameraModel, device: str, live: bool) -> None:
        self.stream_id = stream_id
        self.camera = camera
        self._device = device
        self._live = live
        self._undistorter: Undistorter | None = None
        self._lock = threading.Lock()
        self._mismatch_logged = False

    def apply(self, name: str, image: np.ndarray, truth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        height, width = image.shape[:2]
        if (width, height) != self.camera.size:
            self._mismatch(width, height, name)
        if not self.camera.distorted:
            return image, truth
        with self._lock:
            if self._undistorter is None:
                self._undistorter = make_undistorter(self.camera, self._device)
                log.info("stream %s: undistorting with %s on %s", self.stream_id, self.camera.source,
                         self._undistorter.device)
            undistorter = self._undistorter
        where = f"stream {self.stream_id}"
        return undistorter.image(image, where), None if truth is None else undistorter.labels(truth)

    def _mismatch(self, width: int, height: int, name: str) -> None:
        try:
            self.camera.check_size(width, height, f"stream {self.stream_id}")
        except CameraFileError as exc:
            if not self._live:
                raise  # a recording: the stream fails, with this message
            if not self._mismatch_logged:  # a camera may come back in another mode: drop, counted, say it once
                self._mismatch_logged = True
                log.error("%s; its frames are dropped (cause %s)", exc, DROP_CAUSE_CAMERA_SIZE)
            raise UnreadableImage(name, str(exc), DROP_CAUSE_CAMERA_SIZE) from None


@dataclass(frozen=True)
class RectifyingLimits(FrameLimits):
    """The frame limits every source applies on its decode thread, undistorting first: the camera
    file describes the camera's own frames, before any downscale."""

    rectifier: Rectifier | None = None

    def fit(self, name: str, image: np.ndarray, truth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if self.rectifier is not None:
            image, truth = self.rectifier.apply(name, image, truth)
        return super().fit(name, image, truth)


class StreamGeometry:
    """Every stream's camera for one pipeline run."""

    def __init__(self, cameras: Sequence[StreamCamera], grid: BevGrid | None, void_masks: Mapping[str, VoidMask],
                 device: str = "auto") -> None:
        grid = grid or BevGrid()
        self._cameras = {c.stream_id: c.camera for c in cameras}
        self._device = device if device in ("cpu", "cuda") else "auto"
        self._calibrations = {sid: StreamCalibration(camera, grid, void_masks.get(sid))
                              for sid, camera in self._cameras.items()}

    def __bool__(self) -> bool:
        return bool(self._cameras)

    def check_streams(self, stream_ids: Sequence[str]) -> None:
        unknown = sorted(set(self._cameras) - set(stream_ids))
        if unknown:
            raise CameraFileError(f"--camera for unknown stream(s) {unknown}; streams: {list(stream_ids)}")

    def source_options(self, stream_id: str, spec: str, options: SourceOptions) -> SourceOptions:
        """``options`` for one source: its frames undistorted on its decode thread before the limits."""
        camera = self._cameras.get(stream_id)
        if camera is None:
            return options
        limits = options.limits or FrameLimits(1 << 30, 1 << 30)
        rectifier = Rectifier(stream_id, camera, self._device, is_live_spec(spec))
        return replace(options, limits=RectifyingLimits(limits.max_width, limits.max_height, limits.policy,
                                                        rectifier))

    def check_source(self, stream_id: str, frame_size: tuple[int, int] | None) -> None:
        """At start-up, for a source that knows its frame size (the synthetic drive): refuse a camera
        file of another size now, before the model loads."""
        camera = self._cameras.get(stream_id)
        if camera is not None and frame_size is not None:
            camera.check_size(frame_size[0], frame_size[1], f"stream {stream_id}")

    def for_stream(self, stream_id: str) -> StreamCalibration | None:
        return self._calibrations.get(stream_id)

    def camera_files(self) -> dict[str, bytes]:
        """Stream -> its camera file in canonical JSON (what ``camera/<stream>`` carries)."""
        return {sid: camera.canonical_json() for sid, camera in self._cameras.items()}

    def bev_streams(self) -> list[str]:
        """The streams with a bird's-eye grid so far (the viewer's GET /api/bev)."""
        return sorted(sid for sid, calibration in self._calibrations.items() if calibration.latest is not None)

    def bev_png(self, stream_id: str) -> bytes | None:
        """The stream's newest grid as a colour PNG (forward up), None before the first (or without one)."""
        calibration = self._calibrations.get(stream_id)
        latest = calibration.latest if calibration is not None else None
        if latest is None:
            return None
        picture = bev_image(latest.classes, PALETTE, latest.road, cell_m=latest.grid.cell_m)
        ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        return png.tobytes() if ok else None


def bev_parts(mask_header: MaskHeader, bev: BevOut) -> list[bytes]:
    """The bird's-eye message of the frame whose mask header is ``mask_header``."""
    x0, y0 = bev.grid.origin
    header = BevHeader(
        stream_id=mask_header.stream_id, run_id=mask_header.run_id, seq=mask_header.seq,
        capture_mono_ns=mask_header.capture_mono_ns, capture_wall_ns=mask_header.capture_wall_ns,
        publish_mono_ns=mask_header.publish_mono_ns, publish_wall_ns=mask_header.publish_wall_ns,
        cells_x=bev.grid.cells_x, cells_y=bev.grid.cells_y, resolution_m=bev.grid.cell_m, origin_x_m=x0,
        origin_y_m=y0, encoding=mask_header.encoding, classes=mask_header.classes, road=bev.road is not None,
        valid=mask_header.valid, camera_hash=bev.camera_hash, known_fraction=bev.known_fraction)
    return encode_bev(header, bev.classes, bev.road)


def frame_size_of(source: Any) -> tuple[int, int] | None:
    """A source's frame size if it knows it before reading a frame."""
    size = getattr(source, "frame_size", None)
    return size if isinstance(size, tuple) else None
