"""Model names -> checkpoint files, without importing torch (the CLI checks ``--model``
before anything heavy loads)."""

from __future__ import annotations

from pathlib import Path

from models.errors import CheckpointError
from models.store.zoo import ZOO, cached_checkpoint

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# Models shipped inside the package (trained by this project; small).
BUILTIN_MODELS: dict[str, Path] = {"demo": WEIGHTS_DIR / "demo-synthetic.safetensors"}
UNTRAINED_PREFIX = "smp:"  # smp:ARCH:ENCODER, random weights: for benchmarks only


def checkpoint_for(spec: str, *, cache: Path | None = None) -> Path:
    """The checkpoint file of a built-in name, a downloaded zoo name, or a path."""
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec]
    if spec in ZOO:
        path = cached_checkpoint(spec, cache=cache)
        if path is None:
            raise CheckpointError(
                f"model {spec!r} is not downloaded yet: run 'roadseg models pull {spec}' "
                f"(or 'roadseg models import {spec} --from FILE' offline)"
            )
        return path
    path = Path(spec).expanduser()
    if path.suffix == ".safetensors" or path.exists():
        return path
    raise CheckpointError(
        f"unknown model {spec!r}: not a built-in or zoo name ({', '.join([*BUILTIN_MODELS, *ZOO])}), "
        f"not an existing checkpoint file, and not '{UNTRAINED_PREFIX}ARCH:ENCODER'"
    )
