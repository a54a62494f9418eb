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

The drivable-road layer (issue 10) splits ``flat`` where the 19 classes can: a pixel is road
when the category mask says flat AND road's logit beats sidewalk's (the other flat member;
parking is not among the 19). So road is always inside flat, a void mask applied to the
categories removes road too, and the decision needs one extra channel, the *road margin*
``logit[road] - logit[sidewalk]``: linear in the logits, so it upsamples with them exactly
(on the Cityscapes val frames it agrees with "19-class argmax is road" to 0.02 IoU points).
:meth:`CategoryFold.forward_native_layers` emits the categories and the margin together;
:func:`split_layers` turns them into (labels, road).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.classes import NUM_CLASSES, ROAD_TRAIN_ID, TRAIN_ID_TO_CATEGORY, Category

NEVER_LOGIT = -1e4  # exp(-1e4) == 0 in every float type; representable in fp16
TRAIN_ID_TABLE: tuple[int, ...] = tuple(int(category) for category in TRAIN_ID_TO_CATEGORY)
# The other flat classes road competes with in the road margin (sidewalk, trainId 1).
ROAD_SIBLINGS: tuple[int, ...] = tuple(
    i for i, c in enumerate(TRAIN_ID_TABLE) if c == TRAIN_ID_TABLE[ROAD_TRAIN_ID] and i != ROAD_TRAIN_ID
)
ROAD_MARGIN_CHANNEL = NUM_CLASSES  # forward_native_layers: channels 0..7 categories, then the road margin
LAYER_CHANNELS = NUM_CLASSES + 1


class CategoryFold(nn.Module):
    """Wraps a model emitting ``len(table)`` trainId logits (extra channels are ignored)."""

    members: torch.Tensor
    weight: torch.Tensor
    empty: torch.Tensor

    def __init__(self, net: nn.Module, table: tuple[int, ...] = TRAIN_ID_TABLE):
        super().__init__()
        self.net = net
        self.num_source_classes = len(table)
        # The road layer needs the Cityscapes trainIds (road = 0, sidewalk = 1), not any table.
        self.has_road = tuple(table) == TRAIN_ID_TABLE
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

    def forward_native_layers(self, x: torch.Tensor) -> torch.Tensor:
        """(B, :data:`LAYER_CHANNELS`, h, w) at the net's own resolution: the category logits of
        :meth:`forward_native` (channels 0..7, bit-identical) and the road margin (channel
        :data:`ROAD_MARGIN_CHANNEL`). Upsample it as a whole, then :func:`split_layers`."""
        if not self.has_road:
            raise ValueError("this category fold is not over the 19 Cityscapes classes: it has no road class")
        logits = inference_forward(self.net)(x)[:, : self.num_source_classes]
        folded = fold_logits(logits, self.weight, self.empty)
        return torch.cat([folded, road_margin(logits).to(folded.dtype)], dim=1)


class RoadPreference(nn.Module):
    """Two logits per pixel, ``[-margin, margin]`` (:func:`road_margin` of a road-capable
    :class:`CategoryFold`), so any backend's upsample-then-argmax yields 1 exactly where road
    outscores sidewalk, at the frame's size. Intersected with the backend's own flat pixels
    (:func:`models.drivable.road_mask`) that is the road layer, for backends that do not emit
    :meth:`CategoryFold.forward_native_layers` themselves (a second pass over the net). Only for
    engines that run the module (torch): an export of it would share the fold's fingerprint."""

    def __init__(self, fold: CategoryFold):
        super().__init__()
        if not (isinstance(fold, CategoryFold) and fold.has_road):
            raise ValueError(f"{type(fold).__name__} has no road class: the road layer needs a 19-class CategoryFold")
        self.fold = fold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _both_signs(road_margin(self.fold.net(x)))

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        return _both_signs(road_margin(inference_forward(self.fold.net)(x)))


def _both_signs(margin: torch.Tensor) -> torch.Tensor:
    return torch.cat([-margin, margin], dim=1)


# A slice, not a list: indexing with a Python list builds an index tensor from host data (a
# synchronous host-to-device copy on CUDA) that CUDA-graph capture rejects; a slice is a view.
# The siblings are consecutive trainIds (sidewalk alone), which a slice can express.
_SIBLINGS = slice(ROAD_SIBLINGS[0], ROAD_SIBLINGS[-1] + 1)
if tuple(range(_SIBLINGS.start, _SIBLINGS.stop)) != ROAD_SIBLINGS:
    raise AssertionError(f"road siblings {ROAD_SIBLINGS} are not consecutive trainIds")


def road_margin(logits: torch.Tensor) -> torch.Tensor:
    """(B, >=19, H, W) Cityscapes trainId logits -> (B, 1, H, W) fp32 ``logit[road]`` minus the
    best other flat class's (sidewalk): positive where road is the likelier flat class."""
    with torch.autocast(logits.device.type, enabled=False):
        scores = logits.float()
        return scores[:, ROAD_TRAIN_ID : ROAD_TRAIN_ID + 1] - scores[:, _SIBLINGS].amax(dim=1, keepdim=True)


def split_layers(layers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, :data:`LAYER_CHANNELS`, H, W) from :meth:`CategoryFold.forward_native_layers`, upsampled
    or not -> (category labels (B, H, W) int64, the argmax of channels 0..7 exactly as without the
    road layer; road (B, H, W) bool: flat and a positive road margin)."""
    labels = layers[:, :NUM_CLASSES].argmax(dim=1)
    road = (labels == int(Category.FLAT)) & (layers[:, ROAD_MARGIN_CHANNEL] > 0)
    return labels, road


def road_layer_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What a backend runs for the categories plus the road layer: the model's
    :meth:`CategoryFold.forward_native_layers`, or None when it has no road class."""
    return model.forward_native_layers if isinstance(model, CategoryFold) and model.has_road else None


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
