"""String-keyed model factory: architecture families -> ``nn.Module``.

A checkpoint names its family and arguments (see :mod:`models.store.checkpoint`), so
every model this project can load is built here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from models.classes import NUM_CLASSES
from models.networks.dabnet import build_dabnet
from models.networks.espnetv2 import build_espnetv2

# smp architectures by the lower-case name users type.
SMP_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    name.lower(): getattr(smp, name)
    for name in (
        "Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet",
        "DeepLabV3", "DeepLabV3Plus", "PAN", "UPerNet", "Segformer", "DPT",
    )
    if hasattr(smp, name)
}


class ModelConfigError(ValueError):
    """An unknown architecture, encoder or argument; the message lists valid choices."""


def _check_encoder(encoder: str) -> None:
    if encoder.startswith("tu-"):
        return  # any timm model; timm itself reports unknown names clearly
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        raise ModelConfigError(
            f"unknown smp encoder {encoder!r}; valid: {', '.join(sorted(names))}, or 'tu-<timm model>'"
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


# family -> builder(**arguments). New families (our own real-time nets) register here.
FAMILIES: dict[str, Callable[..., nn.Module]] = {"smp": build_smp, "dabnet": build_dabnet, "espnetv2": build_espnetv2}


def build_model(family: str, arguments: Mapping[str, Any]) -> nn.Module:
    if family not in FAMILIES:
        raise ModelConfigError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[family](**arguments)
