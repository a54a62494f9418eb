"""Self-describing checkpoints: safetensors weights + a JSON model card.

Loading parses a JSON header and raw tensor bytes; it never unpickles, so a
checkpoint cannot execute code. Foreign formats are converted once by an
importer (see issue "Real pretrained Cityscapes models") into this format.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from models.classes import CLASS_NAMES
from models.errors import CheckpointError
from models.networks.factory import ModelConfigError, build_model

FORMAT_NAME = "roadseg.checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "roadseg"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How raw uint8 pixels become model input: ``(pixel[order] * scale - mean) / std``."""

    channel_order: str = "RGB"  # "RGB" or "BGR"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size: tuple[int, int] = (512, 256)  # native (width, height)
    divisor: int = 32  # width and height must be multiples of this

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        problem = self.size_problem(*self.size)
        if problem:
            raise ValueError(f"native {problem}")

    def size_problem(self, width: int, height: int) -> str | None:
        """Why ``width`` x ``height`` cannot be fed to the model (with the nearest size that can),
        or None when it can: the one rule every backend, export and eval applies."""
        divisor = self.divisor
        if width > 0 and height > 0 and width % divisor == 0 and height % divisor == 0:
            return None
        near_w, near_h = (max(divisor, round(v / divisor) * divisor) for v in (width, height))
        return (
            f"input size {width}x{height}: width and height must be positive multiples of {divisor} (the "
            f"feature maps are downsampled {divisor}x); nearest valid size {near_w}x{near_h}, "
            f"native size {self.size[0]}x{self.size[1]}"
        )


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild and run a model, stored next to its weights."""

    model_id: str
    family: str
    arguments: dict[str, Any]
    input: InputSpec = field(default_factory=InputSpec)
    classes: tuple[str, ...] = CLASS_NAMES
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        body = asdict(self)
        body.update(format=FORMAT_NAME, format_version=FORMAT_VERSION)
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: Path) -> ModelCard:
        try:
            body = json.loads(text)
            if body.get("format") != FORMAT_NAME:
                raise CheckpointError(f"{path}: metadata format is {body.get('format')!r}, not {FORMAT_NAME}")
            if body.get("format_version") != FORMAT_VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint format version {body.get('format_version')!r}; "
                    f"this roadseg reads version {FORMAT_VERSION}"
                )
            spec = body["input"]
            input_spec = InputSpec(
                channel_order=spec["channel_order"],
                scale=float(spec["scale"]),
                mean=tuple(spec["mean"]),
                std=tuple(spec["std"]),
                size=tuple(spec["size"]),
                divisor=int(spec["divisor"]),
            )
            return cls(
                model_id=str(body["model_id"]),
                family=str(body["family"]),
                arguments=dict(body["arguments"]),
                input=input_spec,
                classes=tuple(body["classes"]),
                provenance=dict(body.get("provenance", {})),
                metrics=dict(body.get("metrics", {})),
            )
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed model card ({type(exc).__name__}: {exc})") from exc


def save_checkpoint(path: Path, model: nn.Module, card: ModelCard, *, half: bool = False) -> None:
    """Write weights (optionally stored as fp16 to halve the file) and the card."""
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        tensors[key] = value.half() if half and value.is_floating_point() else value
    save_file(tensors, str(path), metadata={METADATA_KEY: card.to_json()})


def read_card(path: Path) -> ModelCard:
    """Only the model card, without loading weights."""
    return _open(path)[0]


def _open(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from exc
    if METADATA_KEY not in metadata:
        raise CheckpointError(
            f"checkpoint {path}: safetensors file without roadseg metadata; "
            "foreign weights must be imported first"
        )
    return ModelCard.from_json(metadata[METADATA_KEY], path), tensors


def load_checkpoint(path: Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model named by the card and load its weights strictly (fp32, eval mode)."""
    card, tensors = _open(path)
    if card.classes != CLASS_NAMES:
        raise CheckpointError(
            f"checkpoint {path}: predicts {len(card.classes)} classes {list(card.classes)}; "
            f"roadseg needs the {len(CLASS_NAMES)} categories {list(CLASS_NAMES)}"
        )
    try:
        model = build_model(card.family, card.arguments)
    except ModelConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: weights do not match {card.family} {card.arguments}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"checkpoint {path}: tensor {key} has shape {tuple(value.shape)}, "
                f"model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)
    return model.eval(), card
