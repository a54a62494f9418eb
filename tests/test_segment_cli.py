"""``roadseg segment``: real processes on real Cityscapes files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from models.classes import CLASS_NAMES
from tests.conftest import require_shared

pytestmark = pytest.mark.timeout(180)

MINI = "cityscapes-mini"
MINI_IMAGE = f"{MINI}/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
VAL_IMAGE = "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000576_leftImg8bit.png"
# Runs the real command in a fresh interpreter, then says whether the live pipeline was imported.
RUN_AND_REPORT_IMPORTS = (
    "import sys; from stream.cli import main; code = main(sys.argv[1:]); "
    "print('PIPELINE-IMPORTED' if 'stream.pipeline' in sys.modules else 'NO-PIPELINE', file=sys.stderr); "
    "sys.exit(code)"
)


def roadseg_segment(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN_AND_REPORT_IMPORTS, "segment", *args],
                          capture_output=True, text=True, timeout=150)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_segment_writes_masks_and_overlays_and_scores_found_labels(tmp_path):
    mini_image, other = require_shared(MINI_IMAGE), require_shared(VAL_IMAGE)
    out = tmp_path / "out"
    result = roadseg_segment(str(mini_image), str(other), "--out", str(out), "--label", str(require_shared(MINI)))
    assert result.returncode == 0, result.stderr
    assert "NO-PIPELINE" in result.stderr  # an offline tool: the live pipeline is never imported
    lines = json_lines(result.stdout)
    assert [Path(line["image"]) for line in lines] == [mini_image, other]
    scored, unscored = lines
    assert scored["width"] == 256 and scored["height"] == 128 and scored["model"].startswith("demo")
    assert Path(scored["label"]).name == "frankfurt_000000_000294_gtFine_labelIds.png"  # found in the gtFine tree
    assert 0.0 < scored["iou"]["mean"] <= 1.0 and list(scored["iou"]["per_class"]) == list(CLASS_NAMES)
    assert sum(scored["fractions"].values()) == pytest.approx(1.0, abs=1e-4)
    assert unscored["label"] is None and "iou" not in unscored and unscored["width"] == 2048  # no label for it

    stem = mini_image.stem
    mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.jpg"
    assert scored["outputs"] == {"palette": str(mask_path), "overlay": str(overlay_path)}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}_mask.png", f"{stem}_overlay.jpg", f"{other.stem}_mask.png", f"{other.stem}_overlay.jpg"])
    mask = Image.open(mask_path)
    assert mask.mode == "P" and mask.size == (256, 128)
    ids = np.asarray(mask)
    counts = np.bincount(ids.ravel(), minlength=len(CLASS_NAMES)) / ids.size
    assert counts.tolist() == pytest.approx(list(scored["fractions"].values()), abs=1e-6)
    overlay = cv2.imread(str(overlay_path))
    assert overlay is not None and overlay.shape == (128, 256, 3)


def test_segment_raw_ids_with_one_label_file(tmp_path):
    image = require_shared(MINI_IMAGE)
    label = require_shared(f"{MINI}/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png")
    result = roadseg_segment(str(image), "--label", str(label), "--out", str(tmp_path), "--format", "raw")
    assert result.returncode == 0, result.stderr
    (line,) = json_lines(result.stdout)
    assert line["iou"]["label_format"] == "trainIds"  # told by the file name
    ids = cv2.imread(str(tmp_path / f"{image.stem}_ids.png"), cv2.IMREAD_UNCHANGED)
    assert [p.name for p in tmp_path.iterdir()] == [f"{image.stem}_ids.png"]
    assert ids.shape == (128, 256) and ids.max() < len(CLASS_NAMES)


@pytest.mark.parametrize(("make", "words"), [
    (lambda tmp: [str(tmp / "missing.png")], "image {tmp}/missing.png: no such file"),
    (lambda tmp: [str(tmp)], "a folder, not a file"),
    (lambda tmp: [_write(tmp / "notes.png", b"just some text")], "notes.png: not a JPEG or PNG"),
    (lambda tmp: [_write(tmp / "half.png", require_shared(MINI_IMAGE).read_bytes()[:2000])], "half.png: truncated PNG"),
    (lambda tmp: [str(require_shared(MINI_IMAGE)), str(require_shared(VAL_IMAGE)), "--label",
                  str(require_shared(MINI_IMAGE))], "one file for 2 images"),
    (lambda tmp: [str(require_shared(VAL_IMAGE)), "--label", str(require_shared(
        f"{MINI}/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"))], "they must match"),
])  # fmt: skip
def test_bad_input_fails_before_the_model_loads(tmp_path, make, words):
    start = time.monotonic()
    result = roadseg_segment(*make(tmp_path))
    assert result.returncode == 2, result.stderr
    assert words.format(tmp=tmp_path) in result.stderr
    assert "backend on" not in result.stderr and not result.stdout  # nothing was loaded or segmented
    assert time.monotonic() - start < 60


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)
