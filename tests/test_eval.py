"""``roadseg eval``: metrics from one summed confusion matrix, the report files, the CLI.

The ``demo`` model is trained on synthetic scenes, so its IoU on real frames is
low: these tests check the mechanics (every number against an independent numpy
computation), not accuracy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.backends import TorchBackend
from models.classes import CLASS_NAMES, IGNORE, LABEL_ID_TO_CATEGORY, NUM_CLASSES, Category, colorize
from models.errors import DatasetError
from models.evaluation import metrics
from models.evaluation.evaluate import PANEL_TILE_MAX_WIDTH, default_out_dir, evaluate
from models.evaluation.report import GAP, confusion_shape, panel_layout, write_report
from models.store.registry import load_model

ROADSEG = [sys.executable, "-m", "stream.cli"]
MINI_FRAME = "frankfurt_000000_000294"
JSON_FIELDS = {
    "roadseg_version", "torch_version", "model_spec", "model_id", "card_input_size", "input_size", "device",
    "precision", "split", "city", "frames", "batch", "classes", "per_class_iou", "dice", "mean_iou", "backend",
    "per_class_iou_void_ignored", "ignored_pixels",
    "category_iou", "pixel_accuracy", "confusion", "confusion_normalized", "images_per_s", "ms_per_image",
    "timing_ms_per_image", "panels",
}
# Deterministic settings shared by evaluate() and the independent reference below.
EXACT = {"device": "cpu", "precision": "fp32"}


@pytest.fixture(scope="module")
def demo():
    """Load the demo model once: its weights file may be replaced while tests run."""
    return load_model("demo")


def _frames(root: Path, split: str = "val") -> list[tuple[str, Path, Path]]:
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    return [(p.name.removesuffix("_leftImg8bit.png"), p,
             root / "gtFine" / split / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
            for p in images]


def _reference(demo, frames, size=None):
    """Predictions and truth computed here, independently of eval's loop: (truths, predictions)."""
    model, card = demo
    backend = TorchBackend(model, card, input_size=size, **EXACT)
    truths, predictions = [], []
    for _, image_path, truth_path in frames:
        rgb = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        truths.append(LABEL_ID_TO_CATEGORY[cv2.imread(str(truth_path), cv2.IMREAD_UNCHANGED)])
        predictions.append(backend.infer([rgb]).masks[0])
    return truths, predictions


def _numpy_iou(truths, predictions, ignore_void=False):
    """Per-class IoU over all frames (intersections and unions summed), NaN where absent;
    IGNORE truth pixels (Cityscapes labels ignored in evaluation) count nowhere."""
    inter = np.zeros(NUM_CLASSES)
    union = np.zeros(NUM_CLASSES)
    for truth, pred in zip(truths, predictions, strict=True):
        keep = (truth != Category.VOID) & (truth != IGNORE) if ignore_void else truth != IGNORE
        for c in range(NUM_CLASSES):
            t, p = (truth == c) & keep, (pred == c) & keep
            inter[c] += np.count_nonzero(t & p)
            union[c] += np.count_nonzero(t | p)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def _check_against_reference(body: dict, truths, predictions) -> None:
    iou = _numpy_iou(truths, predictions)
    assert body["mean_iou"] == pytest.approx(float(np.nanmean(iou)), abs=1e-6)
    for c, name in enumerate(CLASS_NAMES):
        got = body["per_class_iou"][name]
        assert (got is None) if np.isnan(iou[c]) else got == pytest.approx(iou[c], abs=1e-6), name
    category = _numpy_iou(truths, predictions, ignore_void=True)
    assert body["category_iou"] == pytest.approx(float(np.nanmean(category[1:])), abs=1e-6)
    for c, name in enumerate(CLASS_NAMES[1:], start=1):
        got = body["per_class_iou_void_ignored"][name]
        assert (got is None) if np.isnan(category[c]) else got == pytest.approx(category[c], abs=1e-6), name
    assert body["per_class_iou_void_ignored"]["void"] is None
    correct = sum(int(np.count_nonzero(t == p)) for t, p in zip(truths, predictions, strict=True))
    ignored = sum(int(np.count_nonzero(t == IGNORE)) for t in truths)
    pixels = sum(t.size for t in truths) - ignored
    assert body["pixel_accuracy"] == pytest.approx(correct / pixels, abs=1e-6)
    assert np.array(body["confusion"]).sum() == pixels  # scored at full label resolution
    assert body["ignored_pixels"] == ignored


def _check_dice(body: dict) -> None:
    for name in CLASS_NAMES:
        iou, dice = body["per_class_iou"][name], body["dice"][name]
        assert (dice is None) if iou is None else dice == pytest.approx(2 * iou / (1 + iou), abs=1e-5), name


def test_mini_metrics_json_matches_independent_numpy(tmp_path, cityscapes_mini, demo, no_leaked_threads):
    result = evaluate("demo", cityscapes_mini, loaded=demo, progress=False, **EXACT)
    write_report(result, tmp_path, panels=3)
    body = json.loads((tmp_path / "metrics.json").read_text())
    assert set(body) >= JSON_FIELDS
    _, card = demo
    assert body["frames"] == 1 and body["split"] == "val" and body["model_id"] == card.model_id
    assert body["card_input_size"] == body["input_size"] == list(card.input.size)  # default: native size
    assert body["device"] == "cpu" and body["precision"] == "fp32" and body["torch_version"]
    assert body["images_per_s"] > 0 and body["ms_per_image"] > 0
    assert body["classes"] == list(CLASS_NAMES)
    assert np.allclose(np.array(body["confusion_normalized"]).sum(axis=1)[np.array(body["confusion"]).sum(1) > 0], 1)
    truths, predictions = _reference(demo, _frames(cityscapes_mini))
    _check_against_reference(body, truths, predictions)
    _check_dice(body)
    # One frame, so one panel, named after it, tiles at the frame's own (small) size.
    assert body["panels"] == [f"{MINI_FRAME}_panel.png"]
    panel = cv2.imread(str(tmp_path / body["panels"][0]))
    layout = panel_layout(128, 256)
    assert panel.shape[:2] == (layout.height, layout.width)


def test_cityscapes_two_frames_resized_input_and_report_images(tmp_path, cityscapes_root, demo):
    size = (256, 128)  # not the native size: masks must still be scored at 2048x1024
    result = evaluate("demo", cityscapes_root, limit=2, size=size, panels=2, loaded=demo, progress=False, **EXACT)
    assert result.frames == 2 and result.input_size == size
    assert int(result.confusion.sum()) + result.ignored_pixels == 2 * 2048 * 1024
    write_report(result, tmp_path, panels=2)
    body = json.loads((tmp_path / "metrics.json").read_text())
    frames = _frames(cityscapes_root)[:2]
    truths, predictions = _reference(demo, frames, size=size)
    _check_against_reference(body, truths, predictions)
    _check_dice(body)

    confusion = cv2.imread(str(tmp_path / "confusion.png"))
    assert confusion is not None and confusion.shape[:2] == confusion_shape()
    assert body["panels"] == [f"{name}_panel.png" for name, _, _ in frames]
    tile_w, tile_h = PANEL_TILE_MAX_WIDTH, PANEL_TILE_MAX_WIDTH // 2
    layout = panel_layout(tile_h, tile_w)
    assert layout.width == 3 * tile_w + 4 * GAP
    for (name, _, _), truth, pred in zip(frames, truths, predictions, strict=True):
        panel = cv2.cvtColor(cv2.imread(str(tmp_path / f"{name}_panel.png")), cv2.COLOR_BGR2RGB)
        assert panel.shape[:2] == (layout.height, layout.width)
        for x, mask in zip(layout.tile_x[1:], (truth, pred), strict=True):
            tile = panel[layout.tile_y : layout.tile_y + tile_h, x : x + tile_w]
            small = cv2.resize(mask, (tile_w, tile_h), interpolation=cv2.INTER_NEAREST)
            assert np.array_equal(tile, colorize(small))


def test_category_iou_ignores_void_truth(tmp_path, cityscapes_mini, demo):
    """Relabel as void (unlabeled) the top-half pixels the model calls non-void: category IoU
    must not count them, while mean IoU (void as a class) does."""
    (name, image_path, truth_path), = _frames(cityscapes_mini)
    root = tmp_path / "cs"
    (root / "leftImg8bit/val/frankfurt").mkdir(parents=True)
    (root / "gtFine/val/frankfurt").mkdir(parents=True)
    shutil.copy(image_path, root / "leftImg8bit/val/frankfurt" / image_path.name)
    _, predictions = _reference(demo, [(name, image_path, truth_path)])
    label_ids = cv2.imread(str(truth_path), cv2.IMREAD_UNCHANGED)
    top = np.zeros(label_ids.shape, bool)
    top[: label_ids.shape[0] // 2] = True
    relabel = top & (predictions[0] != Category.VOID)
    assert relabel.sum() > 100, "precondition: the model predicts non-void in the top half"
    label_ids[relabel] = 0  # labelId 0 = unlabeled -> void
    cv2.imwrite(str(root / "gtFine/val/frankfurt" / truth_path.name), label_ids)

    result = evaluate("demo", root, loaded=demo, progress=False, **EXACT)
    truth = LABEL_ID_TO_CATEGORY[label_ids]
    ignored = float(np.nanmean(_numpy_iou([truth], predictions, ignore_void=True)[1:]))
    counted = float(np.nanmean(_numpy_iou([truth], predictions)[1:]))  # void-truth pixels as false positives
    assert result.category_iou == pytest.approx(ignored, abs=1e-9)
    assert abs(ignored - counted) > 1e-3, "the case must make ignoring void matter"
    assert result.mean_iou == pytest.approx(float(np.nanmean(_numpy_iou([truth], predictions))), abs=1e-9)


def test_metric_functions_on_a_constructed_matrix():
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    cm[Category.FLAT, Category.FLAT] = 60
    cm[Category.SKY, Category.SKY] = 30
    cm[Category.VOID, Category.FLAT] = 40  # void truth called flat: ignored by category IoU only
    assert metrics.category_iou(cm) == pytest.approx(1.0)
    assert metrics.mean_iou(cm) == pytest.approx((0.0 + 0.6 + 1.0) / 3)
    iou, dice = metrics.per_class_iou(cm), metrics.dice(cm)
    assert np.array_equal(np.isnan(iou), np.isnan(dice))
    present = ~np.isnan(iou)
    assert np.allclose(dice[present], 2 * iou[present] / (1 + iou[present]))
    assert dice[Category.FLAT] == pytest.approx(2 * 60 / (2 * 60 + 40))
    rows = metrics.row_normalized(cm)
    assert rows[Category.VOID, Category.FLAT] == 1.0 and not rows[Category.HUMAN].any()


def test_errors_name_the_problem(tmp_path, cityscapes_mini, demo):
    with pytest.raises(DatasetError, match="no-such-city"):
        evaluate("demo", cityscapes_mini, city="no-such-city", loaded=demo, progress=False)
    with pytest.raises(DatasetError, match="leftImg8bit/test"):
        evaluate("demo", cityscapes_mini, split="test", loaded=demo, progress=False)
    with pytest.raises(ValueError, match=r"multiples of 32"):
        evaluate("demo", cityscapes_mini, size=(500, 256), loaded=demo, progress=False)
    # A frame without gtFine labelIds: eval needs truth, so it refuses and names the frame.
    frame = tmp_path / "leftImg8bit/val/bonn/bonn_000001_000019_leftImg8bit.png"
    frame.parent.mkdir(parents=True)
    cv2.imwrite(str(frame), np.zeros((64, 128, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"bonn_000001_000019_leftImg8bit\.png has no ground truth"):
        evaluate("demo", tmp_path, loaded=demo, progress=False)


def test_default_out_dir_names_model_and_split():
    from datetime import datetime

    when = datetime(2025, 1, 2, 3, 4, 5)
    assert default_out_dir("demo", "val", when) == Path("runs/eval-demo-val-20250102-030405")
    assert default_out_dir("/x/my model.safetensors", "train", when).name == "eval-my-model-train-20250102-030405"
    assert default_out_dir("smp:unet:resnet18", "val", when).name == "eval-smp-unet-resnet18-val-20250102-030405"


def test_cli_prints_table_and_writes_report(tmp_path, cityscapes_mini):
    out = tmp_path / "report"
    result = subprocess.run([*ROADSEG, "eval", "--model", "demo", "--cityscapes", str(cityscapes_mini),
                             "--device", "cpu", "--batch", "2", "--panels", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for text in ("mean IoU", "category IoU", "pixel accuracy", "images/s", f"output: {out}", *CLASS_NAMES,
                 "IoU % void included", "IoU % void ignored"):
        assert text in result.stdout, text
    assert {p.name for p in out.iterdir()} == {"metrics.json", "confusion.png", f"{MINI_FRAME}_panel.png"}
    assert json.loads((out / "metrics.json").read_text())["batch"] == 2


def test_cli_bad_root_exits_2_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run([*ROADSEG, "eval", "--model", "demo", "--cityscapes", str(missing)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "roadseg: error:" in result.stderr and str(missing) in result.stderr
