"""Train the built-in ``demo`` model on the synthetic drive with the ``roadseg train`` trainer.

    python -m models.training.demo --steps 1500 --out models/weights/demo-synthetic.safetensors

The training drives use seeds >= SYNTHETIC_TRAIN_SEED_BASE; the demo plays seed 7, which
training never sees, so the demo's IoU is a held-out figure. The run is one "epoch" of
``--steps`` steps (the OneCycle schedule spans it), validated once at the end.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from models.backends.common import DEVICE_CHOICES, Device
from models.store.checkpoint import save_checkpoint
from models.training.augment import CROP_AND_FLIP_ONLY
from models.training.config import TrainConfig
from models.training.data import SYNTHETIC_TRAIN_DRIVES, SYNTHETIC_TRAIN_SEED_BASE, SYNTHETIC_VAL_SEED
from models.training.loop import train as run_training

log = logging.getLogger("train_demo")

MODEL_ID = "demo-synthetic-unet-mnv3s"
ARCHITECTURE = {
    "arch": "unet",
    "encoder": "tu-mobilenetv3_small_100",
    "decoder_channels": [64, 32, 24, 16, 8],
}
FRAME_SIZE = (512, 256)  # (width, height) of the synthetic frames and the model input
CROP = 256  # square training crops: full-resolution detail at half the cost
WEIGHT_DECAY = 1e-4
METRIC = f"synthetic_seed{SYNTHETIC_VAL_SEED}_mean_iou"


def demo_config(steps: int, batch: int, lr: float, eval_frames: int, work_dir: Path, device: str) -> TrainConfig:
    """The demo recipe as a :class:`TrainConfig`: crop + mirror only, as it was always trained
    (the demo plays the clean synthetic drive; weather augmentation buys it nothing)."""
    return TrainConfig(
        family="smp", arguments=ARCHITECTURE, data="synthetic", out=work_dir, size=FRAME_SIZE,
        crop=(CROP, CROP), model_id=MODEL_ID, epochs=1, steps_per_epoch=steps, batch=batch, lr=lr,
        weight_decay=WEIGHT_DECAY, val_limit=eval_frames, device=Device(device), augment=CROP_AND_FLIP_ONLY,
    )


def train(steps: int, batch: int, lr: float, out: Path, eval_frames: int, device: str = "auto") -> float:
    """Train, write the fp16 demo checkpoint to ``out``, return its held-out mean IoU."""
    with tempfile.TemporaryDirectory(prefix="train_demo-") as work_dir:
        result = run_training(demo_config(steps, batch, lr, eval_frames, Path(work_dir), device))
    miou = float(result.card.metrics[METRIC])
    log.info("held-out mean IoU on seed %d: %.4f", SYNTHETIC_VAL_SEED, miou)
    last_seed = SYNTHETIC_TRAIN_SEED_BASE + SYNTHETIC_TRAIN_DRIVES - 1
    card = replace(
        result.card,
        provenance={"trained_by": "models/training/demo.py (roadseg train)",
                    "data": f"synthetic drive seeds {SYNTHETIC_TRAIN_SEED_BASE}-{last_seed}",
                    "steps": steps, "batch": batch, "crop": CROP, "lr": lr},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, result.model, card, half=True)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return miou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--eval-frames", type=int, default=60)
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--out", type=Path, default=Path("models/weights/demo-synthetic.safetensors"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args.steps, args.batch, args.lr, args.out, args.eval_frames, args.device)


if __name__ == "__main__":
    main()
