"""Measured accuracy into the model card: ``roadseg eval`` -> ``roadseg models info NAME``.

Which checkpoints are written (``--save-metrics``):
- default: zoo models only. Their checkpoint lives in roadseg's own cache, written by
  roadseg, so recording what was measured there surprises no one.
- ``--save-metrics``: also built-in models and checkpoint paths. Built-ins are files of the
  installed package (read-only in a wheel, tracked in a checkout) and a path is the user's
  file: neither is rewritten unless asked.
- ``--no-save-metrics``: nothing.
A ``--limit`` run is not recorded by default either: a few frames are not the split's score.

Each setup gets its own entry under ``metrics["eval"]``, keyed by what changes the numbers
(split, input size, backend, precision, device), so an onnxruntime fp16 score never
overwrites the torch fp32 one. The card is rewritten atomically (see
:func:`models.store.checkpoint.update_card`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.classes import CLASS_NAMES, Category
from models.errors import CheckpointError
from models.evaluation.result import EvalResult, finite_or_none

log = logging.getLogger(__name__)

VOID_NAME = CLASS_NAMES[Category.VOID]  # void ignored has no void entry: the official metric scores 7
EVAL_METRICS_KEY = "eval"  # card.metrics[EVAL_METRICS_KEY][setup key] = one eval's record


def record_target(model_spec: str, save: bool | None, limit: int | None) -> Path | None:
    """The checkpoint file whose card should receive the metrics, or None (see the module doc)."""
    from models.store.names import UNTRAINED_PREFIX, checkpoint_for
    from models.store.zoo import ZOO

    if save is False or (save is None and (model_spec not in ZOO or limit is not None)):
        return None
    if model_spec.startswith(UNTRAINED_PREFIX):  # only reached with --save-metrics
        raise CheckpointError(f"--save-metrics: {model_spec} has no checkpoint file to record metrics in")
    path = checkpoint_for(model_spec)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    # Checked now, not after minutes of eval: the card is rewritten by a rename inside this folder.
    if not os.access(path.parent, os.W_OK):
        raise CheckpointError(f"--save-metrics: cannot write beside {path} (folder not writable)")
    return path


def setup_key(result: EvalResult) -> str:
    """``cityscapes:val:2048x1024:torch:fp32:cpu`` (``val/frankfurt`` for one city)."""
    where = f"{result.split}/{result.city}" if result.city else result.split
    width, height = result.input_size
    return f"cityscapes:{where}:{width}x{height}:{result.backend}:{result.precision}:{result.device}"


def eval_record(result: EvalResult) -> dict[str, Any]:
    """What the card keeps of one eval: fractions (as training's metrics), with how they were measured."""
    from models.evaluation.report import roadseg_version

    return {
        "category_iou": finite_or_none(result.category_iou),
        "mean_iou": finite_or_none(result.mean_iou),
        "pixel_accuracy": finite_or_none(result.pixel_accuracy),
        "per_category_iou_void_ignored": {
            name: finite_or_none(float(v))
            for name, v in zip(CLASS_NAMES, result.per_class_iou_void_ignored, strict=True)
            if name != VOID_NAME
        },
        "per_category_iou_void_included": {
            name: finite_or_none(float(v)) for name, v in zip(CLASS_NAMES, result.per_class_iou, strict=True)
        },
        **({"road_iou": finite_or_none(result.road_iou)} if result.road_iou is not None else {}),
        "frames": result.frames,
        "root": result.root,
        "images_per_s": finite_or_none(result.images_per_s),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "roadseg_version": roadseg_version(),
    }


def record_metrics(path: Path, result: EvalResult, unchanged_since: os.stat_result | None = None) -> str | None:
    """Store ``result`` in the card of ``path``; returns its key, or None (with a warning) when the
    file was replaced while eval ran."""
    from models.store.checkpoint import ModelCard, update_card

    key = setup_key(result)
    record = eval_record(result)

    def change(card: ModelCard) -> ModelCard:
        if card.model_id != result.model_id:
            raise CheckpointError(f"checkpoint {path} now holds {card.model_id}, eval measured {result.model_id}")
        evals = dict(card.metrics.get(EVAL_METRICS_KEY) or {})
        evals[key] = record
        return replace(card, metrics={**card.metrics, EVAL_METRICS_KEY: evals})

    if not update_card(path, change, unchanged_since=unchanged_since):
        log.warning("%s was replaced while eval ran: its metrics were not recorded", path)
        return None
    return key

