"""Bird's-eye view: a per-pixel layer (classes, road) resampled onto a grid of the road in metres.

The grid lies in the vehicle frame (ISO 8855: x forward, y left) from ``x = 0`` to ``ahead_m`` and
``y = -width_m/2`` to ``+width_m/2`` in square cells of ``cell_m``. Its array is ``cells_y`` rows x
``cells_x`` columns: row ``j`` is ``y = -width_m/2 + (j + 0.5) cell_m`` (right to left), column ``i``
is ``x = (i + 0.5) cell_m`` (near to far), the order of ``nav_msgs/OccupancyGrid`` (SCHEMA.md 15).

For each cell, the ground homography gives the rectified pixel its centre projects to; the lookup is
computed once per layer size and each frame is one gather. Cells that project behind the camera,
above the horizon, outside the image or onto the camera's blind pixels (a static void mask: the
bonnet) are :data:`UNKNOWN`. Things above the road are projected as if they lay on it: a car covers
its footprint and the road it hides behind it, which a planner must treat as not free anyway.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from calibration.camera import CameraModel, GroundPlane

UNKNOWN = 255
MAX_CELLS_PER_SIDE = 4096
DEFAULT_GRID = "40x20@0.1"
# A cell whose centre projects this close to the horizon (depth in the homography's units, metres
# for a pose-based plane) is unknown: one pixel row there spans kilometres.
MIN_DEPTH = 1e-6


@dataclass(frozen=True)
class BevGrid:
    ahead_m: float = 40.0
    width_m: float = 20.0
    cell_m: float = 0.1

    def __post_init__(self) -> None:
        for name in ("ahead_m", "width_m", "cell_m"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"BEV grid: {name} must be a positive number, got {value!r}")
        if self.cells_x > MAX_CELLS_PER_SIDE or self.cells_y > MAX_CELLS_PER_SIDE:
            raise ValueError(f"BEV grid {self.ahead_m}x{self.width_m} m in {self.cell_m} m cells is "
                             f"{self.cells_x}x{self.cells_y} cells; at most {MAX_CELLS_PER_SIDE} per side")

    @property
    def cells_x(self) -> int:
        return max(1, round(self.ahead_m / self.cell_m))

    @property
    def cells_y(self) -> int:
        return max(1, round(self.width_m / self.cell_m))

    @property
    def origin(self) -> tuple[float, float]:
        """(x, y) of the grid's corner at cell (0, 0)'s outer edge: nearest, rightmost."""
        return 0.0, -self.cells_y * self.cell_m / 2

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(x of each column, y of each row) in metres."""
        x0, y0 = self.origin
        return x0 + (np.arange(self.cells_x) + 0.5) * self.cell_m, y0 + (np.arange(self.cells_y) + 0.5) * self.cell_m

    def describe(self) -> str:
        return f"{self.ahead_m:g} m ahead x {self.width_m:g} m wide in {self.cell_m:g} m cells"


def parse_grid(text: str) -> BevGrid:
    """``AHEADxWIDTH[@CELL]`` in metres, e.g. ``40x20@0.1``."""
    size, _, cell = text.partition("@")
    try:
        ahead, width = (float(v) for v in size.lower().split("x"))
        return BevGrid(ahead, width, float(cell) if cell else BevGrid.cell_m)
    except ValueError as exc:
        detail = f": {exc}" if "BEV grid" in str(exc) else ""
        raise ValueError(f"BEV grid {text!r}: expected AHEADxWIDTH[@CELL] in metres, e.g. {DEFAULT_GRID}"
                         f"{detail}") from None


@dataclass(frozen=True)
class Lookup:
    """Per cell (flattened grid order), the flat index of its source pixel; ``unknown``: the cells
    with none (their index is 0 and must be overwritten)."""

    source: np.ndarray  # (cells,) intp
    unknown: np.ndarray  # indices of the unknown cells
    known_fraction: float


class BevProjector:
    """Layer -> grid for one camera (its ground plane) and one grid; thread-safe."""

    def __init__(self, camera: CameraModel, grid: BevGrid,
                 blind: Callable[[tuple[int, int]], np.ndarray | None] | None = None) -> None:
        if camera.ground is None:
            raise ValueError(f"camera file {camera.source or '(unsaved)'} has no ground plane: run "
                             "`roadseg calibrate ground` on it first")
        self.camera = camera
        self.grid = grid
        self._ground: GroundPlane = camera.ground
        self._blind = blind
        self._lookups: dict[tuple[int, int], Lookup] = {}
        self._lock = threading.Lock()

    def lookup(self, shape: tuple[int, int]) -> Lookup:
        with self._lock:
            found = self._lookups.get(shape)
            if found is None:
                found = self._lookups[shape] = self._build(shape)
            return found

    def _build(self, shape: tuple[int, int]) -> Lookup:
        height, width = shape
        xs, ys = self.grid.centres()
        gx, gy = np.meshgrid(xs, ys)  # (cells_y, cells_x): rows along y, columns along x
        uvw = self._ground.H @ np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)])
        front = uvw[2] > MIN_DEPTH
        depth = np.where(front, uvw[2], 1.0)
        # The layer may be the camera's size or a resize of it: pixel centres scale about their middles.
        sx, sy = width / self.camera.width, height / self.camera.height
        u = (uvw[0] / depth + 0.5) * sx - 0.5
        v = (uvw[1] / depth + 0.5) * sy - 0.5
        col, row = np.floor(u + 0.5), np.floor(v + 0.5)
        known = front & (col >= 0) & (col < width) & (row >= 0) & (row < height)
        source = np.where(known, row * width + col, 0).astype(np.intp)
        blind = self._blind(shape) if self._blind is not None else None
        if blind is not None:
            known &= ~blind.ravel()[source]
            source[~known] = 0
        return Lookup(source, np.flatnonzero(~known), float(known.mean()))

    def project(self, layer: np.ndarray) -> np.ndarray:
        """HxW uint8 layer -> (cells_y, cells_x) uint8 grid, :data:`UNKNOWN` where unseen."""
        found = self.lookup((layer.shape[0], layer.shape[1]))
        flat = layer.reshape(-1) if layer.flags.c_contiguous else np.ascontiguousarray(layer).reshape(-1)
        grid = flat.take(found.source)
        grid[found.unknown] = UNKNOWN
        return grid.reshape(self.grid.cells_y, self.grid.cells_x)


# ---------------------------------------------------------------------------------------------- display

UNKNOWN_RGB = (36, 36, 40)
ROAD_TINT = np.array((60, 200, 90), np.float32)


def bev_image(classes: np.ndarray, palette: np.ndarray, road: np.ndarray | None = None, *,
              cell_m: float = 0.1, scale: int = 2) -> np.ndarray:
    """An RGB picture of a grid as a driver sees the road from above: forward up, left on the left;
    unknown cells dark, road cells (when a road grid is given) tinted green, a tick every 10 m."""
    colours = np.zeros((256, 3), np.uint8)
    colours[: len(palette)] = palette
    colours[UNKNOWN] = UNKNOWN_RGB
    picture = colours[classes]
    if road is not None:
        on = road == 1
        picture[on] = (0.5 * picture[on] + 0.5 * ROAD_TINT).astype(np.uint8)
    # grid[j, i]: j along +y (right to left), i along +x (near to far) -> picture[far..near, left..right].
    picture = np.ascontiguousarray(picture[::-1, ::-1].transpose(1, 0, 2))
    if scale > 1:
        picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    rows = picture.shape[0]
    step = 10.0 / cell_m * scale
    for k in range(1, int(rows / step) + 1):
        y = round(rows - k * step)
        cv2.line(picture, (0, y), (6, y), (255, 255, 255), 1)
        cv2.putText(picture, f"{k * 10}", (8, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return picture
