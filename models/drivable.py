"""Drivable space from a frame's masks, for planners that do not want full masks (issue 10).

Pure numpy on masks at the frame's size; no torch. Inputs:

- ``categories``: HxW integer category ids (:class:`models.classes.Category`), the mask
  every model publishes (after any static void mask of the camera);
- ``road``: HxW bool, the drivable-road layer of a model with a Cityscapes road class
  (:func:`road_mask`; from logits: :func:`models.networks.category_head.split_layers`).
  A model without one has no road layer: pass None, and the road fields are None.

Free-space boundary, per image column ``x`` (rows count from 0 at the top): scan up from
the bottom row while the pixels are road; the boundary is the topmost row of that run, so
rows ``boundary..H-1`` of the column are all road and row ``boundary - 1`` (if any) is not.
``H`` when the bottom pixel is not road (no free road from the vehicle's edge of the image),
``0`` when the whole column is road.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.classes import CLASS_NAMES, NUM_CLASSES, ROAD_LAYER, Category


def road_mask(categories: np.ndarray, road_preferred: np.ndarray) -> np.ndarray:
    """The road layer: pixels whose category is flat and where road outscores the other flat
    classes (``road_preferred``). Applied to an existing road mask with the final categories
    (e.g. after a void mask), it removes road wherever the pixel is no longer flat."""
    _check_pair(categories, road_preferred)
    return (categories == Category.FLAT) & road_preferred


def free_space_rows(road: np.ndarray) -> np.ndarray:
    """(W,) int32: per column, the topmost row of the unbroken run of road pixels that starts at
    the bottom row; H where the bottom pixel is not road (see the module doc)."""
    if road.ndim != 2 or road.dtype != np.bool_ or 0 in road.shape:
        raise ValueError(f"road must be a non-empty HxW bool mask, got {road.dtype} {road.shape}")
    height = road.shape[0]
    blocked = ~road[::-1]  # row 0 is now the bottom of the image
    # argmax finds the first non-road pixel from the bottom (0 when there is none: checked by any).
    run = np.where(blocked.any(axis=0), blocked.argmax(axis=0), height)
    return (height - run).astype(np.int32)


@dataclass(frozen=True, slots=True)
class DrivableSpace:
    """What a planner needs of one mask. Plain ints, floats and tuples: hashable, comparable,
    and encodable as they are (JSON lists, or ``np.asarray(free_rows, np.uint16)`` bytes)."""

    height: int  # of the mask (the frame), in pixels
    width: int
    category_fractions: tuple[float, ...]  # share of the frame's pixels per category, in CLASS_NAMES order
    road_fraction: float | None  # share of pixels in the road layer; None: the model has no road class
    free_rows: tuple[int, ...] | None  # per column (width entries), see free_space_rows; None: no road class

    @property
    def has_road(self) -> bool:
        return self.free_rows is not None

    def fractions(self) -> dict[str, float]:
        """Area fractions by name: the 8 categories, plus ``road`` when there is a road layer."""
        named = dict(zip(CLASS_NAMES, self.category_fractions, strict=True))
        if self.road_fraction is not None:
            named[ROAD_LAYER] = self.road_fraction
        return named


def drivable_space(categories: np.ndarray, road: np.ndarray | None = None) -> DrivableSpace:
    """Area fractions of ``categories`` and, with a ``road`` layer, its fraction and per-column
    free-space boundary. ValueError for masks of the wrong shape, type or ids."""
    if road is None:
        _check_categories(categories)
    else:
        _check_pair(categories, road)
    height, width = categories.shape
    pixels = height * width
    if categories.min() < 0 or categories.max() >= NUM_CLASSES:
        raise ValueError(f"categories hold ids outside 0..{NUM_CLASSES - 1}")
    counts = np.bincount(categories.ravel(), minlength=NUM_CLASSES)
    fractions = tuple(float(c) / pixels for c in counts)
    if road is None:
        return DrivableSpace(height, width, fractions, None, None)
    road_fraction = float(np.count_nonzero(road)) / pixels
    return DrivableSpace(height, width, fractions, road_fraction, tuple(free_space_rows(road).tolist()))


def _check_categories(categories: np.ndarray) -> None:
    if categories.ndim != 2 or 0 in categories.shape or not np.issubdtype(categories.dtype, np.integer):
        raise ValueError(f"categories must be a non-empty HxW integer mask, got {categories.dtype} {categories.shape}")


def _check_pair(categories: np.ndarray, road: np.ndarray) -> None:
    _check_categories(categories)
    if road.dtype != np.bool_ or road.shape != categories.shape:
        raise ValueError(f"road must be a bool mask of the categories' shape {categories.shape}, "
                         f"got {road.dtype} {road.shape}")
