"""``--model NAME|PATH``: built-in names, checkpoint paths, or an untrained smp spec."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from models.checkpoint import CheckpointError, InputSpec, ModelCard, load_checkpoint
from models.factory import build_model

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Models shipped inside the package (trained by this project; small).
BUILTIN_MODELS: dict[str, Path] = {"demo": WEIGHTS_DIR / "demo-synthetic.safetensors"}
UNTRAINED_PREFIX = "smp:"  # smp:ARCH:ENCODER, random weights: for benchmarks only


def load_model(spec: str) -> tuple[nn.Module, ModelCard]:
    """Resolve a model spec to a ready (eval-mode, fp32, CPU) model and its card."""
    if spec in BUILTIN_MODELS:
        return load_checkpoint(BUILTIN_MODELS[spec])
    if spec.startswith(UNTRAINED_PREFIX):
        return _untrained(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".safetensors" or path.exists():
        return load_checkpoint(path)
    raise CheckpointError(
        f"unknown model {spec!r}: not a built-in name ({', '.join(BUILTIN_MODELS)}), "
        f"not an existing checkpoint file, and not '{UNTRAINED_PREFIX}ARCH:ENCODER'"
    )


def _untrained(spec: str) -> tuple[nn.Module, ModelCard]:
    parts = spec.split(":")
    if len(parts) != 3 or not all(parts[1:]):
        raise CheckpointError(f"model {spec!r}: expected '{UNTRAINED_PREFIX}ARCH:ENCODER', e.g. smp:unet:resnet18")
    arguments = {"arch": parts[1], "encoder": parts[2]}
    log.warning("model %s has random weights: its masks are meaningless (benchmarking only)", spec)
    card = ModelCard(model_id=spec, family="smp", arguments=arguments, input=InputSpec())
    return build_model("smp", arguments).eval(), card
