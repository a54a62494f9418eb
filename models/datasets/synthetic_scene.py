"""Procedural driving scene with pixel-exact ground truth: the ``synthetic:`` source.

One world model (a camera 1.3 m above a gently curving road, the ego car driving at constant speed)
is drawn into the image and the truth with the same aliased rasteriser calls, so every truth edge is
an image edge. Random choices hash (seed, what, which) instead of running a generator, so any frame
renders on its own: frame ``i`` depends only on (seed, size, fps, i), at time ``t = i / fps``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import cv2
import numpy as np

from models.classes import Category
from models.datasets.synthetic_world import (
    _BAND_EDGES,
    _CLOTHES,
    _DARK,
    _DASH,
    _FACADES,
    _GLASS,
    _GREENS,
    _GROUND_CATEGORY,
    _JOINT,
    _PAINTS,
    _PLATE,
    _SHADE,
    _SIGN_BLUE,
    _SIGN_RED,
    _SIGN_WHITE,
    _SIGNAL_LAMPS,
    _SKIN,
    _TYRE,
    BLOTCH_CELL_PX,
    BLOTCH_SIGMA,
    BONNET_FRAC,
    BONNET_SAG_FRAC,
    BUILDING_CELL_M,
    BUILDING_DEPTH_M,
    CAM_HEIGHT_M,
    CAR_DETAIL_PX,
    CENTRE_LINE_X,
    CURB_M,
    DASH_M,
    DASH_PERIOD_M,
    FACADE_STEP_M,
    FLOOR_M,
    GAIN_PERIOD_S,
    GAIN_SWING,
    GRAIN_PAD,
    GRAIN_SIGMA,
    JOINT_M,
    JOINT_PERIOD_M,
    LANE_M,
    LEAD_PERIOD_S,
    LEAD_SWING_M,
    LEAD_Z_M,
    N_CLOUDS,
    ONCOMING_MPS,
    PARKING_LINE_X,
    PERSON_DETAIL_PX,
    ROAD_LEFT_X,
    ROAD_RIGHT_X,
    SHADE_LEN_M,
    SHADE_PERIOD_M,
    SIDEWALK_M,
    STRIDE_M,
    TREELINE_RAD,
    WALK_MPS,
    WINDOW_DY,
    WINDOW_DZ,
    WINDOW_PITCH_M,
    WINDOW_SILL_M,
    Z_FAR_M,
    Z_NEAR_M,
    DriveCamera,
    _Key,
    _Painter,
    _Rand,
    _scaled,
    _spots,
    _Style,
    frame_camera,
)


def _paint_sky(p: _Painter, ground_top: int) -> None:
    s = p.style
    frac = (np.arange(ground_top) / max(p.horizon, 1.0))[:, None] ** 0.7
    p.image[:ground_top] = (s.sky_top + (s.sky_low - s.sky_top) * frac).astype(np.uint8)[:, None, :]
    p.truth[:ground_top] = Category.SKY
    for i in range(N_CLOUDS):  # image only: clouds are sky
        rnd = _Rand(s.seed, _Key.CLOUD, i)
        azimuth = (rnd.uniform(-1, 1) + 0.004 * p.t - p.heading + 1) % 2 - 1  # drifting, wraps around
        u, v = p.cx + p.f * azimuth, p.horizon - p.f * rnd.uniform(0.12, 0.4)
        size, shade = p.f * rnd.uniform(0.04, 0.1), int(rnd.uniform(225, 250))
        for du, dv, k in ((0, 0, 1.0), (-0.8, 0.15, 0.7), (0.8, 0.2, 0.6)):
            c, axes = (round(u + du * size), round(v + dv * size)), (round(k * size), round(k * size / 3))
            cv2.ellipse(p.image, c, axes, 0, 0, 360, (shade,) * 3, -1, cv2.LINE_8)


def _paint_treeline(p: _Painter, ground_top: int) -> None:
    """Distant woods on the horizon; they pan as the car's heading swings."""
    a, b, c = p.style.treeline_phases
    angle = (np.arange(p.width) + 0.5 - p.cx) / p.f + p.heading
    bumps = 1 + 0.5 * np.sin(7 * angle + a) + 0.3 * np.sin(23 * angle + b) + 0.2 * np.sin(61 * angle + c)
    tops = p.horizon - p.f * TREELINE_RAD * bumps
    first = max(0, math.floor(tops.min()))
    mask = np.arange(first, ground_top)[:, None] >= tops[None, :]
    p.image[first:ground_top][mask] = p.style.treeline
    p.truth[first:ground_top][mask] = Category.NATURE


def _paint_ground(p: _Painter, ground_top: int) -> None:
    """Back-project each ground row to road coordinates; what a pixel shows depends on its
    lateral band and on the row (dash, paving joint or shadow at that distance)."""
    n = p.height - ground_top
    z = p.f * CAM_HEIGHT_M / (np.arange(ground_top, p.height) + 0.5 - p.horizon)
    along = z + p.travelled
    state = ((along % DASH_PERIOD_M < DASH_M) * _DASH + (along % JOINT_PERIOD_M < JOINT_M) * _JOINT
             + (along % SHADE_PERIOD_M < SHADE_LEN_M) * _SHADE)
    # Lateral x = (u + 0.5 - cx) * z / f + curve * z^2 / 2 is linear in column u, so each row is a run of
    # bands: find the column where each band starts, then repeat each band's value along its run.
    edges = np.array(_BAND_EDGES)[None, :] - (0.5 * p.curve * z * z)[:, None]
    starts = np.clip(np.ceil(edges * (p.f / z)[:, None] + p.cx - 0.5), 0, p.width).astype(np.intp)
    runs = np.diff(starts, axis=1, prepend=0, append=p.width).ravel()
    mats = p.style.ground_lut[state]
    # Colours repeat as packed 32-bit RGBA (numpy repeats 3-byte items slowly), then alpha is dropped.
    rgba = np.repeat(p.style.ground_rgba[mats].ravel(), runs).view(np.uint8).reshape(n, p.width, 4)
    cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB, dst=p.image[ground_top:])
    p.truth[ground_top:] = np.repeat(_GROUND_CATEGORY[mats].ravel(), runs).reshape(n, p.width)


def _draw_building(p: _Painter, side: int, x: float, z0: float, z1: float, height: float, rnd: _Rand) -> None:
    colour, cat = _scaled(rnd.colour(_FACADES), p.style.side_light[side]), Category.CONSTRUCTION
    near = max(z0, Z_NEAR_M)
    n = 2 + int((z1 - near) / FACADE_STEP_M)
    zs = [near + (z1 - near) * i / (n - 1) for i in range(n)]
    p.fill([(x, 0.0, z) for z in zs] + [(x, height, z) for z in reversed(zs)], colour, cat)
    if z0 >= Z_NEAR_M:  # the end wall, seen across the gap to the next building
        p.upright(x + side * BUILDING_DEPTH_M / 2, 0, height, BUILDING_DEPTH_M / 2, BUILDING_DEPTH_M / 2, z0,
                  _scaled(colour, 0.7), cat)
    floors = np.arange(WINDOW_SILL_M, height - WINDOW_DY[-1] - WINDOW_SILL_M, FLOOR_M)  # stop below the roof
    cols = np.arange(near + WINDOW_PITCH_M / 3, z1 - WINDOW_DZ[1], WINDOW_PITCH_M)
    if floors.size and cols.size:  # all windows at once: one vectorised projection, one fill call
        zz = cols[:, None] + WINDOW_DZ  # (column, corner)
        u = np.broadcast_to(p.cx + p.f * (x - 0.5 * p.curve * zz * zz) / zz, (floors.size, *zz.shape))
        v = p.horizon + p.f * (CAM_HEIGHT_M - (floors[:, None, None] + WINDOW_DY)) / zz
        polys = list(np.stack([u, v], axis=-1).round().astype(np.int32).reshape(-1, len(WINDOW_DZ), 2))
        glass = _scaled(_GLASS, rnd.uniform(0.8, 2.2))  # some windows reflect the sky
        cv2.fillPoly(p.image, polys, glass, cv2.LINE_8)
        cv2.fillPoly(p.truth, polys, int(cat), cv2.LINE_8)


def _paint_buildings(p: _Painter) -> None:
    """Rows of buildings along both sides, far to near: they are behind everything else on the street."""
    for side, key, setback, density in ((1, _Key.BUILDING_R, 1.0, 0.85), (-1, _Key.BUILDING_L, 2.5, 0.6)):
        edge, shift, cell = (ROAD_RIGHT_X if side > 0 else ROAD_LEFT_X) + side * SIDEWALK_M, -p.travelled, \
            BUILDING_CELL_M
        for k in range(math.floor((Z_FAR_M - shift) / cell), math.floor((Z_NEAR_M - shift) / cell) - 1, -1):
            rnd = _Rand(p.style.seed, key, k)
            z0, z1 = k * cell + shift + rnd.uniform(0, 5), (k + 1) * cell + shift - rnd.uniform(0, 3)
            x, height = edge + side * rnd.uniform(setback, setback + 3), rnd.uniform(7, 24)
            if rnd.uniform() < density and z1 > Z_NEAR_M and z0 < Z_FAR_M:
                _draw_building(p, side, x, z0, z1, height, rnd)


def _draw_tree(p: _Painter, x: float, z: float, rnd: _Rand) -> None:
    trunk, radius = rnd.uniform(1.8, 3.0), rnd.uniform(1.4, 2.8)
    p.upright(x, 0, trunk + radius, 0.18, 0.18, z, rnd.colour([(90, 70, 50)]), Category.NATURE)
    for dx, dy, k in ((-0.55, 0.7, 0.7), (0.55, 0.8, 0.75), (0.0, 1.2, 1.0)):
        p.disc(x + dx * radius, trunk + dy * radius, z, k * radius, rnd.colour(_GREENS), Category.NATURE)


def _draw_lamp(p: _Painter, x: float, z: float, rnd: _Rand) -> None:
    top, reach, cat = rnd.uniform(6.5, 8.5), -math.copysign(1.8, x), Category.OBJECT  # arm over the road
    grey = rnd.colour([(110, 112, 115)])
    p.upright(x, 0, top, 0.12, 0.12, z, grey, cat)
    p.fill(((x, top - 0.15, z), (x + reach, top, z), (x + reach, top + 0.15, z), (x, top, z)), grey, cat)
    p.upright(x + reach, top - 0.2, top + 0.1, 0.35, 0.35, z, _DARK, cat)


def _draw_sign(p: _Painter, x: float, z: float, rnd: _Rand) -> None:
    kind, y, cat = int(rnd.uniform(0, 4)), 2.7, Category.OBJECT
    p.upright(x, 0, 2.3, 0.07, 0.07, z, rnd.colour([(140, 140, 145)]), cat)
    if kind == 0:  # prohibition: red ring
        p.disc(x, y, z, 0.4, _SIGN_RED, cat)
        p.disc(x, y, z, 0.3, _SIGN_WHITE, cat)
    elif kind == 1:  # information: blue square
        p.upright(x, y - 0.38, y + 0.38, 0.38, 0.38, z, _SIGN_BLUE, cat)
    elif kind == 2:  # warning: triangle
        p.upright(x, y - 0.35, y + 0.45, 0.45, 0.0, z, _SIGN_RED, cat)
    else:  # traffic light: dark box with one lamp lit
        lit = int(rnd.uniform(0, len(_SIGNAL_LAMPS)))
        p.upright(x, y - 0.45, y + 0.6, 0.2, 0.2, z, _DARK, cat)
        p.disc(x, y + 0.35 * (1 - lit), z, 0.12, _SIGNAL_LAMPS[lit], cat)


def _draw_person(p: _Painter, x: float, z: float, rnd: _Rand) -> None:
    h, cat = rnd.uniform(1.55, 1.9), Category.HUMAN
    shirt, legs, skin = rnd.colour(_CLOTHES), rnd.colour(_CLOTHES[:6]), rnd.colour(_SKIN)
    swing = 0.22 * math.sin(2 * math.pi * WALK_MPS * p.t / STRIDE_M + rnd.uniform(0, 2 * math.pi))
    hip, shoulder = 0.5 * h, 0.8 * h
    if p.f * h / z < PERSON_DETAIL_PX:  # too small for limbs to show: a silhouette
        p.upright(x, 0, shoulder, 0.17, 0.21, z, shirt, cat)
    else:
        for s in (-1, 1):  # legs scissor and arms swing against them
            foot, hand = x + s * (0.1 + swing), x + s * (0.26 - 0.5 * swing)
            p.fill(((x + s * 0.03, hip, z), (x + s * 0.17, hip, z), (foot + 0.06, 0, z), (foot - 0.06, 0, z)),
                   legs, cat)
            p.fill(((x + s * 0.17, shoulder, z), (x + s * 0.25, shoulder, z), (hand + 0.04, 0.45 * h, z),
                    (hand - 0.04, 0.45 * h, z)), shirt, cat)
        p.upright(x, hip - 0.05, shoulder + 0.03, 0.17, 0.21, z, shirt, cat)
    p.disc(x, 0.9 * h, z, 0.09 * h, skin, cat)


def _draw_car(p: _Painter, x: float, z: float, rnd: _Rand, rear: bool) -> None:
    """A box car: the side facing the camera axis, then the end facing the camera (rear or front)."""
    w, length, paint = rnd.uniform(0.85, 0.98), rnd.uniform(3.9, 4.8), rnd.colour(_PAINTS)  # w: half-width
    cat = Category.VEHICLE
    sill, belt, roof = 0.3, rnd.uniform(0.9, 1.0), rnd.uniform(1.4, 1.55)
    detail = p.f * w / z >= CAR_DETAIL_PX  # wheels, lights and plate would be a pixel or two
    if abs(x) > w + 0.3:
        s, far = x - math.copysign(w, x), z + length
        p.side(s, sill, belt, z, far, paint, cat)
        p.fill(((s, belt, z + 0.9), (s, roof, z + 1.6), (s, roof, far - 1.2), (s, belt, far - 0.6)), _GLASS,
               cat)  # side windows
        for wheel in (z + 0.8, far - 0.8) if detail else ():
            p.side(s, 0, 0.62, wheel - 0.33, wheel + 0.33, _TYRE, cat)
    for wheel, half in ((-w + 0.25, 0.15), (w - 0.25, 0.15)) if detail else ((0.0, w - 0.1),):
        p.upright(x + wheel, 0, sill + 0.1, half, half, z, _TYRE, cat)
    p.upright(x, sill, belt, w, w, z, paint, cat)
    p.upright(x, belt, roof, 0.92 * w, 0.72 * w, z + 0.4, paint, cat)  # cabin, set back from the bumper
    p.upright(x, belt + 0.05, roof - 0.07, 0.8 * w, 0.64 * w, z + 0.4, _GLASS, cat)
    if detail:
        for s in (-1, 1):
            p.upright(x + s * (w - 0.21), belt - 0.22, belt - 0.06, 0.13, 0.13, z,
                      (200, 30, 30) if rear else (240, 240, 210), cat)
        p.upright(x, 0.4, 0.52, 0.25, 0.25, z, _PLATE, cat)


# Rows of street furniture, people and cars: key, lateral x, cell length, density, speed, farthest,
# lateral reach (to skip things wholly out of view; cars stretch along z, so they are always drawn), draw.
_RIGHT_WALK, _LEFT_WALK, _ALWAYS_M = ROAD_RIGHT_X + CURB_M, ROAD_LEFT_X - CURB_M, 1e3
_STREET_ROWS: tuple[tuple[Any, ...], ...] = (
    (_Key.TREE_R, _RIGHT_WALK + SIDEWALK_M + 0.6, 14, 0.5, 0, Z_FAR_M, 4.5, _draw_tree),
    (_Key.TREE_L, _LEFT_WALK - SIDEWALK_M - 1.4, 9, 0.7, 0, Z_FAR_M, 4.5, _draw_tree),
    (_Key.LAMP_R, _RIGHT_WALK + 0.3, 26, 0.9, 0, Z_FAR_M, 2.6, _draw_lamp),
    (_Key.LAMP_L, _LEFT_WALK - 0.3, 26, 0.9, 0, Z_FAR_M, 2.6, _draw_lamp),
    (_Key.SIGN_R, _RIGHT_WALK + 0.5, 30, 0.7, 0, Z_FAR_M, 0.6, _draw_sign),
    (_Key.SIGN_L, _LEFT_WALK - 0.5, 35, 0.6, 0, Z_FAR_M, 0.6, _draw_sign),
    (_Key.PED_RI, _RIGHT_WALK + 1.0, 5.5, 0.85, WALK_MPS, 55, 0.7, _draw_person),
    (_Key.PED_RO, _RIGHT_WALK + 2.2, 6.5, 0.7, -WALK_MPS, 55, 0.7, _draw_person),
    (_Key.PED_LI, _LEFT_WALK - 1.0, 5.5, 0.85, -WALK_MPS, 55, 0.7, _draw_person),
    (_Key.PED_LO, _LEFT_WALK - 2.2, 6.5, 0.7, WALK_MPS, 55, 0.7, _draw_person),
    (_Key.PARKED, (PARKING_LINE_X + ROAD_RIGHT_X) / 2, 7.5, 0.5, 0, Z_FAR_M, _ALWAYS_M,
     partial(_draw_car, rear=True)),
    (_Key.ONCOMING, CENTRE_LINE_X - LANE_M / 2, 40, 0.7, -ONCOMING_MPS, Z_FAR_M, _ALWAYS_M,
     partial(_draw_car, rear=False)),
)


def _paint_street(p: _Painter) -> None:
    """Everything between the buildings and the camera, painted back to front."""
    items = [(z, partial(draw, p, x, z, rnd))
             for key, x, cell, density, speed, z_max, reach, draw in _STREET_ROWS
             for z, rnd in _spots(p, key, cell, density, speed, z_max)
             if p.uv(x + reach, 0, z)[0] >= 0 and p.uv(x - reach, 0, z)[0] < p.width]
    lead_z = LEAD_Z_M + LEAD_SWING_M * math.sin(2 * math.pi * p.t / LEAD_PERIOD_S + p.style.lead_phase)
    items.append((lead_z, partial(_draw_car, p, 0.0, lead_z, _Rand(p.style.seed, _Key.LEAD), rear=True)))
    for _, draw in sorted(items, key=lambda item: -item[0]):
        draw()


def _paint_bonnet(p: _Painter) -> None:
    """The ego car's bonnet: void, as Cityscapes labels the ego vehicle."""
    u = np.linspace(0, p.width, 17)
    edge = np.stack([u, p.height * (1 - BONNET_FRAC + BONNET_SAG_FRAC * ((u - p.cx) / p.cx) ** 2)], axis=1)
    body = np.vstack([edge, [[p.width, p.height], [0, p.height]]])
    gloss = np.vstack([edge, np.add(edge[::-1], [0, 0.25 * BONNET_FRAC * p.height])])  # highlight on top
    for poly, colour in ((body, p.style.bonnet), (gloss, _scaled(p.style.bonnet, 1.35))):
        cv2.fillPoly(p.image, [poly.round().astype(np.int32)], colour, cv2.LINE_8)
        cv2.fillPoly(p.truth, [poly.round().astype(np.int32)], int(Category.VOID), cv2.LINE_8)


def check_drive_args(seed: int, width: int, height: int, fps: float) -> None:
    """ValueError naming the first bad argument of a synthetic drive."""
    for name, value, lo, hi in (("seed", seed, 0, 2**63 - 1), ("width", width, 64, 8192),
                                ("height", height, 32, 8192)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise ValueError(f"synthetic drive: {name} must be an integer in [{lo}, {hi}], got {value!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (0 < fps <= 1000):  # NaN fails too
        raise ValueError(f"synthetic drive: fps must be a number in (0, 1000], got {fps!r}")


class SyntheticDrive:
    """A deterministic procedural drive: ``render(i)`` gives frame i and its exact truth."""

    def __init__(self, seed: int = 0, width: int = 512, height: int = 256, fps: float = 15.0) -> None:
        check_drive_args(seed, width, height, fps)
        self.seed, self.width, self.height, self._fps = int(seed), int(width), int(height), float(fps)
        self._style = _Style(self.seed)
        # Sensor grain and soft light patches, made once; each frame takes a random window of them.
        rng = np.random.default_rng((self.seed, self.width, self.height))
        shape = (self.height + GRAIN_PAD, self.width + GRAIN_PAD)
        small = rng.normal(0, BLOTCH_SIGMA, (shape[0] // BLOTCH_CELL_PX + 2, shape[1] // BLOTCH_CELL_PX + 2))
        blotch = cv2.resize(small.astype(np.float32), shape[::-1], interpolation=cv2.INTER_CUBIC)
        self._grain = (rng.normal(0, GRAIN_SIGMA, (*shape, 3)) + blotch[..., None]).round().astype(np.int16)

    @property
    def fps(self) -> float:
        return self._fps

    def render(self, index: int, *, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``index`` as (HxWx3 uint8 RGB, HxW uint8 Category ids).

        ``noise=False`` skips grain and lighting so image colours are exactly the
        drawn ones (for tests); the truth is the same either way.
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"synthetic drive: frame index must be a non-negative integer, got {index!r}")
        p = _Painter(self._style, self.width, self.height, index / self._fps)
        ground_top = min(self.height, max(0, math.floor(p.horizon) + 1))  # first row wholly below the horizon
        for paint in (_paint_sky, _paint_treeline, _paint_ground):
            paint(p, ground_top)
        _paint_buildings(p)
        _paint_street(p)
        _paint_bonnet(p)
        return (self._expose(p.image, int(index), p.t) if noise else p.image), p.truth

    def camera(self, index: int) -> DriveCamera:
        """The camera of frame ``index`` (its horizon moves with the pitch wobble) and the road's layout."""
        return frame_camera(_Painter(self._style, self.width, self.height, index / self._fps))

    def _expose(self, image: np.ndarray, index: int, t: float) -> np.ndarray:
        rng = np.random.default_rng((self.seed, index))
        dy, dx = rng.integers(0, GRAIN_PAD, 2)
        gain = 1 + GAIN_SWING * math.sin(2 * math.pi * t / GAIN_PERIOD_S + self._style.light_phase)
        lit = cv2.LUT(image, np.clip(np.arange(256) * gain, 0, 255).astype(np.uint8))
        return cv2.add(lit, self._grain[dy : dy + self.height, dx : dx + self.width], dtype=cv2.CV_8U)


