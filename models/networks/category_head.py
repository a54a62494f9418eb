"""Fold a 19-class Cityscapes (trainId) model into our 8 categories.

Each category's score is the log-sum-exp of its member classes' logits, so the
folded softmax equals the sum of the members' probabilities: a pixel split 40/35
between car and truck is confidently "vehicle", which a plain argmax-then-map
would also give, but the scores stay meaningful for calibration and
distillation. Void has no member class: it gets a large negative (finite, so
fp16-safe and never flagged as non-finite) score and is never predicted; a
static per-camera void mask supplies it where needed.

Computed as ONE max over all classes and a 1x1 convolution of ``exp(logits - max)``
with the 0/1 membership matrix, the same maths as the exported ONNX graph
(:mod:`models.export.onnx_graph`): no per-category Python loop (6 kernels, not ~25, on a
GPU), no data-dependent indexing (CUDA-graph capturable), and exactly torch ==
ONNX. A category whose members all lie more than ~87 below the best class is
clipped at ``max - 87`` in fp32 (it cannot win the argmax anyway).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.classes import NUM_CLASSES, TRAIN_ID_TO_CATEGORY

NEVER_LOGIT = -1e4  # exp(-1e4) == 0 in every float type; representable in fp16
TRAIN_ID_TABLE: tuple[int, ...] = tuple(int(category) for category in TRAIN_ID_TO_CATEGORY)


class CategoryFold(nn.Module):
    """Wraps a model emitting ``len(table)`` trainId logits (extra channels are ignored)."""

    members: torch.Tensor
    weight: torch.Tensor
    empty: torch.Tensor

    def __init__(self, net: nn.Module, table: tuple[int, ...] = TRAIN_ID_TABLE):
        super().__init__()
        self.net = net
        self.num_source_classes = len(table)
        members = torch.zeros(NUM_CLASSES, len(table), dtype=torch.bool)
        for source_class, category in enumerate(table):
            members[category, source_class] = True
        # Buffers, not parameters: excluded from state_dict so checkpoints hold only the net;
        # they move with .to(device), so forward never builds a tensor from host data.
        self.register_buffer("members", members, persistent=False)
        self.register_buffer("weight", members.float()[:, :, None, None], persistent=False)
        self.register_buffer("empty", ~members.any(dim=1).view(1, NUM_CLASSES, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)[:, : self.num_source_classes]
        return fold_logits(logits, self.weight, self.empty)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """Category logits at the wrapped net's own output resolution (see :func:`inference_forward`)."""
        logits = inference_forward(self.net)(x)[:, : self.num_source_classes]
        return fold_logits(logits, self.weight, self.empty)


def inference_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """What backends and exports run: the model's logits at its own output resolution when it
    offers them (``forward_native``), else its ``forward``. Backends upsample logits once,
    straight to each frame's size; a net ending in an upsampling to its input size would
    otherwise be upsampled twice, and folded at full resolution (DABNet 1024x512 on a CPU:
    a quarter of its time)."""
    native = getattr(model, "forward_native", None)
    return native if callable(native) else model


def fold_logits(logits: torch.Tensor, weight: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """(B, S, H, W) source logits -> (B, C, H, W) category logits via log-sum-exp over each
    category's members; ``weight`` (C, S, 1, 1) 0/1 membership, ``empty`` (1, C, 1, 1) True
    for categories without members (scored NEVER_LOGIT)."""
    # fp32 whatever the autocast around it: a bf16/fp16 sum of exponentials loses the
    # ranking of close categories.
    with torch.autocast(logits.device.type, enabled=False):
        scores = logits.float()
        peak = scores.amax(dim=1, keepdim=True)
        sums = F.conv2d(torch.exp(scores - peak), weight).clamp_min(torch.finfo(torch.float32).tiny)
        folded = (sums.log() + peak).masked_fill(empty, NEVER_LOGIT)
    return folded.to(logits.dtype)
