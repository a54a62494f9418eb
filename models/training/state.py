"""The files a training run keeps in ``--out``, all written without pickle.

- ``last.safetensors`` / ``best.safetensors``: roadseg checkpoints (:mod:`models.store.checkpoint`);
- ``state.safetensors``: model, AdamW moments and RNG states as tensors;
- ``state.json``: epoch, step, best metric, seed, run config, LR-scheduler and grad-scaler
  scalars, optimizer hyper-parameters;
- ``train_log.jsonl``: one JSON line per optimizer step (loss parts, lr) and per epoch.

Each file is written to a temporary name and renamed, so a crash never leaves a torn
file. ``state.safetensors`` also carries epoch and step in its metadata: a crash between
the two state writes is detected on resume instead of mixing two epochs.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from models.atomic import atomic_path
from models.store.checkpoint import CheckpointError, ModelCard, save_checkpoint
from models.training.config import TrainConfig

log = logging.getLogger("roadseg.train")

LAST_NAME = "last.safetensors"
BEST_NAME = "best.safetensors"
STATE_TENSORS_NAME = "state.safetensors"
STATE_JSON_NAME = "state.json"
LOG_NAME = "train_log.jsonl"
STATE_FORMAT = "roadseg.train_state"
STATE_VERSION = 1
MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optimizer."
TORCH_RNG_KEY = "rng.torch"
CUDA_RNG_PREFIX = "rng.cuda."


@dataclass
class Progress:
    """Where a run stands after its last completed epoch."""

    epoch: int = 0
    step: int = 0
    best_mean_iou: float | None = None
    best_epoch: int = 0


@dataclass
class SavedState:
    body: dict[str, Any]  # state.json
    tensors: dict[str, torch.Tensor]  # state.safetensors

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_json(self.body["config"])

    @property
    def progress(self) -> Progress:
        return Progress(**{k: self.body[k] for k in ("epoch", "step", "best_mean_iou", "best_epoch")})


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    with atomic_path(path) as temporary:
        write(temporary)


def write_checkpoints(out: Path, model: nn.Module, card: ModelCard, *, best: bool) -> None:
    """``last.safetensors`` always (fp32, to fine-tune further), ``best.safetensors`` when ``best``."""
    last = out / LAST_NAME
    _atomic(last, lambda path: save_checkpoint(path, model, card))
    if best:
        _atomic(out / BEST_NAME, lambda path: shutil.copyfile(last, path))


def save_state(out: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: torch.amp.GradScaler, progress: Progress, config: TrainConfig, total_steps: int) -> None:
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for param_id, slots in optimizer_state["state"].items():
        for name, value in slots.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {param_id}.{name} is {type(value).__name__}, not a tensor")
            tensors[f"{OPTIMIZER_PREFIX}{param_id}.{name}"] = value.detach().cpu().contiguous()
    tensors[TORCH_RNG_KEY] = torch.get_rng_state()
    if torch.cuda.is_available():
        for index, rng_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{CUDA_RNG_PREFIX}{index}"] = rng_state
    body = {
        "format": STATE_FORMAT, "format_version": STATE_VERSION, **asdict(progress),
        "seed": config.seed, "total_steps": total_steps, "config": config.to_json(),
        "optimizer_groups": optimizer_state["param_groups"], "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
    }
    stamp = {"epoch": str(progress.epoch), "step": str(progress.step)}
    _atomic(out / STATE_TENSORS_NAME, lambda path: save_file(tensors, str(path), metadata=stamp))
    _atomic(out / STATE_JSON_NAME, lambda path: path.write_text(json.dumps(body, indent=1), encoding="utf-8"))


def read_state_json(out: Path) -> dict[str, Any]:
    path = out / STATE_JSON_NAME
    if not path.is_file():
        raise CheckpointError(f"--resume: nothing to resume in {out} (no {STATE_JSON_NAME})")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"--resume: {path} is not readable JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != STATE_FORMAT or body.get("format_version") != STATE_VERSION:
        raise CheckpointError(f"--resume: {path} is not a {STATE_FORMAT} v{STATE_VERSION} file")
    return body


def read_state(out: Path) -> SavedState:
    body = read_state_json(out)
    path = out / STATE_TENSORS_NAME
    try:
        with safe_open(str(path), framework="pt") as handle:
            stamp = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"--resume: {path} is missing or unreadable: {exc}") from exc
    if stamp != {"epoch": str(body["epoch"]), "step": str(body["step"])}:
        raise CheckpointError(
            f"--resume: {path} ({stamp}) and {STATE_JSON_NAME} (epoch {body['epoch']}, step {body['step']}) "
            "come from different epochs (interrupted while saving?)"
        )
    return SavedState(body, tensors)


def restore_training(saved: SavedState, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, make_scheduler: Callable[[int], Any], total_steps: int) -> Any:
    """Put model, optimizer, grad scaler, RNG and LR schedule back as saved; returns the scheduler.

    ``make_scheduler(start_step)`` builds the run's schedule. With ``total_steps`` unchanged the
    saved schedule continues exactly; a changed total (``--epochs`` raised) rebuilds it at the
    saved step, stretching what is left of it.
    """
    _restore_model(saved, model)
    scheduler = make_scheduler(0)  # a fresh schedule resets the optimizer's lr: build it before loading
    _restore_optimizer(saved, optimizer)
    _restore_scaler(saved, scaler)
    _restore_rng(saved)
    if saved.body["total_steps"] == total_steps:
        scheduler.load_state_dict(saved.body["scheduler"])
        return scheduler
    log.warning("the schedule changed from %d to %d steps in all: what is left of it is stretched",
                saved.body["total_steps"], total_steps)
    return make_scheduler(int(saved.body["step"]))


def _restore_model(saved: SavedState, model: nn.Module) -> None:
    weights = {k[len(MODEL_PREFIX):]: v for k, v in saved.tensors.items() if k.startswith(MODEL_PREFIX)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"--resume: saved weights do not fit the model: {exc}") from exc


def _restore_optimizer(saved: SavedState, optimizer: torch.optim.Optimizer) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in saved.tensors.items():
        if key.startswith(OPTIMIZER_PREFIX):
            param_id, name = key[len(OPTIMIZER_PREFIX):].split(".", 1)
            state.setdefault(int(param_id), {})[name] = value
    groups = [dict(group) for group in saved.body["optimizer_groups"]]
    for group in groups:
        group["betas"] = tuple(group["betas"])  # JSON turned the tuple into a list
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _restore_rng(saved: SavedState) -> None:
    torch.set_rng_state(saved.tensors[TORCH_RNG_KEY])
    cuda_states = [v for k, v in sorted(saved.tensors.items()) if k.startswith(CUDA_RNG_PREFIX)]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def _restore_scaler(saved: SavedState, scaler: torch.amp.GradScaler) -> None:
    # A disabled scaler (CPU, or --no-amp) saves {}; moving between AMP and fp32 starts afresh.
    if saved.body["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(saved.body["scaler"])


def truncate_log(out: Path, step: int) -> None:
    """Drop log lines of steps after ``step``: a run killed mid-epoch repeats that epoch."""
    path = out / LOG_NAME
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
