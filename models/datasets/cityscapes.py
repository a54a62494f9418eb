"""The Cityscapes layout (``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
``gtFine/<split>/<city>/*_gtFine_labelIds.png``) and image folders, read frame by frame."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from models.classes import label_ids_to_categories
from models.errors import DatasetError, UnreadableImage

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
CITYSCAPES_FPS = 17.0  # the rate the Cityscapes sequences were recorded at
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_TRUTH_SUFFIX = "_gtFine_labelIds.png"


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB; UnreadableImage if it is not one."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UnreadableImage(str(path), "not a decodable image (corrupt or unsupported format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_cityscapes_label_ids(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a ``gtFine_labelIds`` PNG as it is (Cityscapes labelIds), checked against the image's shape."""
    label_ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label_ids is None or label_ids.ndim != 2:
        raise UnreadableImage(str(path), "ground truth is not a single-channel label image")
    if label_ids.shape != shape:
        raise UnreadableImage(str(path), f"ground truth is {label_ids.shape}, image is {shape}")
    return label_ids


def read_cityscapes_truth(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a ``gtFine_labelIds`` PNG and fold it into our 8 categories."""
    return label_ids_to_categories(read_cityscapes_label_ids(path, shape))


def list_images(pattern: str) -> Callable[[], list[Path]]:
    """A folder (its images, sorted) or a glob pattern (``**`` allowed)."""

    def lister() -> list[Path]:
        path = Path(pattern)
        if path.is_dir():
            candidates = [p for p in path.iterdir() if p.is_file()]
        elif glob.has_magic(pattern):
            candidates = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        else:
            raise DatasetError(f"image source {pattern!r}: no such folder")
        return sorted(p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS)

    return lister


def cityscapes_lister(root: Path, split: str, city: str | None) -> Callable[[], list[Path]]:
    def lister() -> list[Path]:
        image_root = root / "leftImg8bit" / split
        if not image_root.is_dir():
            raise DatasetError(f"cityscapes {root}: no folder {image_root}")
        cities = [image_root / city] if city else sorted(p for p in image_root.iterdir() if p.is_dir())
        for folder in cities:
            if not folder.is_dir():
                raise DatasetError(f"cityscapes {root}: no city folder {folder}")
        return sorted(p for folder in cities for p in folder.glob(f"*{CITYSCAPES_IMAGE_SUFFIX}"))

    return lister


def cityscapes_truth_for(root: Path, split: str) -> Callable[[Path], Path | None]:
    """Map ``leftImg8bit/<split>/<city>/X_leftImg8bit.png`` to its gtFine labelIds, if present."""

    def truth_for(image_path: Path) -> Path | None:
        stem = image_path.name[: -len(CITYSCAPES_IMAGE_SUFFIX)]
        truth = root / "gtFine" / split / image_path.parent.name / f"{stem}{CITYSCAPES_TRUTH_SUFFIX}"
        return truth if truth.is_file() else None

    return truth_for
