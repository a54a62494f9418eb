"""The synthetic drive's world: camera, road layout, palettes, seeded randomness and the
rasteriser that draws every shape into the image and the truth at once."""


from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum

import cv2
import numpy as np

from models.classes import Category

Colour = tuple[int, ...]
Point3 = tuple[float, float, float]  # lateral x from the road centreline (+ right), height y, distance z (m)

# Camera: a car camera with ~64 degrees horizontal field of view.
CAM_HEIGHT_M, FOCAL_PER_WIDTH = 1.3, 0.8
HORIZON_FRAC = 0.42  # horizon row / image height, before the suspension wobble
PITCH_FRAC, PITCH_PERIOD_S = 0.006, 1.7
BONNET_FRAC, BONNET_SAG_FRAC = 0.10, 0.05  # bonnet height at the centre; how much lower at the sides
Z_NEAR_M, Z_FAR_M = 2.0, 140.0  # nearer is under the bonnet or out of view; farther is sub-pixel

# Road cross-section, lateral metres from the ego lane centre (+ = right).
LANE_M = 3.5
ROAD_LEFT_X, ROAD_RIGHT_X = -5.4, 4.3  # oncoming lane on the left, parking strip on the right
SIDEWALK_M, CURB_M = 3.0, 0.25
CENTRE_LINE_X, PARKING_LINE_X, EDGE_LINE_X = -LANE_M / 2, LANE_M / 2, ROAD_LEFT_X + 0.3
MARK_HALF_M, DASH_M, DASH_PERIOD_M = 0.08, 3.0, 12.0
JOINT_M, JOINT_PERIOD_M = 0.08, 1.2  # paving-slab joints on the sidewalk
SHADE_LEN_M, SHADE_PERIOD_M, SHADE_GAIN = 4.0, 13.0, 0.62  # shadows of roadside things over half the road

# Motion.
SPEED_MPS, CURVE_PER_M, CURVE_PERIOD_S = (8.0, 14.0), (1 / 700, 1 / 300), 24.0  # curvature: its peak
LEAD_Z_M, LEAD_SWING_M, LEAD_PERIOD_S = 17.0, 7.0, 11.0
ONCOMING_MPS, WALK_MPS, STRIDE_M = 11.0, 1.3, 1.5

# Appearance.
GRAIN_SIGMA, BLOTCH_SIGMA, BLOTCH_CELL_PX, GRAIN_PAD = 5.0, 5.0, 40, 32  # sensor noise, soft light patches
GAIN_SWING, GAIN_PERIOD_S = 0.07, 6.0  # passing clouds dim and brighten the whole scene
N_CLOUDS, TREELINE_RAD = 6, 0.03
BUILDING_CELL_M, FACADE_STEP_M, BUILDING_DEPTH_M = 20.0, 4.0, 12.0  # facade vertices follow the bend
FLOOR_M, WINDOW_SILL_M, WINDOW_PITCH_M = 3.2, 0.9, 2.6
WINDOW_DZ, WINDOW_DY = np.array([0.0, 1.3, 1.3, 0.0]), np.array([0.0, 0.0, 1.6, 1.6])  # window corners
CAR_DETAIL_PX, PERSON_DETAIL_PX = 8, 24  # below these sizes small parts are skipped: they would be specks


class _Key(IntEnum):
    """What a random draw is for, so unrelated choices never share numbers."""

    STYLE, CLOUD, BUILDING_L, BUILDING_R, TREE_L, TREE_R, LAMP_L, LAMP_R = range(8)
    SIGN_L, SIGN_R, PARKED, ONCOMING, PED_RI, PED_RO, PED_LI, PED_LO, LEAD = range(8, 17)


class _Mat(IntEnum):
    """Ground materials; the shaded variant of material m is m + len(_Mat)."""

    ASPHALT, MARKING, CURB, PAVING, JOINT, GRASS = range(6)


# Lateral bands of the ground, left to right (edges in m), and what each is made of. Shadows fall on
# the bands on one side of the centre line.
_BAND_EDGES = (
    ROAD_LEFT_X - SIDEWALK_M, ROAD_LEFT_X - CURB_M, ROAD_LEFT_X, EDGE_LINE_X - MARK_HALF_M,
    EDGE_LINE_X + MARK_HALF_M, CENTRE_LINE_X - MARK_HALF_M, CENTRE_LINE_X + MARK_HALF_M,
    PARKING_LINE_X - MARK_HALF_M, PARKING_LINE_X + MARK_HALF_M, ROAD_RIGHT_X, ROAD_RIGHT_X + CURB_M,
    ROAD_RIGHT_X + SIDEWALK_M,
)
_BAND_MAT = (_Mat.GRASS, _Mat.PAVING, _Mat.CURB, _Mat.ASPHALT, _Mat.MARKING, _Mat.ASPHALT, _Mat.MARKING,
             _Mat.ASPHALT, _Mat.MARKING, _Mat.ASPHALT, _Mat.CURB, _Mat.PAVING, _Mat.GRASS)
_DASH_BAND, _RIGHT_HALF_BAND = 6, 7  # the dashed centre line; the first band right of it
_DASH, _JOINT, _SHADE, _ROW_STATES = 1, 2, 4, 8  # what a ground row crosses, as bits
_MAT_CATEGORY = np.array([Category.NATURE if m == _Mat.GRASS else Category.FLAT for m in _Mat], np.uint8)
_GROUND_CATEGORY = np.concatenate([_MAT_CATEGORY, _MAT_CATEGORY])

# Colour pools; greys on purpose in several, so colour alone cannot tell road, wall and car apart.
_FACADES = ((150, 150, 148), (120, 118, 115), (178, 160, 130), (150, 85, 65), (200, 196, 186), (95, 100, 110))
_PAINTS = ((200, 200, 205), (30, 30, 34), (110, 110, 115), (150, 20, 25), (25, 50, 120), (170, 170, 160),
           (60, 80, 60), (190, 150, 40))
_CLOTHES = ((40, 40, 45), (200, 40, 40), (40, 70, 150), (220, 220, 215), (120, 120, 120), (90, 60, 40),
            (230, 180, 40), (40, 120, 70))
_SKIN = ((230, 190, 160), (200, 150, 110), (140, 95, 65), (90, 60, 45))
_GREENS = ((60, 110, 40), (80, 130, 50), (45, 90, 45), (100, 140, 60))
_GLASS, _TYRE, _DARK, _PLATE = (40, 50, 60), (20, 20, 22), (35, 35, 38), (230, 230, 225)
_SIGN_RED, _SIGN_WHITE, _SIGN_BLUE = (200, 30, 30), (235, 235, 235), (30, 70, 170)
_SIGNAL_LAMPS = ((230, 40, 30), (240, 180, 30), (40, 220, 90))
_MASK64, _GOLDEN = (1 << 64) - 1, 0x9E3779B97F4A7C15


def _mix(h: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread 64-bit hash."""
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


def _scaled(colour: Sequence[float], gain: float) -> Colour:
    r, g, b = colour  # unrolled: this runs for every part of every object
    return min(255, int(r * gain)), min(255, int(g * gain)), min(255, int(b * gain))


class _Rand:
    """Counter-based random numbers: they depend only on the keys, never on what was drawn before."""

    __slots__ = ("_h",)

    def __init__(self, *keys: int) -> None:
        h = _GOLDEN
        for key in keys:
            h = _mix((h + (key & _MASK64)) & _MASK64)
        self._h = h

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        self._h = _mix((self._h + _GOLDEN) & _MASK64)
        return lo + (hi - lo) * (self._h >> 11) * 2.0**-53

    def colour(self, pool: Sequence[Sequence[float]], spread: float = 0.12) -> Colour:
        """A colour from the pool, lightened or darkened by up to ``spread``."""
        return _scaled(pool[int(self.uniform() * len(pool))], self.uniform(1 - spread, 1 + spread))


def _ground_lut(shade_side: float) -> np.ndarray:
    """(row state, lateral band) -> ground material; shaded materials are offset by len(_Mat)."""
    lut = np.empty((_ROW_STATES, len(_BAND_MAT)), np.uint8)
    for state in range(_ROW_STATES):
        for band, mat in enumerate(_BAND_MAT):
            if band == _DASH_BAND and not state & _DASH:
                mat = _Mat.ASPHALT
            if mat == _Mat.PAVING and state & _JOINT:
                mat = _Mat.JOINT
            shaded = bool(state & _SHADE) and (band >= _RIGHT_HALF_BAND) == (shade_side > 0)
            lut[state, band] = mat + len(_Mat) * shaded
    return lut


class _Style:
    """The per-seed look and motion of a drive."""

    def __init__(self, seed: int) -> None:
        rnd = _Rand(seed, _Key.STYLE)
        self.seed, self.speed = seed, rnd.uniform(*SPEED_MPS)
        self.curve = rnd.uniform(*CURVE_PER_M) * (1 if rnd.uniform() < 0.5 else -1)
        self.curve_phase, self.pitch_phase, self.lead_phase, self.light_phase = (
            rnd.uniform(0, 2 * math.pi) for _ in range(4))
        overcast = rnd.uniform()
        sky_top = (70 + 100 * overcast, 120 + 60 * overcast, 200)  # deep blue to overcast grey
        self.sky_top = np.array(rnd.colour([sky_top], 0.06), np.float64)
        self.sky_low = np.array(rnd.colour([(200, 215, 230)], 0.05), np.float64)
        self.treeline = rnd.colour([(50, 80, 45)], 0.15)
        self.treeline_phases = [rnd.uniform(0, 2 * math.pi) for _ in range(3)]
        asphalt, marking, curb = rnd.colour([(100, 100, 104)], 0.2), rnd.colour([(225, 225, 220)], 0.05), \
            rnd.colour([(170, 168, 160)], 0.1)
        paving, grass = rnd.colour([(160, 150, 140), (130, 130, 135)]), rnd.colour(_GREENS, 0.15)
        lit = np.array([asphalt, marking, curb, paving, _scaled(paving, 0.75), grass], np.float64)
        rgba = np.full((2 * len(_Mat), 4), 255, np.uint8)
        rgba[:, :3] = np.concatenate([lit, lit * SHADE_GAIN])
        self.ground_rgba = rgba.view(np.uint32).ravel()  # one packed colour per (shaded) material
        self.ground_lut = _ground_lut(1.0 if rnd.uniform() < 0.5 else -1.0)  # which half lies in shadow
        self.side_light = {1: rnd.uniform(0.8, 1.1), -1: rnd.uniform(0.8, 1.1)}  # facades facing the sun
        self.bonnet = rnd.colour(_PAINTS, 0.1)


class _Painter:
    """One frame being drawn: the camera pose at time t and the image and truth it paints."""

    def __init__(self, style: _Style, width: int, height: int, t: float) -> None:
        angle = 2 * math.pi * t / CURVE_PERIOD_S + style.curve_phase
        pitch = PITCH_FRAC * math.sin(2 * math.pi * t / PITCH_PERIOD_S + style.pitch_phase)
        self.style, self.t, self.width, self.height = style, t, width, height
        self.f, self.cx, self.horizon = FOCAL_PER_WIDTH * width, width / 2, height * (HORIZON_FRAC + pitch)
        self.curve = style.curve * math.sin(angle)  # 1/m at the camera; > 0 bends the road left
        # Heading (+ = turned right): minus the integral of curvature over the distance driven.
        self.heading = style.curve * style.speed * CURVE_PERIOD_S / (2 * math.pi) * math.cos(angle)
        self.travelled = style.speed * t
        self.image = np.empty((height, width, 3), np.uint8)
        self.truth = np.empty((height, width), np.uint8)

    def uv(self, x: float, y: float, z: float) -> tuple[int, int]:
        # The road bends by curve * z^2 / 2 at distance z; everything along it shifts with it.
        return round(self.cx + self.f * (x - 0.5 * self.curve * z * z) / z), \
            round(self.horizon + self.f * (CAM_HEIGHT_M - y) / z)

    def fill(self, points: Sequence[Point3], colour: Colour, category: Category) -> None:
        f, cx, horizon, bend = self.f, self.cx, self.horizon, 0.5 * self.curve  # uv(), inlined: the hot path
        poly = np.array([(round(cx + f * (x - bend * z * z) / z), round(horizon + f * (CAM_HEIGHT_M - y) / z))
                         for x, y, z in points], np.int32)
        cv2.fillPoly(self.image, [poly], colour, cv2.LINE_8)
        cv2.fillPoly(self.truth, [poly], int(category), cv2.LINE_8)

    def upright(self, x: float, y0: float, y1: float, half0: float, half1: float, z: float, colour: Colour,
                cat: Category) -> None:
        """A trapezoid facing the camera, centred on x: half-width half0 at height y0, half1 at y1."""
        self.fill(((x - half0, y0, z), (x + half0, y0, z), (x + half1, y1, z), (x - half1, y1, z)), colour,
                  cat)

    def side(self, x: float, y0: float, y1: float, z0: float, z1: float, colour: Colour, cat: Category
             ) -> None:
        """A rectangle in the plane x = const, parallel to the road."""
        self.fill(((x, y0, z0), (x, y0, z1), (x, y1, z1), (x, y1, z0)), colour, cat)

    def disc(self, x: float, y: float, z: float, radius_m: float, colour: Colour, category: Category) -> None:
        centre, radius = self.uv(x, y, z), round(self.f * radius_m / z)
        cv2.circle(self.image, centre, radius, colour, -1, cv2.LINE_8)
        cv2.circle(self.truth, centre, radius, int(category), -1, cv2.LINE_8)


@dataclass(frozen=True)
class DriveCamera:
    """The camera that drew one frame, as calibration would describe it (OpenCV pixel convention:
    pixel centres at integers), and where the road surface's materials lie. The drive's pitch wobble
    moves the horizon row (``cy``) rather than rotating the camera: the camera is level."""

    f: float  # focal length in pixels, fx = fy
    cx: float
    cy: float  # the horizon row of this frame
    height_m: float
    curve_per_m: float  # the road bends by curve * x^2 / 2 to the left at distance x

    def K(self) -> np.ndarray:
        return np.array([[self.f, 0.0, self.cx], [0.0, self.f, self.cy], [0.0, 0.0, 1.0]])

    def ground_category(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The category the drive paints the road surface with at vehicle-frame ground points (x forward,
        y left, metres, the camera above the origin): flat (road, markings, curbs, sidewalks) or nature."""
        lateral = -np.asarray(y, np.float64) + 0.5 * self.curve_per_m * np.asarray(x, np.float64) ** 2
        return _MAT_CATEGORY[np.array(_BAND_MAT, np.uint8)[np.searchsorted(_BAND_EDGES, lateral, side="right")]]


def frame_camera(p: _Painter) -> DriveCamera:
    return DriveCamera(p.f, p.cx - 0.5, p.horizon - 0.5, CAM_HEIGHT_M, p.curve)


def _spots(p: _Painter, key: _Key, cell_m: float, density: float, speed: float, z_max: float
           ) -> Iterator[tuple[float, _Rand]]:
    """Objects at most one per ``cell_m`` of road, moving at ``speed``: (distance, their random numbers)."""
    shift = speed * p.t - p.travelled
    for k in range(math.floor((Z_NEAR_M - shift) / cell_m) - 1, math.floor((z_max - shift) / cell_m) + 1):
        rnd = _Rand(p.style.seed, key, k)
        if rnd.uniform() < density:
            z = (k + rnd.uniform(0.1, 0.9)) * cell_m + shift
            if Z_NEAR_M <= z <= z_max:
                yield z, rnd


