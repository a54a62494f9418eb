"""ESPNetv2 semantic segmentation (Mehta et al., CVPR 2019), laid out to load the EdgeNets Cityscapes weights.

Encoder (``base_net``): a strided 3x3 CBR, then three down-sampling EESP units
that each also receive the input image pooled to their scale ("input
reinforcement"), with 3 and 7 residual EESP units at 1/8 and 1/16. Decoder:
efficient pyramid pooling at 1/16, then three 2x bilinear steps, each adding a
sigmoid-gated projection of the encoder map at that scale. The logits are
upsampled to the input size. Blocks live in :mod:`models.networks.espnetv2_parts`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.networks.arguments import MAX_CLASSES, Arg
from models.networks.category_head import CategoryFold
from models.networks.espnetv2_parts import EESP, ConvBnAct, EfficientPyramidPool, GatedSkip, StridedEESP, halve_image

# Encoder widths at 1/2, 1/4, 1/8, 1/16 per width scale s (EdgeNets' table).
ENCODER_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (16, 32, 64, 128),
    1.0: (32, 64, 128, 256),
    1.25: (32, 80, 160, 320),
    1.5: (32, 96, 192, 384),
    2.0: (32, 128, 256, 512),
}
BRANCHES = 4  # parallel dilated branches in every EESP unit
LEVEL3_REPEATS = 3  # residual EESP units at 1/8
LEVEL4_REPEATS = 7  # residual EESP units at 1/16
# Largest emulated kernel per unit; smaller maps need less context (EdgeNets: 13, 11, 9, 7).
LIMIT_LEVEL2_DOWN = 13
LIMIT_LEVEL3_DOWN = 11
LIMIT_LEVEL3 = 9
LIMIT_LEVEL4_DOWN = 9
LIMIT_LEVEL4 = 7
# Decoder widths after the 1/16, 1/8 and 1/4 pyramid stages (Cityscapes setting: 4, 3, 2 x 16).
DECODER_BASE = 16
DECODER_CHANNELS = (4 * DECODER_BASE, 3 * DECODER_BASE, 2 * DECODER_BASE)
TOTAL_STRIDE = 16  # input sides must be multiples of this so every skip lines up
IMAGE_CHANNELS = 3
TRAIN_ID_CLASSES = 19  # Cityscapes trainIds; the published head has one extra unused channel
CITYSCAPES_HEAD_CLASSES = 20


class ESPNetv2Encoder(nn.Module):
    """EESPNet levels 1-4 (the ImageNet classifier minus level 5 and its head)."""

    def __init__(self, channels: tuple[int, int, int, int]) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        self.level1 = ConvBnAct(IMAGE_CHANNELS, c1, 3, stride=2)
        self.level2_0 = StridedEESP(c1, c2, BRANCHES, LIMIT_LEVEL2_DOWN)
        self.level3_0 = StridedEESP(c2, c3, BRANCHES, LIMIT_LEVEL3_DOWN)
        self.level3 = nn.ModuleList(EESP(c3, c3, 1, BRANCHES, LIMIT_LEVEL3) for _ in range(LEVEL3_REPEATS))
        self.level4_0 = StridedEESP(c3, c4, BRANCHES, LIMIT_LEVEL4_DOWN)
        self.level4 = nn.ModuleList(EESP(c4, c4, 1, BRANCHES, LIMIT_LEVEL4) for _ in range(LEVEL4_REPEATS))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feature maps at 1/2, 1/4, 1/8 and 1/16 of the input."""
        out1 = self.level1(image)
        image4 = halve_image(halve_image(image))
        out2 = self.level2_0(out1, image4)
        image8 = halve_image(image4)
        out3 = self.level3_0(out2, image8)
        for unit in self.level3:
            out3 = unit(out3)
        out4 = self.level4_0(out3, halve_image(image8))
        for unit in self.level4:
            out4 = unit(out4)
        return out1, out2, out3, out4


class ESPNetv2Segmentation(nn.Module):
    """Image (B, 3, H, W), H and W multiples of 16 -> (B, num_classes, H, W) logits."""

    def __init__(self, scale: float = 2.0, num_classes: int = CITYSCAPES_HEAD_CLASSES) -> None:
        super().__init__()
        if scale not in ENCODER_CHANNELS:
            raise ValueError(f"ESPNetv2 scale s={scale!r} is not supported; valid: {sorted(ENCODER_CHANNELS)}")
        if num_classes < 1:
            raise ValueError(f"ESPNetv2 num_classes must be positive, got {num_classes}")
        c1, c2, c3, c4 = enc = ENCODER_CHANNELS[scale]
        d1, d2, d3 = DECODER_CHANNELS
        proj = min(num_classes // 2, DECODER_BASE)  # pyramid width: small heads get a narrower pyramid
        self.base_net = ESPNetv2Encoder(enc)
        self.bu_dec_l1 = EfficientPyramidPool(c4, proj, d1)
        self.bu_dec_l2 = EfficientPyramidPool(d1, proj, d2)
        self.bu_dec_l3 = EfficientPyramidPool(d2, proj, d3)
        self.bu_dec_l4 = EfficientPyramidPool(d3, proj, num_classes, final=True)
        self.merge_enc_dec_l2 = GatedSkip(c3, d1)
        self.merge_enc_dec_l3 = GatedSkip(c2, d2)
        self.merge_enc_dec_l4 = GatedSkip(c1, d3)
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(d1), nn.PReLU(d1))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(d2), nn.PReLU(d2))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(d3), nn.PReLU(d3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        if height % TOTAL_STRIDE or width % TOTAL_STRIDE:
            raise ValueError(
                f"ESPNetv2 input {width}x{height} (WxH): both sides must be multiples of {TOTAL_STRIDE}"
            )
        out1, out2, out3, out4 = self.base_net(x)
        y = self.bu_dec_l1(out4)
        y = self._up_merge(y, out3, self.merge_enc_dec_l2, self.bu_br_l2, self.bu_dec_l2)
        y = self._up_merge(y, out2, self.merge_enc_dec_l3, self.bu_br_l3, self.bu_dec_l3)
        y = self._up_merge(y, out1, self.merge_enc_dec_l4, self.bu_br_l4, self.bu_dec_l4)
        return _upsample(y, (height, width))

    @staticmethod
    def _up_merge(
        y: torch.Tensor, skip: torch.Tensor, project: nn.Module, norm: nn.Module, decode: nn.Module
    ) -> torch.Tensor:
        """One decoder step: 2x up, add the gated encoder skip, BN+PReLU, pyramid pooling."""
        y = _upsample(y, (skip.shape[-2], skip.shape[-1])) + project(skip)
        return decode(norm(y))


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Trained with align_corners=True; False costs accuracy at every 2x step.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# What a model card may pass to build_espnetv2 (see models.networks.arguments). A roadseg model
# outputs the 8 categories, so the fold is mandatory and needs the 19 trainId logits.
ARGUMENTS = {
    "scale": Arg(("float",), choices=tuple(ENCODER_CHANNELS)),
    "num_classes": Arg(("int",), low=TRAIN_ID_CLASSES, high=MAX_CLASSES),
    "fold_to_categories": Arg(("bool",), choices=(True,)),
}


def build_espnetv2(
    scale: float = 2.0, num_classes: int = CITYSCAPES_HEAD_CLASSES, fold_to_categories: bool = True
) -> nn.Module:
    """ESPNetv2 segmentation net; with ``fold_to_categories`` wrapped in :class:`CategoryFold` (keys ``net.*``).

    Folding reads the first 19 output channels as Cityscapes trainIds; the
    published head's 20th channel is unused and ignored.
    """
    if fold_to_categories and num_classes < TRAIN_ID_CLASSES:
        raise ValueError(
            f"ESPNetv2 with num_classes={num_classes} cannot be folded to categories: "
            f"the fold needs at least the {TRAIN_ID_CLASSES} Cityscapes trainId logits"
        )
    net = ESPNetv2Segmentation(scale=float(scale), num_classes=int(num_classes))
    return CategoryFold(net) if fold_to_categories else net
