"""Fold a 19-class Cityscapes (trainId) model into our 8 categories.

Each category's score is the log-sum-exp of its member classes' logits, so the
folded softmax equals the sum of the members' probabilities: a pixel split 40/35
between car and truck is confidently "vehicle", which a plain argmax-then-map
would also give, but the scores stay meaningful for calibration and
distillation. Void has no member class: it gets a large negative (finite, so
fp16-safe and never flagged as non-finite) score and is never predicted; a
static per-camera void mask supplies it where needed.
"""

from __future__ import annotations

import torch
from torch import nn

from models.classes import NUM_CLASSES, TRAIN_ID_TO_CATEGORY

NEVER_LOGIT = -1e4  # exp(-1e4) == 0 in every float type; representable in fp16
TRAIN_ID_TABLE: tuple[int, ...] = tuple(int(category) for category in TRAIN_ID_TO_CATEGORY)


class CategoryFold(nn.Module):
    """Wraps a model emitting ``len(table)`` trainId logits (extra channels are ignored)."""

    members: torch.Tensor

    def __init__(self, net: nn.Module, table: tuple[int, ...] = TRAIN_ID_TABLE):
        super().__init__()
        self.net = net
        self.num_source_classes = len(table)
        members = torch.zeros(NUM_CLASSES, len(table), dtype=torch.bool)
        for source_class, category in enumerate(table):
            members[category, source_class] = True
        # Buffers, not parameters: excluded from state_dict so checkpoints hold only the net.
        self.register_buffer("members", members, persistent=False)
        # Each category's member indices are found once, here on the host: nonzero() in forward
        # would make the CPU wait for the GPU on every frame, and CUDA graph capture (the
        # torch-cudagraph backend) forbids that sync outright. Index buffers move with .to(device).
        self._index_names: list[str | None] = []
        for category in range(NUM_CLASSES):
            index = members[category].nonzero().flatten()
            name = f"members_{category}" if index.numel() else None
            if name is not None:
                self.register_buffer(name, index, persistent=False)
            self._index_names.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)[:, : self.num_source_classes]
        return fold_logits(logits, [None if name is None else getattr(self, name) for name in self._index_names])


def fold_logits(logits: torch.Tensor, member_indices: list[torch.Tensor | None]) -> torch.Tensor:
    """(B, S, H, W) source logits -> (B, categories, H, W) category logits via log-sum-exp;
    ``member_indices[c]``: the source classes of category ``c`` (on the logits' device), None for none."""
    out = []
    for index in member_indices:
        if index is None:
            out.append(torch.full_like(logits[:, :1], NEVER_LOGIT))
        else:
            out.append(torch.logsumexp(logits.index_select(1, index).float(), dim=1, keepdim=True).to(logits.dtype))
    return torch.cat(out, dim=1)
