"""The files and the table of ``roadseg eval``: metrics.json, confusion.png, panel PNGs.

Drawn with OpenCV only (no matplotlib). Images are composed in RGB and
converted to BGR when written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.classes import CLASS_NAMES, IGNORED_IN_EVAL, NUM_CLASSES, PALETTE, colorize
from models.evaluation.metrics import (
    CATEGORY_IOU_LABEL,
    MEAN_IOU_LABEL,
    ROAD_IOU_LABEL,
    VOID_IGNORED_LABEL,
    VOID_INCLUDED_LABEL,
    percent,
)
from models.evaluation.result import EvalResult, PanelSample, finite_or_none

log = logging.getLogger(__name__)

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (120, 120, 120)
HEAT_HIGH = np.array((8, 48, 107), np.float64)  # a dark blue for 100 %

# confusion.png geometry (pixels)
CELL = 80
ROW_LABEL_W = 150  # swatch + class name left of the rows
COL_LABEL_H = 130  # rotated class names above the columns
TITLE_H = 64
SHARE_W = 80  # right column: the class's share of all truth pixels
MARGIN = 16

# panel geometry (pixels)
GAP = 8
PANEL_TITLE_H = 26
TILE_LABEL_H = 22
LEGEND_ROW_H = 24
LEGEND_ITEM_W = 130
TILE_NAMES = ("image", "truth", "prediction")

# format_table column widths (characters)
IOU_COLUMN = 21
NUMBER_COLUMN = 9


def confusion_shape() -> tuple[int, int]:
    """(height, width) of confusion.png."""
    height = TITLE_H + COL_LABEL_H + NUM_CLASSES * CELL + MARGIN
    width = MARGIN + ROW_LABEL_W + NUM_CLASSES * CELL + SHARE_W + MARGIN
    return height, width


@dataclass(frozen=True)
class PanelLayout:
    tile_w: int
    tile_h: int
    tile_y: int  # top of the three tiles
    tile_x: tuple[int, int, int]  # left of image, truth, prediction
    legend_y: int
    legend_rows: int
    height: int
    width: int


def panel_layout(tile_h: int, tile_w: int) -> PanelLayout:
    """Geometry of a panel whose three tiles are ``tile_h`` x ``tile_w``."""
    width = 3 * tile_w + 4 * GAP
    tile_y = GAP + PANEL_TITLE_H + TILE_LABEL_H
    per_row = max(1, (width - 2 * GAP) // LEGEND_ITEM_W)
    legend_rows = -(-NUM_CLASSES // per_row)
    legend_y = tile_y + tile_h + GAP
    height = legend_y + legend_rows * LEGEND_ROW_H + GAP
    tile_x = (GAP, 2 * GAP + tile_w, 3 * GAP + 2 * tile_w)
    return PanelLayout(tile_w, tile_h, tile_y, tile_x, legend_y, legend_rows, height, width)


def _frames(count: int) -> str:
    return f"{count} frame{'' if count == 1 else 's'}"


def _pct(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}" if np.isfinite(value) else "-"


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5,
          color: tuple[int, int, int] = BLACK, thickness: int = 1) -> None:
    cv2.putText(img, text, org, FONT, scale, color, thickness, cv2.LINE_AA)


def _text_width(text: str, scale: float, thickness: int = 1) -> int:
    (width, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
    return int(width)


def _swatch(img: np.ndarray, x: int, y: int, cls: int, size: int = 14) -> None:
    color = tuple(int(c) for c in PALETTE[cls])
    cv2.rectangle(img, (x, y), (x + size, y + size), color, -1)
    cv2.rectangle(img, (x, y), (x + size, y + size), GREY, 1)


def _heat(value: float) -> tuple[int, int, int]:
    rgb = (1.0 - value) * np.array(WHITE, np.float64) + value * HEAT_HIGH
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def draw_confusion(result: EvalResult) -> np.ndarray:
    """Row-normalised confusion matrix as an RGB heat map with class names and percentages."""
    height, width = confusion_shape()
    img = np.full((height, width, 3), 255, np.uint8)
    norm = result.confusion_normalized
    rows = result.confusion.sum(axis=1)
    share = rows / max(int(rows.sum()), 1)
    _text(img, f"{result.model_id} on {result.split}: {_frames(result.frames)}, input "
               f"{result.input_size[0]}x{result.input_size[1]}", (MARGIN, 24), 0.55, thickness=1)
    _text(img, f"% of each truth row   mIoU (void included) {percent(result.mean_iou)}   category IoU "
               f"(void ignored) {percent(result.category_iou)}   pixel acc {percent(result.pixel_accuracy)}",
          (MARGIN, 48), 0.45, GREY)
    x0 = MARGIN + ROW_LABEL_W
    y0 = TITLE_H + COL_LABEL_H
    _text(img, "truth \\ predicted", (MARGIN, y0 - 10), 0.5, GREY)
    for j, name in enumerate(CLASS_NAMES):
        # Column label: drawn horizontally on a strip, then rotated to read bottom-up.
        strip = np.full((CELL, COL_LABEL_H - 8, 3), 255, np.uint8)
        _swatch(strip, 4, CELL // 2 - 7, j)
        _text(strip, name, (24, CELL // 2 + 5), 0.5)
        img[TITLE_H : TITLE_H + COL_LABEL_H - 8, x0 + j * CELL : x0 + (j + 1) * CELL] = cv2.rotate(
            strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    _text(img, "share", (x0 + NUM_CLASSES * CELL + 14, y0 - 10), 0.5, GREY)
    for i, name in enumerate(CLASS_NAMES):
        y = y0 + i * CELL
        _swatch(img, MARGIN, y + CELL // 2 - 7, i)
        _text(img, name, (MARGIN + 20, y + CELL // 2 + 5), 0.5)
        for j in range(NUM_CLASSES):
            x = x0 + j * CELL
            if rows[i] == 0:
                cv2.rectangle(img, (x, y), (x + CELL, y + CELL), (235, 235, 235), -1)
                label, color = "-", GREY
            else:
                value = float(norm[i, j])
                cv2.rectangle(img, (x, y), (x + CELL, y + CELL), _heat(value), -1)
                count = int(result.confusion[i, j])
                label = "0" if count == 0 else ("<0.1%" if value < 0.0005 else f"{100 * value:.1f}%")
                color = WHITE if value > 0.45 else (BLACK if count else GREY)
            _text(img, label, (x + (CELL - _text_width(label, 0.5)) // 2, y + CELL // 2 + 5), 0.5, color)
        _text(img, f"{100 * share[i]:.1f}%", (x0 + NUM_CLASSES * CELL + 12, y + CELL // 2 + 5), 0.5, GREY)
    for k in range(NUM_CLASSES + 1):  # grid
        cv2.line(img, (x0 + k * CELL, y0), (x0 + k * CELL, y0 + NUM_CLASSES * CELL), (200, 200, 200), 1)
        cv2.line(img, (x0, y0 + k * CELL), (x0 + NUM_CLASSES * CELL, y0 + k * CELL), (200, 200, 200), 1)
    for k in range(NUM_CLASSES):  # outline the diagonal: the correct predictions
        x, y = x0 + k * CELL, y0 + k * CELL
        cv2.rectangle(img, (x + 1, y + 1), (x + CELL - 1, y + CELL - 1), (230, 120, 0), 2)
    return img


def draw_panel(sample: PanelSample, model_id: str) -> np.ndarray:
    """``image | truth | prediction`` side by side, RGB, with a title and a colour legend."""
    tile_h, tile_w = sample.truth.shape
    layout = panel_layout(tile_h, tile_w)
    img = np.full((layout.height, layout.width, 3), 255, np.uint8)
    _text(img, f"{sample.name}   frame mIoU {_pct(sample.mean_iou)}   pixel acc {_pct(sample.pixel_accuracy)}",
          (GAP, GAP + 17), 0.55)
    tiles = (sample.image, colorize(sample.truth), colorize(sample.prediction))
    labels = (TILE_NAMES[0], TILE_NAMES[1], f"{TILE_NAMES[2]} ({model_id})")
    for x, tile, label in zip(layout.tile_x, tiles, labels, strict=True):
        img[layout.tile_y : layout.tile_y + tile_h, x : x + tile_w] = tile
        _text(img, label, (x, layout.tile_y - 6), 0.5, GREY)
    per_row = max(1, (layout.width - 2 * GAP) // LEGEND_ITEM_W)
    for cls, name in enumerate(CLASS_NAMES):
        row, col = divmod(cls, per_row)
        x = GAP + col * LEGEND_ITEM_W
        y = layout.legend_y + row * LEGEND_ROW_H
        _swatch(img, x, y + 3, cls)
        _text(img, name, (x + 20, y + 15), 0.5)
    return img


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def roadseg_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("roadseg")
    except PackageNotFoundError:
        return "unknown"


def _by_class(values: np.ndarray) -> dict[str, float | None]:
    return {name: finite_or_none(float(v)) for name, v in zip(CLASS_NAMES, values, strict=True)}


def metrics_dict(result: EvalResult) -> dict[str, Any]:
    """The content of metrics.json (NaN becomes null)."""
    import torch

    cm = result.confusion
    return {
        "roadseg_version": roadseg_version(),
        "torch_version": str(torch.__version__),
        "model_spec": result.model_spec,
        "model_id": result.model_id,
        "backend": result.backend,
        "card_input_size": list(result.card_input_size),
        "input_size": list(result.input_size),
        "device": result.device,
        "precision": result.precision,
        "root": result.root,
        "split": result.split,
        "city": result.city,
        "frames": result.frames,
        "batch": result.batch,
        "classes": list(CLASS_NAMES),
        "per_class_iou": _by_class(result.per_class_iou),  # void included; mean_iou averages these
        "per_class_iou_void_ignored": _by_class(result.per_class_iou_void_ignored),  # category_iou averages these
        "dice": _by_class(result.dice),
        "mean_iou": finite_or_none(result.mean_iou),
        "category_iou": finite_or_none(result.category_iou),
        "pixel_accuracy": finite_or_none(result.pixel_accuracy),
        "confusion": cm.astype(np.int64).tolist(),
        "ignored_pixels": result.ignored_pixels,
        "confusion_normalized": [[round(float(v), 6) for v in row] for row in result.confusion_normalized],
        "truth_pixel_share": _by_class(cm.sum(axis=1) / max(int(cm.sum()), 1)),
        "images_per_s": finite_or_none(result.images_per_s),
        "ms_per_image": finite_or_none(result.ms_per_image),
        "elapsed_s": round(result.elapsed_s, 4),
        "timing_ms_per_image": {k: round(v, 3) for k, v in result.timing_ms.items()},
        "invalid_frames": list(result.invalid_frames),
        "per_frame": result.per_frame,
        # The drivable-road layer: null when not scored (road_note says why).
        "road_iou": finite_or_none(result.road_iou) if result.road_iou is not None else None,
        "road_confusion": result.road_confusion.astype(np.int64).tolist() if result.road_confusion is not None
        else None,
        "road_note": result.road_note,
    }


def write_report(result: EvalResult, out_dir: Path, *, panels: int = 3) -> Path:
    """Create ``out_dir`` and write metrics.json, confusion.png and up to ``panels`` panel PNGs
    (as many as ``evaluate(..., panels=)`` kept). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = result.samples[:panels]
    if len(samples) < min(panels, result.frames):
        log.warning("only %d panel frames were kept by evaluate(); asked for %d", len(samples), panels)
    panel_files = []
    for sample in samples:
        name = f"{sample.name}_panel.png"
        _write_png(out_dir / name, draw_panel(sample, result.model_id))
        panel_files.append(name)
    _write_png(out_dir / "confusion.png", draw_confusion(result))
    body = metrics_dict(result)
    body["panels"] = panel_files
    (out_dir / "metrics.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return out_dir


def summary_lines(result: EvalResult) -> list[str]:
    """The averaged metrics, each saying which column of the table it averages."""
    total = int(result.confusion.sum()) + result.ignored_pixels
    ignored = result.ignored_pixels / total if total else float("nan")
    width = len(CATEGORY_IOU_LABEL) + 2
    if result.road_iou is not None:
        road = f"{ROAD_IOU_LABEL:<{width}}{percent(result.road_iou):>7}   ({result.road_note})"
    else:
        road = f"road IoU: omitted: {result.road_note}"
    return [
        f"{MEAN_IOU_LABEL:<{width}}{percent(result.mean_iou):>7}   (mean of '{VOID_INCLUDED_LABEL}')",
        f"{CATEGORY_IOU_LABEL:<{width}}{percent(result.category_iou):>7}   (mean of '{VOID_IGNORED_LABEL}')",
        f"{'pixel accuracy':<{width}}{percent(result.pixel_accuracy):>7}",
        road,
        f"not scored: {percent(ignored)} % of pixels, Cityscapes labels ignored in evaluation "
        f"({', '.join(IGNORED_IN_EVAL.values())})",
    ]


def format_table(result: EvalResult, out_dir: Path | None = None) -> str:
    """The human summary ``roadseg eval`` prints on stdout."""
    where = f"{result.split}/{result.city}" if result.city else result.split
    width, height = result.input_size
    share = result.confusion.sum(axis=1) / max(int(result.confusion.sum()), 1)
    lines = [
        f"roadseg eval: {result.model_id} on {result.root} {where}, {_frames(result.frames)}, "
        f"input {width}x{height}, {result.backend} {result.device} {result.precision}, batch {result.batch}",
        "",
        f"{'category':<14}{VOID_INCLUDED_LABEL:>{IOU_COLUMN}}{VOID_IGNORED_LABEL:>{IOU_COLUMN}}"
        f"{'Dice %':>{NUMBER_COLUMN}}{'truth px %':>{NUMBER_COLUMN + 3}}",
    ]
    for cls, name in enumerate(CLASS_NAMES):
        lines.append(f"{name:<14}{percent(result.per_class_iou[cls]):>{IOU_COLUMN}}"
                     f"{percent(result.per_class_iou_void_ignored[cls]):>{IOU_COLUMN}}"
                     f"{percent(result.dice[cls]):>{NUMBER_COLUMN}}{percent(share[cls]):>{NUMBER_COLUMN + 3}}")
    lines += ["", *summary_lines(result)]
    t = result.timing_ms
    model_ms = t["preprocess"] + t["inference"] + t["postprocess"]
    lines += [
        f"speed: {result.images_per_s:.2f} images/s, {result.ms_per_image:.1f} ms/image "
        f"(model {model_ms:.1f}, scoring {t['scoring']:.1f}, waiting for decode {t['decode_wait']:.1f} ms/image)"
        + (f"; road layer pass {t['road_layer']:.1f} ms/image, not counted"
           if result.road_iou is not None and t["road_layer"] > 0 else ""),
    ]
    if result.invalid_frames:
        lines.append(f"WARNING: {len(result.invalid_frames)} frame(s) with non-finite logits, e.g. "
                     f"{result.invalid_frames[0]}")
    if out_dir is not None:
        lines.append(f"output: {out_dir}")
    return "\n".join(lines)
