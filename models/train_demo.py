"""Train the built-in ``demo`` model on the synthetic drive (CPU, ~15 minutes).

    python -m models.train_demo --steps 1500 --out models/weights/demo-synthetic.safetensors

The training drives use seeds >= TRAIN_SEED_BASE; the demo plays seed 7, which
training never sees, so the demo's IoU is a held-out figure.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import InputSpec, ModelCard, save_checkpoint
from models.classes import NUM_CLASSES
from models.factory import build_model
from models.metrics import confusion_matrix, mean_iou
from stream.sources.synthetic import SyntheticDrive

log = logging.getLogger("train_demo")

ARCHITECTURE = {
    "arch": "unet",
    "encoder": "tu-mobilenetv3_small_100",
    "decoder_channels": [64, 32, 24, 16, 8],
}
FRAME_SIZE = (512, 256)  # (width, height) of the synthetic frames and the model input
CROP = 256  # square training crops: full-resolution detail at half the cost
TRAIN_SEED_BASE = 1000
EVAL_SEED = 7  # the demo's drive, never trained on
FRAMES_PER_DRIVE = 2000


def sample_batch(rng: np.random.Generator, drives: dict[int, SyntheticDrive], batch: int) -> tuple:
    images, truths = [], []
    width, height = FRAME_SIZE
    for _ in range(batch):
        seed = TRAIN_SEED_BASE + int(rng.integers(0, 200))
        drive = drives.setdefault(seed, SyntheticDrive(seed=seed, width=width, height=height))
        image, truth = drive.render(int(rng.integers(0, FRAMES_PER_DRIVE)))
        x0 = int(rng.integers(0, width - CROP + 1))
        image, truth = image[:, x0 : x0 + CROP], truth[:, x0 : x0 + CROP]
        if rng.random() < 0.5:  # mirror: left/right-hand traffic
            image, truth = image[:, ::-1], truth[:, ::-1]
        images.append(np.ascontiguousarray(image))
        truths.append(np.ascontiguousarray(truth))
    return np.stack(images), np.stack(truths)


def to_input(images: np.ndarray, spec: InputSpec) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() * spec.scale
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * inter + 1.0) / (total + 1.0)).mean()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, spec: InputSpec, frames: int) -> float:
    model.eval()
    drive = SyntheticDrive(seed=EVAL_SEED, width=FRAME_SIZE[0], height=FRAME_SIZE[1])
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for index in range(0, frames * 10, 10):
        image, truth = drive.render(index)
        pred = model(to_input(image[None], spec)).argmax(1)[0].numpy().astype(np.uint8)
        cm += confusion_matrix(truth, pred)
    model.train()
    return mean_iou(cm)


def train(steps: int, batch: int, lr: float, out: Path, eval_frames: int) -> float:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = InputSpec(size=FRAME_SIZE)
    model = build_model("smp", ARCHITECTURE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    drives: dict[int, SyntheticDrive] = {}
    start = time.monotonic()
    for step in range(1, steps + 1):
        images, truths = sample_batch(rng, drives, batch)
        target = torch.from_numpy(truths).long()
        logits = model(to_input(images, spec))
        loss = F.cross_entropy(logits, target) + dice_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps:
            log.info("step %d/%d loss %.4f (%.0f s)", step, steps, loss.item(), time.monotonic() - start)
    miou = evaluate(model, spec, eval_frames)
    log.info("held-out mean IoU on seed %d: %.4f", EVAL_SEED, miou)
    card = ModelCard(
        model_id="demo-synthetic-unet-mnv3s",
        family="smp",
        arguments=ARCHITECTURE,
        input=spec,
        provenance={"trained_by": "models/train_demo.py", "data": "synthetic drive seeds 1000-1199",
                    "steps": steps, "batch": batch, "crop": CROP},
        metrics={"synthetic_seed7_mean_iou": round(miou, 4)},
    )
    save_checkpoint(out, model, card, half=True)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return miou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--eval-frames", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("models/weights/demo-synthetic.safetensors"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args.steps, args.batch, args.lr, args.out, args.eval_frames)


if __name__ == "__main__":
    main()
