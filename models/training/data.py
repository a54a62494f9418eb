"""Training data: lazy frame sets, torch datasets over them, a resumable sampler, loaders.

A dataset holds only file paths (Cityscapes) or drive parameters (synthetic) and reads or
renders one frame per ``__getitem__``, so memory does not grow with the dataset and
``DataLoader`` workers stream frames in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from models.datasets.cityscapes import cityscapes_lister, cityscapes_truth_for, read_cityscapes_truth, read_rgb
from models.datasets.synthetic_scene import SyntheticDrive
from models.errors import DatasetError
from models.training.augment import AugmentConfig, augment, resize_pair

# The synthetic drive: training drives use seeds >= SYNTHETIC_TRAIN_SEED_BASE; validation
# plays seed 7 (the demo's drive), which training never sees, so its IoU is held out.
SYNTHETIC_TRAIN_SEED_BASE = 1000
SYNTHETIC_TRAIN_DRIVES = 200
SYNTHETIC_FRAMES_PER_DRIVE = 2000
SYNTHETIC_VAL_SEED = 7
SYNTHETIC_VAL_STRIDE = 10  # validate on every 10th frame: distinct views, not near-duplicates
SYNTHETIC_DEFAULT_VAL_FRAMES = 60
DEFAULT_WORKERS = min(2, os.cpu_count() or 1)

SampleKey = tuple[int, int]  # (frame index, augmentation draw number)


class FrameSet(Protocol):
    """Frames by index: ``frame(i)`` reads (or renders) exactly one image and its label."""

    def __len__(self) -> int: ...

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class CityscapesFrames:
    """``leftImg8bit/<split>`` images with their ``gtFine/<split>`` labelIds, folded to 8 categories."""

    def __init__(self, root: Path, split: str) -> None:
        if not root.is_dir():
            raise DatasetError(f"--cityscapes {root}: no such folder")
        images = cityscapes_lister(root, split, None)()
        if not images:
            raise DatasetError(f"--cityscapes {root}: no *_leftImg8bit.png images under leftImg8bit/{split}")
        truth_for = cityscapes_truth_for(root, split)
        truths = [truth_for(image) for image in images]
        missing = [image for image, truth in zip(images, truths, strict=True) if truth is None]
        if missing:
            raise DatasetError(f"--cityscapes {root}: {len(missing)} {split} images have no gtFine labelIds, "
                              f"e.g. {missing[0]}")
        self.root, self.split = root, split
        self.pairs: list[tuple[Path, Path]] = [(i, t) for i, t in zip(images, truths, strict=True) if t]

    def __len__(self) -> int:
        return len(self.pairs)

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, truth_path = self.pairs[index]
        image = read_rgb(image_path)
        return image, read_cityscapes_truth(truth_path, image.shape[:2])


class SyntheticFrames:
    """Frames of consecutive synthetic drives: index ``i`` is frame ``(i % per_drive) * stride``
    of the drive with seed ``first_seed + i // per_drive``."""

    def __init__(self, first_seed: int, drives: int, per_drive: int, size: tuple[int, int], stride: int = 1) -> None:
        self.first_seed, self.drives, self.per_drive, self.stride = first_seed, drives, per_drive, stride
        self.size = size
        self._drives: dict[int, SyntheticDrive] = {}  # small world descriptions, no frames

    def __len__(self) -> int:
        return self.drives * self.per_drive

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        seed = self.first_seed + index // self.per_drive
        drive = self._drives.get(seed)
        if drive is None:
            drive = self._drives[seed] = SyntheticDrive(seed=seed, width=self.size[0], height=self.size[1])
        return drive.render((index % self.per_drive) * self.stride)


def synthetic_train_frames(size: tuple[int, int]) -> SyntheticFrames:
    return SyntheticFrames(SYNTHETIC_TRAIN_SEED_BASE, SYNTHETIC_TRAIN_DRIVES, SYNTHETIC_FRAMES_PER_DRIVE, size)


def synthetic_val_frames(size: tuple[int, int], frames: int) -> SyntheticFrames:
    return SyntheticFrames(SYNTHETIC_VAL_SEED, 1, frames, size, stride=SYNTHETIC_VAL_STRIDE)


class TrainDataset(Dataset):
    """Augmented training crops; key ``(index, draw)`` seeds the augmentation with ``(seed, draw)``."""

    def __init__(self, frames: FrameSet, size: tuple[int, int], crop: tuple[int, int],
                 augment_config: AugmentConfig, seed: int) -> None:
        self.frames, self.size, self.crop = frames, size, crop
        self.augment_config, self.seed = augment_config, seed

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        index, draw = key if isinstance(key, tuple) else (key, key)
        image, label = self.frames.frame(index)
        rng = np.random.default_rng([self.seed, draw])
        image, label = augment(image, label, self.size, self.crop, rng, self.augment_config)
        return torch.from_numpy(image), torch.from_numpy(label)


class ValDataset(Dataset):
    """Whole validation frames at the model input ``size``; the first ``limit`` frames only."""

    def __init__(self, frames: FrameSet, size: tuple[int, int], limit: int | None = None) -> None:
        self.frames, self.size = frames, size
        self.length = len(frames) if limit is None else min(limit, len(frames))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"validation frame {index} out of range 0..{self.length - 1}")
        image, label = resize_pair(*self.frames.frame(index), self.size)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(label))


class EpochSampler(Sampler[SampleKey]):
    """``samples`` keys for one epoch: shuffled passes over the dataset, each key with a
    draw number unique over the whole run. Everything derives from ``(seed, epoch)``, so a
    resumed run sees exactly the data the uninterrupted run would have seen."""

    def __init__(self, length: int, samples: int, seed: int, epoch: int) -> None:
        self.length, self.samples, self.seed, self.epoch = length, samples, seed, epoch

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[SampleKey]:
        rng = np.random.default_rng([self.seed, self.epoch])
        passes = -(-self.samples // self.length)
        order = np.concatenate([rng.permutation(self.length) for _ in range(passes)])[: self.samples]
        first_draw = self.epoch * self.samples
        return iter([(int(index), first_draw + position) for position, index in enumerate(order)])


def _quiet_worker(_worker_id: int) -> None:
    # Workers decode and augment one frame each; letting each spawn a thread per core
    # would oversubscribe the CPU that the training step needs.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def train_loader(dataset: TrainDataset, batch: int, steps: int, epoch: int, workers: int,
                 pin_memory: bool) -> DataLoader:
    sampler = EpochSampler(len(dataset), steps * batch, dataset.seed, epoch)
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=pin_memory, worker_init_fn=_quiet_worker if workers else None)


def val_loader(dataset: ValDataset, batch: int, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      worker_init_fn=_quiet_worker if workers else None)
