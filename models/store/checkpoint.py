"""Self-describing checkpoints: safetensors weights + a JSON model card.

Loading parses a JSON header and raw tensor bytes; it never unpickles, so a
checkpoint cannot execute code. Foreign formats are converted once by an
importer (see issue "Real pretrained Cityscapes models") into this format.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from models.atomic import atomic_path
from models.classes import CLASS_NAMES, LAYERS, ROAD_LAYER
from models.errors import CheckpointError
from models.networks.arguments import Arg, _shown, check_arguments
from models.networks.factory import ModelConfigError, build_model, check_model_arguments, family_layers

FORMAT_NAME = "roadseg.checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "roadseg"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_INPUT_SIDE = 16384  # a native size beyond this is a corrupt card, not a camera (8K is 7680)
MAX_DIVISOR = 256  # the total stride of a segmentation net: 8..64 in practice
MAX_PIXEL_SCALE = 1000.0  # pixel scale: 1/255 or 1 in practice
MAX_NORM_VALUE = 1000.0  # |mean| and std bounds: ImageNet stats, in 0..1 or 0..255 units
MIN_STD = 1e-6  # std divides the input: zero would make every pixel inf
# The card's "input" object, checked before an InputSpec (and so any size arithmetic) exists.
INPUT_SCHEMA = {
    "channel_order": Arg(("str",), choices=("RGB", "BGR"), required=True),
    "scale": Arg(("float",), low=1e-9, high=MAX_PIXEL_SCALE, required=True),
    "mean": Arg(("float_list",), low=-MAX_NORM_VALUE, high=MAX_NORM_VALUE, length=3, required=True),
    "std": Arg(("float_list",), low=MIN_STD, high=MAX_NORM_VALUE, length=3, required=True),
    "size": Arg(("int_list",), low=1, high=MAX_INPUT_SIDE, length=2, required=True),
    "divisor": Arg(("int",), low=1, high=MAX_DIVISOR, required=True),
}


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
        if not (isinstance(self.divisor, int) and 1 <= self.divisor <= MAX_DIVISOR):
            raise ValueError(f"input divisor must be an integer in 1..{MAX_DIVISOR}, got {self.divisor!r}")
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
    # Output layers beside the category mask (models.classes.LAYERS): ("road",) when the model has a
    # Cityscapes road class and offers the drivable-road layer; () says it has none. A card without
    # the key (written before it existed) gets legacy_layers().
    layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.layers, tuple) or len(set(self.layers)) != len(self.layers) or not (
            set(self.layers) <= set(LAYERS)
        ):
            raise ValueError(f"card layers must be a tuple of distinct names from {LAYERS}, got {self.layers!r}")

    @property
    def has_road(self) -> bool:
        """Whether the model offers the drivable-road layer (road told apart from the rest of flat)."""
        return ROAD_LAYER in self.layers

    def to_json(self) -> str:
        body = asdict(self)
        body.update(format=FORMAT_NAME, format_version=FORMAT_VERSION)
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: Path) -> ModelCard:
        """Parse and check a card: every field a network or backend will use is validated here,
        so a hostile or corrupt card fails with its key named before anything is built."""
        try:
            body = json.loads(text)
            if not isinstance(body, dict):
                raise CheckpointError(f"checkpoint {path}: model card is not a JSON object")
            if body.get("format") != FORMAT_NAME:
                raise CheckpointError(f"{path}: metadata format is {body.get('format')!r}, not {FORMAT_NAME}")
            if body.get("format_version") != FORMAT_VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint format version {body.get('format_version')!r}; "
                    f"this roadseg reads version {FORMAT_VERSION}"
                )
            spec = body["input"]
            check_arguments("input field", spec, INPUT_SCHEMA)
            check_model_arguments(body["family"], body["arguments"])
            provenance = dict(body.get("provenance", {}))
            if "layers" in body:
                layers = check_layers(body["layers"], body["family"])
            else:
                layers = legacy_layers(body["family"], provenance)
            input_spec = InputSpec(
                channel_order=spec["channel_order"],
                scale=float(spec["scale"]),
                mean=_triple(spec["mean"]),
                std=_triple(spec["std"]),
                size=(int(spec["size"][0]), int(spec["size"][1])),
                divisor=int(spec["divisor"]),
            )
            return cls(
                model_id=str(body["model_id"]),
                family=str(body["family"]),
                arguments=dict(body["arguments"]),
                input=input_spec,
                classes=tuple(body["classes"]),
                provenance=provenance,
                metrics=dict(body.get("metrics", {})),
                layers=layers,
            )
        except CheckpointError:
            raise
        except ModelConfigError as exc:
            raise CheckpointError(f"checkpoint {path}: model card: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed model card ({type(exc).__name__}: {exc})") from exc


def check_layers(value: Any, family: str) -> tuple[str, ...]:
    """A card's ``layers``: a list of distinct layer names the family's networks can produce
    (a card cannot promise a road class its net lacks); ModelConfigError naming the key."""
    possible = family_layers(family)
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ModelConfigError(f"card key 'layers' must be a list of layer names, got {type(value).__name__}")
    for name in value:
        if name not in possible:
            raise ModelConfigError(
                f"card key 'layers': {family} models cannot produce layer {_shown(name)}; "
                f"valid: {', '.join(possible) or 'none'}"
            )
    if len(set(value)) != len(value):
        raise ModelConfigError("card key 'layers' lists a layer twice")
    return tuple(value)


def legacy_layers(family: str, provenance: dict[str, Any]) -> tuple[str, ...]:
    """``layers`` of a card written before the key existed: what the family can produce (a net
    folded from the 19 Cityscapes classes has their road class), except for a net roadseg trained
    from scratch, which learnt only the 8 categories (its road vs sidewalk split is arbitrary)."""
    from_scratch = "trained_by" in provenance and "init" not in provenance
    return () if from_scratch else family_layers(family)


def _triple(values: list[float]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


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


@contextlib.contextmanager
def checkpoint_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock for replacing ``path``: writers that read, change and replace a
    checkpoint must not interleave. It locks the folder, not the file: a rename swaps the file's
    inode, so a lock on the old one would not exclude a writer of the new one (and no lock file
    is left behind)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; os.replace still keeps every file whole
        yield
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def update_card(
    path: Path, change: Callable[[ModelCard], ModelCard], *, unchanged_since: os.stat_result | None = None
) -> bool:
    """Replace the model card of checkpoint ``path`` with ``change(card)``, weights byte-identical.

    Atomic: the new file is written beside ``path`` and renamed over it, under
    :func:`checkpoint_lock`, so a reader sees the old or the new file, never half of one.
    With ``unchanged_since`` (a ``stat`` taken before the weights were used), nothing is
    written and False returned when the file has been replaced since (e.g. a re-import):
    metrics measured on the old weights must not land on the new ones."""
    with checkpoint_lock(path):
        if unchanged_since is not None and not _same_file(path.stat(), unchanged_since):
            return False
        card, tensors = _open(path)
        mode = path.stat().st_mode & 0o777  # the temp file is 0600: keep the file as readable as it was
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata={METADATA_KEY: change(card).to_json()})
            read_card(temporary)  # the new card must pass the same checks as any other
            os.chmod(temporary, mode)
    return True


def _same_file(now: os.stat_result, before: os.stat_result) -> bool:
    return (now.st_ino, now.st_size, now.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
