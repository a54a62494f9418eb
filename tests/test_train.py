"""``roadseg train``: a real (tiny) run on the shared Cityscapes sample, resume, data, losses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import models.training.data as train_data
from models.classes import NUM_CLASSES, PALETTE
from models.store.checkpoint import load_checkpoint
from models.training.augment import IGNORE_INDEX, PAD_RGB, AugmentConfig, augment, fog, scale_flip_crop
from models.training.config import TrainConfig
from models.training.losses import distillation_loss, segmentation_loss
from models.training.state import LOG_NAME, Progress, read_state, restore_training, save_state
from stream.cli import main as roadseg_main
from tests.conftest import require_shared

STEPS = 6  # per epoch; with the seed below the loss falls by ~30% over 3 epochs
TINY_ARCH = json.dumps({"encoder_depth": 3, "decoder_channels": [16, 8, 8]})
TRAIN_ARGS = [
    "--arch", "smp:unet:resnet18", "--arch-args", TINY_ARCH, "--size", "128x64", "--crop", "64x64",
    "--batch", "2", "--steps-per-epoch", str(STEPS), "--lr", "1e-2", "--val-limit", "2", "--workers", "1",
    "--seed", "3", "--device", "cpu",
]


def roadseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", "train", *args],
                          capture_output=True, text=True, timeout=300)


def read_log(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(per-step records, per-epoch records) of train_log.jsonl."""
    records = [json.loads(line) for line in (run_dir / LOG_NAME).read_text().splitlines()]
    return [r for r in records if "loss" in r], [r for r in records if "mean_iou" in r]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Two epochs, then ``--resume`` with ``--epochs 3``: both as real ``roadseg train`` processes."""
    root = require_shared("cityscapes")
    out = tmp_path_factory.mktemp("train") / "run"
    first = roadseg(*TRAIN_ARGS, "--cityscapes", str(root), "--epochs", "2", "--out", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "epoch 2/2 step 12" in first.stdout
    (out / "after_two_epochs.json").write_text((out / "state.json").read_text())
    second = roadseg("--cityscapes", str(root), "--epochs", "3", "--out", str(out), "--resume", "--workers", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "epoch 3/3 step 18" in second.stdout and "epoch 1/" not in second.stdout
    return out


def test_training_writes_loadable_checkpoints_with_metrics(run_dir):
    for name in ("last.safetensors", "best.safetensors"):
        model, card = load_checkpoint(run_dir / name)
        assert card.family == "smp" and card.arguments["decoder_channels"] == [16, 8, 8]
        assert card.input.size == (128, 64)
        assert 0.0 <= card.metrics["cityscapes_val_mean_iou"] <= 1.0
        assert 0.0 <= card.metrics["cityscapes_val_category_iou"] <= 1.0
        assert card.metrics["val_frames"] == 2
        assert card.provenance["trained_by"] == "roadseg train"
        assert card.provenance["config"]["lr"] == 1e-2
        assert model(torch.zeros(1, 3, 64, 128)).shape == (1, NUM_CLASSES, 64, 128)
    _, last = load_checkpoint(run_dir / "last.safetensors")
    state = json.loads((run_dir / "state.json").read_text())
    assert last.provenance["epoch"] == 3 and last.provenance["step"] == 3 * STEPS
    _, epochs = read_log(run_dir)
    assert max(e["mean_iou"] for e in epochs) == pytest.approx(state["best_mean_iou"], abs=1e-6)


def test_loss_falls(run_dir):
    steps, _ = read_log(run_dir)
    losses = [s["loss"] for s in steps]
    assert len(losses) == 3 * STEPS
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.9 * first, f"loss did not fall: first steps {losses[:3]}, last steps {losses[-3:]}"


def test_resume_continues_epoch_and_optimizer_step(run_dir):
    before = json.loads((run_dir / "after_two_epochs.json").read_text())
    after = json.loads((run_dir / "state.json").read_text())
    assert (before["epoch"], before["step"]) == (2, 2 * STEPS)
    assert (after["epoch"], after["step"]) == (3, 3 * STEPS)
    steps, epochs = read_log(run_dir)
    assert [s["step"] for s in steps] == list(range(1, 3 * STEPS + 1))  # no restart, no repeat
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    adam_steps = {float(v) for k, v in load_file(run_dir / "state.safetensors").items() if k.endswith(".step")}
    assert adam_steps == {3.0 * STEPS}  # AdamW's own step counter carried over


def test_resume_with_other_architecture_names_the_mismatch(run_dir, capsys):
    code = roadseg_main(["train", "--arch", "smp:fpn:resnet18", "--out", str(run_dir), "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--arch" in err and "unet" in err and "fpn" in err


def test_fresh_run_refuses_to_overwrite_a_run(run_dir, capsys):
    code = roadseg_main(["train", "--arch", "smp:unet:resnet18", "--synthetic", "--out", str(run_dir)])
    assert code == 2 and "--resume" in capsys.readouterr().err


def test_bad_cityscapes_path_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-cityscapes"
    code = roadseg_main(["train", "--arch", "smp:unet:resnet18", "--cityscapes", str(missing),
                         "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert code == 2
    assert str(missing) in capsys.readouterr().err


def test_unknown_arch_exits_2_listing_choices(tmp_path, capsys):
    code = roadseg_main(["train", "--arch", "unknown", "--synthetic", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "'unknown'" in err and "smp:ARCH:ENCODER" in err and "unet" in err and "dabnet" in err


def test_resume_state_restores_schedule_and_optimizer_exactly(tmp_path):
    """Save after 4 of 10 steps, restore into fresh objects: the next steps match bit for bit."""
    config = TrainConfig(family="smp", arguments={}, data="synthetic", out=tmp_path, size=(64, 64), crop=(64, 64))

    def fresh(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
        torch.manual_seed(seed)
        model = nn.Linear(4, 3)
        return model, torch.optim.AdamW(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu", enabled=False)

    def schedule(optimizer: torch.optim.Optimizer, start: int):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10, last_epoch=start - 1)

    def steps(model, optimizer, scheduler, count: int) -> list[float]:
        lrs = []
        for i in range(count):
            lrs.append(optimizer.param_groups[0]["lr"])
            loss = model(torch.full((2, 4), float(i))).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        return lrs

    model, optimizer, scaler = fresh(0)
    scheduler = schedule(optimizer, 0)
    steps(model, optimizer, scheduler, 4)
    save_state(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
               progress=Progress(epoch=1, step=4), config=config, total_steps=10)
    expected_lrs = steps(model, optimizer, scheduler, 4)

    other, other_optimizer, other_scaler = fresh(1)
    restored = restore_training(read_state(tmp_path), model=other, optimizer=other_optimizer, scaler=other_scaler,
                                make_scheduler=lambda start: schedule(other_optimizer, start), total_steps=10)
    assert steps(other, other_optimizer, restored, 4) == expected_lrs
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)


def _palette_frame(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A label of 16x16 class blocks and the image that paints each class in its palette colour."""
    blocks = rng.integers(0, NUM_CLASSES, size=(8, 16)).astype(np.uint8)
    label = np.kron(blocks, np.ones((16, 16), np.uint8))
    return PALETTE[label], label


def test_geometric_augmentation_keeps_image_and_label_aligned():
    colour_to_class = {tuple(int(c) for c in colour): k for k, colour in enumerate(PALETTE)}
    config = AugmentConfig(flip_p=1.0, scale_range=(0.6, 1.4))
    for seed in range(6):
        rng = np.random.default_rng(seed)
        image, label = _palette_frame(rng)
        out_image, out_label, _ = scale_flip_crop(image, label, (256, 128), (96, 96), rng, config)
        assert out_image.shape == (96, 96, 3) and out_label.shape == (96, 96)
        pixels = out_image.reshape(-1, 3)
        classes = np.array([colour_to_class.get(tuple(int(c) for c in p), -1) for p in pixels])
        exact = classes >= 0  # blended edge pixels (linear resize) match no palette colour
        assert exact.mean() > 0.5
        assert (classes[exact] == out_label.ravel()[exact]).mean() > 0.99, f"seed {seed}: misaligned"
        padded = out_label.ravel() == IGNORE_INDEX
        assert (pixels[padded] == PAD_RGB).all()
    # Without the flip the same crop differs: the flip really happened to both arrays.
    image, label = _palette_frame(np.random.default_rng(0))
    flipped = scale_flip_crop(image, label, (256, 128), (96, 96), np.random.default_rng(9), config)[1]
    plain = scale_flip_crop(image, label, (256, 128), (96, 96), np.random.default_rng(9),
                            AugmentConfig(flip_p=0.0, scale_range=(0.6, 1.4)))[1]
    assert not np.array_equal(flipped, plain)


def test_photometric_augmentation_changes_image_only():
    image, label = _palette_frame(np.random.default_rng(1))
    weather = AugmentConfig(jitter_p=1.0, fog_p=1.0, rain_p=1.0)
    clear = AugmentConfig(jitter_p=0.0, fog_p=0.0, rain_p=0.0)
    wet_image, wet_label = augment(image, label, (256, 128), (128, 128), np.random.default_rng(5), weather)
    dry_image, dry_label = augment(image, label, (256, 128), (128, 128), np.random.default_rng(5), clear)
    assert np.array_equal(wet_label, dry_label)
    assert wet_image.dtype == np.uint8 and wet_image.shape == dry_image.shape
    assert not np.array_equal(wet_image, dry_image)
    grey = np.zeros((100, 50, 3), np.uint8)
    foggy = fog(grey, np.random.default_rng(0), AugmentConfig()).astype(float)
    assert foggy[:10].mean() > foggy[-10:].mean() + 50  # haze thickest far away (top)


def test_dataset_reads_one_frame_per_item(monkeypatch):
    root = require_shared("cityscapes")
    calls = {"image": 0, "truth": 0}
    real_rgb, real_truth = train_data.read_rgb, train_data.read_cityscapes_truth

    def counting_rgb(path):
        calls["image"] += 1
        return real_rgb(path)

    def counting_truth(path, shape):
        calls["truth"] += 1
        return real_truth(path, shape)

    monkeypatch.setattr(train_data, "read_rgb", counting_rgb)
    monkeypatch.setattr(train_data, "read_cityscapes_truth", counting_truth)
    frames = train_data.CityscapesFrames(root, "train")
    dataset = train_data.TrainDataset(frames, (128, 64), (64, 64), AugmentConfig(), seed=0)
    assert len(dataset) == 11 and calls == {"image": 0, "truth": 0}  # listing reads nothing
    image, label = dataset[(4, 17)]
    assert calls == {"image": 1, "truth": 1}
    assert image.shape == (64, 64, 3) and label.shape == (64, 64) and image.dtype == torch.uint8
    assert torch.equal(dataset[(4, 17)][0], image)  # same key, same augmentation
    assert calls == {"image": 2, "truth": 2}


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    keys = list(train_data.EpochSampler(11, 30, seed=3, epoch=2))
    assert keys == list(train_data.EpochSampler(11, 30, seed=3, epoch=2))
    assert keys != list(train_data.EpochSampler(11, 30, seed=3, epoch=3))
    assert sorted(index for index, _ in keys[:11]) == list(range(11))  # whole passes, shuffled
    assert len({draw for _, draw in keys}) == 30


def test_distillation_is_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 8, 8) * 3
    target = torch.randint(0, NUM_CLASSES, (2, 8, 8))
    assert distillation_loss(logits, logits.clone(), target, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits, torch.randn_like(logits), target, temperature=2.0).item() > 0.1
    _, parts = segmentation_loss(logits, target, dice_weight=1.0, teacher_logits=logits.clone(), kd_weight=1.0,
                                 kd_temperature=4.0)
    assert parts["kd"] == pytest.approx(0.0, abs=1e-6)


def test_losses_skip_padding():
    logits = torch.randn(1, NUM_CLASSES, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE_INDEX, dtype=torch.long)
    target[0, 0, 0] = 1
    loss, _ = segmentation_loss(logits, target, dice_weight=1.0)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[0, :, 1:, :].abs().sum() == 0  # no gradient from padded pixels
