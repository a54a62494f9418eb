"""The Cityscapes category IoU, exactly as cityscapesScripts computes it.

``evalPixelLevelSemanticLabeling.getIouScoreForCategory`` scores a category over the labelIds
of that category that are not ``ignoreInEval``, and counts false positives only on truth
labels that are not ignored: the ignored labels of a category (parking, rail track, guard
rail, bridge, tunnel, polegroup, caravan, trailer) are neither hits, misses nor false alarms.
The reference below is that function, written against raw labelIds, independent of
:mod:`models.classes`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.classes import IGNORE, Category, label_ids_to_categories
from models.evaluation import metrics
from models.training.losses import segmentation_loss
from stream.telemetry import format_summary, iou_summary

# cityscapesScripts labels.py: labelId -> (categoryId, ignoreInEval), labels 0..33.
LABELS = {
    **{i: (0, True) for i in range(7)},
    7: (1, False), 8: (1, False), 9: (1, True), 10: (1, True),
    11: (2, False), 12: (2, False), 13: (2, False), 14: (2, True), 15: (2, True), 16: (2, True),
    17: (3, False), 18: (3, True), 19: (3, False), 20: (3, False),
    21: (4, False), 22: (4, False), 23: (5, False), 24: (6, False), 25: (6, False),
    26: (7, False), 27: (7, False), 28: (7, False), 29: (7, True), 30: (7, True),
    31: (7, False), 32: (7, False), 33: (7, False),
}
ROAD, PARKING, SKY, CAR, TRAILER, UNLABELED = 7, 9, 23, 26, 30, 0
F, S, V = Category.FLAT, Category.SKY, Category.VEHICLE

# A hand-made 4x4 frame: labelIds and the categories a model predicted.
LABEL_IDS = np.array([
    [ROAD, ROAD, ROAD, ROAD],
    [PARKING, PARKING, CAR, CAR],
    [CAR, TRAILER, TRAILER, SKY],
    [SKY, SKY, UNLABELED, UNLABELED],
], np.uint8)
PREDICTED = np.array([
    [F, F, F, F],
    [F, V, V, V],  # parking called flat and vehicle: ignored either way
    [F, F, F, S],  # a car called flat (a miss); trailers called flat: ignored
    [S, S, F, F],  # unlabeled (void) called flat: ignored by category IoU, counted by mean IoU
], np.uint8)
# flat: TP 4 road, FP 1 car; vehicle: TP 2, FN 1 car; sky: 3/3. Counting parking as flat and
# trailers as vehicle (the old table) gives flat 5/9, vehicle 2/6, category IoU 0.630.
EXPECTED_CATEGORY_IOU = (4 / 5 + 2 / 3 + 1.0) / 3


def official_category_iou(label_ids: np.ndarray, predicted: np.ndarray) -> tuple[float, dict[int, float]]:
    """cityscapesScripts getIouScoreForCategory and getScoreAverage on one frame (predictions
    are categories, so "predicted a label of the category" is "predicted the category")."""
    scores = {}
    for category in range(1, 8):
        ids = [i for i, (c, ignored) in LABELS.items() if c == category and not ignored]
        others = [i for i, (c, ignored) in LABELS.items() if c != category and not ignored]
        in_category, in_others = np.isin(label_ids, ids), np.isin(label_ids, others)
        tp = np.count_nonzero(in_category & (predicted == category))
        fn = np.count_nonzero(in_category) - tp
        fp = np.count_nonzero(in_others & (predicted == category))
        if tp + fp + fn:
            scores[category] = float(tp / (tp + fp + fn))
    return float(np.mean(list(scores.values()))), scores


def test_hand_made_frame_ignores_parking_and_trailer_like_cityscapes_scripts():
    official, per_category = official_category_iou(LABEL_IDS, PREDICTED)
    assert official == pytest.approx(EXPECTED_CATEGORY_IOU, abs=1e-12)
    truth = label_ids_to_categories(LABEL_IDS)
    assert np.count_nonzero(truth == IGNORE) == 4  # 2 parking + 2 trailer
    cm = metrics.confusion_matrix(truth, PREDICTED)
    assert cm.sum() == LABEL_IDS.size - 4
    assert metrics.category_iou(cm) == pytest.approx(EXPECTED_CATEGORY_IOU, abs=1e-12)
    void_ignored = metrics.per_class_iou_void_ignored(cm)
    assert np.isnan(void_ignored[Category.VOID])
    for category, score in per_category.items():
        assert void_ignored[category] == pytest.approx(score, abs=1e-12), category
    # Void included: the 2 unlabeled pixels called flat are false positives of flat.
    assert metrics.per_class_iou(cm)[F] == pytest.approx(4 / 7)


def test_live_pipeline_summary_uses_the_same_numbers_and_labels():
    cm = metrics.confusion_matrix(label_ids_to_categories(LABEL_IDS), PREDICTED)
    summary = iou_summary(cm)
    assert summary["category_iou"] == pytest.approx(EXPECTED_CATEGORY_IOU, abs=1e-12)
    assert summary["per_class_void_ignored"]["flat"] == pytest.approx(0.8)
    assert summary["per_class_void_ignored"]["void"] is None
    assert summary["per_class"]["flat"] == pytest.approx(4 / 7)
    text = format_summary({"frames": 1, "fps": 1.0, "latency_ms": {}, "iou": summary, "dropped_total": 0,
                           "dropped": {}, "errors": []})
    assert f"{metrics.CATEGORY_IOU_LABEL}    {100 * EXPECTED_CATEGORY_IOU:.2f}" in text
    assert f"{metrics.VOID_IGNORED_LABEL}: void n/a  flat 80.00" in text
    assert f"{metrics.VOID_INCLUDED_LABEL}: void 0.00  flat 57.14" in text


def test_training_loss_does_not_see_ignored_labels():
    """Parking and trailer pixels carry no gradient: the loss is the same whatever the model says there."""
    target = torch.from_numpy(label_ids_to_categories(LABEL_IDS).astype(np.int64))[None]
    torch.manual_seed(0)
    logits = torch.randn(1, 8, 4, 4)
    changed = logits.clone()
    changed[0, :, target[0] == IGNORE] = torch.randn(8, 4) * 10
    for void_trainable in (True, False):
        base, _ = segmentation_loss(logits, target, dice_weight=0.5, void_trainable=void_trainable)
        other, _ = segmentation_loss(changed, target, dice_weight=0.5, void_trainable=void_trainable)
        assert float(other) == pytest.approx(float(base), abs=1e-6)


def test_real_dabnet_frames_match_the_official_formula(dabnet_checkpoint, cityscapes_root):
    """On real labelIds (which hold parking, guard rail, polegroup...) eval's category IoU and each
    category's IoU equal cityscapesScripts' on the same predictions (1024x512 input: cheap)."""
    import cv2

    from models.backends import TorchBackend
    from models.evaluation.evaluate import evaluate, list_frames
    from models.store.checkpoint import load_checkpoint

    frames = 4
    loaded = load_checkpoint(dabnet_checkpoint)
    result = evaluate("dabnet", cityscapes_root, size=(1024, 512), limit=frames, loaded=loaded, progress=False,
                      panels=0, device="cpu", precision="fp32")
    backend = TorchBackend(*loaded, device="cpu", precision="fp32", input_size=(1024, 512))
    label_ids, predicted = [], []
    for image_path, truth_path in list_frames(cityscapes_root, "val", None, frames):
        rgb = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
        label_ids.append(cv2.imread(str(truth_path), cv2.IMREAD_UNCHANGED))
        predicted.append(backend.infer([rgb]).masks[0])
    ignored_in_a_category = [i for i, (category, ignored) in LABELS.items() if ignored and category]
    assert np.isin(np.stack(label_ids), ignored_in_a_category).any(), "precondition: frames hold such labels"
    official, per_category = official_category_iou(np.stack(label_ids), np.stack(predicted))
    assert result.category_iou == pytest.approx(official, abs=1e-9)
    for category, score in per_category.items():
        assert result.per_class_iou_void_ignored[category] == pytest.approx(score, abs=1e-9)
    assert result.category_iou > 0.8  # the real weights, not a broken import (4 frames at half size: 0.83)
