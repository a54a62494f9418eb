"""What a training run is: :class:`TrainConfig`, ``--arch`` parsing, JSON round trip.

The JSON form is stored in ``state.json`` (to resume) and in every checkpoint's
provenance (to know how a model was made).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from models.backends.common import Device
from models.networks.factory import FAMILIES, SMP_ARCHITECTURES, ModelConfigError
from models.training.augment import AugmentConfig
from models.training.data import DEFAULT_WORKERS

DATA_KINDS = ("cityscapes", "synthetic")
# Settings that define the model, the data stream or the LR schedule: a resumed run must
# keep them, or it would silently become a different experiment.
RESUME_MUST_MATCH = (
    "family", "arguments", "init", "data", "size", "crop", "batch", "steps_per_epoch", "lr",
    "weight_decay", "dice_weight", "teacher", "kd_weight", "kd_temperature", "seed",
)


@dataclass(frozen=True)
class TrainConfig:
    """One training run; sizes are (width, height)."""

    family: str
    arguments: dict[str, Any]
    data: str  # one of DATA_KINDS
    out: Path
    size: tuple[int, int]
    crop: tuple[int, int]
    cityscapes: Path | None = None
    init: str | None = None  # roadseg model spec to fine-tune from
    model_id: str | None = None
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: one pass over the training frames
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1  # OneCycle: share of all steps spent raising the LR
    workers: int = DEFAULT_WORKERS
    teacher: str | None = None
    kd_weight: float = 0.5
    kd_temperature: float = 2.0
    dice_weight: float = 1.0
    device: Device = Device.AUTO
    amp: bool | None = None  # None: on for CUDA, off on CPU
    val_limit: int | None = None  # None: the whole val split (synthetic: 60 frames)
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", Device(self.device))  # typed once: "cpu" from the CLI or JSON
        if self.data not in DATA_KINDS:
            raise ValueError(f"training data {self.data!r}: valid: {', '.join(DATA_KINDS)}")
        if self.data == "cityscapes" and self.cityscapes is None:
            raise ValueError("training on cityscapes needs --cityscapes ROOT")
        for name in ("epochs", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        positive = {"--steps-per-epoch": self.steps_per_epoch, "--val-limit": self.val_limit}
        for flag, value in positive.items():
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if self.lr <= 0 or self.kd_temperature <= 0:
            raise ValueError(f"--lr and --kd-temperature must be > 0, got {self.lr} and {self.kd_temperature}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        for name in ("out", "cityscapes"):
            body[name] = None if body[name] is None else str(body[name])
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in body.items() if k in known}
        for name in ("out", "cityscapes"):
            values[name] = None if values.get(name) is None else Path(values[name])
        for name in ("size", "crop"):
            values[name] = tuple(values[name])
        augment = dict(values.get("augment", {}))
        for name in ("scale_range", "fog_density"):
            if name in augment:
                augment[name] = tuple(augment[name])
        values["augment"] = AugmentConfig(**augment)
        return cls(**values)


def arch_choices() -> str:
    others = [family for family in FAMILIES if family != "smp"]
    return f"smp:ARCH:ENCODER (ARCH one of {', '.join(SMP_ARCHITECTURES)})" + "".join(f", {f}" for f in others)


def parse_arch(text: str) -> tuple[str, dict[str, Any]]:
    """``smp:ARCH:ENCODER`` or a family name (``dabnet``) -> (family, builder arguments)."""
    parts = text.split(":")
    if parts[0] == "smp" and len(parts) == 3 and all(parts[1:]):
        arch = parts[1].lower()
        if arch not in SMP_ARCHITECTURES:
            raise ModelConfigError(f"--arch {text!r}: unknown smp architecture {parts[1]!r}; valid: {arch_choices()}")
        return "smp", {"arch": arch, "encoder": parts[2]}
    if len(parts) == 1 and text in FAMILIES and text != "smp":
        return text, {}
    raise ModelConfigError(f"--arch {text!r}: unknown architecture; valid: {arch_choices()}")


def default_model_id(config: TrainConfig, init_model_id: str | None) -> str:
    if config.model_id:
        return config.model_id
    if init_model_id:
        return f"{init_model_id}-ft-{config.data}"
    name = "-".join([config.family, *(str(config.arguments[k]) for k in ("arch", "encoder") if k in config.arguments)])
    return f"{name}-{config.data}"


def default_crop(size: tuple[int, int]) -> tuple[int, int]:
    """Square crops of the frame height (512x256 frames -> 256x256): full-resolution detail
    at a fraction of the cost, as the demo trainer always did."""
    side = min(size)
    return side, side
