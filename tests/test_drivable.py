"""The drivable-road layer (issue 10): road from the 19-class logits, free-space boundary, area
fractions. Hand-made masks and logits; no weights, no data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.classes import IGNORE, LABEL_ID_TO_ROAD, Category, label_ids_to_road
from models.drivable import DrivableSpace, drivable_space, free_space_rows, road_mask
from models.evaluation import metrics
from models.networks.category_head import (
    LAYER_CHANNELS,
    ROAD_MARGIN_CHANNEL,
    TRAIN_ID_TABLE,
    CategoryFold,
    RoadPreference,
    road_layer_forward,
    split_layers,
)

R, N = True, False
F_, V, S, VOID = Category.FLAT, Category.VEHICLE, Category.SKY, Category.VOID
ROAD, SIDEWALK, CAR = 0, 1, 13  # trainIds


def test_free_space_rows_scan_up_from_the_bottom_until_the_first_non_road_pixel():
    road = np.array([
        [N, R, N, R, N],
        [R, R, N, R, N],
        [N, R, R, R, N],  # column 0: road at rows 1 and 3, broken at 2: only row 3 counts
        [R, R, R, N, N],  # column 3: bottom pixel not road: boundary H, whatever is above
    ])
    assert free_space_rows(road).tolist() == [3, 0, 2, 4, 4]
    assert free_space_rows(road).dtype == np.int32
    assert free_space_rows(np.ones((1, 3), bool)).tolist() == [0, 0, 0]
    assert free_space_rows(np.zeros((6, 2), bool)).tolist() == [6, 6]


@pytest.mark.parametrize("bad", [np.zeros((3, 3), np.uint8), np.zeros((3,), bool), np.zeros((0, 4), bool)])
def test_free_space_rows_refuses_what_is_not_a_bool_mask(bad):
    with pytest.raises(ValueError, match="HxW bool"):
        free_space_rows(bad)


def test_road_mask_is_inside_flat():
    categories = np.array([[F_, F_, V], [VOID, F_, S]], np.uint8)
    preferred = np.array([[R, N, R], [R, R, R]])
    assert road_mask(categories, preferred).tolist() == [[R, N, N], [N, R, N]]
    # Re-applied with the final categories (a void mask over the bonnet), it removes road there.
    bonnet = categories.copy()
    bonnet[1] = VOID
    assert road_mask(bonnet, road_mask(categories, preferred)).tolist() == [[R, N, N], [N, N, N]]


def test_drivable_space_fractions_and_boundary():
    categories = np.array([[S, S, S, S], [V, F_, F_, F_], [F_, F_, F_, F_]], np.uint8)
    road = np.array([[N, N, N, N], [N, R, N, R], [N, R, R, R]])
    space = drivable_space(categories, road)
    assert (space.height, space.width) == (3, 4)
    assert space.category_fractions == pytest.approx([0, 7 / 12, 0, 0, 0, 4 / 12, 0, 1 / 12])
    assert sum(space.category_fractions) == pytest.approx(1.0)
    assert space.road_fraction == pytest.approx(5 / 12)
    assert space.free_rows == (3, 1, 2, 1)
    assert space.has_road
    assert space.fractions()["road"] == pytest.approx(5 / 12) and space.fractions()["flat"] == pytest.approx(7 / 12)
    assert space == drivable_space(categories.astype(np.int64), road) and hash(space)  # plain values: comparable
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.road_fraction = 0.0  # type: ignore[misc]


def test_a_model_without_road_class_gets_fractions_only():
    space = drivable_space(np.full((2, 3), F_, np.uint8))
    assert space == DrivableSpace(2, 3, (0.0, 1.0, 0, 0, 0, 0, 0, 0), None, None)
    assert not space.has_road and "road" not in space.fractions()


def test_drivable_space_refuses_bad_masks():
    good = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match=r"outside 0\.\.7"):
        drivable_space(np.full((2, 2), 8, np.uint8))
    with pytest.raises(ValueError, match=r"outside 0\.\.7"):
        drivable_space(np.full((2, 2), -1, np.int32))
    with pytest.raises(ValueError, match="integer mask"):
        drivable_space(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="categories' shape"):
        drivable_space(good, np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="bool mask"):
        drivable_space(good, np.zeros((2, 2), np.uint8))


def _logits(seed: int = 0, size: tuple[int, int] = (6, 5)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, len(TRAIN_ID_TABLE), *size, generator=generator) * 4


def test_layers_carry_the_unchanged_categories_and_the_road_margin():
    fold = CategoryFold(torch.nn.Identity())
    logits = _logits()
    layers = fold.forward_native_layers(logits)
    assert layers.shape == (2, LAYER_CHANNELS, 6, 5)
    assert torch.equal(layers[:, :ROAD_MARGIN_CHANNEL], fold.forward_native(logits))
    assert torch.allclose(layers[:, ROAD_MARGIN_CHANNEL], logits[:, ROAD] - logits[:, SIDEWALK])
    assert road_layer_forward(fold) == fold.forward_native_layers


def test_split_layers_road_is_flat_where_road_beats_sidewalk():
    logits = torch.full((1, len(TRAIN_ID_TABLE), 1, 4), -10.0)
    logits[0, ROAD, 0] = torch.tensor([3.0, 1.0, 3.0, 2.0])
    logits[0, SIDEWALK, 0] = torch.tensor([1.0, 3.0, 1.0, 2.0])
    logits[0, CAR, 0, 2] = 5.0  # vehicle wins the pixel: not road, although road beats sidewalk
    labels, road = split_layers(CategoryFold(torch.nn.Identity()).forward_native_layers(logits))
    assert labels[0, 0].tolist() == [F_, F_, V, F_]
    assert road[0, 0].tolist() == [R, N, N, N]  # a tie goes to sidewalk: not drivable


def test_the_margin_upsamples_exactly_like_the_logits():
    """Upsampling the layers then splitting equals computing the margin on upsampled logits."""
    fold = CategoryFold(torch.nn.Identity())
    logits = _logits(1)
    up = F.interpolate(fold.forward_native_layers(logits), size=(24, 20), mode="bilinear", align_corners=False)
    full = F.interpolate(logits, size=(24, 20), mode="bilinear", align_corners=False)
    assert torch.allclose(up[:, ROAD_MARGIN_CHANNEL], full[:, ROAD] - full[:, SIDEWALK], atol=1e-5)
    labels, road = split_layers(up)
    assert torch.equal(road, (labels == F_) & (full[:, ROAD] - full[:, SIDEWALK] > 0))


def test_road_preference_argmax_is_the_sign_of_the_margin():
    fold = CategoryFold(torch.nn.Identity())
    logits = _logits(2)
    scores = RoadPreference(fold).forward_native(logits)
    assert scores.shape == (2, 2, 6, 5)
    assert torch.equal(scores.argmax(dim=1) == 1, logits[:, ROAD] > logits[:, SIDEWALK])


def test_a_fold_over_other_classes_has_no_road_layer():
    fold = CategoryFold(torch.nn.Identity(), table=(int(F_), int(S)))
    assert not fold.has_road and road_layer_forward(fold) is None
    assert road_layer_forward(torch.nn.Identity()) is None
    with pytest.raises(ValueError, match="no road class"):
        fold.forward_native_layers(torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="no road class"):
        RoadPreference(fold)


# cityscapesScripts labels.py: the labelIds with ignoreInEval (void 0..6 and eight labels of a category).
IGNORE_IN_EVAL = {0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30}


def test_road_truth_is_the_cityscapes_road_class_with_ignored_labels_left_out():
    for label_id in range(34):
        expected = IGNORE if label_id in IGNORE_IN_EVAL else int(label_id == 7)
        assert LABEL_ID_TO_ROAD[label_id] == expected, label_id
    assert (LABEL_ID_TO_ROAD[34:] == IGNORE).all()  # ids Cityscapes does not define
    assert label_ids_to_road(np.array([[-1, 7, 8, 1000]], np.int32)).tolist() == [[IGNORE, 1, 0, IGNORE]]


def test_road_iou_leaves_ignored_truth_out():
    truth = np.array([[1, 1, 0, IGNORE], [0, 0, 1, IGNORE]], np.uint8)
    road = np.array([[R, R, R, R], [N, N, N, N]])
    cm = metrics.road_confusion(truth, road)
    assert cm.tolist() == [[2, 1], [1, 2]]  # the road predicted on ignored truth counts nowhere
    assert metrics.road_iou(cm) == pytest.approx(2 / 4)
    assert np.isnan(metrics.road_iou(metrics.road_confusion(np.zeros((2, 2), np.uint8), np.zeros((2, 2), bool))))
