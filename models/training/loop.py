"""The training loop behind ``roadseg train``: AdamW + OneCycle, AMP on CUDA, per-epoch
validation, checkpoints and exact resume. :func:`train` is the API; :mod:`models.training.train`
is its command line and :mod:`models.training.demo` its smallest user.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.backends.torch_backend import resolve_device
from models.classes import NUM_CLASSES
from models.evaluation.metrics import category_iou, confusion_matrix, mean_iou
from models.networks.category_head import CategoryFold
from models.networks.factory import ModelConfigError, build_model
from models.store.checkpoint import InputSpec, ModelCard, read_card
from models.store.registry import load_model
from models.training.config import TrainConfig, default_model_id
from models.training.data import (
    SYNTHETIC_DEFAULT_VAL_FRAMES,
    SYNTHETIC_VAL_SEED,
    CityscapesFrames,
    TrainDataset,
    ValDataset,
    synthetic_train_frames,
    synthetic_val_frames,
    train_loader,
    val_loader,
)
from models.training.losses import match_size, segmentation_loss
from models.training.state import (
    LAST_NAME,
    LOG_NAME,
    STATE_JSON_NAME,
    Progress,
    read_state,
    restore_training,
    save_state,
    truncate_log,
    write_checkpoints,
)

log = logging.getLogger("roadseg.train")


@dataclass
class TrainResult:
    model: nn.Module  # the last epoch's weights, eval mode
    card: ModelCard  # as written to last.safetensors
    progress: Progress


@dataclass
class _Run:
    """Everything one run needs, built once by :func:`_prepare`."""

    config: TrainConfig
    device: torch.device
    amp: bool
    model: nn.Module
    spec: InputSpec
    base_card: ModelCard
    train_set: TrainDataset
    val_set: ValDataset
    steps: int  # per epoch
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    progress: Progress = field(default_factory=Progress)
    teacher: tuple[nn.Module, InputSpec] | None = None
    void_trainable: bool = True  # False for CategoryFold models: their void logit is a constant


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train (``resume``: continue) the run described by ``config``; files go to ``config.out``."""
    if not resume and (config.out / STATE_JSON_NAME).exists():
        raise ValueError(f"--out {config.out} already holds a training run ({STATE_JSON_NAME}); "
                         "pass --resume to continue it, or choose another --out")
    run = _prepare(config, resume)
    for epoch in range(run.progress.epoch + 1, config.epochs + 1):
        started = time.monotonic()
        train_loss, last_lr = _train_epoch(run, epoch)
        seconds = time.monotonic() - started
        _finish_epoch(run, epoch, (train_loss, last_lr, seconds), _validate(run))
    card = read_card(config.out / LAST_NAME)
    return TrainResult(run.model.eval(), card, run.progress)


def to_input(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 NHWC RGB batch -> normalised float NCHW as the model's card prescribes."""
    x = images.permute(0, 3, 1, 2).float() * spec.scale
    if spec.channel_order == "BGR":
        x = x.flip(1)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _prepare(config: TrainConfig, resume: bool) -> _Run:
    device = torch.device(resolve_device(config.device))
    amp = _resolve_amp(config.amp, device)
    torch.manual_seed(config.seed)
    model, spec, base_card = _build_student(config)
    train_set, val_set = _datasets(config)
    steps = config.steps_per_epoch or max(1, len(train_set) // config.batch)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    run = _Run(config, device, amp, model, spec, base_card, train_set, val_set, steps, optimizer,
               None, scaler, teacher=_load_teacher(config, device))
    run.void_trainable = not any(isinstance(module, CategoryFold) for module in model.modules())
    if not run.void_trainable:
        log.info("%s cannot predict void (19 classes folded to 8): void pixels are ignored in the losses",
                 base_card.model_id)
    if resume:
        _resume(run)
    else:
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / LOG_NAME).unlink(missing_ok=True)
        run.scheduler = _scheduler(run, start_step=0)
    log.info("training %s on %s (%s, amp %s): %d epochs x %d steps, batch %d, crop %dx%d of %dx%d frames",
             base_card.model_id, config.data, device, "on" if amp else "off", config.epochs, steps,
             config.batch, *config.crop, *config.size)
    return run


def _resolve_amp(amp: bool | None, device: torch.device) -> bool:
    if device.type != "cuda":
        if amp:
            log.warning("--amp needs CUDA (fp16 autocast); training in fp32 on %s", device)
        return False
    return True if amp is None else amp


def _build_student(config: TrainConfig) -> tuple[nn.Module, InputSpec, ModelCard]:
    if config.init:
        model, init_card = load_model(config.init)
        if (init_card.family, init_card.arguments) != (config.family, config.arguments):
            raise ModelConfigError(
                f"--init {config.init} is {init_card.family} {init_card.arguments}, "
                f"but --arch asks for {config.family} {config.arguments}"
            )
        spec = _input_spec(init_card.input, config)
        card = replace(init_card, model_id=default_model_id(config, init_card.model_id), input=spec,
                       provenance={"init": init_card.model_id, "init_provenance": init_card.provenance})
        return model, spec, card
    model = build_model(config.family, config.arguments)
    spec = _input_spec(InputSpec(), config)
    card = ModelCard(model_id=default_model_id(config, None), family=config.family,
                     arguments=config.arguments, input=spec)
    return model, spec, card


def _input_spec(base: InputSpec, config: TrainConfig) -> InputSpec:
    divisor = base.divisor
    for flag, (width, height) in (("--size", config.size), ("--crop", config.crop)):
        if width < divisor or height < divisor or width % divisor or height % divisor:
            raise ValueError(f"{flag} {width}x{height}: width and height must be multiples of {divisor} "
                             "(the model downsamples by that factor)")
    return replace(base, size=config.size)


def _datasets(config: TrainConfig) -> tuple[TrainDataset, ValDataset]:
    if config.data == "cityscapes":
        assert config.cityscapes is not None  # TrainConfig checks it
        train_frames: Any = CityscapesFrames(config.cityscapes, "train")
        val_set = ValDataset(CityscapesFrames(config.cityscapes, "val"), config.size, config.val_limit)
    else:
        train_frames = synthetic_train_frames(config.size)
        frames = config.val_limit or SYNTHETIC_DEFAULT_VAL_FRAMES
        val_set = ValDataset(synthetic_val_frames(config.size, frames), config.size)
    train_set = TrainDataset(train_frames, config.size, config.crop, config.augment, config.seed)
    return train_set, val_set


def _load_teacher(config: TrainConfig, device: torch.device) -> tuple[nn.Module, InputSpec] | None:
    if not config.teacher:
        return None
    teacher, card = load_model(config.teacher)
    teacher.to(device).eval().requires_grad_(False)  # a fixed target: never trained, no dropout
    log.info("distilling from teacher %s (weight %g, temperature %g)", card.model_id, config.kd_weight,
             config.kd_temperature)
    return teacher, card.input


def _scheduler(run: _Run, start_step: int) -> Any:
    """OneCycle over all epochs; ``start_step`` > 0 positions a rebuilt schedule at that step
    (OneCycle then reads ``initial_lr`` from the restored optimizer)."""
    return torch.optim.lr_scheduler.OneCycleLR(
        run.optimizer, max_lr=run.config.lr, total_steps=run.config.epochs * run.steps,
        pct_start=run.config.warmup_fraction, last_epoch=start_step - 1,
    )


def _resume(run: _Run) -> None:
    saved = read_state(run.config.out)
    run.progress = saved.progress
    total = run.config.epochs * run.steps
    if run.progress.step > total:
        raise ValueError(f"--epochs {run.config.epochs}: the run in {run.config.out} already trained "
                         f"{run.progress.epoch} epochs")
    run.scheduler = restore_training(saved, model=run.model, optimizer=run.optimizer, scaler=run.scaler,
                                     make_scheduler=lambda start: _scheduler(run, start), total_steps=total)
    truncate_log(run.config.out, run.progress.step)
    log.info("resuming %s after epoch %d (step %d)", run.config.out, run.progress.epoch, run.progress.step)
    if run.progress.epoch == run.config.epochs:
        log.warning("%s already finished its %d epochs; raise --epochs to train on", run.config.out, run.config.epochs)


def _train_epoch(run: _Run, epoch: int) -> tuple[float, float]:
    """One epoch of optimizer steps; returns the mean loss and the last step's learning rate."""
    config = run.config
    loader = train_loader(run.train_set, config.batch, run.steps, epoch, config.workers,
                          pin_memory=run.device.type == "cuda")
    losses: list[float] = []
    lr = float("nan")
    bar = tqdm(total=run.steps, desc=f"epoch {epoch}/{config.epochs}", unit="step", leave=False, dynamic_ncols=True)
    with bar, (config.out / LOG_NAME).open("a", encoding="utf-8") as log_file:
        for images, labels in loader:
            lr = float(run.optimizer.param_groups[0]["lr"])
            parts = _train_step(run, images, labels)
            run.progress.step += 1
            losses.append(parts["loss"])
            log_file.write(json.dumps({"epoch": epoch, "step": run.progress.step, "lr": lr, **parts}) + "\n")
            bar.set_postfix(loss=f"{parts['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            bar.update()
    return float(np.mean(losses)), lr


def _train_step(run: _Run, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    images = images.to(run.device, non_blocking=True)
    target = labels.to(run.device, non_blocking=True).long()
    with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.amp):
        logits = run.model(to_input(images, run.spec))
        teacher_logits = None
        if run.teacher is not None:
            with torch.no_grad():  # not inference_mode: the KD term's backward reads these
                teacher_logits = run.teacher[0](to_input(images, run.teacher[1]))
    loss, parts = segmentation_loss(
        logits, target, dice_weight=run.config.dice_weight, teacher_logits=teacher_logits,
        kd_weight=run.config.kd_weight, kd_temperature=run.config.kd_temperature,
        void_trainable=run.void_trainable,
    )
    value = float(loss.detach())
    if not np.isfinite(value):
        raise FloatingPointError(f"training loss became {value} at step {run.progress.step + 1} "
                                 f"(lr {run.optimizer.param_groups[0]['lr']:.2e}); try a lower --lr")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return {"loss": value, **parts}


@torch.no_grad()
def _validate(run: _Run) -> dict[str, float]:
    """Mean IoU (void included) and Cityscapes category IoU over the val frames at ``--size``."""
    run.model.eval()
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    loader = val_loader(run.val_set, run.config.batch, run.config.workers, pin_memory=run.device.type == "cuda")
    for images, labels in tqdm(loader, desc="validate", unit="batch", leave=False, dynamic_ncols=True):
        with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.amp):
            logits = run.model(to_input(images.to(run.device), run.spec))
        pred = match_size(logits.float(), tuple(labels.shape[-2:])).argmax(1).to(torch.uint8).cpu().numpy()
        cm += confusion_matrix(labels.numpy(), pred)
    run.model.train()
    return {"mean_iou": mean_iou(cm), "category_iou": category_iou(cm), "frames": len(run.val_set)}


def _metric_prefix(config: TrainConfig) -> str:
    return "cityscapes_val" if config.data == "cityscapes" else f"synthetic_seed{SYNTHETIC_VAL_SEED}"


def _finish_epoch(run: _Run, epoch: int, trained: tuple[float, float, float], val: dict[str, float]) -> None:
    """Update the best metric, write checkpoints + resume state + log, print the summary line."""
    progress, config = run.progress, run.config
    train_loss, last_lr, seconds = trained
    progress.epoch = epoch
    improved = progress.best_mean_iou is None or val["mean_iou"] > progress.best_mean_iou
    if improved:
        progress.best_mean_iou, progress.best_epoch = round(val["mean_iou"], 6), epoch
    prefix = _metric_prefix(config)
    metrics = {f"{prefix}_mean_iou": round(val["mean_iou"], 4), f"{prefix}_category_iou": round(val["category_iou"], 4),
               "val_frames": int(val["frames"]), "val_size": list(config.size), "train_loss": round(train_loss, 4)}
    card = replace(
        run.base_card,
        metrics=metrics,
        provenance={**run.base_card.provenance, "trained_by": "roadseg train", "epoch": epoch,
                    "step": progress.step, "config": config.to_json()},
    )
    write_checkpoints(config.out, run.model, card, best=improved)
    save_state(config.out, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler,
               progress=progress, config=config, total_steps=config.epochs * run.steps)
    with (config.out / LOG_NAME).open("a", encoding="utf-8") as log_file:
        log_file.write(json.dumps({"epoch": epoch, "step": progress.step, "train_loss": train_loss, **val}) + "\n")
    print(f"epoch {epoch}/{config.epochs} step {progress.step} loss {train_loss:.4f} "
          f"lr {last_lr:.2e} val mIoU {val['mean_iou']:.4f} "
          f"catIoU {val['category_iou']:.4f} best {progress.best_mean_iou:.4f}@{progress.best_epoch} "
          f"({seconds:.1f} s, {run.steps / seconds:.2f} it/s)", flush=True)
