"""Import the EdgeNets ESPNetv2 (s=2.0) Cityscapes state_dict into a roadseg checkpoint.

The source is a ``torch.save`` file (the published one uses the legacy,
pre-zip format). It is read only with
``torch.load(weights_only=True)``, PyTorch's restricted unpickler, which
rebuilds tensors and plain containers and refuses any other global: reading it
never runs code from the file.

Usage: ``python -m models.store.importers.torch_espnetv2 SRC.pth DST.safetensors``
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models.classes import ROAD_LAYER
from models.networks.category_head import CategoryFold
from models.networks.espnetv2 import CITYSCAPES_HEAD_CLASSES, TOTAL_STRIDE, TRAIN_ID_CLASSES, build_espnetv2
from models.store.checkpoint import IMAGENET_MEAN, IMAGENET_STD, InputSpec, ModelCard, load_checkpoint, save_checkpoint

MODEL_ID = "espnetv2-s2.0-cityscapes"
FAMILY = "espnetv2"
SCALE = 2.0
NATIVE_SIZE = (1024, 512)  # (width, height) the published model was trained and evaluated at
# The classifier: the last 1x1 conv of the final pyramid-pooling stage.
HEAD_KEY = "bu_dec_l4.merge_layer.3.weight"
UPSTREAM = {
    "repo": "sacmehta/EdgeNets",
    "commit": "5976d678ee754b846d09485f2fbd059e6f30883b",
    "path": "model/segmentation/model_zoo/espnetv2/espnetv2_s_2.0_city_1024x512.pth",
    "url": (
        "https://raw.githubusercontent.com/sacmehta/EdgeNets/5976d678ee754b846d09485f2fbd059e6f30883b/"
        "model/segmentation/model_zoo/espnetv2/espnetv2_s_2.0_city_1024x512.pth"
    ),
    "license": "MIT",
    "paper": "Mehta et al., ESPNetv2, CVPR 2019",
}
PUBLISHED_SHA256 = "a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8"
CLASS_FOLD = (
    "logits 0-18 = Cityscapes trainIds, folded to the 8 categories by log-sum-exp (CategoryFold); "
    "logit 19 is unused and dropped"
)
# torch.save writes a zip archive since PyTorch 1.6; the published file predates
# that and uses the legacy format: pickles (protocol 2) that open with this magic
# number. torch.load(weights_only=True) reads both through its restricted unpickler.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO_2 = b"\x80\x02"
LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
LEGACY_HEADER_BYTES = 16
KEYS_SHOWN = 8  # how many missing/unexpected keys an error lists before eliding


class WeightImportError(ValueError):
    """A source file that cannot be imported; the message names the file and the problem."""


def import_espnetv2(source: Path, destination: Path) -> ModelCard:
    """Convert ``source`` (EdgeNets ESPNetv2 s=2.0 Cityscapes state_dict) into a checkpoint at ``destination``."""
    source, destination = Path(source), Path(destination)
    net = build_espnetv2(scale=SCALE, num_classes=CITYSCAPES_HEAD_CLASSES, fold_to_categories=False)
    net.load_state_dict(_checked_state_dict(source, _load_state_dict(source), net.state_dict()), strict=True)
    card = _model_card(source)
    destination.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(destination, CategoryFold(net), card)  # what build_espnetv2() returns: keys net.*
    load_checkpoint(destination)  # prove the written file rebuilds through the factory
    return card


def _load_state_dict(source: Path) -> Any:
    if not source.is_file():
        raise WeightImportError(f"ESPNetv2 weights {source}: no such file")
    # Anything that does not start like a torch.save file is refused before it is parsed.
    if not _is_torch_file(source):
        raise WeightImportError(
            f"ESPNetv2 weights {source}: not a PyTorch checkpoint "
            "(neither a torch zip archive nor the legacy torch.save format)"
        )
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightImportError(
            f"ESPNetv2 weights {source}: refused by torch.load(weights_only=True): it holds objects other "
            f"than tensors and plain containers, which could run code when loaded ({_first_line(exc)})"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise WeightImportError(
            f"ESPNetv2 weights {source}: unreadable torch checkpoint (truncated or corrupt?): {_first_line(exc)}"
        ) from exc


def _is_torch_file(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(LEGACY_HEADER_BYTES)
    return head.startswith(ZIP_MAGIC) or (head.startswith(PICKLE_PROTO_2) and LEGACY_MAGIC in head)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _checked_state_dict(
    source: Path, loaded: Any, expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The loaded object as a state dict of exactly this architecture, else a clear error."""
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise WeightImportError(
            f"ESPNetv2 weights {source}: expected a state dict (parameter name -> tensor), "
            f"got {type(loaded).__name__}"
        )
    state = dict(loaded)
    _check_head(source, state)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightImportError(
            f"ESPNetv2 weights {source}: not an ESPNetv2 s={SCALE} segmentation state dict: "
            f"missing {len(missing)} keys {_some(missing)}, unexpected {len(unexpected)} keys {_some(unexpected)}"
        )
    wrong = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(value.shape)})"
        for key, value in expected.items()
        if state[key].shape != value.shape
    ]
    if wrong:
        raise WeightImportError(f"ESPNetv2 weights {source}: tensors with the wrong shape: {_some(wrong)}")
    return state


def _check_head(source: Path, state: dict[str, torch.Tensor]) -> None:
    head = state.get(HEAD_KEY)
    if head is not None and head.shape[0] != CITYSCAPES_HEAD_CLASSES:
        raise WeightImportError(
            f"ESPNetv2 weights {source}: classifier {HEAD_KEY} has {head.shape[0]} output channels; "
            f"expected {CITYSCAPES_HEAD_CLASSES} output channels ({TRAIN_ID_CLASSES} classes + 1 unused)"
        )


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:KEYS_SHOWN])
    return f"[{shown}{', ...' if len(items) > KEYS_SHOWN else ''}]"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_card(source: Path) -> ModelCard:
    sha256 = _sha256(source)
    provenance = {
        "upstream": UPSTREAM,
        "source_file": source.name,
        "source_sha256": sha256,
        "matches_published_sha256": sha256 == PUBLISHED_SHA256,
        "importer": "models.store.importers.torch_espnetv2",
        "class_fold": CLASS_FOLD,
    }
    spec = InputSpec(
        channel_order="RGB",
        scale=1.0 / 255.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        size=NATIVE_SIZE,
        divisor=TOTAL_STRIDE,
    )
    return ModelCard(
        model_id=MODEL_ID, family=FAMILY, arguments={"scale": SCALE}, input=spec, provenance=provenance, metrics={},
        layers=(ROAD_LAYER,),  # trained on the 19 Cityscapes classes: road is one of them
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="EdgeNets espnetv2_s_2.0_city_1024x512.pth")
    parser.add_argument("destination", type=Path, help="roadseg checkpoint to write (.safetensors)")
    args = parser.parse_args(argv)
    try:
        card = import_espnetv2(args.source, args.destination)
    except WeightImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.destination}: {card.model_id} (sha256 of source {card.provenance['source_sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
