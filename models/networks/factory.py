"""String-keyed model factory: architecture families -> ``nn.Module``.

A checkpoint names its family and arguments (see :mod:`models.store.checkpoint`), so
every model this project can load is built here and nowhere else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from models.classes import NUM_CLASSES, ROAD_LAYER
from models.networks import dabnet, espnetv2
from models.networks.arguments import MAX_CHANNELS, MAX_CLASSES, Arg, ModelConfigError, _shown, check_arguments

__all__ = [
    "FAMILIES", "SMP_ARCHITECTURES", "TIMM_ENCODERS", "ModelConfigError", "build_model", "build_smp",
    "check_model_arguments", "family_layers",
]

# smp architectures by the lower-case name users type.
SMP_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    name.lower(): getattr(smp, name)
    for name in (
        "Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet",
        "DeepLabV3", "DeepLabV3Plus", "PAN", "UPerNet", "Segformer", "DPT",
    )
    if hasattr(smp, name)
}

MAX_ENCODER_DEPTH = 5  # smp encoders have at most 5 stages
MAX_UPSAMPLING = 32  # the largest output stride of any encoder
MAX_DILATION = 64  # ASPP atrous rates (DeepLab uses 6..36)
_CHANNELS = Arg(("int",), low=1, high=MAX_CHANNELS)
_CHANNEL_LIST = Arg(("int", "int_list"), low=1, high=MAX_CHANNELS)  # int for DeepLab/PAN, a list for U-Net
_DROPOUT = Arg(("float",), low=0.0, high=1.0)
_NORMS = (True, False, "batchnorm", "identity", "layernorm", "instancenorm", "inplace")
_INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
# Keyword arguments of the smp constructors a card may set. An architecture takes those its
# constructor names; encoder_weights, in_channels, classes, activation and aux_params are
# roadseg's to decide (weights come from the checkpoint, input is RGB, output the categories).
SMP_ARGUMENTS: dict[str, Arg] = {
    "encoder_depth": Arg(("int",), low=1, high=MAX_ENCODER_DEPTH),
    "encoder_output_stride": Arg(("int",), choices=(8, 16)),
    "encoder_output_indices": Arg(("int_list", "none"), low=0, high=MAX_ENCODER_DEPTH),
    "decoder_channels": _CHANNEL_LIST,
    "decoder_use_norm": Arg(("bool", "str"), choices=_NORMS),
    "decoder_attention_type": Arg(("str", "none"), choices=("scse", None)),
    "decoder_interpolation": Arg(("str",), choices=_INTERPOLATIONS),
    "decoder_pab_channels": _CHANNELS,
    "decoder_pyramid_channels": _CHANNELS,
    "decoder_segmentation_channels": _CHANNELS,
    "decoder_merge_policy": Arg(("str",), choices=("add", "cat")),
    "decoder_dropout": _DROPOUT,
    "decoder_atrous_rates": Arg(("int_list",), low=1, high=MAX_DILATION),
    "decoder_aspp_separable": Arg(("bool",)),
    "decoder_aspp_dropout": _DROPOUT,
    "decoder_readout": Arg(("str",), choices=("ignore", "add", "cat")),
    "decoder_intermediate_channels": Arg(("int_list",), low=1, high=MAX_CHANNELS),
    "decoder_fusion_channels": _CHANNELS,
    "psp_out_channels": _CHANNELS,
    "psp_use_batchnorm": Arg(("bool", "str"), choices=_NORMS),
    "psp_dropout": _DROPOUT,
    "upsampling": Arg(("int", "none"), low=1, high=MAX_UPSAMPLING),
}
_SMP_COMMON = {
    "arch": Arg(("str",), required=True),  # checked (case-insensitively) by smp_schema
    "encoder": Arg(("str",), required=True),  # checked against smp/timm names by _check_encoder
    "num_classes": Arg(("int",), low=1, high=MAX_CLASSES),
}


# timm ("tu-NAME") encoders a card may name. timm holds thousands of models, some with billions of
# parameters, and cannot tell a model's size without building it, so the bound is a list: real-time-sized
# families (exact timm names, no ".tag": weights never come from timm), each under MAX_TIMM_ENCODER_PARAMS
# as an smp encoder (tests/test_card_schema.py builds every one on the meta device to hold the list to it).
MAX_TIMM_ENCODER_PARAMS = 25_000_000  # resnet50, the largest listed, is 23.5 M as an encoder
TIMM_ENCODERS = (
    "mobilenetv2_050", "mobilenetv2_100", "mobilenetv2_140",
    "mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100",
    "mobilenetv3_large_075", "mobilenetv3_large_100", "mobilenetv4_conv_small", "mobilenetv4_conv_medium",
    "lcnet_050", "lcnet_100", "ghostnet_100", "mnasnet_100", "fbnetc_100",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_lite0",
    "regnetx_002", "regnetx_004", "regnetx_008", "regnety_002", "regnety_004", "regnety_008", "regnety_016",
    "resnet18", "resnet18d", "resnet34", "resnet34d", "resnet50", "resnet50d",
    "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "hrnet_w18_small", "ese_vovnet19b_dw",
)
_TIMM_CHOICES = ", ".join(f"tu-{name}" for name in TIMM_ENCODERS)


def _check_encoder(encoder: str) -> None:
    if encoder.startswith("tu-"):
        if encoder.removeprefix("tu-") not in TIMM_ENCODERS:
            raise ModelConfigError(
                f"smp argument 'encoder' {_shown(encoder)} is not an allowed timm encoder (a card may name only "
                f"real-time-sized ones, each under {MAX_TIMM_ENCODER_PARAMS // 1_000_000} M parameters); "
                f"valid: {_TIMM_CHOICES}"
            )
        return
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        raise ModelConfigError(
            f"unknown smp encoder {_shown(encoder)}; valid: {', '.join(sorted(names))}, or a timm encoder: "
            f"{_TIMM_CHOICES}"
        )


def build_smp(arch: str, encoder: str, num_classes: int = NUM_CLASSES, **kwargs: Any) -> nn.Module:
    """Any segmentation-models-pytorch architecture and encoder, randomly initialised.

    ``encoder_weights`` is always None: weights come from our own checkpoints,
    never from a download at run time.
    """
    key = arch.lower()
    if key not in SMP_ARCHITECTURES:
        raise ModelConfigError(f"unknown smp architecture {arch!r}; valid: {', '.join(SMP_ARCHITECTURES)}")
    _check_encoder(encoder)
    try:
        return SMP_ARCHITECTURES[key](
            encoder_name=encoder, encoder_weights=None, classes=num_classes, **kwargs
        )
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelConfigError(f"smp {arch}/{encoder} with {kwargs}: {exc}") from exc


def smp_schema(arguments: Mapping[str, Any]) -> dict[str, Arg]:
    """The keys an smp card may hold: the common ones plus what its architecture's constructor names."""
    arch = arguments.get("arch")
    if not isinstance(arch, str):
        return dict(_SMP_COMMON)  # check_arguments reports the missing or malformed arch
    constructor = SMP_ARCHITECTURES.get(arch.lower())
    if constructor is None:
        raise ModelConfigError(f"unknown smp architecture {arch!r}; valid: {', '.join(SMP_ARCHITECTURES)}")
    names = inspect.signature(constructor).parameters
    return {**_SMP_COMMON, **{key: arg for key, arg in SMP_ARGUMENTS.items() if key in names}}


@dataclass(frozen=True)
class Family:
    build: Callable[..., nn.Module]
    schema: Callable[[Mapping[str, Any]], Mapping[str, Arg]]  # the arguments -> the keys they may hold
    # Output layers beside the categories its networks can produce (models.classes.LAYERS): "road" for
    # the nets folded from the 19 Cityscapes classes (models.networks.category_head); smp heads predict
    # the 8 categories directly and have no road class.
    layers: tuple[str, ...] = ()


# family -> builder(**arguments) and its argument schema. New families (our own real-time nets) register here.
FAMILIES: dict[str, Family] = {
    "smp": Family(build_smp, smp_schema),
    "dabnet": Family(dabnet.build_dabnet, lambda _: dabnet.ARGUMENTS, (ROAD_LAYER,)),
    "espnetv2": Family(espnetv2.build_espnetv2, lambda _: espnetv2.ARGUMENTS, (ROAD_LAYER,)),
}


def family_layers(family: str) -> tuple[str, ...]:
    """The output layers a family's networks can produce beside the categories; () for a family
    roadseg does not know (its card is refused elsewhere)."""
    known = FAMILIES.get(family)
    return known.layers if known is not None else ()


def check_model_arguments(family: Any, arguments: Any) -> None:
    """ModelConfigError naming the family or the first argument key the family does not accept."""
    if not isinstance(family, str) or family not in FAMILIES:
        raise ModelConfigError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    if not isinstance(arguments, Mapping):
        raise ModelConfigError(f"{family} arguments must be a JSON object, got {type(arguments).__name__}")
    check_arguments(f"{family} argument", arguments, FAMILIES[family].schema(arguments))
    if family == "smp":
        _check_encoder(arguments["encoder"])


def build_model(family: str, arguments: Mapping[str, Any]) -> nn.Module:
    """Check ``arguments`` against the family's schema, then build: nothing unchecked reaches a constructor."""
    check_model_arguments(family, arguments)
    return FAMILIES[family].build(**arguments)
