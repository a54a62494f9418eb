"""The 8 output categories and the Cityscapes label tables that feed them.

Category ids equal the Cityscapes ``categoryId`` of ``labels.py`` so a
``gtFine_labelIds`` image maps to our classes with one table lookup.

Truth masks hold a category id, or :data:`IGNORE` where the pixel is scored and trained
by no one: the Cityscapes labels with ``ignoreInEval`` that belong to a real category
(parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer). The
official category metric leaves them out entirely (they are neither a hit, a miss nor a
false alarm of any category), and so does every roadseg metric and training loss; see
:data:`IGNORED_IN_EVAL`.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Category(IntEnum):
    VOID = 0
    FLAT = 1
    CONSTRUCTION = 2
    OBJECT = 3
    NATURE = 4
    SKY = 5
    HUMAN = 6
    VEHICLE = 7


NUM_CLASSES = len(Category)
CLASS_NAMES: tuple[str, ...] = tuple(c.name.lower() for c in Category)
# Truth value of pixels no metric or loss counts (not a category: masks a model predicts never
# hold it). Also the crop padding of training (models.training.augment.IGNORE_INDEX).
IGNORE = 255

# One RGB colour per category: the colour of each category's most common
# Cityscapes class, so overlays look familiar to anyone who has seen the dataset.
PALETTE = np.array(
    [
        (0, 0, 0),  # void
        (128, 64, 128),  # flat (road)
        (70, 70, 70),  # construction (building)
        (220, 220, 0),  # object (traffic sign; poles are too grey to see)
        (107, 142, 35),  # nature (vegetation)
        (70, 130, 180),  # sky
        (220, 20, 60),  # human (person)
        (0, 0, 142),  # vehicle (car)
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

# Cityscapes labelId (0..33) -> category, from cityscapesscripts/helpers/labels.py.
_LABEL_ID_CATEGORY: dict[int, Category] = {
    **{i: Category.VOID for i in range(0, 7)},  # unlabeled, ego vehicle, border, roi, static, dynamic, ground
    **{i: Category.FLAT for i in (7, 8, 9, 10)},  # road, sidewalk, parking, rail track
    **{i: Category.CONSTRUCTION for i in range(11, 17)},  # building .. tunnel
    **{i: Category.OBJECT for i in (17, 18, 19, 20)},  # pole, polegroup, traffic light, traffic sign
    **{i: Category.NATURE for i in (21, 22)},  # vegetation, terrain
    23: Category.SKY,
    **{i: Category.HUMAN for i in (24, 25)},  # person, rider
    **{i: Category.VEHICLE for i in range(26, 34)},  # car .. bicycle
}

# labelIds that labels.py marks ignoreInEval although their category is not void. The official
# category IoU (cityscapesScripts getIouScoreForCategory) skips their pixels in TP, FN and FP
# alike, so they become IGNORE, not void: void-truth pixels still count in roadseg's "void
# included" mean IoU, these count nowhere. Training skips them too, as the 19-class Cityscapes
# recipe does (trainId 255), so a model learns exactly the pixels it is scored on; mapping them
# to void instead would teach models that predict void to call trailers and tunnels void.
IGNORED_IN_EVAL: dict[int, str] = {
    9: "parking", 10: "rail track", 14: "guard rail", 15: "bridge", 16: "tunnel", 18: "polegroup",
    29: "caravan", 30: "trailer",
}

# Lookup table over all 256 uint8 values; ids Cityscapes does not define map to void.
LABEL_ID_TO_CATEGORY = np.zeros(256, dtype=np.uint8)
for _label_id, _category in _LABEL_ID_CATEGORY.items():
    LABEL_ID_TO_CATEGORY[_label_id] = IGNORE if _label_id in IGNORED_IN_EVAL else _category
LABEL_ID_TO_CATEGORY.setflags(write=False)

# Cityscapes trainId (0..18) -> category, for models trained on the 19 classes.
TRAIN_ID_TO_CATEGORY = np.array(
    [
        Category.FLAT, Category.FLAT,  # road, sidewalk
        Category.CONSTRUCTION, Category.CONSTRUCTION, Category.CONSTRUCTION,  # building, wall, fence
        Category.OBJECT, Category.OBJECT, Category.OBJECT,  # pole, traffic light, traffic sign
        Category.NATURE, Category.NATURE,  # vegetation, terrain
        Category.SKY,
        Category.HUMAN, Category.HUMAN,  # person, rider
        *([Category.VEHICLE] * 6),  # car, truck, bus, train, motorcycle, bicycle
    ],
    dtype=np.uint8,
)
TRAIN_ID_TO_CATEGORY.setflags(write=False)


# Output layers a model may offer beside the category mask (its card's ``layers``; see
# models.networks.factory.family_layers). "road": the drivable-road layer, road told apart from the
# rest of flat (sidewalk; parking is not among the 19 classes), from a model with a Cityscapes road class.
ROAD_LAYER = "road"
LAYERS: tuple[str, ...] = (ROAD_LAYER,)
ROAD_LABEL_ID = 7  # Cityscapes labelId of road (trainId 0)
ROAD_TRAIN_ID = 0

# Road truth over all 256 uint8 labelIds: 1 road, 0 any other scored label, IGNORE where Cityscapes
# scores no class (every labelId with ignoreInEval: the void labels 0..6 and IGNORED_IN_EVAL, parking
# included, and ids it does not define). The same pixels its road class IoU leaves out.
LABEL_ID_TO_ROAD = np.full(256, IGNORE, dtype=np.uint8)
for _label_id, _category in _LABEL_ID_CATEGORY.items():
    if _category != Category.VOID and _label_id not in IGNORED_IN_EVAL:
        LABEL_ID_TO_ROAD[_label_id] = int(_label_id == ROAD_LABEL_ID)
LABEL_ID_TO_ROAD.setflags(write=False)


def _as_uint8_label_ids(label_ids: np.ndarray) -> np.ndarray:
    if label_ids.dtype != np.uint8:
        # Negative ids (license plate, -1) and anything >255 are void by definition.
        label_ids = np.where((label_ids < 0) | (label_ids > 255), 0, label_ids).astype(np.uint8)
    return label_ids


def label_ids_to_road(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``labelIds`` image to road truth (uint8): 1 road, 0 not road, :data:`IGNORE`
    where the Cityscapes road IoU counts nothing (:data:`LABEL_ID_TO_ROAD`)."""
    return LABEL_ID_TO_ROAD[_as_uint8_label_ids(label_ids)]


def label_ids_to_categories(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``labelIds`` image (any int dtype) to category ids (uint8), with
    :data:`IGNORE` for the :data:`IGNORED_IN_EVAL` labels. The one place truth is folded:
    eval, the live pipeline's IoU and training all read Cityscapes truth through it."""
    return LABEL_ID_TO_CATEGORY[_as_uint8_label_ids(label_ids)]


# PALETTE over all 256 uint8 values: IGNORE (and any other non-category id) draws as void.
_PALETTE_256 = np.zeros((256, 3), dtype=np.uint8)
_PALETTE_256[: len(PALETTE)] = PALETTE
_PALETTE_256.setflags(write=False)


def colorize(mask: np.ndarray) -> np.ndarray:
    """HxW uint8 category mask -> HxWx3 uint8 RGB using :data:`PALETTE` (IGNORE as void)."""
    return _PALETTE_256[mask]
