"""Convert the upstream DABNet Paddle weights (``best.params``) into a roadseg checkpoint.

The upstream file is a pickle of ``{'epoch': int, 'model': {key: (paddle_name,
float32 array)}}``. It is read with :mod:`models.store.importers.restricted_pickle`
(never plain ``pickle.load``), renamed to PyTorch names, checked tensor by
tensor against :func:`models.networks.dabnet.build_dabnet`, and written once as
safetensors with a model card. Usage::

    python -m models.store.importers.paddle_dabnet best.params dabnet-cityscapes.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.atomic import atomic_path
from models.classes import ROAD_LAYER
from models.networks.dabnet import CITYSCAPES_TRAIN_CLASSES, build_dabnet
from models.store.checkpoint import InputSpec, ModelCard, save_checkpoint
from models.store.importers.restricted_pickle import load_restricted

log = logging.getLogger(__name__)

MODEL_ID = "dabnet-cityscapes"
FAMILY = "dabnet"
IMPORTER = "models.store.importers.paddle_dabnet:import_dabnet"  # same "module:function" form as models.store.zoo
# Where the weights come from (see shared/README.md); recorded in the card.
UPSTREAM_REPO = "WenmuZhou/DABNet_Paddle"
UPSTREAM_COMMIT = "d173a4906795d8b3174b7684688b1174b2c7080e"
UPSTREAM_URL = f"https://raw.githubusercontent.com/{UPSTREAM_REPO}/{UPSTREAM_COMMIT}/best.params"
UPSTREAM_SHA256 = "6e1bd4a748cd8bd499260f362dfa7dcb39e895770f2bfeb168d670e1bd70586c"
UPSTREAM_LICENSE = "MIT"
CLASS_FOLD = "log-sum-exp of member trainId logits"
# How upstream trained: pixels in 0..255 minus the per-channel mean, no std. Upstream
# subtracts its mean (B 72.3924, G 82.9090, R 73.1583) from the OpenCV BGR image and then
# flips to RGB, so the net sees RGB. Measured on our 10 val frames: RGB gives category
# IoU ~89, BGR ~79 (sky collapses), whatever shared/weights/README.md says.
DABNET_INPUT = InputSpec(
    channel_order="RGB",
    scale=1.0,
    mean=(73.1583, 82.9090, 72.3924),  # R, G, B
    std=(1.0, 1.0, 1.0),
    size=(2048, 1024),  # full resolution: 1024x512 costs about 7 mIoU points
    divisor=8,
)
# Paddle -> PyTorch parameter names (BatchNorm statistics, PReLU slope).
KEY_RENAMES = (
    ("bn._mean", "bn.running_mean"),
    ("bn._variance", "bn.running_var"),
    ("acti._weight", "acti.weight"),
)
FOLD_PREFIX = "net."  # CategoryFold keeps the 19-class net under .net
CLASSIFIER_KEY = "classifier.0.conv.weight"
# PyTorch-only counter with no Paddle counterpart; only used when training with momentum=None.
BN_COUNTER_SUFFIX = "num_batches_tracked"
MAX_LISTED_KEYS = 8
HASH_CHUNK_BYTES = 1 << 20


class DABNetImportError(ValueError):
    """The source file is not usable DABNet weights; the message names the file and why."""


def _not_dabnet(source: Path, reason: str) -> DABNetImportError:
    return DABNetImportError(f"{source}: not a DABNet Paddle checkpoint ({reason})")


def _paddle_arrays(raw: Any, source: Path) -> dict[str, np.ndarray]:
    """Validate ``{'model': {key: (paddle_name, array)}}`` and return ``{key: array}``."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("model"), Mapping):
        raise _not_dabnet(source, f"expected a dict with a 'model' dict, got {type(raw).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for key, entry in raw["model"].items():
        if not (isinstance(key, str) and isinstance(entry, tuple) and len(entry) == 2):
            raise _not_dabnet(source, f"entry {key!r} is not a (paddle_name, array) pair")
        array = entry[1]
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            raise _not_dabnet(source, f"entry {key!r} holds {type(array).__name__}, not a float array")
        arrays[key] = array
    if not arrays:
        raise _not_dabnet(source, "the 'model' dict is empty")
    return arrays


def _torch_name(paddle_key: str) -> str:
    for old, new in KEY_RENAMES:
        paddle_key = paddle_key.replace(old, new)
    return FOLD_PREFIX + paddle_key


def _listed(keys: set[str]) -> str:
    names = sorted(keys)
    more = f" ... (+{len(names) - MAX_LISTED_KEYS})" if len(names) > MAX_LISTED_KEYS else ""
    return ", ".join(names[:MAX_LISTED_KEYS]) + more


def _check_classes(arrays: dict[str, np.ndarray], source: Path) -> None:
    classifier = arrays.get(CLASSIFIER_KEY)
    if classifier is not None and classifier.shape[0] != CITYSCAPES_TRAIN_CLASSES:
        raise DABNetImportError(
            f"{source}: classifier {CLASSIFIER_KEY} has {classifier.shape[0]} outputs; "
            f"expected {CITYSCAPES_TRAIN_CLASSES} classes (Cityscapes trainIds)"
        )


def _torch_state(arrays: dict[str, np.ndarray], model: nn.Module, source: Path) -> dict[str, torch.Tensor]:
    """Renamed fp32 tensors for every key of ``model``, checked for names, shapes and finiteness."""
    _check_classes(arrays, source)
    renamed = {_torch_name(key): array for key, array in arrays.items()}
    expected = model.state_dict()
    wanted = {key for key in expected if not key.endswith(BN_COUNTER_SUFFIX)}
    missing, unexpected = wanted - set(renamed), set(renamed) - wanted
    if missing or unexpected:
        raise DABNetImportError(
            f"{source}: weights do not match DABNet: missing [{_listed(missing)}], unexpected [{_listed(unexpected)}]"
        )
    state: dict[str, torch.Tensor] = {}
    for key, array in renamed.items():
        if tuple(array.shape) != tuple(expected[key].shape):
            raise DABNetImportError(
                f"{source}: tensor {key} has shape {tuple(array.shape)}, DABNet expects {tuple(expected[key].shape)}"
            )
        if not np.isfinite(array).all():
            raise DABNetImportError(f"{source}: tensor {key} contains NaN or infinite values")
        state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    # Counters keep the freshly built model's zeros: Paddle has no equivalent.
    state.update({key: value for key, value in expected.items() if key.endswith(BN_COUNTER_SUFFIX)})
    return state


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _card(source: Path, epoch: Any) -> ModelCard:
    sha256 = _sha256(source)
    if sha256 != UPSTREAM_SHA256:
        log.warning("%s: sha256 %s differs from upstream best.params; provenance says so", source, sha256)
    provenance = {
        "upstream_repo": UPSTREAM_REPO,
        "upstream_commit": UPSTREAM_COMMIT,
        "upstream_url": UPSTREAM_URL,
        "upstream_license": UPSTREAM_LICENSE,
        "source_file": source.name,
        "source_sha256": sha256,
        "matches_upstream_sha256": sha256 == UPSTREAM_SHA256,
        "upstream_epoch": epoch if isinstance(epoch, int) else None,
        "importer": IMPORTER,
        "class_fold": CLASS_FOLD,
    }
    return ModelCard(
        model_id=MODEL_ID, family=FAMILY, arguments={}, input=DABNET_INPUT, provenance=provenance, metrics={},
        layers=(ROAD_LAYER,),  # trained on the 19 Cityscapes classes: road is one of them
    )


def import_dabnet(source: Path, destination: Path) -> ModelCard:
    """Convert upstream ``best.params`` at ``source`` into a checkpoint at ``destination``."""
    source, destination = Path(source), Path(destination)
    raw = load_restricted(source)
    arrays = _paddle_arrays(raw, source)
    model = build_dabnet()
    model.load_state_dict(_torch_state(arrays, model, source), strict=True)
    card = _card(source, raw.get("epoch"))
    with atomic_path(destination) as partial:  # a failed write never leaves a half checkpoint
        save_checkpoint(partial, model, card)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Import DABNet Paddle weights into a roadseg checkpoint.")
    parser.add_argument("source", type=Path, help="upstream best.params (a pickle; read without running code)")
    parser.add_argument("destination", type=Path, help="checkpoint to write, e.g. dabnet-cityscapes.safetensors")
    args = parser.parse_args(argv)
    try:
        card = import_dabnet(args.source, args.destination)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.destination}: {card.model_id} ({card.family}), sha256 {card.provenance['source_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
