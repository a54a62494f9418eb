"""Building blocks of ESPNetv2 (Mehta et al., CVPR 2019): EESP units and the decoder's pyramid pooling.

Attribute names are chosen so ``state_dict()`` keys equal those of the published
Cityscapes weights (sacmehta/EdgeNets): the encoder blocks keep ``conv``/``bn``/
``act`` as attributes, the decoder blocks wrap them in ``cbr``/``br``
sequentials. Every activation is a per-channel PReLU and every BatchNorm uses
PyTorch's default eps (1e-5), as in the trained model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Kernel size a dilated 3x3 emulates -> its dilation rate (kernel 3 + 2i has dilation i + 1).
BASE_KERNEL = 3
# The decoder's pyramid: feature-map scales, largest first (the weights' stage order).
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
# Pooled pyramid levels never shrink below this many pixels per side.
PYRAMID_MIN_SIDE = 5
# The image shortcut into each down-sampling unit: a 3x3 conv keeping 3 channels.
REINFORCE_CHANNELS = 3


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # align_corners=True throughout: the weights were trained with it, and
    # False shifts every decoder map by half a pixel per 2x step.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ConvBnAct(nn.Module):
    """Conv (no bias) + BatchNorm [+ PReLU]; keys ``conv``, ``bn``[, ``act``] (encoder naming)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, dilation: int = 1,
        activate: bool = True,
    ) -> None:
        super().__init__()
        padding = (kernel - 1) // 2 * dilation
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act: nn.Module = nn.PReLU(cout) if activate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class BnAct(nn.Module):
    """BatchNorm + PReLU; keys ``bn``, ``act`` (encoder naming)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DepthwiseDilated(nn.Module):
    """Depth-wise 3x3 conv with a dilation; key ``conv`` (no BN: the unit normalises after the merge)."""

    def __init__(self, channels: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels, channels, BASE_KERNEL, stride, padding=dilation, dilation=dilation, groups=channels,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def eesp_dilations(branches: int, receptive_limit: int) -> list[int]:
    """Dilation of each EESP branch, ascending.

    Branch i emulates a (3 + 2i)x(3 + 2i) kernel; kernels beyond the level's
    receptive-field limit fall back to a plain 3x3 (dilation 1). Sorting puts
    those fallbacks first, which matters because the branches are fused
    hierarchically in this order.
    """
    sizes = sorted(k if k <= receptive_limit else BASE_KERNEL for k in (BASE_KERNEL + 2 * i for i in range(branches)))
    return [(k - 1) // 2 for k in sizes]


class EESP(nn.Module):
    """Extremely Efficient Spatial Pyramid unit: reduce, split, transform, hierarchically fuse, merge.

    With ``stride == 2`` (inside a :class:`StridedEESP`) it returns the merged
    features before the residual and activation: the caller concatenates them
    with a pooled copy of the input and activates the sum itself.
    """

    def __init__(self, cin: int, cout: int, stride: int, branches: int, receptive_limit: int) -> None:
        super().__init__()
        if cout % branches:
            raise ValueError(f"EESP output channels {cout} are not divisible by {branches} branches")
        width = cout // branches
        self.stride = stride
        self.proj_1x1 = ConvBnAct(cin, width, 1, groups=branches)
        self.spp_dw = nn.ModuleList(
            DepthwiseDilated(width, stride, d) for d in eesp_dilations(branches, receptive_limit)
        )
        # A K-group 1x1 conv is K independent point-wise convs, one per branch.
        self.conv_1x1_exp = ConvBnAct(cout, cout, 1, groups=branches, activate=False)
        self.br_after_cat = BnAct(cout)
        self.module_act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        # Hierarchical feature fusion: each branch adds the previous branch's
        # output, which removes the gridding artefacts of dilated convs.
        fused = [self.spp_dw[0](reduced)]
        for branch in self.spp_dw[1:]:
            fused.append(branch(reduced) + fused[-1])
        merged = self.conv_1x1_exp(self.br_after_cat(torch.cat(fused, dim=1)))
        if self.stride > 1:
            return merged
        if merged.shape == x.shape:
            merged = merged + x
        return self.module_act(merged)


class StridedEESP(nn.Module):
    """Down-sampling unit: [avg-pool(x), strided EESP(x)] + a projection of the image at the new scale."""

    def __init__(self, cin: int, cout: int, branches: int, receptive_limit: int, image_channels: int = 3) -> None:
        super().__init__()
        # The pooled input supplies cin of the cout channels; the EESP makes the rest.
        self.eesp = EESP(cin, cout - cin, stride=2, branches=branches, receptive_limit=receptive_limit)
        self.avg = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        self.inp_reinf = nn.Sequential(
            ConvBnAct(image_channels, REINFORCE_CHANNELS, 3),
            ConvBnAct(REINFORCE_CHANNELS, cout, 1, activate=False),
        )
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor, image_at_scale: torch.Tensor) -> torch.Tensor:
        """``image_at_scale``: the input image already pooled down to this unit's output size."""
        out = torch.cat([self.avg(x), self.eesp(x)], dim=1)
        return self.act(out + self.inp_reinf(image_at_scale))


def halve_image(image: torch.Tensor) -> torch.Tensor:
    """The image pooled by 2 the way the input-reinforcement path was trained (3x3, pad 1, padding counted)."""
    return F.avg_pool2d(image, kernel_size=3, stride=2, padding=1)


class SeqConvBnAct(nn.Module):
    """Conv (no bias) + BatchNorm + PReLU as one ``cbr`` sequential (decoder naming)."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class SeqBnAct(nn.Module):
    """BatchNorm + PReLU as one ``br`` sequential (decoder naming)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    """Interleave ``groups`` channel blocks so a following grouped conv sees one channel of each block."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class EfficientPyramidPool(nn.Module):
    """Project, filter the map at 5 scales with depth-wise 3x3s, shuffle, merge, expand.

    ``final=True`` is the classifier layer: its last 1x1 conv has a bias and
    there is no BatchNorm/PReLU after it (the outputs are logits).
    """

    def __init__(self, cin: int, proj: int, cout: int, final: bool = False) -> None:
        super().__init__()
        levels = len(PYRAMID_SCALES)
        self.projection_layer = SeqConvBnAct(cin, proj, 1)
        self.stages = nn.ModuleList(
            nn.Conv2d(proj, proj, BASE_KERNEL, padding=1, groups=proj, bias=False) for _ in PYRAMID_SCALES
        )
        self.merge_layer = nn.Sequential(
            SeqBnAct(proj * levels),
            ChannelShuffle(levels),
            # proj groups of `levels` channels: each output mixes one channel across all scales.
            SeqConvBnAct(proj * levels, proj, 3, groups=proj),
            nn.Conv2d(proj, cout, 1, bias=final),
        )
        self.br: nn.Module = nn.Identity() if final else SeqBnAct(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        size = (x.shape[-2], x.shape[-1])
        pyramid = [self._stage(stage, x, scale, size) for stage, scale in zip(self.stages, PYRAMID_SCALES, strict=True)]
        return self.br(self.merge_layer(torch.cat(pyramid, dim=1)))

    @staticmethod
    def _stage(stage: nn.Module, x: torch.Tensor, scale: float, size: tuple[int, int]) -> torch.Tensor:
        scaled = (_scaled_side(size[0], scale), _scaled_side(size[1], scale))
        if scale < 1.0:
            return _resize(stage(F.adaptive_avg_pool2d(x, scaled)), size)
        if scale > 1.0:
            return F.adaptive_avg_pool2d(stage(_resize(x, scaled)), size)
        return stage(x)


def _scaled_side(side: int, scale: float) -> int:
    return max(math.ceil(side * scale), PYRAMID_MIN_SIDE)


class GatedSkip(nn.Module):
    """Encoder skip -> decoder width: grouped 3x3 CBR, scaled per channel by a global-context sigmoid gate."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = SeqConvBnAct(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)
