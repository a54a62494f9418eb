"""Training augmentations on numpy arrays: uint8 HxWx3 RGB image, uint8 HxW category label.

Geometric steps (random scale, horizontal flip, crop) move image and label together;
photometric steps (brightness/contrast jitter, fog, rain) touch only the image. Every
random choice comes from the ``numpy.random.Generator`` passed in, so one seed
reproduces one sample exactly, in any worker process.

Padding: where a scaled frame is smaller than the crop, the image is padded with the
ImageNet mean grey (normalises to ~0) and the label with :data:`IGNORE_INDEX`, which the
losses skip. Padding is not scenery, so it must not teach the model "void": real void
pixels (ego car, unlabelled) stay class 0 and are trained like any other class. The same
value marks the Cityscapes labels ignored in evaluation (:data:`models.classes.IGNORE`),
so those pixels are skipped by the losses exactly as by the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.classes import IGNORE

IGNORE_INDEX = IGNORE  # label value the losses skip: crop padding and Cityscapes ignoreInEval labels
PAD_RGB = (124, 116, 104)  # ImageNet mean in uint8: padded pixels normalise to ~0
FOG_GREY = (170.0, 225.0)  # haze brightness range (grey levels)
FOG_FALLOFF = 1.5  # haze thins faster than linearly towards the bottom (near the car)
RAIN_PIXELS_PER_STREAK = 400  # streak density: one drop per this many pixels
RAIN_LENGTH_FRAC = (0.04, 0.12)  # streak length as a fraction of the crop height
RAIN_MAX_SLANT = 0.3  # horizontal drift per vertical pixel: wind, same for every drop
RAIN_ALPHA = (0.3, 0.6)  # streak opacity
RAIN_GREY = 210.0  # streaks are lit drops: light grey
RAIN_DARKEN = 0.85  # an overcast, rainy scene is dimmer


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run and how strongly; probabilities are per sample."""

    flip_p: float = 0.5
    scale_range: tuple[float, float] = (0.5, 1.5)  # relative to the training --size
    jitter_p: float = 0.5
    brightness: float = 32.0  # added offset drawn from +-brightness grey levels
    contrast: float = 0.3  # contrast factor drawn from 1 +- contrast
    fog_p: float = 0.15
    fog_density: tuple[float, float] = (0.3, 0.7)  # haze opacity at the top of the frame
    rain_p: float = 0.15

    def __post_init__(self) -> None:
        for name in ("flip_p", "jitter_p", "fog_p", "rain_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation {name} must be a probability in [0, 1], got {value}")
        low, high = self.scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"augmentation scale_range must satisfy 0 < low <= high, got {self.scale_range}")


# Only what the demo trainer always did: a random crop and a mirror.
CROP_AND_FLIP_ONLY = AugmentConfig(scale_range=(1.0, 1.0), jitter_p=0.0, fog_p=0.0, rain_p=0.0)


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` (width, height): area/linear for the image, nearest for the label
    (class ids must never blend into other ids)."""
    width, height = size
    if image.shape[:2] == (height, width):
        return image, label
    shrinking = width < image.shape[1]
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, label


def scale_flip_crop(
    image: np.ndarray, label: np.ndarray, size: tuple[int, int], crop: tuple[int, int],
    rng: np.random.Generator, config: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize the frame to ``size`` x a random scale, maybe mirror it, cut a random ``crop``.

    Resizing once from the original (rather than to ``size`` and then by the scale) saves
    a second interpolation. Returns image, label and, per crop row, its height in the
    scaled frame as a fraction (0 top .. 1 bottom) for the depth-like fog.
    """
    scale = rng.uniform(*config.scale_range)
    scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    image, label = resize_pair(image, label, scaled)
    if rng.random() < config.flip_p:  # mirror: left- and right-hand traffic
        image, label = image[:, ::-1], label[:, ::-1]
    image, label = _pad_to(image, label, crop)
    crop_w, crop_h = crop
    x0 = int(rng.integers(0, image.shape[1] - crop_w + 1))
    y0 = int(rng.integers(0, image.shape[0] - crop_h + 1))
    rows = (np.arange(y0, y0 + crop_h, dtype=np.float32) + 0.5) / scaled[1]
    return image[y0 : y0 + crop_h, x0 : x0 + crop_w], label[y0 : y0 + crop_h, x0 : x0 + crop_w], rows


def _pad_to(image: np.ndarray, label: np.ndarray, crop: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    pad_h = max(0, crop[1] - image.shape[0])
    pad_w = max(0, crop[0] - image.shape[1])
    if not pad_h and not pad_w:
        return image, label
    image = cv2.copyMakeBorder(np.ascontiguousarray(image), 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=PAD_RGB)
    label = cv2.copyMakeBorder(np.ascontiguousarray(label), 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                               value=IGNORE_INDEX)
    return image, label


def jitter(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Brightness/contrast: ``(I - mean(I)) * c + mean(I) + b``, clipped to 0..255."""
    contrast = rng.uniform(1.0 - config.contrast, 1.0 + config.contrast)
    brightness = rng.uniform(-config.brightness, config.brightness)
    pixels = image.astype(np.float32)
    mean = float(pixels.mean())
    return np.clip((pixels - mean) * contrast + mean + brightness, 0, 255).astype(np.uint8)


def fog(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig,
        rows: np.ndarray | None = None) -> np.ndarray:
    """Blend toward a grey haze, thickest at the top and fading to nothing at the bottom.

    In a forward camera the top rows look far away (horizon, sky) and the bottom rows at
    the road just ahead, so row height stands in for depth:
    ``I' = I * (1 - a) + g * a`` with ``a(y) = d * (1 - y) ** FOG_FALLOFF``, ``y`` the
    row's height fraction in the full frame (``rows``; the crop's own rows if omitted).
    """
    if rows is None:
        rows = (np.arange(image.shape[0], dtype=np.float32) + 0.5) / image.shape[0]
    density = rng.uniform(*config.fog_density)
    grey = rng.uniform(*FOG_GREY)
    alpha = (density * (1.0 - np.clip(rows, 0.0, 1.0)) ** FOG_FALLOFF).astype(np.float32)[:, None, None]
    return (image.astype(np.float32) * (1.0 - alpha) + grey * alpha).round().astype(np.uint8)


def rain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Thin, light, slanted streaks (falling drops seen with motion blur) over a dimmed scene."""
    height, width = image.shape[:2]
    count = max(1, height * width // RAIN_PIXELS_PER_STREAK)
    length = rng.uniform(*RAIN_LENGTH_FRAC) * height
    slant = rng.uniform(-RAIN_MAX_SLANT, RAIN_MAX_SLANT)
    x0 = rng.uniform(0, width, count)
    y0 = rng.uniform(-length, height, count)
    lengths = length * rng.uniform(0.5, 1.0, count)
    ends = np.stack([x0, y0, x0 + slant * lengths, y0 + lengths], axis=1)
    streaks = np.zeros((height, width), np.uint8)
    cv2.polylines(streaks, list(ends.round().astype(np.int32).reshape(-1, 2, 2)), False, 255, 1, cv2.LINE_AA)
    alpha = (rng.uniform(*RAIN_ALPHA) / 255.0) * streaks.astype(np.float32)[..., None]
    dimmed = image.astype(np.float32) * RAIN_DARKEN
    return (dimmed * (1.0 - alpha) + RAIN_GREY * alpha).round().astype(np.uint8)


def augment(
    image: np.ndarray, label: np.ndarray, size: tuple[int, int], crop: tuple[int, int],
    rng: np.random.Generator, config: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The full training transform: geometric (image + label), then photometric (image only)."""
    image, label, rows = scale_flip_crop(image, label, size, crop, rng, config)
    if rng.random() < config.jitter_p:
        image = jitter(image, rng, config)
    if rng.random() < config.fog_p:
        image = fog(image, rng, config, rows)
    if rng.random() < config.rain_p:
        image = rain(image, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
