"""``--model NAME|PATH``: built-in names, downloaded zoo names (:mod:`models.store.zoo`), checkpoint
paths, or an untrained smp spec."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from safetensors import safe_open
from torch import nn

from models.networks.factory import build_model
from models.store.checkpoint import CheckpointError, InputSpec, ModelCard, load_checkpoint, read_card
from models.store.names import BUILTIN_MODELS, UNTRAINED_PREFIX, checkpoint_for
from models.store.zoo import ZOO, cache_dir, cached_checkpoint

log = logging.getLogger(__name__)

def load_model(spec: str) -> tuple[nn.Module, ModelCard]:
    """Resolve a model spec to a ready (eval-mode, fp32, CPU) model and its card."""
    if spec.startswith(UNTRAINED_PREFIX):
        return _untrained(spec)
    return load_checkpoint(checkpoint_for(spec))


@dataclass(frozen=True)
class ModelListing:
    name: str
    kind: str  # "built-in" or "downloadable"
    cached: bool
    input_size: tuple[int, int]  # (width, height)
    summary: str
    license: str


def list_models() -> list[ModelListing]:
    """Built-in models, then zoo models with whether they are downloaded (cache resolved once)."""
    listings: list[ModelListing] = []
    for name, path in BUILTIN_MODELS.items():
        card = read_card(path)
        with safe_open(str(path), framework="pt") as handle:
            params = sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys() if "running_" not in k)  # noqa: SIM118
        summary = f"{card.family} {card.arguments.get('arch', '')}/{card.arguments.get('encoder', '')}, " \
                  f"{params / 1e6:.2f} M params"
        listings.append(ModelListing(name, "built-in", True, card.input.size, summary, "MIT (this project)"))
    cache = cache_dir()
    for item in ZOO.values():
        cached = cached_checkpoint(item.name, cache=cache) is not None
        listings.append(ModelListing(item.name, "downloadable", cached, item.input_size, item.description,
                                     item.license))
    return listings


def _untrained(spec: str) -> tuple[nn.Module, ModelCard]:
    parts = spec.split(":")
    if len(parts) != 3 or not all(parts[1:]):
        raise CheckpointError(f"model {spec!r}: expected '{UNTRAINED_PREFIX}ARCH:ENCODER', e.g. smp:unet:resnet18")
    arguments = {"arch": parts[1], "encoder": parts[2]}
    log.warning("model %s has random weights: its masks are meaningless (benchmarking only)", spec)
    card = ModelCard(model_id=spec, family="smp", arguments=arguments, input=InputSpec())
    return build_model("smp", arguments).eval(), card
