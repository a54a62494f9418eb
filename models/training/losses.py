"""Training losses: cross-entropy + Dice, plus knowledge distillation from a teacher.

    total = CE + dice_weight * Dice + kd_weight * KD

All terms skip pixels labelled :data:`~models.training.augment.IGNORE_INDEX` (crop padding, and
the Cityscapes labels the benchmark ignores: :data:`models.classes.IGNORED_IN_EVAL`) and are
computed in fp32 even under autocast: softmax/log of fp16 logits loses precision.

Models that cannot predict void (19-class nets folded to categories by
:class:`~models.networks.category_head.CategoryFold`: void is a constant -1e4 logit) train with
``void_trainable=False``: void pixels are ignored (else CE would be ~1e4 per void pixel
with no useful gradient) and distillation compares the 7 non-void classes only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.classes import NUM_CLASSES, Category
from models.training.augment import IGNORE_INDEX

DICE_SMOOTH = 1.0  # keeps Dice finite (and ~1 - 1 = 0) for classes absent from the batch


def match_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of logits to ``size`` (H, W); models that predict at a lower
    resolution are trained and compared at label resolution."""
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft multi-class Dice over the batch, averaged over all classes:
    ``1 - mean_c (2 * sum(p_c * y_c) + s) / (sum(p_c) + sum(y_c) + s)``, ignored pixels excluded."""
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0), NUM_CLASSES).permute(0, 3, 1, 2)
    onehot = onehot.to(probs.dtype) * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2.0 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Per-pixel KL divergence from the softened teacher to the softened student (Hinton et al.):

        KD = T**2 * mean_pixels sum_c q_c * (log q_c - log p_c)
        q = softmax(z_teacher / T),  p = softmax(z_student / T)

    averaged over non-ignored pixels. ``T > 1`` exposes the teacher's ranking of the wrong
    classes ("dark knowledge"); the ``T**2`` factor keeps gradient sizes independent of T.
    Zero exactly when student and teacher logits agree.
    """
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(student / temperature, dim=1)
    log_q = F.log_softmax(teacher / temperature, dim=1)
    per_pixel = (log_q.exp() * (log_q - log_p)).sum(dim=1)
    valid = (target != IGNORE_INDEX).to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1.0) * temperature**2


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float,
    teacher_logits: torch.Tensor | None = None, kd_weight: float = 0.0, kd_temperature: float = 1.0,
    void_trainable: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective and its parts (as floats, for logging)."""
    if not void_trainable:
        target = target.masked_fill(target == Category.VOID, IGNORE_INDEX)
    size = (int(target.shape[-2]), int(target.shape[-1]))
    logits = match_size(logits.float(), size)
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    if not (target != IGNORE_INDEX).any():
        ce = logits.sum() * 0.0  # an all-padding batch: no signal (CE alone would be NaN)
    dice = dice_loss(logits, target)
    total = ce + dice_weight * dice
    parts = {"ce": float(ce.detach()), "dice": float(dice.detach())}
    if teacher_logits is not None:
        teacher_logits = match_size(teacher_logits.float(), size)
        first = 0 if void_trainable else Category.VOID + 1  # void-less students: the 7 real classes
        kd = distillation_loss(logits[:, first:], teacher_logits[:, first:], target, kd_temperature)
        total = total + kd_weight * kd
        parts["kd"] = float(kd.detach())
    return total, parts
