"""DABNet (Li et al. 2019): depth-wise asymmetric bottleneck net, 0.76 M parameters.

Written for roadseg from the facts in ``shared/weights/README.md`` about the
pretrained Cityscapes weights. Submodule names match the upstream keys (after
the importer's BatchNorm/PReLU renames) so the imported state dict loads with
``strict=True``; that is why some names (``bn_relu_1`` holding a PReLU,
``DAB_Block_1``) do not follow our usual style.

Input: RGB, mean-subtracted, unscaled (0..255) pixels; height and width multiples of 8
(the upstream recipe is documented as BGR, but the weights expect RGB: see the importer).
Output: 19 Cityscapes trainId logits at input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.networks.arguments import MAX_CLASSES, Arg
from models.networks.category_head import CategoryFold

CITYSCAPES_TRAIN_CLASSES = 19
BN_EPS = 1e-3  # the upstream (Paddle) training used 1e-3, not PyTorch's 1e-5
OUTPUT_STRIDE = 8
STEM_CHANNELS = 32
DOWNSAMPLE_1_CHANNELS = 64
BLOCK_1_DILATIONS = (2, 2, 2)
BLOCK_2_CHANNELS = 128
BLOCK_2_DILATIONS = (4, 4, 8, 8, 16, 16)
IMAGE_CHANNELS = 3


class BNPReLU(nn.Module):
    """BatchNorm followed by a per-channel PReLU (``.bn``, ``.acti`` as in the keys)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.acti = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.acti(self.bn(x))


class ConvBN(nn.Module):
    """Bias-free conv (``.conv``), optionally followed by BN+PReLU (``.bn_prelu``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bn_act: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=False,
        )
        self.bn_prelu = BNPReLU(out_channels) if bn_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.bn_prelu(x) if self.bn_prelu is not None else x


def _depthwise(channels: int, vertical: bool, dilation: int) -> ConvBN:
    """A 3x1 (vertical) or 1x3 depth-wise conv, dilated along its own axis only."""
    if vertical:
        return ConvBN(channels, channels, (3, 1), padding=(dilation, 0), dilation=(dilation, 1), groups=channels)
    return ConvBN(channels, channels, (1, 3), padding=(0, dilation), dilation=(1, dilation), groups=channels)


class DABModule(nn.Module):
    """Residual bottleneck: halve channels, plain + dilated depth-wise branches, restore."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        half = channels // 2
        self.bn_relu_1 = BNPReLU(channels)
        self.conv3x3 = ConvBN(channels, half, 3, padding=1)
        self.dconv3x1 = _depthwise(half, vertical=True, dilation=1)
        self.dconv1x3 = _depthwise(half, vertical=False, dilation=1)
        self.ddconv3x1 = _depthwise(half, vertical=True, dilation=dilation)
        self.ddconv1x3 = _depthwise(half, vertical=False, dilation=dilation)
        self.bn_relu_2 = BNPReLU(half)
        self.conv1x1 = ConvBN(half, channels, 1, bn_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3x3(self.bn_relu_1(x))
        local = self.dconv1x3(self.dconv3x1(y))
        context = self.ddconv1x3(self.ddconv3x1(y))
        return self.conv1x1(self.bn_relu_2(local + context)) + x


class DownsampleConcatPool(nn.Module):
    """Stride-2 conv to ``out - in`` channels, concatenated with a max-pool of the input."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if out_channels <= in_channels:
            raise ValueError(f"pooling downsample needs out > in channels, got {in_channels}->{out_channels}")
        self.conv3x3 = ConvBN(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bn_act=False)
        self.max_pool = nn.MaxPool2d(2, stride=2)
        self.bn_prelu = BNPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_prelu(torch.cat([self.conv3x3(x), self.max_pool(x)], dim=1))


class DownsampleConv(nn.Module):
    """Stride-2 conv with BN+PReLU, for ``in >= out`` where upstream has no pool branch."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv3x3 = ConvBN(in_channels, out_channels, 3, stride=2, padding=1, bn_act=False)
        self.bn_prelu = BNPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_prelu(self.conv3x3(x))


def _dab_block(stage: int, channels: int, dilations: tuple[int, ...]) -> nn.Sequential:
    block = nn.Sequential()
    for index, dilation in enumerate(dilations):
        block.add_module(f"DAB_Module_{stage}_{index}", DABModule(channels, dilation))
    return block


def _image_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The image at 1/2, 1/4, ... : 3x3 stride-2 average pools, padding counted as upstream."""
    out = []
    for _ in range(levels):
        image = F.avg_pool2d(image, 3, stride=2, padding=1, count_include_pad=True)
        out.append(image)
    return out


class DABNet(nn.Module):
    def __init__(self, num_classes: int = CITYSCAPES_TRAIN_CLASSES):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.init_conv = nn.Sequential(
            ConvBN(IMAGE_CHANNELS, STEM_CHANNELS, 3, stride=2, padding=1),
            ConvBN(STEM_CHANNELS, STEM_CHANNELS, 3, padding=1),
            ConvBN(STEM_CHANNELS, STEM_CHANNELS, 3, padding=1),
        )
        stage_1 = STEM_CHANNELS + IMAGE_CHANNELS
        self.bn_prelu_1 = BNPReLU(stage_1)
        self.downsample_1 = DownsampleConcatPool(stage_1, DOWNSAMPLE_1_CHANNELS)
        self.DAB_Block_1 = _dab_block(1, DOWNSAMPLE_1_CHANNELS, BLOCK_1_DILATIONS)
        stage_2 = 2 * DOWNSAMPLE_1_CHANNELS + IMAGE_CHANNELS
        self.bn_prelu_2 = BNPReLU(stage_2)
        self.downsample_2 = DownsampleConv(stage_2, BLOCK_2_CHANNELS)
        self.DAB_Block_2 = _dab_block(2, BLOCK_2_CHANNELS, BLOCK_2_DILATIONS)
        stage_3 = 2 * BLOCK_2_CHANNELS + IMAGE_CHANNELS
        self.bn_prelu_3 = BNPReLU(stage_3)
        self.classifier = nn.Sequential(ConvBN(stage_3, num_classes, 1, bn_act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input size (what training and the reference implementation use)."""
        return F.interpolate(self.forward_native(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at 1/8 of the input, before the final upsampling: inference backends upsample
        once, straight to each frame's size, and fold classes on 64x fewer pixels."""
        height, width = x.shape[-2:]
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            raise ValueError(f"DABNet input {width}x{height} must be a multiple of {OUTPUT_STRIDE}")
        half, quarter, eighth = _image_pyramid(x, 3)
        y = self.bn_prelu_1(torch.cat([self.init_conv(x), half], dim=1))
        down_1 = self.downsample_1(y)
        y = self.bn_prelu_2(torch.cat([self.DAB_Block_1(down_1), down_1, quarter], dim=1))
        down_2 = self.downsample_2(y)
        y = self.bn_prelu_3(torch.cat([self.DAB_Block_2(down_2), down_2, eighth], dim=1))
        return self.classifier(y)


# What a model card may pass to build_dabnet (see models.networks.arguments). A roadseg model
# outputs the 8 categories, so the fold is mandatory and needs all 19 trainId logits.
ARGUMENTS = {
    "num_classes": Arg(("int",), low=CITYSCAPES_TRAIN_CLASSES, high=MAX_CLASSES),
    "fold_to_categories": Arg(("bool",), choices=(True,)),
}


def build_dabnet(num_classes: int = CITYSCAPES_TRAIN_CLASSES, fold_to_categories: bool = True) -> nn.Module:
    """DABNet, by default wrapped in :class:`CategoryFold` (state-dict keys then start ``net.``)."""
    if fold_to_categories and num_classes < CITYSCAPES_TRAIN_CLASSES:
        raise ValueError(
            f"folding to categories needs the {CITYSCAPES_TRAIN_CLASSES} Cityscapes trainId logits, "
            f"got num_classes={num_classes}"
        )
    net = DABNet(num_classes)
    return CategoryFold(net) if fold_to_categories else net
